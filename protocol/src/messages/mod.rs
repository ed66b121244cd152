//! Request and response bodies, one file per API.
//!
//! Every type here is plain data encoded by [`crate::codec`]. Record batches never pass through
//! serde: a produce request and a fetch response carry them as the frame's raw payload.

mod auth;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod producers;
mod topics;
mod versions;

pub use auth::{
    AlterQuotaRequest, AlterQuotaResponse, CreateAclsRequest, CreateAclsResponse,
    DeleteAclsRequest, DeleteAclsResponse, DeleteUserRequest, DeleteUserResponse, ListAclsRequest,
    ListAclsResponse, ListQuotasRequest, ListQuotasResponse, ListUsersRequest, ListUsersResponse,
    Quota, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse, UpsertUserRequest, UpsertUserResponse, UserSummary,
};
pub use fetch::{FetchRequest, FetchRequestV0, FetchResponse};
pub use groups::{
    AssignmentStrategy, CommitOffsetsRequest, CommitOffsetsResponse, DeleteGroupRequest,
    DeleteGroupResponse, DescribeGroupRequest, DescribeGroupResponse, FetchOffsetsRequest,
    FetchOffsetsResponse, GroupSummary, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, MemberInfo, PartitionLag, ResetOffsetsRequest, ResetOffsetsResponse,
    ResetTo, SESSION_TIMEOUT_MS, TopicPartition,
};
pub use metadata::{
    MetadataRequest, MetadataResponse, NodeAddress, PartitionMetadata, ReassignPartitionRequest,
    ReassignPartitionResponse, RemoveNodeRequest, RemoveNodeResponse, TopicMetadata,
};
pub use offsets::{ListOffsetsRequest, ListOffsetsResponse, OffsetSpec};
pub use produce::{ProduceRequest, ProduceResponse};
pub use producers::{InitProducerRequest, InitProducerResponse};
pub use topics::{
    AddPartitionsRequest, AddPartitionsResponse, AlterTopicRequest, AlterTopicResponse,
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeTopicRequest, DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse,
    PartitionInfo, TopicSummary,
};
pub use versions::{ApiVersionRange, ApiVersionsRequest, ApiVersionsResponse};

#[cfg(test)]
mod round_trip {
    //! Every message type survives encode -> decode unchanged.
    use super::*;
    use crate::codec;
    use crate::topic::{FsyncPolicy, TopicConfig, TopicName};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn round_trip<
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    >(
        v: T,
    ) {
        let mut buf = BytesMut::new();
        codec::encode(&v, &mut buf);
        let back: T = codec::decode(&buf, "test").expect("decodes");
        assert_eq!(back, v);
    }

    fn topic() -> impl Strategy<Value = TopicName> {
        "[a-zA-Z0-9._-]{1,40}"
            .prop_filter("not dots", |s| s != "." && s != "..")
            .prop_map(|s| TopicName::new(s).expect("valid by construction"))
    }

    fn fsync() -> impl Strategy<Value = Option<FsyncPolicy>> {
        prop_oneof![
            Just(None),
            Just(Some(FsyncPolicy::Always)),
            (1u32..).prop_map(|ms| Some(FsyncPolicy::Interval { ms })),
        ]
    }

