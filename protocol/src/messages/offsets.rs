//! List offsets: the earliest, the latest, or the first at or after a timestamp.
use crate::api::{ApiKey, Message};
use crate::topic::TopicName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next visible record will get.
    Latest,
    /// The first record whose timestamp (ms since the epoch) is at or after this one.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub topic: TopicName,
    pub partition: u32,
    pub spec: OffsetSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    /// `None` for a timestamp later than every record.
    pub offset: Option<u64>,
}

impl Message for ListOffsetsRequest {
    const API_KEY: ApiKey = ApiKey::ListOffsets;
    type Response = ListOffsetsResponse;
}
