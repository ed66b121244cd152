//! Produce: validate and queue a batch in arrival order, then wait for it to be committed.

use super::OpError;
use crate::log::PendingAppend;
use crate::server::Context;
use bytes::Bytes;
use rill_protocol::messages::{ProduceRequest, ProduceResponse};

/// Runs in the connection's read loop, so batches from one connection are queued in the order
/// they arrived even though their acknowledgements are awaited concurrently.
pub fn start(ctx: &Context, req: ProduceRequest, batch: Bytes) -> Result<PendingAppend, OpError> {
    let log = ctx.topics.partition(&req.topic, req.partition)?;
    Ok(log.append(batch)?)
}

pub async fn finish(pending: Result<PendingAppend, OpError>) -> Result<ProduceResponse, OpError> {
    let ack = pending?.wait().await?;
    Ok(ProduceResponse {
        base_offset: ack.base_offset,
        log_end_offset: ack.log_end_offset,
    })
}
