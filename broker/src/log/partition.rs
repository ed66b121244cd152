//! A partition's log as the rest of the broker sees it: append, read, look up offsets.

use super::error::{AppendError, ReadError, StorageError, TruncateError};
use super::producer_state;
use super::recovery::{self, RecoveryReport};
use super::segment::{self, Segment};
use super::writer::{Command, Cut, Job, RaftPosition, Writer};
use crate::storage::Storage;
use bytes::Bytes;
use rill_protocol::FsyncPolicy;
use rill_protocol::batch::{self, RecordIter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// Storage settings of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Delete sealed segments whose newest record is older than this (0: keep forever).
    pub retention_ms: u64,
    /// Delete the oldest sealed segments while the partition is larger than this (0: no limit).
    pub retention_bytes: u64,
    /// Forget an idempotent producer's sequences after this long without a write from it.
    pub producer_expiration_ms: u64,
}

impl LogConfig {
    /// Largest segment size: positions in the index are 32-bit.
    pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 4096 || self.segment_bytes > Self::MAX_SEGMENT_BYTES {
            return Err(format!(
                "segment_bytes must be between 4096 and {}, got {}",
                Self::MAX_SEGMENT_BYTES,
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be at least 1".into());
        }
        Ok(())
    }
}

/// State shared between the writer thread and readers.
#[derive(Debug)]
pub(super) struct Shared {
    /// Segments in offset order; the last is the active one. Holds only committed data.
    pub view: RwLock<Vec<Segment>>,
    /// The high watermark: offset after the last committed record. Fetches wait on it.
    pub high_watermark: watch::Sender<u64>,
    /// Set once an fsync failed; the partition then refuses writes (fail-stop).
    pub failed: Mutex<Option<String>>,
    /// Offset after the last record known to be on disk: every record below it was covered by
    /// a completed fsync. Equal to the high watermark under `fsync=always`; under
    /// `fsync=interval` the records from here to the high watermark are the window a power
    /// loss could take.
    pub durable: watch::Sender<u64>,
    /// Where the partition's files live.
    pub storage: Arc<dyn Storage>,
    pub dir: PathBuf,
    /// Idempotent producers the writer holds state for (a metric).
    pub producers: std::sync::atomic::AtomicUsize,
    /// Log index after the last batch published in `view`.
    pub published_index: watch::Sender<u64>,
    /// A replicated partition: the high watermark follows the Raft commit
    /// ([`PartitionLog::set_high_watermark`]), not the writer.
    pub replicated: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Lowers the durable offset to `offset` after a truncation.
    pub(super) fn cut_durable(&self, offset: u64) {
        self.durable.send_if_modified(|d| {
            let cut = *d > offset;
            *d = (*d).min(offset);
            cut
        });
    }

    /// Sets the durable offset to `offset`, forward or back (a log started afresh there).
    pub(super) fn reset_durable(&self, offset: u64) {
        self.durable.send_replace(offset);
    }

    pub(super) fn is_replicated(&self) -> bool {
        self.replicated.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn set_producers(&self, n: usize) {
        self.producers
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that an fsync covered every record below `offset`.
    pub(super) fn advance_durable(&self, offset: u64) {
        self.durable.send_if_modified(|d| {
            let advanced = offset > *d;
            *d = (*d).max(offset);
            advanced
        });
    }

    /// Marks the partition fail-stop after an fsync error; later appends are refused.
    pub(super) fn fail_stop(&self, label: &str, e: &StorageError) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_none() {
            tracing::error!(partition = label, error = %e, "fsync failed; the partition refuses further writes until the broker restarts");
            *failed = Some(e.to_string());
            // After a failed fsync the page cache may still hold writes that never reach the
            // disk; a restart must not serve them. Record how far the data is known durable.
            let durable = *self.durable.borrow();
            if let Err(e) = recovery::write_fail_mark(&*self.storage, &self.dir, durable) {
                tracing::error!(partition = label, error = %e, durable, "could not record the durable offset after the failed fsync; a restart may serve records written after it");
            }
        }
    }
}

/// fsyncs the active segment every `interval` until `stop` is dropped (`fsync=interval:MS`).
fn run_syncer(
    label: String,
    shared: Arc<Shared>,
    interval: std::time::Duration,
    stop: crossbeam_channel::Receiver<()>,
) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        // Read before choosing the file: everything published by now is either in the active
        // segment, which this fsync covers, or in a sealed one, which its roll synced.
        let published = *shared.high_watermark.borrow();
        let active = {
            let view = shared.view.read().unwrap_or_else(|p| p.into_inner());
            view.last().map(|s| (s.file.clone(), s.path.clone()))
        };
        let started = std::time::Instant::now();
        let result = active.as_ref().map(|(file, _)| file.sync_data());
        crate::metrics::global().fsync(started.elapsed());
        if let (Some((_, path)), Some(Err(e))) = (active, result) {
            shared.fail_stop(
                &label,
                &StorageError::Io {
                    op: "fsync",
                    path,
                    source: e,
                },
            );
            return;
        }
        shared.advance_durable(published);
    }
}

