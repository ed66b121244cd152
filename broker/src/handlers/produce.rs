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
#[derive(Debug)]
pub struct Pending {
    append: PendingAppend,
    topic: String,
    bytes: u64,
}

/// Runs in the connection's read loop, so batches from one connection are queued in the order
/// they arrived even though their acknowledgements are awaited concurrently.
pub fn start(ctx: &Context, req: ProduceRequest, batch: Bytes) -> Result<Pending, OpError> {
    let log = ctx.topics.partition(&req.topic, req.partition)?;
    // A fenced instance of a named producer is refused on every partition, also those its
    // successor has not written to yet (the partitions' own windows would let it through).
    // A header that does not parse is left for `append` to report.
    if let Ok(h) = BatchHeader::parse(&batch)
        && h.producer_id >= 0
        && let Some(current) = ctx.producer_ids.fenced(h.producer_id, h.producer_epoch)
    {
        return Err(OpError::Append(AppendError::Sequence(
            SequenceError::Fenced {
                producer: h.producer_id,
                got: h.producer_epoch,
                current,
            },
        )));
    }
    let bytes = batch.len() as u64;
    Ok(Pending {
        append: log.append(batch)?,
        topic: req.topic.to_string(),
        bytes,
    })
}

pub async fn finish(pending: Result<Pending, OpError>) -> Result<ProduceResponse, OpError> {
    let Pending {
        append,
        topic,
        bytes,
    } = pending?;
    let records = append.records();
    let ack = append.wait().await?;
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
