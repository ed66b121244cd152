//! The partition writer: the one thread that appends to, rolls, syncs and truncates a
//! partition's active segment.
//!
//! It takes every append queued since its last round, writes them with one vectored write
//! (rewriting only each batch's 8-byte base offset, never copying the batch), and then:
//! - `fsync=always`: one `fdatasync` for the whole round (group commit), then publishes the new
//!   end to readers and acknowledges every append in the round;
//! - `fsync=interval:MS`: publishes and acknowledges at once; a separate syncer thread
//!   (`PartitionLog::open`) fsyncs the active segment every MS, so a slow flush of a large
//!   backlog never stalls appends. The writer starts write-back of every 4 MiB it writes
//!   (`sync_file_range`, not waiting), so that fsync finds little left to do: flushing a whole
//!   interval's writes at once held concurrent appends up for 40–80 ms on ext4.
//!
//! Batches of idempotent producers are checked against the partition's producer state
//! (`producers.rs`) in the same pass that assigns offsets, so the decision and the append are
//! in one order: a retry of a stored batch is answered with the original offsets and writes
//! nothing, a gap or a fenced epoch is refused. The state is updated as batches are placed and
//! put back if their write is rolled back, and saved in a snapshot at every roll and at a clean
//! shutdown (`producer_state.rs`).
//!
//! A failed write (a full disk, say) is rolled back by truncating to the round's start, and only
//! the appends in it fail; the partition keeps serving. A failed fsync leaves the file's state
//! unknown, so the partition turns fail-stop: every later append is refused.

use super::error::{AppendError, StorageError, TruncateError};
use super::index::{Extent, Indexer, SegmentIndex};
use super::partition::{AppendAck, LogConfig, Shared};
use super::producer_state;
use super::producers::{Producers, Saved, Verdict};
use super::recovery;
use crate::storage::StorageFile;
use bytes::Bytes;
use crossbeam_channel::Receiver;
use rill_protocol::FsyncPolicy;
use rill_protocol::batch::{self, BatchHeader};
use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Appends handled in one round at most, bounding a round's latency.
const MAX_ROUND: usize = 1024;
/// Slices per vectored write (two per batch, four per Raft entry), below the usual IOV_MAX of
/// 1024.
const MAX_SLICES: usize = 1000;
/// Under `fsync=interval`, how much is written before write-back of it is started.
const WRITEBACK_CHUNK: u64 = 4 << 20;

