//! Async client for the Rill broker.
//!
//! - [`Client`]: one reconnecting, pipelined connection to a broker.
//! - [`Producer`]: per-partition batching, returns each record's offset.
//! - [`PartitionReader`] and [`Client::fetch`]: read a partition from any offset.
//! - [`Consumer`]: a consumer-group member, as a `Stream` of records.
//! - [`Admin`]: create, list, describe and delete topics; list, describe, reset and delete groups.
//!
//! ```no_run
//! use rill_client::{Admin, Client, PartitionReader, Producer, ProducerConfig, ProducerRecord, StartOffset, TopicConfig};
//!
//! # async fn example() -> Result<(), rill_client::Error> {
//! let client = Client::connect("127.0.0.1:7171").await?;
//! Admin::new(client.clone()).create_topic("orders", 4, TopicConfig::default()).await?;
//!
//! let producer = Producer::new(client.clone(), ProducerConfig::default());
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("customer-7")).await?;
//! let stored = delivery.await?; // acknowledged: on disk under the topic's fsync policy
//! println!("stored at partition {} offset {}", stored.partition, stored.offset);
//!
//! let mut reader = PartitionReader::new(client, "orders", stored.partition, StartOffset::Earliest).await?;
//! let record = reader.next().await?;
//! assert_eq!(&record.value[..], b"hello");
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod connection;
mod consumer;
mod error;
mod partitioner;
mod pipeline;
mod producer;
mod reader;
mod tls;

pub use admin::Admin;
pub use client::{Client, ClientConfig, SaslSettings};
pub use consumer::{
    Assignment, CommitHandle, Consumer, ConsumerBatch, ConsumerConfig, ConsumerRecord, OffsetReset,
};
pub use error::Error;
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{
    Delivery, Producer, ProducerConfig, ProducerRecord, Receipt, RecordMetadata, RecordRef,
};
pub use reader::{FetchOptions, FetchResult, Fetched, PartitionReader, StartOffset};
/// Access control entries (`Admin::create_acls`).
pub use rill_protocol::acl;
pub use rill_protocol::batch::{BatchBuilder, Header, Record, RecordView, ValidBatch};
pub use rill_protocol::messages::{
    AssignmentStrategy, DescribeGroupResponse, DescribeTopicResponse, GroupSummary, MemberInfo,
    MetadataResponse, NodeAddress, OffsetSpec, PartitionInfo, PartitionLag, PartitionMetadata,
    Quota, ResetTo, TopicMetadata, TopicPartition, TopicSummary,
};
pub use rill_protocol::scram::Mechanism as SaslMechanism;
pub use rill_protocol::{ErrorCode, FsyncPolicy, TopicConfig};
pub use tls::TlsSettings;

/// The README's Rust examples, compiled as doc tests so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
