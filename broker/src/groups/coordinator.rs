//! One consumer group's membership as a pure state machine: events in, outcomes out.
//!
//! No I/O and no clock: every method takes `now`, so tests drive time by hand. `Groups`
//! (groups/mod.rs) owns the instances, feeds them requests and timer ticks, and delivers the
//! outcomes (join responses) to waiting connections.
//!
//! The protocol is eager with a join barrier. A change of membership (a join, a leave, a session
//! timeout, a subscribed topic gaining partitions) moves the group to *preparing*. Members learn
//! of it from their next heartbeat (`RebalanceInProgress`), stop reading, commit what they
//! processed (their old generation stays valid while preparing) and join again. Only when every
//! member has rejoined, or the rebalance deadline has passed (stragglers are removed), is the new
//! assignment computed, the generation incremented and every join answered. Because every member
//! gave up its partitions before any member receives new ones, no partition is ever owned by two
//! members of one generation, nor handed over while its old owner may still read it.
//!
//! Kafka's classic protocol (client-side assignment) runs in the same machine: a group whose
//! members joined with a `Classic` protocol list gets no assignment from the broker. When the
//! barrier completes it picks the protocol every member lists (first in the leader's order),
//! increments the generation and waits in `AwaitingSync` for the leader's SyncGroup, which
//! carries every member's assignment (opaque bytes, plus the partitions they name when the
//! handler could read them); members that sync before it wait, and are answered with it.
//!
//! A group that had no members waits `initial_delay` after its first join (extended by each
//! newcomer, never past the rebalance deadline) before its first assignment, so members started
//! together share the partitions rather than the first taking them all (Kafka's
//! `group.initial.rebalance.delay.ms`).

use super::assignment::{self, Assignment, MemberId, Subscriptions};
use rill_protocol::TopicName;
use rill_protocol::messages::{AssignmentStrategy, TopicPartition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member '{0}' is not in the group; rejoin")]
    UnknownMember(String),
    #[error("generation {got} is stale; the group is at generation {current}")]
    StaleGeneration { got: u32, current: u32 },
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    #[error("member '{member}' does not own {partition} in generation {generation}")]
    NotAssigned {
        member: String,
        partition: TopicPartition,
        generation: u32,
    },
    #[error("the group uses the {group} strategy, not {asked}")]
    InconsistentStrategy {
        group: AssignmentStrategy,
        asked: AssignmentStrategy,
    },
    #[error("group '{group}' has {members} member(s); this needs an empty group")]
    NotEmpty { group: String, members: usize },
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    #[error("invalid group name {0:?}: 1 to 249 printable characters")]
    InvalidName(String),
    #[error("the group has its maximum of {max} members")]
    GroupFull { max: usize },
    #[error("the broker has its maximum of {max} groups")]
    TooManyGroups { max: usize },
    /// A member id used by another principal than the one that joined with it.
    #[error("member '{0}' belongs to another principal")]
    NotOwner(String),
    /// A Kafka member whose protocol type or protocols do not fit the group's, or a Rill member
    /// in a Kafka group (or the other way round).
    #[error("{0}")]
    InconsistentProtocol(String),
}

/// The principal a member joined as.
pub type Principal = std::sync::Arc<str>;

/// Refuses `principal` acting for a member that `owner` joined, unless the caller passes every
/// check (`None`: a superuser, or a broker without authentication).
fn check_owner(
    member: &str,
    owner: &Option<Principal>,
    principal: Option<&str>,
) -> Result<(), GroupError> {
    match principal {
        Some(p) if owner.as_deref() != Some(p) => Err(GroupError::NotOwner(member.to_string())),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    Preparing {
        deadline: Instant,
    },
    /// Classic groups only: a generation was handed out and the leader's SyncGroup is awaited
    /// (Kafka's CompletingRebalance).
    AwaitingSync {
        deadline: Instant,
    },
    Stable,
}

impl State {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub fn kafka_name(&self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::Preparing { .. } => "PreparingRebalance",
            State::AwaitingSync { .. } => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Preparing { .. } => "rebalancing",
            State::AwaitingSync { .. } => "completing-rebalance",
            State::Stable => "stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    /// Who joined (`None`: a broker without authentication, or a superuser); only they may
    /// act for the member.
    pub principal: Option<Principal>,
    pub client: String,
    pub topics: BTreeSet<TopicName>,
    pub session_timeout: Duration,
    /// How long a rebalance waits for this member to rejoin (Kafka's rebalance timeout; the
    /// session timeout for Rill members).
    pub rebalance_timeout: Duration,
    /// Classic members: the protocols it supports, most preferred first, with its metadata.
    pub protocols: Vec<(String, bytes::Bytes)>,
    pub last_seen: Instant,
}

/// What a Kafka member joins with (client-side assignment).
#[derive(Debug, Clone)]
pub struct Classic {
    /// "consumer" for consumers; the group's members must agree on it.
    pub protocol_type: String,
    /// Names (assignors) and metadata, most preferred first.
    pub protocols: Vec<(String, bytes::Bytes)>,
    pub rebalance_timeout: Duration,
}

/// A join request, as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct Join {
    pub member_id: Option<MemberId>,
    pub principal: Option<Principal>,
    pub client: String,
    pub topics: BTreeSet<TopicName>,
    pub session_timeout: Duration,
    pub strategy: AssignmentStrategy,
    /// A Kafka member (client-side assignment); `None` for a Rill member.
    pub classic: Option<Classic>,
}

/// What a join leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// A first join (no member id): the broker issued this id; join again with it. Nothing
    /// else changed, so a first join resent after a lost response leaves no ghost member
    /// (Kafka's KIP-394).
    IdIssued(MemberId),
    /// Wait for the rebalance to complete.
    Waiting(MemberId),
    /// Nothing changed: the member's current generation and partitions.
    Current {
        member_id: MemberId,
        generation: u32,
        assignment: Vec<TopicPartition>,
    },
}

