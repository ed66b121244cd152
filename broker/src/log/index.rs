//! Sparse offset and time indexes of one segment, and their on-disk form.
//!
//! An offset entry maps a batch's offset (relative to the segment base) to its byte position;
//! one is kept for the first batch of a segment and then for the first batch at least
//! `interval` bytes after the previous entry. A time entry `(ts, rel)` is added with an offset
//! entry whenever the segment's maximum timestamp has grown, and means "every batch up to and
//! including the one at `rel` has timestamps <= ts".
//!
//! Every batch also has a *log index*: its number in the partition's log, counting batches from
//! 0 (or from where the oldest kept segment started). A replicated partition uses it as the
//! batch's Raft log index; offsets advance by record count, so offset entries carry both.
//!
//! Files (little-endian, see docs/format.md): `.index` is the magic `RIX2`, then
//! `(rel_offset u32, position u32, log_index u64)*`, then the segment's [`Extent`] when it was
//! written (`len u64, end_offset u64, end_index u64`), `.timeindex`
//! is `(timestamp i64, rel_offset u32)*`, each followed by a CRC-32C (u32) of everything before
//! it. They are trusted only after [`load`] checks the CRC, and that the entries are ordered and
//! inside the extent; otherwise the segment is rescanned. The extent also tells recovery when a
//! segment lost bytes it once held whole (a tail cut at a batch boundary leaves no torn batch).

use crate::storage::Storage;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
    /// The batch's log index (its Raft log index in a replicated partition).
    pub log_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// What a segment held when its index was written (after an fsync): its length in bytes, the
/// offset after its last record and the log index after its last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub end_offset: u64,
    pub end_index: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The last entry at or before `rel_offset` (the segment's start if none).
    pub fn entry_for(&self, rel_offset: u32) -> OffsetEntry {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel_offset);
        i.checked_sub(1).map_or(
            OffsetEntry {
                rel_offset: 0,
                position: 0,
                log_index: self.first_index(),
            },
            |i| self.offsets[i],
        )
    }

    /// The last entry at or before the batch with log index `log_index`.
    pub fn entry_for_index(&self, log_index: u64) -> Option<OffsetEntry> {
        let i = self.offsets.partition_point(|e| e.log_index <= log_index);
        i.checked_sub(1).map(|i| self.offsets[i])
    }

    /// The log index of the segment's first batch (0 for an index with no entries).
    fn first_index(&self) -> u64 {
        self.offsets.first().map_or(0, |e| e.log_index)
    }

    /// Relative offset from which to scan for the first batch with a timestamp >= `ts`.
    pub fn scan_start_for_time(&self, ts: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < ts);
        i.checked_sub(1).map_or(0, |i| self.times[i].rel_offset)
    }

    pub fn append(&mut self, more: &mut SegmentIndex) {
        self.offsets.append(&mut more.offsets);
        self.times.append(&mut more.times);
    }

    /// Writes both index files for the segment at `log_path`, which holds `extent`.
    pub fn write(&self, storage: &dyn Storage, log_path: &Path, extent: Extent) -> io::Result<()> {
        let mut buf =
            Vec::with_capacity(MAGIC.len() + self.offsets.len() * ENTRY_LEN + EXTENT_LEN + 4);
        buf.extend_from_slice(MAGIC);
        for e in &self.offsets {
            buf.extend_from_slice(&e.rel_offset.to_le_bytes());
            buf.extend_from_slice(&e.position.to_le_bytes());
            buf.extend_from_slice(&e.log_index.to_le_bytes());
        }
        buf.extend_from_slice(&extent.len.to_le_bytes());
        buf.extend_from_slice(&extent.end_offset.to_le_bytes());
        buf.extend_from_slice(&extent.end_index.to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
        storage.write_synced(&log_path.with_extension("index"), &buf)?;
        let mut buf = Vec::with_capacity(self.times.len() * 12);
        for e in &self.times {
            buf.extend_from_slice(&e.timestamp.to_le_bytes());
            buf.extend_from_slice(&e.rel_offset.to_le_bytes());
        }
        buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
        storage.write_synced(&log_path.with_extension("timeindex"), &buf)
    }
}

