//! The client's error type.

use rill_protocol::{ApiKey, ErrorCode};
use std::time::Duration;

/// Everything a client call can fail with. `Clone`, so one failure can be handed to every
/// record of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker answered with an error.
    #[error("{api:?}: {code}: {message}")]
    Broker {
        api: ApiKey,
        code: ErrorCode,
        message: String,
    },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The connection broke while the request was outstanding; it may or may not have been applied.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The broker sent bytes this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No response to a request within the client's request timeout; its connection was closed.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The producer gave up on a record: not acknowledged within `delivery_timeout`, retries
    /// included. It may or may not have been stored.
    #[error("not acknowledged within the delivery timeout; last error: {last}")]
    DeliveryTimeout { last: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the producer or client was closed")]
    Closed,
}

impl Error {
    /// The node answered that another node leads the partition (a cluster).
    pub fn is_not_leader(&self) -> bool {
        matches!(
            self,
            Error::Broker {
                code: rill_protocol::ErrorCode::NotLeader,
                ..
            }
        )
    }

    /// Whether the failure may mean the partition's leader died or moved: the node said so,
    /// or it could not be reached. In a cluster, the request goes to the leader found anew.
    pub fn may_mean_new_leader(&self) -> bool {
        match self {
            Error::Broker { code, .. } => {
                matches!(code, ErrorCode::NotLeader | ErrorCode::LeaderNotAvailable)
            }
            Error::Connect { .. } | Error::Disconnected(_) | Error::Timeout(_) => true,
            _ => false,
        }
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { code, .. } => code.is_retriable(),
            Error::Connect { .. }
            | Error::Disconnected(_)
            | Error::Timeout(_)
            | Error::DeliveryTimeout { .. } => true,
            Error::Protocol(_) | Error::InvalidArgument(_) | Error::Closed => false,
        }
    }

    /// The broker's error code, when the broker answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}
