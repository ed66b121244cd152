//! Topic administration.

use crate::client::Client;
use crate::error::Error;
use rill_protocol::messages::*;
use rill_protocol::{TopicConfig, TopicName};

/// Creates, lists, describes and deletes topics.
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

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), Error> {
        let request = CreateTopicRequest {
            name: topic_name(name)?,
            partitions,
            config,
        };
        // Not retried: a create that was applied before a disconnect would then fail as a duplicate.
        self.client
            .enqueue(&request, bytes::Bytes::new())
            .await?
            .await?;
        Ok(())
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
}
