//! [`Producer`]: batches records per partition and returns each record's offset.
//!
//! `send` appends the record to its partition's open batch and returns a [`Delivery`] that
//! resolves to the record's offset once the broker acknowledged the batch (under the topic's
//! fsync policy). A batch is closed when it reaches `batch_bytes`, when `linger` has passed
//! since its first record, or on [`Producer::flush`], and handed to its partition's sender
//! task.
//!
//! Each partition has one sender task. It numbers the partition's batches (idempotence: the
//! producer id from `InitProducer`, an epoch and the sequence of the batch's first record,
//! sealed into the batch with its CRC when it is first sent), keeps up to `max_in_flight`
//! batches outstanding (at most 5 with idempotence, the window the broker remembers), and
//! takes the answers in order. After a retriable failure (a lost connection, a timeout, a full
//! disk) it waits for every outstanding answer, then resends the partition's unacknowledged
//! batches in their original order with their original sequence numbers, with backoff, until
//! `delivery_timeout` after the batch was opened. The broker recognises a resent batch that
//! it had already stored (its first answer was lost) and answers with the original offsets,
//! so a retry neither duplicates nor reorders, and each record's `Delivery` resolves once,
//! with the offset it is stored at. Without idempotence (`idempotent: false`) the same order
//! is kept but a retry of a stored batch stores it again (at-least-once).
//!
//! A broker that forgot the producer (its state expired after `producer_id_expiration_ms`
//! of silence, or `fsync=interval` lost acknowledged batches in a power cut) answers
//! `OutOfOrderSequence` with no failure before it; the sender then starts the partition over
//! at a new epoch and sequence 0. A named producer (`producer_name`) cannot renumber itself:
//! its records fail with that error. `ProducerFenced` (a newer instance with the same name
//! started) fails every pending record and every later `send`.
//!
//! Memory is bounded by `buffer_bytes`: `send` waits when that much is unacknowledged.
//! [`Producer::watch_retries`] says while batches are being retried.

use crate::admin::{Admin, topic_name};
use crate::client::Client;
use crate::error::Error;
use crate::partitioner::partition_for_key;
use bytes::Bytes;
use bytes::BytesMut;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rill_protocol::ErrorCode;
use rill_protocol::TopicName;
use rill_protocol::batch::{self, BatchBuilder, HEADER_LEN};
use rill_protocol::messages::{ProduceRequest, ProduceResponse};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// Send a batch once it reaches this many bytes.
    pub batch_bytes: usize,
    /// Most bytes of records accepted but not yet acknowledged; `send` waits beyond it.
    pub buffer_bytes: usize,
    /// Most batches awaiting acknowledgement at once, per partition; with idempotence at most
    /// 5 (the batches the broker remembers per producer and partition).
    pub max_in_flight: usize,
    /// How long a topic's partition count is trusted before it is asked again (Kafka's
    /// `metadata.max.age.ms`), so partitions added to a live topic start receiving records.
    /// A produce refused with `UnknownPartition` also forgets the count at once.
    pub metadata_max_age: Duration,
    /// How long after a record's batch was opened its delivery may take, retries included,
    /// before it fails with `Error::DeliveryTimeout` (Kafka's `delivery.timeout.ms`, 120 s).
    pub delivery_timeout: Duration,
    /// Number batches so that the broker stores each exactly once, whatever the retries
    /// (Kafka's `enable.idempotence`, on by default). Costs one `InitProducer` at the start.
    pub idempotent: bool,
    /// A stable name for an idempotent producer (Kafka's `transactional.id`, without
    /// transactions): a new instance with the same name fences the older one, whose writes
    /// then fail with `ProducerFenced`. Without a name each producer gets a fresh id.
    pub producer_name: Option<String>,
    /// Compress each batch's records (Kafka's `compression.type`): gzip, snappy, lz4 or zstd,
    /// or none (the default). The broker checks a compressed batch by decompressing it, then
    /// stores and serves it as sent; readers decompress.
    pub compression: batch::compression::Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            buffer_bytes: 64 << 20,
            max_in_flight: 5,
            metadata_max_age: Duration::from_secs(300),
            delivery_timeout: Duration::from_secs(120),
            idempotent: true,
            producer_name: None,
            compression: batch::compression::Compression::None,
        }
    }
}

