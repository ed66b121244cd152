//! Produce: append one record batch to a partition. The batch is the frame's payload.
use crate::api::{ApiKey, Message};
use crate::topic::TopicName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub topic: TopicName,
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResponse {
    /// Offset assigned to the batch's first record; record `i` has `base_offset + i`.
    pub base_offset: u64,
    /// The partition's log end offset after this append.
    pub log_end_offset: u64,
    /// The batch was a retry of one already stored (same idempotent producer, epoch and
    /// sequence): nothing was written, and `base_offset` is where the original is.
    pub duplicate: bool,
}

impl Message for ProduceRequest {
    const API_KEY: ApiKey = ApiKey::Produce;
    type Response = ProduceResponse;
}
