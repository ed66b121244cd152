//! Request handlers and the one dispatcher that calls them.
//!
//! Handlers are plain functions of `(context, request) -> Result<response, OpError>`: they never
//! touch the socket or parse bytes, so each can be tested without a network. [`dispatch`] decodes
//! a frame, calls the handler, and turns its result into a response frame; [`OpError::code`] is
//! the single place where internal errors become wire error codes.

pub(crate) mod access;
mod fetch;

pub use fetch::max_bytes as fetch_bytes;
pub(crate) mod groups;
mod metadata;
mod offsets;
pub(crate) mod produce;
mod producers;
mod security;
pub(crate) mod topics;

use crate::groups::coordinator::GroupError;
use crate::log::producers::SequenceError;
use crate::log::{AppendError, ReadError};
use crate::metrics::{self, ApiLabel, ErrorLabels};
use crate::server::Context;
use crate::topics::TopicError;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use rill_protocol::ErrorCode;
use rill_protocol::api::ApiKey;
use rill_protocol::frame::{OutFrame, RequestFrame, encode_error_response, encode_response};
use rill_protocol::messages::{ApiVersionRange, ApiVersionsResponse};
use rill_protocol::request::{Request, RequestError};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// Everything a request can fail with, by the component that failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Route(#[from] crate::cluster::RouteError),
    #[error("{0}")]
    Invalid(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("not authorized: {0}")]
    Denied(String),
    #[error("{0}")]
    SaslState(String),
}

/// A group request, served only where groups are coordinated (in a cluster, the leader of
/// `__consumer_offsets`; see `groups::coordinating`).
async fn coordinated<R, T, F>(
    ctx: Arc<Context>,
    handle: impl FnOnce(Arc<Context>, R) -> F,
    req: R,
) -> Result<T, OpError>
where
    F: Future<Output = Result<T, OpError>>,
{
    groups::coordinating(&ctx).await?;
    handle(ctx, req).await
}

impl From<crate::groups::offsets::OffsetError> for OpError {
    fn from(e: crate::groups::offsets::OffsetError) -> Self {
        use crate::groups::offsets::{OFFSETS_TOPIC, OffsetError};
        match e {
            OffsetError::Append(e) => OpError::Append(e),
            OffsetError::Refused(r) => produce::refusal(r, format!("{OFFSETS_TOPIC}-0")),
        }
    }
}

