//! Producer ids for idempotent producers.
use crate::api::{ApiKey, Message};
use serde::{Deserialize, Serialize};

/// Asks for a producer id. With a name, the broker returns the id that name has (creating it
/// the first time) with its epoch bumped, which fences every older instance using the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerRequest {
    pub producer_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerResponse {
    pub producer_id: i64,
    pub epoch: i16,
}

impl Message for InitProducerRequest {
    const API_KEY: ApiKey = ApiKey::InitProducer;
    type Response = InitProducerResponse;
}
