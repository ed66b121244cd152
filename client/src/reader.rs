//! Reading a partition: single fetches and the [`PartitionReader`] cursor.

use crate::admin::topic_name;
use crate::client::Client;
use crate::error::Error;
use crate::pipeline::{Lead, Pipeline};
use bytes::Bytes;
use rill_protocol::TopicName;
use rill_protocol::batch::{BatchHeader, Batches, Record, RecordIter, RecordView, ValidBatch};
use rill_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, OffsetSpec, ProduceRequest, TopicPartition,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    /// The next record produced after the reader starts.
    Latest,
    Offset(u64),
    /// The first record at or after this time (ms since the epoch); the end if there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Soft cap on bytes per fetch (one batch larger than this is still returned whole).
    pub max_bytes: u32,
    /// Wait until at least this many bytes are available...
    pub min_bytes: u32,
    /// ...or this long has passed.
    pub max_wait: Duration,
    /// Cap on records per fetch: whole batches holding at most this many, but always the
    /// first batch whole (a batch is never split). `None`: bytes alone bound a fetch.
    pub max_records: Option<u32>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
            max_records: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FetchResult {
    /// Records at or after the requested offset, in order.
    pub records: Vec<Record>,
    /// Offset after the last record of the returned batches (where the next fetch starts).
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// What one fetch returned: validated batches, read in place.
#[derive(Debug)]
pub struct Fetched {
    batches: Vec<ValidBatch>,
    /// Records below this offset (the head of the first batch) are not yielded.
    start: u64,
    bytes: usize,
    /// Offset after the last record of the returned batches (where the next fetch starts).
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// The reader's buffer space this fetch holds, given back when it is dropped.
    _budget: Option<OwnedSemaphorePermit>,
}

impl Fetched {
    /// The records at or after the requested offset, in order, borrowing from the fetch (no
    /// allocation per record).
    pub fn records(&self) -> impl Iterator<Item = RecordView<'_>> + '_ {
        let start = self.start;
        self.batches
            .iter()
            .flat_map(move |b| b.records().skip(skipped(b, start)))
    }

    /// The same records as owned [`Record`]s (sharing the fetch's memory).
    pub fn to_records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.len());
        for b in &self.batches {
            out.extend(
                b.records()
                    .skip(skipped(b, self.start))
                    .map(|r| r.to_owned(b.records_bytes())),
            );
        }
        out
    }

    /// Number of records [`Fetched::records`] yields.
    pub fn len(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.len() - skipped(b, self.start))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The validated batches as received (control batches left out); the first may begin
    /// before the requested offset.
    pub fn batches(&self) -> &[ValidBatch] {
        &self.batches
    }

    /// Bytes received.
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// Keeps `room` (buffer space) until this fetch is dropped.
    pub(crate) fn hold(&mut self, room: OwnedSemaphorePermit) {
        self._budget = Some(room);
    }
}

/// A fetch's payload, each batch checked once (CRC and layout), as a [`Fetched`].
pub(crate) fn checked(
    offset: u64,
    response: &FetchResponse,
    payload: Bytes,
) -> Result<Fetched, Error> {
    let bytes = payload.len();
    let mut batches = Vec::new();
    let mut next_offset = offset;
    for batch in Batches::new(payload) {
        let batch = ValidBatch::new(batch)
            .map_err(|e| Error::Protocol(format!("corrupt batch from broker: {e}")))?;
        next_offset = next_offset.max(batch.header().last_offset() + 1);
        // A replicated partition's control batches (the brokers' Raft bookkeeping) take
        // offsets but hold no records for applications, as in Kafka.
        if !batch.header().is_control() {
            batches.push(batch);
        }
    }
    Ok(Fetched {
        batches,
        start: offset,
        bytes,
        next_offset,
        high_watermark: response.high_watermark,
        log_start_offset: response.log_start_offset,
        _budget: None,
    })
}

/// Where the fetch after this payload starts, read from its batch headers alone (what
/// [`checked`] computes once it has checked them; if they are damaged, it fails instead).
pub(crate) fn end_of(offset: u64, payload: &Bytes) -> u64 {
    Batches::new(payload.clone())
        .filter_map(|b| BatchHeader::parse(&b).ok())
        .fold(offset, |end, h| end.max(h.last_offset() + 1))
}

/// Records at the head of `batch` below `start` (offsets in a valid batch are consecutive).
fn skipped(batch: &ValidBatch, start: u64) -> usize {
    let base = batch.header().base_offset;
    (start.saturating_sub(base) as usize).min(batch.len())
}

