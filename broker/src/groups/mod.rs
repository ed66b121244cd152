//! Consumer groups: the coordinators of every group, their waiting joins, and committed offsets.
//!
//! `coordinator.rs` decides (a pure state machine per group), `assignment.rs` divides
//! partitions, `offsets.rs` keeps committed offsets durable. This module is the thin driver:
//! it holds the groups behind one short-held mutex (never across an await), turns requests and
//! timer ticks into coordinator calls, and answers joins that waited for a rebalance.
//! Membership is not persisted: after a broker restart members rejoin; offsets persist.

pub mod assignment;
pub mod coordinator;
pub mod offsets;

use crate::topics::Topics;
use coordinator::{Completed, Group, GroupError, Join, Joined, State};
use rill_protocol::TopicName;
use rill_protocol::messages::{
    AssignmentStrategy, GroupSummary, JoinGroupResponse, MemberInfo, TopicPartition,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use offsets::OffsetStore;

type JoinReply = Result<JoinGroupResponse, GroupError>;

#[derive(Debug)]
struct Slot {
    group: Group,
    /// Joins waiting for the current rebalance to complete, by member.
    waiting: HashMap<String, oneshot::Sender<JoinReply>>,
}

impl Slot {
    fn new(initial_delay: Duration) -> Self {
        Slot {
            group: Group::new(initial_delay),
            waiting: HashMap::new(),
        }
    }
}

/// A snapshot of one group for describe.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub state: &'static str,
    pub generation: u32,
    pub strategy: Option<AssignmentStrategy>,
    pub members: Vec<MemberInfo>,
    pub topics: BTreeSet<TopicName>,
}

#[derive(Debug)]
pub struct Groups {
    slots: Mutex<HashMap<String, Slot>>,
    /// Per group: held by an admin change (delete, reset, a tool's commit) from its "is the
    /// group empty?" check until its write is durable, and briefly by every join, so no member
    /// can join between the check and the write. Entries nobody holds are dropped as others
    /// are made.
    exclusive: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    offsets: OffsetStore,
    next_member: AtomicU64,
    initial_delay: Duration,
}

/// Group names follow no topic rules, but must be printable and bounded.
pub fn validate_name(name: &str) -> Result<(), GroupError> {
    let ok = !name.is_empty() && name.len() <= 249 && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(GroupError::InvalidName(name.to_string()))
    }
}

fn heartbeat_interval(session: Duration) -> u32 {
    (session / 3).as_millis().clamp(10, u128::from(u32::MAX)) as u32
}

fn counts(topics: &Topics, names: &BTreeSet<TopicName>) -> BTreeMap<TopicName, u32> {
    names
        .iter()
        .filter_map(|t| {
            topics
                .get(t)
                .ok()
                .map(|topic| (t.clone(), topic.partitions.len() as u32))
        })
        .collect()
}

