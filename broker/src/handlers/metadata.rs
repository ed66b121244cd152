//! Metadata: the nodes, and each partition's leader and replicas, for clients to route by.

use super::OpError;
use super::access::Checker;
use crate::server::Context;
use rill_protocol::TopicName;
use rill_protocol::messages::{
    MetadataRequest, MetadataResponse, NodeAddress, PartitionMetadata, TopicMetadata,
};

/// Topics `checker` may not describe are left out, as if they did not exist.
pub fn handle(
    ctx: &Context,
    checker: &Checker,
    req: MetadataRequest,
) -> Result<MetadataResponse, OpError> {
    let wanted = |name: &TopicName| {
        (req.topics.is_empty() || req.topics.contains(name)) && checker.sees_topic(name.as_str())
    };
    let Some(cluster) = &ctx.cluster else {
        // A single node: node 0 leads every partition.
        let topics = ctx
            .topics
            .list()
            .iter()
            .filter(|t| wanted(&t.name))
            .map(|t| TopicMetadata {
                name: t.name.clone(),
                partitions: (0..t.partitions.len() as u32)
                    .map(|partition| PartitionMetadata {
                        partition,
                        leader: Some(0),
                        term: 0,
                        replicas: vec![0],
                        target: Vec::new(),
                    })
                    .collect(),
            })
            .collect();
        return Ok(MetadataResponse {
            node_id: 0,
            nodes: vec![NodeAddress {
                node_id: 0,
                addr: ctx.config.listen.to_string(),
            }],
            topics,
        });
    };
    let state = cluster.state();
    if state.nodes.is_empty() {
        // Just started, or not yet caught up with the metadata group: nothing to tell.
        return Err(OpError::Route(crate::cluster::RouteError::Unavailable(
            "this node has not caught up with the cluster's metadata yet".into(),
        )));
    }
    let nodes = state
        .nodes
        .iter()
        .map(|(id, info)| NodeAddress {
            node_id: *id,
            addr: info.client_addr.clone(),
        })
        .collect();
    let topics = state
        .topics
        .iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, t)| TopicMetadata {
            name: name.clone(),
            partitions: (0..t.replicas.len() as u32)
                .map(|partition| {
                    let (leader, term) = cluster.leadership(name, partition);
                    PartitionMetadata {
                        partition,
                        leader,
                        term,
                        replicas: t
                            .replicas
                            .get(partition as usize)
                            .cloned()
                            .unwrap_or_default(),
                        target: t
                            .targets
                            .get(partition as usize)
                            .cloned()
                            .flatten()
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    Ok(MetadataResponse {
        node_id: cluster.node_id,
        nodes,
        topics,
    })
}
