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
    /// How the idempotent producers' state was restored.
    pub producers: super::producer_state::ProducerRecovery,
}

pub(super) struct Recovered {
    pub segments: Vec<Segment>,
    /// Indexing state of the tail segment, so the writer continues where the scan stopped.
    pub tail_indexer: Indexer,
    pub report: RecoveryReport,
}

/// Written when the partition goes fail-stop: the offset below which every record was covered
/// by a completed fsync (u64 LE, then CRC-32C of it, LE). Its presence at start-up means
/// records from that offset on were written but never durably, so they are cut.
const FAIL_MARK: &str = "durable-at-fail-stop";

pub(super) fn write_fail_mark(
    storage: &dyn Storage,
    dir: &Path,
    durable: u64,
) -> Result<(), StorageError> {
    write_numbers(storage, dir, FAIL_MARK, &[durable])
}

fn read_fail_mark(storage: &dyn Storage, dir: &Path) -> Option<u64> {
    read_numbers(storage, &dir.join(FAIL_MARK), 1)?
        .first()
        .copied()
}

/// Where the log starts when that cannot be read from its segments: the base offset and log
/// index of its first segment (two u64 LE, then CRC-32C of them, LE). Written (tmp + rename,
/// synced) when a replicated partition's log is started afresh at a snapshot, and when
/// retention deletes its oldest segments; read by recovery for an empty log and for an oldest
/// segment whose index is gone (without it, log indexes would count from 0 again).
const LOG_START: &str = "log-start";

pub(super) fn write_log_start(
    storage: &dyn Storage,
    dir: &Path,
    offset: u64,
    index: u64,
) -> Result<(), StorageError> {
    write_numbers(storage, dir, LOG_START, &[offset, index])
}

/// `(offset, index)` from [`write_log_start`]'s file, if present and intact.
fn read_log_start(storage: &dyn Storage, dir: &Path) -> Option<(u64, u64)> {
    match read_numbers(storage, &dir.join(LOG_START), 2)?.as_slice() {
        [offset, index] => Some((*offset, *index)),
        _ => None,
    }
}

/// Writes `dir/name` as `values` (u64 LE each), then CRC-32C of them (LE), through a temporary
/// file, synced and renamed into place: a small record that is either whole or absent.
pub(crate) fn write_numbers(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    values: &[u64],
) -> Result<(), StorageError> {
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    storage
        .write_synced(&tmp, &bytes)
        .map_err(StorageError::io("write", &tmp))?;
    storage
        .rename(&tmp, &path)
        .map_err(StorageError::io("rename", &path))?;
    sync_dir(storage, dir)
}

/// The `count` numbers [`write_numbers`] wrote to `path`, if present and intact.
pub(crate) fn read_numbers(storage: &dyn Storage, path: &Path, count: usize) -> Option<Vec<u64>> {
    let bytes = storage.read(path).ok()?;
    let (value, crc) = (
        bytes.get(..8 * count)?,
        bytes.get(8 * count..8 * count + 4)?,
    );
    if crc32c::crc32c(value).to_le_bytes() != crc {
        return None;
    }
    value
        .chunks_exact(8)
        .map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect()
}

/// Cuts the tail segment back to `durable` (a batch boundary) after a fail-stop: what lies
/// beyond was written but its fsync failed.
fn cut_to_durable(
    label: &str,
    tail: &mut Segment,
    durable: u64,
    report: &mut RecoveryReport,
) -> Result<(), StorageError> {
    if durable >= tail.next_offset {
        return Ok(());
    }
    if durable < tail.base {
        tracing::error!(
            partition = label,
            durable,
            base = tail.base,
            "the durable offset recorded at fail-stop is before the active segment; keeping the log as it is"
        );
        return Ok(());
    }
    let rel = u32::try_from(durable - tail.base).unwrap_or(u32::MAX);
    let entry = tail.index.entry_for(rel);
    let (mut pos, mut next, mut next_index) = (
        u64::from(entry.position),
        tail.base + u64::from(entry.rel_offset),
        // An index's first entry (position 0) is the segment's first batch.
        if entry.position == 0 {
            tail.first_index
        } else {
            entry.log_index
        },
    );
    while next < durable {
        let h = segment::read_header(&*tail.file, &tail.path, pos, tail.size)?;
        pos += h.total_len() as u64;
        next = h.last_offset() + 1;
        next_index += 1;
    }
    let cut = tail.size - pos;
    let reason = format!(
        "offsets {durable}..{} were written after the fsync that failed before the last stop; never durable, not served",
        tail.next_offset
    );
    tracing::warn!(partition = label, file = %tail.path.display(), position = pos, bytes = cut, %reason, "truncating what a failed fsync left unsynced");
    tail.file
        .set_len(pos)
        .map_err(StorageError::io("truncate", &tail.path))?;
    tail.file
        .sync_data()
        .map_err(StorageError::io("fsync", &tail.path))?;
    report.truncated.push((tail.path.clone(), pos, cut, reason));
    tail.size = pos;
    tail.next_offset = next;
    tail.next_index = next_index;
    tail.index.offsets.retain(|e| e.rel_offset < rel);
    tail.index.times.retain(|e| e.rel_offset < rel);
    Ok(())
}

