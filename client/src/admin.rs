//! Topic administration.

use crate::client::Client;
use crate::error::Error;
use rill_protocol::acl::{Acl, AclFilter};
use rill_protocol::messages::*;
use rill_protocol::{TopicConfig, TopicName};

/// Creates, lists, describes and deletes topics; lists, describes, resets and deletes groups.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

pub(crate) fn topic_name(name: &str) -> Result<TopicName, Error> {
    TopicName::new(name).map_err(|e| Error::InvalidArgument(e.to_string()))
}

impl Admin {
    pub fn new(client: Client) -> Self {
        Admin { client }
    }

    /// Creates a topic with the broker's default replication factor.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), Error> {
        self.create_topic_replicated(name, partitions, None, config)
            .await
    }

    /// Creates a topic with `replication_factor` replicas per partition (`None`: the broker's
    /// default). A single-node broker accepts only 1.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    ) -> Result<(), Error> {
        let request = CreateTopicRequest {
            name: topic_name(name)?,
            partitions,
            config,
            replication_factor,
        };
        // Not retried: a create that was applied before a disconnect would then fail as a duplicate.
        self.client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?;
        Ok(())
    }

    /// Grows `name` to `partitions` partitions (never shrinks). Groups subscribed to it rebalance.
    pub async fn add_partitions(&self, name: &str, partitions: u32) -> Result<(), Error> {
        let request = AddPartitionsRequest {
            name: topic_name(name)?,
            partitions,
        };
        self.client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?;
        Ok(())
    }

    /// Changes a live topic's settings (every field set in `changes`); returns the result.
    pub async fn alter_topic(
        &self,
        name: &str,
        changes: TopicConfig,
    ) -> Result<TopicConfig, Error> {
        let request = AlterTopicRequest {
            name: topic_name(name)?,
            changes,
        };
        Ok(self
            .client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?
            .0
            .config)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let request = DeleteTopicRequest {
            name: topic_name(name)?,
        };
        self.client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?;
        Ok(())
    }

    /// A durable producer id for an idempotent producer: a new one without a name; with one,
    /// the name's id and a bumped epoch, which fences every older instance using the name.
    pub async fn init_producer(&self, name: Option<&str>) -> Result<(i64, i16), Error> {
        let request = rill_protocol::messages::InitProducerRequest {
            producer_name: name.map(str::to_string),
        };
        let (r, _) = self.client.call(&request).await?;
        Ok((r.producer_id, r.epoch))
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, Error> {
        Ok(self.client.call(&ListTopicsRequest {}).await?.0.topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, Error> {
        Ok(self
            .client
            .call(&DescribeTopicRequest {
                name: topic_name(name)?,
            })
            .await?
            .0)
    }

    /// The nodes, and for the named topics (every topic when empty) each partition's leader
    /// and replicas, as the bootstrap node sees them.
    pub async fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse, Error> {
        let topics = topics
            .iter()
            .map(|t| topic_name(t))
            .collect::<Result<_, _>>()?;
        Ok(self.client.call(&MetadataRequest { topics }).await?.0)
    }

    /// Starts moving a partition to `replicas` (node ids, the preferred leader first; a
    /// cluster only). Returns once the move is recorded; [`Admin::metadata`] shows the
    /// partition's `target` until its new replicas caught up and the old ones left.
    pub async fn reassign(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), Error> {
        let request = rill_protocol::messages::ReassignPartitionRequest {
            topic: topic_name(topic)?,
            partition,
            replicas: replicas.to_vec(),
        };
        self.client.call(&request).await?;
        Ok(())
    }

    /// Creates a user who logs in with `password` (SCRAM-SHA-256 and -512). The credentials
    /// are derived here: the password is never sent. Superusers only, on a broker that
    /// authenticates.
    pub async fn create_user(&self, user: &str, password: &str) -> Result<(), Error> {
        self.upsert_user(user, password, Some(false)).await
    }

    /// Replaces an existing user's password.
    pub async fn set_password(&self, user: &str, password: &str) -> Result<(), Error> {
        self.upsert_user(user, password, Some(true)).await
    }

    async fn upsert_user(
        &self,
        user: &str,
        password: &str,
        must_exist: Option<bool>,
    ) -> Result<(), Error> {
        let credentials = rill_protocol::scram::credentials_for(password)
            .ok_or_else(|| Error::InvalidArgument("no randomness for a salt".into()))?;
        let request = UpsertUserRequest {
            user: user.to_string(),
            credentials,
            must_exist,
        };
        self.client.call(&request).await?;
        Ok(())
    }

    pub async fn delete_user(&self, user: &str) -> Result<(), Error> {
        self.client
            .call(&DeleteUserRequest {
                user: user.to_string(),
            })
            .await?;
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<UserSummary>, Error> {
        Ok(self.client.call(&ListUsersRequest {}).await?.0.users)
    }

    /// Adds access control entries; returns how many were new. Needs `alter` on the cluster.
    pub async fn create_acls(&self, acls: Vec<Acl>) -> Result<u32, Error> {
        Ok(self.client.call(&CreateAclsRequest { acls }).await?.0.added)
    }

    /// Removes the entries equal to these; returns how many there were.
    pub async fn delete_acls(&self, acls: Vec<Acl>) -> Result<u32, Error> {
        Ok(self
            .client
            .call(&DeleteAclsRequest { acls })
            .await?
            .0
            .removed)
    }

    /// The entries `filter` selects. Needs `describe` on the cluster.
    pub async fn list_acls(&self, filter: AclFilter) -> Result<Vec<Acl>, Error> {
        Ok(self.client.call(&ListAclsRequest { filter }).await?.0.acls)
    }

    /// Sets `principal`'s quota (`*`: everyone without their own), or removes it (`None`).
    /// Needs `alter` on the cluster.
    pub async fn set_quota(&self, principal: &str, quota: Option<Quota>) -> Result<(), Error> {
        let request = AlterQuotaRequest {
            principal: principal.to_string(),
            quota,
        };
        self.client.call(&request).await?;
        Ok(())
    }

    /// Every principal's quota. Needs `describe` on the cluster.
    pub async fn list_quotas(&self) -> Result<Vec<(String, Quota)>, Error> {
        Ok(self.client.call(&ListQuotasRequest {}).await?.0.quotas)
    }

    /// Removes a node from the cluster; refused while it holds replicas.
    pub async fn remove_node(&self, node_id: u64) -> Result<(), Error> {
        let request = rill_protocol::messages::RemoveNodeRequest { node_id };
        self.client.call(&request).await?;
        Ok(())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, Error> {
        Ok(self.client.call(&ListGroupsRequest {}).await?.0.groups)
    }

    /// Members, their partitions, and committed offset and lag per partition.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, Error> {
        Ok(self
            .client
            .call(&DescribeGroupRequest {
                group: group.to_string(),
            })
            .await?
            .0)
    }

    /// Deletes a group's committed offsets. The group must have no members.
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let request = DeleteGroupRequest {
            group: group.to_string(),
        };
        self.client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?;
        Ok(())
    }

    /// Sets a group's committed offsets for every partition of `topic`. The group must have no
    /// members. Returns the new offsets.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<(TopicPartition, u64)>, Error> {
        let request = ResetOffsetsRequest {
            group: group.to_string(),
            topic: topic_name(topic)?,
            to,
        };
        Ok(self
            .client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?
            .0
            .offsets)
    }
}
