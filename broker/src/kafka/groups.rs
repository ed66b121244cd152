//! Kafka's classic group APIs onto the same coordinator and offsets store as Rill's groups
//! (`groups::coordinator`'s classic mode): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch.

use super::Listener;
use super::handlers::kafka_code;
use super::wire::{self, StrBytes, msg};
use crate::groups::coordinator::{Classic, GroupError, Join, SyncAssignment};
use crate::handlers::{OpError, blocking, groups as rill_groups};
use crate::server::Context;
use rill_protocol::TopicName;
use rill_protocol::messages::{AssignmentStrategy, CommitOffsetsRequest, TopicPartition};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn group_code(e: GroupError) -> i16 {
    kafka_code(&OpError::Group(e))
}

/// FindCoordinator: this node coordinates every group (in a cluster, the node leading the
/// offsets partition does; another answers COORDINATOR_NOT_AVAILABLE until Metadata can name
/// the others).
pub async fn find_coordinator(
    ctx: Arc<Context>,
    listener: &Listener,
    req: msg::FindCoordinatorRequest,
    version: i16,
) -> msg::FindCoordinatorResponse {
    let node = ctx.cluster.as_ref().map_or(0, |c| c.node_id as i32);
    let here = rill_groups::coordinating(&ctx).await.is_ok();
    let answer = |key: StrBytes| {
        let c = msg::find_coordinator_response::Coordinator::default().with_key(key);
        match (req.key_type, here) {
            (0, true) => c
                .with_node_id(msg::BrokerId(node))
                .with_host(StrBytes::from_string(listener.host.clone()))
                .with_port(i32::from(listener.port)),
            (0, false) => c
                .with_error_code(wire::COORDINATOR_NOT_AVAILABLE)
                .with_node_id(msg::BrokerId(-1)),
            _ => c
                .with_error_code(wire::COORDINATOR_NOT_AVAILABLE)
                .with_error_message(Some(StrBytes::from_static_str(
                    "transactions are not supported by Rill",
                )))
                .with_node_id(msg::BrokerId(-1)),
        }
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(answer).collect();
        return msg::FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = answer(req.key.clone());
    msg::FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

/// JoinGroup. From v4 a first join gets MEMBER_ID_REQUIRED with its id (KIP-394, the
/// coordinator's two steps); before v4 clients cannot do that, so both steps happen here.
pub async fn join_group(
    ctx: Arc<Context>,
    req: msg::JoinGroupRequest,
    client: String,
    version: i16,
) -> msg::JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let fail = |code: i16| {
        msg::JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(req.member_id.clone())
    };
    let session = req.session_timeout_ms;
    if !(6_000..=300_000).contains(&session) {
        return fail(wire::INVALID_SESSION_TIMEOUT);
    }
    let is_consumer = req.protocol_type.as_str() == "consumer";
    let topics: BTreeSet<TopicName> = req
        .protocols
        .iter()
        .filter(|_| is_consumer)
        .filter_map(|p| wire::subscription_topics(&p.metadata))
        .flatten()
        .filter_map(|t| TopicName::new(t).ok())
        .collect();
    let rebalance = match req.rebalance_timeout_ms {
        n if n > 0 => n,
        _ => session,
    };
    let join = |member_id: Option<String>| Join {
        member_id,
        principal: None,
        client: client.clone(),
        topics: topics.clone(),
        session_timeout: Duration::from_millis(session as u64),
        strategy: AssignmentStrategy::default(),
        classic: Some(Classic {
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            rebalance_timeout: Duration::from_millis(rebalance as u64),
        }),
    };
    let member = Some(req.member_id.to_string()).filter(|m| !m.is_empty());
    let first = join_once(&ctx, &group, join(member.clone())).await;
    let answer = match first {
        Ok(a) if a.response.rejoin_with_id && version >= 4 => {
            return fail(wire::MEMBER_ID_REQUIRED)
                .with_member_id(StrBytes::from_string(a.response.member_id));
        }
        Ok(a) if a.response.rejoin_with_id => {
            join_once(&ctx, &group, join(Some(a.response.member_id))).await
        }
        other => other,
    };
    match answer {
        Err(code) => fail(code),
        Ok(a) => {
            let round = a.classic.unwrap_or_default();
            msg::JoinGroupResponse::default()
                .with_generation_id(a.response.generation as i32)
                .with_protocol_type(Some(req.protocol_type.clone()))
                .with_protocol_name(Some(StrBytes::from_string(round.protocol)))
                .with_leader(StrBytes::from_string(round.leader))
                .with_member_id(StrBytes::from_string(a.response.member_id))
                .with_members(
                    round
                        .members
                        .into_iter()
                        .map(|(id, metadata)| {
                            msg::join_group_response::JoinGroupResponseMember::default()
                                .with_member_id(StrBytes::from_string(id))
                                .with_metadata(metadata)
                        })
                        .collect(),
                )
        }
    }
}

/// One join through the coordinator (as the Rill handler does it: under the group's admin
/// lock, off the async workers), waiting for the round to complete.
async fn join_once(
    ctx: &Arc<Context>,
    group: &str,
    join: Join,
) -> Result<crate::groups::JoinAnswer, i16> {
    let waiting = {
        let _admin = ctx.groups.exclusive(group).await;
        let (c, g) = (ctx.clone(), group.to_string());
        blocking(move || c.groups.join(&c.topics, &g, join, Instant::now()))
            .await
            .map_err(|e| kafka_code(&e))?
            .map_err(group_code)?
    };
    tokio::select! {
        reply = waiting => reply.map_err(|_| wire::REBALANCE_IN_PROGRESS)?.map_err(group_code),
        _ = ctx.shutdown.cancelled() => Err(wire::COORDINATOR_NOT_AVAILABLE),
    }
}

pub async fn sync_group(ctx: Arc<Context>, req: msg::SyncGroupRequest) -> msg::SyncGroupResponse {
    let assignments = req
        .assignments
        .iter()
        .map(|a| SyncAssignment {
            member: a.member_id.to_string(),
            bytes: a.assignment.clone(),
            partitions: wire::assignment_partitions(&a.assignment).and_then(|tps| {
                let mut out = Vec::new();
                for (topic, partitions) in tps {
                    let topic = TopicName::new(topic).ok()?;
                    for p in partitions {
                        out.push(TopicPartition {
                            topic: topic.clone(),
                            partition: u32::try_from(p).ok()?,
                        });
                    }
                }
                Some(out)
            }),
        })
        .collect();
    let answer = msg::SyncGroupResponse::default()
        .with_protocol_type(req.protocol_type.clone())
        .with_protocol_name(req.protocol_name.clone());
    let waiting = ctx.groups.sync(
        &req.group_id.0,
        &req.member_id,
        None,
        req.generation_id.max(0) as u32,
        assignments,
        Instant::now(),
    );
    let reply = match waiting {
        Err(e) => return answer.with_error_code(group_code(e)),
        Ok(rx) => tokio::select! {
            r = rx => r.map_err(|_| wire::REBALANCE_IN_PROGRESS).and_then(|r| r.map_err(group_code)),
            _ = ctx.shutdown.cancelled() => Err(wire::COORDINATOR_NOT_AVAILABLE),
        },
    };
    match reply {
        Ok(bytes) => answer.with_assignment(bytes),
        Err(code) => answer.with_error_code(code),
    }
}

pub fn heartbeat(ctx: &Context, req: msg::HeartbeatRequest) -> msg::HeartbeatResponse {
    let r = ctx.groups.heartbeat(
        &req.group_id.0,
        &req.member_id,
        None,
        req.generation_id.max(0) as u32,
        Instant::now(),
    );
    msg::HeartbeatResponse::default().with_error_code(r.err().map_or(wire::NONE, group_code))
}

pub fn leave_group(ctx: &Context, req: msg::LeaveGroupRequest) -> msg::LeaveGroupResponse {
    let leave = |member: &str| {
        ctx.groups
            .leave(&ctx.topics, &req.group_id.0, member, None, Instant::now())
            .err()
            .map_or(wire::NONE, group_code)
    };
    if req.members.is_empty() {
        return msg::LeaveGroupResponse::default().with_error_code(leave(&req.member_id));
    }
    let members = req
        .members
        .iter()
        .map(|m| {
            msg::leave_group_response::MemberResponse::default()
                .with_member_id(m.member_id.clone())
                .with_group_instance_id(m.group_instance_id.clone())
                .with_error_code(leave(&m.member_id))
        })
        .collect();
    msg::LeaveGroupResponse::default().with_members(members)
}

/// OffsetCommit: through the same commit as a Rill member's (generation and member checked,
/// durable before the answer). A commit without a member (generation -1) is a tool's, allowed
/// only for a group without members.
pub async fn offset_commit(
    ctx: Arc<Context>,
    req: msg::OffsetCommitRequest,
) -> msg::OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut invalid = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            match (
                TopicName::new(t.name.0.as_str()),
                u32::try_from(p.partition_index),
            ) {
                (Ok(topic), Ok(partition)) if p.committed_offset >= 0 => offsets.push((
                    TopicPartition { topic, partition },
                    p.committed_offset as u64,
                )),
                _ => invalid.push((t.name.clone(), p.partition_index)),
            }
        }
    }
    let member = Some(req.member_id.to_string()).filter(|m| !m.is_empty());
    let generation = u32::try_from(req.generation_id_or_member_epoch).ok();
    let code = match rill_groups::commit(
        ctx,
        None,
        CommitOffsetsRequest {
            group: req.group_id.0.to_string(),
            member_id: member,
            generation,
            offsets,
        },
    )
    .await
    {
        Ok(_) => wire::NONE,
        Err(e) => kafka_code(&e),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            msg::offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let bad = invalid.contains(&(t.name.clone(), p.partition_index));
                            msg::offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(if bad { wire::INVALID_REQUEST } else { code })
                        })
                        .collect(),
                )
        })
        .collect();
    msg::OffsetCommitResponse::default().with_topics(topics)
}

