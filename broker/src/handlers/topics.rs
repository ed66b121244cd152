//! Topic administration.

use super::{OpError, blocking};
use crate::server::Context;
use rill_protocol::messages::*;
use std::sync::Arc;

pub async fn create(
    ctx: Arc<Context>,
    req: CreateTopicRequest,
) -> Result<CreateTopicResponse, OpError> {
    if let Some(cluster) = &ctx.cluster {
        // Checked before proposing: every node must be able to create what is committed.
        if req.partitions == 0 || req.partitions > crate::topics::MAX_PARTITIONS {
            return Err(OpError::Topic(crate::topics::TopicError::InvalidConfig(
                format!(
                    "partitions must be between 1 and {}, got {}",
                    crate::topics::MAX_PARTITIONS,
                    req.partitions
                ),
            )));
        }
        ctx.topics
            .log_config(&req.config)
            .map_err(|e| OpError::Topic(crate::topics::TopicError::InvalidConfig(e)))?;
        // A node that has not yet heard of the others (just started) leaves the bound to the
        // controller, which checks it again when it applies the command.
        let nodes = cluster.state().nodes.len() as u32;
        if let Some(rf) = req.replication_factor
            && (rf == 0 || (nodes > 0 && rf > nodes))
        {
            return Err(invalid(format!(
                "replication factor must be between 1 and the number of nodes ({nodes}), got {rf}"
            )));
        }
        let command = crate::cluster::Command::CreateTopic {
            replication_factor: req
                .replication_factor
                .unwrap_or(cluster.default_replication_factor()),
            capped: req.replication_factor.is_none(),
            name: req.name.clone(),
            partitions: req.partitions,
            config: req.config,
        };
        return match cluster.propose(&command).await {
            Ok(()) => Ok(CreateTopicResponse {}),
            Err(why) if why.contains("already exists") => Err(OpError::Topic(
                crate::topics::TopicError::AlreadyExists(req.name),
            )),
            Err(why) if why.contains("replication factor") => Err(invalid(why)),
            Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
        };
    }
    if let Some(rf) = req.replication_factor.filter(|rf| *rf != 1) {
        return Err(invalid(format!(
            "a single-node broker keeps one replica of each partition; replication factor {rf} needs a cluster"
        )));
    }
    blocking(move || ctx.topics.create(req.name, req.partitions, req.config)).await??;
    Ok(CreateTopicResponse {})
}

