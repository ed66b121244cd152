//! The benchmark scenarios. Each returns what it moved and how long it took; every consuming
//! scenario checks the count and checksum of what it read against what was produced.

use crate::stats::{self, HEADER};
use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rill_client::{
    Client, Consumer, ConsumerConfig, FetchOptions, OffsetReset, PartitionReader, Producer,
    ProducerConfig, RecordRef, StartOffset,
};
use rill_protocol::batch::BatchBuilder;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Params {
    pub addr: String,
    /// How every client of the run connects (TLS among it).
    pub client: rill_client::ClientConfig,
    pub targets: Vec<(String, u32)>,
    pub producers: usize,
    pub consumers: usize,
    pub message_size: usize,
    pub messages: u64,
    pub duration: Option<Duration>,
    pub batch: usize,
    pub in_flight: usize,
    pub rate: u64,
    /// Send through `rill_client::Producer` (per-record API with linger) instead of pre-built batches.
    pub via_producer: bool,
    pub linger: Duration,
    /// With `via_producer`: the producer's idempotence (on by default).
    pub idempotent: bool,
    /// How group members commit.
    pub commit: Commit,
    /// How consume reads.
    pub reader: Reader,
    /// Whether readers record each message's end-to-end latency.
    pub end_to_end: bool,
    pub start: Instant,
}

/// What reader tasks read, added up.
async fn joined(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Consumed>>>,
) -> anyhow::Result<Consumed> {
    let mut total = Consumed::default();
    for t in tasks {
        let r = t.await??;
        total.messages += r.messages;
        total.checksum = total.checksum.wrapping_add(r.checksum);
        total.e2e_micros.extend(r.e2e_micros);
    }
    Ok(total)
}

/// How the consume scenarios read a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// `PartitionReader::next`: one owned record at a time.
    Records,
    /// `PartitionReader::poll_batch`: whole fetches, records read in place.
    Batches,
    /// `Client::fetch` with 4 MiB fetches, one at a time.
    Fetch,
}

