//! Fetch: read record batches from an offset, long-polling until data arrives.
//! The response's payload is zero or more whole record batches, back to back.
use crate::api::{ApiKey, Message};
use crate::topic::TopicName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub topic: TopicName,
    pub partition: u32,
    /// First offset wanted. The first returned batch may start earlier (it contains this offset);
    /// readers skip records before it.
    pub offset: u64,
    /// Soft cap on payload size. At least one whole batch is returned if any is available, even
    /// one larger than this, so a reader can always make progress.
    pub max_bytes: u32,
    /// Wait until at least this many bytes are available (or `max_wait_ms` passes).
    pub min_bytes: u32,
    /// Longest time to wait for `min_bytes`; 0 returns at once.
    pub max_wait_ms: u32,
    /// Cap on records at or after `offset` (v1; 0: none): whole batches holding at most this
    /// many, except that the first batch comes whole whatever it holds, so a reader always
    /// makes progress.
    pub max_records: u32,
}

/// Version 0 of [`FetchRequest`]: without `max_records`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequestV0 {
    pub topic: TopicName,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    pub min_bytes: u32,
    pub max_wait_ms: u32,
}

impl Message for FetchRequestV0 {
    const API_KEY: ApiKey = ApiKey::Fetch;
    type Response = FetchResponse;
}

impl From<FetchRequestV0> for FetchRequest {
    fn from(v: FetchRequestV0) -> Self {
        FetchRequest {
            topic: v.topic,
            partition: v.partition,
            offset: v.offset,
            max_bytes: v.max_bytes,
            min_bytes: v.min_bytes,
            max_wait_ms: v.max_wait_ms,
            max_records: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Offset after the last record readers may see (durable under the topic's fsync policy).
    pub high_watermark: u64,
    /// First offset still in the log.
    pub log_start_offset: u64,
}

impl Message for FetchRequest {
    const API_KEY: ApiKey = ApiKey::Fetch;
    type Response = FetchResponse;

    fn server_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.max_wait_ms))
    }
}