/// Starts moving a partition to other replicas (cluster only); answered once the move is
/// recorded (see `cluster::Command::Reassign`).
pub async fn reassign(
    ctx: Arc<Context>,
    req: ReassignPartitionRequest,
) -> Result<ReassignPartitionResponse, OpError> {
    let Some(cluster) = &ctx.cluster else {
        return Err(OpError::Invalid(
            "a single-node broker has nowhere to move partitions to; reassigning needs a cluster"
                .into(),
        ));
    };
    // Checked here for a clear answer; the metadata group checks again when it applies it.
    let state = cluster.state();
    let topic = state.topics.get(&req.topic).ok_or_else(|| {
        OpError::Topic(crate::topics::TopicError::UnknownTopic(req.topic.clone()))
    })?;
    let p = req.partition as usize;
    if p >= topic.replicas.len() {
        return Err(OpError::Topic(
            crate::topics::TopicError::UnknownPartition {
                topic: req.topic,
                partition: req.partition,
                count: topic.replicas.len() as u32,
            },
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if req.replicas.is_empty() || !req.replicas.iter().all(|r| seen.insert(*r)) {
        return Err(invalid(
            "the new replicas must be distinct node ids, at least one".into(),
        ));
    }
    if let Some(unknown) = req.replicas.iter().find(|r| !state.nodes.contains_key(r)) {
        return Err(invalid(format!("node {unknown} is not in the cluster")));
    }
    if let Some(target) = &topic.targets[p] {
        return Err(invalid(format!(
            "{}-{} is already moving to {target:?}; wait for that move to finish",
            req.topic, req.partition
        )));
    }
    let command = crate::cluster::Command::Reassign {
        topic: req.topic,
        partition: req.partition,
        replicas: req.replicas,
    };
    match cluster.propose(&command).await {
        Ok(()) => Ok(ReassignPartitionResponse {}),
        Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
    }
}

/// Removes a node from the cluster (cluster only); refused while it holds replicas.
pub async fn remove_node(
    ctx: Arc<Context>,
    req: RemoveNodeRequest,
) -> Result<RemoveNodeResponse, OpError> {
    let Some(cluster) = &ctx.cluster else {
        return Err(OpError::Invalid(
            "a single-node broker has no other nodes to remove".into(),
        ));
    };
    let state = cluster.state();
    if !state.nodes.contains_key(&req.node_id) {
        return Err(invalid(format!(
            "node {} is not in the cluster",
            req.node_id
        )));
    }
    match cluster
        .propose(&crate::cluster::Command::RemoveNode { id: req.node_id })
        .await
    {
        Ok(()) => Ok(RemoveNodeResponse {}),
        Err(why) if why.contains("still holds") || why.contains("last voter") => Err(invalid(why)),
        Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
    }
}

fn invalid(why: String) -> OpError {
    OpError::Topic(crate::topics::TopicError::InvalidConfig(why))
}

pub async fn add_partitions(
    ctx: Arc<Context>,
    req: AddPartitionsRequest,
) -> Result<AddPartitionsResponse, OpError> {
    if let Some(cluster) = &ctx.cluster {
        let state = cluster.state();
        let topic = state.topics.get(&req.name).ok_or_else(|| {
            OpError::Topic(crate::topics::TopicError::UnknownTopic(req.name.clone()))
        })?;
        let current = topic.replicas.len() as u32;
        if req.partitions <= current || req.partitions > crate::topics::MAX_PARTITIONS {
            return Err(invalid(format!(
                "topic '{}' has {current} partitions; it can grow to at most {}, never shrink (asked for {})",
                req.name,
                crate::topics::MAX_PARTITIONS,
                req.partitions
            )));
        }
        let command = crate::cluster::Command::AddPartitions {
            name: req.name,
            partitions: req.partitions,
        };
        return match cluster.propose(&command).await {
            Ok(()) => Ok(AddPartitionsResponse {}),
            Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
        };
    }
    blocking(move || ctx.topics.add_partitions(&req.name, req.partitions)).await??;
    Ok(AddPartitionsResponse {})
}

pub async fn alter(
    ctx: Arc<Context>,
    req: AlterTopicRequest,
) -> Result<AlterTopicResponse, OpError> {
    if let Some(cluster) = &ctx.cluster {
        let state = cluster.state();
        let topic = state.topics.get(&req.name).ok_or_else(|| {
            OpError::Topic(crate::topics::TopicError::UnknownTopic(req.name.clone()))
        })?;
        // Checked here: every node must be able to apply what is committed.
        let config = topic.config.merged(&req.changes);
        ctx.topics.log_config(&config).map_err(invalid)?;
        let command = crate::cluster::Command::AlterTopic {
            name: req.name,
            changes: req.changes,
        };
        return match cluster.propose(&command).await {
            Ok(()) => Ok(AlterTopicResponse { config }),
            Err(why) if why.contains("internal") => Err(invalid(why)),
            Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
        };
    }
    let config = blocking(move || ctx.topics.alter(&req.name, &req.changes)).await??;
    Ok(AlterTopicResponse { config })
}

pub async fn delete(
    ctx: Arc<Context>,
    req: DeleteTopicRequest,
) -> Result<DeleteTopicResponse, OpError> {
    if let Some(cluster) = &ctx.cluster {
        if !cluster.state().topics.contains_key(&req.name) {
            return Err(OpError::Topic(crate::topics::TopicError::UnknownTopic(
                req.name,
            )));
        }
        // Every node removes its copy once the deletion is committed; this one before
        // answering (or within a second, if its metadata was not yet confirmed current).
        let command = crate::cluster::Command::DeleteTopic { name: req.name };
        return match cluster.propose(&command).await {
            Ok(()) => Ok(DeleteTopicResponse {}),
            Err(why) if why.contains("internal") => Err(invalid(why)),
            Err(why) if why.contains("unknown topic") => Err(invalid(why)),
            Err(why) => Err(OpError::Route(crate::cluster::RouteError::Unavailable(why))),
        };
    }
    let (topics, name) = (ctx.clone(), req.name.clone());
    blocking(move || topics.topics.delete(&name)).await??;
    // The topic is gone from the registry, so new commits for it are refused; now its old
    // commits go too, or a topic created again under this name would inherit them.
    let dropped = ctx
        .groups
        .offsets()
        .forget_topics(|t| ctx.topics.get(t).is_ok())
        .await?;
    if dropped > 0 {
        tracing::info!(topic = %req.name, dropped, "deleted the topic's committed offsets");
    }
    Ok(DeleteTopicResponse {})
}

/// Topics `checker` may not describe are left out.
pub fn list(
    ctx: &Context,
    checker: &super::access::Checker,
    _req: ListTopicsRequest,
) -> ListTopicsResponse {
    // In a cluster, what the metadata has (a deleted topic's local copy may still be going).
    let state = ctx.cluster.as_ref().map(|c| c.state());
    let topics = ctx
        .topics
        .list()
        .iter()
        .filter(|t| {
            state
                .as_ref()
                .is_none_or(|s| s.topics.contains_key(&t.name))
                && checker.sees_topic(t.name.as_str())
        })
        .map(|t| TopicSummary {
            name: t.name.clone(),
            partitions: t.partitions.len() as u32,
        })
        .collect();
    ListTopicsResponse { topics }
}

pub fn describe(
    ctx: &Context,
    req: DescribeTopicRequest,
) -> Result<DescribeTopicResponse, OpError> {
    let topic = ctx.topics.get(&req.name)?;
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let s = log.stats();
            PartitionInfo {
                partition: i as u32,
                log_start_offset: s.log_start_offset,
                log_end_offset: s.high_watermark,
                durable_offset: log.durable_offset(),
                size_bytes: s.size_bytes,
                segments: s.segments,
            }
        })
        .collect();
    Ok(DescribeTopicResponse {
        name: topic.name.clone(),
        config: topic.config.clone(),
        partitions,
    })
}