/// A fetch handed out one owned record at a time, or what is left of it as a fetch: the
/// one way `PartitionReader::next` and the group `Consumer` walk a fetch.
#[derive(Debug)]
pub(crate) struct Unread {
    fetched: Fetched,
    /// The batch being read, and its records as owned ones.
    batch: usize,
    records: Option<RecordIter>,
    /// Offset after the last record handed out; records below it are skipped.
    position: u64,
}

impl Unread {
    pub(crate) fn new(fetched: Fetched) -> Self {
        Unread {
            position: fetched.start,
            fetched,
            batch: 0,
            records: None,
        }
    }

    /// The next record, if the fetch has one left.
    pub(crate) fn next_record(&mut self) -> Option<Record> {
        loop {
            if let Some(it) = &mut self.records {
                // Validated when fetched: a record cannot fail to read here.
                for r in it.by_ref().map_while(Result::ok) {
                    if r.offset >= self.position {
                        self.position = r.offset + 1;
                        return Some(r);
                    }
                }
                self.records = None;
                self.batch += 1;
            }
            let batch = self.fetched.batches.get(self.batch)?;
            self.records = Some(RecordIter::from_valid(batch.clone()));
        }
    }

    /// Offset of the next record (at least the position), or where the fetch ends.
    pub(crate) fn position(&self) -> u64 {
        self.records
            .as_ref()
            .and_then(RecordIter::peek_offset)
            .or_else(|| {
                let next = self.batch + usize::from(self.records.is_some());
                self.fetched
                    .batches
                    .get(next)
                    .map(|b| b.header().base_offset)
            })
            .map_or(self.fetched.next_offset, |o| o.max(self.position))
    }

    /// Where the fetch ends (the next fetch's offset).
    pub(crate) fn end(&self) -> u64 {
        self.fetched.next_offset
    }

    /// What was not handed out yet, as a fetch.
    pub(crate) fn rest(self) -> Fetched {
        let mut fetched = self.fetched;
        fetched
            .batches
            .drain(..self.batch.min(fetched.batches.len()));
        fetched.start = self.position;
        fetched
    }
}

impl Client {
    /// One fetch from `offset`, long-polling per `options`, as owned records. Checks every
    /// batch once (CRC and layout).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<FetchResult, Error> {
        let fetched = self
            .fetch_batches(topic, partition, offset, options)
            .await?;
        Ok(FetchResult {
            next_offset: fetched.next_offset,
            high_watermark: fetched.high_watermark,
            log_start_offset: fetched.log_start_offset,
            records: fetched.to_records(),
        })
    }

    /// One fetch from `offset`, long-polling per `options`, as validated batches whose records
    /// are read in place ([`Fetched::records`]). Each batch is checked once here (CRC and
    /// layout) and never again.
    pub async fn fetch_batches(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<Fetched, Error> {
        let (response, payload) = self
            .fetch_raw(&topic_name(topic)?, partition, offset, options)
            .await?;
        checked(offset, &response, payload)
    }

    /// One fetch, its payload not yet checked.
    pub(crate) async fn fetch_raw(
        &self,
        topic: &TopicName,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<(FetchResponse, Bytes), Error> {
        let request = FetchRequest {
            topic: topic.clone(),
            partition,
            offset,
            max_bytes: options.max_bytes,
            min_bytes: options.min_bytes,
            max_wait_ms: u32::try_from(options.max_wait.as_millis()).unwrap_or(u32::MAX),
            max_records: options.max_records.unwrap_or(0),
        };
        self.call_partition(topic, partition, &request).await
    }

    /// Writes one pre-built record batch (see `rill_protocol::batch::BatchBuilder`) to the
    /// connection now, and returns a future of its base offset once acknowledged. Batches sent
    /// one after another keep their order; awaiting several futures at once pipelines them.
    /// This is the low-level path under [`crate::Producer`]; it does not retry.
    pub async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: bytes::Bytes,
    ) -> Result<impl Future<Output = Result<u64, Error>> + use<>, Error> {
        let request = ProduceRequest {
            topic: topic_name(topic)?,
            partition,
        };
        let leader = self.leader_for(&request.topic, partition).await;
        let response = leader.enqueue(&request, batch).await?;
        Ok(async move { response.await.map(|(r, _)| r.base_offset) })
    }

    /// Resolves an offset specification on the broker (`None`: no record at or after a timestamp).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, Error> {
        let request = ListOffsetsRequest {
            topic: topic_name(topic)?,
            partition,
            spec,
        };
        let response = self.call_partition(&request.topic, partition, &request);
        Ok(response.await?.0.offset)
    }
}

