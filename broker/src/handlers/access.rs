//! Authorization: what each request needs, checked once in the dispatcher before its handler
//! runs (ARCHITECTURE.md, "Security", Authorization).
//!
//! A request maps to `(resource, name, operation)` pairs; every one must be allowed. Requests
//! that list things (topics, groups, metadata) need nothing up front: they leave out what the
//! principal may not describe ([`Checker::sees_topic`], [`Checker::sees_group`]).

use super::OpError;
use crate::auth::Access;
use crate::server::Context;
use rill_protocol::acl::{CLUSTER, Operation, ResourceType};
use rill_protocol::request::Request;
use std::sync::Arc;

/// A principal's checks against the broker's ACLs.
#[derive(Clone)]
pub struct Checker {
    ctx: Arc<Context>,
    access: Access,
}

impl Checker {
    pub fn new(ctx: &Arc<Context>, principal: Option<&Arc<str>>) -> Self {
        Checker {
            ctx: ctx.clone(),
            access: ctx.security.access(principal),
        }
    }

    /// Everything passes (a superuser, or a broker without authentication).
    pub fn is_open(&self) -> bool {
        matches!(self.access, Access::All)
    }

    /// The principal the checks are for (`None`: every check passes).
    pub fn principal(&self) -> Option<&Arc<str>> {
        match &self.access {
            Access::All => None,
            Access::User(p) => Some(p),
        }
    }

    pub fn allows(&self, resource: ResourceType, name: &str, op: Operation) -> bool {
        self.ctx.security.allows(&self.access, resource, name, op)
    }

    /// Refuses with `NotAuthorized`, naming what was needed.
    pub fn require(
        &self,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> Result<(), OpError> {
        if self.allows(resource, name, op) {
            return Ok(());
        }
        let who = self.principal().map_or("", |p| p);
        Err(OpError::Denied(match resource {
            ResourceType::Cluster => format!("{who} may not {op} on the cluster"),
            _ => format!("{who} may not {op} {resource} {name:?}"),
        }))
    }

    pub fn sees_topic(&self, name: &str) -> bool {
        self.allows(ResourceType::Topic, name, Operation::Describe)
    }

    pub fn sees_group(&self, name: &str) -> bool {
        self.allows(ResourceType::Group, name, Operation::Describe)
    }

    /// Checks what `request` needs. User management is for superusers and checked by its
    /// handlers; SASL and ApiVersions need nothing.
    pub fn check(&self, request: &Request) -> Result<(), OpError> {
        use Operation::*;
        use ResourceType::{Cluster, Group, Topic};
        if self.is_open() {
            return Ok(());
        }
        match request {
            Request::ApiVersions(_)
            | Request::SaslHandshake(_)
            | Request::SaslAuthenticate(_)
            | Request::UpsertUser(_)
            | Request::DeleteUser(_)
            | Request::ListUsers(_)
            // Filtered by what the principal may describe.
            | Request::ListTopics(_)
            | Request::ListGroups(_)
            | Request::Metadata(_) => Ok(()),
            Request::Produce(r, _) => self.require(Topic, r.topic.as_str(), Write),
            Request::Fetch(r) => self.require(Topic, r.topic.as_str(), Read),
            Request::ListOffsets(r) => self.require(Topic, r.topic.as_str(), Describe),
            Request::DescribeTopic(r) => self.require(Topic, r.name.as_str(), Describe),
            Request::CreateTopic(r) => {
                if self.allows(Cluster, CLUSTER, Create) {
                    return Ok(());
                }
                self.require(Topic, r.name.as_str(), Create)
            }
            Request::DeleteTopic(r) => self.require(Topic, r.name.as_str(), Delete),
            Request::AddPartitions(r) => self.require(Topic, r.name.as_str(), Alter),
            Request::AlterTopic(r) => self.require(Topic, r.name.as_str(), Alter),
            Request::JoinGroup(r) => {
                self.require(Group, &r.group, Read)?;
                r.topics
                    .iter()
                    .try_for_each(|t| self.require(Topic, t.as_str(), Describe))
            }
            Request::Heartbeat(r) => self.require(Group, &r.group, Read),
            Request::LeaveGroup(r) => self.require(Group, &r.group, Read),
            Request::CommitOffsets(r) => {
                self.require(Group, &r.group, Read)?;
                r.offsets
                    .iter()
                    .try_for_each(|(tp, _)| self.require(Topic, tp.topic.as_str(), Read))
            }
            Request::FetchOffsets(r) => {
                self.require(Group, &r.group, Describe)?;
                r.partitions
                    .iter()
                    .try_for_each(|tp| self.require(Topic, tp.topic.as_str(), Describe))
            }
            Request::DescribeGroup(r) => self.require(Group, &r.group, Describe),
            Request::DeleteGroup(r) => self.require(Group, &r.group, Delete),
            Request::ResetOffsets(r) => {
                self.require(Group, &r.group, Alter)?;
                self.require(Topic, r.topic.as_str(), Describe)
            }
            // Producer names are cluster-wide: taking one over fences its holder anywhere.
            Request::InitProducer(r) if r.producer_name.is_some() => {
                self.require(Cluster, CLUSTER, Write)
            }
            Request::InitProducer(_) => Ok(()),
            Request::ReassignPartition(_) | Request::RemoveNode(_) => {
                self.require(Cluster, CLUSTER, Alter)
            }
            Request::CreateAcls(_) | Request::DeleteAcls(_) | Request::AlterQuota(_) => {
                self.require(Cluster, CLUSTER, Alter)
            }
            Request::ListAcls(_) | Request::ListQuotas(_) => {
                self.require(Cluster, CLUSTER, Describe)
            }
        }
    }
}
