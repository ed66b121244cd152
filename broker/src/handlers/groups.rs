//! Consumer-group requests: membership, commits, and group administration.

use super::access::Checker;
use super::{OpError, blocking};
use crate::groups::coordinator::{GroupError, Join, Principal};
use crate::server::Context;
use rill_protocol::messages::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest client name a member may give (shown by describe).
pub const MAX_CLIENT_NAME: usize = 255;

/// Session timeouts a member may ask for.
const SESSION_TIMEOUT: std::ops::RangeInclusive<u32> = SESSION_TIMEOUT_MS;

/// In a cluster, the leader of `__consumer_offsets` coordinates every group: each group
/// request passes here first and is served only there; elsewhere it is answered `NotLeader`
/// (naming the coordinator) or `LeaderNotAvailable`, and the client asks again. The partition
/// is created by the first group request the cluster sees. A node that starts to lead it (a
/// new term) loads the committed offsets from it and starts group membership afresh.
pub async fn coordinating(ctx: &Arc<Context>) -> Result<(), OpError> {
    use crate::cluster::{Command, RouteError};
    use crate::groups::offsets::OFFSETS_TOPIC;
    let Some(cluster) = &ctx.cluster else {
        return Ok(());
    };
    let topic = rill_protocol::TopicName::new(OFFSETS_TOPIC)
        .map_err(|e| OpError::Internal(e.to_string()))?;
    if !cluster.state().topics.contains_key(&topic) {
        let command = Command::CreateTopic {
            name: topic.clone(),
            partitions: 1,
            config: rill_protocol::TopicConfig {
                fsync: Some(rill_protocol::FsyncPolicy::Always),
                segment_bytes: Some(1 << 20),
                // Kept whole until it is compacted: retention would forget the offsets of a
                // group that has not committed for a while.
                retention_ms: Some(0),
                retention_bytes: Some(0),
            },
            replication_factor: 3,
            capped: true,
        };
        match cluster.propose(&command).await {
            Ok(()) => tracing::info!("created {OFFSETS_TOPIC} for consumer groups"),
            Err(why) if why.contains("already exists") => {}
            Err(why) => return Err(OpError::Route(RouteError::Unavailable(why))),
        }
    }
    let replica = cluster.leader_replica(&topic, 0)?;
    let m = replica.raft.metrics().borrow().clone();
    // Everything committed before this term is readable once an entry of it is applied.
    if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
        return Err(OpError::Route(RouteError::NoLeader {
            what: format!("{OFFSETS_TOPIC}-0 (the group coordinator)"),
        }));
    }
    let c = ctx.clone();
    ctx.groups
        .offsets()
        .serve_from(&replica, m.current_term, |records| {
            c.groups.restore(records, Instant::now())
        })
        .await
        .map_err(|e| OpError::Append(e.into()))
}

pub async fn join(
    ctx: Arc<Context>,
    principal: Option<Principal>,
    req: JoinGroupRequest,
) -> Result<JoinGroupResponse, OpError> {
    if !SESSION_TIMEOUT.contains(&req.session_timeout_ms) {
        return Err(OpError::Invalid(format!(
            "session_timeout_ms must be within {SESSION_TIMEOUT:?}, got {}",
            req.session_timeout_ms
        )));
    }
    if req.topics.is_empty() {
        return Err(OpError::Invalid(
            "a member must subscribe to at least one topic".into(),
        ));
    }
    if req.client.len() > MAX_CLIENT_NAME {
        return Err(OpError::Invalid(format!(
            "client name of {} bytes; at most {MAX_CLIENT_NAME}",
            req.client.len()
        )));
    }
    // A subscribed topic that does not exist (yet) is not an error: the member gets no
    // partitions of it, and the group rebalances when it is created (the group timer notices
    // the partition count change), as Kafka's consumers do.
    let join = Join {
        member_id: req.member_id,
        principal,
        client: req.client,
        topics: req.topics.into_iter().collect(),
        session_timeout: Duration::from_millis(u64::from(req.session_timeout_ms)),
        strategy: req.strategy,
        classic: None,
    };
    let waiting = {
        // Not while an admin change is between its emptiness check and its write.
        let _admin = ctx.groups.exclusive(&req.group).await;
        // A join may complete a rebalance, and assignment can be heavy: off the async workers.
        let (c, group) = (ctx.clone(), req.group.clone());
        blocking(move || c.groups.join(&c.topics, &group, join, Instant::now())).await??
    };
    let reply = tokio::select! {
        reply = waiting => reply.map_err(|_| OpError::Group(GroupError::RebalanceInProgress))?.map_err(OpError::Group)?.response,
        _ = ctx.shutdown.cancelled() => return Err(OpError::ShuttingDown),
    };
    // In a cluster the generation is durable before a member acts on it.
    if ctx.cluster.is_some() && reply.generation > 0 {
        ctx.groups.persist(&req.group, reply.generation).await?;
    }
    Ok(reply)
}

