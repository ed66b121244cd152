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
    if let (Some(cluster), Some(name)) = (&ctx.cluster, req.producer_name.as_deref()) {
        if name.len() > crate::producer_ids::MAX_NAME {
            return Err(OpError::Invalid(
                InitError::NameTooLong(name.len()).to_string(),
            ));
        }
        // Named producers live in the metadata group: one id per name across the cluster, and
        // a new epoch fences earlier instances on every node (ids below bit 44).
        let (producer_id, epoch) = cluster
            .name_producer(name)
            .await
            .map_err(|why| OpError::Route(crate::cluster::RouteError::Unavailable(why)))?;
        return Ok(InitProducerResponse { producer_id, epoch });
    }
    let ids = ctx.clone();
    let (producer_id, epoch) =
        blocking(move || ids.producer_ids.init(req.producer_name.as_deref()))
            .await?
            .map_err(|e| match e {
                InitError::NameTooLong(_) => OpError::Invalid(e.to_string()),
                InitError::Storage(s) => OpError::Topic(TopicError::Storage(s)),
            })?;
    // In a cluster each node hands out ids from its own range (node id above bit 44), so a
    // partition leader never mistakes two producers for one.
    let node = ctx.cluster.as_ref().map_or(0, |c| c.node_id as i64);
    Ok(InitProducerResponse {
        producer_id: producer_id | (node << 44),
        epoch,
    })
}
