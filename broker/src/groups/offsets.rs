//! Committed offsets: durable, compact, last write wins.
//!
//! Commits are appended as record batches to an internal partition log at
//! `<data>/groups/offsets/` (always fsynced, group-committed like any partition), one record per
//! (group, topic, partition): key `group_len:u16 | group | topic_len:u16 | topic | partition:u32`
//! (big-endian), value the offset as u64 big-endian, or empty for a deleted entry. At start the
//! log is replayed; the last record for a key wins. Memory is updated only after the append is
//! acknowledged, in log order (each entry remembers the log offset that wrote it), so concurrent
//! commits cannot leave memory disagreeing with disk.
//!
//! In a cluster the same records go to the internal replicated partition `__consumer_offsets`
//! (`OFFSETS_TOPIC`, partition 0) instead: the node that leads it coordinates every group.
//! When it starts to lead (a new Raft term), it rebuilds the entries by reading that partition
//! up to its commit (`serve_from`), and each commit is proposed through the partition's
//! sequencer and applied to memory once committed on a majority. A proposal refused because
//! leadership moved is `OffsetError::Refused`, which tells the client where to go.
//!
//! Compaction keeps the log small: when it grows past a few MiB and several times the live
//! data, every live entry is appended again as a snapshot, followed by a *marker*: a record
//! without a key whose value is the offset (u64 big-endian) where the snapshot began, below
//! which every record is superseded. Commits wait while a snapshot is written (they take the
//! compaction lock shared, the snapshot exclusive), so no acknowledged commit can fall between
//! the superseded prefix and the snapshot. On a single node the sealed segments below the
//! snapshot are deleted at once. In a cluster the snapshot and its marker are replicated like
//! any commit, and each replica trims itself: its retention pass finds the latest committed
//! marker (`superseded_below`), and the partition's Raft group snapshots and purges the
//! segments below it, as retention does for any replicated partition. A replica that needs
//! what was purged gets the Raft snapshot and starts its log where the leader's continues,
//! which holds the whole rewrite.

use crate::cluster::{Refused, Replica};
use crate::log::{AppendError, LogConfig, PartitionLog, RecoveryReport, StorageError};
use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::batch::{BatchBuilder, Batches, RecordIter};
use rill_protocol::messages::TopicPartition;
use rill_protocol::{FsyncPolicy, TopicName};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

/// Segment size of the offsets log: small, so compaction can free space in small steps.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Compact once the log is larger than this (the default of `[groups] offsets_compact_bytes`)...
pub const DEFAULT_COMPACT_BYTES: u64 = 4 << 20;
/// ...and larger than this many times the live entries.
const COMPACT_RATIO: u64 = 4;
/// Records per snapshot batch.
const SNAPSHOT_BATCH: usize = 1000;

type Key = (String, TopicPartition);

pub use rill_protocol::OFFSETS_TOPIC;

/// Why a commit was not stored.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(transparent)]
    Append(#[from] AppendError),
    /// In a cluster: the proposal was refused (this node no longer coordinates, or the
    /// group is shutting down).
    #[error("the commit was not replicated: {0:?}")]
    Refused(Refused),
}

/// The replicated partition commits go to, and the term whose entries memory holds.
#[derive(Debug, Clone)]
struct Attached {
    replica: Replica,
    term: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `None`: deleted.
    offset: Option<u64>,
    /// Log offset of the record that wrote this entry.
    seq: u64,
}

#[derive(Debug)]
pub struct OffsetStore {
    log: PartitionLog,
    /// Compact once the log has grown by this many bytes (and `COMPACT_RATIO` times the live
    /// entries) since the last compaction...
    compact_bytes: u64,
    /// ...when it held this many bytes from the segment of its superseded prefix on.
    compacted_size: std::sync::atomic::AtomicU64,
    entries: Mutex<HashMap<Key, Entry>>,
    /// In a cluster: each group's last stable generation as recorded (`record_generation`),
    /// with the log offset of its record; encoded `GenerationRecord`s, handed to the groups
    /// when this node starts to coordinate.
    generations: Mutex<HashMap<String, (u64, Bytes)>>,
    compaction: tokio::sync::RwLock<()>,
    /// In a cluster: where commits go (`None` on a single node, or before this node first
    /// coordinated).
    attached: Mutex<Option<Attached>>,
    /// One rebuild at a time.
    loading: tokio::sync::Mutex<()>,
}

