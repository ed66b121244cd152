//! [`Producer`]: batches records per partition and returns each record's offset.
//!
//! `send` appends the record to its partition's open batch and returns a [`Delivery`] that
//! resolves to the record's offset once the broker acknowledged the batch (under the topic's
//! fsync policy). A batch is sent when it reaches `batch_bytes`, when `linger` has passed since
//! its first record, or on [`Producer::flush`]. Batches are written to the connection in the
//! order they were closed, so one partition's records keep their order; up to `max_in_flight`
//! batches are outstanding at once (pipelining). Retriable failures are retried (with backoff)
//! until `delivery_timeout` after the batch was opened; then every record of the batch fails
//! with `Error::DeliveryTimeout`, so nothing waits forever on a broker that is gone. A retry
//! may reorder or (if the first attempt was applied before a disconnect) duplicate a batch:
//! delivery is at-least-once. Memory is bounded by `buffer_bytes`: `send` waits when that
//! much is unacknowledged. [`Producer::watch_retries`] says while batches are being retried.

use crate::admin::{Admin, topic_name};
use crate::client::Client;
use crate::error::Error;
use crate::partitioner::partition_for_key;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rill_protocol::TopicName;
use rill_protocol::batch::{BatchBuilder, HEADER_LEN};
use rill_protocol::messages::ProduceRequest;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// Send a batch once it reaches this many bytes.
    pub batch_bytes: usize,
    /// Most bytes of records accepted but not yet acknowledged; `send` waits beyond it.
    pub buffer_bytes: usize,
    /// Most batches awaiting acknowledgement at once.
    pub max_in_flight: usize,
    /// How long a topic's partition count is trusted before it is asked again (Kafka's
    /// `metadata.max.age.ms`), so partitions added to a live topic start receiving records.
    /// A produce refused with `UnknownPartition` also forgets the count at once.
    pub metadata_max_age: Duration,
    /// How long after a record's batch was opened its delivery may take, retries included,
    /// before it fails with `Error::DeliveryTimeout` (Kafka's `delivery.timeout.ms`, 120 s).
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            buffer_bytes: 64 << 20,
            max_in_flight: 64,
            metadata_max_age: Duration::from_secs(300),
            delivery_timeout: Duration::from_secs(120),
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
    opened: Instant,
    ack_tx: oneshot::Sender<Result<u64, Error>>,
    ack: BatchAck,
    deadline: Instant,
    permits: Option<OwnedSemaphorePermit>,
    partitions: u32,
}

impl Open {
    fn new(batch_bytes: usize, linger: std::time::Duration, partitions: u32) -> Self {
        let (ack_tx, rx) = oneshot::channel();
        let ack = rx.map(|r| r.unwrap_or(Err(Error::Closed))).boxed().shared();
        Open {
            builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20)),
            opened: Instant::now(),
            ack_tx,
            ack,
            deadline: Instant::now() + linger,
            permits: None,
            partitions,
        }
    }
}