/// OffsetFetch: the committed offsets of the partitions asked for (-1 where none), or of every
/// partition of the topics that have commits when the list is null.
pub fn offset_fetch(
    ctx: &Context,
    req: msg::OffsetFetchRequest,
    version: i16,
) -> msg::OffsetFetchResponse {
    let one = |group: &str, asked: Option<Vec<(msg::TopicName, Vec<i32>)>>| {
        let asked = match asked {
            Some(a) => a,
            None => committed_topics(ctx, group),
        };
        asked
            .into_iter()
            .map(|(name, partitions)| {
                let offsets: Vec<(i32, i64)> = partitions
                    .iter()
                    .map(|&p| {
                        let committed = TopicName::new(name.0.as_str())
                            .ok()
                            .zip(u32::try_from(p).ok())
                            .and_then(|(topic, partition)| {
                                let tp = TopicPartition { topic, partition };
                                ctx.groups.offsets().get(group, &tp)
                            });
                        (p, committed.map_or(-1, |o| o as i64))
                    })
                    .collect();
                (name, offsets)
            })
            .collect::<Vec<_>>()
    };
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let asked = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                        .collect()
                });
                let topics = one(&g.group_id.0, asked)
                    .into_iter()
                    .map(|(name, offsets)| {
                        msg::offset_fetch_response::OffsetFetchResponseTopics::default()
                            .with_name(name)
                            .with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|(p, o)| {
                                        msg::offset_fetch_response::OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_committed_leader_epoch(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                msg::offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        return msg::OffsetFetchResponse::default().with_groups(groups);
    }
    let asked = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.clone(), t.partition_indexes.clone()))
            .collect()
    });
    let topics = one(&req.group_id.0, asked)
        .into_iter()
        .map(|(name, offsets)| {
            msg::offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    offsets
                        .into_iter()
                        .map(|(p, o)| {
                            msg::offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_committed_leader_epoch(-1)
                        })
                        .collect(),
                )
        })
        .collect();
    msg::OffsetFetchResponse::default().with_topics(topics)
}