/// A record to send. Without a partition, a keyed record goes to `murmur2(key) % partitions`
/// (Kafka's rule), an unkeyed one to a partition that changes with each batch.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    pub topic: String,
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the epoch; now if unset.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp: None,
        }
    }
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    pub offset: u64,
}

type BatchAck = Shared<BoxFuture<'static, Result<u64, Error>>>;

/// Resolves to the record's offset once its batch is acknowledged.
#[must_use = "a Delivery tells whether the record was stored; await it or drop it knowingly"]
#[derive(Debug)]
pub struct Delivery {
    ack: BatchAck,
    partition: u32,
    index: u32,
}

impl Future for Delivery {
    type Output = Result<RecordMetadata, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (partition, index) = (self.partition, self.index);
        Pin::new(&mut self.ack).poll(cx).map(|r| {
            r.map(|base| RecordMetadata {
                partition,
                offset: base + u64::from(index),
            })
        })
    }
}

/// A record to send, borrowed: [`Producer::send_ref`] and [`Producer::send_many`] copy it
/// straight into its batch, allocating nothing per record.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRef<'a> {
    pub partition: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Milliseconds since the epoch; now if unset.
    pub timestamp: Option<i64>,
}

impl<'a> RecordRef<'a> {
    pub fn new(value: &'a [u8]) -> Self {
        RecordRef {
            value,
            ..RecordRef::default()
        }
    }
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
    pub fn headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Resolves once every record of a [`Producer::send_many`] call is acknowledged, to how many
/// there were, or to the first failure among them.
#[must_use = "a Receipt tells whether the records were stored; await it or drop it knowingly"]
pub struct Receipt {
    records: usize,
    acks: Vec<BatchAck>,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("records", &self.records)
            .field("batches", &self.acks.len())
            .finish()
    }
}

impl Receipt {
    pub async fn wait(self) -> Result<usize, Error> {
        for ack in self.acks {
            ack.await?;
        }
        Ok(self.records)
    }
}

struct Open {
    builder: BatchBuilder,
    ack_tx: oneshot::Sender<Result<u64, Error>>,
    ack: BatchAck,
    /// When linger ends and the batch is sent.
    deadline: Instant,
    /// When its delivery times out.
    expires: Instant,
    permits: Option<OwnedSemaphorePermit>,
}

impl Open {
    fn new(config: &ProducerConfig, batch_bytes: usize) -> Open {
        let (ack_tx, rx) = oneshot::channel();
        let ack = rx.map(|r| r.unwrap_or(Err(Error::Closed))).boxed().shared();
        let now = Instant::now();
        Open {
            builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20)),
            ack_tx,
            ack,
            deadline: now + config.linger,
            expires: now + config.delivery_timeout,
            permits: None,
        }
    }
}

/// A partition's open batch and the channel to its sender task.
struct Slot {
    open: Option<Open>,
    tx: mpsc::UnboundedSender<Item>,
}

/// What the producer keeps per topic: found with the caller's `&str`, then partitions by index.
struct TopicState {
    name: TopicName,
    /// The partition count, when it was learned, and whether a sender found it wrong.
    count: u32,
    learned: Instant,
    stale: Arc<AtomicBool>,
    /// Partition of the next unkeyed record; moves on each time that partition's batch closes.
    sticky: u32,
    slots: Vec<Option<Slot>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<TopicName, TopicState>,
    closed: bool,
}