impl Groups {
    /// `initial_delay`: how long a group with no members waits for more before assigning.
    pub fn new(offsets: OffsetStore, initial_delay: Duration) -> Self {
        Groups {
            slots: Mutex::new(HashMap::new()),
            exclusive: Mutex::new(HashMap::new()),
            offsets,
            next_member: AtomicU64::new(0),
            initial_delay,
        }
    }

    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    /// Waits for `group`'s admin lock (see `exclusive`). Hold it across an admin change's check
    /// and write; a join holds it only while it registers.
    pub async fn exclusive(&self, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.exclusive.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= 1024 {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(group.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_member_id(&self, client: &str) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let client: String = client
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        format!("{client}-{n}-{nanos:08x}")
    }

    /// Joins `group`; the receiver yields the member's assignment once the group is stable.
    pub fn join(
        &self,
        topics: &Topics,
        group: &str,
        join: Join,
        now: Instant,
    ) -> Result<oneshot::Receiver<JoinReply>, GroupError> {
        validate_name(group)?;
        let session = join.session_timeout;
        let client = join.client.clone();
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots();
        let slot = slots
            .entry(group.to_string())
            .or_insert_with(|| Slot::new(self.initial_delay));
        match slot.group.join(join, now, || self.new_member_id(&client))? {
            Joined::Current {
                member_id,
                generation,
                assignment,
            } => {
                let _ = tx.send(Ok(JoinGroupResponse {
                    member_id,
                    generation,
                    assignment,
                    heartbeat_interval_ms: heartbeat_interval(session),
                }));
            }
            Joined::Waiting(member) => {
                // A repeated join from the same member replaces its earlier wait.
                slot.waiting.insert(member, tx);
                let counts = counts(topics, &slot.group.topics());
                if let Some(done) = slot.group.try_complete(now, &counts) {
                    deliver(group, slot, done);
                }
            }
        }
        Ok(rx)
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        generation: u32,
        now: Instant,
    ) -> Result<(), GroupError> {
        let mut slots = self.slots();
        let slot = member_slot(&mut slots, group, member)?;
        slot.group.heartbeat(member, generation, now)
    }

    pub fn leave(
        &self,
        topics: &Topics,
        group: &str,
        member: &str,
        now: Instant,
    ) -> Result<(), GroupError> {
        let mut slots = self.slots();
        let slot = member_slot(&mut slots, group, member)?;
        slot.group.leave(member, now)?;
        if let Some(w) = slot.waiting.remove(member) {
            let _ = w.send(Err(GroupError::UnknownMember(member.to_string())));
        }
        tracing::info!(group, member, "member left");
        let counts = counts(topics, &slot.group.topics());
        if let Some(done) = slot.group.try_complete(now, &counts) {
            deliver(group, slot, done);
        }
        Ok(())
    }

    pub fn check_commit(
        &self,
        group: &str,
        member: Option<&str>,
        generation: Option<u32>,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        validate_name(group)?;
        let slots = self.slots();
        match slots.get(group) {
            Some(slot) => slot
                .group
                .check_commit(member, generation, partitions)
                .map_err(|e| match e {
                    GroupError::NotEmpty { members, .. } => GroupError::NotEmpty {
                        group: group.to_string(),
                        members,
                    },
                    other => other,
                }),
            None => match member {
                None => Ok(()),
                Some(m) => Err(GroupError::UnknownMember(m.to_string())),
            },
        }
    }

    /// Fails unless `group` has no members (for offset resets and deletion).
    pub fn require_empty(&self, group: &str) -> Result<(), GroupError> {
        validate_name(group)?;
        match self.slots().get(group) {
            Some(slot) if !slot.group.is_empty() => Err(GroupError::NotEmpty {
                group: group.to_string(),
                members: slot.group.members().len(),
            }),
            _ => Ok(()),
        }
    }

    /// Forgets an empty group's coordinator state.
    pub fn forget(&self, group: &str) {
        let mut slots = self.slots();
        if slots.get(group).is_some_and(|s| s.group.is_empty()) {
            slots.remove(group);
        }
    }

    /// Expires silent members, notices partition growth, completes due rebalances.
    pub fn tick(&self, topics: &Topics, now: Instant) {
        let mut slots = self.slots();
        for (name, slot) in slots.iter_mut() {
            let counts = counts(topics, &slot.group.topics());
            for member in slot.group.tick(now, &counts) {
                tracing::info!(group = %name, %member, "member's session timed out; rebalancing");
                if let Some(w) = slot.waiting.remove(&member) {
                    let _ = w.send(Err(GroupError::UnknownMember(member)));
                }
            }
            if let Some(done) = slot.group.try_complete(now, &counts) {
                deliver(name, slot, done);
            }
        }
        slots.retain(|_, s| !(s.group.is_empty() && s.waiting.is_empty()));
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let slots = self.slots();
        let g = &slots.get(group)?.group;
        let members = g
            .members()
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                client: m.client.clone(),
                topics: m.topics.iter().cloned().collect(),
                assignment: if g.state() == State::Stable {
                    g.assignment_of(id).to_vec()
                } else {
                    Vec::new()
                },
            })
            .collect();
        Some(GroupView {
            state: g.state().name(),
            generation: g.generation(),
            strategy: g.strategy(),
            members,
            topics: g.topics(),
        })
    }

    /// Every group with members or committed offsets.
    pub fn list(&self) -> Vec<GroupSummary> {
        let mut out: BTreeMap<String, GroupSummary> = self
            .offsets
            .groups()
            .into_iter()
            .map(|g| {
                (
                    g.clone(),
                    GroupSummary {
                        group: g,
                        state: "empty".into(),
                        members: 0,
                    },
                )
            })
            .collect();
        for (name, slot) in self.slots().iter() {
            out.insert(
                name.clone(),
                GroupSummary {
                    group: name.clone(),
                    state: slot.group.state().name().into(),
                    members: slot.group.members().len() as u32,
                },
            );
        }
        out.into_values().collect()
    }

    /// Stops the offsets log after a final fsync. Blocking.
    pub fn close(&self) -> bool {
        self.offsets.close()
    }
}

/// The slot of a group that `member` claims to belong to.
fn member_slot<'a>(
    slots: &'a mut HashMap<String, Slot>,
    group: &str,
    member: &str,
) -> Result<&'a mut Slot, GroupError> {
    slots
        .get_mut(group)
        .ok_or_else(|| GroupError::UnknownMember(member.to_string()))
}

fn deliver(group: &str, slot: &mut Slot, done: Completed) {
    tracing::info!(
        group,
        generation = done.generation,
        members = done.assignment.len(),
        "rebalanced"
    );
    for (member, tx) in slot.waiting.drain() {
        let reply = match done.assignment.get(&member) {
            Some(assignment) => {
                let session = slot
                    .group
                    .members()
                    .get(&member)
                    .map_or(Duration::from_secs(10), |m| m.session_timeout);
                Ok(JoinGroupResponse {
                    member_id: member,
                    generation: done.generation,
                    assignment: assignment.clone(),
                    heartbeat_interval_ms: heartbeat_interval(session),
                })
            }
            None => Err(GroupError::UnknownMember(member)),
        };
        let _ = tx.send(reply);
    }
}
