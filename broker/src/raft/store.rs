//! openraft's storage for a replicated partition: the log is the partition's segment log, the
//! state machine is its high watermark.
//!
//! - [`LogStore`]: entries are queued to the partition's writer thread as they come
//!   (`append_entry`: written at their log index, term in the leader epoch) and openraft is told
//!   they are flushed when the writer acknowledges the last one, which under `fsync=always` is
//!   after the fdatasync of its round (group commit carries over). Until the writer has
//!   published them, appended entries are also kept in memory (`tail`), so the leader
//!   replicates new entries without reading them back; published ones stay there too, up to
//!   [`KEEP_BYTES`] per partition and [`KEEP_TOTAL`] for the process, because a follower's next
//!   AppendEntries usually starts with entries the leader published while the follower's
//!   previous one was on its way (its own fsync included); older ones are read from the
//!   segments.
//!   The vote is in `raft-vote`, the last purged log id in `raft-state` (both written whole,
//!   synced, renamed into place).
//! - [`Machine`]: applying entries moves the high watermark (consumers read only committed
//!   records) and answers each entry with its base offset. What it has applied, and the
//!   membership, are saved in `raft-applied` (at most once a second, unsynced: losing it costs a
//!   longer replay and a late high watermark, nothing more; synced when membership changes).
//! - Snapshots (`raft-snapshot`, [`SnapshotBuilder`]) are how retention deletes a replicated
//!   partition's old segments: a snapshot up to the last entry retention drops, then openraft
//!   purges up to it, and a follower that needs purged entries gets the snapshot (the offset
//!   where the log continues) and starts its log afresh there.

use super::{
    Applied, NodeInfo, RaftEntry, Rill, StorageError, batch_entry, entry_batch, entry_records,
};
use crate::log::PartitionLog;
use crate::storage::{Storage, load, save};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use rill_protocol::codec;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VOTE_FILE: &str = "raft-vote";
const STATE_FILE: &str = "raft-state";
const APPLIED_FILE: &str = "raft-applied";
const SNAPSHOT_FILE: &str = "raft-snapshot";
/// Published entries kept in memory per partition (see the module notes).
pub const KEEP_BYTES: usize = 8 << 20;
/// Published entries kept in memory across every partition of the process: past it, a
/// partition keeps only what its writer has not published yet.
pub const KEEP_TOTAL: usize = 256 << 20;
/// Bytes held by every [`Tail`] of the process.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Entries appended and kept in memory, in index order, with their size in bytes (counted in
/// [`KEPT`] too).
#[derive(Debug, Default)]
struct Tail {
    entries: VecDeque<RaftEntry>,
    bytes: usize,
}

fn entry_bytes(e: &RaftEntry) -> usize {
    match &e.payload {
        EntryPayload::Normal(b) => b.len() + 64,
        _ => 256,
    }
}

impl Tail {
    fn push(&mut self, e: RaftEntry) {
        let n = entry_bytes(&e);
        self.bytes += n;
        KEPT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.entries.push_back(e);
    }

    /// Drops published entries (index below `published`) while this tail or the process
    /// keeps more than allowed.
    fn trim(&mut self, published: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index < published)
            && (self.bytes > KEEP_BYTES
                || KEPT.load(std::sync::atomic::Ordering::Relaxed) > KEEP_TOTAL)
        {
            if let Some(e) = self.entries.pop_front() {
                self.forget(&e);
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&RaftEntry) -> bool) {
        let (kept, dropped): (VecDeque<RaftEntry>, VecDeque<RaftEntry>) =
            std::mem::take(&mut self.entries)
                .into_iter()
                .partition(|e| keep(e));
        for e in &dropped {
            self.forget(e);
        }
        self.entries = kept;
    }

    fn forget(&mut self, e: &RaftEntry) {
        let n = entry_bytes(e);
        self.bytes -= n;
        KEPT.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        KEPT.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes read from the segments per step when serving old entries.
const READ_CHUNK: usize = 1 << 20;

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e)),
    }
}

