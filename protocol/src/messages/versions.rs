//! The version handshake: the first request a client sends.
use crate::api::{ApiKey, Message};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersionsRequest {
    /// Free-form client identification, for the broker's logs.
    pub client: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersionRange {
    pub key: u16,
    pub min: u16,
    pub max: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersionsResponse {
    /// Broker software version.
    pub broker: String,
    pub apis: Vec<ApiVersionRange>,
    /// Largest request frame the broker accepts.
    pub max_frame_bytes: u32,
}

impl Message for ApiVersionsRequest {
    const API_KEY: ApiKey = ApiKey::ApiVersions;
    type Response = ApiVersionsResponse;
}