pub(super) enum Command {
    Append(Job),
    /// New settings, taken before the next round.
    Reconfigure(LogConfig),
    /// Cut every record from this offset on (a batch boundary), after the queued appends.
    Truncate(Cut, oneshot::Sender<Result<(), TruncateError>>),
    /// A copy of the idempotent producers' state, after the queued appends.
    Producers(oneshot::Sender<Producers>),
    /// Drop every segment and start the log afresh, empty, at this offset and log index
    /// (a replicated partition installing a snapshot), after the queued appends.
    Restart {
        offset: u64,
        index: u64,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Close,
}

pub(super) struct Job {
    pub batch: Bytes,
    pub header: BatchHeader,
    /// A replicated partition's Raft entry: the log index it must get and the term to stamp
    /// into its leader epoch. Written as it is, never refused by the sequence check: the
    /// leader decided what goes into the Raft log.
    pub raft: Option<RaftPosition>,
    pub reply: oneshot::Sender<Result<AppendAck, AppendError>>,
}

/// Where a truncation starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cut {
    /// At this offset, which must start a batch.
    Offset(u64),
    /// At the batch with this log index (nothing to cut if the log ends before it).
    Index(u64),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RaftPosition {
    pub index: u64,
    pub term: i32,
}

/// A batch as written: its base offset and, for a Raft entry, its term, each in place of the
/// batch's own bytes.
type Placement = ([u8; 8], Option<[u8; 4]>, Bytes);

/// Where the active segment stood before a write, to roll back to if it fails.
#[derive(Clone, Copy)]
struct Mark {
    written: u64,
    next_offset: u64,
    next_index: u64,
    indexer: Indexer,
    offsets: usize,
    times: usize,
    /// Length of the producer-state undo log.
    undo: usize,
}

/// How an append in a round is answered once the round is committed.
enum Placed {
    /// Written at this base offset.
    Written(u64),
    /// A retry of a batch stored at this base offset: nothing written.
    Duplicate(u64),
}

type Reply = oneshot::Sender<Result<AppendAck, AppendError>>;

pub(super) struct Writer {
    label: String,
    dir: PathBuf,
    config: LogConfig,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    seg_base: u64,
    /// Bytes written to the active segment (committed or not).
    written: u64,
    next_offset: u64,
    /// Log index of the next batch.
    next_index: u64,
    indexer: Indexer,
    /// Index entries for written batches not yet published to readers.
    pending: SegmentIndex,
    /// Whether this thread wrote since it last fsynced.
    dirty: bool,
    /// Under `fsync=interval`: the position up to which write-back has been started.
    writeback_from: u64,
    /// Idempotent producers' sequence windows, including batches placed in this round.
    producers: Producers,
    /// Producer state before each change of this round, to put back if its write fails.
    undo: Vec<Saved>,
    /// When idle producers were last expired (ms since the epoch).
    expired_at_ms: i64,
}

impl Writer {
    pub fn new(
        label: String,
        dir: PathBuf,
        config: LogConfig,
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        indexer: Indexer,
        producers: Producers,
    ) -> Result<Self, StorageError> {
        let (file, path, seg_base, written, next_offset, next_index) = {
            let view = shared.view.read().unwrap_or_else(|p| p.into_inner());
            let active = view.last().ok_or_else(|| StorageError::Corrupt {
                path: dir.clone(),
                position: 0,
                reason: "partition has no segment".into(),
            })?;
            (
                active.file.clone(),
                active.path.clone(),
                active.base,
                active.size,
                active.next_offset,
                active.next_index,
            )
        };
        Ok(Writer {
            label,
            dir,
            config,
            shared,
            rx,
            file,
            path,
            seg_base,
            written,
            next_offset,
            next_index,
            indexer,
            pending: SegmentIndex::default(),
            dirty: false,
            writeback_from: written,
            producers,
            undo: Vec::new(),
            expired_at_ms: now_ms(),
        })
    }

    pub fn run(mut self) {
        let mut jobs = Vec::with_capacity(MAX_ROUND);
        loop {
            let Some(first) = self.next_command() else {
                break;
            };
            let mut closing = false;
            let mut cmd = Some(first);
            while let Some(c) = cmd.take() {
                match c {
                    Command::Append(job) => jobs.push(job),
                    Command::Reconfigure(config) => {
                        // Settings apply from the next round: finish this one under the old ones.
                        self.round(&mut jobs);
                        self.config = config;
                    }
                    Command::Truncate(cut, reply) => {
                        // In order: the appends queued before it are written first.
                        self.round(&mut jobs);
                        let result = match cut {
                            Cut::Offset(offset) => self.truncate(offset),
                            Cut::Index(index) => self.truncate_at_index(index),
                        };
                        if let Err(TruncateError::Storage(e)) = &result {
                            // Half cut: refuse writes; the next start sorts out what is left.
                            self.fail_stop(e);
                        }
                        let _ = reply.send(result);
                    }
                    Command::Producers(reply) => {
                        self.round(&mut jobs);
                        let _ = reply.send(self.producers.clone());
                    }
                    Command::Restart {
                        offset,
                        index,
                        reply,
                    } => {
                        self.round(&mut jobs);
                        let result = self.restart(offset, index);
                        if let Err(e) = &result {
                            // Part done: refuse writes; the next start sorts out what is left.
                            self.fail_stop(e);
                        }
                        let _ = reply.send(result);
                    }
                    Command::Close => {
                        closing = true;
                        break;
                    }
                }
                if jobs.len() < MAX_ROUND {
                    cmd = self.rx.try_recv().ok();
                }
            }
            self.round(&mut jobs);
            self.shared.set_producers(self.producers.len());
            if closing {
                self.finish();
                break;
            }
        }
        // Anything still queued arrived after Close: refuse it.
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Append(job) = cmd {
                let _ = job.reply.send(Err(AppendError::ShuttingDown));
            }
        }
    }