fn read_error(e: impl ToString) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_error(e: impl ToString) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Empties a replica that left its group: the log (every batch) and the Raft files beside
/// it, so the disk is freed and a later return to the group starts from nothing. Blocking; the
/// group must be shut down first.
pub fn forget(log: &PartitionLog) -> Result<(), String> {
    // From nothing: offset 0, log index 0, as a new replica.
    log.restart_at(0, 0).map_err(|e| e.to_string())?;
    let storage = log.storage();
    for name in [VOTE_FILE, STATE_FILE, APPLIED_FILE, SNAPSHOT_FILE] {
        let path = log.dir().join(name);
        if storage.exists(&path) {
            storage
                .remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }
    storage
        .sync_dir(log.dir())
        .map_err(|e| format!("cannot sync {}: {e}", log.dir().display()))
}

/// A partition's snapshot (`raft-snapshot`): the log up to `meta.last_log_id` is no longer
/// needed here (retention deleted it, or the replica started from a snapshot of its leader's,
/// whose log no longer held those entries), and the log continues at `next_offset`. What a
/// follower receives is only `next_offset`: a partition's state machine is its log, and the
/// entries the snapshot covers are exactly the ones retention deleted everywhere it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta<u64, NodeInfo>,
    next_offset: u64,
}

impl SnapshotRecord {
    fn snapshot(&self) -> Snapshot<Rill> {
        let mut data = bytes::BytesMut::new();
        codec::encode(&self.next_offset, &mut data);
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }
    }
}