pub(super) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), StorageError> {
    storage
        .sync_dir(dir)
        .map_err(StorageError::io("fsync directory", dir))
}

/// Deletes a segment's files, its indexes first (a crash part-way leaves a segment whose
/// index is rebuilt, never an index without its segment); files already gone are fine.
pub(super) fn remove_segment_files(storage: &dyn Storage, path: &Path) -> Result<(), StorageError> {
    for file in [
        path.with_extension("index"),
        path.with_extension("timeindex"),
        path.to_path_buf(),
    ] {
        match storage.remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete segment", &file)(e)),
        }
    }
    Ok(())
}

/// Creates the segment file starting at `base` and makes its directory entry durable. If the
/// directory fsync fails the new file is removed again, so a retry is not blocked by it.
pub(super) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    first_index: u64,
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
        first_index,
        next_index: first_index,
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
    let start = read_log_start(storage, dir);
    if bases.is_empty() {
        let (offset, index) = start.unwrap_or((0, 0));
        let seg = create_segment(storage, dir, offset, index)?;
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
        // Log indexes continue from the segment before. The oldest segment's first one is
        // in `log-start` (a replicated log) or else in its own index (retention deleted what
        // came before it); if neither is readable, counting starts again from 0, which
        // matters only to a replicated partition (whose replica then has to be refilled from
        // its leader).
        let start_index = match segments.last() {
            Some(prev) => {
                let prev: &Segment = prev;
                prev.next_index
            }
            None => match start {
                Some((offset, index)) if offset == base => index,
                _ => loaded
                    .as_ref()
                    .and_then(|(idx, _)| idx.offsets.first().map(|e| e.log_index))
                    .unwrap_or(0),
            },
        };
        let trusted = loaded
            .filter(|(idx, extent)| {
                (clean || !is_tail)
                    && extent.len == len
                    && idx
                        .offsets
                        .first()
                        .is_none_or(|e| e.log_index == start_index)
            })
            .map(|(idx, _)| idx);
        let rebuilt = trusted.is_none();
        let (mut idx, mut indexer, start_pos, start_offset, scan_index) = match trusted {
            Some(idx) => {
                let last_entry = idx.offsets.last().copied();
                let max_ts = idx.times.last().map_or(i64::MIN, |t| t.timestamp);
                let indexer =
                    Indexer::resume(interval, last_entry.map(|e| u64::from(e.position)), max_ts);
                let (pos, off, at) = last_entry.map_or((0, base, start_index), |e| {
                    (
                        u64::from(e.position),
                        base + u64::from(e.rel_offset),
                        e.log_index,
                    )
                });
                (idx, indexer, pos, off, at)
            }
            None => {
                report.rebuilt_indexes += 1;
                (
                    SegmentIndex::default(),
                    Indexer::new(interval),
                    0,
                    base,
                    start_index,
                )
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
                index: scan_index,
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
                end_index: outcome.next_index,
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
            first_index: start_index,
            next_index: outcome.next_index,
            max_timestamp: outcome.max_timestamp,
            index: idx,
            holes,
        });
    }
    if let Some(durable) = read_fail_mark(storage, dir) {
        if let Some(tail) = segments.last_mut() {
            cut_to_durable(label, tail, durable, &mut report)?;
            // The writer continues indexing from the last entry that survived the cut.
            tail_indexer = Indexer::resume(
                interval,
                tail.index.offsets.last().map(|e| u64::from(e.position)),
                tail.index.times.last().map_or(i64::MIN, |t| t.timestamp),
            );
        }
        let path = dir.join(FAIL_MARK);
        storage
            .remove_file(&path)
            .map_err(StorageError::io("remove", &path))?;
        sync_dir(storage, dir)?;
    }
    report.segments = segments.len();
    Ok(Recovered {
        segments,
        tail_indexer,
        report,
    })
}