fn encode_key(group: &str, tp: &TopicPartition) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + group.len() + tp.topic.as_str().len());
    k.put_u16(group.len() as u16);
    k.put_slice(group.as_bytes());
    k.put_u16(tp.topic.as_str().len() as u16);
    k.put_slice(tp.topic.as_str().as_bytes());
    k.put_u32(tp.partition);
    k
}

/// The key of a group's stable generation (a cluster's coordinator keeps it beside the
/// offsets): the group, then an empty topic name, which no offset key has.
fn generation_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len());
    k.put_u16(group.len() as u16);
    k.put_slice(group.as_bytes());
    k.put_u16(0);
    k
}

/// What a record of the offsets log is about.
#[derive(Debug, PartialEq, Eq)]
enum Subject {
    Offset(Key),
    Generation(String),
}

fn decode_subject(k: &[u8]) -> Option<Subject> {
    if let Some(key) = decode_key(k) {
        return Some(Subject::Offset(key));
    }
    let glen = usize::from(u16::from_be_bytes(k.get(..2)?.try_into().ok()?));
    let group = std::str::from_utf8(k.get(2..2 + glen)?).ok()?;
    (k.get(2 + glen..)? == [0, 0]).then(|| Subject::Generation(group.to_string()))
}

fn decode_key(mut k: &[u8]) -> Option<Key> {
    fn take<'a>(k: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (k.get(..n)?, k.get(n..)?);
        *k = rest;
        Some(head)
    }
    let glen = u16::from_be_bytes(take(&mut k, 2)?.try_into().ok()?) as usize;
    let group = std::str::from_utf8(take(&mut k, glen)?).ok()?.to_string();
    let tlen = u16::from_be_bytes(take(&mut k, 2)?.try_into().ok()?) as usize;
    let topic = TopicName::new(std::str::from_utf8(take(&mut k, tlen)?).ok()?).ok()?;
    let partition = u32::from_be_bytes(take(&mut k, 4)?.try_into().ok()?);
    k.is_empty()
        .then_some((group, TopicPartition { topic, partition }))
}

