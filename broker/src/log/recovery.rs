//! Opening a partition directory: find its segments, trust or rebuild their indexes, and cut
//! a torn or corrupt tail.
//!
//! After a clean shutdown every segment's index files were written, so opening checks them and
//! validates only the batches after each segment's last index entry. After an unclean stop the
//! tail segment's index is stale or missing, so the whole tail segment is scanned, every batch's
//! length, CRC and layout checked, and the file truncated at the first bad batch.
//!
//! Only the active (tail) segment is ever truncated. A bad batch in a sealed segment cannot be a
//! torn write: everything in it was fsynced and acknowledged, so the scan steps over the damage
//! to the next intact batch and records the stretch as a hole (logged at error level, counted,
//! reported by `rilld --check`); reads inside it get `RecordsLost`, reads after it work. A
//! damaged sealed segment's index files are removed, so every start scans it again and finds
//! the hole again rather than trusting an index that does not know about it.

use super::error::StorageError;
use super::index::{self, Extent, Indexer, SegmentIndex};
use super::segment::{self, Segment};
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// What recovery did to one partition.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segments whose index was rebuilt by scanning.
    pub rebuilt_indexes: usize,
    /// `(file, position, bytes removed, reason)` for every truncation.
    pub truncated: Vec<(PathBuf, u64, u64, String)>,
    /// Damaged stretches of sealed segments, kept and stepped over: `(file, hole, reason)`.
    pub holes: Vec<(PathBuf, segment::Hole, String)>,
}

pub(super) struct Recovered {
    pub segments: Vec<Segment>,
    /// Indexing state of the tail segment, so the writer continues where the scan stopped.
    pub tail_indexer: Indexer,
    pub report: RecoveryReport,
}

pub(super) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), StorageError> {
    storage
        .sync_dir(dir)
        .map_err(StorageError::io("fsync directory", dir))
}

/// Creates the segment file starting at `base` and makes its directory entry durable. If the
/// directory fsync fails the new file is removed again, so a retry is not blocked by it.
pub(super) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
) -> Result<Segment, StorageError> {
    let path = dir.join(segment::file_name(base));
    let file = storage
        .create_new(&path)
        .map_err(StorageError::io("create segment", &path))?;
    if let Err(e) = sync_dir(storage, dir) {
        let _ = storage.remove_file(&path);
        return Err(e);
    }
    Ok(Segment {
        base,
        path,
        file,
        size: 0,
        next_offset: base,
        max_timestamp: i64::MIN,
        index: SegmentIndex::default(),
        holes: Vec::new(),
    })
}

