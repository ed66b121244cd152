//! Wire error codes and decode errors.
//!
//! [`ErrorCode`] is the small, stable, `Copy` vocabulary the broker uses to tell a client what
//! went wrong; every error response carries one plus a human-readable message. Codes are never
//! renumbered: a new failure gets a new number. [`DecodeError`] is what any decoder in this crate
//! returns; it names the field it was reading.

use thiserror::Error;

/// A typed error on the wire. `None` (0) means success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    None = 0,
    /// The broker hit an error it has no better code for; the message says more.
    Unknown = 1,
    /// The frame could not be parsed; the connection is closed after this response.
    MalformedFrame = 2,
    /// The frame is larger than the broker's `max_frame_bytes`; the connection is closed.
    FrameTooLarge = 3,
    UnsupportedApiKey = 4,
    UnsupportedVersion = 5,
    /// The frame was whole but its body did not decode as the named request.
    MalformedRequest = 6,
    UnknownTopic = 7,
    UnknownPartition = 8,
    TopicAlreadyExists = 9,
    InvalidTopicName = 10,
    InvalidConfig = 11,
    /// A produced record batch failed validation (bounds, CRC, record count, layout).
    CorruptBatch = 12,
    UnsupportedCompression = 13,
    /// The requested offset is before the log start or after the log end.
    OffsetOutOfRange = 14,
    /// The broker could not write or read its storage; the message says why.
    StorageError = 15,
    /// The disk is full; the write was not applied and can be retried once space is freed.
    DiskFull = 16,
    /// The partition stopped accepting writes after a failed fsync (fail-stop).
    PartitionFailed = 17,
    /// The broker is shutting down; retry against it once it is back.
    ShuttingDown = 18,
    /// The partition is being created or deleted; retry shortly.
    TopicBusy = 19,
    /// The group does not know this member (it left, timed out, or the broker restarted): rejoin.
    UnknownMember = 20,
    /// The request carries an old generation: the group rebalanced since. Nothing was changed.
    StaleGeneration = 21,
    /// The group is rebalancing: commit what was processed and rejoin.
    RebalanceInProgress = 22,
    /// The member does not own the partition it tried to commit for.
    NotAssigned = 23,
    /// The member asked for a different assignment strategy than the group uses.
    InconsistentStrategy = 24,
    /// The operation needs a group without members.
    GroupNotEmpty = 25,
    UnknownGroup = 26,
    InvalidGroupName = 27,
    /// The requested records were lost to damage on the broker's disk; the message names the
    /// lost range. Records after it are still readable.
    RecordsLost = 28,
    /// The group has its maximum number of members (`[groups] max_members`).
    GroupFull = 29,
    /// The broker has its maximum number of groups (`[groups] max_groups`).
    TooManyGroups = 30,
    /// An idempotent producer's batch does not continue its sequence on this partition: a gap,
    /// or an overlap with batches already stored. The message names the sequence expected.
    OutOfOrderSequence = 31,
    /// A newer instance of this named producer took over (`InitProducer` bumped its epoch);
    /// this instance may write no more.
    ProducerFenced = 32,
    /// This node of a cluster does not lead the partition; the message names the leader's
    /// node id and client address. Refresh metadata and retry there.
    NotLeader = 33,
    /// The partition (or the cluster's metadata) has no leader at the moment: an election is
    /// under way, or too few replicas are reachable. Retry shortly.
    LeaderNotAvailable = 34,
    /// Authentication is required on this listener and the connection has not authenticated:
    /// only ApiVersions, SaslHandshake and SaslAuthenticate are served. The connection closes.
    AuthenticationRequired = 35,
    /// Authentication failed: unknown user, wrong password, or a broken exchange. Not told
    /// apart, on purpose. The connection closes.
    AuthenticationFailed = 36,
    /// The SASL mechanism asked for is not offered (the response lists those that are).
    UnsupportedSaslMechanism = 37,
    /// A SASL request out of turn (authenticate before handshake, a second handshake).
    IllegalSaslState = 38,
    /// The principal may not do this: no ACL allows it, one denies it, or it is for superusers
    /// (user management). The message names the operation and resource.
    NotAuthorized = 39,
    /// The client's address, or its principal, has as many connections open as the broker
    /// allows (`[quotas] max_connections_per_ip`, `max_connections_per_principal`). The
    /// connection closes.
    TooManyConnections = 40,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            0 => None,
            1 => Unknown,
            2 => MalformedFrame,
            3 => FrameTooLarge,
            4 => UnsupportedApiKey,
            5 => UnsupportedVersion,
            6 => MalformedRequest,
            7 => UnknownTopic,
            8 => UnknownPartition,
            9 => TopicAlreadyExists,
            10 => InvalidTopicName,
            11 => InvalidConfig,
            12 => CorruptBatch,
            13 => UnsupportedCompression,
            14 => OffsetOutOfRange,
            15 => StorageError,
            16 => DiskFull,
            17 => PartitionFailed,
            18 => ShuttingDown,
            19 => TopicBusy,
            20 => UnknownMember,
            21 => StaleGeneration,
            22 => RebalanceInProgress,
            23 => NotAssigned,
            24 => InconsistentStrategy,
            25 => GroupNotEmpty,
            26 => UnknownGroup,
            27 => InvalidGroupName,
            28 => RecordsLost,
            29 => GroupFull,
            30 => TooManyGroups,
            31 => OutOfOrderSequence,
            32 => ProducerFenced,
            33 => NotLeader,
            34 => LeaderNotAvailable,
            35 => AuthenticationRequired,
            36 => AuthenticationFailed,
            37 => UnsupportedSaslMechanism,
            38 => IllegalSaslState,
            39 => NotAuthorized,
            40 => TooManyConnections,
            _ => return Option::None,
        })
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether sending the same request again, later, may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::DiskFull
                | ErrorCode::ShuttingDown
                | ErrorCode::TopicBusy
                | ErrorCode::NotLeader
                | ErrorCode::LeaderNotAvailable
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a byte sequence could not be decoded. Never caused by a bug in the decoder: a decoder
/// that meets bytes it cannot understand returns one of these instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated {what}: needed {needed} bytes, {remaining} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    #[error("invalid {what}: {detail}")]
    InvalidDetail { what: &'static str, detail: String },
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("unsupported compression codec {0}")]
    Compression(u8),
}
