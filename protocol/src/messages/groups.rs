//! Consumer groups: membership, assignment, committed offsets, and their administration.
//!
//! A member joins with the topics it subscribes to; the broker answers once the group has a
//! new generation, with the partitions this member owns in it. Heartbeats keep the member alive
//! and tell it when to rejoin. Commits name the generation and member they were made under.
use crate::api::{ApiKey, Message};
use crate::topic::TopicName;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: TopicName,
    pub partition: u32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// How the broker divides a group's partitions among its members. The first member of an empty
/// group chooses; later members must ask for the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum AssignmentStrategy {
    /// Per topic, contiguous ranges of partitions.
    Range,
    /// All partitions dealt out one at a time.
    RoundRobin,
    /// Balanced, moving as few partitions as possible from where they were.
    #[default]
    Sticky,
}

impl fmt::Display for AssignmentStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "round-robin",
            AssignmentStrategy::Sticky => "sticky",
        })
    }
}

impl FromStr for AssignmentStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "range" => Ok(AssignmentStrategy::Range),
            "round-robin" | "roundrobin" => Ok(AssignmentStrategy::RoundRobin),
            "sticky" => Ok(AssignmentStrategy::Sticky),
            _ => Err(format!(
                "unknown assignment strategy {s:?}: expected range, round-robin or sticky"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGroupRequest {
    pub group: String,
    /// `None` on first join; the broker assigns an id. Rejoins send the id they were given.
    pub member_id: Option<String>,
    /// Free-form client identification, shown by describe.
    pub client: String,
    pub topics: Vec<TopicName>,
    /// The member is removed if the broker hears nothing from it for this long.
    pub session_timeout_ms: u32,
    pub strategy: AssignmentStrategy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGroupResponse {
    pub member_id: String,
    pub generation: u32,
    /// The partitions this member owns in this generation.
    pub assignment: Vec<TopicPartition>,
    /// How often the member should heartbeat.
    pub heartbeat_interval_ms: u32,
    /// The answer to a first join (no member id): not a membership yet, only the id the broker
    /// issued. Join again with it (Kafka's KIP-394): a first join resent after a lost answer
    /// then leaves no ghost member behind.
    pub rejoin_with_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveGroupResponse {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffsetsRequest {
    pub group: String,
    /// The member and generation the offsets were processed under. Both `None` is allowed only
    /// for a group with no members (tools that manage offsets directly).
    pub member_id: Option<String>,
    pub generation: Option<u32>,
    /// (partition, next offset to read).
    pub offsets: Vec<(TopicPartition, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffsetsResponse {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchOffsetsRequest {
    pub group: String,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchOffsetsResponse {
    /// The committed offset of each requested partition, `None` where nothing was committed.
    pub offsets: Vec<(TopicPartition, Option<u64>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: String,
    pub members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub member_id: String,
    pub client: String,
    pub topics: Vec<TopicName>,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub partition: TopicPartition,
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub log_end: u64,
    /// Records not yet committed: log end minus committed (or minus log start without a commit).
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupResponse {
    pub group: String,
    /// "empty", "rebalancing" or "stable".
    pub state: String,
    pub generation: u32,
    pub strategy: Option<AssignmentStrategy>,
    pub members: Vec<MemberInfo>,
    /// Every partition of the subscribed topics and every partition with a commit.
    pub offsets: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupRequest {
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupResponse {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record at or after this time (ms since the epoch); the log end if none.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetsRequest {
    pub group: String,
    pub topic: TopicName,
    pub to: ResetTo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetsResponse {
    pub offsets: Vec<(TopicPartition, u64)>,
}

macro_rules! message {
    ($($req:ident => $resp:ident, $key:ident;)*) => {
        $(impl Message for $req {
            const API_KEY: ApiKey = ApiKey::$key;
            type Response = $resp;
            const COORDINATED: bool = true;
        })*
    };
}

/// Session timeouts a member may ask for, in milliseconds.
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 100..=300_000;

impl Message for JoinGroupRequest {
    const API_KEY: ApiKey = ApiKey::JoinGroup;
    type Response = JoinGroupResponse;
    const COORDINATED: bool = true;

    /// A join waits at the barrier until every member rejoined, at most the rebalance deadline:
    /// the longest session timeout of any member, which can be the largest allowed.
    fn server_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(*SESSION_TIMEOUT_MS.end()))
    }
}

message! {
    HeartbeatRequest => HeartbeatResponse, Heartbeat;
    LeaveGroupRequest => LeaveGroupResponse, LeaveGroup;
    CommitOffsetsRequest => CommitOffsetsResponse, CommitOffsets;
    FetchOffsetsRequest => FetchOffsetsResponse, FetchOffsets;
    ListGroupsRequest => ListGroupsResponse, ListGroups;
    DescribeGroupRequest => DescribeGroupResponse, DescribeGroup;
    DeleteGroupRequest => DeleteGroupResponse, DeleteGroup;
    ResetOffsetsRequest => ResetOffsetsResponse, ResetOffsets;
}