pub fn heartbeat(
    ctx: &Context,
    principal: Option<&str>,
    req: HeartbeatRequest,
) -> Result<HeartbeatResponse, OpError> {
    ctx.groups.heartbeat(
        &req.group,
        &req.member_id,
        principal,
        req.generation,
        Instant::now(),
    )?;
    Ok(HeartbeatResponse {})
}

pub fn leave(
    ctx: &Context,
    principal: Option<&str>,
    req: LeaveGroupRequest,
) -> Result<LeaveGroupResponse, OpError> {
    ctx.groups.leave(
        &ctx.topics,
        &req.group,
        &req.member_id,
        principal,
        Instant::now(),
    )?;
    Ok(LeaveGroupResponse {})
}

pub async fn commit(
    ctx: Arc<Context>,
    principal: Option<Principal>,
    req: CommitOffsetsRequest,
) -> Result<CommitOffsetsResponse, OpError> {
    let partitions: Vec<TopicPartition> = req.offsets.iter().map(|(tp, _)| tp.clone()).collect();
    // A tool's commit (no member) needs an empty group until it is written, like a reset.
    let _admin = match req.member_id {
        None => Some(ctx.groups.exclusive(&req.group).await),
        Some(_) => None,
    };
    ctx.groups.check_commit(
        &req.group,
        req.member_id.as_deref(),
        principal.as_deref(),
        req.generation,
        &partitions,
    )?;
    for tp in &partitions {
        ctx.topics.partition(&tp.topic, tp.partition)?;
    }
    let offsets: Vec<_> = req
        .offsets
        .into_iter()
        .map(|(tp, o)| (tp, Some(o)))
        .collect();
    ctx.groups.offsets().commit(&req.group, &offsets).await?;
    Ok(CommitOffsetsResponse {})
}

pub fn fetch_offsets(
    ctx: &Context,
    req: FetchOffsetsRequest,
) -> Result<FetchOffsetsResponse, OpError> {
    let offsets = req.partitions.into_iter().map(|tp| {
        let committed = ctx.groups.offsets().get(&req.group, &tp);
        (tp, committed)
    });
    Ok(FetchOffsetsResponse {
        offsets: offsets.collect(),
    })
}

pub fn list(ctx: &Context, checker: &Checker, _req: ListGroupsRequest) -> ListGroupsResponse {
    let mut groups = ctx.groups.list();
    groups.retain(|g| checker.sees_group(&g.group));
    ListGroupsResponse { groups }
}

pub async fn describe(
    ctx: Arc<Context>,
    req: DescribeGroupRequest,
) -> Result<DescribeGroupResponse, OpError> {
    let view = ctx.groups.describe(&req.group);
    let committed = ctx.groups.offsets().of_group(&req.group);
    if view.is_none() && committed.is_empty() {
        return Err(OpError::Group(GroupError::UnknownGroup(req.group)));
    }
    // Every partition of the subscribed topics and of topics with a commit.
    let mut partitions: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
    let topics: BTreeSet<_> = view
        .iter()
        .flat_map(|v| v.topics.iter())
        .chain(committed.keys().map(|tp| &tp.topic))
        .collect();
    for topic in topics {
        if let Ok(t) = ctx.topics.get(topic) {
            partitions.extend((0..t.partitions.len() as u32).map(|p| TopicPartition {
                topic: topic.clone(),
                partition: p,
            }));
        }
    }
    // All asked at once; a partition nobody answers for shows an end of 0.
    let figures = futures::future::join_all(partitions.iter().map(|tp| {
        let ctx = ctx.clone();
        async move {
            partition_offsets(&ctx, &tp.topic, tp.partition, None)
                .await
                .ok()
        }
    }))
    .await;
    let offsets = partitions
        .into_iter()
        .zip(figures)
        .map(|(tp, o)| {
            let log_end = o.map_or(0, |o| o.high_watermark);
            let from = committed
                .get(&tp)
                .copied()
                .or(o.map(|o| o.log_start))
                .unwrap_or(0);
            PartitionLag {
                committed: committed.get(&tp).copied(),
                log_end,
                lag: log_end.saturating_sub(from),
                partition: tp,
            }
        })
        .collect();
    let (state, generation, strategy, members) = match view {
        Some(v) => (v.state.to_string(), v.generation, v.strategy, v.members),
        None => ("empty".to_string(), 0, None, Vec::new()),
    };
    Ok(DescribeGroupResponse {
        group: req.group,
        state,
        generation,
        strategy,
        members,
        offsets,
    })
}