impl OpError {
    /// The wire code for this error. The only mapping from internal errors to codes.
    pub fn code(&self) -> ErrorCode {
        use crate::log::StorageError;
        match self {
            OpError::Topic(TopicError::UnknownTopic(_)) => ErrorCode::UnknownTopic,
            OpError::Topic(TopicError::UnknownPartition { .. }) => ErrorCode::UnknownPartition,
            OpError::Topic(TopicError::AlreadyExists(_)) => ErrorCode::TopicAlreadyExists,
            OpError::Topic(TopicError::InvalidConfig(_)) => ErrorCode::InvalidConfig,
            OpError::Topic(TopicError::Storage(e)) | OpError::Read(ReadError::Storage(e)) => {
                match e {
                    e if e.is_disk_full() => ErrorCode::DiskFull,
                    StorageError::Io { .. } | StorageError::Corrupt { .. } => {
                        ErrorCode::StorageError
                    }
                }
            }
            OpError::Append(AppendError::InvalidBatch(
                rill_protocol::DecodeError::Compression(_),
            )) => ErrorCode::UnsupportedCompression,
            OpError::Append(AppendError::InvalidBatch(_)) => ErrorCode::CorruptBatch,
            OpError::Append(AppendError::DiskFull(_)) => ErrorCode::DiskFull,
            OpError::Append(AppendError::Storage(_)) => ErrorCode::StorageError,
            OpError::Append(AppendError::Failed(_)) => ErrorCode::PartitionFailed,
            OpError::Append(AppendError::ShuttingDown) => ErrorCode::ShuttingDown,
            OpError::Append(AppendError::Sequence(SequenceError::OutOfOrder { .. })) => {
                ErrorCode::OutOfOrderSequence
            }
            OpError::Append(AppendError::Sequence(SequenceError::Fenced { .. })) => {
                ErrorCode::ProducerFenced
            }
            OpError::Read(ReadError::OffsetOutOfRange { .. }) => ErrorCode::OffsetOutOfRange,
            OpError::Read(ReadError::RecordsLost { .. }) => ErrorCode::RecordsLost,
            OpError::Request(RequestError::UnsupportedApiKey(_)) => ErrorCode::UnsupportedApiKey,
            OpError::Request(RequestError::UnsupportedVersion { .. }) => {
                ErrorCode::UnsupportedVersion
            }
            OpError::Request(RequestError::Malformed { .. }) => ErrorCode::MalformedRequest,
            OpError::Group(e) => match e {
                GroupError::UnknownMember(_) => ErrorCode::UnknownMember,
                GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
                GroupError::RebalanceInProgress => ErrorCode::RebalanceInProgress,
                GroupError::NotAssigned { .. } => ErrorCode::NotAssigned,
                GroupError::InconsistentStrategy { .. } => ErrorCode::InconsistentStrategy,
                GroupError::InconsistentProtocol(_) => ErrorCode::InconsistentStrategy,
                GroupError::NotEmpty { .. } => ErrorCode::GroupNotEmpty,
                GroupError::UnknownGroup(_) => ErrorCode::UnknownGroup,
                GroupError::InvalidName(_) => ErrorCode::InvalidGroupName,
                GroupError::GroupFull { .. } => ErrorCode::GroupFull,
                GroupError::TooManyGroups { .. } => ErrorCode::TooManyGroups,
                GroupError::NotOwner(_) => ErrorCode::NotAuthorized,
            },
            OpError::Route(crate::cluster::RouteError::NotLeader { .. }) => ErrorCode::NotLeader,
            OpError::Route(crate::cluster::RouteError::UnknownPartition { .. }) => {
                ErrorCode::UnknownPartition
            }
            OpError::Route(_) => ErrorCode::LeaderNotAvailable,
            OpError::Invalid(_) => ErrorCode::InvalidConfig,
            OpError::ShuttingDown => ErrorCode::ShuttingDown,
            OpError::Internal(_) => ErrorCode::Unknown,
            OpError::Denied(_) => ErrorCode::NotAuthorized,
            OpError::SaslState(_) => ErrorCode::IllegalSaslState,
        }
    }
}

/// Runs blocking storage work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(format!("storage task failed: {e}")))
}

fn error_frame(correlation_id: u32, e: &OpError) -> OutFrame {
    let code = e.code();
    match code {
        ErrorCode::StorageError | ErrorCode::PartitionFailed | ErrorCode::Unknown => {
            tracing::error!(error = %e, ?code, "request failed")
        }
        ErrorCode::DiskFull => tracing::warn!(error = %e, "request failed"),
        _ => tracing::debug!(error = %e, ?code, "request refused"),
    }
    encode_error_response(correlation_id, code, &e.to_string())
}

