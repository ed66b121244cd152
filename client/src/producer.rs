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
use std::sync::atomic::{AtomicU64, Ordering};
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

struct Open {
    builder: BatchBuilder,
    ack_tx: oneshot::Sender<Result<u64, Error>>,
    ack: BatchAck,
    /// When linger ends and the batch is sent.
    deadline: Instant,
    /// When its delivery times out.
    expires: Instant,
    permits: Option<OwnedSemaphorePermit>,
    partitions: u32,
}

impl Open {
    fn new(config: &ProducerConfig, batch_bytes: usize, partitions: u32) -> Self {
        let (ack_tx, rx) = oneshot::channel();
        let ack = rx.map(|r| r.unwrap_or(Err(Error::Closed))).boxed().shared();
        Open {
            builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20)),
            ack_tx,
            ack,
            deadline: Instant::now() + config.linger,
            expires: Instant::now() + config.delivery_timeout,
            permits: None,
            partitions,
        }
    }
}

/// A partition's open batch and the channel to its sender task.
struct Slot {
    open: Option<Open>,
    tx: mpsc::UnboundedSender<Item>,
}

#[derive(Default)]
struct State {
    slots: HashMap<(TopicName, u32), Slot>,
    sticky: HashMap<TopicName, u32>,
    closed: bool,
}

/// What the sender tasks share with the producer.
struct Common {
    client: Client,
    config: ProducerConfig,
    /// The producer id and epoch, asked for once (idempotence).
    identity: OnceCell<(i64, i16)>,
    /// Partition count of each topic, and when it was learned.
    partitions: Mutex<HashMap<TopicName, (u32, Instant)>>,
    retrying: watch::Sender<Option<Error>>,
    /// Set once the producer was fenced: every later send fails with it.
    fenced: Mutex<Option<Error>>,
    /// Retries the broker recognised as already stored.
    duplicates: AtomicU64,
}