pub async fn delete(
    ctx: Arc<Context>,
    req: DeleteGroupRequest,
) -> Result<DeleteGroupResponse, OpError> {
    // Held until the deletion is durable: no member joins between the check and the write.
    let _admin = ctx.groups.exclusive(&req.group).await;
    ctx.groups.require_empty(&req.group)?;
    let committed = ctx.groups.offsets().of_group(&req.group);
    if committed.is_empty() && ctx.groups.describe(&req.group).is_none() {
        return Err(OpError::Group(GroupError::UnknownGroup(req.group)));
    }
    let tombstones: Vec<_> = committed.into_keys().map(|tp| (tp, None)).collect();
    ctx.groups.offsets().commit(&req.group, &tombstones).await?;
    ctx.groups
        .offsets()
        .record_generation(&req.group, None)
        .await?;
    ctx.groups.forget(&req.group);
    tracing::info!(group = %req.group, "group deleted");
    Ok(DeleteGroupResponse {})
}

/// A partition's log start, high watermark and first offset at or after `timestamp`: from this
/// node's copy on a single node; in a cluster from a node that holds a replica (this one, which
/// coordinates groups, may hold none).
async fn partition_offsets(
    ctx: &Context,
    topic: &rill_protocol::TopicName,
    partition: u32,
    timestamp: Option<i64>,
) -> Result<crate::raft::net::PartitionOffsets, OpError> {
    match &ctx.cluster {
        Some(c) => c
            .partition_offsets(topic, partition, timestamp)
            .await
            .map_err(|why| OpError::Route(crate::cluster::RouteError::Unavailable(why))),
        None => {
            let log = ctx.topics.partition(topic, partition)?;
            crate::cluster::local_offsets(log, timestamp)
                .await
                .map_err(OpError::Internal)
        }
    }
}

pub async fn reset(
    ctx: Arc<Context>,
    req: ResetOffsetsRequest,
) -> Result<ResetOffsetsResponse, OpError> {
    // Held until the new offsets are durable: no member joins between the check and the write.
    let _admin = ctx.groups.exclusive(&req.group).await;
    ctx.groups.require_empty(&req.group)?;
    let topic = ctx.topics.get(&req.topic)?;
    let timestamp = match req.to {
        ResetTo::Timestamp(ts) => Some(ts),
        _ => None,
    };
    let mut targets = BTreeMap::new();
    for p in 0..topic.partitions.len() {
        let o = partition_offsets(&ctx, &req.topic, p as u32, timestamp).await?;
        let offset = match req.to {
            ResetTo::Earliest => o.log_start,
            ResetTo::Latest => o.high_watermark,
            ResetTo::Offset(n) => n.clamp(o.log_start, o.high_watermark),
            ResetTo::Timestamp(_) => o.at_timestamp.unwrap_or(o.high_watermark),
        };
        targets.insert(
            TopicPartition {
                topic: req.topic.clone(),
                partition: p as u32,
            },
            offset,
        );
    }
    let commits: Vec<_> = targets
        .iter()
        .map(|(tp, o)| (tp.clone(), Some(*o)))
        .collect();
    ctx.groups.offsets().commit(&req.group, &commits).await?;
    tracing::info!(group = %req.group, topic = %req.topic, to = ?req.to, "offsets reset");
    Ok(ResetOffsetsResponse {
        offsets: targets.into_iter().collect(),
    })
}
