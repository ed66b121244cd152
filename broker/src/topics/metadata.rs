//! The persisted description of a topic: `<data>/topics/<name>/topic.meta`.
//!
//! Layout (little-endian, see docs/format.md): magic `RILLTOPC`, version u16 = 1, payload
//! length u32, CRC-32C of the payload u32, payload (the [`TopicMeta`] control encoding). The file
//! is written once into a staging directory that is renamed into place, so a crash leaves either
//! the whole topic or none of it; the CRC catches corruption at rest.

use crate::log::StorageError;
use bytes::BytesMut;
use rill_protocol::{TopicConfig, TopicName, codec};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE_NAME: &str = "topic.meta";
const MAGIC: &[u8; 8] = b"RILLTOPC";
const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 4 + 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: TopicName,
    pub partitions: u32,
    pub config: TopicConfig,
}

pub fn encode(meta: &TopicMeta) -> Vec<u8> {
    let mut payload = BytesMut::new();
    codec::encode(meta, &mut payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8], path: &Path) -> Result<TopicMeta, StorageError> {
    let corrupt = |position: u64, reason: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt(0, "not a topic metadata file"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(corrupt(
            8,
            &format!("unsupported metadata version {version}"),
        ));
    }
    let len = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    let crc = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(corrupt(
            HEADER as u64,
            "payload length does not match the header",
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt(HEADER as u64, "CRC mismatch"));
    }
    codec::decode(payload, "topic metadata").map_err(|e| corrupt(HEADER as u64, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let meta = TopicMeta {
            name: TopicName::new("orders").unwrap(),
            partitions: 4,
            config: TopicConfig {
                fsync: Some(rill_protocol::FsyncPolicy::Interval { ms: 100 }),
                segment_bytes: None,
                retention_ms: Some(3_600_000),
                retention_bytes: None,
            },
        };
        let bytes = encode(&meta);
        let path = Path::new("topic.meta");
        assert_eq!(decode(&bytes, path).unwrap(), meta);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                decode(&bad, path).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(decode(&bytes[..bytes.len() - 1], path).is_err());
    }
}