pub(super) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    label: &str,
    interval: u64,
    clean: bool,
) -> Result<Recovered, StorageError> {
    storage
        .create_dir_all(dir)
        .map_err(StorageError::io("create directory", dir))?;
    let mut bases = Vec::new();
    for entry in storage.list(dir).map_err(StorageError::io("list", dir))? {
        if let Some(base) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(segment::parse_file_name)
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let mut report = RecoveryReport::default();
    if bases.is_empty() {
        let seg = create_segment(storage, dir, 0)?;
        report.segments = 1;
        return Ok(Recovered {
            segments: vec![seg],
            tail_indexer: Indexer::new(interval),
            report,
        });
    }
    let mut segments = Vec::with_capacity(bases.len());
    let mut tail_indexer = Indexer::new(interval);
    let last = bases.len() - 1;
    for (i, base) in bases.into_iter().enumerate() {
        let is_tail = i == last;
        let path = dir.join(segment::file_name(base));
        let file = storage
            .open(&path)
            .map_err(StorageError::io("open segment", &path))?;
        let len = file.len().map_err(StorageError::io("stat", &path))?;
        let loaded = index::load(storage, &path);
        // Bytes the segment held whole when its index was written (after an fsync) and no
        // longer has: lost while the broker was stopped. A cut at a batch boundary leaves no
        // torn batch to find, so the recorded extent is what tells.
        let missing = loaded
            .as_ref()
            .map(|(_, extent)| *extent)
            .filter(|extent| extent.len > len);
        let trusted = loaded
            .filter(|(_, extent)| (clean || !is_tail) && extent.len == len)
            .map(|(idx, _)| idx);
        let rebuilt = trusted.is_none();
        let (mut idx, mut indexer, start_pos, start_offset) = match trusted {
            Some(idx) => {
                let last_entry = idx.offsets.last().copied();
                let max_ts = idx.times.last().map_or(i64::MIN, |t| t.timestamp);
                let indexer =
                    Indexer::resume(interval, last_entry.map(|e| u64::from(e.position)), max_ts);
                let (pos, off) = last_entry.map_or((0, base), |e| {
                    (u64::from(e.position), base + u64::from(e.rel_offset))
                });
                (idx, indexer, pos, off)
            }
            None => {
                report.rebuilt_indexes += 1;
                (SegmentIndex::default(), Indexer::new(interval), 0, base)
            }
        };
        let mut found = SegmentIndex::default();
        let outcome = segment::scan(
            &*file,
            &path,
            base,
            segment::Span {
                start: start_pos,
                expected: start_offset,
                file_len: len,
            },
            &mut indexer,
            &mut found,
            !is_tail,
        )?;
        idx.append(&mut found);
        let holes: Vec<segment::Hole> = outcome.holes.iter().map(|(h, _)| *h).collect();
        for (hole, reason) in &outcome.holes {
            let lost = match hole.next_offset {
                u64::MAX => format!("offsets from {} to the next segment", hole.first_offset),
                next => format!("offsets {}..{next}", hole.first_offset),
            };
            tracing::error!(partition = label, file = %path.display(), position = hole.position, bytes = hole.len, %reason, "corruption in a sealed segment: {lost} are unreadable; the intact batches after them are kept");
            report.holes.push((path.clone(), *hole, reason.clone()));
        }
        if !holes.is_empty() {
            // Not trusted next time: a later start must scan this segment and find the hole.
            for ext in ["index", "timeindex"] {
                let _ = storage.remove_file(&path.with_extension(ext));
            }
        }
        if let Some(extent) = missing {
            let reason = format!(
                "the segment is {} bytes shorter than when it was last indexed: offsets {}..{} are gone",
                extent.len - len,
                outcome.next_offset,
                extent.end_offset
            );
            tracing::error!(partition = label, file = %path.display(), %reason, "segment lost data while the broker was stopped");
            report
                .truncated
                .push((path.clone(), len, extent.len - len, reason));
        }
        let truncated = is_tail && outcome.invalid.is_some();
        if let Some((position, reason)) = outcome.invalid.filter(|_| is_tail) {
            let cut = len - outcome.valid_len;
            tracing::warn!(partition = label, file = %path.display(), position, bytes = cut, %reason, "truncating torn or corrupt tail of the log");
            file.set_len(outcome.valid_len)
                .map_err(StorageError::io("truncate", &path))?;
            file.sync_data().map_err(StorageError::io("fsync", &path))?;
            report.truncated.push((path.clone(), position, cut, reason));
        }
        if holes.is_empty()
            && ((!is_tail && (rebuilt || !report.truncated.is_empty())) || missing.is_some())
        {
            // Save the rebuilt index so the next start does not scan this sealed segment again,
            // and replace an extent that reported lost bytes so they are reported only once.
            let extent = Extent {
                len: outcome.valid_len,
                end_offset: outcome.next_offset,
            };
            if let Err(e) = idx.write(storage, &path, extent) {
                tracing::warn!(file = %path.display(), error = %e, "could not write rebuilt index");
            }
        }
        if let Some(prev) = segments.last_mut() {
            let prev: &mut Segment = prev;
            if let Some(hole) = prev.holes.last_mut().filter(|h| h.next_offset == u64::MAX) {
                // Damage ran to the end of the previous segment: its lost offsets end here.
                hole.next_offset = base;
            } else if prev.next_offset != base {
                tracing::error!(partition = label, file = %path.display(), expected = prev.next_offset, base, "segments do not follow each other; offsets in between are lost");
            }
        }
        if is_tail {
            tail_indexer = indexer;
            if !clean && !truncated {
                // After a crash the tail may hold writes the page cache never flushed; sync
                // them before they are served, so nothing read after a restart can vanish.
                file.sync_data().map_err(StorageError::io("fsync", &path))?;
            }
        }
        segments.push(Segment {
            base,
            path,
            file,
            size: outcome.valid_len,
            next_offset: outcome.next_offset,
            max_timestamp: outcome.max_timestamp,
            index: idx,
            holes,
        });
    }
    report.segments = segments.len();
    Ok(Recovered {
        segments,
        tail_indexer,
        report,
    })
}
