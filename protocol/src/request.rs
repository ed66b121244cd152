//! Decoding a request frame into a typed request, checking its api key and version.

use crate::api::{ApiKey, Message};
use crate::codec;
use crate::error::DecodeError;
use crate::frame::{RequestFrame, split_body};
use crate::messages::*;
use bytes::Bytes;

/// A decoded request. Produce keeps its record batch as the raw payload.
#[derive(Debug, Clone)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Produce(ProduceRequest, Bytes),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopic(CreateTopicRequest),
    DeleteTopic(DeleteTopicRequest),
    ListTopics(ListTopicsRequest),
    DescribeTopic(DescribeTopicRequest),
    JoinGroup(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    CommitOffsets(CommitOffsetsRequest),
    FetchOffsets(FetchOffsetsRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroup(DescribeGroupRequest),
    DeleteGroup(DeleteGroupRequest),
    ResetOffsets(ResetOffsetsRequest),
    AddPartitions(AddPartitionsRequest),
    AlterTopic(AlterTopicRequest),
    InitProducer(InitProducerRequest),
    Metadata(MetadataRequest),
    ReassignPartition(ReassignPartitionRequest),
    RemoveNode(RemoveNodeRequest),
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
    UpsertUser(UpsertUserRequest),
    DeleteUser(DeleteUserRequest),
    ListUsers(ListUsersRequest),
    CreateAcls(CreateAclsRequest),
    DeleteAcls(DeleteAclsRequest),
    ListAcls(ListAclsRequest),
    AlterQuota(AlterQuotaRequest),
    ListQuotas(ListQuotasRequest),
}

/// Why a whole frame is not a request this broker can serve. The frame boundaries are intact,
/// so the connection can carry on after answering with the matching error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unsupported api key {0}")]
    UnsupportedApiKey(u16),
    #[error("unsupported version {version} of {key:?} (supported {min}..={max})")]
    UnsupportedVersion {
        key: ApiKey,
        version: u16,
        min: u16,
        max: u16,
    },
    #[error("malformed {key:?} request: {source}")]
    Malformed { key: ApiKey, source: DecodeError },
}

fn control<M: Message>(control: &Bytes, payload: &Bytes) -> Result<M, DecodeError> {
    if !payload.is_empty() && M::API_KEY != ApiKey::Produce {
        return Err(DecodeError::Invalid {
            what: "request",
            reason: "unexpected payload after the control body",
        });
    }
    codec::decode(control, "request body")
}