enum Ready {
    Batch {
        topic: TopicName,
        partition: u32,
        bytes: Bytes,
        /// When the batch's delivery fails with a timeout if not acknowledged.
        deadline: Instant,
        ack_tx: oneshot::Sender<Result<u64, Error>>,
        permits: Option<OwnedSemaphorePermit>,
    },
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct State {
    open: HashMap<(TopicName, u32), Open>,
    sticky: HashMap<TopicName, u32>,
    closed: bool,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    state: Mutex<State>,
    ready: mpsc::UnboundedSender<Ready>,
    linger_wake: Arc<Notify>,
    buffer: Arc<Semaphore>,
    /// Partition count of each topic, and when it was learned.
    partitions: Arc<Mutex<HashMap<TopicName, (u32, Instant)>>>,
    max_frame: tokio::sync::OnceCell<u32>,
    retrying: watch::Receiver<Option<Error>>,
}

/// Sends records in batches. Clones share the same batches and connection.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.config)
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
        let (tx, rx) = mpsc::unbounded_channel();
        let linger_wake = Arc::new(Notify::new());
        let (retrying_tx, retrying) = watch::channel(None);
        let inner = Arc::new(Inner {
            retrying,
            client: client.clone(),
            buffer: Arc::new(Semaphore::new(
                config.buffer_bytes.min(Semaphore::MAX_PERMITS),
            )),
            config: config.clone(),
            state: Mutex::new(State::default()),
            ready: tx,
            linger_wake: linger_wake.clone(),
            partitions: Arc::default(),
            max_frame: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(dispatch(
            client,
            rx,
            config.max_in_flight.max(1),
            inner.partitions.clone(),
            Arc::new(retrying_tx),
        ));
        tokio::spawn(linger(Arc::downgrade(&inner), linger_wake));
        Producer { inner }
    }

    /// The topic's partition count: cached, asked again once older than `metadata_max_age`.
    async fn partition_count(&self, topic: &TopicName) -> Result<u32, Error> {
        let cached = self
            .inner
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied();
        if let Some((n, at)) = cached
            && at.elapsed() < self.inner.config.metadata_max_age
        {
            return Ok(n);
        }
        let described = Admin::new(self.inner.client.clone())
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
        self.inner
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
            .get_or_try_init(|| self.inner.client.max_frame_bytes())
            .await?;
        Ok((*max_frame as usize).saturating_sub(HEADER_LEN + 1024))
    }

    /// Adds a record to its partition's batch. Waits only when `buffer_bytes` are outstanding.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, Error> {
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
        if size > limit || size > self.inner.config.buffer_bytes {
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
        let batch_bytes = self.inner.config.batch_bytes.min(limit).max(1);
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
        if st
            .open
            .get(&key)
            .is_some_and(|o| !o.builder.is_empty() && o.builder.size() + size > batch_bytes)
            && let Some(open) = st.open.remove(&key)
        {
            self.inner.ship(&mut st, key.0.clone(), partition, open);
        }
        let created = !st.open.contains_key(&key);
        let linger = self.inner.config.linger;
        if created {
            st.open
                .insert(key.clone(), Open::new(batch_bytes, linger, count));
        }
        let Some(open) = st.open.get_mut(&key) else {
            return Err(Error::Closed);
        };
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
            && let Some(open) = st.open.remove(&key)
        {
            self.inner.ship(&mut st, key.0, partition, open);
        }
        drop(st);
        if created {
            self.inner.linger_wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends every open batch and waits until all records sent so far are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.ship_all();
        let (tx, rx) = oneshot::channel();
        self.inner
            .ready
            .send(Ready::Flush(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// `Some(last error)` while batches are being retried after a retriable failure (the
    /// broker unreachable, restarting, its disk full); `None` again once one is acknowledged.
    pub fn watch_retries(&self) -> watch::Receiver<Option<Error>> {
        self.inner.retrying.clone()
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

impl Inner {
    fn ship(&self, st: &mut State, topic: TopicName, partition: u32, open: Open) {
        if st.sticky.get(&topic) == Some(&partition) {
            st.sticky
                .insert(topic.clone(), (partition + 1) % open.partitions.max(1));
        }
        let ready = Ready::Batch {
            topic,
            partition,
            bytes: open.builder.finish(),
            deadline: open.opened + self.config.delivery_timeout,
            ack_tx: open.ack_tx,
            permits: open.permits,
        };
        // Sent under the state lock, so batches reach the dispatcher in the order they closed.
        if let Err(mpsc::error::SendError(Ready::Batch { ack_tx, .. })) = self.ready.send(ready) {
            let _ = ack_tx.send(Err(Error::Closed));
        }
    }

    fn ship_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open: Vec<_> = st.open.drain().collect();
        for ((topic, partition), o) in open {
            self.ship(&mut st, topic, partition, o);
        }
    }

    /// Ships batches whose linger expired; returns the next deadline.
    fn ship_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<_> = st
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(o) = st.open.remove(&key) {
                self.ship(&mut st, key.0, key.1, o);
            }
        }
        st.open.values().map(|o| o.deadline).min()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: send what is buffered; the dispatcher finishes in the background.
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

async fn dispatch(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Ready>,
    max_in_flight: usize,
    counts: Arc<Mutex<HashMap<TopicName, (u32, Instant)>>>,
    retrying: Arc<watch::Sender<Option<Error>>>,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    while let Some(item) = rx.recv().await {
        match item {
            Ready::Flush(done) => {
                if let Ok(all) = in_flight.acquire_many(max_in_flight as u32).await {
                    drop(all);
                }
                let _ = done.send(());
            }
            Ready::Batch {
                topic,
                partition,
                bytes,
                deadline,
                ack_tx,
                permits,
            } => {
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let request = ProduceRequest { topic, partition };
                // Written to the socket now, in order; the acknowledgement is awaited apart.
                // Reconnecting may take a while when the broker is away: bounded by the deadline.
                let first =
                    tokio::time::timeout_at(deadline, client.enqueue(&request, bytes.clone()))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::DeliveryTimeout {
                                last: "could not reach the broker".into(),
                            })
                        });
                let (client, counts, retrying) = (client.clone(), counts.clone(), retrying.clone());
                tokio::spawn(async move {
                    let attempt = async {
                        match first {
                            Ok(response) => response.await.map(|(r, _)| r.base_offset),
                            Err(e) => Err(e),
                        }
                    };
                    let result = match tokio::time::timeout_at(deadline, attempt).await {
                        Ok(Err(e))
                            if e.is_retriable() && !matches!(e, Error::DeliveryTimeout { .. }) =>
                        {
                            retry(&client, &request, bytes, e, deadline, &retrying).await
                        }
                        Ok(other) => other,
                        Err(_) => Err(Error::DeliveryTimeout {
                            last: "no acknowledgement".into(),
                        }),
                    };
                    match &result {
                        Ok(_) => {
                            retrying.send_if_modified(|r| r.take().is_some());
                        }
                        Err(e) if e.code() == Some(rill_protocol::ErrorCode::UnknownPartition) => {
                            // The topic changed shape (deleted and created again smaller).
                            counts
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&request.topic);
                        }
                        Err(_) => {}
                    }
                    let _ = ack_tx.send(result);
                    drop((slot, permits));
                });
            }
        }
    }
}

/// Resends a batch after a retriable failure, with backoff, until it is acknowledged, fails
/// for good, or `deadline` passes (`DeliveryTimeout`, naming the last error).
async fn retry(
    client: &Client,
    request: &ProduceRequest,
    bytes: Bytes,
    mut last: Error,
    deadline: Instant,
    retrying: &watch::Sender<Option<Error>>,
) -> Result<u64, Error> {
    let cfg = client.config();
    let mut backoff = cfg.min_backoff;
    loop {
        tracing::debug!(error = %last, topic = %request.topic, partition = request.partition, "retrying produce");
        retrying.send_replace(Some(last.clone()));
        if Instant::now() + backoff >= deadline {
            return Err(Error::DeliveryTimeout {
                last: last.to_string(),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
        let attempt = async { client.enqueue(request, bytes.clone()).await?.await };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok((r, _))) => return Ok(r.base_offset),
            Ok(Err(e)) if e.is_retriable() => last = e,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::DeliveryTimeout {
                    last: last.to_string(),
                });
            }
        }
    }
}
