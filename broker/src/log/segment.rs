//! One segment file: naming, positioned reads of whole batches, and the validating scan that
//! recovery uses to find where the valid data ends.

use super::error::StorageError;
use super::index::{Indexer, SegmentIndex};
use crate::storage::StorageFile;
use bytes::Bytes;
use rill_protocol::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment as readers see it: only bytes and offsets below `size`/`next_offset` are committed.
#[derive(Debug)]
pub struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    pub size: u64,
    pub next_offset: u64,
    /// Log index of the segment's first batch (of the next batch while it is empty).
    pub first_index: u64,
    /// Log index after its last batch.
    pub next_index: u64,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
    /// Damaged stretches of a sealed segment, kept rather than cut: the intact batches after
    /// them stay readable, and a read inside one gets `ReadError::RecordsLost`.
    pub holes: Vec<Hole>,
}

/// A damaged stretch of a sealed segment: bytes `[position, position + len)` hold no readable
/// batch, and the records `[first_offset, next_offset)` are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub position: u64,
    pub len: u64,
    pub first_offset: u64,
    /// The base offset of the first intact batch after the damage (for damage running to the
    /// segment's end, the next segment's base, filled in by recovery).
    pub next_offset: u64,
}

impl Hole {
    pub fn contains(&self, offset: u64) -> bool {
        (self.first_offset..self.next_offset).contains(&offset)
    }
}

pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset of a segment file name, or `None` for other files.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

fn read_exact_at(
    file: &dyn StorageFile,
    path: &Path,
    buf: &mut [u8],
    pos: u64,
) -> Result<(), StorageError> {
    file.read_exact_at(buf, pos)
        .map_err(StorageError::io("read", path))
}

/// Damage found by a read: logged here, once for every kind, and refused with a typed error.
pub(super) fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> StorageError {
    let reason = reason.into();
    tracing::error!(file = %path.display(), position, %reason, "corrupt batch on disk; not served");
    StorageError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    }
}

/// Reads the header of the batch at `pos`.
pub fn read_header(
    file: &dyn StorageFile,
    path: &Path,
    pos: u64,
    end: u64,
) -> Result<BatchHeader, StorageError> {
    if end.saturating_sub(pos) < HEADER_LEN as u64 {
        return Err(corrupt(
            path,
            pos,
            "batch header runs past the committed end",
        ));
    }
    let mut hdr = [0u8; HEADER_LEN];
    read_exact_at(file, path, &mut hdr, pos)?;
    BatchHeader::parse(&hdr).map_err(|e| corrupt(path, pos, e.to_string()))
}

/// Whole batches starting with the one that holds `target`, scanning from `pos` (a position
/// from the sparse index at or before it, where the batch with base offset `expected` starts)
/// and stopping at `end`. Returns at most about `max_bytes`, but always the first batch whole.
/// Every batch returned is checked against its CRC and against offset continuity (the base
/// offset is outside the CRC), so damage at rest is reported, never served.
pub fn read_from(
    file: &dyn StorageFile,
    path: &Path,
    mut pos: u64,
    mut expected: u64,
    end: u64,
    target: u64,
    max_bytes: usize,
) -> Result<Bytes, StorageError> {
    let first = loop {
        if pos >= end {
            return Ok(Bytes::new());
        }
        let h = read_header(file, path, pos, end)?;
        if h.total_len() < HEADER_LEN {
            return Err(corrupt(path, pos, "batch length below the header size"));
        }
        if h.base_offset != expected {
            return Err(discontinuous(path, pos, h.base_offset, expected));
        }
        if h.last_offset() >= target {
            break h;
        }
        expected = h.last_offset() + 1;
        pos += h.total_len() as u64;
    };
    let avail = end - pos;
    let first_len = first.total_len() as u64;
    if first_len > avail {
        return Err(corrupt(path, pos, "batch runs past the committed end"));
    }
    let want = (max_bytes as u64).min(avail).max(first_len);
    let mut buf = file
        .read_vec_at(want as usize, pos)
        .map_err(StorageError::io("read", path))?;
    // Whole batches only, each checked against its CRC: corruption at rest is never served.
    let mut used = 0;
    while let Some((_, len)) = batch::peek(&buf[used..]) {
        if len < HEADER_LEN || used + len > buf.len() {
            break;
        }
        let checked = batch::check_stored(&buf[used..used + len]).and_then(|h| {
            if h.base_offset == expected {
                Ok(h)
            } else {
                Err("batch base offset out of sequence")
            }
        });
        let header = match checked {
            Ok(h) => h,
            Err(reason) if used == 0 => return Err(corrupt(path, pos, reason)),
            Err(_) => break, // serve the good batches before it; the next read reports it
        };
        expected = header.last_offset() + 1;
        used += len;
    }
    buf.truncate(used);
    Ok(Bytes::from(buf))
}

fn discontinuous(path: &Path, position: u64, found: u64, expected: u64) -> StorageError {
    corrupt(
        path,
        position,
        format!("batch base offset {found} out of sequence (expected {expected})"),
    )
}

/// Where a scan stopped and what it found.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Length of the valid prefix, in bytes.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Log index after the last valid batch.
    pub next_index: u64,
    pub max_timestamp: i64,
    /// The first invalid byte position and why, if the scan stopped before the file's end.
    pub invalid: Option<(u64, String)>,
    /// With `resync`: damaged stretches stepped over, and why each was unreadable. The scan
    /// then reaches the file's end unless damage runs to it (`invalid` says where it began).
    pub holes: Vec<(Hole, String)>,
}

/// The stretch of a segment file a scan covers.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Byte position of the first batch to check.
    pub start: u64,
    /// The base offset that batch must have.
    pub expected: u64,
    /// Its log index.
    pub index: u64,
    /// Length of the file.
    pub file_len: u64,
}