/// Starts an offset index file; files of the earlier format (without log indexes) lack it and
/// are rebuilt by scanning.
const MAGIC: &[u8; 4] = b"RIX2";
const ENTRY_LEN: usize = 16;
const EXTENT_LEN: usize = 24;

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Loads a segment's index files if they exist, their CRCs match and they are consistent with
/// the extent they record; returns the index and that extent.
pub fn load(storage: &dyn Storage, log_path: &Path) -> Option<(SegmentIndex, Extent)> {
    let mut raw = checked(storage.read(&log_path.with_extension("index")).ok()?)?;
    if raw.get(..MAGIC.len())? != MAGIC {
        return None;
    }
    let at = raw.len().checked_sub(EXTENT_LEN)?;
    let tail = raw.split_off(at);
    let extent = Extent {
        len: u64_at(&tail, 0)?,
        end_offset: u64_at(&tail, 8)?,
        end_index: u64_at(&tail, 16)?,
    };
    let raw = raw.get(MAGIC.len()..)?;
    let times = checked(storage.read(&log_path.with_extension("timeindex")).ok()?)?;
    if raw.len() % ENTRY_LEN != 0 || times.len() % 12 != 0 {
        return None;
    }
    let offsets = raw
        .chunks_exact(ENTRY_LEN)
        .map(|c| {
            Some(OffsetEntry {
                rel_offset: u32_at(c, 0)?,
                position: u32_at(c, 4)?,
                log_index: u64_at(c, 8)?,
            })
        })
        .collect::<Option<Vec<OffsetEntry>>>()?;
    let times: Vec<TimeEntry> = times
        .chunks_exact(12)
        .map(|c| TimeEntry {
            timestamp: i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            rel_offset: u32::from_le_bytes([c[8], c[9], c[10], c[11]]),
        })
        .collect();
    let ordered = offsets.windows(2).all(|w| {
        w[0].rel_offset < w[1].rel_offset
            && w[0].position < w[1].position
            && w[0].log_index < w[1].log_index
    }) && times
        .windows(2)
        .all(|w| w[0].timestamp < w[1].timestamp && w[0].rel_offset < w[1].rel_offset);
    let starts_right = match offsets.first() {
        None => extent.len == 0,
        Some(first) => first.position == 0 && first.rel_offset == 0,
    };
    let inside = offsets
        .last()
        .is_none_or(|e| u64::from(e.position) < extent.len && e.log_index < extent.end_index);
    let times_indexed = times.iter().all(|t| {
        offsets
            .binary_search_by_key(&t.rel_offset, |o| o.rel_offset)
            .is_ok()
    });
    (ordered && starts_right && inside && times_indexed)
        .then_some((SegmentIndex { offsets, times }, extent))
}

/// The body of an index file whose CRC footer matches, or `None`.
fn checked(mut file: Vec<u8>) -> Option<Vec<u8>> {
    let body = file.len().checked_sub(4)?;
    let stored = u32::from_le_bytes(file[body..].try_into().ok()?);
    file.truncate(body);
    (crc32c::crc32c(&file) == stored).then_some(file)
}

/// Decides which batches get index entries. Used both by the writer and by recovery, so an
/// index rebuilt from a scan is identical to the one written live.
#[derive(Debug, Clone, Copy)]
pub struct Indexer {
    interval: u64,
    last_position: Option<u64>,
    max_timestamp: i64,
    last_time_entry: i64,
}

impl Indexer {
    pub fn new(interval: u64) -> Self {
        Indexer {
            interval,
            last_position: None,
            max_timestamp: i64::MIN,
            last_time_entry: i64::MIN,
        }
    }

    /// Continues indexing a segment whose last entry is at `last_position` and whose batches up
    /// to that entry have timestamps <= `max_timestamp`.
    pub fn resume(interval: u64, last_position: Option<u64>, max_timestamp: i64) -> Self {
        Indexer {
            interval,
            last_position,
            max_timestamp,
            last_time_entry: max_timestamp,
        }
    }

    /// Makes the next batch get an offset entry whatever the interval, so lookups of offsets
    /// after a damaged stretch start after it rather than scanning into it.
    pub fn restart_after_gap(&mut self) {
        self.last_position = None;
    }

