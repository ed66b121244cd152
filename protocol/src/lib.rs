//! Rill's wire format, shared by the broker and the client.
//!
//! This crate owns every byte layout that crosses a socket or rests in a segment file's record
//! area: the request/response [`frame`]s, the typed [`messages`], the Kafka-v2-compatible
//! [`batch`] layout, and the wire [`ErrorCode`]s. It performs no I/O: decoders take byte buffers
//! and report "incomplete" as `Ok(None)`, never by blocking. Every decoder reads through the
//! bounds-checked [`cursor::Cursor`], so no input, however hostile, can make it panic; the crate
//! denies indexing, `unwrap` and unchecked arithmetic to keep it that way.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::arithmetic_side_effects
    )
)]

pub mod acl;
pub mod api;
pub mod batch;
pub mod codec;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod messages;
pub mod request;
pub mod scram;
pub mod topic;

pub use api::{ApiKey, Message, OFFSETS_TOPIC};
pub use error::{DecodeError, ErrorCode};
pub use topic::{FsyncPolicy, TopicConfig, TopicName};
