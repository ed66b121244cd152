//! Idempotent-producer state on disk: snapshots, and rebuilding from batch headers.
//!
//! The state of a partition's producers ([`Producers`]) is a function of the batch headers in
//! its log: each idempotent batch header carries producer id, epoch, first sequence and record
//! count. Rather than read every header at each start, the writer saves the state in a
//! snapshot, `<partition>/<offset>.producers`, holding the state after every batch below
//! `offset`:
//!
//! ```text
//! magic "RILLPRS1" (8 bytes) | offset u64 | Producers::encode | CRC-32C of all before (u32)
//! ```
//!
//! (little-endian). The writer saves one at every roll (after the sealed segment was fsynced,
//! with the new segment's base as its offset) and at a clean shutdown (at the log end), each
//! through a temporary file renamed into place, then removes the older ones. Opening a
//! partition loads the newest snapshot that is intact and not beyond the log's end, then
//! applies the headers of every batch from its offset to the end: nothing after a clean
//! shutdown, at most the active segment after a crash. A damaged snapshot is logged and
//! skipped; with none usable the state is rebuilt from the first batch still in the log.
//!
//! Retention deletes only sealed segments, all below the newest snapshot's offset, so a
//! producer whose batches retention deleted is still known; it is forgotten only after
//! `producer_expiration_ms` without writes. Producers replayed from headers count as having
//! written at the time of the replay, so a restart can only lengthen their life.

use super::error::StorageError;
use super::producers::Producers;
use super::recovery::sync_dir;
use super::segment::{self, Segment};
use crate::storage::Storage;
use rill_protocol::batch::BatchHeader;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RILLPRS1";
const EXT: &str = "producers";

fn file_name(offset: u64) -> String {
    format!("{offset:020}.{EXT}")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".producers")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Applies one stored batch's header to the state (for a non-idempotent batch, nothing).
pub(super) fn apply(producers: &mut Producers, h: &BatchHeader, now_ms: i64) {
    if h.producer_id >= 0 {
        let records = i32::try_from(h.records()).unwrap_or(i32::MAX);
        producers.record(
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            records,
            h.base_offset,
            now_ms,
        );
    }
}

pub(super) fn encode(producers: &Producers, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&offset.to_le_bytes());
    producers.encode(&mut bytes);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The snapshot's offset and state, or why it cannot be used.
pub(super) fn decode(bytes: &[u8]) -> Result<(u64, Producers), String> {
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("shorter than its checksum")?;
    if crc32c::crc32c(body).to_le_bytes() != *crc {
        return Err("checksum mismatch".into());
    }
    let rest = body.strip_prefix(MAGIC).ok_or("not a producer snapshot")?;
    let (offset, state) = rest.split_first_chunk::<8>().ok_or("truncated offset")?;
    let producers = Producers::decode(state).ok_or("malformed entries")?;
    Ok((u64::from_le_bytes(*offset), producers))
}

/// Snapshot files in `dir`, newest first.
pub(super) fn snapshots(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found: Vec<(u64, PathBuf)> = storage
        .list(dir)
        .map_err(StorageError::io("list", dir))?
        .into_iter()
        .filter_map(|p| Some((parse_file_name(p.file_name()?.to_str()?)?, p)))
        .collect();
    found.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    Ok(found)
}

/// Saves the state after every batch below `offset`, then removes every other snapshot.
pub(super) fn write_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    offset: u64,
    producers: &Producers,
) -> Result<(), StorageError> {
    let path = dir.join(file_name(offset));
    let tmp = dir.join(format!("{}.tmp", file_name(offset)));
    storage
        .write_synced(&tmp, &encode(producers, offset))
        .map_err(StorageError::io("write", &tmp))?;
    storage
        .rename(&tmp, &path)
        .map_err(StorageError::io("rename", &tmp))?;
    sync_dir(storage, dir)?;
    for (o, old) in snapshots(storage, dir)? {
        if o != offset {
            storage
                .remove_file(&old)
                .map_err(StorageError::io("remove", &old))?;
        }
    }
    Ok(())
}

