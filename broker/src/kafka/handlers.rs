//! Each Kafka API onto the broker's own operations. A Kafka request names many topics and
//! partitions; each partition goes through what a Rill request for it would (produce through
//! `handlers::produce`, reads through the partition log, topics through the registry), so the
//! two listeners share every rule. Errors become Kafka codes in [`kafka_code`] alone.

use super::Listener;
use super::wire::{self, StrBytes, msg};
use crate::handlers::{OpError, blocking, produce, topics};
use crate::server::Context;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use rill_protocol::ErrorCode;
use rill_protocol::TopicName;
use rill_protocol::messages::{CreateTopicRequest, DeleteTopicRequest, ProduceRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Kafka's code for a failure: from the one mapping of internal errors to Rill's codes
/// (`OpError::code`), so both listeners classify every failure alike.
pub fn kafka_code(e: &OpError) -> i16 {
    use wire::*;
    match e.code() {
        ErrorCode::None => NONE,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidTopicName => INVALID_TOPIC_EXCEPTION,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::UnsupportedCompression => UNSUPPORTED_COMPRESSION_TYPE,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::StorageError | ErrorCode::DiskFull | ErrorCode::PartitionFailed => {
            KAFKA_STORAGE_ERROR
        }
        // Lost to damage: the reader must move on, as after retention.
        ErrorCode::RecordsLost => OFFSET_OUT_OF_RANGE,
        ErrorCode::UnknownMember => UNKNOWN_MEMBER_ID,
        ErrorCode::StaleGeneration => ILLEGAL_GENERATION,
        ErrorCode::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        ErrorCode::InconsistentStrategy => INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode::GroupNotEmpty => NON_EMPTY_GROUP,
        ErrorCode::UnknownGroup => GROUP_ID_NOT_FOUND,
        ErrorCode::InvalidGroupName => INVALID_GROUP_ID,
        ErrorCode::GroupFull | ErrorCode::TooManyGroups => GROUP_MAX_SIZE_REACHED,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::ProducerFenced => PRODUCER_FENCED,
        ErrorCode::NotLeader => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::LeaderNotAvailable | ErrorCode::ShuttingDown => LEADER_NOT_AVAILABLE,
        ErrorCode::NotAuthorized => TOPIC_AUTHORIZATION_FAILED,
        ErrorCode::UnsupportedVersion | ErrorCode::UnsupportedApiKey => UNSUPPORTED_VERSION,
        ErrorCode::FrameTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::TopicBusy => REQUEST_TIMED_OUT,
        ErrorCode::MalformedFrame | ErrorCode::MalformedRequest | ErrorCode::NotAssigned => {
            INVALID_REQUEST
        }
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// An error and its message, as a partition's answer carries them.
fn failure(e: &OpError) -> (i16, Option<StrBytes>) {
    (kafka_code(e), Some(StrBytes::from_string(e.to_string())))
}

fn topic_name(name: &StrBytes) -> Result<TopicName, OpError> {
    TopicName::new(name.as_str()).map_err(|e| {
        OpError::Topic(crate::topics::TopicError::InvalidConfig(format!(
            "invalid topic name {:?}: {e}",
            name.as_str()
        )))
    })
}

fn kafka_name(name: &TopicName) -> msg::TopicName {
    msg::TopicName(StrBytes::from_string(name.to_string()))
}

/// This node's id as Kafka clients see it.
fn node_id(ctx: &Context) -> i32 {
    ctx.cluster.as_ref().map_or(0, |c| c.node_id as i32)
}

pub fn api_versions() -> msg::ApiVersionsResponse {
    wire::api_versions(wire::NONE)
}

pub fn metadata(
    ctx: &Context,
    listener: &Listener,
    req: msg::MetadataRequest,
) -> msg::MetadataResponse {
    let node = node_id(ctx);
    let broker = msg::metadata_response::MetadataResponseBroker::default()
        .with_node_id(msg::BrokerId(node))
        .with_host(StrBytes::from_string(listener.host.clone()))
        .with_port(i32::from(listener.port));
    let named: Vec<Result<TopicName, StrBytes>> = match &req.topics {
        None => ctx
            .topics
            .list()
            .iter()
            .map(|t| Ok(t.name.clone()))
            .collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|t| t.name.as_ref())
            .map(|n| topic_name(&n.0).map_err(|_| n.0.clone()))
            .collect(),
    };
    let topics = named
        .into_iter()
        .map(|name| {
            let t = msg::metadata_response::MetadataResponseTopic::default();
            let name = match name {
                Ok(n) => n,
                Err(raw) => {
                    return t
                        .with_name(Some(msg::TopicName(raw)))
                        .with_error_code(wire::INVALID_TOPIC_EXCEPTION);
                }
            };
            let t = t.with_name(Some(kafka_name(&name)));
            match ctx.topics.get(&name) {
                Err(_) => t.with_error_code(wire::UNKNOWN_TOPIC_OR_PARTITION),
                Ok(topic) => t
                    .with_is_internal(name.as_str() == rill_protocol::OFFSETS_TOPIC)
                    .with_partitions(
                        (0..topic.partitions.len() as i32)
                            .map(|p| {
                                msg::metadata_response::MetadataResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_leader_id(msg::BrokerId(node))
                                    .with_leader_epoch(0)
                                    .with_replica_nodes(vec![msg::BrokerId(node)])
                                    .with_isr_nodes(vec![msg::BrokerId(node)])
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    msg::MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("rill")))
        .with_controller_id(msg::BrokerId(node))
        .with_topics(topics)
}

/// Starts a produce: every partition's batches are queued on its log here, in the order the
/// request lists them (the caller runs this before reading the next request); the returned
/// future waits for them to be stored.
pub fn produce(
    ctx: &Arc<Context>,
    req: msg::ProduceRequest,
) -> BoxFuture<'static, msg::ProduceResponse> {
    if req.transactional_id.is_some() {
        let refuse = |_| {
            (
                wire::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                Some(StrBytes::from_static_str(
                    "transactions are not supported by Rill",
                )),
            )
        };
        return futures::future::ready(produce_answer(&req, refuse)).boxed();
    }
    let mut started = Vec::new();
    for topic in &req.topic_data {
        let name = topic_name(&topic.name.0);
        for p in &topic.partition_data {
            let pending = match (&name, &p.records) {
                (Err(e), _) => vec![Err(OpError::Invalid(e.to_string()))],
                (_, None) => vec![Err(OpError::Invalid("no records".into()))],
                (Ok(name), Some(records)) => start_partition(ctx, name, p.index, records.clone()),
            };
            started.push((topic.name.clone(), p.index, pending));
        }
    }
    async move {
        let mut answers: Vec<(
            msg::TopicName,
            i32,
            msg::produce_response::PartitionProduceResponse,
        )> = Vec::with_capacity(started.len());
        for (topic, index, pending) in started {
            let mut first: Option<u64> = None;
            let mut error = None;
            for one in pending {
                match produce::finish(one).await {
                    Ok(ack) => {
                        first.get_or_insert(ack.base_offset);
                    }
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            let answer =
                msg::produce_response::PartitionProduceResponse::default().with_index(index);
            let answer = match error {
                Some(e) => {
                    let (code, message) = failure(&e);
                    answer
                        .with_error_code(code)
                        .with_error_message(message)
                        .with_base_offset(-1)
                }
                None => answer
                    .with_base_offset(first.map_or(-1, |o| o as i64))
                    .with_log_append_time_ms(-1),
            };
            answers.push((topic, index, answer));
        }
        let mut responses: Vec<msg::produce_response::TopicProduceResponse> = Vec::new();
        for (topic, _, answer) in answers {
            match responses.iter_mut().find(|r| r.name == topic) {
                Some(r) => r.partition_responses.push(answer),
                None => responses.push(
                    msg::produce_response::TopicProduceResponse::default()
                        .with_name(topic)
                        .with_partition_responses(vec![answer]),
                ),
            }
        }
        msg::ProduceResponse::default().with_responses(responses)
    }
    .boxed()
}

/// Every partition answered with the same refusal.
fn produce_answer(
    req: &msg::ProduceRequest,
    refuse: impl Fn(i32) -> (i16, Option<StrBytes>),
) -> msg::ProduceResponse {
    msg::ProduceResponse::default().with_responses(
        req.topic_data
            .iter()
            .map(|t| {
                msg::produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                let (code, message) = refuse(p.index);
                                msg::produce_response::PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(code)
                                    .with_error_message(message)
                                    .with_base_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Queues each batch of one partition's records (a client may send several in one request).
fn start_partition(
    ctx: &Context,
    topic: &TopicName,
    index: i32,
    records: Bytes,
) -> Vec<Result<produce::Pending, OpError>> {
    let Ok(partition) = u32::try_from(index) else {
        return vec![Err(OpError::Topic(
            crate::topics::TopicError::UnknownPartition {
                topic: topic.clone(),
                partition: u32::MAX,
                count: 0,
            },
        ))];
    };
    let mut batches = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let len = match rill_protocol::batch::peek(&rest) {
            Some((_, len)) if len <= rest.len() => len,
            _ => {
                batches.push(Err(OpError::Append(crate::log::AppendError::InvalidBatch(
                    rill_protocol::DecodeError::Truncated {
                        what: "record batch",
                        needed: rill_protocol::batch::peek(&rest).map_or(12, |(_, l)| l),
                        remaining: rest.len(),
                    },
                ))));
                break;
            }
        };
        let batch = rest.split_to(len);
        let req = ProduceRequest {
            topic: topic.clone(),
            partition,
        };
        let one = produce::start(ctx, req, batch);
        let failed = one.is_err();
        batches.push(one);
        if failed {
            break;
        }
    }
    if batches.is_empty() {
        batches.push(Err(OpError::Invalid("no record batch".into())));
    }
    batches
}

/// Longest long poll a client may ask for (as on the Rill listener).
const MAX_WAIT: Duration = Duration::from_secs(300);

/// One partition of a fetch and what it read so far.
struct Wanted {
    topic: msg::TopicName,
    index: i32,
    offset: i64,
    max_bytes: usize,
    log: Result<Arc<crate::log::PartitionLog>, OpError>,
}

/// Fetch: every partition read from its offset, `max_bytes` for the whole answer (the first
/// partition's first batch always whole), long-polling until `min_bytes` in all or the
/// deadline.
pub async fn fetch(ctx: Arc<Context>, req: msg::FetchRequest) -> msg::FetchResponse {
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = topic_name(&t.topic.0);
        for p in &t.partitions {
            let log = name
                .as_ref()
                .map_err(|e| OpError::Invalid(e.to_string()))
                .and_then(|n| {
                    if let Some(cluster) = &ctx.cluster {
                        cluster.leader_replica(n, p.partition.max(0) as u32)?;
                    }
                    u32::try_from(p.partition)
                        .map_err(|_| OpError::Invalid(format!("partition {}", p.partition)))
                        .and_then(|i| Ok(ctx.topics.partition(n, i)?))
                });
            wanted.push(Wanted {
                topic: t.topic.clone(),
                index: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                log,
            });
        }
    }
    let total_max = (req.max_bytes.max(1) as usize).min(ctx.config.max_frame_bytes as usize / 2);
    let min_bytes = req.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let mut watches: Vec<_> = wanted
        .iter()
        .filter_map(|w| w.log.as_ref().ok().map(|l| l.subscribe()))
        .collect();
    loop {
        for w in &mut watches {
            w.borrow_and_update();
        }
        let answers = read_all(&wanted, total_max).await;
        let got: usize = answers
            .iter()
            .map(|a| a.records.as_ref().map_or(0, Bytes::len))
            .sum();
        let failed = answers.iter().any(|a| a.error_code != wire::NONE);
        if got >= min_bytes.max(1) || failed || Instant::now() >= deadline || watches.is_empty() {
            return fetch_answer(&wanted, answers);
        }
        let changed = futures::future::select_all(watches.iter_mut().map(|w| w.changed().boxed()));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ctx.shutdown.cancelled() => return fetch_answer(&wanted, answers),
        }
    }
}

async fn read_all(wanted: &[Wanted], total_max: usize) -> Vec<msg::fetch_response::PartitionData> {
    let mut left = total_max;
    let mut answers = Vec::with_capacity(wanted.len());
    for w in wanted {
        let answer = msg::fetch_response::PartitionData::default().with_partition_index(w.index);
        let log = match &w.log {
            Ok(log) => log.clone(),
            Err(e) => {
                answers.push(
                    answer
                        .with_error_code(kafka_code(e))
                        .with_high_watermark(-1),
                );
                continue;
            }
        };
        let stats = log.stats();
        let hw = stats.high_watermark as i64;
        let answer = answer
            .with_high_watermark(hw)
            .with_last_stable_offset(hw)
            .with_log_start_offset(stats.log_start_offset as i64);
        if w.offset < 0 || w.offset > hw || (w.offset as u64) < stats.log_start_offset {
            answers.push(answer.with_error_code(wire::OFFSET_OUT_OF_RANGE));
            continue;
        }
        // Nothing new, or no room left (a later request reads it): an empty answer.
        if w.offset == hw || (left == 0 && total_max > 0 && answers.iter().any(has_records)) {
            answers.push(answer.with_records(Some(Bytes::new())));
            continue;
        }
        let (offset, max) = (w.offset as u64, w.max_bytes.min(left).max(1));
        match blocking(move || log.read(offset, max))
            .await
            .and_then(|r| Ok(r?))
        {
            Ok(read) => {
                left = left.saturating_sub(read.batches.len());
                answers.push(answer.with_records(Some(read.batches)));
            }
            Err(e) => {
                let (code, _) = failure(&e);
                answers.push(answer.with_error_code(code));
            }
        }
    }
    answers
}

fn has_records(a: &msg::fetch_response::PartitionData) -> bool {
    a.records.as_ref().is_some_and(|r| !r.is_empty())
}

fn fetch_answer(
    wanted: &[Wanted],
    answers: Vec<msg::fetch_response::PartitionData>,
) -> msg::FetchResponse {
    let mut responses: Vec<msg::fetch_response::FetchableTopicResponse> = Vec::new();
    for (w, a) in wanted.iter().zip(answers) {
        match responses.last_mut().filter(|r| r.topic == w.topic) {
            Some(r) => r.partitions.push(a),
            None => responses.push(
                msg::fetch_response::FetchableTopicResponse::default()
                    .with_topic(w.topic.clone())
                    .with_partitions(vec![a]),
            ),
        }
    }
    msg::FetchResponse::default().with_responses(responses)
}

/// ListOffsets: EARLIEST (-2) is the log start, LATEST (-1) the high watermark, a timestamp the
/// first offset at or after it (from the time index).
pub async fn list_offsets(
    ctx: Arc<Context>,
    req: msg::ListOffsetsRequest,
) -> msg::ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let name = topic_name(&t.name.0);
        let mut partitions = Vec::new();
        for p in t.partitions {
            let answer = msg::list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1);
            let found = match &name {
                Err(e) => Err(OpError::Invalid(e.to_string())),
                Ok(n) => offset_for(&ctx, n, p.partition_index, p.timestamp).await,
            };
            partitions.push(match found {
                Ok(offset) => answer.with_offset(offset),
                Err(e) => answer.with_error_code(kafka_code(&e)).with_offset(-1),
            });
        }
        topics.push(
            msg::list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    msg::ListOffsetsResponse::default().with_topics(topics)
}

async fn offset_for(
    ctx: &Context,
    topic: &TopicName,
    index: i32,
    timestamp: i64,
) -> Result<i64, OpError> {
    let partition =
        u32::try_from(index).map_err(|_| OpError::Invalid(format!("partition {index}")))?;
    if let Some(cluster) = &ctx.cluster {
        cluster.leader_replica(topic, partition)?;
    }
    let log = ctx.topics.partition(topic, partition)?;
    Ok(match timestamp {
        -2 => log.stats().log_start_offset as i64,
        -1 => log.high_watermark() as i64,
        ts => {
            let end = log.high_watermark() as i64;
            blocking(move || log.offset_for_timestamp(ts))
                .await??
                .map_or(end, |o| o as i64)
        }
    })
}

/// CreateTopics: each through the same path as the Rill protocol's CreateTopic. A partition
/// count of -1 takes the default (1); configs Rill has no setting for are refused.
pub async fn create_topics(
    ctx: Arc<Context>,
    req: msg::CreateTopicsRequest,
) -> msg::CreateTopicsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let result =
            msg::create_topics_response::CreatableTopicResult::default().with_name(t.name.clone());
        let created = async {
            let name = topic_name(&t.name.0)?;
            let partitions = match t.num_partitions {
                -1 => 1,
                n if n > 0 => n as u32,
                n => {
                    return Err(OpError::Invalid(format!(
                        "partitions must be at least 1, got {n}"
                    )));
                }
            };
            let replication_factor = match t.replication_factor {
                -1 => None,
                n if n > 0 => Some(n as u32),
                n => {
                    return Err(OpError::Invalid(format!(
                        "replication factor must be at least 1, got {n}"
                    )));
                }
            };
            let config = topic_config(&t.configs)?;
            if req.validate_only {
                return Ok(partitions);
            }
            let req = CreateTopicRequest {
                name,
                partitions,
                config,
                replication_factor,
            };
            topics::create(ctx.clone(), req).await.map(|_| partitions)
        };
        results.push(match created.await {
            Ok(n) => result
                .with_num_partitions(n as i32)
                .with_replication_factor(t.replication_factor),
            Err(e) => {
                let (code, message) = failure(&e);
                result
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            }
        });
    }
    msg::CreateTopicsResponse::default().with_topics(results)
}

/// Kafka topic configs onto Rill's: retention.ms, retention.bytes, segment.bytes; the rest
/// are refused by name.
fn topic_config(
    configs: &[msg::create_topics_request::CreatableTopicConfig],
) -> Result<rill_protocol::topic::TopicConfig, OpError> {
    let mut config = rill_protocol::topic::TopicConfig::default();
    for c in configs {
        let value = c
            .value
            .as_ref()
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let number = |what: &str| {
            value
                .parse::<i64>()
                .map_err(|_| OpError::Invalid(format!("{what} must be a number, got {value:?}")))
        };
        match c.name.as_str() {
            "retention.ms" => config.retention_ms = Some(number("retention.ms")?.max(0) as u64),
            "retention.bytes" => {
                config.retention_bytes = Some(number("retention.bytes")?.max(0) as u64)
            }
            "segment.bytes" => config.segment_bytes = Some(number("segment.bytes")?.max(0) as u64),
            other => {
                return Err(OpError::Invalid(format!(
                    "topic config {other:?} is not supported (Rill takes retention.ms, retention.bytes, segment.bytes)"
                )));
            }
        }
    }
    Ok(config)
}

pub async fn delete_topics(
    ctx: Arc<Context>,
    req: msg::DeleteTopicsRequest,
) -> msg::DeleteTopicsResponse {
    let names: Vec<msg::TopicName> = req
        .topic_names
        .into_iter()
        .chain(req.topics.into_iter().filter_map(|t| t.name))
        .collect();
    let mut responses = Vec::new();
    for n in names {
        let answer =
            msg::delete_topics_response::DeletableTopicResult::default().with_name(Some(n.clone()));
        let deleted = async {
            let name = topic_name(&n.0)?;
            topics::delete(ctx.clone(), DeleteTopicRequest { name }).await
        };
        responses.push(match deleted.await {
            Ok(_) => answer,
            Err(e) => {
                let (code, message) = failure(&e);
                answer.with_error_code(code).with_error_message(message)
            }
        });
    }
    msg::DeleteTopicsResponse::default().with_responses(responses)
}