type Syncer = Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>;

fn spawn_syncer(
    label: &str,
    dir: &Path,
    shared: &Arc<Shared>,
    interval: Option<std::time::Duration>,
) -> Result<Syncer, StorageError> {
    let Some(interval) = interval else {
        return Ok(None);
    };
    let (stop, stopped) = crossbeam_channel::bounded(0);
    let (l, sh) = (label.to_string(), shared.clone());
    let handle = std::thread::Builder::new()
        .name(format!("rill-syncer-{label}"))
        .spawn(move || run_syncer(l, sh, interval, stopped))
        .map_err(StorageError::io("spawn syncer thread for", dir))?;
    Ok(Some((stop, handle)))
}

fn stop_syncer(syncer: Syncer) {
    if let Some((stop, handle)) = syncer {
        drop(stop);
        let _ = handle.join();
    }
}

/// Acknowledgement of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub base_offset: u64,
    pub log_end_offset: u64,
    /// A retry of a batch already stored: nothing was written and `base_offset` is the
    /// original's.
    pub duplicate: bool,
}

/// An append that has been queued in order and will be answered once committed.
#[derive(Debug)]
pub struct PendingAppend {
    reply: oneshot::Receiver<Result<AppendAck, AppendError>>,
    records: u64,
}

impl PendingAppend {
    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub async fn wait(self) -> Result<AppendAck, AppendError> {
        self.reply.await.unwrap_or(Err(AppendError::ShuttingDown))
    }

    /// Blocking wait, for callers outside an async runtime.
    pub fn wait_blocking(self) -> Result<AppendAck, AppendError> {
        self.reply
            .blocking_recv()
            .unwrap_or(Err(AppendError::ShuttingDown))
    }
}

#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches; the first contains the requested offset.
    pub batches: Bytes,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
    pub segments: u32,
}

/// One partition's log. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct PartitionLog {
    label: String,
    dir: PathBuf,
    shared: Arc<Shared>,
    commands: crossbeam_channel::Sender<Command>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The interval syncer: dropping the sender stops it.
    syncer: Mutex<Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>>,
    config: Mutex<LogConfig>,
    /// For a log kept small by compaction rather than by retention (committed offsets in a
    /// cluster): every record below this offset was superseded by a later rewrite, so whole
    /// sealed segments below it may go whatever the retention settings say. 0: none.
    superseded_below: std::sync::atomic::AtomicU64,
}

impl PartitionLog {
    /// Opens (recovering if needed) the log in `dir` on the real disk and starts its writer
    /// thread. Blocking.
    pub fn open(
        dir: &Path,
        label: String,
        config: LogConfig,
        clean: bool,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        Self::open_on(crate::storage::disk(), dir, label, config, clean)
    }