impl Request {
    pub fn decode(frame: RequestFrame) -> Result<Request, RequestError> {
        let h = frame.header;
        let key = ApiKey::from_u16(h.api_key).ok_or(RequestError::UnsupportedApiKey(h.api_key))?;
        let (min, max) = key.versions();
        if h.api_version < min || h.api_version > max {
            return Err(RequestError::UnsupportedVersion {
                key,
                version: h.api_version,
                min,
                max,
            });
        }
        let malformed = |source| RequestError::Malformed { key, source };
        let (c, payload) = split_body(frame.body).map_err(malformed)?;
        macro_rules! decode {
            ($($api:ident),*) => {
                match key {
                    ApiKey::Produce => Request::Produce(control(&c, &payload).map_err(malformed)?, payload),
                    ApiKey::Fetch if h.api_version == 0 => Request::Fetch(
                        control::<crate::messages::FetchRequestV0>(&c, &payload)
                            .map_err(malformed)?
                            .into(),
                    ),
                    $(ApiKey::$api => Request::$api(control(&c, &payload).map_err(malformed)?),)*
                }
            };
        }
        Ok(decode!(
            ApiVersions,
            Fetch,
            ListOffsets,
            CreateTopic,
            DeleteTopic,
            ListTopics,
            DescribeTopic,
            JoinGroup,
            Heartbeat,
            LeaveGroup,
            CommitOffsets,
            FetchOffsets,
            ListGroups,
            DescribeGroup,
            DeleteGroup,
            ResetOffsets,
            AddPartitions,
            AlterTopic,
            InitProducer,
            Metadata,
            ReassignPartition,
            RemoveNode,
            SaslHandshake,
            SaslAuthenticate,
            UpsertUser,
            DeleteUser,
            ListUsers,
            CreateAcls,
            DeleteAcls,
            ListAcls,
            AlterQuota,
            ListQuotas
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{RequestHeader, decode_request, encode_request};
    use crate::topic::TopicName;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn frame_of(
        api_key: u16,
        api_version: u16,
        body: &impl serde::Serialize,
        payload: Bytes,
    ) -> RequestFrame {
        let out = encode_request(
            RequestHeader {
                api_key,
                api_version,
                correlation_id: 1,
            },
            body,
            payload,
        );
        let mut buf = BytesMut::from(&out.head[..]);
        buf.extend_from_slice(&out.payload);
        decode_request(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn decodes_produce_with_its_payload() {
        let req = ProduceRequest {
            topic: TopicName::new("t").unwrap(),
            partition: 2,
        };
        let f = frame_of(1, 0, &req, Bytes::from_static(b"batch"));
        let Ok(Request::Produce(got, payload)) = Request::decode(f) else {
            panic!("not a produce")
        };
        assert_eq!(got, req);
        assert_eq!(&payload[..], b"batch");
    }

    /// A client older than Fetch v1 sends no record cap; the broker reads it as none.
    #[test]
    fn decodes_both_fetch_versions() {
        let v1 = crate::messages::FetchRequest {
            topic: TopicName::new("t").unwrap(),
            partition: 1,
            offset: 9,
            max_bytes: 100,
            min_bytes: 1,
            max_wait_ms: 5,
            max_records: 7,
        };
        let v0 = crate::messages::FetchRequestV0 {
            topic: v1.topic.clone(),
            partition: 1,
            offset: 9,
            max_bytes: 100,
            min_bytes: 1,
            max_wait_ms: 5,
        };
        let Ok(Request::Fetch(got)) = Request::decode(frame_of(2, 1, &v1, Bytes::new())) else {
            panic!("v1 is a fetch")
        };
        assert_eq!(got, v1);
        let Ok(Request::Fetch(got)) = Request::decode(frame_of(2, 0, &v0, Bytes::new())) else {
            panic!("v0 is a fetch")
        };
        assert_eq!(got.max_records, 0);
        assert_eq!((got.offset, got.max_bytes), (9, 100));
        // Each version's body is its own: a v1 body under version 0 is refused.
        assert!(matches!(
            Request::decode(frame_of(2, 0, &v1, Bytes::new())),
            Err(RequestError::Malformed { .. })
        ));
    }

    #[test]
    fn refuses_unknown_keys_versions_and_mismatched_bodies() {
        let body = ListTopicsRequest {};
        assert!(matches!(
            Request::decode(frame_of(999, 0, &body, Bytes::new())),
            Err(RequestError::UnsupportedApiKey(999))
        ));
        assert!(matches!(
            Request::decode(frame_of(6, 7, &body, Bytes::new())),
            Err(RequestError::UnsupportedVersion { version: 7, .. })
        ));
        // A list-topics body is not a valid fetch body.
        assert!(matches!(
            Request::decode(frame_of(2, 0, &body, Bytes::new())),
            Err(RequestError::Malformed { .. })
        ));
        // Payload is only allowed on produce.
        assert!(matches!(
            Request::decode(frame_of(6, 0, &body, Bytes::from_static(b"x"))),
            Err(RequestError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(key in 0u16..10, body: Vec<u8>) {
            let frame = RequestFrame {
                header: RequestHeader { api_key: key, api_version: 0, correlation_id: 0 },
                body: Bytes::from(body),
            };
            let _ = Request::decode(frame);
        }
    }
}
