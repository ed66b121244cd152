//! One Kafka client connection. Kafka answers a connection's requests in the order they came,
//! so each request is started at once (a produce is queued on its partitions here, before the
//! next request is read) and runs in its own task, whose handle goes into a channel the
//! writer awaits in order: requests run concurrently, answers leave in order. A frame that
//! cannot be trusted (over `max_frame_bytes`, shorter than a header, a body that does not
//! decode) closes the connection with a logged reason; Kafka has no error frame for it.

use super::wire::{self, Request, RequestKind, ResponseKind};
use super::{Listener, handlers};
use crate::connection::Split;
use crate::server::Context;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use kafka_protocol::messages::ApiKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

/// An answer on its way: the task computing it (`None`: a request that gets no answer, as a
/// produce with acks=0), and what it holds of the connection's budget until written.
struct Answer {
    task: JoinHandle<Option<Bytes>>,
    _room: Vec<OwnedSemaphorePermit>,
    _queued: Vec<crate::backpressure::Reservation>,
}

/// Serves one Kafka connection until the peer closes it, it breaks, or the broker shuts down.
pub async fn serve<S: Split>(
    socket: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    listener: Arc<Listener>,
    slot: (OwnedSemaphorePermit, crate::quotas::Held),
) {
    tracing::info!(%peer, "Kafka connection opened");
    let m = crate::metrics::global();
    m.connections.inc();
    m.connections_total.inc();
    let (mut reader, writer) = socket.split();
    let (tx, rx) = mpsc::channel::<Answer>(ctx.config.max_in_flight);
    // Bytes of answers in progress (a fetch reserves what it may return before it starts),
    // so a client that stops reading holds a bounded amount.
    let total = ctx.config.max_connection_buffer_bytes;
    let budget = Arc::new(Semaphore::new(total));
    let writing = tokio::spawn(write_loop(writer, rx));
    let idle = match ctx.config.idle_timeout_ms {
        0 => Duration::MAX,
        ms => Duration::from_millis(ms),
    };
    let max_frame = ctx.config.max_frame_bytes as usize;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason: String = 'conn: loop {
        loop {
            let frame = match wire::split_frame(&mut buf, max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn e.to_string(),
            };
            let request = match wire::decode(frame) {
                Ok(r) => r,
                Err(e) => break 'conn e.to_string(),
            };
            let cost = answer_cost(&ctx, &request).min(total);
            let queued = produce_sizes(&request);
            let room = async {
                let bytes = budget.clone().acquire_many_owned(cost as u32).await.ok()?;
                let mut reserved = Vec::with_capacity(queued.len());
                for (topic, partition, len) in &queued {
                    reserved.push(ctx.produce_budget.reserve(topic, *partition, *len).await?);
                }
                Some((bytes, reserved))
            };
            let (room, queued) = tokio::select! {
                got = room => match got {
                    Some(got) => got,
                    None => break 'conn "closing".into(),
                },
                _ = ctx.shutdown.cancelled() => break 'conn "broker shutting down".into(),
            };
            let task = tokio::spawn(start(&ctx, &listener, peer, request));
            let answer = Answer {
                task,
                _room: vec![room],
                _queued: queued,
            };
            if tx.send(answer).await.is_err() {
                break 'conn "writer stopped".into();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => break format!("idle for {} ms", idle.as_millis()),
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) if buf.is_empty() => break "closed by peer".into(),
                Ok(0) => break format!("closed by peer in the middle of a frame ({} bytes unread)", buf.len()),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            _ = ctx.shutdown.cancelled() => break "broker shutting down".into(),
        }
    };
    if reason == "closed by peer" {
        tracing::info!(%peer, "Kafka connection closed");
    } else {
        tracing::warn!(%peer, %reason, "Kafka connection closed");
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), writing).await;
    drop(slot);
    m.connections.dec();
}

/// Room an answer may need: a fetch's `max_bytes` (bounded as the handler bounds it), plus
/// room for the rest of the frame.
fn answer_cost(ctx: &Context, request: &Request) -> usize {
    let small = 64 * 1024;
    match request {
        Request::Served { body, .. } => match body.as_ref() {
            RequestKind::Fetch(f) => {
                (f.max_bytes.max(0) as usize).min(ctx.config.max_frame_bytes as usize / 2) + small
            }
            _ => small,
        },
        _ => small,
    }
}

/// The bytes a produce queues on each partition, reserved in the produce budget first (as on
/// the Rill listener: while it waits, the connection reads nothing).
fn produce_sizes(request: &Request) -> Vec<(rill_protocol::TopicName, u32, usize)> {
    let Request::Served { body, .. } = request else {
        return Vec::new();
    };
    let RequestKind::Produce(p) = body.as_ref() else {
        return Vec::new();
    };
    p.topic_data
        .iter()
        .filter_map(|t| Some((rill_protocol::TopicName::new(t.name.0.as_str()).ok()?, t)))
        .flat_map(|(name, t)| {
            t.partition_data.iter().filter_map(move |d| {
                Some((
                    name.clone(),
                    u32::try_from(d.index).ok()?,
                    d.records.as_ref().map_or(0, Bytes::len),
                ))
            })
        })
        .collect()
}