/// What a producer sent: messages acknowledged, their checksum, per-batch ack latencies (us),
/// and how long producing took.
#[derive(Debug, Default)]
pub struct Produced {
    pub messages: u64,
    pub checksum: u64,
    pub ack_micros: Vec<u64>,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
pub struct Consumed {
    pub messages: u64,
    pub checksum: u64,
    pub e2e_micros: Vec<u64>,
    /// When the first record arrived (group-consume: the group's join, with the broker's
    /// initial rebalance delay, comes before it and is not timed).
    pub first_at: Option<Instant>,
}

fn split<T: Clone>(items: &[T], n: usize, i: usize) -> Vec<T> {
    items.iter().skip(i).step_by(n.max(1)).cloned().collect()
}

/// `producers` tasks, each with its own connection, sending batches of `batch` messages
/// round-robin over its partitions with up to `in_flight` batches awaiting acknowledgement.
pub async fn produce(p: &Params, progress: Arc<AtomicU64>) -> anyhow::Result<Produced> {
    let mut tasks = Vec::new();
    for i in 0..p.producers {
        let share = p.messages / p.producers as u64
            + u64::from((i as u64) < p.messages % p.producers as u64);
        let targets = if p.targets.len() >= p.producers {
            split(&p.targets, p.producers, i)
        } else {
            p.targets.clone()
        };
        let (client, p) = (
            Client::connect_with(&p.addr, p.client.clone()).await?,
            p.clone(),
        );
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            produce_one(client, &p, i as u64, share, targets, progress).await
        }));
    }
    let started = Instant::now();
    let mut total = Produced::default();
    for t in tasks {
        let r = t.await??;
        total.messages += r.messages;
        total.checksum = total.checksum.wrapping_add(r.checksum);
        total.ack_micros.extend(r.ack_micros);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn produce_one(
    client: Client,
    p: &Params,
    producer: u64,
    share: u64,
    targets: Vec<(String, u32)>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Produced> {
    if p.via_producer {
        return produce_records(client, p, producer, share, targets, progress).await;
    }
    let mut out = Produced::default();
    let mut pending = FuturesUnordered::new();
    let (mut next, mut target) = (0u64, 0usize);
    let deadline = p.duration.map(|d| Instant::now() + d);
    loop {
        let more = next < share && deadline.is_none_or(|d| Instant::now() < d);
        if more && pending.len() < p.in_flight {
            let n = (p.batch as u64).min(share - next);
            let mut b = BatchBuilder::with_capacity(n as usize * (p.message_size + 8));
            let now = p.start.elapsed().as_nanos() as u64;
            let mut sum = 0u64;
            for k in 0..n {
                let seq = producer << 40 | (next + k);
                b.push(
                    None,
                    &stats::payload(seq, now, p.message_size),
                    &[],
                    now_ms(),
                );
                sum = sum.wrapping_add(stats::mix(seq));
            }
            let (topic, partition) = &targets[target % targets.len()];
            target += 1;
            next += n;
            let ack = client.send_batch(topic, *partition, b.finish()).await?;
            let sent = Instant::now();
            pending.push(async move { (ack.await, sent, n, sum) });
            continue;
        }
        let Some((ack, sent, n, sum)) = pending.next().await else {
            break;
        };
        ack.context("produce failed")?;
        out.ack_micros.push(sent.elapsed().as_micros() as u64);
        out.messages += n;
        out.checksum = out.checksum.wrapping_add(sum);
        progress.fetch_add(n, Ordering::Relaxed);
    }
    Ok(out)
}

/// Bytes a record of the bench's adds to a batch beyond its value (about: lengths, deltas).
pub const RECORD_OVERHEAD: usize = 12;

/// The same load through the per-record `Producer` API (`send_ref`: one call per record, the
/// value borrowed): it batches by `batch` messages' worth of bytes or `linger`, whichever comes
/// first. Like an application that does not await every record, it keeps the `Delivery` of
/// the last record of every `batch` (the records of a partition are acknowledged in order)
/// and drops the others; what the broker stored is verified afterwards either way.
async fn produce_records(
    client: Client,
    p: &Params,
    producer: u64,
    share: u64,
    targets: Vec<(String, u32)>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Produced> {
    let config = ProducerConfig {
        linger: p.linger,
        batch_bytes: p.batch * (p.message_size + RECORD_OVERHEAD),
        max_in_flight: p.in_flight,
        idempotent: p.idempotent,
        ..ProducerConfig::default()
    };
    let sender = Producer::new(client, config);
    let mut out = Produced::default();
    let mut pending = std::collections::VecDeque::new();
    let deadline = p.duration.map(|d| Instant::now() + d);
    let mut value = stats::payload(0, 0, p.message_size);
    let (mut group, mut sum, mut now) = (0u64, 0u64, 0u64);
    for next in 0..share {
        if next % p.batch as u64 == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            now = p.start.elapsed().as_nanos() as u64;
        }
        let seq = producer << 40 | next;
        stats::stamp(&mut value, seq, now);
        let (topic, partition) = &targets[next as usize / p.batch % targets.len()];
        let delivery = sender
            .send_ref(topic, RecordRef::new(&value).partition(*partition))
            .await?;
        group += 1;
        sum = sum.wrapping_add(stats::mix(seq));
        if group == p.batch as u64 || next + 1 == share {
            pending.push_back((delivery, group, sum));
            (group, sum) = (0, 0);
            // Settle acknowledgements as they come, keeping memory bounded.
            while pending.len() > 4 * p.in_flight.max(5) {
                settle(pending.pop_front(), &mut out, &progress).await?;
            }
        }
    }
    if group > 0 {
        // The run stopped by time in the middle of a group: wait for everything sent.
        sender.flush().await?;
        out.messages += group;
        out.checksum = out.checksum.wrapping_add(sum);
    }
    sender.flush().await?;
    while !pending.is_empty() {
        settle(pending.pop_front(), &mut out, &progress).await?;
    }
    Ok(out)
}

async fn settle(
    done: Option<(rill_client::Delivery, u64, u64)>,
    out: &mut Produced,
    progress: &AtomicU64,
) -> anyhow::Result<()> {
    if let Some((delivery, n, sum)) = done {
        delivery.await.context("produce failed")?;
        out.messages += n;
        out.checksum = out.checksum.wrapping_add(sum);
        progress.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// `consumers` tasks reading their share of the partitions from offset 0 until `expected`
/// messages in total have been read.
pub async fn consume(
    p: &Params,
    expected: u64,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let read = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..p.consumers {
        let targets = split(&p.targets, p.consumers, i);
        let (client, p) = (
            Client::connect_with(&p.addr, p.client.clone()).await?,
            p.clone(),
        );
        let (progress, read) = (progress.clone(), read.clone());
        tasks.push(tokio::spawn(async move {
            consume_one(client, &p, targets, expected, read, progress).await
        }));
    }
    joined(tasks).await
}

async fn consume_one(
    client: Client,
    p: &Params,
    targets: Vec<(String, u32)>,
    expected: u64,
    read: Arc<AtomicU64>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let mut out = Consumed::default();
    if targets.is_empty() {
        return Ok(out);
    }
    if p.reader != Reader::Fetch {
        return read_partitions(client, p, targets, expected, read, progress).await;
    }
    let options = FetchOptions {
        max_bytes: 4 << 20,
        min_bytes: 1,
        max_wait: Duration::from_millis(100),
        max_records: None,
    };
    let mut offsets = vec![0u64; targets.len()];
    let mut i = 0;
    while read.load(Ordering::Relaxed) < expected {
        let (topic, partition) = &targets[i % targets.len()];
        let r = client
            .fetch(topic, *partition, offsets[i % targets.len()], &options)
            .await?;
        offsets[i % targets.len()] = r.next_offset;
        let now = p.start.elapsed().as_nanos() as u64;
        for rec in &r.records {
            let seq = stats::seq_of(&rec.value).context("short message")?;
            out.checksum = out.checksum.wrapping_add(stats::mix(seq));
            if let Some(sent) = stats::sent_ns_of(&rec.value).filter(|_| p.end_to_end) {
                out.e2e_micros.push(now.saturating_sub(sent) / 1000);
            }
        }
        let n = r.records.len() as u64;
        out.messages += n;
        read.fetch_add(n, Ordering::Relaxed);
        progress.fetch_add(n, Ordering::Relaxed);
        i += 1;
    }
    Ok(out)
}

/// One `PartitionReader` per partition, with its default settings, each in its own task,
/// until `expected` messages were read in all.
async fn read_partitions(
    client: Client,
    p: &Params,
    targets: Vec<(String, u32)>,
    expected: u64,
    read: Arc<AtomicU64>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for (topic, partition) in targets {
        let mut reader =
            PartitionReader::new(client.clone(), &topic, partition, StartOffset::Offset(0)).await?;
        let (p, read, progress) = (p.clone(), read.clone(), progress.clone());
        let (mut done, done_tx) = (done.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Consumed::default();
            let count = |value: &[u8], out: &mut Consumed, now: u64| -> anyhow::Result<()> {
                let seq = stats::seq_of(value).context("short message")?;
                out.checksum = out.checksum.wrapping_add(stats::mix(seq));
                if let Some(sent) = stats::sent_ns_of(value).filter(|_| p.end_to_end) {
                    out.e2e_micros.push(now.saturating_sub(sent) / 1000);
                }
                Ok(())
            };
            // Made once: the reader that did not reach the end is stopped through it.
            let stop = async move {
                let _ = done.wait_for(|d| *d).await;
            };
            let mut stop = std::pin::pin!(stop);
            loop {
                let n = if p.reader == Reader::Batches {
                    let fetched = tokio::select! {
                        biased;
                        f = reader.poll_batch() => f?,
                        _ = &mut stop => break,
                    };
                    let now = p.start.elapsed().as_nanos() as u64;
                    for r in fetched.records() {
                        count(r.value, &mut out, now)?;
                    }
                    fetched.len() as u64
                } else {
                    let record = tokio::select! {
                        biased;
                        r = reader.next() => r?,
                        _ = &mut stop => break,
                    };
                    let now = if p.end_to_end {
                        p.start.elapsed().as_nanos() as u64
                    } else {
                        0
                    };
                    count(&record.value, &mut out, now)?;
                    1
                };
                out.messages += n;
                progress.fetch_add(n, Ordering::Relaxed);
                if read.fetch_add(n, Ordering::Relaxed) + n >= expected {
                    done_tx.send_replace(true);
                    break;
                }
            }
            anyhow::Ok(out)
        }));
    }
    joined(tasks).await
}

/// How group-consume members commit their position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Commit {
    /// Auto-commit every 5 s (the consumer's default).
    Auto,
    /// `commit_async` after every poll (a record, or a batch with `--reader batches`).
    Async,
    /// `commit().await` after every poll.
    Sync,
}

/// `consumers` members of a fresh consumer group read until `expected` messages arrived.
pub async fn group_consume(
    p: &Params,
    expected: u64,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let group = format!("bench-{}", std::process::id());
    let topics: Vec<String> = p
        .targets
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let read = Arc::new(AtomicU64::new(0));
    let first_at = Arc::new(std::sync::OnceLock::new());
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for _ in 0..p.consumers {
        // The consumer's default settings, as a user has them.
        let mut config = ConsumerConfig::new(group.clone(), topics.clone());
        config.auto_offset_reset = OffsetReset::Earliest;
        let mut consumer = Consumer::subscribe(
            Client::connect_with(&p.addr, p.client.clone()).await?,
            config,
        )?;
        let (progress, read, commit, reader) = (progress.clone(), read.clone(), p.commit, p.reader);
        let first_at = first_at.clone();
        let (mut done, done_tx) = (done.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Consumed::default();
            // Made once: the member that did not read the last record is stopped through it.
            let stop = async move {
                let _ = done.wait_for(|d| *d).await;
            };
            let mut stop = std::pin::pin!(stop);
            loop {
                let n = if reader == Reader::Batches {
                    let batch = tokio::select! {
                        biased;
                        b = consumer.next_batch() => b.context("consumer stopped")??,
                        _ = &mut stop => break,
                    };
                    first_at.get_or_init(Instant::now);
                    for r in batch.records.records() {
                        let seq = stats::seq_of(r.value).context("short message")?;
                        out.checksum = out.checksum.wrapping_add(stats::mix(seq));
                    }
                    batch.records.len() as u64
                } else {
                    let rec = tokio::select! {
                        biased;
                        r = consumer.next() => r.context("consumer stopped")??,
                        _ = &mut stop => break,
                    };
                    first_at.get_or_init(Instant::now);
                    let seq = stats::seq_of(&rec.value).context("short message")?;
                    out.checksum = out.checksum.wrapping_add(stats::mix(seq));
                    1
                };
                out.messages += n;
                progress.fetch_add(n, Ordering::Relaxed);
                match commit {
                    Commit::Auto => {}
                    Commit::Async => drop(consumer.commit_async()),
                    Commit::Sync => consumer.commit().await?,
                }
                if read.fetch_add(n, Ordering::Relaxed) + n >= expected {
                    done_tx.send_replace(true);
                    break;
                }
            }
            consumer.close().await?;
            anyhow::Ok(out)
        }));
    }
    let mut total = joined(tasks).await?;
    total.first_at = first_at.get().copied();
    Ok(total)
}