fn respond<T, F>(correlation_id: u32, api: &'static str, handler: F) -> BoxFuture<'static, OutFrame>
where
    T: Serialize,
    F: Future<Output = Result<(T, Bytes), OpError>> + Send + 'static,
{
    let started = std::time::Instant::now();
    async move {
        let m = metrics::global();
        let label = ApiLabel { api };
        m.requests.get_or_create(&label).inc();
        let frame = match handler.await {
            Ok((response, payload)) => encode_response(correlation_id, &response, payload),
            Err(e) => {
                m.request_errors
                    .get_or_create(&ErrorLabels {
                        api,
                        code: e.code().to_string(),
                    })
                    .inc();
                error_frame(correlation_id, &e)
            }
        };
        m.request_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        frame
    }
    .boxed()
}

/// No payload beside the control body.
async fn plain<T>(f: impl Future<Output = Result<T, OpError>>) -> Result<(T, Bytes), OpError> {
    f.await.map(|r| (r, Bytes::new()))
}

/// A request frame, decoded, with what its answer needs: correlation id and API name.
#[derive(Debug)]
pub struct Decoded {
    cid: u32,
    api: &'static str,
    pub request: Result<Request, RequestError>,
    /// Who the connection authenticated as (`None`: nobody, on an anonymous broker).
    pub principal: Option<Arc<str>>,
}

impl Decoded {
    pub fn new(frame: RequestFrame) -> Self {
        Decoded {
            cid: frame.header.correlation_id,
            api: ApiKey::from_u16(frame.header.api_key).map_or("unknown", ApiKey::name),
            request: Request::decode(frame),
            principal: None,
        }
    }

    pub fn correlation_id(&self) -> u32 {
        self.cid
    }

    pub fn api_name(&self) -> &'static str {
        self.api
    }
}

