//! InitProducer: a durable producer id (and, for a named producer, a fencing epoch).

use super::{OpError, blocking};
use crate::producer_ids::InitError;
use crate::server::Context;
use crate::topics::TopicError;
use rill_protocol::messages::{InitProducerRequest, InitProducerResponse};
use std::sync::Arc;

pub async fn init(
    ctx: Arc<Context>,
    req: InitProducerRequest,
) -> Result<InitProducerResponse, OpError> {
    let (producer_id, epoch) =
        blocking(move || ctx.producer_ids.init(req.producer_name.as_deref()))
            .await?
            .map_err(|e| match e {
                InitError::NameTooLong(_) => OpError::Invalid(e.to_string()),
                InitError::Storage(s) => OpError::Topic(TopicError::Storage(s)),
            })?;
    Ok(InitProducerResponse { producer_id, epoch })
}