/// A stable generation as it is kept durably in a cluster (`Group::record`), so that the next
/// coordinator restores it (`Group::restore`) and its members go on without a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u32,
    pub strategy: Option<AssignmentStrategy>,
    pub members: Vec<MemberRecord>,
    /// Partition counts the assignment was computed from.
    pub counts: Vec<(TopicName, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: MemberId,
    pub principal: Option<String>,
    pub client: String,
    pub topics: Vec<TopicName>,
    pub session_timeout_ms: u64,
    pub assignment: Vec<TopicPartition>,
}

/// A completed rebalance: the new generation and what each member that joined owns in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub generation: u32,
    pub assignment: Assignment,
    /// Classic groups: the leader, the protocol chosen, and every member's metadata for it
    /// (what the leader's join answer carries). The assignment above is then empty: it comes
    /// with the leader's SyncGroup.
    pub classic: Option<ClassicRound>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassicRound {
    pub leader: MemberId,
    pub protocol: String,
    pub members: Vec<(MemberId, bytes::Bytes)>,
}

/// What a SyncGroup leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The member's assignment (the leader's SyncGroup arrived, now or before).
    Assigned(bytes::Bytes),
    /// Wait for the leader's SyncGroup.
    Waiting,
}

/// One member's assignment as the leader sends it: the bytes, and the partitions they name
/// (when the handler could read them: "consumer" protocol), for describe and commit checks.
#[derive(Debug, Clone)]
pub struct SyncAssignment {
    pub member: MemberId,
    pub bytes: bytes::Bytes,
    pub partitions: Option<Vec<TopicPartition>>,
}

#[derive(Debug)]
pub struct Group {
    state: State,
    generation: u32,
    strategy: Option<AssignmentStrategy>,
    members: BTreeMap<MemberId, Member>,
    assignment: Assignment,
    /// Members that joined since the current rebalance began.
    joined: BTreeSet<MemberId>,
    /// Partition counts the current assignment was computed from.
    counts: BTreeMap<TopicName, u32>,
    /// How long a group that had no members waits for more joins before its first assignment.
    initial_delay: Duration,
    /// While preparing a group's first assignment: not to be completed before this.
    not_before: Option<Instant>,
    /// Member ids issued to first joins and not yet used, with when they expire.
    pending: BTreeMap<MemberId, (Instant, Option<Principal>)>,
    /// Most members (and issued ids) at once.
    max_members: usize,
    /// Classic groups: protocol type, the chosen protocol and leader, and the leader's
    /// assignment bytes per member.
    classic: Option<ClassicState>,
}

#[derive(Debug, Clone, Default)]
struct ClassicState {
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<MemberId>,
    assigned: BTreeMap<MemberId, bytes::Bytes>,
    /// Whether the assignments named their partitions (so commits can be checked against them).
    known_partitions: bool,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            strategy: None,
            members: BTreeMap::new(),
            assignment: Assignment::new(),
            joined: BTreeSet::new(),
            counts: BTreeMap::new(),
            initial_delay: Duration::ZERO,
            not_before: None,
            pending: BTreeMap::new(),
            max_members: usize::MAX,
            classic: None,
        }
    }
}

