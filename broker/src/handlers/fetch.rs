//! Fetch: read from an offset, long-polling on the partition's high watermark.

use super::{OpError, blocking};
use crate::metrics::{self, TopicLabel};
use crate::server::Context;
use bytes::Bytes;
use rill_protocol::batch::{BatchHeader, Batches};
use rill_protocol::messages::{FetchRequest, FetchResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

pub async fn handle(
    ctx: Arc<Context>,
    req: FetchRequest,
) -> Result<(FetchResponse, Bytes), OpError> {
    if let Some(cluster) = &ctx.cluster {
        // Served by the partition's leader, up to its commit (the high watermark).
        cluster.leader_replica(&req.topic, req.partition)?;
    }
    let log = ctx.topics.partition(&req.topic, req.partition)?;
    let max_bytes = max_bytes(&ctx, &req);
    let min_bytes = req.min_bytes as usize;
    let deadline = Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT);
    let mut watermark = log.subscribe();
    // What is answered: the read, cut to `max_records` (after `min_bytes` was judged on all
    // of it, so a cap never makes a long poll wait longer).
    let answer = |(batches, response): (Bytes, FetchResponse)| {
        let batches = match req.max_records {
            0 => batches,
            n => rill_protocol::batch::take_records(batches, req.offset, n),
        };
        count_out(&req.topic, &batches);
        Ok((response, batches))
    };
    loop {
        let hw = *watermark.borrow_and_update();
        let read = if req.offset == hw {
            // Nothing to read yet; check the range without touching the files.
            let start = log.stats().log_start_offset;
            (
                Bytes::new(),
                FetchResponse {
                    high_watermark: hw,
                    log_start_offset: start,
                },
            )
        } else {
            let log = log.clone();
            let r = blocking(move || log.read(req.offset, max_bytes)).await??;
            (
                r.batches,
                FetchResponse {
                    high_watermark: r.high_watermark,
                    log_start_offset: r.log_start_offset,
                },
            )
        };
        if read.0.len() >= min_bytes.max(1) || min_bytes == 0 || Instant::now() >= deadline {
            return answer(read);
        }
        tokio::select! {
            changed = watermark.changed() => {
                if changed.is_err() {
                    return answer(read);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ctx.shutdown.cancelled() => return answer(read),
        }
    }
}

/// Most payload bytes a fetch returns, unless its first batch alone is larger (a lone larger
/// batch is still sent whole): what it asked for, bounded by half the frame limit.
pub fn max_bytes(ctx: &Context, req: &FetchRequest) -> usize {
    (req.max_bytes as usize).clamp(1, ctx.config.max_frame_bytes as usize / 2)
}

/// Counts the records and bytes a fetch returns (batch headers only; payloads are not read).
fn count_out(topic: &rill_protocol::TopicName, batches: &Bytes) {
    if batches.is_empty() {
        return;
    }
    let records: u64 = Batches::new(batches.clone())
        .filter_map(|b| BatchHeader::parse(&b).ok())
        .map(|h| u64::from(h.records()))
        .sum();
    let m = metrics::global();
    let label = TopicLabel {
        topic: topic.to_string(),
    };
    m.messages_out.get_or_create(&label).inc_by(records);
    m.bytes_out
        .get_or_create(&label)
        .inc_by(batches.len() as u64);
}