/// Starts a decoded request's handler (the connection decodes first, to size the response).
/// Work that must happen in arrival order (queueing a produced batch) happens here, before
/// returning; the returned future completes the request and may run concurrently with later
/// ones.
pub fn dispatch(ctx: &Arc<Context>, decoded: Decoded) -> BoxFuture<'static, OutFrame> {
    let Decoded {
        cid,
        api,
        request,
        principal,
    } = decoded;
    let request = match request {
        Ok(r) => r,
        Err(e) => return futures::future::ready(error_frame(cid, &OpError::Request(e))).boxed(),
    };
    let checker = access::Checker::new(ctx, principal.as_ref());
    if let Err(e) = checker.check(&request) {
        tracing::info!(principal = checker.principal().map_or("", |p| p), api, error = %e, "request refused");
        return respond(cid, api, plain(async move { Err::<(), _>(e) }));
    }
    // Who a group member belongs to (`None`: unchecked, as for a superuser).
    let owner = checker.principal().cloned();
    let ctx = ctx.clone();
    match request {
        Request::ApiVersions(_) => respond(cid, api, plain(async move { Ok(api_versions(&ctx)) })),
        Request::Produce(req, batch) => respond(
            cid,
            api,
            plain(produce::finish(produce::start(&ctx, req, batch))),
        ),
        Request::Fetch(req) => {
            // A fetch quota holds the answer once its size is known.
            let limit = principal.as_ref().and_then(|p| {
                let rate = ctx.security.quota_for(p)?.fetch_bytes_per_sec?;
                Some((p.clone(), rate))
            });
            let answer = respond(cid, api, fetch::handle(ctx.clone(), req));
            match limit {
                None => answer,
                Some((p, rate)) => async move {
                    let frame = answer.await;
                    let bytes = frame.payload.len() as u64;
                    let hold = ctx
                        .quotas
                        .charge(&p, crate::quotas::Kind::Fetch, rate, bytes);
                    if !hold.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(hold) => {}
                            _ = ctx.shutdown.cancelled() => {}
                        }
                    }
                    frame
                }
                .boxed(),
            }
        }
        Request::ListOffsets(req) => respond(cid, api, plain(offsets::handle(ctx, req))),
        Request::CreateTopic(req) => respond(cid, api, plain(topics::create(ctx, req))),
        Request::DeleteTopic(req) => respond(cid, api, plain(topics::delete(ctx, req))),
        Request::ListTopics(req) => respond(
            cid,
            api,
            plain(async move { Ok(topics::list(&ctx, &checker, req)) }),
        ),
        Request::DescribeTopic(req) => {
            respond(cid, api, plain(async move { topics::describe(&ctx, req) }))
        }
        Request::JoinGroup(req) => respond(
            cid,
            api,
            plain(coordinated(ctx, |c, r| groups::join(c, owner, r), req)),
        ),
        Request::Heartbeat(req) => respond(
            cid,
            api,
            plain(coordinated(
                ctx,
                |c, r| async move { groups::heartbeat(&c, owner.as_deref(), r) },
                req,
            )),
        ),
        Request::LeaveGroup(req) => respond(
            cid,
            api,
            plain(coordinated(
                ctx,
                |c, r| async move { groups::leave(&c, owner.as_deref(), r) },
                req,
            )),
        ),
        Request::CommitOffsets(req) => respond(
            cid,
            api,
            plain(coordinated(ctx, |c, r| groups::commit(c, owner, r), req)),
        ),
        Request::FetchOffsets(req) => respond(
            cid,
            api,
            plain(coordinated(
                ctx,
                |c, r| async move { groups::fetch_offsets(&c, r) },
                req,
            )),
        ),
        Request::ListGroups(req) => respond(
            cid,
            api,
            plain(coordinated(
                ctx,
                |c, r| async move { Ok(groups::list(&c, &checker, r)) },
                req,
            )),
        ),
        Request::DescribeGroup(req) => {
            respond(cid, api, plain(coordinated(ctx, groups::describe, req)))
        }
        Request::DeleteGroup(req) => {
            respond(cid, api, plain(coordinated(ctx, groups::delete, req)))
        }
        Request::ResetOffsets(req) => {
            respond(cid, api, plain(coordinated(ctx, groups::reset, req)))
        }
        Request::AddPartitions(req) => respond(cid, api, plain(topics::add_partitions(ctx, req))),
        Request::AlterTopic(req) => respond(cid, api, plain(topics::alter(ctx, req))),
        Request::InitProducer(req) => respond(cid, api, plain(producers::init(ctx, req))),
        Request::Metadata(req) => respond(
            cid,
            api,
            plain(async move { metadata::handle(&ctx, &checker, req) }),
        ),
        Request::ReassignPartition(req) => respond(cid, api, plain(topics::reassign(ctx, req))),
        Request::RemoveNode(req) => respond(cid, api, plain(topics::remove_node(ctx, req))),
        // The connection runs the exchange itself; one that reaches here is out of turn.
        Request::SaslHandshake(_) | Request::SaslAuthenticate(_) => respond(
            cid,
            api,
            plain(async move {
                Err::<(), _>(OpError::SaslState(
                    "this connection has authenticated already, or the broker does not ask for authentication".into(),
                ))
            }),
        ),
        Request::UpsertUser(req) => respond(cid, api, plain(security::upsert(ctx, checker, req))),
        Request::DeleteUser(req) => respond(cid, api, plain(security::delete(ctx, checker, req))),
        Request::ListUsers(req) => respond(
            cid,
            api,
            plain(async move { security::list(&ctx, &checker, req) }),
        ),
        Request::CreateAcls(req) => respond(cid, api, plain(security::create_acls(ctx, req))),
        Request::DeleteAcls(req) => respond(cid, api, plain(security::delete_acls(ctx, req))),
        Request::ListAcls(req) => respond(
            cid,
            api,
            plain(async move { Ok(security::list_acls(&ctx, req)) }),
        ),
        Request::AlterQuota(req) => respond(cid, api, plain(security::alter_quota(ctx, req))),
        Request::ListQuotas(req) => respond(
            cid,
            api,
            plain(async move { Ok(security::list_quotas(&ctx, req)) }),
        ),
    }
}

fn api_versions(ctx: &Context) -> ApiVersionsResponse {
    ApiVersionsResponse {
        broker: format!("rilld {}", env!("CARGO_PKG_VERSION")),
        apis: ApiKey::ALL
            .iter()
            .map(|k| {
                let (min, max) = k.versions();
                ApiVersionRange {
                    key: *k as u16,
                    min,
                    max,
                }
            })
            .collect(),
        max_frame_bytes: ctx.config.max_frame_bytes,
    }
}
