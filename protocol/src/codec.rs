//! The one place control bodies are encoded and decoded.
//!
//! Control bodies (everything except record-batch payloads) are serde types encoded with
//! bincode 2's standard configuration. bincode is unmaintained upstream and pinned at 2.0.1;
//! keeping every call to it here means swapping it is a one-file change. Decoding is bounded by
//! [`MAX_CONTROL_BYTES`] so a hostile length prefix cannot make the decoder allocate without limit.

use crate::error::DecodeError;
use bytes::{BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

/// Upper bound on the memory one decoded control body may claim.
pub const MAX_CONTROL_BYTES: usize = 4 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_BYTES>()
}

/// Appends the encoding of `value` to `out`.
pub fn encode<T: Serialize>(value: &T, out: &mut BytesMut) {
    // Writing into memory cannot fail for the plain data types this crate defines; a failure
    // would mean a type that serde cannot represent, which the round-trip tests would catch.
    let mut writer = out.writer();
    if let Err(e) = bincode::serde::encode_into_std_write(value, &mut writer, config()) {
        debug_assert!(false, "encoding a control body failed: {e}");
    }
}

/// Upper bound on one decoded node-to-node replication message (Raft entries carry batches).
pub const MAX_REPLICATION_BYTES: usize = 64 << 20;

/// [`decode`] for node-to-node replication messages, bounded by [`MAX_REPLICATION_BYTES`].
pub fn decode_replication<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    decode_whole(
        bytes,
        what,
        bincode::config::standard().with_limit::<MAX_REPLICATION_BYTES>(),
    )
}

/// Decodes exactly one value that fills all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    decode_whole(bytes, what, config())
}

fn decode_whole<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    config: impl bincode::config::Config,
) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| {
        DecodeError::InvalidDetail {
            what,
            detail: e.to_string(),
        }
    })?;
    if used != bytes.len() {
        return Err(DecodeError::Invalid {
            what,
            reason: "trailing bytes after the encoded value",
        });
    }
    Ok(value)
}