/// Starts a request: what must happen in arrival order (queueing a produce) happens before
/// this returns; the future completes it.
fn start(
    ctx: &Arc<Context>,
    listener: &Arc<Listener>,
    peer: SocketAddr,
    request: Request,
) -> BoxFuture<'static, Option<Bytes>> {
    let (header, api, body) = match request {
        Request::Unsupported {
            api_key,
            version,
            correlation_id,
        } => {
            let why = match ApiKey::try_from(api_key) {
                Ok(ApiKey::Produce) if version < wire::MIN_PRODUCE_SERVED => {
                    "Produce v0-2 (message sets before RecordBatch v2) is not supported"
                }
                Ok(_) => "version not supported",
                Err(_) => "unknown API key",
            };
            tracing::info!(%peer, api_key, version, "Kafka request refused: {why}");
            return futures::future::ready(Some(wire::encode_unsupported(api_key, correlation_id)))
                .boxed();
        }
        Request::Served { header, api, body } => (header, api, body),
    };
    let (version, cid) = (header.request_api_version, header.correlation_id);
    let answer = move |body: ResponseKind| Some(wire::encode(api, version, cid, &body));
    let ctx = ctx.clone();
    match *body {
        RequestKind::ApiVersions(_) => {
            futures::future::ready(answer(ResponseKind::ApiVersions(handlers::api_versions())))
                .boxed()
        }
        RequestKind::Metadata(req) => {
            let listener = listener.clone();
            async move {
                answer(ResponseKind::Metadata(handlers::metadata(
                    &ctx, &listener, req,
                )))
            }
            .boxed()
        }
        RequestKind::Produce(req) => {
            let acks = req.acks;
            let stored = handlers::produce(&ctx, req);
            async move {
                let response = stored.await;
                // acks=0: the client expects no answer (the batch is stored all the same).
                (acks != 0)
                    .then(|| answer(ResponseKind::Produce(response)))
                    .flatten()
            }
            .boxed()
        }
        RequestKind::Fetch(req) => {
            async move { answer(ResponseKind::Fetch(handlers::fetch(ctx, req).await)) }.boxed()
        }
        RequestKind::ListOffsets(req) => async move {
            answer(ResponseKind::ListOffsets(
                handlers::list_offsets(ctx, req).await,
            ))
        }
        .boxed(),
        RequestKind::CreateTopics(req) => async move {
            answer(ResponseKind::CreateTopics(
                handlers::create_topics(ctx, req).await,
            ))
        }
        .boxed(),
        RequestKind::DeleteTopics(req) => async move {
            answer(ResponseKind::DeleteTopics(
                handlers::delete_topics(ctx, req).await,
            ))
        }
        .boxed(),
        RequestKind::FindCoordinator(req) => {
            let listener = listener.clone();
            async move {
                answer(ResponseKind::FindCoordinator(
                    super::groups::find_coordinator(ctx, &listener, req, version).await,
                ))
            }
            .boxed()
        }
        RequestKind::JoinGroup(req) => {
            let client = header
                .client_id
                .as_ref()
                .map_or_else(|| "kafka".to_string(), |c| c.to_string());
            async move {
                answer(ResponseKind::JoinGroup(
                    super::groups::join_group(ctx, req, client, version).await,
                ))
            }
            .boxed()
        }
        RequestKind::SyncGroup(req) => async move {
            answer(ResponseKind::SyncGroup(
                super::groups::sync_group(ctx, req).await,
            ))
        }
        .boxed(),
        RequestKind::Heartbeat(req) => {
            async move { answer(ResponseKind::Heartbeat(super::groups::heartbeat(&ctx, req))) }
                .boxed()
        }
        RequestKind::LeaveGroup(req) => async move {
            answer(ResponseKind::LeaveGroup(super::groups::leave_group(
                &ctx, req,
            )))
        }
        .boxed(),
        RequestKind::OffsetCommit(req) => async move {
            answer(ResponseKind::OffsetCommit(
                super::groups::offset_commit(ctx, req).await,
            ))
        }
        .boxed(),
        RequestKind::OffsetFetch(req) => async move {
            answer(ResponseKind::OffsetFetch(super::groups::offset_fetch(
                &ctx, req, version,
            )))
        }
        .boxed(),
        RequestKind::ListGroups(req) => async move {
            answer(ResponseKind::ListGroups(super::groups::list_groups(
                &ctx, req,
            )))
        }
        .boxed(),
        RequestKind::DescribeGroups(req) => async move {
            answer(ResponseKind::DescribeGroups(
                super::groups::describe_groups(&ctx, req),
            ))
        }
        .boxed(),
        // `wire::decode` serves only the APIs above.
        other => {
            tracing::error!(%peer, ?api, "Kafka request decoded but not handled: {:?}", std::mem::discriminant(&other));
            futures::future::ready(Some(wire::encode_unsupported(api as i16, cid))).boxed()
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<Answer>) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut answer) = next.take() {
            // Flush what is written before waiting on an answer that is not ready.
            if !answer.task.is_finished() && out.flush().await.is_err() {
                return;
            }
            let bytes = match (&mut answer.task).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "Kafka request task failed");
                    return;
                }
            };
            if let Some(bytes) = bytes
                && out.write_all(&bytes).await.is_err()
            {
                return;
            }
            drop(answer);
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}
