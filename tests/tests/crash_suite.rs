//! Crash consistency, repeated: kill -9 at a random moment while producers write, restart,
//! verify. Rounds per mode come from `RILL_CRASH_ROUNDS` (default 3; e.g. 200 on demand:
//! `RILL_CRASH_ROUNDS=200 cargo test --release -p rill-e2e --test crash_suite -- --nocapture`).
//!
//! Producers send sequence-numbered batches without retrying, so every batch exists at most once
//! in the log: an acknowledged batch must be present, exactly once, at its acknowledged offsets;
//! an unacknowledged one may be present or not, but never twice. Committed group offsets get the
//! same treatment: after a crash the committed offset is one that was attempted, and not older
//! than the last acknowledged commit.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rill_client::{
    Admin, Client, ClientConfig, FetchOptions, FsyncPolicy, TopicConfig, TopicPartition,
};
use rill_e2e::{Broker, verify_segments};
use rill_protocol::TopicName;
use rill_protocol::batch::BatchBuilder;
use rill_protocol::messages::{CommitOffsetsRequest, FetchOffsetsRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PARTITIONS: u32 = 2;
const RECORDS_PER_BATCH: u64 = 50;

fn rounds() -> usize {
    std::env::var("RILL_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A pseudo-random number from the clock: the crash moment needs no better randomness.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(10 + nanos.wrapping_mul(2_654_435_761) % max_ms)
}

fn client_config() -> ClientConfig {
    // No waiting for a dead broker: a failed send is simply unacknowledged.
    ClientConfig {
        retry_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

/// (partition, base offset) -> the sequence numbers of an acknowledged batch.
type Acked = Arc<Mutex<HashMap<(u32, u64), Vec<u64>>>>;

async fn producer(addr: String, id: u64, acked: Acked) {
    let Ok(client) = Client::connect_with(&addr, client_config()).await else {
        return;
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0u64;
    loop {
        if pending.len() < 8 {
            let seqs: Vec<u64> = (next..next + RECORDS_PER_BATCH)
                .map(|s| id << 48 | s)
                .collect();
            next += RECORDS_PER_BATCH;
            let mut b = BatchBuilder::with_capacity(4096);
            for s in &seqs {
                b.push(None, &s.to_be_bytes(), &[], rill_e2e::now_ms());
            }
            let partition = (next / RECORDS_PER_BATCH) as u32 % PARTITIONS;
            match client.send_batch("crash", partition, b.finish()).await {
                Ok(ack) => pending.push(async move { (ack.await, partition, seqs) }),
                Err(_) => return, // the broker is gone
            }
            continue;
        }
        match pending.next().await {
            Some((Ok(base), partition, seqs)) => {
                acked.lock().unwrap().insert((partition, base), seqs);
            }
            Some((Err(_), _, _)) | None => return,
        }
    }
}

/// The records of `partition` from `from` to its end, as sequence numbers indexed by
/// `offset - from` (offsets are dense), and the end offset.
async fn read_partition(client: &Client, partition: u32, from: u64) -> (Vec<u64>, u64) {
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        max_bytes: 4 << 20,
        ..FetchOptions::default()
    };
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = client
            .fetch("crash", partition, offset, &options)
            .await
            .unwrap();
        if r.records.is_empty() {
            assert_eq!(
                offset, r.high_watermark,
                "partition {partition} stopped short of its end"
            );
            return (out, offset);
        }
        for rec in r.records {
            assert_eq!(rec.offset, from + out.len() as u64, "offsets are not dense");
            out.push(u64::from_be_bytes(rec.value[..8].try_into().unwrap()));
        }
        offset = r.next_offset;
    }
}

/// What one pass over the log from `from` found.
struct Check {
    present: usize,
    /// (partition, offset, sequence) of acknowledged records missing or displaced.
    lost: Vec<(u32, u64, u64)>,
    /// Sequence numbers found more than once.
    duplicates: Vec<u64>,
    end: [u64; PARTITIONS as usize],
}

/// Reads every partition from `from` and checks each batch of `acked` (all of which must lie at
/// or after `from`) is present at its acknowledged offsets, and no sequence number is stored twice.
async fn check(
    client: &Client,
    from: [u64; PARTITIONS as usize],
    acked: &HashMap<(u32, u64), Vec<u64>>,
) -> Check {
    let mut out = Check {
        present: 0,
        lost: Vec::new(),
        duplicates: Vec::new(),
        end: from,
    };
    // Seen sequence numbers: one flag per sequence, per producer (the top 16 bits).
    let mut seen: HashMap<u64, Vec<bool>> = HashMap::new();
    for partition in 0..PARTITIONS {
        let start = from[partition as usize];
        let (log, end) = read_partition(client, partition, start).await;
        for &seq in &log {
            let flags = seen.entry(seq >> 48).or_default();
            let i = (seq & ((1 << 48) - 1)) as usize;
            if flags.len() <= i {
                flags.resize(i + 1, false);
            }
            if std::mem::replace(&mut flags[i], true) {
                out.duplicates.push(seq);
            }
        }
        for ((_, base), seqs) in acked.iter().filter(|((p, _), _)| *p == partition) {
            for (i, seq) in seqs.iter().enumerate() {
                let offset = base + i as u64;
                let stored = offset
                    .checked_sub(start)
                    .and_then(|at| log.get(at as usize));
                if stored != Some(seq) {
                    out.lost.push((partition, offset, *seq));
                }
            }
        }
        out.present += log.len();
        out.end[partition as usize] = end;
    }
    out.lost.sort_unstable();
    out
}

fn assert_intact(c: &Check, label: &str, when: &str) {
    assert!(
        c.duplicates.is_empty(),
        "[{label}] {when}: {} sequences stored twice, first {:#x?}",
        c.duplicates.len(),
        &c.duplicates[..c.duplicates.len().min(10)]
    );
    assert!(
        c.lost.is_empty(),
        "[{label}] {when}: {} acknowledged records lost; first (partition, offset, seq): {:?}",
        c.lost.len(),
        &c.lost[..c.lost.len().min(10)]
    );
}

async fn run(fsync: FsyncPolicy, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    {
        let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
        let config = TopicConfig {
            fsync: Some(fsync),
            segment_bytes: Some(64 * 1024),
            ..TopicConfig::default()
        };
        admin
            .create_topic("crash", PARTITIONS, config)
            .await
            .unwrap();
    }
    let mut all_acked = HashMap::new();
    let mut verified_to = [0; PARTITIONS as usize];
    let topic = TopicName::new("crash").unwrap();
    let tp = TopicPartition {
        topic: topic.clone(),
        partition: 0,
    };
    let (mut last_acked_commit, mut attempted) = (None::<u64>, Vec::<u64>::new());
    let mut lost_total = 0;
    for round in 0..rounds() {
        let acked: Acked = Arc::default();
        let producers: Vec<_> = (0..2)
            .map(|p| {
                tokio::spawn(producer(
                    broker.addr().to_string(),
                    (round * 2 + p) as u64,
                    acked.clone(),
                ))
            })
            .collect();
        // Group commits racing the crash too.
        let committer = {
            let addr = broker.addr().to_string();
            let tp = tp.clone();
            tokio::spawn(async move {
                let mut done = (None, Vec::new());
                let Ok(client) = Client::connect_with(&addr, client_config()).await else {
                    return done;
                };
                for i in 0.. {
                    let offset = (round as u64) << 32 | i;
                    done.1.push(offset);
                    let commit = CommitOffsetsRequest {
                        group: "crashers".into(),
                        member_id: None,
                        generation: None,
                        offsets: vec![(tp.clone(), offset)],
                    };
                    match client.call(&commit).await {
                        Ok(_) => done.0 = Some(offset),
                        Err(_) => return done,
                    }
                }
                done
            })
        };
        tokio::time::sleep(jitter(300)).await;
        broker.kill9();
        for p in producers {
            p.await.unwrap();
        }
        let (acked_commit, tried) = committer.await.unwrap();
        last_acked_commit = acked_commit.or(last_acked_commit);
        attempted.extend(tried);
        broker.restart();

        // Verify after every round what the log gained since the last one: everything
        // acknowledged in this round is there, once, in place, and the log never shrank.
        let client = Client::connect(broker.addr()).await.unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        let c = check(&client, verified_to, &acked).await;
        all_acked.extend(acked);
        let records: usize = all_acked.values().map(Vec::len).sum();
        let present: u64 = c.end.iter().sum();
        println!(
            "crash suite [{label}] round {}/{}: acknowledged {records}, present {present}, lost {}",
            round + 1,
            rounds(),
            c.lost.len()
        );
        lost_total += c.lost.len();
        assert_intact(&c, label, &format!("round {round}"));
        verified_to = c.end;
        let committed = client
            .call(&FetchOffsetsRequest {
                group: "crashers".into(),
                partitions: vec![tp.clone()],
            })
            .await
            .unwrap()
            .0
            .offsets[0]
            .1;
        if let Some(last) = last_acked_commit {
            let c = committed.expect("an acknowledged commit must survive");
            assert!(
                c >= last && attempted.contains(&c),
                "[{label}] round {round}: committed {c:#x}, last acknowledged {last:#x}"
            );
        }
    }
    // One last pass over the whole log: nothing acknowledged in any round went missing later.
    let client = Client::connect(broker.addr()).await.unwrap();
    let c = check(&client, [0; PARTITIONS as usize], &all_acked).await;
    assert_intact(&c, label, "final pass");
    broker.stop();
    let whole: u64 = verify_segments(&data).iter().map(|(_, n)| n).sum();
    assert_eq!(
        whole, c.present as u64,
        "segment files and fetches disagree"
    );
    let records: usize = all_acked.values().map(Vec::len).sum();
    println!(
        "crash suite [{label}]: {} rounds, {records} records acknowledged, {} recovered (in whole \
         batches), {} lost",
        rounds(),
        c.present,
        lost_total + c.lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_rounds_lose_nothing_acknowledged_under_fsync_always() {
    run(FsyncPolicy::Always, "fsync=always").await;
}

/// A process crash cannot lose what the OS already holds, so interval mode must lose nothing
/// here either. What a power loss could cost (the records above the partition's durable offset,
/// at most MS of writes) is simulated against the log directly, in
/// `broker/src/log/tests.rs::a_power_loss_keeps_everything_below_the_durable_offset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_rounds_lose_nothing_acknowledged_under_fsync_interval() {
    run(FsyncPolicy::Interval { ms: 50 }, "fsync=interval:50").await;
}