/// Validates batches from `span.start` to the end of the file, adding index entries for them.
/// Without `resync` it stops at the first torn or corrupt batch (a tail torn by a crash). With
/// `resync` (a sealed segment, where damage cannot be a torn write and later batches were
/// acknowledged) it looks for the next intact batch after the damage, records the stretch in
/// between as a hole and carries on, so one bad batch does not cost everything after it. How
/// many batches a hole held is unknown: log indexes continue counting after it as if it held
/// none (a replicated partition with a hole has to be refilled from its leader).
pub fn scan(
    file: &dyn StorageFile,
    path: &Path,
    seg_base: u64,
    mut span: Span,
    indexer: &mut Indexer,
    index: &mut SegmentIndex,
    resync: bool,
) -> Result<ScanOutcome, StorageError> {
    let mut holes = Vec::new();
    loop {
        let outcome = scan_run(file, path, seg_base, span, indexer, index)?;
        let Some((bad, reason)) = outcome.invalid.clone() else {
            return Ok(ScanOutcome { holes, ..outcome });
        };
        let next = if resync {
            find_batch_after(file, path, bad, span.file_len, outcome.next_offset)?
        } else {
            None
        };
        let Some((position, base)) = next else {
            if resync {
                // Damage to the end: the lost offsets run to the next segment's base.
                let hole = Hole {
                    position: bad,
                    len: span.file_len - bad,
                    first_offset: outcome.next_offset,
                    next_offset: u64::MAX,
                };
                holes.push((hole, reason));
            }
            return Ok(ScanOutcome { holes, ..outcome });
        };
        let hole = Hole {
            position: bad,
            len: position - bad,
            first_offset: outcome.next_offset,
            next_offset: base,
        };
        holes.push((hole, reason));
        indexer.restart_after_gap();
        span = Span {
            start: position,
            expected: base,
            index: outcome.next_index,
            file_len: span.file_len,
        };
    }
}

/// The first position after `from` where an intact batch (length, magic, CRC) with a base
/// offset of at least `min_base` starts, and that base. Reads the file in chunks; only
/// positions holding Kafka's v2 magic byte are checked in full.
fn find_batch_after(
    file: &dyn StorageFile,
    path: &Path,
    from: u64,
    file_len: u64,
    min_base: u64,
) -> Result<Option<(u64, u64)>, StorageError> {
    const CHUNK: u64 = 1 << 20;
    const MAGIC_AT: usize = 16;
    let mut chunk_start = from + 1;
    let mut buf = Vec::new();
    let mut candidate = Vec::new();
    while chunk_start + (LOG_OVERHEAD as u64) <= file_len {
        let n = CHUNK.min(file_len - chunk_start);
        buf.resize(n as usize, 0);
        read_exact_at(file, path, &mut buf, chunk_start)?;
        for i in 0..buf.len() {
            if buf.get(i + MAGIC_AT) != Some(&2) {
                continue;
            }
            let pos = chunk_start + i as u64;
            let mut head = [0u8; LOG_OVERHEAD];
            if file_len - pos < LOG_OVERHEAD as u64 {
                break;
            }
            read_exact_at(file, path, &mut head, pos)?;
            let Some((base, len)) = batch::peek(&head) else {
                continue;
            };
            if base < min_base || len < HEADER_LEN || len as u64 > file_len - pos {
                continue;
            }
            candidate.resize(len, 0);
            read_exact_at(file, path, &mut candidate, pos)?;
            if batch::validate(&candidate).is_ok() {
                return Ok(Some((pos, base)));
            }
        }
        // Overlap so a header split across chunks is still seen.
        chunk_start += n.saturating_sub(MAGIC_AT as u64).max(1);
    }
    Ok(None)
}

/// Validates batches from `span.start` on and stops at the first torn or corrupt one.
fn scan_run(
    file: &dyn StorageFile,
    path: &Path,
    seg_base: u64,
    span: Span,
    indexer: &mut Indexer,
    index: &mut SegmentIndex,
) -> Result<ScanOutcome, StorageError> {
    let Span {
        start: mut pos,
        mut expected,
        index: mut log_index,
        file_len,
    } = span;
    let mut buf = Vec::new();
    let invalid = loop {
        if pos == file_len {
            break None;
        }
        if file_len - pos < LOG_OVERHEAD as u64 {
            break Some((
                pos,
                format!("torn batch: {} trailing bytes", file_len - pos),
            ));
        }
        let mut head = [0u8; LOG_OVERHEAD];
        read_exact_at(file, path, &mut head, pos)?;
        let Some((base, len)) = batch::peek(&head) else {
            break Some((pos, "unreadable header".into()));
        };
        if len < HEADER_LEN {
            break Some((pos, format!("batch length {len} is below the header size")));
        }
        if (len as u64) > file_len - pos {
            break Some((
                pos,
                format!("torn batch: needs {len} bytes, {} remain", file_len - pos),
            ));
        }
        buf.resize(len, 0);
        read_exact_at(file, path, &mut buf, pos)?;
        let header = match batch::validate(&buf) {
            Ok(h) => h,
            Err(e) => break Some((pos, e.to_string())),
        };
        if base != expected {
            break Some((
                pos,
                format!("batch base offset {base}, expected {expected}"),
            ));
        }
        let rel = u32::try_from(base - seg_base).unwrap_or(u32::MAX);
        indexer.observe(rel, pos, log_index, header.max_timestamp, index);
        expected = header.last_offset() + 1;
        log_index += 1;
        pos += len as u64;
    };
    Ok(ScanOutcome {
        valid_len: pos,
        next_offset: expected,
        next_index: log_index,
        max_timestamp: indexer.max_timestamp(),
        invalid,
        holes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_file_name("42.log"), None);
    }
}