struct Inner {
    common: Arc<Common>,
    state: Mutex<State>,
    linger_wake: Arc<Notify>,
    buffer: Arc<Semaphore>,
    max_frame: OnceCell<u32>,
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
                partitions: Mutex::default(),
                retrying: watch::channel(None).0,
                fenced: Mutex::new(None),
                duplicates: AtomicU64::new(0),
            }),
            state: Mutex::new(State::default()),
            linger_wake: linger_wake.clone(),
            max_frame: OnceCell::new(),
        });
        tokio::spawn(linger(Arc::downgrade(&inner), linger_wake));
        Producer { inner }
    }

    /// The topic's partition count: cached, asked again once older than `metadata_max_age`.
    async fn partition_count(&self, topic: &TopicName) -> Result<u32, Error> {
        let common = &self.inner.common;
        let cached = common
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied();
        if let Some((n, at)) = cached
            && at.elapsed() < common.config.metadata_max_age
        {
            return Ok(n);
        }
        let described = Admin::new(common.client.clone())
            .describe_topic(topic.as_str())
            .await;
        let n = match (described, cached) {
            (Ok(d), _) => d.partitions.len() as u32,
            // A refresh that fails keeps the old count working; a first lookup must succeed.
            (Err(e), Some((n, _))) if e.is_retriable() => {
                tracing::debug!(%topic, error = %e, "partition count refresh failed; keeping {n}");
                return Ok(n);
            }
            (Err(e), _) => return Err(e),
        };
        if cached.is_some_and(|(old, _)| old != n) {
            tracing::info!(%topic, partitions = n, "topic's partition count changed");
        }
        common
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), (n, Instant::now()));
        Ok(n)
    }

    /// Largest encoded record that fits in one produce frame (learned once from the handshake).
    async fn record_limit(&self) -> Result<usize, Error> {
        let max_frame = self
            .inner
            .max_frame
            .get_or_try_init(|| self.inner.common.client.max_frame_bytes())
            .await?;
        Ok((*max_frame as usize).saturating_sub(HEADER_LEN + 1024))
    }

    /// Adds a record to its partition's batch. Waits only when `buffer_bytes` are outstanding.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, Error> {
        if let Some(e) = self.inner.common.fenced() {
            return Err(e);
        }
        let topic = topic_name(&record.topic)?;
        let count = self.partition_count(&topic).await?;
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        let size = BatchBuilder::max_record_size(record.key.as_deref(), &record.value, &headers);
        let limit = self.record_limit().await?;
        let config = &self.inner.common.config;
        if size > limit || size > config.buffer_bytes {
            return Err(Error::InvalidArgument(format!(
                "record of {size} bytes exceeds the limit of {limit} bytes"
            )));
        }
        let permit = self
            .inner
            .buffer
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| Error::Closed)?;
        let batch_bytes = config.batch_bytes.min(limit).max(1);
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Err(Error::Closed);
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < count => p,
            (Some(p), _) => {
                return Err(Error::InvalidArgument(format!(
                    "topic '{topic}' has {count} partitions; there is no partition {p}"
                )));
            }
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => *st
                .sticky
                .entry(topic.clone())
                .or_insert_with(|| (now_ms() as u32) % count.max(1)),
        };
        let key = (topic, partition);
        let st = &mut *st;
        let slot = st.slots.entry(key.clone()).or_insert_with(|| Slot {
            open: None,
            tx: PartitionSender::spawn(&self.inner.common, &key.0, partition),
        });
        if slot
            .open
            .as_ref()
            .is_some_and(|o| !o.builder.is_empty() && o.builder.size() + size > batch_bytes)
            && let Some(open) = slot.open.take()
        {
            ship(&mut st.sticky, &key.0, partition, slot, open);
        }
        let created = slot.open.is_none();
        let open = slot
            .open
            .get_or_insert_with(|| Open::new(config, batch_bytes, count));
        let index = open.builder.count() as u32;
        open.builder
            .push(record.key.as_deref(), &record.value, &headers, timestamp);
        match &mut open.permits {
            Some(p) => p.merge(permit),
            None => open.permits = Some(permit),
        }
        let delivery = Delivery {
            ack: open.ack.clone(),
            partition,
            index,
        };
        if open.builder.size() >= batch_bytes
            && let Some(open) = slot.open.take()
        {
            ship(&mut st.sticky, &key.0, partition, slot, open);
        }
        if created {
            self.inner.linger_wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends every open batch and waits until all records sent so far are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), Error> {
        let waits: Vec<oneshot::Receiver<()>> = {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            let st = &mut *st;
            st.slots
                .iter_mut()
                .map(|((topic, partition), slot)| {
                    if let Some(open) = slot.open.take() {
                        ship(&mut st.sticky, topic, *partition, slot, open);
                    }
                    let (tx, rx) = oneshot::channel();
                    let _ = slot.tx.send(Item::Flush(tx));
                    rx
                })
                .collect()
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
fn ship(
    sticky: &mut HashMap<TopicName, u32>,
    topic: &TopicName,
    partition: u32,
    slot: &Slot,
    open: Open,
) {
    if sticky.get(topic) == Some(&partition) {
        sticky.insert(topic.clone(), (partition + 1) % open.partitions.max(1));
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
    fn ship_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        for ((topic, partition), slot) in st.slots.iter_mut() {
            if let Some(open) = slot.open.take() {
                ship(&mut st.sticky, topic, *partition, slot, open);
            }
        }
    }

    /// Ships batches whose linger expired; returns the next deadline.
    fn ship_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        let mut next: Option<Instant> = None;
        for ((topic, partition), slot) in st.slots.iter_mut() {
            match slot.open.as_ref().map(|o| o.deadline) {
                Some(d) if d <= now => {
                    if let Some(open) = slot.open.take() {
                        ship(&mut st.sticky, topic, *partition, slot, open);
                    }
                }
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        next
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: send what is buffered; the senders finish in the background.
        self.ship_all();
    }
}

async fn linger(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = match inner.upgrade() {
            Some(i) => i.ship_expired(),
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
}

impl PartitionSender {
    fn spawn(
        common: &Arc<Common>,
        topic: &TopicName,
        partition: u32,
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
            let sent = tokio::time::timeout_at(
                out.deadline,
                self.common.client.enqueue(&self.request, bytes),
            )
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
        let bytes = buf.freeze();
        out.payload = Payload::Sealed(bytes.clone());
        Ok(bytes)
    }

    fn fail(&self, out: Outgoing, e: Error) {
        if e.code() == Some(ErrorCode::UnknownPartition) {
            // The topic changed shape (deleted and created again smaller).
            self.common
                .partitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.request.topic);
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
        self.common.retrying.send_replace(Some(e));
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.common.client.config().max_backoff);
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