/// One producer at a fixed rate (a batch per millisecond) and readers measuring the time from
/// send to receipt of every message.
pub async fn latency(p: &Params, progress: Arc<AtomicU64>) -> anyhow::Result<(Produced, Consumed)> {
    let duration = p.duration.unwrap_or(Duration::from_secs(10));
    let per_ms = (p.rate / 1000).max(1);
    let total = per_ms * duration.as_millis() as u64;
    let client = Client::connect_with(&p.addr, p.client.clone()).await?;
    let producer = {
        let (p, progress) = (p.clone(), progress.clone());
        tokio::spawn(async move {
            let mut out = Produced::default();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut pending = FuturesUnordered::new();
            let mut next = 0u64;
            let mut target = 0usize;
            while next < total {
                tokio::select! {
                    _ = tick.tick() => {
                        let mut b = BatchBuilder::with_capacity(per_ms as usize * (p.message_size + 8));
                        let now = p.start.elapsed().as_nanos() as u64;
                        for k in 0..per_ms {
                            b.push(None, &stats::payload(next + k, now, p.message_size), &[], now_ms());
                            out.checksum = out.checksum.wrapping_add(stats::mix(next + k));
                        }
                        let (topic, partition) = &p.targets[target % p.targets.len()];
                        target += 1;
                        next += per_ms;
                        let ack = client.send_batch(topic, *partition, b.finish()).await?;
                        let sent = Instant::now();
                        pending.push(async move { (ack.await, sent) });
                    }
                    Some((ack, sent)) = pending.next(), if !pending.is_empty() => {
                        ack?;
                        out.ack_micros.push(sent.elapsed().as_micros() as u64);
                        out.messages += per_ms;
                        progress.fetch_add(per_ms, Ordering::Relaxed);
                    }
                }
            }
            while let Some((ack, sent)) = pending.next().await {
                ack?;
                out.ack_micros.push(sent.elapsed().as_micros() as u64);
                out.messages += per_ms;
            }
            anyhow::Ok(out)
        })
    };
    let consumed = consume(
        &Params {
            consumers: p.consumers.max(1),
            ..p.clone()
        },
        total,
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    let produced = producer.await??;
    Ok((produced, consumed))
}

pub fn verify(produced: u64, produced_sum: u64, consumed: &Consumed) -> anyhow::Result<()> {
    ensure!(
        consumed.messages == produced,
        "read {} messages, {} were produced",
        consumed.messages,
        produced
    );
    if consumed.checksum != produced_sum {
        bail!("checksum mismatch: the messages read are not the messages produced");
    }
    Ok(())
}

/// Bytes of user payload per message (the message size, at least the 16-byte header).
pub fn payload_bytes(message_size: usize) -> usize {
    message_size.max(HEADER)
}

/// Wall-clock milliseconds: record timestamps are compared with it by retention.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Abuse running beside a measurement: connections that are opened and never used, and
/// connections flooding the broker with tiny requests (`ListTopics`) at a fixed total rate.
/// It runs on its own runtime thread, like another service would, so its tasks do not queue
/// ahead of the measured client's on the same workers.
pub struct Abuse {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl Abuse {
    /// Opens `idle` connections, then starts `flooders` connections that together send
    /// `rate` requests per second (a burst every millisecond, answers awaited before the next
    /// burst) until [`Abuse::stop`] or `max` has passed. Returns once all are connected.
    pub async fn start(
        addr: &str,
        client: &rill_client::ClientConfig,
        idle: usize,
        rate: u64,
        flooders: usize,
        max: Duration,
    ) -> anyhow::Result<Abuse> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rill-bench-abuse")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (addr, config) = (addr.to_string(), client.clone());
        let task = runtime.spawn(async move {
            let mut idle_conns = Vec::with_capacity(idle);
            for i in 0..idle {
                idle_conns.push(
                    tokio::net::TcpStream::connect(&addr)
                        .await
                        .with_context(|| format!("opening idle connection {i}"))?,
                );
            }
            let per_ms = (rate / 1000 / flooders.max(1) as u64).max(1) as usize;
            let mut tasks = Vec::new();
            for _ in 0..if rate == 0 { 0 } else { flooders.max(1) } {
                let client = Client::connect_with(&addr, config.clone()).await?;
                let stopped = stopped.clone();
                tasks.push(tokio::spawn(async move {
                    let deadline = Instant::now() + max;
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let mut answered = 0u64;
                    while !*stopped.borrow() && Instant::now() < deadline {
                        tick.tick().await;
                        let burst: FuturesUnordered<_> = (0..per_ms)
                            .map(|_| client.call(&rill_protocol::messages::ListTopicsRequest {}))
                            .collect();
                        for r in burst.collect::<Vec<_>>().await {
                            r?;
                            answered += 1;
                        }
                    }
                    anyhow::Ok(answered)
                }));
            }
            let _ = ready_tx.send(());
            let mut answered = 0;
            for t in tasks {
                answered += t.await??;
            }
            drop(idle_conns);
            anyhow::Ok(answered)
        });
        if ready.await.is_err() {
            // The setup failed before the flood started: report why.
            task.await??;
            bail!("the abuse ended before it started");
        }
        Ok(Abuse {
            runtime,
            stop,
            task,
        })
    }

    /// Stops the flood and closes every connection; returns the tiny requests answered.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.send_replace(true);
        let answered = self.task.await??;
        self.runtime.shutdown_background();
        Ok(answered)
    }
}

