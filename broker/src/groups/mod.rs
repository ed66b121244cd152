//! Consumer groups: the coordinators of every group, their waiting joins, and committed offsets.
//!
//! `coordinator.rs` decides (a pure state machine per group), `assignment.rs` divides
//! partitions, `offsets.rs` keeps committed offsets durable. This module is the thin driver: it
//! turns requests and timer ticks into coordinator calls and answers joins that waited for a
//! rebalance. Each group sits behind its own short-held mutex (never across an await); the map
//! of groups is behind a read-write lock taken for writing only to add or drop a group, so
//! groups never wait for one another. A slot dropped from the map is marked retired, so a
//! request that found it just before is retried on the group's new slot.
//! On a single node membership is not persisted: after a broker restart members join again
//! with new ids; offsets persist. In a cluster each stable generation is recorded in
//! `__consumer_offsets` before its members are told of it (`Groups::persist`), and a node that
//! starts to coordinate restores every group from its last record (`Groups::restore`), so
//! members go on heartbeating and committing across a coordinator move.
//!
//! Limits (`GroupLimits`): groups on the broker, members (and issued, unused ids) per group,
//! and the length of the client name a member gives; each refusal has its own typed error.

pub mod assignment;
pub mod coordinator;
pub mod offsets;

use crate::topics::Topics;
use coordinator::{
    ClassicRound, Completed, GenerationRecord, Group, GroupError, Join, Joined, State,
    SyncAssignment, Synced,
};
use rill_protocol::TopicName;
use rill_protocol::messages::{
    AssignmentStrategy, GroupSummary, JoinGroupResponse, MemberInfo, TopicPartition,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use offsets::OffsetStore;

type JoinReply = Result<JoinAnswer, GroupError>;
type SyncReply = Result<bytes::Bytes, GroupError>;

/// A join's answer: what a Rill member is told, and for a Kafka member the round's leader and
/// protocol (with every member's metadata when it is the leader).
#[derive(Debug)]
pub struct JoinAnswer {
    pub response: JoinGroupResponse,
    pub classic: Option<ClassicRound>,
}

/// How groups are bounded and paced (`[groups]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// How long a group with no members waits for more before its first assignment.
    pub initial_delay: Duration,
    /// Most groups with members (or issued ids) at once.
    pub max_groups: usize,
    /// Most members, counting issued and unused ids, in one group.
    pub max_members: usize,
}

#[derive(Debug)]
struct Slot {
    group: Group,
    /// Joins waiting for the current rebalance to complete, by member.
    waiting: HashMap<String, oneshot::Sender<JoinReply>>,
    /// Kafka members' SyncGroups waiting for the leader's, by member.
    syncing: HashMap<String, oneshot::Sender<SyncReply>>,
    /// Dropped from the map: whoever still holds it must look the group up again.
    retired: bool,
    /// In a cluster: the latest generation known to be recorded durably.
    persisted: u32,
    /// Held while a generation is being recorded, so its members record it once.
    persisting: Arc<tokio::sync::Mutex<()>>,
}

impl Slot {
    fn new(limits: &GroupLimits) -> Self {
        Slot::with(Group::new(limits.initial_delay, limits.max_members))
    }

    fn with(group: Group) -> Self {
        Slot {
            group,
            waiting: HashMap::new(),
            syncing: HashMap::new(),
            retired: false,
            persisted: 0,
            persisting: Arc::default(),
        }
    }

    fn idle(&self) -> bool {
        self.group.is_idle() && self.waiting.is_empty() && self.syncing.is_empty()
    }

    /// SyncGroups still waiting when a new round began: answered so their members rejoin.
    fn settle_syncs(&mut self) {
        if !matches!(self.group.state(), State::AwaitingSync { .. }) {
            for (_, tx) in self.syncing.drain() {
                let _ = tx.send(Err(GroupError::RebalanceInProgress));
            }
        }
    }
}

type SlotRef = Arc<Mutex<Slot>>;

fn lock(slot: &SlotRef) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
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

/// See [`Groups::describe_kafka`].
#[derive(Debug, Clone)]
pub struct KafkaView {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<KafkaMember>,
}

#[derive(Debug, Clone)]
pub struct KafkaMember {
    pub id: String,
    pub client: String,
    pub metadata: bytes::Bytes,
    pub assignment: bytes::Bytes,
}