    /// [`PartitionLog::open`] on the given storage (a simulated disk in tests).
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: &Path,
        label: String,
        config: LogConfig,
        clean: bool,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let mut recovered =
            recovery::recover(&*storage, dir, &label, config.index_interval_bytes, clean)?;
        let (producers, producer_report) = producer_state::recover(
            &*storage,
            dir,
            &label,
            &recovered.segments,
            unix_ms(),
            i64::try_from(config.producer_expiration_ms).unwrap_or(i64::MAX),
        )?;
        recovered.report.producers = producer_report;
        let hw = recovered.segments.last().map_or(0, |s| s.next_offset);
        let next_index = recovered.segments.last().map_or(0, |s| s.next_index);
        let shared = Arc::new(Shared {
            view: RwLock::new(recovered.segments),
            high_watermark: watch::Sender::new(hw),
            failed: Mutex::new(None),
            // Recovery leaves everything it kept on disk (a clean stop synced it; an unclean
            // start syncs the tail).
            durable: watch::Sender::new(hw),
            storage,
            dir: dir.to_path_buf(),
            producers: std::sync::atomic::AtomicUsize::new(producers.len()),
            published_index: watch::Sender::new(next_index),
            replicated: std::sync::atomic::AtomicBool::new(false),
        });
        // Unbounded on purpose: `append` runs on async workers and must never block. What it
        // holds is bounded before it gets here: a connection reserves every produced batch in
        // the partition's and the broker's queue budgets (`crate::backpressure`) first.
        let (tx, rx) = crossbeam_channel::unbounded();
        let sync_interval = config.fsync.interval();
        let config_copy = config.clone();
        let writer = Writer::new(
            label.clone(),
            dir.to_path_buf(),
            config,
            shared.clone(),
            rx,
            recovered.tail_indexer,
            producers,
        )?;
        let handle = std::thread::Builder::new()
            .name(format!("rill-writer-{label}"))
            .spawn(move || writer.run())
            .map_err(StorageError::io("spawn writer thread for", dir))?;
        let syncer = spawn_syncer(&label, dir, &shared, sync_interval)?;
        let log = PartitionLog {
            label,
            dir: dir.to_path_buf(),
            shared,
            commands: tx,
            writer: Mutex::new(Some(handle)),
            syncer: Mutex::new(syncer),
            config: Mutex::new(config_copy),
            superseded_below: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((log, recovered.report))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage the partition's files live on.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.shared.storage.clone()
    }

    /// Validates `batch` and queues it for the writer. Appends from one caller are committed in
    /// the order this is called. Never blocks.
    pub fn append(&self, batch: Bytes) -> Result<PendingAppend, AppendError> {
        self.queue(batch, None)
    }

