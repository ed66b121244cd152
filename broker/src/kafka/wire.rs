//! Kafka's wire format: the only module that uses the `kafka-protocol` crate (as `codec.rs` is
//! the only one that uses bincode). Frames are a 4-byte big-endian length and that many bytes;
//! a request starts with its header (api key, version, correlation id, client id, and tagged
//! fields in flexible versions), a response with the correlation id (and tagged fields in
//! flexible versions, except for ApiVersions, whose response header is always v0).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use kafka_protocol::messages as msg;
pub use kafka_protocol::messages::{RequestKind, ResponseKind};
pub use kafka_protocol::protocol::StrBytes;

/// The APIs served and their version ranges (advertised by ApiVersions, checked on arrival).
/// Produce is advertised from 0 (librdkafka before 2.8 turns compression off unless it is) but
/// versions 0-2 are refused when they arrive; the others start where Kafka 4.0 starts (KIP-896).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
];

/// Produce versions below this are advertised but refused (they carry pre-v2 message sets).
pub const MIN_PRODUCE_SERVED: i16 = 3;

/// Bytes of the fixed start of every request header: api key, version, correlation id.
const FIXED_HEADER: usize = 8;

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {max} (max_frame_bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("{api:?} v{version} request does not decode: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Splits one whole frame off the front of `buf`, or `None` until it has arrived.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, WireError> {
    let Some(len) = buf.get(..4).map(|b| {
        let mut b = b;
        b.get_i32()
    }) else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| WireError::TooShort(0))?;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    if len < FIXED_HEADER {
        return Err(WireError::TooShort(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A request, decoded as far as it can be answered.
#[derive(Debug)]
pub enum Request {
    /// A served API at a served version.
    Served {
        header: RequestHeader,
        api: ApiKey,
        body: Box<RequestKind>,
    },
    /// An unknown API key, or a version outside what is served (or, for Produce, advertised
    /// but refused): answered with UNSUPPORTED_VERSION.
    Unsupported {
        api_key: i16,
        version: i16,
        correlation_id: i32,
    },
}

impl Request {
    pub fn correlation_id(&self) -> i32 {
        match self {
            Request::Served { header, .. } => header.correlation_id,
            Request::Unsupported { correlation_id, .. } => *correlation_id,
        }
    }
}

/// The served version range of `api`, if it is served.
pub fn served(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

/// Decodes one frame (from [`split_frame`]).
pub fn decode(frame: Bytes) -> Result<Request, WireError> {
    let mut fixed = frame
        .get(..FIXED_HEADER)
        .ok_or(WireError::TooShort(frame.len()))?;
    let (api_key, version, correlation_id) = (fixed.get_i16(), fixed.get_i16(), fixed.get_i32());
    let unsupported = Request::Unsupported {
        api_key,
        version,
        correlation_id,
    };
    let Ok(api) = ApiKey::try_from(api_key) else {
        return Ok(unsupported);
    };
    let Some((min, max)) = served(api) else {
        return Ok(unsupported);
    };
    let min = if api == ApiKey::Produce {
        MIN_PRODUCE_SERVED
    } else {
        min
    };
    if version < min || version > max {
        return Ok(unsupported);
    }
    let malformed = |reason: String| WireError::Malformed {
        api,
        version,
        reason,
    };
    // The crate decodes untrusted bytes; a panic in it must not take the connection's task
    // (or anything else) with it.
    let decoded = std::panic::catch_unwind(move || {
        let mut buf = frame;
        let header = RequestHeader::decode(&mut buf, api.request_header_version(version))?;
        let body = RequestKind::decode(api, &mut buf, version)?;
        anyhow::Ok((header, Box::new(body)))
    })
    .map_err(|_| malformed("the decoder failed".into()))?;
    let (header, body) = decoded.map_err(|e| malformed(format!("{e:#}")))?;
    Ok(Request::Served { header, api, body })
}

/// A response frame: length, header, body.
pub fn encode(api: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut out, api.response_header_version(version))
        .and_then(|()| body.encode(&mut out, version));
    if let Err(e) = encoded {
        // Only a response built against the schema's rules fails here: a bug of ours.
        tracing::error!(?api, version, error = %e, "Kafka response does not encode");
        out.truncate(4);
        out.put_i32(correlation_id);
        out.put_i16(UNKNOWN_SERVER_ERROR);
    }
    finish(out)
}

/// The answer to an unsupported API or version: its correlation id and UNSUPPORTED_VERSION.
/// For ApiVersions it is a whole v0 ApiVersions response carrying the served ranges, which is
/// how a client learns them (KIP-511); for other APIs the body is the error code alone.
pub fn encode_unsupported(api_key: i16, correlation_id: i32) -> Bytes {
    if api_key == ApiKey::ApiVersions as i16 {
        let body = ResponseKind::ApiVersions(api_versions(UNSUPPORTED_VERSION));
        return encode(ApiKey::ApiVersions, 0, correlation_id, &body);
    }
    let mut out = BytesMut::with_capacity(10);
    out.put_i32(0);
    out.put_i32(correlation_id);
    out.put_i16(UNSUPPORTED_VERSION);
    finish(out)
}

fn finish(mut out: BytesMut) -> Bytes {
    let len = (out.len() - 4) as i32;
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&len.to_be_bytes());
    }
    out.freeze()
}

/// The ApiVersions answer: every served range.
pub fn api_versions(error_code: i16) -> msg::ApiVersionsResponse {
    msg::ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|&(k, min, max)| {
                    msg::api_versions_response::ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// The topics a "consumer" protocol member subscribes to (its JoinGroup metadata, a
/// ConsumerProtocolSubscription led by its version), or `None` if it does not read.
pub fn subscription_topics(metadata: &Bytes) -> Option<Vec<String>> {
    let mut b = metadata.clone();
    let version = b.try_get_i16().ok()?.clamp(0, 3);
    let s = msg::ConsumerProtocolSubscription::decode(&mut b, version).ok()?;
    Some(s.topics.iter().map(|t| t.to_string()).collect())
}

/// The partitions a "consumer" protocol assignment (SyncGroup, a ConsumerProtocolAssignment led
/// by its version) names, or `None` if it does not read.
pub fn assignment_partitions(assignment: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let mut b = assignment.clone();
    let version = b.try_get_i16().ok()?.clamp(0, 3);
    let a = msg::ConsumerProtocolAssignment::decode(&mut b, version).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
            .collect(),
    )
}

/// Kafka's error codes that Rill answers with.
pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_REQUEST: i16 = 42;
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_CONFIG: i16 = 40;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
pub const PRODUCER_FENCED: i16 = 90;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b
    }

    #[test]
    fn a_frame_is_split_only_once_whole() {
        let mut whole = frame(&[0, 18, 0, 3, 0, 0, 0, 7, 0, 0]);
        let mut partial = whole.split_to(9);
        assert!(split_frame(&mut partial, 1024).unwrap().is_none());
        partial.unsplit(whole);
        let f = split_frame(&mut partial, 1024).unwrap().unwrap();
        assert_eq!(f.len(), 10);
        assert!(partial.is_empty());
    }

    #[test]
    fn oversize_short_and_negative_lengths_are_refused() {
        let mut big = BytesMut::new();
        big.put_i32(2048);
        assert!(matches!(
            split_frame(&mut big, 1024),
            Err(WireError::TooLarge { len: 2048, .. })
        ));
        let mut short = frame(&[0, 18, 0]);
        assert!(matches!(
            split_frame(&mut short, 1024),
            Err(WireError::TooShort(3))
        ));
        let mut negative = BytesMut::new();
        negative.put_i32(-5);
        assert!(split_frame(&mut negative, 1024).is_err());
    }

    #[test]
    fn unknown_keys_and_versions_are_unsupported_not_errors() {
        for (key, version) in [(999i16, 0i16), (1, 3), (1, 13), (0, 1), (0, 10), (18, 4)] {
            let mut b = BytesMut::new();
            b.put_i16(key);
            b.put_i16(version);
            b.put_i32(42);
            let r = decode(b.freeze()).unwrap();
            assert!(
                matches!(r, Request::Unsupported { api_key, version: v, correlation_id: 42 } if api_key == key && v == version),
                "{key} v{version}: {r:?}"
            );
        }
    }

    #[test]
    fn api_versions_decodes_in_every_served_version_and_unsupported_carries_ranges() {
        for version in 0..=3i16 {
            let mut b = BytesMut::new();
            b.put_i16(18);
            b.put_i16(version);
            b.put_i32(7);
            b.put_i16(1); // client id "c" (header v1 and v2 keep it a classic string)
            b.put_u8(b'c');
            if version >= 3 {
                b.put_u8(0); // header tagged fields
                b.put_slice(&[2, b't', 2, b'1', 0]); // software name, version, tags
            }
            match decode(b.freeze()).unwrap() {
                Request::Served { header, api, .. } => {
                    assert_eq!(api, ApiKey::ApiVersions);
                    assert_eq!(header.correlation_id, 7);
                    assert_eq!(header.client_id.as_deref(), Some("c"));
                }
                other => panic!("v{version}: {other:?}"),
            }
        }
        let mut out = encode_unsupported(18, 9);
        let len = out.get_i32() as usize;
        assert_eq!(len, out.len());
        assert_eq!(out.get_i32(), 9);
        assert_eq!(out.get_i16(), UNSUPPORTED_VERSION);
        assert_eq!(out.get_i32() as usize, SUPPORTED.len());
        let (key, min, max) = (out.get_i16(), out.get_i16(), out.get_i16());
        assert_eq!(
            (key, min, max),
            (0, 0, 9),
            "Produce first, advertised from 0"
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_malformed() {
        let mut b = BytesMut::new();
        b.put_i16(3); // Metadata
        b.put_i16(9);
        b.put_i32(1);
        b.put_slice(&[0xff; 3]);
        assert!(matches!(
            decode(b.freeze()),
            Err(WireError::Malformed { .. })
        ));
    }
}
