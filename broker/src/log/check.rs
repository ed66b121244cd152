//! An offline scrub of one partition directory: every batch of every segment validated in full
//! (the scan recovery uses, from byte 0), offsets continuous across segments, and each index
//! checked against the batches it points at. Read-only; `rilld --check` runs it on a stopped
//! broker's data directory.
//!
//! Start-up trusts a sealed segment's index and checks only its last batches, and reads check
//! what they serve; a scrub finds damage in data nobody has read yet.

use super::error::StorageError;
use super::index::{self, Indexer, SegmentIndex};
use super::segment::{self, Span};
use crate::storage::Disk;
use std::path::{Path, PathBuf};

/// What a scrub of one partition found.
#[derive(Debug, Default)]
pub struct PartitionCheck {
    pub segments: usize,
    /// First offset held and the offset after the last one.
    pub start_offset: u64,
    pub end_offset: u64,
    /// Log index after the last batch (batches counted from the oldest segment's first index).
    pub end_index: u64,
    pub bytes: u64,
    /// Records that are unreadable or missing: invalid batches, gaps, bytes lost while stopped.
    pub damage: Vec<String>,
    /// Index files that start-up would ignore and rebuild by scanning (no data is affected).
    pub rebuilds: Vec<String>,
}

/// Scrubs the partition in `dir`. Errors only when a file cannot be listed, opened or read.
pub fn check_partition(dir: &Path) -> Result<PartitionCheck, StorageError> {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(StorageError::io("list", dir))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let base = segment::parse_file_name(e.file_name().to_str()?)?;
            Some((base, e.path()))
        })
        .collect();
    logs.sort_unstable();
    let mut out = PartitionCheck {
        segments: logs.len(),
        ..PartitionCheck::default()
    };
    let last = logs.len().saturating_sub(1);
    for (i, (base, path)) in logs.into_iter().enumerate() {
        let file = Disk
            .open_read_only(&path)
            .map_err(StorageError::io("open segment", &path))?;
        let len = file.len().map_err(StorageError::io("stat", &path))?;
        if i == 0 {
            out.start_offset = base;
        } else if out.end_offset != base {
            out.damage.push(format!(
                "{}: starts at offset {base}, the segment before ends at {}: offsets in between are missing",
                path.display(),
                out.end_offset
            ));
        }
        // Log indexes continue from the segment before; the oldest segment's first one is
        // only recorded in its own index file.
        let first_index = if i == 0 {
            index::load(&Disk, &path)
                .and_then(|(idx, _)| idx.offsets.first().map(|e| e.log_index))
                .unwrap_or(0)
        } else {
            out.end_index
        };
        // Every batch, indexed at every position, so any index entry can be checked against it.
        let mut all = SegmentIndex::default();
        let span = Span {
            start: 0,
            expected: base,
            index: first_index,
            file_len: len,
        };
        // The same scan recovery uses: a sealed segment's damage is stepped over, so what
        // is reported is exactly what is lost; the active segment's is where it would be cut.
        let sealed = i != last;
        let scanned = segment::scan(
            &*file,
            &path,
            base,
            span,
            &mut Indexer::new(1),
            &mut all,
            sealed,
        )?;
        for (hole, reason) in &scanned.holes {
            let lost = match hole.next_offset {
                u64::MAX => format!("offsets from {} to the next segment", hole.first_offset),
                next => format!("offsets {}..{next}", hole.first_offset),
            };
            out.damage.push(format!(
                "{}: bytes {}..{}: {reason}; {lost} are unreadable, the batches after them are intact",
                path.display(),
                hole.position,
                hole.position + hole.len
            ));
        }
        if let Some((position, reason)) = scanned.invalid.as_ref().filter(|_| !sealed) {
            out.damage.push(format!(
                "{}: byte {position}: {reason}; the {} bytes from there on are unreadable",
                path.display(),
                len - position
            ));
        }
        out.end_offset = scanned.next_offset;
        out.end_index = scanned.next_index;
        out.bytes += len;
        check_index(&path, len, i == last, &all, &mut out);
    }
    for (_, path) in super::producer_state::snapshots(&Disk, dir)? {
        let why = match std::fs::read(&path) {
            Ok(bytes) => super::producer_state::decode(&bytes).err(),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            out.rebuilds.push(format!(
                "{}: producer snapshot unusable ({why}); start-up rebuilds the idempotent-producer state from the log",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// Checks the segment's index files against `all`, an entry for every batch.
fn check_index(path: &Path, len: u64, is_tail: bool, all: &SegmentIndex, out: &mut PartitionCheck) {
    let exists = path.with_extension("index").exists() || path.with_extension("timeindex").exists();
    let Some((idx, extent)) = index::load(&Disk, path) else {
        // The active segment's index is written only at a clean stop.
        if exists || !is_tail {
            out.rebuilds
                .push(format!("{}: index missing or unreadable", path.display()));
        }
        return;
    };
    if extent.len > len {
        out.damage.push(format!(
            "{}: {} bytes shorter than when it was last indexed (offsets up to {} were there)",
            path.display(),
            extent.len - len,
            extent.end_offset
        ));
        return;
    }
    if extent.len < len {
        out.rebuilds.push(format!(
            "{}: index covers {} of {len} bytes",
            path.display(),
            extent.len
        ));
        return;
    }
    let stray = idx
        .offsets
        .iter()
        .find(|e| all.offsets.binary_search(e).is_err());
    if let Some(e) = stray {
        out.rebuilds.push(format!(
            "{}: index entry (offset +{}, byte {}) is not the start of a batch",
            path.display(),
            e.rel_offset,
            e.position
        ));
        return;
    }
    // A time entry holds the largest timestamp of the batches up to its offset.
    let wrong = idx.times.iter().find(|t| {
        let i = all.times.partition_point(|a| a.rel_offset <= t.rel_offset);
        i.checked_sub(1)
            .and_then(|i| all.times.get(i))
            .map(|a| a.timestamp)
            != Some(t.timestamp)
    });
    if let Some(t) = wrong {
        out.rebuilds.push(format!(
            "{}: time index entry (offset +{}, timestamp {}) does not match the batches",
            path.display(),
            t.rel_offset,
            t.timestamp
        ));
    }
}
