//! Metadata: the cluster's nodes and where each partition is led, so clients route produce and
//! fetch to leaders.
use crate::api::{ApiKey, Message};
use crate::topic::TopicName;
use serde::{Deserialize, Serialize};

/// Asks for the nodes and for the named topics' partitions (every topic when `topics` is
/// empty). Unknown topics are left out of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRequest {
    pub topics: Vec<TopicName>,
}

/// A broker node and the address clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    pub node_id: u64,
    pub addr: String,
}

/// A partition's replicas and leader as the answering node sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// The leader's node id; `None` while an election runs, or when the answering node holds
    /// no replica of the partition and so does not follow its leadership.
    pub leader: Option<u64>,
    /// The Raft term `leader` was learned in (0 when unknown): of two answers, the higher
    /// term is the newer.
    pub term: u64,
    /// Replica node ids, the preferred leader first.
    pub replicas: Vec<u64>,
    /// While the partition moves (`rill topic reassign`): the replicas it moves to; empty
    /// otherwise.
    pub target: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: TopicName,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    /// The node that answered.
    pub node_id: u64,
    /// Every node of the cluster; a single-node broker lists only itself.
    pub nodes: Vec<NodeAddress>,
    pub topics: Vec<TopicMetadata>,
}

impl Message for MetadataRequest {
    const API_KEY: ApiKey = ApiKey::Metadata;
    type Response = MetadataResponse;
}

/// Moves a partition to another set of replicas (cluster only). Answered once the move is
/// recorded; the partition's leader then adds the new replicas, lets them catch up, and drops
/// the old ones. Progress shows in [`PartitionMetadata::target`], empty once done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignPartitionRequest {
    pub topic: TopicName,
    pub partition: u32,
    /// The new replicas' node ids, the preferred leader first.
    pub replicas: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignPartitionResponse {}

impl Message for ReassignPartitionRequest {
    const API_KEY: ApiKey = ApiKey::ReassignPartition;
    type Response = ReassignPartitionResponse;
}

/// Removes a node from the cluster (cluster only); refused while it holds replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNodeRequest {
    pub node_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNodeResponse {}

impl Message for RemoveNodeRequest {
    const API_KEY: ApiKey = ApiKey::RemoveNode;
    type Response = RemoveNodeResponse;
}