/// Reads one partition in order from a starting point, following new records as they arrive.
///
/// Fetches run ahead of the application in a task of their own: while it handles one fetch's
/// records, the next are already on their way (several at once through a backlog), up to [`PartitionReader::with_buffer_bytes`]
/// bytes (4 MiB by default) fetched and not yet handed out or dropped. Records come one at a
/// time ([`PartitionReader::next`]), as owned vectors ([`PartitionReader::poll`]), or as whole
/// fetches read in place ([`PartitionReader::poll_batch`], the fastest).
#[derive(Debug)]
pub struct PartitionReader {
    client: Client,
    topic: TopicName,
    partition: u32,
    /// Offset after the last record handed out (where the application's reading continues).
    position: u64,
    options: FetchOptions,
    buffer_bytes: usize,
    prefetch: Option<Prefetch>,
    /// A fetch being handed out one record at a time by `next`.
    current: Option<Unread>,
}

#[derive(Debug)]
struct Prefetch {
    rx: mpsc::Receiver<Result<Fetched, Error>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Default bytes fetched ahead of the application.
pub const DEFAULT_BUFFER_BYTES: usize = 4 << 20;

impl PartitionReader {
    pub async fn new(
        client: Client,
        topic: &str,
        partition: u32,
        start: StartOffset,
    ) -> Result<Self, Error> {
        let latest = || client.list_offset(topic, partition, OffsetSpec::Latest);
        let position = match start {
            StartOffset::Offset(o) => o,
            StartOffset::Earliest => client
                .list_offset(topic, partition, OffsetSpec::Earliest)
                .await?
                .unwrap_or(0),
            StartOffset::Latest => latest().await?.unwrap_or(0),
            StartOffset::Timestamp(ts) => match client
                .list_offset(topic, partition, OffsetSpec::Timestamp(ts))
                .await?
            {
                Some(o) => o,
                None => latest().await?.unwrap_or(0),
            },
        };
        Ok(PartitionReader {
            client,
            topic: topic_name(topic)?,
            partition,
            position,
            options: FetchOptions::default(),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            prefetch: None,
            current: None,
        })
    }

    pub fn with_options(mut self, options: FetchOptions) -> Self {
        self.options = options;
        self.prefetch = None;
        self
    }

    /// Bytes fetched ahead of the application at most (one fetch, `max_bytes`, at least; a
    /// single batch larger than that still arrives whole).
    pub fn with_buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes.max(1);
        self.prefetch = None;
        self
    }

    /// Offset of the next record this reader will return.
    pub fn position(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(self.position, |c| c.position().max(self.position))
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The next fetch: what is left of one `next` was reading, or the next from the prefetch
    /// task (started here, from the reader's position, if it is not running).
    pub async fn poll_batch(&mut self) -> Result<Fetched, Error> {
        if let Some(c) = self.current.take() {
            let rest = c.rest();
            self.position = rest.next_offset;
            return Ok(rest);
        }
        let prefetch = match &mut self.prefetch {
            Some(p) => p,
            None => self.prefetch.insert(self.start_prefetch()),
        };
        match prefetch.rx.recv().await {
            Some(Ok(fetched)) => {
                self.position = self.position.max(fetched.next_offset);
                Ok(fetched)
            }
            Some(Err(e)) => {
                // The task has ended; the next poll starts again from the position.
                self.prefetch = None;
                Err(e)
            }
            None => {
                self.prefetch = None;
                Err(Error::Protocol("the reader's fetch task ended".into()))
            }
        }
    }

    /// One fetch's records (may be empty: nothing arrived within `max_wait`).
    pub async fn poll(&mut self) -> Result<Vec<Record>, Error> {
        Ok(self.poll_batch().await?.to_records())
    }

    /// The next record, waiting for one to be produced if necessary.
    pub async fn next(&mut self) -> Result<Record, Error> {
        loop {
            if let Some(c) = &mut self.current {
                if let Some(r) = c.next_record() {
                    self.position = r.offset + 1;
                    return Ok(r);
                }
                self.position = self.position.max(c.end());
                self.current = None;
            }
            let fetched = self.poll_batch().await?;
            self.current = Some(Unread::new(fetched));
        }
    }

    fn start_prefetch(&self) -> Prefetch {
        let (tx, rx) = mpsc::channel(64);
        let mut pipeline = Pipeline::new(
            self.client.clone(),
            TopicPartition {
                topic: self.topic.clone(),
                partition: self.partition,
            },
            self.position,
            self.options.clone(),
            Arc::new(Semaphore::new(self.buffer_bytes)),
            self.buffer_bytes,
            Lead::Reserve,
        );
        let task = tokio::spawn(async move {
            loop {
                let result = pipeline.next().await;
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        Prefetch {
            rx,
            task: task.abort_handle(),
        }
    }
}