impl Group {
    /// An empty group whose first assignment waits `initial_delay` for more members, and which
    /// admits at most `max_members`.
    pub fn new(initial_delay: Duration, max_members: usize) -> Self {
        Group {
            initial_delay,
            max_members,
            ..Group::default()
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn generation(&self) -> u32 {
        self.generation
    }
    pub fn strategy(&self) -> Option<AssignmentStrategy> {
        self.strategy
    }
    pub fn members(&self) -> &BTreeMap<MemberId, Member> {
        &self.members
    }
    pub fn assignment_of(&self, member: &str) -> &[TopicPartition] {
        self.assignment.get(member).map_or(&[], Vec::as_slice)
    }
    /// Every topic some member subscribes to.
    pub fn topics(&self) -> BTreeSet<TopicName> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Classic groups: protocol type, chosen protocol and leader (for describe).
    pub fn classic(&self) -> Option<(&str, Option<&str>, Option<&str>)> {
        self.classic.as_ref().map(|c| {
            (
                c.protocol_type.as_str(),
                c.protocol.as_deref(),
                c.leader.as_deref(),
            )
        })
    }

    /// Classic groups: the assignment bytes the leader gave `member`.
    pub fn classic_assignment(&self, member: &str) -> Option<&bytes::Bytes> {
        self.classic.as_ref().and_then(|c| c.assigned.get(member))
    }

    /// The longest of the members' timeouts of one kind.
    fn longest(&self, timeout: impl Fn(&Member) -> Duration) -> Duration {
        self.members.values().map(timeout).max().unwrap_or_default()
    }

    fn begin_rebalance(&mut self, now: Instant) {
        self.state = State::Preparing {
            deadline: now + self.longest(|m| m.rebalance_timeout),
        };
        self.joined.clear();
    }

    pub fn join(
        &mut self,
        join: Join,
        now: Instant,
        new_id: impl FnOnce() -> MemberId,
    ) -> Result<Joined, GroupError> {
        self.check_protocol(&join)?;
        if let Some(current) = self
            .strategy
            .filter(|_| !self.members.is_empty() && join.classic.is_none())
            && current != join.strategy
        {
            return Err(GroupError::InconsistentStrategy {
                group: current,
                asked: join.strategy,
            });
        }
        // Member ids come only from the broker: a first join gets one and must come back with
        // it; an id the group never issued (forged, or from before a broker restart) is refused.
        let id = match join.member_id.clone() {
            None => {
                if self.members.len() + self.pending.len() >= self.max_members {
                    return Err(GroupError::GroupFull {
                        max: self.max_members,
                    });
                }
                let id = new_id();
                self.pending.insert(
                    id.clone(),
                    (now + join.session_timeout, join.principal.clone()),
                );
                return Ok(Joined::IdIssued(id));
            }
            Some(id) => {
                let owner = match (self.members.get(&id), self.pending.get(&id)) {
                    (Some(m), _) => &m.principal,
                    (None, Some((_, p))) => p,
                    (None, None) => return Err(GroupError::UnknownMember(id)),
                };
                check_owner(&id, owner, join.principal.as_deref())?;
                self.pending.remove(&id);
                id
            }
        };
        // A classic member's join always starts a round: its answer carries the round's leader
        // and metadata, which only a round produces.
        let unchanged = join.classic.is_none()
            && self
                .members
                .get(&id)
                .is_some_and(|m| m.topics == join.topics);
        if unchanged && self.state == State::Stable {
            let m = self.members.get_mut(&id).expect("checked above");
            m.last_seen = now;
            return Ok(Joined::Current {
                member_id: id.clone(),
                generation: self.generation,
                assignment: self.assignment_of(&id).to_vec(),
            });
        }
        self.strategy = Some(join.strategy);
        let newcomer = !self.members.contains_key(&id);
        let was_empty = self.members.is_empty();
        if was_empty {
            self.classic = join.classic.as_ref().map(|c| ClassicState {
                protocol_type: c.protocol_type.clone(),
                ..ClassicState::default()
            });
        }
        let (rebalance_timeout, protocols) = match join.classic {
            Some(c) => (c.rebalance_timeout, c.protocols),
            None => (join.session_timeout, Vec::new()),
        };
        self.members.insert(
            id.clone(),
            Member {
                principal: join.principal,
                client: join.client,
                topics: join.topics,
                session_timeout: join.session_timeout,
                rebalance_timeout,
                protocols,
                last_seen: now,
            },
        );
        if !matches!(self.state, State::Preparing { .. }) {
            self.begin_rebalance(now);
        } else if let State::Preparing { deadline } = &mut self.state {
            // A newcomer with a longer session gets time to be waited for.
            *deadline = (*deadline).max(now + rebalance_timeout);
        }
        if let State::Preparing { deadline } = self.state {
            if was_empty {
                self.not_before = Some((now + self.initial_delay).min(deadline));
            } else if newcomer && let Some(not_before) = self.not_before.as_mut() {
                // Each newcomer to a forming group gives the others time to arrive too.
                *not_before = (*not_before).max(now + self.initial_delay).min(deadline);
            }
        }
        self.joined.insert(id.clone());
        Ok(Joined::Waiting(id))
    }

    /// A join must speak the group's protocol: Rill or classic alike, and a classic one of the
    /// same type with some protocol every member supports.
    fn check_protocol(&self, join: &Join) -> Result<(), GroupError> {
        let others = self
            .members
            .iter()
            .filter(|(id, _)| join.member_id.as_ref() != Some(*id))
            .map(|(_, m)| m)
            .collect::<Vec<_>>();
        if others.is_empty() {
            return Ok(());
        }
        match (&self.classic, &join.classic) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(GroupError::InconsistentProtocol(
                "the group's members are Kafka clients (client-side assignment)".into(),
            )),
            (None, Some(_)) => Err(GroupError::InconsistentProtocol(
                "the group's members are Rill consumers (broker-side assignment)".into(),
            )),
            (Some(group), Some(c)) => {
                if group.protocol_type != c.protocol_type {
                    return Err(GroupError::InconsistentProtocol(format!(
                        "protocol type {:?} differs from the group's {:?}",
                        c.protocol_type, group.protocol_type
                    )));
                }
                let shared = c.protocols.iter().any(|(name, _)| {
                    others
                        .iter()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                });
                if shared {
                    Ok(())
                } else {
                    Err(GroupError::InconsistentProtocol(
                        "none of the member's protocols (assignors) is supported by every member"
                            .into(),
                    ))
                }
            }
        }
    }

    /// Completes the rebalance if every member has rejoined or the deadline passed.
    pub fn try_complete(
        &mut self,
        now: Instant,
        counts: &BTreeMap<TopicName, u32>,
    ) -> Option<Completed> {
        let State::Preparing { deadline } = self.state else {
            return None;
        };
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let everyone = self.members.keys().all(|m| self.joined.contains(m));
        if !everyone && now < deadline {
            return None;
        }
        self.not_before = None;
        let joined = std::mem::take(&mut self.joined);
        self.members.retain(|id, _| joined.contains(id));
        if self.members.is_empty() {
            self.state = State::Empty;
            self.assignment.clear();
            self.classic = None;
            return None;
        }
        if self.classic.is_some() {
            return Some(self.complete_classic(now, counts));
        }
        let subscriptions: Subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        self.counts = self.relevant(counts);
        let strategy = self.strategy.unwrap_or_default();
        self.assignment =
            assignment::assign(strategy, &subscriptions, &self.counts, &self.assignment);
        self.generation = self.generation.wrapping_add(1);
        self.state = State::Stable;
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
        Some(Completed {
            generation: self.generation,
            assignment: self.assignment.clone(),
            classic: None,
        })
    }

    /// Ends a classic round: leader and protocol chosen, generation handed out, the leader's
    /// SyncGroup awaited.
    fn complete_classic(&mut self, now: Instant, counts: &BTreeMap<TopicName, u32>) -> Completed {
        self.counts = self.relevant(counts);
        let classic = self.classic.get_or_insert_with(ClassicState::default);
        let leader = classic
            .leader
            .clone()
            .filter(|l| self.members.contains_key(l))
            .or_else(|| self.members.keys().next().cloned())
            .unwrap_or_default();
        let preferred = self
            .members
            .get(&leader)
            .map(|m| m.protocols.clone())
            .unwrap_or_default();
        let protocol = preferred
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .unwrap_or_default();
        let members = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), metadata)
            })
            .collect();
        classic.leader = Some(leader.clone());
        classic.protocol = Some(protocol.clone());
        classic.assigned.clear();
        classic.known_partitions = false;
        self.assignment = self
            .members
            .keys()
            .map(|id| (id.clone(), Vec::new()))
            .collect();
        self.generation = self.generation.wrapping_add(1);
        self.state = State::AwaitingSync {
            deadline: now + self.longest(|m| m.session_timeout),
        };
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
        Completed {
            generation: self.generation,
            assignment: self.assignment.clone(),
            classic: Some(ClassicRound {
                leader,
                protocol,
                members,
            }),
        }
    }

    /// A classic member's SyncGroup. The leader's carries every member's assignment and makes
    /// the group stable; the others get theirs once it has come.
    pub fn sync(
        &mut self,
        member: &str,
        principal: Option<&str>,
        generation: u32,
        assignments: Vec<SyncAssignment>,
        now: Instant,
    ) -> Result<Synced, GroupError> {
        let m = self
            .members
            .get_mut(member)
            .ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        check_owner(member, &m.principal, principal)?;
        m.last_seen = now;
        if matches!(self.state, State::Preparing { .. } | State::Empty) {
            return Err(GroupError::RebalanceInProgress);
        }
        if generation != self.generation {
            return Err(GroupError::StaleGeneration {
                got: generation,
                current: self.generation,
            });
        }
        let Some(classic) = self.classic.as_mut() else {
            return Err(GroupError::InconsistentProtocol(
                "SyncGroup is for Kafka groups; this group's members are Rill consumers".into(),
            ));
        };
        if matches!(self.state, State::AwaitingSync { .. }) {
            if classic.leader.as_deref() != Some(member) {
                return Ok(Synced::Waiting);
            }
            classic.known_partitions = assignments.iter().all(|a| a.partitions.is_some());
            for a in assignments {
                if self.members.contains_key(&a.member) {
                    if let Some(p) = a.partitions {
                        self.assignment.insert(a.member.clone(), p);
                    }
                    classic.assigned.insert(a.member, a.bytes);
                }
            }
            self.state = State::Stable;
        }
        Ok(Synced::Assigned(
            classic.assigned.get(member).cloned().unwrap_or_default(),
        ))
    }

    fn relevant(&self, counts: &BTreeMap<TopicName, u32>) -> BTreeMap<TopicName, u32> {
        let topics = self.topics();
        counts
            .iter()
            .filter(|(t, _)| topics.contains(*t))
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }

    pub fn heartbeat(
        &mut self,
        member: &str,
        principal: Option<&str>,
        generation: u32,
        now: Instant,
    ) -> Result<(), GroupError> {
        let m = self
            .members
            .get_mut(member)
            .ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        check_owner(member, &m.principal, principal)?;
        m.last_seen = now;
        if matches!(self.state, State::Preparing { .. }) {
            return Err(GroupError::RebalanceInProgress);
        }
        if generation != self.generation {
            return Err(GroupError::StaleGeneration {
                got: generation,
                current: self.generation,
            });
        }
        Ok(())
    }

    pub fn leave(
        &mut self,
        member: &str,
        principal: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        let m = self
            .members
            .get(member)
            .ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        check_owner(member, &m.principal, principal)?;
        self.members.remove(member);
        self.joined.remove(member);
        self.after_departure(now);
        Ok(())
    }

    fn after_departure(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.state = State::Empty;
            self.assignment.clear();
            self.joined.clear();
            self.classic = None;
        } else if matches!(self.state, State::Stable | State::AwaitingSync { .. }) {
            self.begin_rebalance(now);
        }
    }

    /// Removes members whose session expired (those waiting in a join are not expired), and
    /// starts a rebalance if the subscribed topics' partition counts changed. Returns the
    /// removed members.
    pub fn tick(&mut self, now: Instant, counts: &BTreeMap<TopicName, u32>) -> Vec<MemberId> {
        // Ids issued to first joins that never came back.
        self.pending.retain(|_, (expires, _)| *expires > now);
        let preparing = matches!(self.state, State::Preparing { .. });
        let expired: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                !(preparing && self.joined.contains(*id)) && now >= m.last_seen + m.session_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.after_departure(now);
        }
        if self.state == State::Stable && self.relevant(counts) != self.counts {
            self.begin_rebalance(now);
        }
        // The leader never sent its SyncGroup: everyone joins again.
        if let State::AwaitingSync { deadline } = self.state
            && now >= deadline
        {
            self.begin_rebalance(now);
        }
        expired
    }

    /// Whether `member` may commit `partitions` under `generation`. Without a member (tools
    /// managing offsets directly) the group must be empty.
    pub fn check_commit(
        &self,
        member: Option<&str>,
        principal: Option<&str>,
        generation: Option<u32>,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        let Some(member) = member else {
            return match self.members.len() {
                0 => Ok(()),
                n => Err(GroupError::NotEmpty {
                    group: String::new(),
                    members: n,
                }),
            };
        };
        let m = self
            .members
            .get(member)
            .ok_or_else(|| GroupError::UnknownMember(member.to_string()))?;
        check_owner(member, &m.principal, principal)?;
        let got = generation.unwrap_or(u32::MAX);
        if got != self.generation {
            return Err(GroupError::StaleGeneration {
                got,
                current: self.generation,
            });
        }
        // A Kafka group whose assignment this broker cannot read: generation and member only,
        // as Kafka checks.
        if self.classic.as_ref().is_some_and(|c| !c.known_partitions) {
            return Ok(());
        }
        let owned = self.assignment_of(member);
        for tp in partitions {
            if !owned.contains(tp) {
                return Err(GroupError::NotAssigned {
                    member: member.to_string(),
                    partition: tp.clone(),
                    generation: got,
                });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The current generation, if the group is stable with members.
    /// Classic (Kafka) groups are not recorded: after a coordinator move their members join
    /// again.
    pub fn record(&self) -> Option<GenerationRecord> {
        if self.state != State::Stable || self.members.is_empty() || self.classic.is_some() {
            return None;
        }
        Some(GenerationRecord {
            generation: self.generation,
            strategy: self.strategy,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    id: id.clone(),
                    principal: m.principal.as_deref().map(str::to_string),
                    client: m.client.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    assignment: self.assignment_of(id).to_vec(),
                })
                .collect(),
            counts: self.counts.iter().map(|(t, n)| (t.clone(), *n)).collect(),
        })
    }

    /// A stable group restored from `r`: every member's session starts `now`, so members that
    /// are gone expire as usual and the others heartbeat, commit and fetch on as before.
    pub fn restore(
        r: GenerationRecord,
        initial_delay: Duration,
        max_members: usize,
        now: Instant,
    ) -> Self {
        let mut group = Group::new(initial_delay, max_members);
        group.generation = r.generation;
        group.strategy = r.strategy;
        group.counts = r.counts.into_iter().collect();
        for m in r.members {
            group.assignment.insert(m.id.clone(), m.assignment);
            group.members.insert(
                m.id,
                Member {
                    principal: m.principal.map(Principal::from),
                    client: m.client,
                    topics: m.topics.into_iter().collect(),
                    session_timeout: Duration::from_millis(m.session_timeout_ms),
                    rebalance_timeout: Duration::from_millis(m.session_timeout_ms),
                    protocols: Vec::new(),
                    last_seen: now,
                },
            );
        }
        group.state = if group.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        group
    }

    /// No members and no ids waiting to be used: the group can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<TopicName> {
        names.iter().map(|n| TopicName::new(*n).unwrap()).collect()
    }

    fn join(id: Option<&str>) -> Join {
        Join {
            member_id: id.map(str::to_string),
            principal: None,
            client: "test".into(),
            topics: topics(&["t"]),
            session_timeout: Duration::from_secs(10),
            strategy: AssignmentStrategy::Sticky,
            classic: None,
        }
    }

    /// Joins `id`: straight in if it is a member, else through the two steps a new member
    /// takes (an id issued, then a join with it).
    fn enter(g: &mut Group, id: &str, now: Instant) -> Result<Joined, GroupError> {
        if !g.members().contains_key(id) {
            assert_eq!(
                g.join(join(None), now, || id.to_string())?,
                Joined::IdIssued(id.to_string())
            );
        }
        g.join(join(Some(id)), now, || unreachable!())
    }

    fn counts(n: u32) -> BTreeMap<TopicName, u32> {
        [(TopicName::new("t").unwrap(), n)].into()
    }

    #[test]
    fn a_lone_member_gets_everything_at_generation_one() {
        let mut g = Group::default();
        let now = Instant::now();
        assert_eq!(
            g.join(join(None), now, || "a".into()).unwrap(),
            Joined::IdIssued("a".into())
        );
        assert_eq!(
            g.try_complete(now, &counts(6)),
            None,
            "an issued id is not a member"
        );
        assert_eq!(
            g.join(join(Some("a")), now, || unreachable!()).unwrap(),
            Joined::Waiting("a".into())
        );
        let done = g.try_complete(now, &counts(6)).expect("everyone joined");
        assert_eq!(done.generation, 1);
        assert_eq!(done.assignment["a"].len(), 6);
        assert_eq!(g.state(), State::Stable);
        assert!(g.heartbeat("a", None, 1, now).is_ok());
    }

    #[test]
    fn a_newcomer_waits_until_every_member_has_rejoined() {
        let mut g = Group::default();
        let now = Instant::now();
        enter(&mut g, "a", now).unwrap();
        g.try_complete(now, &counts(6)).unwrap();
        enter(&mut g, "b", now).unwrap();
        assert_eq!(
            g.try_complete(now, &counts(6)),
            None,
            "a has not rejoined yet"
        );
        // a still owns its partitions and may commit for them under generation 1.
        let owned = g.assignment_of("a").to_vec();
        assert!(g.check_commit(Some("a"), None, Some(1), &owned).is_ok());
        assert_eq!(
            g.heartbeat("a", None, 1, now),
            Err(GroupError::RebalanceInProgress)
        );
        enter(&mut g, "a", now).unwrap();
        let done = g.try_complete(now, &counts(6)).unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(
            (done.assignment["a"].len(), done.assignment["b"].len()),
            (3, 3)
        );
        assert_eq!(
            g.check_commit(Some("a"), None, Some(1), &owned[..1]),
            Err(GroupError::StaleGeneration { got: 1, current: 2 }),
            "after the rebalance the old generation is refused"
        );
    }

    /// Story: a cluster's coordinator moves. The next one restores the group from its
    /// recorded generation: members go on with the same generation and partitions, commits
    /// are checked as before, and a member that is gone expires after its session.
    #[test]
    fn a_restored_generation_goes_on_where_the_recorded_one_was() {
        let mut g = Group::default();
        let t0 = Instant::now();
        for id in ["a", "b"] {
            enter(&mut g, id, t0).unwrap();
        }
        g.try_complete(t0, &counts(6)).unwrap();
        enter(&mut g, "c", t0).unwrap();
        assert_eq!(g.record(), None, "nothing to record while rebalancing");
        for id in ["a", "b"] {
            enter(&mut g, id, t0).unwrap();
        }
        g.try_complete(t0, &counts(6)).unwrap();
        let record = g.record().expect("stable with members");
        let mut encoded = bytes::BytesMut::new();
        rill_protocol::codec::encode(&record, &mut encoded);
        let decoded: GenerationRecord = rill_protocol::codec::decode(&encoded, "test").unwrap();
        assert_eq!(decoded, record);

        let t1 = t0 + Duration::from_secs(4);
        let mut r = Group::restore(decoded, Duration::ZERO, 10, t1);
        assert_eq!((r.state(), r.generation()), (State::Stable, 2));
        for id in ["a", "b", "c"] {
            assert_eq!(r.assignment_of(id), g.assignment_of(id), "{id}");
        }
        let owned = r.assignment_of("a").to_vec();
        assert!(r.check_commit(Some("a"), None, Some(2), &owned).is_ok());
        assert!(r.check_commit(Some("b"), None, Some(2), &owned).is_err());
        assert_eq!(
            r.join(join(Some("a")), t1, || unreachable!()),
            Ok(Joined::Current {
                member_id: "a".into(),
                generation: 2,
                assignment: owned,
            }),
            "a member's rejoin changes nothing"
        );
        // Sessions start at the restore: b and c heartbeat on, a goes silent and expires.
        let t2 = t1 + Duration::from_secs(8);
        for id in ["b", "c"] {
            r.heartbeat(id, None, 2, t2).unwrap();
        }
        assert!(r.tick(t2, &counts(6)).is_empty());
        assert_eq!(
            r.tick(t1 + Duration::from_secs(11), &counts(6)),
            vec!["a".to_string()]
        );
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_timeout() {
        let mut g = Group::default();
        let t0 = Instant::now();
        for id in ["a", "b"] {
            enter(&mut g, id, t0).unwrap();
        }
        g.try_complete(t0, &counts(4)).unwrap();
        let t1 = t0 + Duration::from_secs(6);
        g.heartbeat("a", None, 1, t1).unwrap();
        assert!(g.tick(t1, &counts(4)).is_empty());
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(g.tick(t2, &counts(4)), vec!["b".to_string()]);
        assert_eq!(
            g.heartbeat("a", None, 1, t2),
            Err(GroupError::RebalanceInProgress)
        );
        enter(&mut g, "a", t2).unwrap();
        let done = g.try_complete(t2, &counts(4)).unwrap();
        assert_eq!(done.assignment["a"].len(), 4);
        assert!(!done.assignment.contains_key("b"));
    }

    #[test]
    fn stragglers_are_dropped_at_the_rebalance_deadline() {
        let mut g = Group::default();
        let t0 = Instant::now();
        for id in ["a", "b"] {
            enter(&mut g, id, t0).unwrap();
        }
        g.try_complete(t0, &counts(2)).unwrap();
        enter(&mut g, "c", t0).unwrap();
        enter(&mut g, "a", t0).unwrap();
        assert_eq!(
            g.try_complete(t0 + Duration::from_secs(9), &counts(2)),
            None
        );
        let done = g
            .try_complete(t0 + Duration::from_secs(10), &counts(2))
            .unwrap();
        assert_eq!(
            done.assignment.keys().cloned().collect::<Vec<_>>(),
            vec!["a".to_string(), "c".to_string()]
        );
    }

    #[test]
    fn leaving_rebalances_and_the_last_leave_empties_the_group() {
        let mut g = Group::default();
        let now = Instant::now();
        for id in ["a", "b"] {
            enter(&mut g, id, now).unwrap();
        }
        g.try_complete(now, &counts(2)).unwrap();
        g.leave("b", None, now).unwrap();
        assert!(matches!(g.state(), State::Preparing { .. }));
        assert_eq!(
            g.leave("b", None, now),
            Err(GroupError::UnknownMember("b".into()))
        );
        g.leave("a", None, now).unwrap();
        assert_eq!(g.state(), State::Empty);
        assert!(
            g.check_commit(None, None, None, &[]).is_ok(),
            "tools may commit for an empty group"
        );
    }

    #[test]
    fn gaining_partitions_triggers_a_rebalance() {
        let mut g = Group::default();
        let now = Instant::now();
        enter(&mut g, "a", now).unwrap();
        g.try_complete(now, &counts(2)).unwrap();
        g.tick(now, &counts(2));
        assert_eq!(g.state(), State::Stable);
        g.tick(now, &counts(3));
        assert!(matches!(g.state(), State::Preparing { .. }));
    }

    #[test]
    fn commits_are_checked_for_member_generation_and_ownership() {
        let mut g = Group::default();
        let now = Instant::now();
        for id in ["a", "b"] {
            enter(&mut g, id, now).unwrap();
        }
        g.try_complete(now, &counts(2)).unwrap();
        let theirs = g.assignment_of("b").to_vec();
        assert!(matches!(
            g.check_commit(Some("a"), None, Some(1), &theirs),
            Err(GroupError::NotAssigned { .. })
        ));
        assert!(matches!(
            g.check_commit(Some("zz"), None, Some(1), &theirs),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            g.check_commit(None, None, None, &theirs),
            Err(GroupError::NotEmpty { .. })
        ));
        assert!(g.check_commit(Some("b"), None, Some(1), &theirs).is_ok());
    }

    /// The bug: two consumers started together on a new group; the first was assigned every
    /// partition at once and the second none until the next rebalance.
    #[test]
    fn a_new_group_waits_the_initial_delay_for_more_members() {
        let delay = Duration::from_secs(3);
        let mut g = Group::new(delay, usize::MAX);
        let t0 = Instant::now();
        enter(&mut g, "a", t0).unwrap();
        assert_eq!(
            g.try_complete(t0, &counts(4)),
            None,
            "a is alone, but waits"
        );
        let t1 = t0 + Duration::from_secs(2);
        enter(&mut g, "b", t1).unwrap();
        assert_eq!(
            g.try_complete(t0 + delay, &counts(4)),
            None,
            "b's arrival extended the wait"
        );
        let done = g.try_complete(t1 + delay, &counts(4)).unwrap();
        assert_eq!(done.generation, 1);
        assert_eq!(
            (done.assignment["a"].len(), done.assignment["b"].len()),
            (2, 2)
        );
        // Later rebalances of a group with members do not wait.
        enter(&mut g, "c", t1 + delay).unwrap();
        for id in ["a", "b"] {
            enter(&mut g, id, t1 + delay).unwrap();
        }
        assert!(g.try_complete(t1 + delay, &counts(4)).is_some());
    }

    #[test]
    fn the_initial_wait_never_passes_the_rebalance_deadline() {
        // A delay longer than the session timeout (10 s) is cut to the rebalance deadline.
        let mut g = Group::new(Duration::from_secs(30), usize::MAX);
        let t0 = Instant::now();
        enter(&mut g, "a", t0).unwrap();
        assert_eq!(
            g.try_complete(t0 + Duration::from_secs(9), &counts(2)),
            None
        );
        enter(&mut g, "b", t0 + Duration::from_secs(9)).unwrap();
        // b's own session moved the deadline to 19 s; the wait ends there, not at 39 s.
        assert_eq!(
            g.try_complete(t0 + Duration::from_secs(18), &counts(2)),
            None
        );
        assert!(
            g.try_complete(t0 + Duration::from_secs(19), &counts(2))
                .is_some()
        );
    }

    /// The bug: JoinGroup accepted any member id a client named, so two clients naming one id
    /// both owned the same partitions in one generation.
    #[test]
    fn a_member_id_the_group_never_issued_is_refused() {
        let mut g = Group::default();
        let now = Instant::now();
        enter(&mut g, "a", now).unwrap();
        assert_eq!(
            g.join(join(Some("forged")), now, || unreachable!()),
            Err(GroupError::UnknownMember("forged".into()))
        );
        assert_eq!(g.members().len(), 1);
    }

    /// The bug: a first join resent after a lost response created a second member, a ghost
    /// that stalled the next rebalance for a whole session timeout.
    #[test]
    fn a_resent_first_join_leaves_no_ghost() {
        let mut g = Group::default();
        let now = Instant::now();
        let mut ids = ["lost", "used"].into_iter();
        for _ in 0..2 {
            g.join(join(None), now, || ids.next().unwrap().into())
                .unwrap();
        }
        g.join(join(Some("used")), now, || unreachable!()).unwrap();
        let done = g
            .try_complete(now, &counts(2))
            .expect("only the real member is waited for");
        assert_eq!(done.assignment.keys().collect::<Vec<_>>(), ["used"]);
        // The unused id expires with its session; a later join completes without waiting.
        let later = now + Duration::from_secs(11);
        g.heartbeat("used", None, 1, later).unwrap();
        g.tick(later, &counts(2));
        assert!(
            g.join(join(Some("lost")), later, || unreachable!())
                .is_err()
        );
        assert!(!g.is_idle());
        g.leave("used", None, later).unwrap();
        assert!(g.is_idle());
    }

    #[test]
    fn a_full_group_refuses_new_members() {
        let mut g = Group::new(Duration::ZERO, 2);
        let now = Instant::now();
        enter(&mut g, "a", now).unwrap();
        g.join(join(None), now, || "b".into()).unwrap();
        assert_eq!(
            g.join(join(None), now, || "c".into()),
            Err(GroupError::GroupFull { max: 2 }),
            "an issued id holds a place"
        );
        assert!(enter(&mut g, "a", now).is_ok(), "members may rejoin");
    }

    #[test]
    fn only_the_principal_that_joined_acts_for_a_member() {
        let mut g = Group::default();
        let now = Instant::now();
        let alice = Some(Principal::from("alice"));
        let first = Join {
            principal: alice.clone(),
            ..join(None)
        };
        assert_eq!(
            g.join(first, now, || "a".into()).unwrap(),
            Joined::IdIssued("a".into())
        );
        // Mallory cannot take up the id alice was issued, nor act for her once she joined.
        let stolen = Join {
            principal: Some(Principal::from("mallory")),
            ..join(Some("a"))
        };
        assert!(matches!(
            g.join(stolen.clone(), now, || unreachable!()),
            Err(GroupError::NotOwner(_))
        ));
        let second = Join {
            principal: alice,
            ..join(Some("a"))
        };
        assert!(matches!(
            g.join(second, now, || unreachable!()),
            Ok(Joined::Waiting(_))
        ));
        assert!(
            g.try_complete(now + Duration::from_secs(1), &BTreeMap::new())
                .is_some()
        );
        let generation = g.generation();
        assert!(matches!(
            g.join(stolen, now, || unreachable!()),
            Err(GroupError::NotOwner(_))
        ));
        assert!(matches!(
            g.heartbeat("a", Some("mallory"), generation, now),
            Err(GroupError::NotOwner(_))
        ));
        assert!(matches!(
            g.check_commit(Some("a"), Some("mallory"), Some(generation), &[]),
            Err(GroupError::NotOwner(_))
        ));
        assert!(matches!(
            g.leave("a", Some("mallory"), now),
            Err(GroupError::NotOwner(_))
        ));
        // Alice, and an unchecked caller (a superuser), may.
        g.heartbeat("a", Some("alice"), generation, now).unwrap();
        g.check_commit(Some("a"), None, Some(generation), &[])
            .unwrap();
        // The owner is kept in the durable record a new coordinator restores from.
        let restored = Group::restore(g.record().unwrap(), Duration::ZERO, 10, now);
        assert!(matches!(
            restored.check_commit(Some("a"), Some("mallory"), Some(generation), &[]),
            Err(GroupError::NotOwner(_))
        ));
        g.leave("a", Some("alice"), now).unwrap();
    }

    #[test]
    fn the_first_member_chooses_the_strategy() {
        let mut g = Group::default();
        let now = Instant::now();
        enter(&mut g, "a", now).unwrap();
        let other = Join {
            strategy: AssignmentStrategy::Range,
            ..join(Some("b"))
        };
        assert!(matches!(
            g.join(other, now, || unreachable!()),
            Err(GroupError::InconsistentStrategy { .. })
        ));
    }

    fn classic_join(id: Option<&str>, kind: &str, protocols: &[&str]) -> Join {
        Join {
            classic: Some(Classic {
                protocol_type: kind.into(),
                protocols: protocols
                    .iter()
                    .map(|p| (p.to_string(), bytes::Bytes::from(format!("{p}-meta"))))
                    .collect(),
                rebalance_timeout: Duration::from_secs(30),
            }),
            ..join(id)
        }
    }

    /// Two steps, as for a Rill member: an issued id, then the join with it.
    fn classic_enter(
        g: &mut Group,
        id: &str,
        protocols: &[&str],
        now: Instant,
    ) -> Result<Joined, GroupError> {
        g.join(classic_join(None, "consumer", protocols), now, || {
            id.to_string()
        })?;
        g.join(
            classic_join(Some(id), "consumer", protocols),
            now,
            || unreachable!(),
        )
    }

    fn tp(p: u32) -> TopicPartition {
        TopicPartition {
            topic: TopicName::new("t").unwrap(),
            partition: p,
        }
    }

    #[test]
    fn a_classic_round_elects_a_leader_and_hands_out_its_assignment() {
        let mut g = Group::default();
        let now = Instant::now();
        classic_enter(&mut g, "a", &["range", "roundrobin"], now).unwrap();
        classic_enter(&mut g, "b", &["roundrobin", "range"], now).unwrap();
        let done = g.try_complete(now, &counts(2)).expect("both joined");
        let round = done.classic.expect("a classic round");
        assert_eq!(done.generation, 1);
        assert_eq!(round.leader, "a");
        assert_eq!(
            round.protocol, "range",
            "the leader's first choice that all support"
        );
        assert_eq!(
            round.members,
            vec![
                ("a".to_string(), bytes::Bytes::from("range-meta")),
                ("b".to_string(), bytes::Bytes::from("range-meta")),
            ]
        );
        assert!(matches!(g.state(), State::AwaitingSync { .. }));
        assert!(
            g.heartbeat("b", None, 1, now).is_ok(),
            "no rebalance while syncing"
        );

        assert_eq!(g.sync("b", None, 1, vec![], now).unwrap(), Synced::Waiting);
        let assign = |m: &str, p: u32| SyncAssignment {
            member: m.into(),
            bytes: bytes::Bytes::from(format!("{m} gets {p}")),
            partitions: Some(vec![tp(p)]),
        };
        assert!(matches!(
            g.sync("a", None, 0, vec![], now),
            Err(GroupError::StaleGeneration { .. })
        ));
        assert_eq!(
            g.sync("a", None, 1, vec![assign("a", 0), assign("b", 1)], now)
                .unwrap(),
            Synced::Assigned(bytes::Bytes::from("a gets 0"))
        );
        assert_eq!(g.state(), State::Stable);
        assert_eq!(
            g.sync("b", None, 1, vec![], now).unwrap(),
            Synced::Assigned(bytes::Bytes::from("b gets 1"))
        );
        assert_eq!(g.assignment_of("b"), &[tp(1)]);
        assert!(g.check_commit(Some("b"), None, Some(1), &[tp(1)]).is_ok());
        assert!(matches!(
            g.check_commit(Some("b"), None, Some(1), &[tp(0)]),
            Err(GroupError::NotAssigned { .. })
        ));
        assert!(g.record().is_none(), "classic groups are not recorded");

        // The leader leaves: a new round, which the other learns of from its heartbeat.
        g.leave("a", None, now).unwrap();
        assert!(matches!(
            g.heartbeat("b", None, 1, now),
            Err(GroupError::RebalanceInProgress)
        ));
        assert!(matches!(
            g.sync("b", None, 1, vec![], now),
            Err(GroupError::RebalanceInProgress)
        ));
        g.join(
            classic_join(Some("b"), "consumer", &["roundrobin"]),
            now,
            || unreachable!(),
        )
        .unwrap();
        let round = g.try_complete(now, &counts(2)).unwrap().classic.unwrap();
        assert_eq!(
            (round.leader.as_str(), round.protocol.as_str()),
            ("b", "roundrobin")
        );
    }

    #[test]
    fn a_classic_group_admits_only_members_that_share_its_protocols() {
        let mut g = Group::default();
        let now = Instant::now();
        classic_enter(&mut g, "a", &["range"], now).unwrap();
        let refused = |g: &mut Group, j: Join| {
            matches!(
                g.join(j, now, || "x".into()),
                Err(GroupError::InconsistentProtocol(_))
            )
        };
        assert!(refused(&mut g, join(None)), "a Rill member");
        assert!(
            refused(&mut g, classic_join(None, "connect", &["range"])),
            "another type"
        );
        assert!(
            refused(&mut g, classic_join(None, "consumer", &["sticky"])),
            "no shared protocol"
        );
        assert!(!refused(
            &mut g,
            classic_join(None, "consumer", &["sticky", "range"])
        ));
        // And a Rill group refuses Kafka members.
        let mut r = Group::default();
        enter(&mut r, "a", now).unwrap();
        assert!(refused(&mut r, classic_join(None, "consumer", &["range"])));
    }

    #[test]
    fn a_leader_that_never_syncs_starts_a_new_round() {
        let mut g = Group::default();
        let now = Instant::now();
        classic_enter(&mut g, "a", &["range"], now).unwrap();
        g.try_complete(now, &counts(1)).unwrap();
        g.tick(now + Duration::from_secs(5), &counts(1));
        assert!(matches!(g.state(), State::AwaitingSync { .. }));
        g.heartbeat("a", None, 1, now + Duration::from_secs(9))
            .unwrap();
        g.tick(now + Duration::from_secs(10), &counts(1));
        assert!(
            matches!(g.state(), State::Preparing { .. }),
            "{:?}",
            g.state()
        );
    }
}