    /// Largest timestamp seen in the segment so far.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Records a batch at `position` and adds any entries it earns to `out`.
    pub fn observe(
        &mut self,
        rel_offset: u32,
        position: u64,
        log_index: u64,
        batch_max_ts: i64,
        out: &mut SegmentIndex,
    ) {
        self.max_timestamp = self.max_timestamp.max(batch_max_ts);
        let due = self
            .last_position
            .is_none_or(|last| position >= last + self.interval);
        if !due {
            return;
        }
        self.last_position = Some(position);
        // Positions fit in u32: segments are capped below 4 GiB (LogConfig::validate).
        out.offsets.push(OffsetEntry {
            rel_offset,
            position: position as u32,
            log_index,
        });
        if self.max_timestamp > self.last_time_entry {
            self.last_time_entry = self.max_timestamp;
            out.times.push(TimeEntry {
                timestamp: self.max_timestamp,
                rel_offset,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// For every offset, the looked-up position is that of the last indexed batch at or
        /// before it, which is the right place to start scanning.
        #[test]
        fn lookup_finds_the_batch_to_scan_from(sizes in proptest::collection::vec((1u32..50, 20u64..3000), 1..200), interval in 1u64..10_000) {
            let mut idx = SegmentIndex::default();
            let mut ix = Indexer::new(interval);
            let (mut rel, mut pos) = (0u32, 0u64);
            let mut batches = Vec::new();
            for (n, (count, size)) in sizes.iter().enumerate() {
                ix.observe(rel, pos, 7 + n as u64, 0, &mut idx);
                let found = idx.entry_for_index(7 + n as u64).unwrap();
                prop_assert!(found.position as u64 <= pos && found.log_index <= 7 + n as u64);
                batches.push((rel, *count, pos));
                rel += count;
                pos += size;
            }
            for (base, count, bpos) in &batches {
                for o in *base..base + count {
                    let found = u64::from(idx.entry_for(o).position);
                    prop_assert!(found <= *bpos, "must not skip past the batch holding {}", o);
                    let entry = idx.offsets.iter().rev().find(|e| e.rel_offset <= o).unwrap();
                    prop_assert_eq!(found, u64::from(entry.position));
                    // No indexed batch lies strictly between the found one and the target's batch.
                    prop_assert!(idx.offsets.iter().all(|e| !(u64::from(e.position) > found && u64::from(e.position) <= *bpos && e.rel_offset > o)));
                }
            }
        }
    }

    #[test]
    fn files_round_trip_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("00000000000000000000.log");
        let mut idx = SegmentIndex::default();
        let mut ix = Indexer::new(100);
        for (i, pos) in [0u64, 50, 120, 260].into_iter().enumerate() {
            ix.observe(i as u32 * 10, pos, 5 + i as u64, 1000 + i as i64, &mut idx);
        }
        assert_eq!(
            idx.offsets.len(),
            3,
            "positions 0, 120 and 260 are due; 50 is not"
        );
        let extent = Extent {
            len: 300,
            end_offset: 40,
            end_index: 9,
        };
        idx.write(&crate::storage::Disk, &log, extent).unwrap();
        assert_eq!(
            load(&crate::storage::Disk, &log),
            Some((idx.clone(), extent))
        );
        let short = Extent { len: 200, ..extent };
        idx.write(&crate::storage::Disk, &log, short).unwrap();
        assert_eq!(
            load(&crate::storage::Disk, &log),
            None,
            "an entry past the extent is refused"
        );
        let few = Extent {
            end_index: 7,
            ..extent
        };
        idx.write(&crate::storage::Disk, &log, few).unwrap();
        assert_eq!(
            load(&crate::storage::Disk, &log),
            None,
            "an entry past the extent's log index is refused"
        );
        idx.write(&crate::storage::Disk, &log, extent).unwrap();
        for ext in ["index", "timeindex"] {
            let path = log.with_extension(ext);
            let good = std::fs::read(&path).unwrap();
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0x04;
                std::fs::write(&path, &bad).unwrap();
                assert_eq!(
                    load(&crate::storage::Disk, &log),
                    None,
                    "a flip at byte {i} of the {ext} went unnoticed"
                );
            }
            std::fs::write(&path, &good[..good.len() - 1]).unwrap();
            assert_eq!(
                load(&crate::storage::Disk, &log),
                None,
                "a torn {ext} file is refused"
            );
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn time_lookup_starts_after_batches_that_are_all_older() {
        let idx = SegmentIndex {
            offsets: vec![
                OffsetEntry {
                    rel_offset: 0,
                    position: 0,
                    log_index: 0,
                },
                OffsetEntry {
                    rel_offset: 10,
                    position: 100,
                    log_index: 1,
                },
                OffsetEntry {
                    rel_offset: 20,
                    position: 200,
                    log_index: 2,
                },
            ],
            times: vec![
                TimeEntry {
                    timestamp: 5,
                    rel_offset: 0,
                },
                TimeEntry {
                    timestamp: 9,
                    rel_offset: 10,
                },
                TimeEntry {
                    timestamp: 20,
                    rel_offset: 20,
                },
            ],
        };
        assert_eq!(idx.scan_start_for_time(3), 0);
        assert_eq!(idx.scan_start_for_time(9), 0);
        assert_eq!(idx.scan_start_for_time(10), 10);
        assert_eq!(idx.scan_start_for_time(100), 20);
    }
}