/// One batch of `count` records of `size` bytes, what the heavy principal sends again and again.
pub fn heavy_batch(size: usize, count: usize) -> bytes::Bytes {
    let mut b = BatchBuilder::with_capacity(count * (size + 8));
    let value = vec![0x5a; size];
    for _ in 0..count {
        b.push(None, &value, &[], now_ms());
    }
    b.finish()
}

/// A principal producing one batch over and over, 8 in flight, as fast as its quota lets it,
/// on its own runtime (so its client work does not slow the measured one's).
pub struct Heavy {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<(u64, Instant, u64, Instant)>>,
    started: Instant,
}

/// What the heavy producer's rate is judged over: after this much time, once its first
/// second's burst is spent.
const HEAVY_WARMUP: Duration = Duration::from_secs(2);

impl Heavy {
    pub async fn start(
        addr: &str,
        config: rill_client::ClientConfig,
        topic: String,
        batch: bytes::Bytes,
    ) -> anyhow::Result<Heavy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rill-bench-heavy")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let client = {
            let addr = addr.to_string();
            runtime
                .spawn(async move { Client::connect_with(&addr, config).await })
                .await??
        };
        let started = Instant::now();
        let task = runtime.spawn(async move {
            let mut pending = FuturesUnordered::new();
            let (mut bytes, mut warm_bytes, mut warm_at) = (0u64, 0u64, None);
            let len = batch.len() as u64;
            loop {
                while pending.len() < 8 && !*stopped.borrow() {
                    let ack = client.send_batch(&topic, 0, batch.clone()).await?;
                    pending.push(ack);
                }
                let Some(ack) = pending.next().await else {
                    break;
                };
                ack?;
                bytes += len;
                if warm_at.is_none() && started.elapsed() >= HEAVY_WARMUP {
                    (warm_bytes, warm_at) = (bytes, Some(Instant::now()));
                }
            }
            let end = Instant::now();
            anyhow::Ok((bytes, end, warm_bytes, warm_at.unwrap_or(end)))
        });
        Ok(Heavy {
            runtime,
            stop,
            task,
            started,
        })
    }

    /// Stops sending and waits for what is in flight; returns the bytes acknowledged and over
    /// how long, overall and after the warm-up.
    pub async fn stop(self) -> anyhow::Result<((u64, Duration), (u64, Duration))> {
        self.stop.send_replace(true);
        let (bytes, end, warm_bytes, warm_at) = self.task.await??;
        self.runtime.shutdown_background();
        Ok((
            (bytes, end - self.started),
            (bytes - warm_bytes, end - warm_at),
        ))
    }
}

