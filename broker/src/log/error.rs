//! Errors of the storage layer.

use rill_protocol::DecodeError;
use std::io;
use std::path::PathBuf;

/// A failure to read or write the partition's files.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }

    /// Whether the failure was the disk (or a quota) running out of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) || source.raw_os_error() == Some(27) // EFBIG: file size limit (RLIMIT_FSIZE)
            }
            StorageError::Corrupt { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[source] DecodeError),
    #[error("disk full, batch not written: {0}")]
    DiskFull(#[source] StorageError),
    #[error("write failed, batch not written: {0}")]
    Storage(#[source] StorageError),
    #[error("partition accepts no writes after a failed fsync: {0}")]
    Failed(String),
    #[error("partition is shutting down")]
    ShuttingDown,
    /// An idempotent producer's batch out of sequence, or from a fenced epoch.
    #[error(transparent)]
    Sequence(super::producers::SequenceError),
}

impl From<StorageError> for AppendError {
    fn from(e: StorageError) -> Self {
        if e.is_disk_full() {
            AppendError::DiskFull(e)
        } else {
            AppendError::Storage(e)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The offset falls in a stretch of a sealed segment that damage made unreadable.
    #[error("offsets {from}..{to} were lost to damage in {}; later records are readable from offset {to}", path.display())]
    RecordsLost {
        from: u64,
        to: u64,
        path: std::path::PathBuf,
    },
}

/// Why the log could not be cut back (see `PartitionLog::truncate_from`).
#[derive(Debug, thiserror::Error)]
pub enum TruncateError {
    #[error("cannot truncate at offset {offset}: the log holds [{start}, {end})")]
    OutOfRange { offset: u64, start: u64, end: u64 },
    #[error("offset {0} is not the first offset of a batch")]
    NotABatchBoundary(u64),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("partition is shutting down")]
    ShuttingDown,
}
