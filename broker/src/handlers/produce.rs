//! Produce: validate and queue a batch in arrival order, then wait for it to be committed.

use super::OpError;
use crate::log::producers::SequenceError;
use crate::log::{AppendError, PendingAppend};
use crate::metrics::{self, TopicLabel};
use crate::server::Context;
use bytes::Bytes;
use rill_protocol::batch::BatchHeader;
use rill_protocol::messages::{ProduceRequest, ProduceResponse};

/// A queued append and what to count once it is acknowledged.
pub struct Pending {
    append: Append,
    topic: String,
    bytes: u64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("topic", &self.topic)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Where the batch went: the local log, or a partition leader's sequencer (cluster).
enum Append {
    Local(PendingAppend),
    Replicated {
        answer: crate::cluster::Answer,
        records: u64,
        what: String,
    },
}

/// Runs in the connection's read loop, so batches from one connection are queued in the order
/// they arrived even though their acknowledgements are awaited concurrently.
pub fn start(ctx: &Context, req: ProduceRequest, batch: Bytes) -> Result<Pending, OpError> {
    if let Some(cluster) = &ctx.cluster {
        if req.topic.as_str() == rill_protocol::OFFSETS_TOPIC {
            return Err(OpError::Invalid(format!(
                "{} is internal: it holds consumer groups' committed offsets, written only by the group coordinator",
                rill_protocol::OFFSETS_TOPIC
            )));
        }
        fence(&batch, |id, epoch| cluster.fenced(id, epoch))?;
        return start_replicated(cluster, req, batch);
    }
    let log = ctx.topics.partition(&req.topic, req.partition)?;
    fence(&batch, |id, epoch| ctx.producer_ids.fenced(id, epoch))?;
    let bytes = batch.len() as u64;
    Ok(Pending {
        append: Append::Local(log.append(batch)?),
        topic: req.topic.to_string(),
        bytes,
    })
}

/// A fenced instance of a named producer is refused on every partition, also those its
/// successor has not written to yet (the partitions' own windows would let it through).
/// `current` gives a named producer's current epoch when `epoch` is older. A header that does
/// not parse is left for the append to report.
fn fence(batch: &Bytes, current: impl Fn(i64, i16) -> Option<i16>) -> Result<(), OpError> {
    if let Ok(h) = BatchHeader::parse(batch)
        && h.producer_id >= 0
        && let Some(current) = current(h.producer_id, h.producer_epoch)
    {
        return Err(OpError::Append(AppendError::Sequence(
            SequenceError::Fenced {
                producer: h.producer_id,
                got: h.producer_epoch,
                current,
            },
        )));
    }
    Ok(())
}

/// Produce in a cluster: on the partition's leader, the batch becomes a Raft entry (proposed
/// here, in arrival order); it is acknowledged once a majority holds it.
fn start_replicated(
    cluster: &crate::cluster::Cluster,
    req: ProduceRequest,
    batch: Bytes,
) -> Result<Pending, OpError> {
    let replica = cluster.leader_replica(&req.topic, req.partition)?;
    let header = rill_protocol::batch::validate(&batch).map_err(AppendError::InvalidBatch)?;
    if header.is_control() {
        return Err(OpError::Invalid(
            "control batches are written by brokers only".into(),
        ));
    }
    let bytes = batch.len() as u64;
    // Queued at once to the partition's sequencer, so batches from one connection enter the
    // Raft log in the order they arrived.
    let answer = replica.sequencer.propose(batch, header);
    Ok(Pending {
        append: Append::Replicated {
            answer,
            records: u64::from(header.records()),
            what: format!("{}-{}", req.topic, req.partition),
        },
        topic: req.topic.to_string(),
        bytes,
    })
}

/// Waits for a replicated produce: its base offset, or why it was not stored.
async fn replicated(
    answer: crate::cluster::Answer,
    records: u64,
    what: String,
) -> Result<crate::log::AppendAck, OpError> {
    match answer.await {
        Ok(stored) => Ok(crate::log::AppendAck {
            base_offset: stored.base_offset,
            log_end_offset: stored.base_offset + records,
            duplicate: stored.duplicate,
        }),
        Err(refused) => Err(refusal(refused, what)),
    }
}

/// Why a proposal to partition `what` was refused, as the client is told.
pub fn refusal(refused: crate::cluster::Refused, what: String) -> OpError {
    use crate::cluster::{Refused, RouteError};
    use openraft::error::ClientWriteError;
    match refused {
        Refused::Sequence(e) => OpError::Append(AppendError::Sequence(e)),
        Refused::Write(ClientWriteError::ForwardToLeader(f)) => {
            match (f.leader_id, f.leader_node) {
                (Some(leader), Some(node)) => OpError::Route(RouteError::NotLeader {
                    what,
                    leader,
                    addr: node.client_addr,
                }),
                _ => OpError::Route(RouteError::NoLeader { what }),
            }
        }
        Refused::Write(e) => OpError::Route(RouteError::Unavailable(format!("{what}: {e}"))),
        Refused::Moved => OpError::Route(RouteError::NoLeader { what }),
        Refused::Lapsed => OpError::Route(RouteError::Unavailable(format!(
            "{what}: no majority has heard from this leader within its lease; the batch may or may not be stored (retry it)"
        ))),
        // The group stopped (the node is shutting down, or its storage failed).
        Refused::Stopped => OpError::ShuttingDown,
    }
}

pub async fn finish(pending: Result<Pending, OpError>) -> Result<ProduceResponse, OpError> {
    let Pending {
        append,
        topic,
        bytes,
    } = pending?;
    let (records, ack) = match append {
        Append::Local(append) => (append.records(), append.wait().await?),
        Append::Replicated {
            answer,
            records,
            what,
        } => (records, replicated(answer, records, what).await?),
    };
    let m = metrics::global();
    let label = TopicLabel { topic };
    if ack.duplicate {
        // Nothing was stored: a retry whose first answer was lost.
        m.produce_duplicates.get_or_create(&label).inc();
    } else {
        m.messages_in.get_or_create(&label).inc_by(records);
        m.bytes_in.get_or_create(&label).inc_by(bytes);
    }
    Ok(ProduceResponse {
        base_offset: ack.base_offset,
        log_end_offset: ack.log_end_offset,
        duplicate: ack.duplicate,
    })
}