    fn next_command(&mut self) -> Option<Command> {
        self.rx.recv().ok()
    }

    fn failed(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn mark(&self) -> Mark {
        Mark {
            written: self.written,
            next_offset: self.next_offset,
            next_index: self.next_index,
            indexer: self.indexer,
            offsets: self.pending.offsets.len(),
            times: self.pending.times.len(),
            undo: self.undo.len(),
        }
    }

    fn round(&mut self, jobs: &mut Vec<Job>) {
        if let Some(why) = self.failed() {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(AppendError::Failed(why.clone())));
            }
            return;
        }
        let now = now_ms();
        self.expire_producers(now);
        self.undo.clear();
        // Appends placed in this round, answered once it is committed.
        let mut written: Vec<(Reply, Placed)> = Vec::with_capacity(jobs.len());
        let mut chunk: Vec<Placement> = Vec::with_capacity(jobs.len().min(MAX_SLICES / 2));
        let mut chunk_slices = 0;
        let mut chunk_start = written.len();
        let mut mark = self.mark();
        let mut error: Option<AppendError> = None;
        for job in jobs.drain(..) {
            if let Some(e) = &error {
                let _ = job.reply.send(Err(duplicate(e)));
                continue;
            }
            let h = &job.header;
            let idempotent = h.producer_id >= 0;
            if let Some(raft) = job.raft
                && raft.index != self.next_index
            {
                let _ = job.reply.send(Err(AppendError::Failed(format!(
                    "Raft entry {} does not follow the log, which ends before {}",
                    raft.index, self.next_index
                ))));
                continue;
            }
            if idempotent && job.raft.is_none() {
                let records = i32::try_from(h.records()).unwrap_or(i32::MAX);
                match self.producers.check(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    records,
                ) {
                    Ok(Verdict::Append) => {}
                    Ok(Verdict::Duplicate { base_offset, .. }) => {
                        // Answered with this round, so never before the original is committed.
                        written.push((job.reply, Placed::Duplicate(base_offset)));
                        continue;
                    }
                    Err(e) => {
                        let _ = job.reply.send(Err(AppendError::Sequence(e)));
                        continue;
                    }
                }
            }
            let len = job.batch.len() as u64;
            let roll = self.written > 0 && self.written + len > self.config.segment_bytes;
            let slices = if job.raft.is_some() { 4 } else { 2 };
            if roll || chunk_slices + slices > MAX_SLICES {
                chunk_slices = 0;
                if let Err(e) = self.flush(&mut chunk, mark) {
                    let e = AppendError::from(e);
                    for (reply, _) in written.drain(chunk_start..) {
                        let _ = reply.send(Err(duplicate(&e)));
                    }
                    let _ = job.reply.send(Err(duplicate(&e)));
                    error = Some(e);
                    continue;
                }
                // Appends flushed so far stay written even if the roll fails.
                if roll && let Err(e) = self.roll() {
                    let e = AppendError::from(e);
                    let _ = job.reply.send(Err(duplicate(&e)));
                    error = Some(e);
                    continue;
                }
                chunk_start = written.len();
                mark = self.mark();
            }
            let base = self.next_offset;
            let rel = u32::try_from(base - self.seg_base).unwrap_or(u32::MAX);
            self.indexer.observe(
                rel,
                self.written,
                self.next_index,
                job.header.max_timestamp,
                &mut self.pending,
            );
            if idempotent {
                let h = &job.header;
                self.undo.push(self.producers.save(h.producer_id));
                let mut placed = *h;
                placed.base_offset = base;
                producer_state::apply(&mut self.producers, &placed, now);
            }
            self.written += len;
            self.next_offset = job.header.last_offset_delta as u64 + base + 1;
            self.next_index += 1;
            let term = job.raft.map(|r| r.term.to_be_bytes());
            chunk_slices += slices;
            chunk.push((base.to_be_bytes(), term, job.batch));
            written.push((job.reply, Placed::Written(base)));
        }
        if error.is_none()
            && let Err(e) = self.flush(&mut chunk, mark)
        {
            let e = AppendError::from(e);
            for (reply, _) in written.drain(chunk_start..) {
                let _ = reply.send(Err(duplicate(&e)));
            }
        }
        if written.is_empty() {
            return;
        }
        if let Some(why) = self.failed() {
            // An fsync failed during this round (at a roll): nothing in it may be acknowledged.
            for (reply, _) in written {
                let _ = reply.send(Err(AppendError::Failed(why.clone())));
            }
            return;
        }
        // A round of duplicates only wrote nothing: their originals are as durable as they
        // were acknowledged, so no fsync is owed for them.
        if written.iter().any(|(_, p)| matches!(p, Placed::Written(_))) {
            self.dirty = true;
        }
        let sync_now = self.config.fsync == FsyncPolicy::Always;
        if sync_now && let Err(e) = self.sync() {
            self.fail_stop(&e);
            let why = self.failed().unwrap_or_default();
            for (reply, _) in written {
                let _ = reply.send(Err(AppendError::Failed(why.clone())));
            }
            return;
        }
        self.publish();
        for (reply, placed) in written {
            let (base_offset, duplicate) = match placed {
                Placed::Written(base) => (base, false),
                Placed::Duplicate(base) => (base, true),
            };
            let _ = reply.send(Ok(AppendAck {
                base_offset,
                log_end_offset: self.next_offset,
                duplicate,
            }));
        }
        if !sync_now {
            // After the acknowledgements: starting write-back may block on a full device queue.
            self.start_writeback();
        }
    }

    /// Writes `chunk` at the end of the active segment; on failure truncates back to `mark`.
    fn flush(&mut self, chunk: &mut Vec<Placement>, mark: Mark) -> Result<(), StorageError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 4);
        for (offset, term, batch) in chunk.iter() {
            slices.push(IoSlice::new(offset));
            match term {
                None => slices.push(IoSlice::new(batch.get(8..).unwrap_or_default())),
                Some(term) => {
                    let at = batch::LEADER_EPOCH_AT;
                    slices.push(IoSlice::new(batch.get(8..at).unwrap_or_default()));
                    slices.push(IoSlice::new(term));
                    slices.push(IoSlice::new(batch.get(at + 4..).unwrap_or_default()));
                }
            }
        }
        let result = self
            .file
            .write_all_vectored_at(&mut slices, mark.written)
            .map_err(StorageError::io("write", &self.path));
        drop(slices);
        chunk.clear();
        if let Err(e) = result {
            self.rollback(mark);
            return Err(e);
        }
        Ok(())
    }

    fn rollback(&mut self, mark: Mark) {
        let undo = self.file.set_len(mark.written);
        if let Err(e) = undo {
            self.fail_stop(&StorageError::Io {
                op: "truncate after a failed write",
                path: self.path.clone(),
                source: e,
            });
        }
        self.written = mark.written;
        self.writeback_from = self.writeback_from.min(mark.written);
        self.next_offset = mark.next_offset;
        self.next_index = mark.next_index;
        self.indexer = mark.indexer;
        self.pending.offsets.truncate(mark.offsets);
        self.pending.times.truncate(mark.times);
        while self.undo.len() > mark.undo {
            if let Some(saved) = self.undo.pop() {
                self.producers.restore(saved);
            }
        }
    }

    /// Forgets producers idle for longer than `producer_expiration_ms`, checking at most once
    /// a minute.
    fn expire_producers(&mut self, now: i64) {
        let max_idle = i64::try_from(self.config.producer_expiration_ms).unwrap_or(i64::MAX);
        if now.saturating_sub(self.expired_at_ms) < max_idle.min(60_000) {
            return;
        }
        self.expired_at_ms = now;
        self.producers.expire(now, max_idle);
        self.shared.set_producers(self.producers.len());
    }

    /// Saves the producer state as of the log end, which must be durable (see
    /// `producer_state.rs`). A failure costs only a longer rebuild at the next start.
    fn snapshot_producers(&self) {
        if let Err(e) = producer_state::write_snapshot(
            &*self.shared.storage,
            &self.dir,
            self.next_offset,
            &self.producers,
        ) {
            tracing::warn!(partition = %self.label, error = %e, "could not save the idempotent-producer snapshot; the next start reads more of the log to rebuild it");
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if !self.dirty {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.file
            .sync_data()
            .map_err(StorageError::io("fsync", &self.path))?;
        crate::metrics::global().fsync(started.elapsed());
        self.dirty = false;
        self.shared.advance_durable(self.next_offset);
        Ok(())
    }

    /// Under `fsync=interval`, starts write-back of every whole `WRITEBACK_CHUNK` written since
    /// the last call, without waiting for it. The syncer's periodic fdatasync then finds little
    /// left to flush, so it holds up concurrent appends (ext4 journal commits) only briefly,
    /// instead of flushing a whole interval's writes at once.
    fn start_writeback(&mut self) {
        if self.written < self.writeback_from + WRITEBACK_CHUNK {
            return;
        }
        self.file
            .start_writeback(self.writeback_from, self.written - self.writeback_from);
        self.writeback_from = self.written;
    }

    /// Makes everything written so far visible to readers and wakes waiting fetches.
    fn publish(&mut self) {
        {
            let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
            if let Some(active) = view.last_mut() {
                active.size = self.written;
                active.next_offset = self.next_offset;
                active.next_index = self.next_index;
                active.max_timestamp = self.indexer.max_timestamp();
                active.index.append(&mut self.pending);
            }
        }
        self.shared.published_index.send_replace(self.next_index);
        // A replicated partition's high watermark is its Raft commit, set as entries apply.
        if !self.shared.is_replicated() {
            self.shared.high_watermark.send_replace(self.next_offset);
        }
    }

    /// Cuts the log back to the batch with log index `index`, if the log holds it.
    fn truncate_at_index(&mut self, index: u64) -> Result<(), TruncateError> {
        if index >= self.next_index {
            return Ok(());
        }
        let offset = {
            let view = self.shared.view.read().unwrap_or_else(|p| p.into_inner());
            super::partition::locate(&view, index)?
        };
        match offset {
            Some((_, _, offset)) => self.truncate(offset),
            None => Err(TruncateError::OutOfRange {
                offset: index,
                start: 0,
                end: self.next_index,
            }),
        }
    }

    /// Cuts the log back to `offset`, a batch boundary: later segments are deleted (newest
    /// first, so a crash part-way never leaves a later segment behind a shorter one), the
    /// segment holding `offset` is cut there and becomes the active one, its index is rebuilt
    /// from the entries before the cut, and the durable offset, the high watermark and the
    /// idempotent-producer state follow. Producer snapshots beyond the cut go first, so none
    /// can describe records that are no longer there.
    fn truncate(&mut self, offset: u64) -> Result<(), TruncateError> {
        if offset == self.next_offset {
            return Ok(());
        }
        let storage = self.shared.storage.clone();
        let (start, end) = {
            let view = self.shared.view.read().unwrap_or_else(|p| p.into_inner());
            (view.first().map_or(0, |s| s.base), self.next_offset)
        };
        if offset < start || offset > end {
            return Err(TruncateError::OutOfRange { offset, start, end });
        }
        producer_state::remove_snapshots_after(&*storage, &self.dir, offset)?;
        let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
        let keep = view.partition_point(|s| s.base <= offset).max(1);
        // Find the cut position first: refusing a bad offset must change nothing.
        let seg = &view[keep - 1];
        let rel = u32::try_from(offset - seg.base).unwrap_or(u32::MAX);
        let entry = seg.index.entry_for(rel);
        let (mut pos, mut next) = (
            u64::from(entry.position),
            seg.base + u64::from(entry.rel_offset),
        );
        let size = if keep == view.len() {
            self.written
        } else {
            seg.size
        };
        while next < offset && pos < size {
            let h = super::segment::read_header(&*seg.file, &seg.path, pos, size)?;
            pos += h.total_len() as u64;
            next = h.last_offset() + 1;
        }
        if next != offset {
            return Err(TruncateError::NotABatchBoundary(offset));
        }
        for later in view.drain(keep..).rev() {
            recovery::remove_segment_files(&*storage, &later.path)?;
        }
        recovery::sync_dir(&*storage, &self.dir)?;
        let seg = view.last_mut().ok_or_else(|| StorageError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            reason: "partition has no segment".into(),
        })?;
        seg.file
            .set_len(pos)
            .map_err(StorageError::io("truncate", &seg.path))?;
        seg.file
            .sync_data()
            .map_err(StorageError::io("fsync", &seg.path))?;
        // It is the active segment now: its index is written when it is sealed or closed.
        for ext in ["index", "timeindex"] {
            let _ = storage.remove_file(&seg.path.with_extension(ext));
        }
        // Keep the index entries before the cut, then index the rest up to it exactly as
        // recovery would (from the last kept entry on).
        seg.index.offsets.retain(|e| e.rel_offset < rel);
        seg.index.times.retain(|e| e.rel_offset < rel);
        seg.holes.retain(|h| h.position < pos);
        let last = seg.index.offsets.last().copied();
        let mut indexer = Indexer::resume(
            self.config.index_interval_bytes,
            last.map(|e| u64::from(e.position)),
            seg.index.times.last().map_or(i64::MIN, |t| t.timestamp),
        );
        let (from_pos, from_offset, from_index) =
            last.map_or((0, seg.base, seg.first_index), |e| {
                (
                    u64::from(e.position),
                    seg.base + u64::from(e.rel_offset),
                    e.log_index,
                )
            });
        let mut found = SegmentIndex::default();
        let outcome = super::segment::scan(
            &*seg.file,
            &seg.path,
            seg.base,
            super::segment::Span {
                start: from_pos,
                expected: from_offset,
                index: from_index,
                file_len: pos,
            },
            &mut indexer,
            &mut found,
            false,
        )?;
        seg.index.append(&mut found);
        seg.size = pos;
        seg.next_offset = offset;
        seg.next_index = outcome.next_index;
        seg.max_timestamp = outcome.max_timestamp;
        self.file = seg.file.clone();
        self.path = seg.path.clone();
        self.seg_base = seg.base;
        self.written = pos;
        self.writeback_from = self.writeback_from.min(pos);
        self.next_offset = offset;
        self.next_index = outcome.next_index;
        self.indexer = indexer;
        self.pending = SegmentIndex::default();
        self.dirty = false;
        let now = now_ms();
        let (producers, _) = producer_state::recover(
            &*storage,
            &self.dir,
            &self.label,
            &view,
            now,
            i64::try_from(self.config.producer_expiration_ms).unwrap_or(i64::MAX),
        )?;
        self.producers = producers;
        drop(view);
        self.shared.cut_durable(offset);
        self.shared.published_index.send_replace(self.next_index);
        self.shared
            .high_watermark
            .send_if_modified(|hw| std::mem::replace(hw, (*hw).min(offset)) != *hw);
        tracing::info!(partition = %self.label, offset, "log truncated");
        Ok(())
    }

    /// Deletes every segment (newest first, so a crash part-way leaves a shorter log, never
    /// one with a gap) and the producer snapshots, records the new start in `log-start`, and
    /// creates an empty active segment at `offset` with log index `index`. The idempotent
    /// producers are forgotten; readers see the log start and end at `offset`.
    fn restart(&mut self, offset: u64, index: u64) -> Result<(), StorageError> {
        let storage = self.shared.storage.clone();
        producer_state::remove_snapshots_after(&*storage, &self.dir, 0)?;
        let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
        while let Some(seg) = view.pop() {
            recovery::remove_segment_files(&*storage, &seg.path)?;
        }
        recovery::sync_dir(&*storage, &self.dir)?;
        recovery::write_log_start(&*storage, &self.dir, offset, index)?;
        let seg = recovery::create_segment(&*storage, &self.dir, offset, index)?;
        self.file = seg.file.clone();
        self.path = seg.path.clone();
        self.seg_base = offset;
        view.push(seg);
        drop(view);
        self.written = 0;
        self.writeback_from = 0;
        self.next_offset = offset;
        self.next_index = index;
        self.indexer = Indexer::new(self.config.index_interval_bytes);
        self.pending = SegmentIndex::default();
        self.dirty = false;
        self.producers = Producers::default();
        self.shared.set_producers(0);
        self.shared.reset_durable(offset);
        self.shared.published_index.send_replace(index);
        if !self.shared.is_replicated() {
            self.shared.high_watermark.send_replace(offset);
        }
        tracing::info!(partition = %self.label, offset, index, "log started afresh");
        Ok(())
    }

    /// Seals the active segment (synced, published, index written) and starts a new one.
    fn roll(&mut self) -> Result<(), StorageError> {
        // Sealed segments are always durable, whatever the policy.
        self.dirty = true;
        if let Err(e) = self.sync() {
            self.fail_stop(&e);
            return Err(e);
        }
        self.publish();
        self.write_active_index();
        self.snapshot_producers();
        let segment = recovery::create_segment(
            &*self.shared.storage,
            &self.dir,
            self.next_offset,
            self.next_index,
        )?;
        self.file = segment.file.clone();
        self.path = segment.path.clone();
        self.seg_base = segment.base;
        self.written = 0;
        self.writeback_from = 0;
        self.indexer = Indexer::new(self.config.index_interval_bytes);
        self.shared
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(segment);
        tracing::debug!(partition = %self.label, base = self.seg_base, "rolled to a new segment");
        Ok(())
    }

    fn write_active_index(&self) {
        let view = self.shared.view.read().unwrap_or_else(|p| p.into_inner());
        if let Some(active) = view.last()
            && let Err(e) = active.index.write(
                &*self.shared.storage,
                &active.path,
                Extent {
                    len: active.size,
                    end_offset: active.next_offset,
                    end_index: active.next_index,
                },
            )
        {
            tracing::warn!(partition = %self.label, file = %active.path.display(), error = %e, "could not write segment index; it will be rebuilt at the next start");
        }
    }

    fn finish(&mut self) {
        // In interval mode the syncer may have synced already; a final sync is cheap either way.
        self.dirty = true;
        if let Err(e) = self.sync() {
            self.fail_stop(&e);
            return;
        }
        self.publish();
        self.write_active_index();
        self.snapshot_producers();
    }

    fn fail_stop(&self, e: &StorageError) {
        self.shared.fail_stop(&self.label, e);
    }
}

/// The same error again, for the next append it fails (`io::Error` is not `Clone`).
fn duplicate(e: &AppendError) -> AppendError {
    let copy = |s: &StorageError| match s {
        StorageError::Io { op, path, source } => StorageError::Io {
            op,
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::Corrupt {
            path,
            position,
            reason,
        } => StorageError::Corrupt {
            path: path.clone(),
            position: *position,
            reason: reason.clone(),
        },
    };
    match e {
        AppendError::InvalidBatch(d) => AppendError::InvalidBatch(d.clone()),
        AppendError::DiskFull(s) => AppendError::DiskFull(copy(s)),
        AppendError::Storage(s) => AppendError::Storage(copy(s)),
        AppendError::Failed(w) => AppendError::Failed(w.clone()),
        AppendError::ShuttingDown => AppendError::ShuttingDown,
        AppendError::Sequence(e) => AppendError::Sequence(*e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