#[derive(Debug)]
pub struct Groups {
    slots: RwLock<HashMap<String, SlotRef>>,
    /// Per group: held by an admin change (delete, reset, a tool's commit) from its "is the
    /// group empty?" check until its write is durable, and briefly by every join, so no member
    /// can join between the check and the write. Entries nobody holds are dropped as others
    /// are made.
    exclusive: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    offsets: OffsetStore,
    next_member: AtomicU64,
    limits: GroupLimits,
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
    pub fn new(offsets: OffsetStore, limits: GroupLimits) -> Self {
        Groups {
            slots: RwLock::new(HashMap::new()),
            exclusive: Mutex::new(HashMap::new()),
            offsets,
            next_member: AtomicU64::new(0),
            limits,
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

    /// The slot of an existing group.
    fn slot(&self, group: &str) -> Option<SlotRef> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// Runs `f` on the group's live slot (retrying if it was retired under us), creating the
    /// group if `create` and it does not exist.
    fn with_slot<T>(
        &self,
        group: &str,
        create: bool,
        mut f: impl FnMut(&mut Slot) -> Result<T, GroupError>,
        missing: impl Fn() -> GroupError,
    ) -> Result<T, GroupError> {
        loop {
            let slot = match self.slot(group) {
                Some(s) => s,
                None if create => self.create(group)?,
                None => return Err(missing()),
            };
            let mut guard = lock(&slot);
            if guard.retired {
                continue;
            }
            return f(&mut guard);
        }
    }

    fn create(&self, group: &str) -> Result<SlotRef, GroupError> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(group) {
            return Ok(s.clone());
        }
        if slots.len() >= self.limits.max_groups {
            return Err(GroupError::TooManyGroups {
                max: self.limits.max_groups,
            });
        }
        let slot = Arc::new(Mutex::new(Slot::new(&self.limits)));
        slots.insert(group.to_string(), slot.clone());
        Ok(slot)
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

    /// Joins `group`; the receiver yields the member's assignment once the group is stable (or
    /// at once: an issued id for a first join, or the current assignment).
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
        let mut tx = Some(tx);
        self.with_slot(
            group,
            true,
            |slot| {
                let outcome = slot
                    .group
                    .join(join.clone(), now, || self.new_member_id(&client))?;
                let Some(tx) = tx.take() else {
                    return Ok(());
                };
                slot.settle_syncs();
                let now_reply = |member_id, generation, assignment, rejoin_with_id| {
                    Ok(JoinAnswer {
                        response: JoinGroupResponse {
                            member_id,
                            generation,
                            assignment,
                            heartbeat_interval_ms: heartbeat_interval(session),
                            rejoin_with_id,
                        },
                        classic: None,
                    })
                };
                match outcome {
                    Joined::IdIssued(member_id) => {
                        let _ = tx.send(now_reply(member_id, 0, Vec::new(), true));
                    }
                    Joined::Current {
                        member_id,
                        generation,
                        assignment,
                    } => {
                        let _ = tx.send(now_reply(member_id, generation, assignment, false));
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
                Ok(())
            },
            || GroupError::UnknownGroup(group.to_string()),
        )?;
        Ok(rx)
    }

    /// A Kafka member's SyncGroup: the receiver yields its assignment once the leader's
    /// SyncGroup has come (at once for the leader, or when the group is stable).
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        principal: Option<&str>,
        generation: u32,
        assignments: Vec<SyncAssignment>,
        now: Instant,
    ) -> Result<oneshot::Receiver<SyncReply>, GroupError> {
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let mut assignments = Some(assignments);
        self.with_slot(
            group,
            false,
            |slot| {
                let given = assignments.take().unwrap_or_default();
                let outcome = slot.group.sync(member, principal, generation, given, now)?;
                let Some(tx) = tx.take() else {
                    return Ok(());
                };
                match outcome {
                    Synced::Waiting => {
                        slot.syncing.insert(member.to_string(), tx);
                    }
                    Synced::Assigned(bytes) => {
                        let _ = tx.send(Ok(bytes));
                        // The leader's: everyone waiting gets theirs.
                        for (m, w) in slot.syncing.drain() {
                            let mine = slot.group.classic_assignment(&m).cloned();
                            let _ = w.send(Ok(mine.unwrap_or_default()));
                        }
                    }
                }
                Ok(())
            },
            || GroupError::UnknownMember(member.to_string()),
        )?;
        Ok(rx)
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member: &str,
        principal: Option<&str>,
        generation: u32,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.with_slot(
            group,
            false,
            |slot| slot.group.heartbeat(member, principal, generation, now),
            || GroupError::UnknownMember(member.to_string()),
        )
    }

    pub fn leave(
        &self,
        topics: &Topics,
        group: &str,
        member: &str,
        principal: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.with_slot(
            group,
            false,
            |slot| {
                slot.group.leave(member, principal, now)?;
                if let Some(w) = slot.waiting.remove(member) {
                    let _ = w.send(Err(GroupError::UnknownMember(member.to_string())));
                }
                if let Some(w) = slot.syncing.remove(member) {
                    let _ = w.send(Err(GroupError::UnknownMember(member.to_string())));
                }
                slot.settle_syncs();
                tracing::info!(group, member, "member left");
                let counts = counts(topics, &slot.group.topics());
                if let Some(done) = slot.group.try_complete(now, &counts) {
                    deliver(group, slot, done);
                }
                Ok(())
            },
            || GroupError::UnknownMember(member.to_string()),
        )
    }

    pub fn check_commit(
        &self,
        group: &str,
        member: Option<&str>,
        principal: Option<&str>,
        generation: Option<u32>,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        validate_name(group)?;
        let Some(slot) = self.slot(group) else {
            return match member {
                None => Ok(()),
                Some(m) => Err(GroupError::UnknownMember(m.to_string())),
            };
        };
        lock(&slot)
            .group
            .check_commit(member, principal, generation, partitions)
            .map_err(|e| match e {
                GroupError::NotEmpty { members, .. } => GroupError::NotEmpty {
                    group: group.to_string(),
                    members,
                },
                other => other,
            })
    }

    /// Fails unless `group` has no members (for offset resets and deletion).
    pub fn require_empty(&self, group: &str) -> Result<(), GroupError> {
        validate_name(group)?;
        match self.slot(group) {
            Some(slot) => {
                let slot = lock(&slot);
                if slot.group.is_empty() {
                    Ok(())
                } else {
                    Err(GroupError::NotEmpty {
                        group: group.to_string(),
                        members: slot.group.members().len(),
                    })
                }
            }
            None => Ok(()),
        }
    }

    /// Replaces every group's membership with its last recorded generation (encoded
    /// `GenerationRecord`s, as `OffsetStore::serve_from` hands them over): a new coordinator
    /// term. Members of a restored generation go on as before (a session starts now for each;
    /// those that are gone expire); waiting joins are answered `RebalanceInProgress` and come
    /// again.
    pub fn restore(&self, records: Vec<(String, bytes::Bytes)>, now: Instant) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        for (_, slot) in slots.drain() {
            let mut s = lock(&slot);
            s.retired = true;
            s.waiting.clear();
        }
        for (name, value) in records {
            let record: GenerationRecord = match rill_protocol::codec::decode(
                &value,
                "group generation",
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(group = %name, error = %e, "unreadable group generation; its members join afresh");
                    continue;
                }
            };
            let generation = record.generation;
            let group = Group::restore(
                record,
                self.limits.initial_delay,
                self.limits.max_members,
                now,
            );
            if group.is_empty() || slots.len() >= self.limits.max_groups {
                continue;
            }
            let mut slot = Slot::with(group);
            slot.persisted = generation;
            slots.insert(name, Arc::new(Mutex::new(slot)));
        }
    }