/// Loads the partition's snapshot record and finishes an install a crash interrupted: a log
/// that does not reach past the snapshot starts afresh after it. Blocking.
fn settle_snapshot(log: &PartitionLog) -> Result<Option<SnapshotRecord>, StorageError> {
    let record =
        load::<SnapshotRecord>(&*log.storage(), log.dir(), SNAPSHOT_FILE).map_err(read_error)?;
    if let Some(r) = &record
        && let Some(last) = r.meta.last_log_id
        && log.index_range().1 <= last.index
    {
        log.restart_at(r.next_offset, last.index + 1)
            .map_err(write_error)?;
    }
    Ok(record)
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LogMeta {
    purged: Option<LogId<u64>>,
}

#[derive(Debug)]
struct Inner {
    log: Arc<PartitionLog>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Appended entries: every one the writer has not published yet, and recent published
    /// ones within the limits (see the module notes).
    tail: Tail,
    last: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
}

/// A replicated partition's Raft log (also its own reader: clones share everything).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens the Raft log over `log`, reading the vote and the purge point beside it.
    pub fn open(log: Arc<PartitionLog>) -> Result<Self, StorageError> {
        let storage = log.storage();
        let dir = log.dir().to_path_buf();
        let vote = load::<Vote<u64>>(&*storage, &dir, VOTE_FILE)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?;
        let mut meta = load::<LogMeta>(&*storage, &dir, STATE_FILE)
            .map_err(read_error)?
            .unwrap_or_default();
        // Entries a snapshot covers count as purged, even if a crash came before the purge
        // was recorded.
        let snapshot = settle_snapshot(&log)?.and_then(|r| r.meta.last_log_id);
        meta.purged = meta.purged.max(snapshot);
        let (_, end) = log.index_range();
        let last = match end.checked_sub(1) {
            Some(i) if meta.purged.is_none_or(|p| p.index < i) => {
                let stored = log.read_indexed(i, 0).map_err(read_error)?;
                let (_, b) = stored
                    .into_iter()
                    .next()
                    .ok_or_else(|| read_error(format!("entry {i} unreadable")))?;
                Some(batch_entry(i, b).map_err(read_error)?.log_id)
            }
            _ => meta.purged,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                log,
                storage,
                dir,
                state: Mutex::new(State {
                    tail: Tail::default(),
                    last,
                    purged: meta.purged,
                    vote,
                }),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries `[from, to)` read back from the segments.
    async fn read_disk(&self, from: u64, to: u64) -> Result<Vec<RaftEntry>, StorageError> {
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut next = from;
            while next < to {
                let got = log.read_indexed(next, READ_CHUNK).map_err(read_error)?;
                if got.is_empty() {
                    break;
                }
                for (i, b) in got {
                    if i >= to {
                        break;
                    }
                    out.push(batch_entry(i, b).map_err(read_error)?);
                    next = i + 1;
                }
            }
            Ok(out)
        })
        .await
        .map_err(read_error)?
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<Rill> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError> {
        let (mut start, end) = bounds(&range);
        let (memory, tail_from) = {
            let st = self.state();
            if let Some(p) = st.purged {
                start = start.max(p.index + 1);
            }
            let tail_from = st.tail.entries.front().map_or(u64::MAX, |e| e.log_id.index);
            let memory: Vec<RaftEntry> = st
                .tail
                .entries
                .iter()
                .filter(|e| (start..end).contains(&e.log_id.index))
                .cloned()
                .collect();
            (memory, tail_from)
        };
        let mut out = if start < tail_from.min(end) {
            self.read_disk(start, tail_from.min(end)).await?
        } else {
            Vec::new()
        };
        out.extend(memory);
        Ok(out)
    }
}

impl RaftLogStorage<Rill> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Rill>, StorageError> {
        let st = self.state();
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.last.or(st.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let (storage, dir, v) = (self.inner.storage.clone(), self.inner.dir.clone(), *vote);
        tokio::task::spawn_blocking(move || save(&*storage, &dir, VOTE_FILE, &v, true))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.state().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.state().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Rill>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let published = self.inner.log.published_index();
        let mut last_pending = None;
        {
            let mut st = self.state();
            st.tail.trim(published);
            for entry in entries {
                let term = i32::try_from(entry.log_id.leader_id.term).map_err(|_| {
                    write_error(format!(
                        "term {} does not fit a leader epoch",
                        entry.log_id.leader_id.term
                    ))
                })?;
                let pending = self
                    .inner
                    .log
                    .append_entry(entry_batch(&entry), entry.log_id.index, term)
                    .map_err(write_error)?;
                st.last = Some(entry.log_id);
                st.tail.push(entry);
                last_pending = Some(pending);
            }
        }
        tokio::spawn(async move {
            let result = match last_pending {
                Some(p) => p.wait().await.map(|_| ()).map_err(std::io::Error::other),
                None => Ok(()),
            };
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let index = log_id.index;
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || log.truncate_from_index(index))
            .await
            .map_err(write_error)?
            .map_err(write_error)?;
        let before = match index.checked_sub(1) {
            Some(prev) => self
                .try_get_log_entries(prev..index)
                .await?
                .pop()
                .map(|e| e.log_id),
            None => None,
        };
        let mut st = self.state();
        st.tail.retain(|e| e.log_id.index < index);
        st.last = before.or(st.purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let (storage, dir) = (self.inner.storage.clone(), self.inner.dir.clone());
        let meta = LogMeta {
            purged: Some(log_id),
        };
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || {
            save(&*storage, &dir, STATE_FILE, &meta, true).map_err(write_error)?;
            // Whole segments only: the rest stays on disk, hidden below the purge point.
            if let Some(offset) = log.offset_of_index(log_id.index + 1).map_err(write_error)? {
                log.delete_segments_before(offset).map_err(write_error)?;
            }
            Ok::<_, StorageError>(())
        })
        .await
        .map_err(write_error)??;
        let mut st = self.state();
        st.purged = Some(log_id);
        st.tail.retain(|e| e.log_id.index > log_id.index);
        if st.last.is_none_or(|l| l.index <= log_id.index) {
            st.last = Some(log_id);
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AppliedState {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
}

/// Called with every entry a [`Machine`] applies, in log order.
pub type ApplyHook = Box<dyn FnMut(&RaftEntry) + Send + Sync>;

/// A replicated partition's state machine: applying an entry commits its records.
pub struct Machine {
    log: Arc<PartitionLog>,
    state: AppliedState,
    saved_at: Option<Instant>,
    /// Without a saved state, every start applies the whole log again (the metadata group,
    /// whose state lives only in memory).
    persist: bool,
    hook: Option<ApplyHook>,
    /// The current snapshot, shared with the builder openraft runs beside the machine.
    snapshot: Arc<Mutex<Option<SnapshotRecord>>>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("log", &self.log.label())
            .field("applied", &self.state.applied)
            .finish()
    }
}

impl Machine {
    /// Opens the machine of `log`, which becomes a replicated log whose readers stop at the
    /// commit (the end of what was applied when the state was last saved).
    pub fn open(log: Arc<PartitionLog>) -> Result<Self, StorageError> {
        let mut state = load::<AppliedState>(&*log.storage(), log.dir(), APPLIED_FILE)
            .unwrap_or_else(|e| {
                tracing::warn!(partition = log.label(), error = %e, "applied Raft state unreadable; replaying the log from the start");
                None
            })
            .unwrap_or_default();
        let snapshot = settle_snapshot(&log)?;
        if let Some(r) = &snapshot
            && r.meta.last_log_id > state.applied
        {
            // Everything the snapshot covers was applied (the applied state was saved late).
            state.applied = r.meta.last_log_id;
            state.membership = r.meta.last_membership.clone();
        }
        let committed = match state.applied {
            Some(id) => log
                .offset_of_index(id.index + 1)
                .map_err(read_error)?
                .unwrap_or_else(|| log.high_watermark()),
            None => 0,
        };
        log.make_replicated(committed);
        Ok(Machine {
            log,
            state,
            saved_at: None,
            persist: true,
            hook: None,
            snapshot: Arc::new(Mutex::new(snapshot)),
        })
    }

    /// A machine that keeps nothing between starts (every start applies the whole log) and
    /// hands each applied entry to `hook`.
    pub fn replaying(log: Arc<PartitionLog>, hook: ApplyHook) -> Self {
        log.make_replicated(0);
        Machine {
            log,
            state: AppliedState::default(),
            saved_at: None,
            persist: false,
            hook: Some(hook),
            snapshot: Arc::default(),
        }
    }

    fn save(&mut self, synced: bool) {
        if !self.persist {
            return;
        }
        let (storage, dir) = (self.log.storage(), self.log.dir().to_path_buf());
        if let Err(e) = save(&*storage, &dir, APPLIED_FILE, &self.state, synced) {
            tracing::warn!(partition = self.log.label(), error = %e, "could not save the applied Raft state; a restart replays more of the log");
        }
        self.saved_at = Some(Instant::now());
    }
}

impl RaftStateMachine<Rill> for Machine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Vec::new());
        };
        let (first_index, last_index) = (first.log_id.index, last.log_id.index);
        // A follower may learn that entries are committed before its own writer has published
        // them; their offsets are known once it has.
        let mut published = self.log.subscribe_index();
        published
            .wait_for(|i| *i > last_index)
            .await
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let log = self.log.clone();
        let base = tokio::task::spawn_blocking(move || log.offset_of_index(first_index))
            .await
            .map_err(read_error)?
            .map_err(read_error)?
            .ok_or_else(|| read_error(format!("applied entry {first_index} is not in the log")))?;
        let mut offset = base;
        let mut out = Vec::with_capacity(entries.len());
        let mut membership_changed = false;
        for entry in &entries {
            if let Some(hook) = self.hook.as_mut() {
                hook(entry);
            }
            out.push(Applied {
                base_offset: offset,
            });
            offset += entry_records(entry);
            if let EntryPayload::Membership(m) = &entry.payload {
                self.state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                membership_changed = true;
            }
        }
        self.state.applied = Some(last.log_id);
        self.log.set_high_watermark(offset);
        if membership_changed
            || self
                .saved_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.save(membership_changed);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            log: self.log.clone(),
            applied: self.state.applied,
            membership: self.state.membership.clone(),
            current: self.snapshot.clone(),
            persist: self.persist,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// A snapshot from the leader: this replica's log lacks entries the leader no longer
    /// holds. Unless the log already holds the snapshot's last entry, it starts afresh after
    /// it, at the offset the leader sent; openraft then purges what the snapshot covers and
    /// replicates the rest.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sm_error = |e: String| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let last = meta
            .last_log_id
            .ok_or_else(|| sm_error("a snapshot without a last log id".into()))?;
        let next_offset: u64 = codec::decode(snapshot.get_ref(), "partition snapshot")
            .map_err(|e| sm_error(e.to_string()))?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            next_offset,
        };
        let log = self.log.clone();
        let persist = self.persist;
        let saved = record.clone();
        let hw = tokio::task::spawn_blocking(move || {
            if persist {
                save(&*log.storage(), log.dir(), SNAPSHOT_FILE, &saved, true)
                    .map_err(|e| sm_error(e.to_string()))?;
            }
            let held = log
                .read_indexed(last.index, 0)
                .map_err(read_error)?
                .into_iter()
                .next()
                .map(|(i, b)| batch_entry(i, b).map(|e| e.log_id))
                .transpose()
                .map_err(read_error)?;
            if held != Some(last) {
                log.restart_at(next_offset, last.index + 1)
                    .map_err(write_error)?;
            }
            // The commit is at least the end of the snapshot.
            let hw = log
                .offset_of_index(last.index + 1)
                .map_err(read_error)?
                .unwrap_or(next_offset);
            Ok::<_, StorageError>(hw)
        })
        .await
        .map_err(|e| sm_error(e.to_string()))??;
        tracing::info!(
            partition = self.log.label(),
            index = last.index,
            next_offset,
            "installed the leader's snapshot"
        );
        self.state.applied = Some(last);
        self.state.membership = meta.last_membership.clone();
        self.log
            .set_high_watermark(hw.max(self.log.high_watermark()));
        self.save(true);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Rill>>, StorageError> {
        Ok(self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(SnapshotRecord::snapshot))
    }
}

