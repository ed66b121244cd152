//! The partition log: an append-only sequence of record batches split into segment files.
//!
//! ```text
//! <partition dir>/00000000000000000000.log        record batches, back to back, as produced
//!                 00000000000000000000.index      sparse: relative offset -> byte position
//!                 00000000000000000000.timeindex  sparse: max timestamp so far -> relative offset
//!                 00000000000000004096.producers  idempotent producers' state below that offset
//! ```
//!
//! Ownership: one writer thread per partition (`writer.rs`) owns the active segment: only it
//! appends, rolls, fsyncs or truncates. Readers go through [`PartitionLog::read`], which takes a
//! short read lock on the segment list to find a file and a byte range, then reads with
//! positioned reads outside the lock. The shared view only ever advances to data the fsync
//! policy counts as committed, so readers never see a half-written or (under `fsync=always`)
//! an unsynced batch. Index files are written when a segment is sealed and at clean shutdown;
//! after a crash the tail segment's index is rebuilt by `recovery.rs`.
//!
//! Every file operation goes through `crate::storage`, so `fault_tests.rs` runs the same code
//! on a simulated disk that fails calls and loses unsynced writes.

mod check;
mod error;
mod index;
mod partition;
mod producer_state;
pub mod producers;
pub(crate) mod recovery;
mod segment;
mod writer;

pub use check::{PartitionCheck, check_partition};
pub use error::{AppendError, ReadError, StorageError, TruncateError};
pub use partition::{
    AppendAck, LogConfig, PartitionLog, PartitionStats, PendingAppend, ReadResult,
};
pub use producer_state::ProducerRecovery;
pub use recovery::RecoveryReport;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fault_tests;