/// Removes the snapshots that describe records from beyond `offset` (before the log is cut
/// there), and makes that durable.
pub(super) fn remove_snapshots_after(
    storage: &dyn Storage,
    dir: &Path,
    offset: u64,
) -> Result<(), StorageError> {
    let mut removed = false;
    for (o, path) in snapshots(storage, dir)? {
        if o > offset {
            storage
                .remove_file(&path)
                .map_err(StorageError::io("remove", &path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(storage, dir)?;
    }
    Ok(())
}

/// How the state was found at start-up.
#[derive(Debug, Default, Clone)]
pub struct ProducerRecovery {
    /// The offset of the snapshot used, if one was.
    pub snapshot: Option<u64>,
    /// Batch headers applied on top of it.
    pub replayed_batches: u64,
    /// Snapshots that could not be used: `(file, why)`.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest usable snapshot and applies the headers of the batches after it.
pub(super) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    label: &str,
    segments: &[Segment],
    now_ms: i64,
    expiration_ms: i64,
) -> Result<(Producers, ProducerRecovery), StorageError> {
    let start = segments.first().map_or(0, |s| s.base);
    let end = segments.last().map_or(0, |s| s.next_offset);
    let mut report = ProducerRecovery::default();
    let mut state = None;
    for (offset, path) in snapshots(storage, dir)? {
        let loaded = if offset > end {
            Err(format!(
                "it covers the log up to offset {offset}, which ends at {end}"
            ))
        } else {
            storage
                .read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| decode(&bytes))
                .and_then(|(o, p)| {
                    (o == offset)
                        .then_some(p)
                        .ok_or_else(|| format!("it names offset {o}, its file name {offset}"))
                })
        };
        match loaded {
            Ok(p) => {
                state = Some((offset, p));
                break;
            }
            Err(why) => {
                tracing::warn!(partition = label, file = %path.display(), reason = %why, "producer snapshot not usable; rebuilding idempotent-producer state from an older one or the log");
                report.skipped.push((path, why));
            }
        }
    }
    let (from, mut producers) = match state {
        Some((offset, p)) => {
            report.snapshot = Some(offset);
            (offset.max(start), p)
        }
        None => (start, Producers::default()),
    };
    for seg in segments.iter().filter(|s| s.next_offset > from) {
        let applied = replay_segment(seg, from, &mut producers, now_ms);
        match applied {
            Ok(n) => report.replayed_batches += n,
            Err(e) => {
                tracing::warn!(partition = label, file = %seg.path.display(), error = %e, "could not read batch headers for idempotent-producer state; producers that wrote only there may see their retries refused");
            }
        }
    }
    producers.expire(now_ms, expiration_ms);
    if report.replayed_batches > 0 || !report.skipped.is_empty() {
        tracing::info!(
            partition = label,
            snapshot = ?report.snapshot,
            batches = report.replayed_batches,
            producers = producers.len(),
            "idempotent-producer state rebuilt from the log"
        );
    }
    Ok((producers, report))
}

/// Applies the headers of the segment's batches that end at or after `from`.
fn replay_segment(
    seg: &Segment,
    from: u64,
    producers: &mut Producers,
    now_ms: i64,
) -> Result<u64, StorageError> {
    let entry = seg
        .index
        .entry_for(u32::try_from(from.saturating_sub(seg.base)).unwrap_or(u32::MAX));
    let mut pos = u64::from(entry.position);
    let mut applied = 0;
    while pos < seg.size {
        if let Some(hole) = seg.holes.iter().find(|h| h.position == pos) {
            pos += hole.len;
            continue;
        }
        let h = segment::read_header(&*seg.file, &seg.path, pos, seg.size)?;
        if h.last_offset() >= from {
            apply(producers, &h, now_ms);
            applied += 1;
        }
        pos += h.total_len() as u64;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_files_round_trip_and_damage_is_detected() {
        let mut p = Producers::default();
        p.record(3, 1, 0, 4, 100, 7);
        let bytes = encode(&p, 104);
        assert_eq!(decode(&bytes), Ok((104, p)));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "a flipped bit at byte {i} is caught");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(parse_file_name(&file_name(104)), Some(104));
        assert_eq!(parse_file_name("00000000000000000104.producers.tmp"), None);
    }
}