/// What the group-coordination scenario measured.
#[derive(Debug, Default)]
pub struct Heartbeats {
    /// Latency of every heartbeat answered, in microseconds.
    pub micros: Vec<u64>,
    /// Heartbeats answered with an error (a rebalance, or a member the group dropped).
    pub refused: u64,
    pub members: usize,
}

/// `groups` consumer groups of two members each on the first target topic: every member joins
/// (the broker's two steps), then heartbeats every `every` for `duration` (starting at a random
/// point of the interval, so beats are spread out), over `connections` shared connections.
pub async fn group_heartbeats(
    p: &Params,
    groups: usize,
    every: Duration,
    connections: usize,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Heartbeats> {
    use rill_protocol::TopicName;
    use rill_protocol::messages::{AssignmentStrategy, HeartbeatRequest, JoinGroupRequest};
    let topic = TopicName::new(&p.targets.first().context("no topic")?.0)?;
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(Client::connect_with(&p.addr, p.client.clone()).await?);
    }
    let duration = p.duration.unwrap_or(Duration::from_secs(30));
    let mut tasks = tokio::task::JoinSet::new();
    for m in 0..groups * 2 {
        let client = clients[m % clients.len()].clone();
        let topic = topic.clone();
        let progress = progress.clone();
        let group = format!("bench-group-{}", m / 2);
        tasks.spawn(async move {
            let join = |member_id| JoinGroupRequest {
                group: group.clone(),
                member_id,
                client: "rill-bench".into(),
                topics: vec![topic.clone()],
                session_timeout_ms: 10_000,
                strategy: AssignmentStrategy::Range,
            };
            let issued = client.call(&join(None)).await?.0;
            let mut member = client.call(&join(Some(issued.member_id))).await?.0;
            let mut out = Heartbeats::default();
            let phase =
                Duration::from_micros(stats::mix(m as u64) % every.as_micros().max(1) as u64);
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(every);
            let until = Instant::now() + duration;
            while Instant::now() < until {
                tick.tick().await;
                let beat = HeartbeatRequest {
                    group: group.clone(),
                    member_id: member.member_id.clone(),
                    generation: member.generation,
                };
                let sent = Instant::now();
                match client.call(&beat).await {
                    Ok(_) => out.micros.push(sent.elapsed().as_micros() as u64),
                    Err(_) => {
                        out.refused += 1;
                        // Rejoin as a member would, so the rest of the run measures beats.
                        member = client.call(&join(Some(member.member_id.clone()))).await?.0;
                    }
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Heartbeats {
        members: groups * 2,
        ..Heartbeats::default()
    };
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        all.micros.extend(r.micros);
        all.refused += r.refused;
    }
    Ok(all)
}
