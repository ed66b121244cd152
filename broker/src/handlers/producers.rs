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
    let ids = ctx.clone();
    let (producer_id, epoch) =
        blocking(move || ids.producer_ids.init(req.producer_name.as_deref()))
            .await?
            .map_err(|e| match e {
                InitError::NameTooLong(_) => OpError::Invalid(e.to_string()),
                InitError::Storage(s) => OpError::Topic(TopicError::Storage(s)),
            })?;
    // In a cluster each node hands out ids from its own range (node id above bit 44), so a
    // partition leader never mistakes two producers for one. A named producer's epoch is kept
    // by the node it asked: fencing across nodes needs the names in the metadata group.
    let node = ctx.cluster.as_ref().map_or(0, |c| c.node_id as i64);
    Ok(InitProducerResponse {
        producer_id: producer_id | (node << 44),
        epoch,
    })
}