/// What the sender tasks share with the producer.
struct Common {
    client: Client,
    config: ProducerConfig,
    /// The producer id and epoch, asked for once (idempotence).
    identity: OnceCell<(i64, i16)>,
    retrying: watch::Sender<Option<Error>>,
    /// Set once the producer was fenced: every later send fails with it.
    fenced: Mutex<Option<Error>>,
    is_fenced: AtomicBool,
    /// Retries the broker recognised as already stored.
    duplicates: AtomicU64,
}

struct Inner {
    common: Arc<Common>,
    state: Mutex<State>,
    linger_wake: Arc<Notify>,
    buffer: Arc<Semaphore>,
    /// Largest encoded record, from the broker's frame limit (learned at the first send).
    record_limit: OnceCell<usize>,
}

/// Sends records in batches. Clones share the same batches and connection.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.common.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether a call wants a `Delivery` per record or one `Receipt`.
enum Want<'a> {
    Delivery(&'a mut Option<Delivery>),
    Receipt(&'a mut Vec<BatchAck>),
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let linger_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            buffer: Arc::new(Semaphore::new(
                config.buffer_bytes.min(Semaphore::MAX_PERMITS),
            )),
            common: Arc::new(Common {
                client,
                config,
                identity: OnceCell::new(),
                retrying: watch::channel(None).0,
                fenced: Mutex::new(None),
                is_fenced: AtomicBool::new(false),
                duplicates: AtomicU64::new(0),
            }),
            state: Mutex::new(State::default()),
            linger_wake: linger_wake.clone(),
            record_limit: OnceCell::new(),
        });
        tokio::spawn(linger(Arc::downgrade(&inner), linger_wake));
        Producer { inner }
    }

    /// Learns (or refreshes) the topic's partition count and records it. A refresh that
    /// fails keeps the old count working; a first lookup must succeed.
    async fn learn_topic(&self, topic: &str) -> Result<(), Error> {
        let name = topic_name(topic)?;
        let described = Admin::new(self.inner.common.client.clone())
            .describe_topic(topic)
            .await;
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let known = st.topics.get_mut(topic);
        let n = match (described, known) {
            (Ok(d), _) => d.partitions.len() as u32,
            (Err(e), Some(t)) if e.is_retriable() => {
                tracing::debug!(%topic, error = %e, "partition count refresh failed; keeping {}", t.count);
                t.learned = Instant::now();
                return Ok(());
            }
            (Err(e), _) => return Err(e),
        };
        match st.topics.get_mut(topic) {
            Some(t) => {
                if t.count != n {
                    tracing::info!(%topic, partitions = n, "topic's partition count changed");
                }
                t.count = n;
                t.learned = Instant::now();
                t.stale.store(false, Ordering::Relaxed);
            }
            None => {
                st.topics.insert(
                    name.clone(),
                    TopicState {
                        name,
                        count: n,
                        learned: Instant::now(),
                        stale: Arc::default(),
                        sticky: (now_ms() as u32) % n.max(1),
                        slots: Vec::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Largest encoded record that fits in one produce frame (learned once from the handshake).
    async fn record_limit(&self) -> Result<usize, Error> {
        let client = &self.inner.common.client;
        self.inner
            .record_limit
            .get_or_try_init(|| async {
                let max_frame = client.max_frame_bytes().await?;
                Ok((max_frame as usize).saturating_sub(HEADER_LEN + 1024))
            })
            .await
            .copied()
    }

    /// Adds a record to its partition's batch. Waits only when `buffer_bytes` are outstanding.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, Error> {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        let r = RecordRef {
            partition: record.partition,
            key: record.key.as_deref(),
            value: &record.value,
            headers: &headers,
            timestamp: record.timestamp,
        };
        self.send_ref(&record.topic, r).await
    }

    /// [`Producer::send`] for a borrowed record: copied into its batch, nothing allocated.
    pub async fn send_ref(&self, topic: &str, record: RecordRef<'_>) -> Result<Delivery, Error> {
        let mut delivery = None;
        self.push(
            topic,
            std::slice::from_ref(&record),
            Want::Delivery(&mut delivery),
        )
        .await?;
        delivery.ok_or(Error::Closed)
    }

    /// Adds many records to their partitions' batches at once: one lock, one buffer
    /// reservation and one future for the lot, the cheapest way to produce. The records of one
    /// partition keep their order. Waits only when `buffer_bytes` are outstanding.
    pub async fn send_many(
        &self,
        topic: &str,
        records: &[RecordRef<'_>],
    ) -> Result<Receipt, Error> {
        let mut acks = Vec::new();
        // Reserve at most a quarter of the buffer at a time, so large calls do not starve.
        let share = (self.inner.common.config.buffer_bytes / 4).max(1);
        let mut rest = records;
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .take_while(|r| {
                    bytes += BatchBuilder::max_record_size(r.key, r.value, r.headers);
                    bytes <= share
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(n);
            self.push(topic, chunk, Want::Receipt(&mut acks)).await?;
            rest = tail;
        }
        Ok(Receipt {
            records: records.len(),
            acks,
        })
    }

    async fn push(
        &self,
        topic: &str,
        records: &[RecordRef<'_>],
        mut want: Want<'_>,
    ) -> Result<(), Error> {
        let common = &self.inner.common;
        if common.is_fenced.load(Ordering::Relaxed)
            && let Some(e) = common.fenced()
        {
            return Err(e);
        }
        let limit = self.record_limit().await?;
        let config = &common.config;
        let mut total = 0usize;
        for r in records {
            let size = BatchBuilder::max_record_size(r.key, r.value, r.headers);
            if size > limit || size > config.buffer_bytes {
                return Err(Error::InvalidArgument(format!(
                    "record of {size} bytes exceeds the limit of {limit} bytes"
                )));
            }
            total += size;
        }
        let permits = total.min(config.buffer_bytes).min(Semaphore::MAX_PERMITS) as u32;
        let mut permit = match self.inner.buffer.clone().try_acquire_many_owned(permits) {
            Ok(p) => p,
            Err(_) => self
                .inner
                .buffer
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| Error::Closed)?,
        };
        // The count's age is checked whenever a batch is opened (below), not per record.
        let known = {
            let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            st.topics
                .get(topic)
                .is_some_and(|t| !t.stale.load(Ordering::Relaxed))
        };
        if !known {
            self.learn_topic(topic).await?;
        }
        let batch_bytes = config.batch_bytes.min(limit).max(1);
        let mut created = false;
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(Error::Closed);
        }
        let Some(t) = st.topics.get_mut(topic) else {
            return Err(Error::Closed);
        };
        let count = t.count;
        for r in records {
            let size = BatchBuilder::max_record_size(r.key, r.value, r.headers);
            let partition = match (r.partition, r.key) {
                (Some(p), _) if p < count => p,
                (Some(p), _) => {
                    return Err(Error::InvalidArgument(format!(
                        "topic '{topic}' has {count} partitions; there is no partition {p}"
                    )));
                }
                (None, Some(key)) => partition_for_key(key, count),
                (None, None) => t.sticky % count.max(1),
            };
            let p = partition as usize;
            if t.slots.len() <= p {
                t.slots.resize_with(p + 1, || None);
            }
            let slot = t.slots[p].get_or_insert_with(|| Slot {
                open: None,
                tx: PartitionSender::spawn(common, &t.name, partition, t.stale.clone()),
            });
            if slot
                .open
                .as_ref()
                .is_some_and(|o| !o.builder.is_empty() && o.builder.size() + size > batch_bytes)
                && let Some(open) = slot.open.take()
            {
                ship(&mut t.sticky, count, partition, slot, open);
            }
            let open = match &mut slot.open {
                Some(open) => open,
                None => {
                    created = true;
                    let open = Open::new(config, batch_bytes);
                    if open.deadline.saturating_duration_since(t.learned) >= config.metadata_max_age
                    {
                        // Asked again before the next call.
                        t.stale.store(true, Ordering::Relaxed);
                    }
                    slot.open.insert(open)
                }
            };
            let index = open.builder.count() as u32;
            let timestamp = r.timestamp.unwrap_or_else(now_ms);
            open.builder.push(r.key, r.value, r.headers, timestamp);
            // The record's share of the reservation travels with its batch.
            let mine = permit.split(size.min(permit.num_permits()));
            match (&mut open.permits, mine) {
                (Some(p), Some(m)) => p.merge(m),
                (None, m) => open.permits = m,
                (Some(_), None) => {}
            }
            match &mut want {
                Want::Delivery(d) => {
                    **d = Some(Delivery {
                        ack: open.ack.clone(),
                        partition,
                        index,
                    });
                }
                Want::Receipt(acks) => {
                    // Ship order is per partition, so only a new batch needs a new entry.
                    if acks.last().is_none_or(|a| !a.ptr_eq(&open.ack)) {
                        acks.push(open.ack.clone());
                    }
                }
            }
            if open.builder.size() >= batch_bytes
                && let Some(open) = slot.open.take()
            {
                ship(&mut t.sticky, count, partition, slot, open);
            }
        }
        drop(st);
        if created {
            self.inner.linger_wake.notify_one();
        }
        Ok(())
    }

    /// Sends every open batch and waits until all records sent so far are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), Error> {
        let waits: Vec<oneshot::Receiver<()>> = {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut waits = Vec::new();
            for t in st.topics.values_mut() {
                let count = t.count;
                for (p, slot) in t.slots.iter_mut().enumerate() {
                    let Some(slot) = slot else { continue };
                    if let Some(open) = slot.open.take() {
                        ship(&mut t.sticky, count, p as u32, slot, open);
                    }
                    let (tx, rx) = oneshot::channel();
                    let _ = slot.tx.send(Item::Flush(tx));
                    waits.push(rx);
                }
            }
            waits
        };
        for w in waits {
            w.await.map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// `Some(last error)` while batches are being retried after a retriable failure (the
    /// broker unreachable, restarting, its disk full); `None` again once one is acknowledged.
    pub fn watch_retries(&self) -> watch::Receiver<Option<Error>> {
        self.inner.common.retrying.subscribe()
    }

    /// Batches the broker recognised as retries of batches it had already stored (their
    /// first answer was lost): each would have been a duplicate without idempotence.
    pub fn duplicates_avoided(&self) -> u64 {
        self.inner.common.duplicates.load(Ordering::Relaxed)
    }

    /// The producer id and epoch (idempotence), once the first batch asked for them.
    pub fn identity(&self) -> Option<(i64, i16)> {
        self.inner.common.identity.get().copied()
    }

    /// Flushes, then refuses further sends.
    pub async fn close(&self) -> Result<(), Error> {
        self.flush().await?;
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        Ok(())
    }
}

impl Common {
    fn fenced(&self) -> Option<Error> {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Hands a closed batch to its partition's sender (under the state lock, so in closing order).
fn ship(sticky: &mut u32, count: u32, partition: u32, slot: &Slot, open: Open) {
    if *sticky % count.max(1) == partition {
        *sticky = (partition + 1) % count.max(1);
    }
    let records = open.builder.count() as i32;
    let batch = Outgoing {
        payload: Payload::Unsealed(open.builder.finish_unsealed()),
        records,
        deadline: open.expires,
        ack_tx: open.ack_tx,
        _permits: open.permits,
    };
    if let Err(mpsc::error::SendError(Item::Batch(b))) = slot.tx.send(Item::Batch(batch)) {
        let _ = b.ack_tx.send(Err(Error::Closed));
    }
}

impl Inner {
    /// Ships open batches: all of them, or those whose linger ended by `now`. Returns the
    /// next linger deadline among those left open.
    fn ship_open(&self, now: Option<Instant>) -> Option<Instant> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: Option<Instant> = None;
        for t in st.topics.values_mut() {
            let count = t.count;
            for (p, slot) in t.slots.iter_mut().enumerate() {
                let Some(slot) = slot else { continue };
                match slot.open.as_ref().map(|o| o.deadline) {
                    Some(d) if now.is_none_or(|now| d <= now) => {
                        if let Some(open) = slot.open.take() {
                            ship(&mut t.sticky, count, p as u32, slot, open);
                        }
                    }
                    Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                    None => {}
                }
            }
        }
        next
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: send what is buffered; the senders finish in the background.
        self.ship_open(None);
    }
}

async fn linger(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = match inner.upgrade() {
            Some(i) => i.ship_open(Some(Instant::now())),
            None => return,
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
        if inner.strong_count() == 0 {
            return;
        }
    }
}

enum Item {
    Batch(Outgoing),
    /// Answered once everything queued before it is acknowledged or failed.
    Flush(oneshot::Sender<()>),
}

enum Payload {
    /// Not numbered yet: the producer fields and CRC are filled in when it is first sent.
    Unsealed(BytesMut),
    Sealed(Bytes),
}

/// A closed batch on its way to the broker.
struct Outgoing {
    payload: Payload,
    records: i32,
    /// When its delivery fails with a timeout if not acknowledged.
    deadline: Instant,
    ack_tx: oneshot::Sender<Result<u64, Error>>,
    _permits: Option<OwnedSemaphorePermit>,
}

type Answer = futures::future::BoxFuture<'static, Result<ProduceResponse, Error>>;

/// One partition's sender: numbers, sends, and retries its batches in order.
struct PartitionSender {
    common: Arc<Common>,
    request: ProduceRequest,
    /// Batches not yet sent (or to be sent again), in order, with flush markers.
    queue: VecDeque<Item>,
    /// Batches sent and not yet answered, in order, with their answers.
    in_flight: VecDeque<(Outgoing, Answer)>,
    limit: usize,
    /// The epoch this partition's batches carry (the producer's, or later if the broker
    /// forgot the producer and the partition started over).
    epoch: Option<i16>,
    next_seq: i32,
    backoff: Duration,
    /// The last retriable failure, named when a batch then times out.
    last_error: Option<String>,
    /// Set when the broker says the partition does not exist: the count is asked again.
    stale: Arc<AtomicBool>,
}

impl PartitionSender {
    fn spawn(
        common: &Arc<Common>,
        topic: &TopicName,
        partition: u32,
        stale: Arc<AtomicBool>,
    ) -> mpsc::UnboundedSender<Item> {
        let (tx, rx) = mpsc::unbounded_channel();
        let limit = match common.config.idempotent {
            true => common.config.max_in_flight.clamp(1, 5),
            false => common.config.max_in_flight.max(1),
        };
        let sender = PartitionSender {
            common: common.clone(),
            request: ProduceRequest {
                topic: topic.clone(),
                partition,
            },
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            limit,
            epoch: None,
            next_seq: 0,
            backoff: common.client.config().min_backoff,
            last_error: None,
            stale,
        };
        tokio::spawn(sender.run(rx));
        tx
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Item>) {
        let mut open = true;
        loop {
            self.send_queued().await;
            while self.in_flight.is_empty()
                && let Some(Item::Flush(_)) = self.queue.front()
            {
                if let Some(Item::Flush(done)) = self.queue.pop_front() {
                    let _ = done.send(());
                }
            }
            if !open && self.queue.is_empty() && self.in_flight.is_empty() {
                return;
            }
            let front = async {
                match self.in_flight.front_mut() {
                    Some((_, answer)) => answer.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = front => self.answered(result).await,
                item = rx.recv(), if open => match item {
                    Some(item) => self.queue.push_back(item),
                    None => open = false,
                },
            }
        }
    }

    /// Sends queued batches while fewer than `limit` are outstanding.
    async fn send_queued(&mut self) {
        while self.in_flight.len() < self.limit {
            let Some(Item::Batch(_)) = self.queue.front() else {
                return;
            };
            let Some(Item::Batch(mut out)) = self.queue.pop_front() else {
                return;
            };
            if self.common.is_fenced.load(Ordering::Relaxed)
                && let Some(e) = self.common.fenced()
            {
                // Fenced on another partition: nothing more goes out.
                self.fail(out, e);
                continue;
            }
            if Instant::now() >= out.deadline {
                let last = self.last_error.as_deref().unwrap_or("no acknowledgement");
                self.fail(out, timeout(last));
                continue;
            }
            let bytes = match self.seal(&mut out).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.fail(out, e);
                    continue;
                }
            };
            let (client, request) = (&self.common.client, &self.request);
            let sent = tokio::time::timeout_at(out.deadline, async {
                let leader = client.leader_for(&request.topic, request.partition).await;
                leader.enqueue(request, bytes).await
            })
            .await;
            let deadline = out.deadline;
            let answer: Answer = match sent {
                Ok(Ok(response)) => async move {
                    match tokio::time::timeout_at(deadline, response).await {
                        Ok(r) => r.map(|(r, _)| r),
                        Err(_) => Err(timeout("no acknowledgement")),
                    }
                }
                .boxed(),
                Ok(Err(e)) => futures::future::ready(Err(e)).boxed(),
                Err(_) => {
                    futures::future::ready(Err(timeout("could not reach the broker"))).boxed()
                }
            };
            self.in_flight.push_back((out, answer));
        }
    }

    /// The batch's bytes, numbered (idempotence) and sealed the first time it is sent.
    async fn seal(&mut self, out: &mut Outgoing) -> Result<Bytes, Error> {
        if let Payload::Sealed(bytes) = &out.payload {
            return Ok(bytes.clone());
        }
        let producer = if self.common.config.idempotent {
            let common = &self.common;
            let (id, epoch) = *common
                .identity
                .get_or_try_init(|| async {
                    Admin::new(common.client.clone())
                        .init_producer(common.config.producer_name.as_deref())
                        .await
                })
                .await?;
            let epoch = *self.epoch.get_or_insert(epoch);
            let seq = self.next_seq;
            self.next_seq = next_seq(seq, out.records);
            batch::Producer {
                id,
                epoch,
                base_sequence: seq,
            }
        } else {
            batch::Producer::NONE
        };
        let Payload::Unsealed(mut buf) =
            std::mem::replace(&mut out.payload, Payload::Sealed(Bytes::new()))
        else {
            return Err(Error::Closed);
        };
        batch::seal(&mut buf, producer);
        // Compressed once, when first sealed; a batch sealed again (a new producer epoch)
        // keeps its compressed records.
        let codec = self.common.config.compression;
        let plain = batch::BatchHeader::parse(&buf).is_ok_and(|h| h.compression() == 0);
        let bytes = match codec {
            batch::compression::Compression::None => buf.freeze(),
            _ if !plain => buf.freeze(),
            codec => Bytes::from(
                batch::compressed(&buf, codec).map_err(|e| Error::Protocol(e.to_string()))?,
            ),
        };
        out.payload = Payload::Sealed(bytes.clone());
        Ok(bytes)
    }

    fn fail(&self, out: Outgoing, e: Error) {
        if e.code() == Some(ErrorCode::UnknownPartition) {
            // The topic changed shape (deleted and created again smaller).
            self.stale.store(true, Ordering::Relaxed);
        }
        let _ = out.ack_tx.send(Err(e));
    }

    fn acknowledged(&mut self, out: Outgoing, r: ProduceResponse) {
        if r.duplicate {
            self.common.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let _ = out.ack_tx.send(Ok(r.base_offset));
        self.backoff = self.common.client.config().min_backoff;
        self.last_error = None;
        self.common
            .retrying
            .send_if_modified(|r| r.take().is_some());
    }

    /// Takes the answer to the oldest outstanding batch.
    async fn answered(&mut self, result: Result<ProduceResponse, Error>) {
        let Some((out, _)) = self.in_flight.pop_front() else {
            return;
        };
        let e = match result {
            Ok(r) => return self.acknowledged(out, r),
            Err(e) => e,
        };
        if e.code() == Some(ErrorCode::ProducerFenced) {
            return self.fenced(out, e).await;
        }
        let out_of_order = e.code() == Some(ErrorCode::OutOfOrderSequence);
        if !e.is_retriable() && !out_of_order {
            // This batch cannot be stored (too large, unknown topic, ...); later ones go on.
            // With idempotence they now follow a gap and are renumbered below.
            return self.fail(out, e);
        }
        // The partition may have a new leader (a cluster): ask again before resending.
        let (topic, partition) = (&self.request.topic, self.request.partition);
        self.common.client.forget_leader(topic, partition);
        // Every outstanding batch is answered before any is resent, so resends go out in
        // order behind nothing older.
        let mut again = vec![out];
        while let Some((out, answer)) = self.in_flight.pop_front() {
            match answer.await {
                Ok(r) => self.acknowledged(out, r),
                Err(e2) if e2.code() == Some(ErrorCode::ProducerFenced) => {
                    for o in again {
                        self.fail(o, e2.clone());
                    }
                    return self.fenced(out, e2).await;
                }
                Err(_) => again.push(out),
            }
        }
        if out_of_order && self.common.config.idempotent {
            // Nothing before this batch failed, so the broker does not know where this
            // producer's sequence stands: it forgot the producer. Start the partition over.
            if self.common.config.producer_name.is_some() {
                for o in again {
                    self.fail(o, e.clone());
                }
                return;
            }
            tracing::warn!(topic = %self.request.topic, partition = self.request.partition, error = %e, "the broker lost this producer's sequence on the partition; continuing at a new epoch");
            self.renumber(&mut again);
        }
        for out in again.into_iter().rev() {
            self.queue.push_front(Item::Batch(out));
        }
        tracing::debug!(error = %e, topic = %self.request.topic, partition = self.request.partition, "resending unacknowledged batches in order");
        self.last_error = Some(e.to_string());
        let wait = self.common.client.retry_delay(&e, &mut self.backoff);
        self.common.retrying.send_replace(Some(e));
        tokio::time::sleep(wait).await;
    }

    /// Moves the partition to a new epoch and numbers every unacknowledged batch (`again`,
    /// then the queue) from 0 again.
    fn renumber(&mut self, again: &mut [Outgoing]) {
        self.epoch = self.epoch.map(|e| e.wrapping_add(1).max(0));
        self.next_seq = 0;
        let queued = self.queue.iter_mut().filter_map(|i| match i {
            Item::Batch(o) => Some(o),
            Item::Flush(_) => None,
        });
        for out in again.iter_mut().chain(queued) {
            if let Payload::Sealed(bytes) = &out.payload {
                out.payload = Payload::Unsealed(BytesMut::from(&bytes[..]));
            }
        }
    }

    /// A newer instance of this producer took over: nothing more may be sent.
    async fn fenced(&mut self, out: Outgoing, e: Error) {
        tracing::error!(error = %e, "producer fenced by a newer instance with the same name");
        *self.common.fenced.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        self.fail(out, e.clone());
        while let Some((out, answer)) = self.in_flight.pop_front() {
            match answer.await {
                Ok(r) => self.acknowledged(out, r),
                Err(_) => self.fail(out, e.clone()),
            }
        }
        for item in std::mem::take(&mut self.queue) {
            match item {
                Item::Batch(out) => self.fail(out, e.clone()),
                Item::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn timeout(last: &str) -> Error {
    Error::DeliveryTimeout { last: last.into() }
}

/// The sequence after a batch of `records` starting at `seq` (wrapping like the broker's).
fn next_seq(seq: i32, records: i32) -> i32 {
    let n = i64::from(seq) + i64::from(records);
    (n % (i64::from(i32::MAX) + 1)) as i32
}