/// Every partition of every topic the group has commits for (an OffsetFetch for all).
fn committed_topics(ctx: &Context, group: &str) -> Vec<(msg::TopicName, Vec<i32>)> {
    ctx.topics
        .list()
        .iter()
        .map(|t| {
            let partitions = (0..t.partitions.len() as i32)
                .filter(|&p| {
                    let tp = TopicPartition {
                        topic: t.name.clone(),
                        partition: p as u32,
                    };
                    ctx.groups.offsets().get(group, &tp).is_some()
                })
                .collect::<Vec<_>>();
            (
                msg::TopicName(StrBytes::from_string(t.name.to_string())),
                partitions,
            )
        })
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

/// ListGroups: every group with members or commits; a state filter (v4+) keeps those named.
pub fn list_groups(ctx: &Context, req: msg::ListGroupsRequest) -> msg::ListGroupsResponse {
    let groups = ctx
        .groups
        .list()
        .into_iter()
        .filter_map(|g| {
            let view = ctx.groups.describe_kafka(&g.group);
            let (state, kind) =
                view.map_or(("Empty", String::new()), |v| (v.state, v.protocol_type));
            let wanted = req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.as_str().eq_ignore_ascii_case(state));
            wanted.then(|| {
                msg::list_groups_response::ListedGroup::default()
                    .with_group_id(msg::GroupId(StrBytes::from_string(g.group)))
                    .with_protocol_type(StrBytes::from_string(kind))
                    .with_group_state(StrBytes::from_static_str(state))
                    .with_group_type(StrBytes::from_static_str("classic"))
            })
        })
        .collect();
    msg::ListGroupsResponse::default().with_groups(groups)
}

/// DescribeGroups: state, protocol and members; a group never seen is "Dead", as in Kafka.
pub fn describe_groups(
    ctx: &Context,
    req: msg::DescribeGroupsRequest,
) -> msg::DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let described = msg::describe_groups_response::DescribedGroup::default();
            let Some(view) = ctx.groups.describe_kafka(&id.0) else {
                let state = if ctx.groups.offsets().groups().contains(&id.0.to_string()) {
                    "Empty"
                } else {
                    "Dead"
                };
                return described
                    .with_group_id(id)
                    .with_group_state(StrBytes::from_static_str(state));
            };
            described
                .with_group_id(id)
                .with_group_state(StrBytes::from_static_str(view.state))
                .with_protocol_type(StrBytes::from_string(view.protocol_type))
                .with_protocol_data(StrBytes::from_string(view.protocol))
                .with_members(
                    view.members
                        .into_iter()
                        .map(|m| {
                            msg::describe_groups_response::DescribedGroupMember::default()
                                .with_member_id(StrBytes::from_string(m.id))
                                .with_client_id(StrBytes::from_string(m.client))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                )
        })
        .collect();
    msg::DescribeGroupsResponse::default().with_groups(groups)
}
