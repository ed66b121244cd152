//! API keys, their supported versions, and the trait that ties a request type to its response.

use serde::{Serialize, de::DeserializeOwned};

/// Identifies a request kind in the frame header. Numbers are stable forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Produce = 1,
    Fetch = 2,
    ListOffsets = 3,
    CreateTopic = 4,
    DeleteTopic = 5,
    ListTopics = 6,
    DescribeTopic = 7,
    JoinGroup = 8,
    Heartbeat = 9,
    LeaveGroup = 10,
    CommitOffsets = 11,
    FetchOffsets = 12,
    ListGroups = 13,
    DescribeGroup = 14,
    DeleteGroup = 15,
    ResetOffsets = 16,
    AddPartitions = 17,
    AlterTopic = 18,
    InitProducer = 19,
    Metadata = 20,
    ReassignPartition = 21,
    RemoveNode = 22,
    SaslHandshake = 23,
    SaslAuthenticate = 24,
    UpsertUser = 25,
    DeleteUser = 26,
    ListUsers = 27,
    CreateAcls = 28,
    DeleteAcls = 29,
    ListAcls = 30,
    AlterQuota = 31,
    ListQuotas = 32,
}

impl ApiKey {
    pub const ALL: [ApiKey; 33] = [
        ApiKey::ApiVersions,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListTopics,
        ApiKey::DescribeTopic,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::CommitOffsets,
        ApiKey::FetchOffsets,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::DeleteGroup,
        ApiKey::ResetOffsets,
        ApiKey::AddPartitions,
        ApiKey::AlterTopic,
        ApiKey::InitProducer,
        ApiKey::Metadata,
        ApiKey::ReassignPartition,
        ApiKey::RemoveNode,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::UpsertUser,
        ApiKey::DeleteUser,
        ApiKey::ListUsers,
        ApiKey::CreateAcls,
        ApiKey::DeleteAcls,
        ApiKey::ListAcls,
        ApiKey::AlterQuota,
        ApiKey::ListQuotas,
    ];

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// The API's name in logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "api_versions",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::CreateTopic => "create_topic",
            ApiKey::DeleteTopic => "delete_topic",
            ApiKey::ListTopics => "list_topics",
            ApiKey::DescribeTopic => "describe_topic",
            ApiKey::JoinGroup => "join_group",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::CommitOffsets => "commit_offsets",
            ApiKey::FetchOffsets => "fetch_offsets",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::DeleteGroup => "delete_group",
            ApiKey::ResetOffsets => "reset_offsets",
            ApiKey::AddPartitions => "add_partitions",
            ApiKey::AlterTopic => "alter_topic",
            ApiKey::InitProducer => "init_producer",
            ApiKey::Metadata => "metadata",
            ApiKey::ReassignPartition => "reassign_partition",
            ApiKey::RemoveNode => "remove_node",
            ApiKey::SaslHandshake => "sasl_handshake",
            ApiKey::SaslAuthenticate => "sasl_authenticate",
            ApiKey::UpsertUser => "upsert_user",
            ApiKey::DeleteUser => "delete_user",
            ApiKey::ListUsers => "list_users",
            ApiKey::CreateAcls => "create_acls",
            ApiKey::DeleteAcls => "delete_acls",
            ApiKey::ListAcls => "list_acls",
            ApiKey::AlterQuota => "alter_quota",
            ApiKey::ListQuotas => "list_quotas",
        }
    }

    /// The versions of this API this build speaks, inclusive. Clients send the newest; the
    /// broker also decodes the older ones (see `Request::decode`).
    pub fn versions(self) -> (u16, u16) {
        match self {
            // v1: `FetchRequest::max_records`.
            ApiKey::Fetch => (0, 1),
            _ => (0, 0),
        }
    }
}

/// A request body type: which API it belongs to and what it is answered with.
///
/// Produce and fetch also carry raw record batches beside this control part; see
/// [`crate::frame`].
pub trait Message: Serialize + DeserializeOwned {
    const API_KEY: ApiKey;
    type Response: Serialize + DeserializeOwned;

    /// Longest time the broker may deliberately hold this request before answering (a fetch's
    /// long poll, a join waiting at the rebalance barrier). Clients add it to their request
    /// timeout, so a long poll is not mistaken for a dead connection.
    fn server_wait(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Served only by the group coordinator: in a cluster, the leader of the internal
    /// partition [`OFFSETS_TOPIC`] (partition 0), where clients send it; any node of a single
    /// node.
    const COORDINATED: bool = false;
}

/// The internal partition that holds consumer groups' committed offsets in a cluster; its
/// leader coordinates every group.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