    fn queue(
        &self,
        batch: Bytes,
        raft: Option<RaftPosition>,
    ) -> Result<PendingAppend, AppendError> {
        let header = batch::validate(&batch).map_err(AppendError::InvalidBatch)?;
        if header.producer_id >= 0 && (header.producer_epoch < 0 || header.base_sequence < 0) {
            return Err(AppendError::InvalidBatch(
                rill_protocol::DecodeError::Invalid {
                    what: "producer fields",
                    reason: "a batch with a producer id needs an epoch and a sequence of at least 0",
                },
            ));
        }
        let records = header.records();
        if let Some(why) = self
            .shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Err(AppendError::Failed(why.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append(Job {
                batch,
                header,
                raft,
                reply,
            }))
            .map_err(|_| AppendError::ShuttingDown)?;
        Ok(PendingAppend {
            reply: rx,
            records: u64::from(records),
        })
    }

    /// Idempotent producers with state on this partition.
    pub fn producers(&self) -> usize {
        self.shared
            .producers
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn high_watermark(&self) -> u64 {
        *self.shared.high_watermark.borrow()
    }

    /// Turns this into a replicated partition's log, before anything reads it: from now on
    /// readers see only what [`set_high_watermark`](Self::set_high_watermark) allows (the
    /// Raft commit), starting at `committed`, and appends come from Raft ([`append_entry`](
    /// Self::append_entry)).
    pub fn make_replicated(&self, committed: u64) {
        self.shared
            .replicated
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.high_watermark.send_replace(committed);
    }

    /// Moves a replicated partition's high watermark (its Raft commit, as an offset).
    pub fn set_high_watermark(&self, offset: u64) {
        self.shared.high_watermark.send_if_modified(|hw| {
            let moved = *hw != offset;
            *hw = offset;
            moved
        });
    }

    /// The log index after the last published batch.
    pub fn published_index(&self) -> u64 {
        *self.shared.published_index.borrow()
    }

    /// A receiver of the log index after the last published batch.
    pub fn subscribe_index(&self) -> watch::Receiver<u64> {
        self.shared.published_index.subscribe()
    }

    /// Queues a Raft entry of a replicated partition: written as it is at log index `index`
    /// (which must be the next one) with `term` in its leader epoch, never refused as a
    /// duplicate. Acknowledged when durable under the fsync policy. Never blocks.
    pub fn append_entry(
        &self,
        batch: Bytes,
        index: u64,
        term: i32,
    ) -> Result<PendingAppend, AppendError> {
        self.queue(batch, Some(RaftPosition { index, term }))
    }

    /// Offset after the last record a completed fsync covered: equal to the high watermark under
    /// `fsync=always`; under `fsync=interval` the records from here to the high watermark are
    /// what a power loss could take.
    pub fn durable_offset(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// A receiver that changes whenever the durable offset advances.
    #[cfg(test)]
    pub(super) fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// A receiver that changes whenever the high watermark advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.high_watermark.subscribe()
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, Vec<Segment>> {
        self.shared.view.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PartitionStats {
        let view = self.view();
        let end = view.last().map_or(0, |s| s.next_offset);
        PartitionStats {
            log_start_offset: view.first().map_or(0, |s| s.base),
            // A replicated partition's log may hold an uncommitted tail past it.
            high_watermark: if self.shared.is_replicated() {
                end.min(self.high_watermark())
            } else {
                end
            },
            size_bytes: view.iter().map(|s| s.size).sum(),
            segments: view.len() as u32,
        }
    }

    /// Reads whole batches starting with the one holding `offset`. Blocking (positioned reads).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, ReadError> {
        let view = self.view();
        let start = view.first().map_or(0, |s| s.base);
        // A replicated partition's log may run ahead of its commit; readers stop at the commit.
        let hw = view
            .last()
            .map_or(0, |s| s.next_offset)
            .min(self.high_watermark());
        if offset < start || offset > hw {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                start,
                end: hw,
            });
        }
        let result = |batches| ReadResult {
            batches,
            high_watermark: hw,
            log_start_offset: start,
        };
        // The segment holding `offset`, or the next one if corruption left a gap.
        let first = view.partition_point(|s| s.base <= offset).saturating_sub(1);
        // Inside a damaged stretch of a sealed segment: say what is lost and where to resume.
        if let Some((seg, hole)) = view
            .get(first)
            .and_then(|s| s.holes.iter().find(|h| h.contains(offset)).map(|h| (s, h)))
        {
            return Err(ReadError::RecordsLost {
                from: hole.first_offset,
                to: hole.next_offset,
                path: seg.path.clone(),
            });
        }
        let Some(seg) = view[first..]
            .iter()
            .find(|s| s.next_offset > offset)
            .filter(|_| offset < hw)
        else {
            return Ok(result(Bytes::new()));
        };
        let entry = match offset.checked_sub(seg.base) {
            Some(rel) => seg.index.entry_for(u32::try_from(rel).unwrap_or(u32::MAX)),
            None => seg.index.entry_for(0),
        };
        let (pos, expected) = (entry.position, seg.base + u64::from(entry.rel_offset));
        let (file, path, end) = (seg.file.clone(), seg.path.clone(), seg.size);
        drop(view);
        let batches = segment::read_from(
            &*file,
            &path,
            u64::from(pos),
            expected,
            end,
            offset,
            max_bytes,
        )?;
        Ok(result(below(batches, hw)))
    }

    /// Log indexes held: the first batch's and the one after the last batch published.
    pub fn index_range(&self) -> (u64, u64) {
        let view = self.view();
        (
            view.first().map_or(0, |s| s.first_index),
            view.last().map_or(0, |s| s.next_index),
        )
    }

    /// The base offset of the batch with log index `log_index`, or the log end offset for the
    /// index after the last batch; `None` outside the log. Blocking.
    pub fn offset_of_index(&self, log_index: u64) -> Result<Option<u64>, ReadError> {
        let view = self.view();
        if view.last().is_some_and(|s| s.next_index == log_index) {
            return Ok(view.last().map(|s| s.next_offset));
        }
        Ok(locate(&view, log_index)?.map(|(_, _, offset)| offset))
    }

    /// Removes the batch with log index `index` and every later one, after the appends queued
    /// before this call (nothing if the log ends before it). Blocking.
    pub fn truncate_from_index(&self, index: u64) -> Result<(), TruncateError> {
        self.cut(Cut::Index(index))
    }

    /// Drops the whole log and starts it afresh, empty, at `offset` with log index `index`,
    /// after the appends queued before this call: a replica installing a snapshot of its
    /// Raft group (everything up to `index - 1` is held elsewhere or deleted by retention).
    /// Blocking.
    pub fn restart_at(&self, offset: u64, index: u64) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        let shutting_down = || StorageError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            reason: "the partition is shutting down".into(),
        };
        self.commands
            .send(Command::Restart {
                offset,
                index,
                reply,
            })
            .map_err(|_| shutting_down())?;
        rx.blocking_recv().unwrap_or_else(|_| Err(shutting_down()))
    }

    /// The idempotent producers' state as of every append queued so far (a partition leader's
    /// sequencer starts from it).
    pub async fn producer_state(&self) -> Option<super::producers::Producers> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Producers(reply)).ok()?;
        rx.await.ok()
    }

    fn cut(&self, cut: Cut) -> Result<(), TruncateError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Truncate(cut, reply))
            .map_err(|_| TruncateError::ShuttingDown)?;
        rx.blocking_recv()
            .unwrap_or(Err(TruncateError::ShuttingDown))
    }
    /// Whole batches from the one with log index `from` on, each with its log index, as
    /// stored (base offset written in): about `max_bytes` at most but always one batch, and
    /// never past the end of the segment holding `from`. Empty outside the published log.
    /// Blocking.
    pub fn read_indexed(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, ReadError> {
        let view = self.view();
        let Some((at, pos, offset)) = locate(&view, from)? else {
            return Ok(Vec::new());
        };
        let seg = &view[at];
        let (file, path, end) = (seg.file.clone(), seg.path.clone(), seg.size);
        drop(view);
        let bytes = segment::read_from(&*file, &path, pos, offset, end, offset, max_bytes)?;
        Ok(batch::Batches::new(bytes)
            .enumerate()
            .map(|(i, b)| (from + i as u64, b))
            .collect())
    }

    /// The offset of the first record with a timestamp at or after `ts`, if any. Blocking.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>, ReadError> {
        let view = self.view();
        let Some(seg) = view.iter().find(|s| s.max_timestamp >= ts && s.size > 0) else {
            return Ok(None);
        };
        let entry = seg.index.entry_for(seg.index.scan_start_for_time(ts));
        let mut pos = u64::from(entry.position);
        let mut expected = seg.base + u64::from(entry.rel_offset);
        let (file, path, end) = (seg.file.clone(), seg.path.clone(), seg.size);
        drop(view);
        while pos < end {
            let h = segment::read_header(&*file, &path, pos, end)?;
            if h.max_timestamp >= ts {
                let batch =
                    segment::read_from(&*file, &path, pos, expected, end, h.base_offset, 0)?;
                let first = batch::Batches::new(batch).next().unwrap_or_default();
                let records = RecordIter::new(first).map_err(|e| corrupt(&path, pos, e))?;
                for r in records {
                    let r = r.map_err(|e| corrupt(&path, pos, e))?;
                    if r.timestamp >= ts {
                        return Ok(Some(r.offset));
                    }
                }
            }
            expected = h.last_offset() + 1;
            pos += h.total_len() as u64;
        }
        Ok(None)
    }

    /// Removes every record from `offset` on (which must start a batch), after the appends
    /// queued before this call: the building block for a replica cutting a divergent suffix.
    /// Readers see the high watermark move back. Blocking.
    pub fn truncate_from(&self, offset: u64) -> Result<(), TruncateError> {
        self.cut(Cut::Offset(offset))
    }

    /// Deletes whole sealed segments that end at or before `offset`, moving the log start
    /// forward. The active segment is never deleted. Readers holding a deleted segment's file
    /// keep reading it until they let go. Returns how many segments were removed. Blocking.
    pub fn delete_segments_before(&self, offset: u64) -> Result<usize, StorageError> {
        let removed: Vec<Segment> = {
            let mut view = self.shared.view.write().unwrap_or_else(|p| p.into_inner());
            let sealed = view.len().saturating_sub(1);
            let n = view[..sealed]
                .iter()
                .take_while(|s| s.next_offset <= offset)
                .count();
            view.drain(..n).collect()
        };
        for seg in &removed {
            recovery::remove_segment_files(&*self.shared.storage, &seg.path)?;
        }
        if !removed.is_empty() {
            recovery::sync_dir(&*self.shared.storage, &self.dir)?;
            // A replicated log's indexes must survive the loss of the oldest segment's index.
            if self.shared.is_replicated()
                && let Some((base, index)) = self.view().first().map(|s| (s.base, s.first_index))
            {
                recovery::write_log_start(&*self.shared.storage, &self.dir, base, index)?;
            }
        }
        Ok(removed.len())
    }

    /// The partition's current storage settings.
    pub fn config(&self) -> LogConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies new settings to the live partition: the writer takes them before its next round,
    /// and the interval syncer is restarted if the fsync interval changed.
    pub fn reconfigure(&self, new: LogConfig) -> Result<(), StorageError> {
        let mut current = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if *current == new {
            return Ok(());
        }
        let _ = self.commands.send(Command::Reconfigure(new.clone()));
        if current.fsync.interval() != new.fsync.interval() {
            let mut syncer = self.syncer.lock().unwrap_or_else(|p| p.into_inner());
            stop_syncer(syncer.take());
            *syncer = spawn_syncer(&self.label, &self.dir, &self.shared, new.fsync.interval())?;
        }
        *current = new;
        Ok(())
    }

    /// Deletes the sealed segments that retention no longer keeps: those whose newest record
    /// is older than `retention_ms` (before `now_ms`), then the oldest while the partition is
    /// larger than `retention_bytes`. The active segment is never deleted. Blocking.
    ///
    /// A record's timestamp is the producer's claim; one far in the future would otherwise pin
    /// its segment (and every later one) forever. So a segment's age is taken from the earlier
    /// of its newest timestamp and its last write (the file's modification time, which only
    /// appends move): a producer can make data expire early only by claiming old timestamps,
    /// which it could do anyway, and can no longer make it live forever.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        // A replicated partition's log is its Raft log: its Raft group deletes old segments
        // through a snapshot (`retention_index`), so that a follower that is behind gets the
        // snapshot instead of entries that are gone.
        if self.shared.is_replicated() {
            return Ok(0);
        }
        match self.retention_cut(now_ms) {
            Some((offset, _)) => self.delete_segments_before(offset),
            None => Ok(0),
        }
    }

    /// For a replicated log: the log index of the first batch retention keeps, if it would
    /// delete any segment now, never past the high watermark (only committed entries go).
    /// The Raft group snapshots up to the entry before it and purges (`raft::store`).
    pub fn retention_index(&self, now_ms: i64) -> Option<u64> {
        let hw = self.high_watermark();
        self.retention_cut(now_ms)
            .filter(|(offset, _)| *offset <= hw)
            .map(|(_, index)| index)
    }

    /// Records below `offset` were superseded by a later rewrite of the live ones
    /// (compaction): retention may delete the sealed segments wholly below it. Never moves
    /// back.
    pub fn supersede_below(&self, offset: u64) {
        self.superseded_below
            .fetch_max(offset, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes in the segments that hold records at or after `offset`.
    pub fn size_from(&self, offset: u64) -> u64 {
        self.view()
            .iter()
            .filter(|s| s.next_offset > offset || s.next_offset == s.base)
            .map(|s| s.size)
            .sum()
    }

    /// See [`PartitionLog::supersede_below`] (0: nothing superseded yet).
    pub fn superseded_below(&self) -> u64 {
        self.superseded_below
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where retention cuts the log now: the base offset and log index of the first sealed
    /// or active segment it keeps, if it deletes any.
    fn retention_cut(&self, now_ms: i64) -> Option<(u64, u64)> {
        let config = self.config();
        {
            let view = self.view();
            let sealed = &view[..view.len().saturating_sub(1)];
            let mut n = 0;
            if config.retention_ms > 0 {
                let oldest_kept =
                    now_ms.saturating_sub(i64::try_from(config.retention_ms).unwrap_or(i64::MAX));
                n = sealed
                    .iter()
                    .take_while(|s| newest_ms(s) < oldest_kept)
                    .count();
            }
            if config.retention_bytes > 0 {
                let mut kept: u64 = view[n..].iter().map(|s| s.size).sum();
                while n < sealed.len() && kept > config.retention_bytes {
                    kept -= sealed[n].size;
                    n += 1;
                }
            }
            let superseded = self.superseded_below();
            n = n.max(
                sealed
                    .iter()
                    .take_while(|s| s.next_offset <= superseded)
                    .count(),
            );
            match n.checked_sub(1) {
                Some(last) => sealed.get(last).map(|s| (s.next_offset, s.next_index)),
                None => None,
            }
        }
    }

    /// Stops the writer after it has committed everything queued, fsynced and written the
    /// active segment's index. Blocking; later appends fail with `ShuttingDown`.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(partition = %self.label, "writer thread panicked");
        }
        stop_syncer(self.syncer.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Whether the partition went fail-stop after an fsync error.
    pub fn failed(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What retention takes as the time of a segment's newest record: its newest timestamp,
/// capped by when it was last written (see `enforce_retention`).
fn newest_ms(seg: &Segment) -> i64 {
    let written = seg.file.modified_ms().unwrap_or(i64::MAX);
    seg.max_timestamp.min(written)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn corrupt(path: &Path, position: u64, e: rill_protocol::DecodeError) -> StorageError {
    segment::corrupt(path, position, e.to_string())
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The leading batches of `batches` (whole, back to back) that start below `end`: a read of a
/// replicated partition stops at its commit even where the log runs further.
fn below(mut batches: Bytes, end: u64) -> Bytes {
    let mut keep = 0;
    while let Some((base, len)) = batches.get(keep..).and_then(batch::peek) {
        if base >= end || keep + len > batches.len() {
            break;
        }
        keep += len;
    }
    batches.truncate(keep);
    batches
}

/// Where the batch with log index `log_index` starts: its segment (by position in the view),
/// byte position and base offset. `None` outside the published log.
pub(super) fn locate(
    view: &[Segment],
    log_index: u64,
) -> Result<Option<(usize, u64, u64)>, StorageError> {
    let i = view.partition_point(|s| s.first_index <= log_index);
    let Some(at) = i.checked_sub(1) else {
        return Ok(None);
    };
    let seg = &view[at];
    if log_index >= seg.next_index {
        return Ok(None);
    }
    let (mut pos, mut offset, mut index) = match seg.index.entry_for_index(log_index) {
        Some(e) => (
            u64::from(e.position),
            seg.base + u64::from(e.rel_offset),
            e.log_index,
        ),
        None => (0, seg.base, seg.first_index),
    };
    while index < log_index {
        let h = segment::read_header(&*seg.file, &seg.path, pos, seg.size)?;
        pos += h.total_len() as u64;
        offset = h.last_offset() + 1;
        index += 1;
    }
    Ok(Some((at, pos, offset)))
}