    /// In a cluster: records `group`'s current generation durably if it is `generation` or
    /// later and not yet recorded; a join is answered only after this, so every generation a
    /// member acts on survives a coordinator move. A group that moved on to a rebalance has
    /// nothing to record (its next generation will be).
    pub async fn persist(&self, group: &str, generation: u32) -> Result<(), offsets::OffsetError> {
        let Some(slot) = self.slot(group) else {
            return Ok(());
        };
        let gate = lock(&slot).persisting.clone();
        let _one = gate.lock().await;
        let record = {
            let s = lock(&slot);
            if s.retired || s.persisted >= generation {
                return Ok(());
            }
            s.group.record()
        };
        let Some(record) = record else {
            return Ok(());
        };
        let recorded = record.generation;
        let mut value = bytes::BytesMut::new();
        rill_protocol::codec::encode(&record, &mut value);
        self.offsets
            .record_generation(group, Some(value.freeze()))
            .await?;
        let mut s = lock(&slot);
        s.persisted = s.persisted.max(recorded);
        Ok(())
    }

    /// Forgets an empty group's coordinator state.
    pub fn forget(&self, group: &str) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let idle = slots.get(group).is_some_and(|s| {
            let mut s = lock(s);
            let idle = s.group.is_empty() && s.waiting.is_empty();
            if idle {
                s.retired = true;
            }
            idle
        });
        if idle {
            slots.remove(group);
        }
    }

    /// Every group and its slot, taken under the map's read lock and released at once.
    fn snapshot(&self) -> Vec<(String, SlotRef)> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Expires silent members and unused ids, notices partition growth, completes due
    /// rebalances, and drops groups left with nobody. Each group is handled under its own lock;
    /// blocking (assignment can be heavy): run it off the async workers.
    pub fn tick(&self, topics: &Topics, now: Instant) {
        let all = self.snapshot();
        let mut idle = Vec::new();
        for (name, slot) in all {
            let mut slot = lock(&slot);
            let counts = counts(topics, &slot.group.topics());
            for member in slot.group.tick(now, &counts) {
                tracing::info!(group = %name, %member, "member's session timed out; rebalancing");
                if let Some(w) = slot.waiting.remove(&member) {
                    let _ = w.send(Err(GroupError::UnknownMember(member)));
                }
            }
            if let Some(done) = slot.group.try_complete(now, &counts) {
                deliver(&name, &mut slot, done);
            }
            slot.settle_syncs();
            if slot.idle() {
                idle.push(name);
            }
        }
        if !idle.is_empty() {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            for name in idle {
                let gone = slots.get(&name).is_some_and(|s| {
                    let mut s = lock(s);
                    s.retired = s.idle();
                    s.retired
                });
                if gone {
                    slots.remove(&name);
                }
            }
        }
    }

    /// A group as Kafka's DescribeGroups and ListGroups show it: state, protocol type ("rill"
    /// for a group of Rill consumers), chosen protocol, and per member its client, metadata
    /// and assignment bytes (empty for Rill members).
    pub fn describe_kafka(&self, group: &str) -> Option<KafkaView> {
        let slot = self.slot(group)?;
        let slot = lock(&slot);
        let g = &slot.group;
        let (protocol_type, protocol) = match g.classic() {
            Some((t, p, _)) => (t.to_string(), p.unwrap_or_default().to_string()),
            None if g.is_empty() => (String::new(), String::new()),
            None => (
                "rill".to_string(),
                g.strategy()
                    .map(|s| format!("{s:?}").to_lowercase())
                    .unwrap_or_default(),
            ),
        };
        let members = g
            .members()
            .iter()
            .map(|(id, m)| KafkaMember {
                id: id.clone(),
                client: m.client.clone(),
                metadata: m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
                assignment: g.classic_assignment(id).cloned().unwrap_or_default(),
            })
            .collect();
        Some(KafkaView {
            state: g.state().kafka_name(),
            protocol_type,
            protocol,
            members,
        })
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let slot = self.slot(group)?;
        let slot = lock(&slot);
        let g = &slot.group;
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
            strategy: g.strategy().filter(|_| g.classic().is_none()),
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
        for (name, slot) in self.snapshot() {
            let slot = lock(&slot);
            out.insert(
                name.clone(),
                GroupSummary {
                    group: name,
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
                // The leader alone is told every member's metadata.
                let classic = done.classic.as_ref().map(|r| ClassicRound {
                    members: if r.leader == member {
                        r.members.clone()
                    } else {
                        Vec::new()
                    },
                    ..r.clone()
                });
                Ok(JoinAnswer {
                    response: JoinGroupResponse {
                        member_id: member,
                        generation: done.generation,
                        assignment: assignment.clone(),
                        heartbeat_interval_ms: heartbeat_interval(session),
                        rejoin_with_id: false,
                    },
                    classic,
                })
            }
            None => Err(GroupError::UnknownMember(member)),
        };
        let _ = tx.send(reply);
    }
}
