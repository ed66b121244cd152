//! List offsets: earliest, latest, or by timestamp.

use super::{OpError, blocking};
use crate::server::Context;
use rill_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, OffsetSpec};
use std::sync::Arc;

pub async fn handle(
    ctx: Arc<Context>,
    req: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, OpError> {
    let log = ctx.topics.partition(&req.topic, req.partition)?;
    let offset = match req.spec {
        OffsetSpec::Earliest => Some(log.stats().log_start_offset),
        OffsetSpec::Latest => Some(log.high_watermark()),
        OffsetSpec::Timestamp(ts) => blocking(move || log.offset_for_timestamp(ts)).await??,
    };
    Ok(ListOffsetsResponse { offset })
}
