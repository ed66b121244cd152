//! Topic administration: create, delete, list, describe.
use crate::api::{ApiKey, Message};
use crate::topic::{TopicConfig, TopicName};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    pub name: TopicName,
    pub partitions: u32,
    pub config: TopicConfig,
    /// Replicas per partition; the broker's default when `None` (a cluster's
    /// `default_replication_factor`, capped at its node count; 1 on a single node).
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicResponse {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicRequest {
    pub name: TopicName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicResponse {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTopicsRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSummary {
    pub name: TopicName,
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTopicsResponse {
    pub topics: Vec<TopicSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicRequest {
    pub name: TopicName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: u64,
    /// High watermark: offset of the next visible record.
    pub log_end_offset: u64,
    /// Records below it are fsynced; under `fsync=interval` the records from here to
    /// `log_end_offset` are what a power loss could take.
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub segments: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicResponse {
    pub name: TopicName,
    /// The topic's own overrides; unset fields use the broker defaults.
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// Grows a topic to `partitions` partitions (never shrinks). Keyed records may map to other
/// partitions afterwards, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPartitionsRequest {
    pub name: TopicName,
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPartitionsResponse {}

impl Message for AddPartitionsRequest {
    const API_KEY: ApiKey = ApiKey::AddPartitions;
    type Response = AddPartitionsResponse;
}

/// Changes a live topic's settings: every field of `changes` that is set replaces the topic's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicRequest {
    pub name: TopicName,
    pub changes: TopicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicResponse {
    /// The topic's settings after the change.
    pub config: TopicConfig,
}

impl Message for AlterTopicRequest {
    const API_KEY: ApiKey = ApiKey::AlterTopic;
    type Response = AlterTopicResponse;
}

impl Message for CreateTopicRequest {
    const API_KEY: ApiKey = ApiKey::CreateTopic;
    type Response = CreateTopicResponse;
}
impl Message for DeleteTopicRequest {
    const API_KEY: ApiKey = ApiKey::DeleteTopic;
    type Response = DeleteTopicResponse;
}
impl Message for ListTopicsRequest {
    const API_KEY: ApiKey = ApiKey::ListTopics;
    type Response = ListTopicsResponse;
}
impl Message for DescribeTopicRequest {
    const API_KEY: ApiKey = ApiKey::DescribeTopic;
    type Response = DescribeTopicResponse;
}