/// Builds a partition's snapshot for retention: up to the last entry of the oldest segments
/// retention would delete now (`PartitionLog::retention_index`), never past what was applied.
/// openraft then purges the log up to it (`LogStore::purge` deletes those segments), and a
/// follower that still needs them gets the snapshot instead. A snapshot never goes past the
/// latest membership change (it must carry the membership in force at its last entry): until a
/// later segment expires, the current snapshot is returned again, which changes nothing.
#[derive(Debug)]
pub struct SnapshotBuilder {
    log: Arc<PartitionLog>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    current: Arc<Mutex<Option<SnapshotRecord>>>,
    persist: bool,
}

impl SnapshotBuilder {
    /// The new snapshot, if retention has anything to delete. Blocking.
    fn build(&self, now_ms: i64) -> Result<Option<SnapshotRecord>, StorageError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|r| r.meta.last_log_id);
        let Some(keep) = self.log.retention_index(now_ms) else {
            return Ok(None);
        };
        let applied_next = self.applied.map_or(0, |a| a.index + 1);
        let Some(last_index) = keep.min(applied_next).checked_sub(1) else {
            return Ok(None);
        };
        if current.is_some_and(|c| c.index >= last_index)
            || self
                .membership
                .log_id()
                .is_some_and(|m| m.index > last_index)
        {
            return Ok(None);
        }
        let Some((i, b)) = self
            .log
            .read_indexed(last_index, 0)
            .map_err(read_error)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let last = batch_entry(i, b).map_err(read_error)?.log_id;
        let Some(next_offset) = self
            .log
            .offset_of_index(last_index + 1)
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        let record = SnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: self.membership.clone(),
                snapshot_id: format!("{}-{}", last.leader_id.term, last.index),
            },
            next_offset,
        };
        if self.persist {
            save(
                &*self.log.storage(),
                self.log.dir(),
                SNAPSHOT_FILE,
                &record,
                true,
            )
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        }
        Ok(Some(record))
    }
}