    proptest! {
        #[test]
        fn produce(t in topic(), p: u32, base: u64, dup: bool) {
            round_trip(ProduceRequest { topic: t, partition: p });
            round_trip(ProduceResponse { base_offset: base, log_end_offset: base.saturating_add(1), duplicate: dup });
        }

        #[test]
        fn fetch(t in topic(), p: u32, o: u64, mb: u32, mn: u32, w: u32, mr: u32, hw: u64, ls: u64) {
            round_trip(FetchRequest { topic: t.clone(), partition: p, offset: o, max_bytes: mb, min_bytes: mn, max_wait_ms: w, max_records: mr });
            round_trip(FetchRequestV0 { topic: t, partition: p, offset: o, max_bytes: mb, min_bytes: mn, max_wait_ms: w });
            round_trip(FetchResponse { high_watermark: hw, log_start_offset: ls });
        }

        #[test]
        fn offsets(t in topic(), p: u32, ts: i64, o: Option<u64>) {
            for spec in [OffsetSpec::Earliest, OffsetSpec::Latest, OffsetSpec::Timestamp(ts)] {
                round_trip(ListOffsetsRequest { topic: t.clone(), partition: p, spec });
            }
            round_trip(ListOffsetsResponse { offset: o });
        }

        #[test]
        fn topics(t in topic(), n: u32, f in fsync(), seg: Option<u64>, sizes: Vec<(u64, u64, u64)>) {
            let config = TopicConfig { fsync: f, segment_bytes: seg, retention_ms: seg, retention_bytes: seg.map(|s| s / 2) };
            round_trip(CreateTopicRequest { name: t.clone(), partitions: n, config: config.clone(), replication_factor: seg.map(|s| s as u32) });
            round_trip(CreateTopicResponse {});
            round_trip(DeleteTopicRequest { name: t.clone() });
            round_trip(AddPartitionsRequest { name: t.clone(), partitions: n });
            round_trip(AddPartitionsResponse {});
            round_trip(AlterTopicRequest { name: t.clone(), changes: config.clone() });
            round_trip(AlterTopicResponse { config: config.clone() });
            round_trip(DeleteTopicResponse {});
            round_trip(ListTopicsRequest {});
            round_trip(ListTopicsResponse { topics: vec![TopicSummary { name: t.clone(), partitions: n }] });
            round_trip(DescribeTopicRequest { name: t.clone() });
            let partitions = sizes.iter().enumerate().map(|(i, (a, b, c))| PartitionInfo {
                partition: i as u32, log_start_offset: *a, log_end_offset: *b, durable_offset: *a, size_bytes: *c, segments: n,
            }).collect();
            round_trip(DescribeTopicResponse { name: t, config, partitions });
        }

        #[test]
        fn versions(name in ".{0,20}", ranges: Vec<(u16, u16, u16)>, max: u32) {
            round_trip(ApiVersionsRequest { client: name.clone() });
            round_trip(ApiVersionsResponse {
                broker: name,
                apis: ranges.into_iter().map(|(key, min, max)| ApiVersionRange { key, min, max }).collect(),
                max_frame_bytes: max,
            });
        }

        #[test]
        fn groups(
            g in ".{0,30}", member: Option<String>, t in topic(), p: u32, generation: u32, o: u64,
            opt: Option<u64>, ts: i64, st in 0..3u8, lag: u64,
        ) {
            let strategy = [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin, AssignmentStrategy::Sticky][st as usize];
            let tp = TopicPartition { topic: t.clone(), partition: p };
            round_trip(JoinGroupRequest {
                group: g.clone(), member_id: member.clone(), client: g.clone(), topics: vec![t.clone()],
                session_timeout_ms: generation, strategy,
            });
            round_trip(JoinGroupResponse { member_id: g.clone(), generation, assignment: vec![tp.clone()], heartbeat_interval_ms: p, rejoin_with_id: generation % 2 == 0 });
            round_trip(HeartbeatRequest { group: g.clone(), member_id: g.clone(), generation });
            round_trip(HeartbeatResponse {});
            round_trip(LeaveGroupRequest { group: g.clone(), member_id: g.clone() });
            round_trip(LeaveGroupResponse {});
            round_trip(CommitOffsetsRequest { group: g.clone(), member_id: member, generation: Some(generation), offsets: vec![(tp.clone(), o)] });
            round_trip(CommitOffsetsResponse {});
            round_trip(FetchOffsetsRequest { group: g.clone(), partitions: vec![tp.clone()] });
            round_trip(FetchOffsetsResponse { offsets: vec![(tp.clone(), opt)] });
            round_trip(ListGroupsRequest {});
            round_trip(ListGroupsResponse { groups: vec![GroupSummary { group: g.clone(), state: "stable".into(), members: p }] });
            round_trip(DescribeGroupRequest { group: g.clone() });
            round_trip(DescribeGroupResponse {
                group: g.clone(), state: "empty".into(), generation, strategy: Some(strategy),
                members: vec![MemberInfo { member_id: g.clone(), client: g.clone(), topics: vec![t.clone()], assignment: vec![tp.clone()] }],
                offsets: vec![PartitionLag { partition: tp.clone(), committed: opt, log_end: o, lag }],
            });
            round_trip(DeleteGroupRequest { group: g.clone() });
            round_trip(DeleteGroupResponse {});
            for to in [ResetTo::Earliest, ResetTo::Latest, ResetTo::Offset(o), ResetTo::Timestamp(ts)] {
                round_trip(ResetOffsetsRequest { group: g.clone(), topic: t.clone(), to });
            }
            round_trip(ResetOffsetsResponse { offsets: vec![(tp, o)] });
            round_trip(InitProducerRequest { producer_name: Some(g.clone()) });
            round_trip(InitProducerRequest { producer_name: None });
            round_trip(InitProducerResponse { producer_id: o as i64, epoch: p as i16 });
            round_trip(MetadataRequest { topics: vec![t.clone()] });
            round_trip(MetadataResponse {
                node_id: o,
                nodes: vec![NodeAddress { node_id: o, addr: g.clone() }],
                topics: vec![TopicMetadata {
                    name: t.clone(),
                    partitions: vec![PartitionMetadata { partition: p, leader: opt, term: lag, replicas: vec![o, lag], target: vec![lag] }],
                }],
            });
            round_trip(ReassignPartitionRequest { topic: t.clone(), partition: p, replicas: vec![o, lag] });
            round_trip(ReassignPartitionResponse {});
            round_trip(RemoveNodeRequest { node_id: o });
            round_trip(RemoveNodeResponse {});
            round_trip(SaslHandshakeRequest { mechanism: g.clone() });
            round_trip(SaslHandshakeResponse { mechanisms: vec![g.clone()] });
            round_trip(SaslAuthenticateRequest { bytes: g.clone().into_bytes() });
            round_trip(SaslAuthenticateResponse { bytes: vec![p as u8], principal: Some(g.clone()) });
            let credential = crate::scram::Credential {
                mechanism: crate::scram::Mechanism::ScramSha512,
                salt: g.clone().into_bytes(),
                iterations: p,
                stored_key: vec![1, 2],
                server_key: vec![3],
            };
            round_trip(UpsertUserRequest { user: g.clone(), credentials: vec![credential], must_exist: Some(opt.is_some()) });
            round_trip(UpsertUserResponse {});
            round_trip(DeleteUserRequest { user: g.clone() });
            round_trip(DeleteUserResponse {});
            round_trip(ListUsersRequest {});
            round_trip(ListUsersResponse { users: vec![UserSummary { user: g.clone(), mechanisms: vec![crate::scram::Mechanism::ScramSha256], superuser: opt.is_some() }] });
            let acl = crate::acl::Acl {
                principal: g.clone(),
                resource: crate::acl::ResourceType::Group,
                pattern: crate::acl::PatternType::Prefix,
                name: g.clone(),
                operation: crate::acl::Operation::Alter,
                permission: crate::acl::Permission::Deny,
            };
            round_trip(CreateAclsRequest { acls: vec![acl.clone()] });
            round_trip(CreateAclsResponse { added: p });
            round_trip(DeleteAclsRequest { acls: vec![acl.clone()] });
            round_trip(DeleteAclsResponse { removed: p });
            round_trip(ListAclsRequest { filter: crate::acl::AclFilter { principal: Some(g.clone()), resource: Some(crate::acl::ResourceType::Topic), name: None } });
            round_trip(ListAclsResponse { acls: vec![acl] });
            let quota = Quota { produce_bytes_per_sec: Some(o), fetch_bytes_per_sec: None, requests_per_sec: Some(u64::from(p)) };
            round_trip(AlterQuotaRequest { principal: g.clone(), quota: Some(quota) });
            round_trip(AlterQuotaResponse {});
            round_trip(ListQuotasRequest {});
            round_trip(ListQuotasResponse { quotas: vec![(g.clone(), quota)] });
            prop_assert_eq!(strategy.to_string().parse::<AssignmentStrategy>(), Ok(strategy));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes: Vec<u8>) {
            let _ = codec::decode::<DescribeTopicResponse>(&bytes, "x");
            let _ = codec::decode::<FetchRequest>(&bytes, "x");
            let _ = codec::decode::<CreateTopicRequest>(&bytes, "x");
            let _ = codec::decode::<ApiVersionsResponse>(&bytes, "x");
            let _ = codec::decode::<JoinGroupRequest>(&bytes, "x");
            let _ = codec::decode::<DescribeGroupResponse>(&bytes, "x");
            let _ = codec::decode::<CommitOffsetsRequest>(&bytes, "x");
        }
    }
}