impl OffsetStore {
    /// Opens (and replays) the offsets log under `data_dir`. Blocking.
    pub fn open(
        data_dir: &Path,
        clean: bool,
        compact_bytes: u64,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let dir = data_dir.join("groups").join("offsets");
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            // Compaction, not retention, bounds this log: its entries never expire.
            retention_ms: 0,
            retention_bytes: 0,
            producer_expiration_ms: u64::MAX,
        };
        let (log, report) = PartitionLog::open(&dir, "__group_offsets".into(), config, clean)?;
        let (entries, _) = replay(&log)?;
        tracing::info!(entries = entries.len(), "committed offsets loaded");
        Ok((
            OffsetStore {
                log,
                compact_bytes,
                compacted_size: std::sync::atomic::AtomicU64::new(0),
                entries: Mutex::new(entries),
                generations: Mutex::new(HashMap::new()),
                compaction: tokio::sync::RwLock::new(()),
                attached: Mutex::new(None),
                loading: tokio::sync::Mutex::new(()),
            },
            report,
        ))
    }

    fn attached(&self) -> Option<Attached> {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// In a cluster: makes this store serve from `replica` (this node's replica of
    /// `__consumer_offsets`, which it leads) in Raft term `term`. The first call of a term
    /// rebuilds the entries from the replica's committed records and calls `starting` with
    /// every group's last recorded generation (membership is restored from them with each
    /// coordinator term). The caller must have
    /// checked that the replica applied an entry of `term`, so everything committed before
    /// it is readable.
    pub async fn serve_from(
        &self,
        replica: &Replica,
        term: u64,
        starting: impl FnOnce(Vec<(String, Bytes)>),
    ) -> Result<(), StorageError> {
        if self.attached().is_some_and(|a| a.term == term) {
            return Ok(());
        }
        let _one = self.loading.lock().await;
        if self.attached().is_some_and(|a| a.term == term) {
            return Ok(());
        }
        let log = replica.log.clone();
        let (entries, generations) = tokio::task::spawn_blocking(move || replay(&log))
            .await
            .map_err(|e| StorageError::Io {
                op: "replay",
                path: OFFSETS_TOPIC.into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        tracing::info!(
            term,
            entries = entries.len(),
            groups = generations.len(),
            "coordinating consumer groups: committed offsets and generations loaded from {OFFSETS_TOPIC}"
        );
        *self.entries() = entries;
        let restored = generations
            .iter()
            .map(|(g, (_, v))| (g.clone(), v.clone()))
            .collect();
        *self.generations() = generations;
        starting(restored);
        *self.attached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Attached {
            replica: replica.clone(),
            term,
        });
        Ok(())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Bytes)>> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// In a cluster: durably records `group`'s stable generation (an encoded
    /// `GenerationRecord`), or that it has none (`None`: deleted), for the next coordinator.
    /// On a single node there is no next coordinator and nothing is written.
    pub async fn record_generation(
        &self,
        group: &str,
        record: Option<Bytes>,
    ) -> Result<(), OffsetError> {
        let Some(attached) = self.attached() else {
            return Ok(());
        };
        if record.is_none() && !self.generations().contains_key(group) {
            return Ok(());
        }
        {
            let _shared = self.compaction.read().await;
            let value = record.clone().unwrap_or_default();
            let batch = Self::generation_batch([(group, &value)].into_iter());
            let seq = self.store(Some(&attached), batch).await?;
            let mut generations = self.generations();
            let newer = generations.get(group).is_none_or(|(at, _)| *at <= seq);
            match record {
                Some(value) if newer => {
                    generations.insert(group.to_string(), (seq, value));
                }
                None if newer => {
                    generations.remove(group);
                }
                _ => {}
            }
        }
        self.maybe_compact().await
    }

    pub fn get(&self, group: &str, tp: &TopicPartition) -> Option<u64> {
        self.entries()
            .get(&(group.to_string(), tp.clone()))
            .and_then(|e| e.offset)
    }

    /// Every committed offset of `group`, sorted.
    pub fn of_group(&self, group: &str) -> BTreeMap<TopicPartition, u64> {
        self.entries()
            .iter()
            .filter(|((g, _), _)| g == group)
            .filter_map(|((_, tp), e)| e.offset.map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Groups that have at least one committed offset.
    pub fn groups(&self) -> BTreeSet<String> {
        self.entries()
            .iter()
            .filter(|(_, e)| e.offset.is_some())
            .map(|((g, _), _)| g.clone())
            .collect()
    }

    /// Durably records `offsets` (None deletes) for `group`; returns once fsynced.
    pub async fn commit(
        &self,
        group: &str,
        offsets: &[(TopicPartition, Option<u64>)],
    ) -> Result<(), OffsetError> {
        self.write(offsets.iter().map(|(tp, o)| (group, tp, *o)))
            .await?;
        self.maybe_compact().await
    }

    /// Durably deletes every committed offset of a topic for which `exists` says no, in every
    /// group; returns how many were deleted. Called when a topic is deleted and at start-up
    /// (covering a crash between a topic's deletion and this), so a topic created again under
    /// the same name starts with no commits and its groups start per their reset policy.
    pub async fn forget_topics(
        &self,
        exists: impl Fn(&TopicName) -> bool,
    ) -> Result<usize, OffsetError> {
        let gone: Vec<Key> = self
            .entries()
            .iter()
            .filter(|((_, tp), e)| e.offset.is_some() && !exists(&tp.topic))
            .map(|(k, _)| k.clone())
            .collect();
        // Bounded batches: a topic may have thousands of partitions in many groups.
        for chunk in gone.chunks(1000) {
            self.write(chunk.iter().map(|(g, tp)| (g.as_str(), tp, None)))
                .await?;
        }
        if !gone.is_empty() {
            self.maybe_compact().await?;
        }
        Ok(gone.len())
    }

    /// Appends one batch of entries, waits for its fsync, then applies it in log order.
    async fn write<'a>(
        &self,
        records: impl Iterator<Item = (&'a str, &'a TopicPartition, Option<u64>)> + Clone,
    ) -> Result<(), OffsetError> {
        if records.clone().next().is_none() {
            return Ok(());
        }
        let _shared = self.compaction.read().await;
        let base_offset = self
            .store(self.attached().as_ref(), Self::batch(records.clone()))
            .await?;
        let mut entries = self.entries();
        for (i, (group, tp, offset)) in records.enumerate() {
            let seq = base_offset + i as u64;
            let slot = entries
                .entry((group.to_string(), tp.clone()))
                .or_insert(Entry {
                    offset: None,
                    seq: 0,
                });
            if slot.seq <= seq {
                *slot = Entry { offset, seq };
            }
        }
        Ok(())
    }

    /// Stores one batch, on the local log or through the replicated partition; returns its
    /// base offset once durable (and in a cluster, committed).
    async fn store(&self, attached: Option<&Attached>, batch: Bytes) -> Result<u64, OffsetError> {
        Ok(match attached {
            None => self.log.append(batch)?.wait().await?.base_offset,
            Some(a) => {
                let header =
                    rill_protocol::batch::validate(&batch).map_err(AppendError::InvalidBatch)?;
                let stored = a.replica.sequencer.propose(batch, header).await;
                stored.map_err(OffsetError::Refused)?.base_offset
            }
        })
    }

    fn batch<'a>(
        records: impl Iterator<Item = (&'a str, &'a TopicPartition, Option<u64>)>,
    ) -> Bytes {
        let mut b = BatchBuilder::with_capacity(1024);
        for (group, tp, offset) in records {
            let mut value = BytesMut::new();
            if let Some(o) = offset {
                value.put_u64(o);
            }
            b.push(Some(&encode_key(group, tp)), &value, &[], now_ms());
        }
        b.finish()
    }

    fn generation_batch<'a>(records: impl Iterator<Item = (&'a str, &'a Bytes)>) -> Bytes {
        let mut b = BatchBuilder::with_capacity(1024);
        for (group, value) in records {
            b.push(Some(&generation_key(group)), value, &[], now_ms());
        }
        b.finish()
    }

    /// The marker that ends a compaction snapshot: records below `offset` are superseded.
    fn marker(offset: u64) -> Bytes {
        let mut b = BatchBuilder::with_capacity(96);
        b.push(None, &offset.to_be_bytes(), &[], now_ms());
        b.finish()
    }

    /// Compacts if the log has grown past its limits. In a cluster a failed compaction (this
    /// node stopped coordinating half-way) is only logged: the commit that triggered it is
    /// durable, and a snapshot without its marker is harmless (it restates live entries).
    async fn maybe_compact(&self) -> Result<(), OffsetError> {
        let attached = self.attached();
        let log = attached.as_ref().map_or(&self.log, |a| &*a.replica.log);
        let live = self
            .entries()
            .iter()
            .filter(|(_, e)| e.offset.is_some())
            .count() as u64
            * 64;
        // Growth since the last compaction: what a replica still has to trim, and the part
        // of the segment the snapshot began in that came before it, do not count.
        let size = || log.size_from(log.superseded_below());
        let grown = || {
            size().saturating_sub(
                self.compacted_size
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        let limit = self.compact_bytes.max(live * COMPACT_RATIO);
        if grown() < limit {
            return Ok(());
        }
        let _exclusive = self.compaction.write().await;
        if grown() < limit {
            return Ok(()); // another commit compacted while we waited
        }
        let size = size();
        let snapshot: Vec<(String, TopicPartition, u64)> = {
            let mut entries = self.entries();
            entries.retain(|_, e| e.offset.is_some());
            entries
                .iter()
                .filter_map(|((g, tp), e)| e.offset.map(|o| (g.clone(), tp.clone(), o)))
                .collect()
        };
        let generations: Vec<(String, Bytes)> = self
            .generations()
            .iter()
            .map(|(g, (_, v))| (g.clone(), v.clone()))
            .collect();
        // Every commit is applied (they wait for this lock), so everything below the end of
        // the committed log is restated by the snapshot.
        let start = log.high_watermark();
        let written = self
            .write_snapshot(attached.as_ref(), &snapshot, &generations, start)
            .await;
        if let (Err(e), Some(_)) = (&written, &attached) {
            tracing::warn!(error = ?e, "compaction of the committed offsets stopped half-way; the next one starts over");
            return Ok(());
        }
        written?;
        log.supersede_below(start);
        let removed = match attached {
            None => self
                .log
                .delete_segments_before(start)
                .map_err(AppendError::from)?,
            Some(_) => 0, // each replica trims itself (see the module's notes)
        };
        self.compacted_size.store(
            log.size_from(log.superseded_below()),
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(
            entries = snapshot.len(),
            removed_segments = removed,
            size_before = size,
            "compacted committed offsets"
        );
        Ok(())
    }

    /// Writes every entry of `snapshot` and every generation again, then the marker for
    /// `start`.
    async fn write_snapshot(
        &self,
        attached: Option<&Attached>,
        snapshot: &[(String, TopicPartition, u64)],
        generations: &[(String, Bytes)],
        start: u64,
    ) -> Result<(), OffsetError> {
        let batches =
            snapshot
                .chunks(SNAPSHOT_BATCH)
                .map(|chunk| Self::batch(chunk.iter().map(|(g, tp, o)| (g.as_str(), tp, Some(*o)))))
                .chain(generations.chunks(SNAPSHOT_BATCH / 10).map(|chunk| {
                    Self::generation_batch(chunk.iter().map(|(g, v)| (g.as_str(), v)))
                }))
                .chain([Self::marker(start)]);
        match attached {
            None => {
                let mut pending = Vec::new();
                for b in batches {
                    pending.push(self.log.append(b)?);
                }
                for p in pending {
                    p.wait().await?;
                }
            }
            // One at a time: the marker must not be committed before the snapshot it closes.
            Some(_) => {
                for b in batches {
                    self.store(attached, b).await?;
                }
            }
        }
        Ok(())
    }

    pub fn log_size(&self) -> u64 {
        self.log.stats().size_bytes
    }

    /// Stops the log's writer after a final fsync. Blocking.
    pub fn close(&self) -> bool {
        self.log.close();
        self.log.failed().is_none()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The offset below which `log`'s committed records are superseded, from the latest
/// compaction marker at or after `from` (`None`: no marker there). Reads from `from` to the
/// high watermark, so callers pass the floor they already know. Blocking.
pub fn superseded_below(log: &PartitionLog, from: u64) -> Result<Option<u64>, StorageError> {
    let mut floor = None;
    let unreadable =
        |position, e: crate::log::ReadError| Err(corrupt(log.dir(), position, e.to_string()));
    walk(log, from, unreadable, |r| {
        floor = marker_value(&r).or(floor);
        Ok(())
    })?;
    Ok(floor)
}

/// Calls `f` with every record of `log` from `from` (or its start) to its high watermark,
/// skipping Raft's control batches. A read that fails is handed to `unreadable`, which ends
/// the walk with its answer; a batch or record that does not decode is `Corrupt`. Blocking.
fn walk(
    log: &PartitionLog,
    from: u64,
    unreadable: impl FnOnce(u64, crate::log::ReadError) -> Result<(), StorageError>,
    mut f: impl FnMut(rill_protocol::batch::Record) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut next = from.max(log.stats().log_start_offset);
    loop {
        let read = match log.read(next, 1 << 20) {
            Ok(read) => read,
            Err(e) => return unreadable(next, e),
        };
        if read.batches.is_empty() {
            return Ok(());
        }
        for batch in Batches::new(read.batches) {
            let records =
                RecordIter::new(batch).map_err(|e| corrupt(log.dir(), next, e.to_string()))?;
            next = next.max(records.header().last_offset() + 1);
            if records.header().is_control() {
                continue; // Raft's own entries in a replicated log
            }
            for r in records {
                f(r.map_err(|e| corrupt(log.dir(), next, e.to_string()))?)?;
            }
        }
    }
}

/// The offset a compaction marker names; `None` if `r` is an ordinary entry.
fn marker_value(r: &rill_protocol::batch::Record) -> Option<u64> {
    match &r.key {
        None => r.value[..].try_into().ok().map(u64::from_be_bytes),
        Some(_) => None,
    }
}

/// Every live entry in `log`, the last record for a key winning. Blocking.
/// Each group's last recorded generation, with the log offset of its record.
type Generations = HashMap<String, (u64, Bytes)>;

fn replay(log: &PartitionLog) -> Result<(HashMap<Key, Entry>, Generations), StorageError> {
    let mut entries = HashMap::new();
    let mut generations = Generations::new();
    let dir = log.dir();
    let unreadable = |offset, e: crate::log::ReadError| {
        // Bad data at rest: keep what was read; groups resume from older commits for the
        // entries lost, which re-delivers records (at-least-once holds).
        tracing::error!(offset, error = %e, "committed offsets from here on are unreadable and ignored");
        Ok(())
    };
    walk(log, 0, unreadable, |r| {
        if r.key.is_none() && marker_value(&r).is_some() {
            return Ok(()); // the end of a compaction snapshot
        }
        let key = match r.key.as_deref().and_then(decode_subject) {
            Some(Subject::Offset(key)) => key,
            Some(Subject::Generation(group)) if r.value.is_empty() => {
                generations.remove(&group);
                return Ok(());
            }
            Some(Subject::Generation(group)) => {
                generations.insert(group, (r.offset, r.value));
                return Ok(());
            }
            None => return Err(corrupt(dir, r.offset, "bad offset key".into())),
        };
        let offset = match r.value.len() {
            0 => None,
            8 => Some(u64::from_be_bytes(
                r.value[..].try_into().unwrap_or_default(),
            )),
            _ => return Err(corrupt(dir, r.offset, "bad offset value".into())),
        };
        entries.insert(
            key,
            Entry {
                offset,
                seq: r.offset,
            },
        );
        Ok(())
    })?;
    entries.retain(|_, e| e.offset.is_some());
    Ok((entries, generations))
}

fn corrupt(dir: &Path, position: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        path: dir.to_path_buf(),
        position,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: u32) -> TopicPartition {
        TopicPartition {
            topic: TopicName::new(t).unwrap(),
            partition: p,
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = encode_key("g-1", &tp("orders", 7));
        assert_eq!(decode_key(&k), Some(("g-1".to_string(), tp("orders", 7))));
        assert_eq!(decode_key(&k[..k.len() - 1]), None);
        assert_eq!(
            decode_subject(&generation_key("g-1")),
            Some(Subject::Generation("g-1".into()))
        );
        assert_eq!(
            decode_subject(&k),
            Some(Subject::Offset(("g-1".to_string(), tp("orders", 7))))
        );
        assert_eq!(decode_subject(&generation_key("g-1")[..4]), None);
    }

    /// A cluster's coordinator keeps groups' generations in the same log: the last record of
    /// a group wins, an empty one deletes it, and offsets are read around them.
    #[tokio::test]
    async fn generations_are_replayed_beside_the_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = OffsetStore::open(dir.path(), true, DEFAULT_COMPACT_BYTES).unwrap();
        store.commit("g", &[(tp("a", 0), Some(5))]).await.unwrap();
        let (one, two, empty) = (Bytes::from("one"), Bytes::from("two"), Bytes::new());
        for batch in [[("g", &one), ("h", &one)], [("g", &two), ("h", &empty)]] {
            let appended = store
                .log
                .append(OffsetStore::generation_batch(batch.into_iter()));
            appended.unwrap().wait().await.unwrap();
        }
        store.commit("g", &[(tp("a", 0), Some(6))]).await.unwrap();
        let (entries, generations) = replay(&store.log).unwrap();
        assert_eq!(entries[&("g".to_string(), tp("a", 0))].offset, Some(6));
        assert_eq!(
            generations
                .into_iter()
                .map(|(g, (_, v))| (g, v))
                .collect::<Vec<_>>(),
            vec![("g".to_string(), two)]
        );
    }

    #[tokio::test]
    async fn commits_survive_reopening_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = OffsetStore::open(dir.path(), true, DEFAULT_COMPACT_BYTES).unwrap();
        store
            .commit("g", &[(tp("a", 0), Some(5)), (tp("a", 1), Some(7))])
            .await
            .unwrap();
        store.commit("g", &[(tp("a", 0), Some(9))]).await.unwrap();
        store.commit("h", &[(tp("a", 0), Some(1))]).await.unwrap();
        store.commit("h", &[(tp("a", 0), None)]).await.unwrap();
        assert_eq!(store.get("g", &tp("a", 0)), Some(9));
        store.close();
        drop(store);
        let (store, _) = OffsetStore::open(dir.path(), false, DEFAULT_COMPACT_BYTES).unwrap();
        assert_eq!(store.get("g", &tp("a", 0)), Some(9));
        assert_eq!(store.get("g", &tp("a", 1)), Some(7));
        assert_eq!(store.get("h", &tp("a", 0)), None);
        assert_eq!(store.groups(), ["g".to_string()].into());
    }

    #[tokio::test]
    async fn forgetting_a_topic_deletes_its_offsets_in_every_group_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = OffsetStore::open(dir.path(), true, DEFAULT_COMPACT_BYTES).unwrap();
        let many: Vec<_> = (0..2500).map(|p| (tp("gone", p), Some(3))).collect();
        store.commit("g", &many).await.unwrap();
        store
            .commit("h", &[(tp("gone", 0), Some(4))])
            .await
            .unwrap();
        store
            .commit("h", &[(tp("kept", 0), Some(6))])
            .await
            .unwrap();
        let kept = TopicName::new("kept").unwrap();
        let dropped = store.forget_topics(|t| *t == kept).await.unwrap();
        assert_eq!(dropped, 2501);
        assert_eq!(store.forget_topics(|t| *t == kept).await.unwrap(), 0);
        store.close();
        drop(store);
        let (store, _) = OffsetStore::open(dir.path(), false, DEFAULT_COMPACT_BYTES).unwrap();
        assert!(store.of_group("g").is_empty());
        assert_eq!(store.of_group("h"), [(tp("kept", 0), 6)].into());
    }

    /// Story: committed offsets are rewritten constantly; an append-only file would grow
    /// without bound. Compaction must keep it near the live size and lose nothing.
    #[tokio::test]
    async fn the_log_stays_small_under_endless_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = OffsetStore::open(dir.path(), true, DEFAULT_COMPACT_BYTES).unwrap();
        for round in 0..1_000u64 {
            let offsets: Vec<_> = (0..200)
                .map(|p| (tp("t", p), Some(round * 1000 + u64::from(p))))
                .collect();
            store.commit("g", &offsets).await.unwrap();
        }
        // 1,000 commits of 200 entries is ~9 MiB of records; compaction keeps a few MiB.
        assert!(
            store.log_size() < DEFAULT_COMPACT_BYTES + 2 * SEGMENT_BYTES,
            "log is {} bytes",
            store.log_size()
        );
        // The last snapshot ends with its marker, which replicas trim by.
        let floor = superseded_below(&store.log, 0).unwrap().expect("a marker");
        assert!(floor >= store.log.stats().log_start_offset && floor > 0);
        assert_eq!(store.log.superseded_below(), floor);
        store.close();
        drop(store);
        let (store, _) = OffsetStore::open(dir.path(), false, DEFAULT_COMPACT_BYTES).unwrap();
        for p in 0..200 {
            assert_eq!(store.get("g", &tp("t", p)), Some(999 * 1000 + u64::from(p)));
        }
    }
}