impl RaftSnapshotBuilder<Rill> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Rill>, StorageError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let builder = SnapshotBuilder {
            log: self.log.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            current: self.current.clone(),
            persist: self.persist,
        };
        let built = tokio::task::spawn_blocking(move || builder.build(now_ms))
            .await
            .map_err(read_error)??;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = built {
            tracing::info!(partition = self.log.label(), index = ?record.meta.last_log_id.map(|l| l.index), next_offset = record.next_offset, "snapshot for retention");
            *current = Some(record);
        }
        // Not newer than the current one (or none at all): openraft keeps what it has.
        Ok(current.as_ref().map_or_else(
            || Snapshot {
                meta: SnapshotMeta::default(),
                snapshot: Box::new(Cursor::new(Vec::new())),
            },
            SnapshotRecord::snapshot,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogConfig;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<Rill, LogStore, Machine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Machine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = PartitionLog::open(dir.path(), "t-0".into(), config(), true).unwrap();
            let log = Arc::new(log);
            let machine = Machine::open(log.clone())?;
            Ok((dir, LogStore::open(log)?, machine))
        }
    }

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            fsync: rill_protocol::FsyncPolicy::Always,
            retention_ms: 0,
            retention_bytes: 0,
            producer_expiration_ms: 86_400_000,
        }
    }

    type S = Suite<Rill, LogStore, Machine, Builder, tempfile::TempDir>;

    macro_rules! suite_cases {
        ($($name:ident),* $(,)?) => {
            vec![$((stringify!($name), Box::new(|ls, sm| Box::pin(S::$name(ls, sm)) as Case)),)*]
        };
    }
    type Case = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>>>>;
    type Named = (&'static str, Box<dyn Fn(LogStore, Machine) -> Case>);

    fn entry(index: u64, bytes: usize) -> RaftEntry {
        RaftEntry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(bytes::Bytes::from(vec![0u8; bytes])),
        }
    }

    #[test]
    fn the_tail_keeps_published_entries_up_to_its_limit() {
        let mut tail = Tail::default();
        for i in 0..6 {
            tail.push(entry(i, 2 << 20));
        }
        // Nothing published: everything stays, whatever its size.
        tail.trim(0);
        assert_eq!(tail.entries.len(), 6);
        // All but the last published: the oldest go until the tail is within its limit.
        tail.trim(5);
        let left: Vec<u64> = tail.entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(left, [3, 4, 5]);
        assert!(tail.bytes <= KEEP_BYTES, "{}", tail.bytes);
        // Dropped by truncation: counted out too.
        tail.retain(|e| e.log_id.index < 4);
        assert_eq!((tail.entries.len(), tail.bytes), (1, (2 << 20) + 64));
    }

    #[test]
    fn openraft_storage_suite() {
        // Every case of openraft's suite that drives the log store. Left out: the cases that
        // apply entries the log does not hold (last_membership_in_log*, get_membership_from_*,
        // get_initial_state_membership_from_log_and_sm, *_last_log_gt_sm, *_last_log_lt_sm,
        // *_re_apply_committed, last_id_in_log, last_applied_state, snapshot_meta, apply_*,
        // transfer_snapshot). The suite treats the state machine as separate from the log;
        // here applying an entry commits the records the log holds for it, so it waits for the
        // log to hold it. The machine is tested below against a log that holds what it applies.
        let cases: Vec<Named> = suite_cases!(
            get_membership_initial,
            last_membership_in_log_initial,
            get_initial_state_without_init,
            get_initial_state_with_state,
            get_initial_state_log_ids,
            save_vote,
            get_log_entries,
            limited_get_log_entries,
            try_get_log_entry,
            initial_logs,
            get_log_state,
            get_log_id,
            purge_logs_upto_0,
            purge_logs_upto_5,
            purge_logs_upto_20,
            delete_logs_since_11,
            delete_logs_since_0,
            append_to_log
        );
        let mut failed = Vec::new();
        for (name, case) in cases {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = rt.block_on(async {
                let (_dir, ls, sm) = Builder.build().await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), case(ls, sm)).await
            });
            let ok = matches!(outcome, Ok(Ok(())));
            eprintln!("suite case {name}: {}", if ok { "ok" } else { "FAILED" });
            if !ok {
                failed.push(name);
            }
        }
        assert!(failed.is_empty(), "failed: {failed:?}");
    }

    fn membership_entry(index: u64) -> RaftEntry {
        let nodes = std::collections::BTreeMap::from([
            (1u64, NodeInfo::default()),
            (2, NodeInfo::default()),
        ]);
        let members = openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes);
        RaftEntry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Membership(members),
        }
    }

    fn data_entry(term: u64, index: u64, records: usize) -> RaftEntry {
        let mut b = rill_protocol::batch::BatchBuilder::with_capacity(256);
        for r in 0..records {
            b.push(None, format!("{index}-{r}").as_bytes(), &[], 0);
        }
        RaftEntry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Normal(b.finish()),
        }
    }

    #[tokio::test]
    async fn applying_entries_commits_their_records_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let (log, _) = PartitionLog::open(dir.path(), "t-0".into(), config(), true).unwrap();
            Arc::new(log)
        };
        let log = open();
        let mut machine = Machine::open(log.clone()).unwrap();
        let entries = vec![
            membership_entry(0),
            data_entry(1, 1, 3),
            data_entry(1, 2, 2),
            data_entry(2, 3, 4),
        ];
        for e in &entries {
            let term = e.log_id.leader_id.term as i32;
            log.append_entry(entry_batch(e), e.log_id.index, term)
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        assert_eq!(
            log.high_watermark(),
            0,
            "nothing is visible before it is applied"
        );
        // Entries read back are the entries written: terms, payloads, the membership.
        let mut store = LogStore::open(log.clone()).unwrap();
        let back = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(back.len(), 4);
        for (a, b) in back.iter().zip(&entries) {
            assert_eq!(a.log_id, b.log_id);
            match (&a.payload, &b.payload) {
                (EntryPayload::Normal(x), EntryPayload::Normal(y)) => {
                    assert_eq!(
                        x.get(21..),
                        y.get(21..),
                        "same records (offset and term are stamped)"
                    )
                }
                (EntryPayload::Membership(x), EntryPayload::Membership(y)) => assert_eq!(x, y),
                other => panic!("payload kinds differ: {other:?}"),
            }
        }
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(entries[3].log_id)
        );
        let applied = machine.apply(entries[..2].to_vec()).await.unwrap();
        assert_eq!(
            applied,
            [Applied { base_offset: 0 }, Applied { base_offset: 1 }]
        );
        assert_eq!(
            log.high_watermark(),
            4,
            "the control batch holds one record"
        );
        let applied = machine.apply(entries[2..].to_vec()).await.unwrap();
        assert_eq!(
            applied,
            [Applied { base_offset: 4 }, Applied { base_offset: 6 }]
        );
        assert_eq!(log.high_watermark(), 10);
        let (last, membership) = machine.applied_state().await.unwrap();
        assert_eq!(last, Some(entries[3].log_id));
        assert_eq!(membership.log_id(), &Some(entries[0].log_id));
        machine.save(false);
        drop((machine, store, log));
        // After a restart: the state is back and readers see the commit at once.
        let log = open();
        let mut machine = Machine::open(log.clone()).unwrap();
        assert_eq!(log.high_watermark(), 10);
        let (last, membership) = machine.applied_state().await.unwrap();
        assert_eq!(last, Some(entries[3].log_id));
        assert_eq!(membership.log_id(), &Some(entries[0].log_id));
        let mut store = LogStore::open(log.clone()).unwrap();
        // A divergent suffix is cut by log index, across the offsets it held.
        store.truncate(entries[2].log_id).await.unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(entries[1].log_id)
        );
        assert_eq!(log.index_range(), (0, 2));
        assert_eq!(
            log.high_watermark(),
            4,
            "the cut reaches below the old commit only in this test"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installed_snapshot_survives_a_restart_and_a_crash_mid_install() {
        let open = |dir: &std::path::Path| {
            let (log, _) = PartitionLog::open(dir, "t-0".into(), config(), true).unwrap();
            Arc::new(log)
        };
        let write = |log: &PartitionLog, e: &RaftEntry| {
            let term = e.log_id.leader_id.term as i32;
            log.append_entry(entry_batch(e), e.log_id.index, term)
        };
        let member = membership_entry(0);
        let last = LogId::new(openraft::CommittedLeaderId::new(2, 0), 9);
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::new(
                Some(member.log_id),
                match &member.payload {
                    EntryPayload::Membership(m) => m.clone(),
                    _ => unreachable!(),
                },
            ),
            snapshot_id: "2-9".into(),
        };
        let mut data = bytes::BytesMut::new();
        codec::encode(&40u64, &mut data);

        // This replica holds entries 0 and 1; the leader's snapshot covers up to 9, and the
        // log continues at offset 40.
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut machine = tokio::task::block_in_place(|| Machine::open(log.clone())).unwrap();
        let mut store = tokio::task::block_in_place(|| LogStore::open(log.clone())).unwrap();
        for e in [member.clone(), data_entry(1, 1, 3)] {
            write(&log, &e).unwrap().wait().await.unwrap();
        }
        machine
            .install_snapshot(&meta, Box::new(Cursor::new(data.to_vec())))
            .await
            .unwrap();
        store.purge(last).await.unwrap();
        assert_eq!(log.index_range(), (10, 10));
        assert_eq!(log.high_watermark(), 40);
        let next = data_entry(2, 10, 2);
        let ack = write(&log, &next).unwrap().wait().await.unwrap();
        assert_eq!(ack.base_offset, 40);
        drop((machine, store, log));

        let log = open(dir.path());
        let mut machine = tokio::task::block_in_place(|| Machine::open(log.clone())).unwrap();
        let mut store = tokio::task::block_in_place(|| LogStore::open(log.clone())).unwrap();
        assert_eq!(machine.applied_state().await.unwrap().0, Some(last));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(last));
        assert_eq!(state.last_log_id, Some(next.log_id));
        let current = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(last));
        let offset: u64 = codec::decode(current.snapshot.get_ref(), "snapshot").unwrap();
        assert_eq!(offset, 40);
        assert_eq!(log.high_watermark(), 40, "entry 10 is not applied yet");
        drop((machine, store, log));

        // A crash after the snapshot was recorded and before the log started afresh: opening
        // finishes the install.
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        for e in [member.clone(), data_entry(1, 1, 3)] {
            write(&log, &e).unwrap().wait().await.unwrap();
        }
        let record = SnapshotRecord {
            meta: meta.clone(),
            next_offset: 40,
        };
        save(&*log.storage(), dir.path(), SNAPSHOT_FILE, &record, true).unwrap();
        drop(log);
        let log = open(dir.path());
        let mut machine = tokio::task::block_in_place(|| Machine::open(log.clone())).unwrap();
        let mut store = tokio::task::block_in_place(|| LogStore::open(log.clone())).unwrap();
        assert_eq!(log.index_range(), (10, 10));
        assert_eq!(log.stats().log_start_offset, 40);
        assert_eq!(machine.applied_state().await.unwrap().0, Some(last));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(
            (state.last_purged_log_id, state.last_log_id),
            (Some(last), Some(last))
        );
    }
}
