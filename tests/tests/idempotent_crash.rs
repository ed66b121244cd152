//! Idempotent producers through broker crashes: the broker is killed with SIGKILL at random
//! moments and restarted while `rill_client::Producer`s (idempotence on, the default) keep
//! sending keyed records and retrying. Rounds come from `RILL_CRASH_ROUNDS` (default 3):
//! `RILL_CRASH_ROUNDS=100 cargo test --release -p rill-e2e --test idempotent_crash -- --nocapture`.
//!
//! The checker reads the whole topic after every restart and at the end, and counts:
//! - lost: records acknowledged at an offset that does not hold them;
//! - duplicated: records stored more than once (a retry stored again);
//! - out of order: per key, records stored in another order than they were sent;
//! - read then lost: records a pass read that a later pass no longer finds where they were.
//!
//! All four must be 0. Records not acknowledged when the producers stop (none, normally:
//! they retry until acknowledged) may be present or not, but never twice.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rill_client::{
    Admin, Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord,
    TopicConfig,
};
use rill_e2e::Broker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOPIC: &str = "idem";
const PARTITIONS: u32 = 3;
const PRODUCERS: u64 = 3;
const KEYS: u64 = 16;
/// Records per producer at most, so every run stops by itself.
const MAX_RECORDS: u64 = 4_000_000;
/// Each producer sends this many records per millisecond at most (10,000/s), so the log
/// grows by the time a round takes, not by how fast the machine is.
const PER_MS: u64 = 10;
/// How far back from the previous end each pass re-reads, to catch a lost tail.
const RECHECK: usize = 2_000;

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
    Duration::from_millis(50 + nanos.wrapping_mul(2_654_435_761) % max_ms)
}

/// A record's identity: producer in the top 16 bits, its send number below.
fn encode(producer: u64, n: u64) -> [u8; 8] {
    (producer << 48 | n).to_be_bytes()
}

fn key_of(producer: u64, n: u64) -> String {
    format!("p{producer}-k{}", n % KEYS)
}

#[derive(Default)]
struct Sent {
    /// Acknowledged records: id -> (partition, offset).
    acked: HashMap<u64, (u32, u64)>,
    /// Records whose delivery failed (retries exhausted or a non-retriable error).
    failed: u64,
    duplicates_avoided: u64,
}

async fn produce(addr: String, producer: u64, stop: Arc<AtomicBool>, sent: Arc<Mutex<Sent>>) {
    let config = ClientConfig {
        retry_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&addr, config).await.unwrap();
    let p = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::from_millis(2),
            batch_bytes: 16 * 1024,
            ..ProducerConfig::default()
        },
    );
    let mut pending = FuturesUnordered::new();
    let mut n = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && n < MAX_RECORDS {
        if n.is_multiple_of(PER_MS) {
            pace.tick().await;
        }
        let id = producer << 48 | n;
        let record =
            ProducerRecord::new(TOPIC, encode(producer, n).to_vec()).key(key_of(producer, n));
        let delivery = p.send(record).await.expect("send is accepted");
        pending.push(async move { (id, delivery.await) });
        n += 1;
        while pending.len() > 2_000 {
            settle(pending.next().await, &sent);
        }
    }
    p.flush().await.unwrap();
    while let Some(done) = pending.next().await {
        settle(Some(done), &sent);
    }
    sent.lock().unwrap().duplicates_avoided += p.duplicates_avoided();
}

fn settle(
    done: Option<(u64, Result<rill_client::RecordMetadata, rill_client::Error>)>,
    sent: &Mutex<Sent>,
) {
    let Some((id, result)) = done else { return };
    let mut s = sent.lock().unwrap();
    match result {
        Ok(m) => {
            s.acked.insert(id, (m.partition, m.offset));
        }
        Err(e) => {
            eprintln!("record {id:#x} failed: {e}");
            s.failed += 1;
        }
    }
}

/// Every partition's records from offset `from[partition]` on, as ids (offsets are dense
/// from 0: no retention).
async fn read_from(client: &Client, from: &[usize]) -> Vec<Vec<u64>> {
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        max_bytes: 4 << 20,
        ..FetchOptions::default()
    };
    let mut out = Vec::new();
    for partition in 0..PARTITIONS {
        let start = from[partition as usize];
        let mut ids = Vec::new();
        let mut offset = start as u64;
        loop {
            let r = client
                .fetch(TOPIC, partition, offset, &options)
                .await
                .unwrap();
            if r.records.is_empty() {
                assert_eq!(offset, r.high_watermark, "partition {partition} read short");
                break;
            }
            for rec in r.records {
                assert_eq!(rec.offset, (start + ids.len()) as u64, "offsets are dense");
                ids.push(u64::from_be_bytes(rec.value[..8].try_into().unwrap()));
            }
            offset = r.next_offset;
        }
        out.push(ids);
    }
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    read_then_lost: usize,
}

/// Compares a pass that read each partition from `from[p]` with what earlier passes read
/// there: records read before and no longer found where they were.
fn read_then_lost(earlier: &[Vec<u64>], from: &[usize], now: &[Vec<u64>]) -> usize {
    let mut lost = 0;
    for (p, before) in earlier.iter().enumerate() {
        lost += before[from[p]..]
            .iter()
            .enumerate()
            .filter(|(i, id)| now[p].get(*i) != Some(id))
            .count();
    }
    lost
}

/// Checks a whole `log` against what was acknowledged and against `earlier`, what earlier
/// passes read.
fn count(log: &[Vec<u64>], acked: &HashMap<u64, (u32, u64)>, earlier: &[Vec<u64>]) -> Counts {
    let mut c = Counts {
        acknowledged: acked.len(),
        ..Counts::default()
    };
    let mut seen = std::collections::HashSet::new();
    // Per (producer, key): the last send number stored so far.
    let mut last: HashMap<(u64, u64), u64> = HashMap::new();
    for ids in log {
        for &id in ids {
            if !seen.insert(id) {
                c.duplicated += 1;
            }
            let (producer, n) = (id >> 48, id & ((1 << 48) - 1));
            if let Some(prev) = last.insert((producer, n % KEYS), n)
                && prev >= n
            {
                c.out_of_order += 1;
            }
        }
    }
    for (id, (partition, offset)) in acked {
        if log[*partition as usize].get(*offset as usize) != Some(id) {
            c.lost += 1;
        }
    }
    c.read_then_lost = read_then_lost(earlier, &vec![0; earlier.len()], log);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_through_kill_9_store_each_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    let config = TopicConfig {
        segment_bytes: Some(256 * 1024),
        ..TopicConfig::default()
    };
    admin.create_topic(TOPIC, PARTITIONS, config).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            tokio::spawn(produce(
                broker.addr().to_string(),
                p,
                stop.clone(),
                sent.clone(),
            ))
        })
        .collect();
    let mut earlier: Vec<Vec<u64>> = vec![Vec::new(); PARTITIONS as usize];
    let mut lost_after_read = 0;
    for round in 0..rounds() {
        tokio::time::sleep(jitter(400)).await;
        broker.kill9();
        broker.restart();
        // A pass over what the log gained since the last one (and the stretch before it, where
        // a lost tail would show), while the producers retry.
        let client = Client::connect(broker.addr()).await.unwrap();
        let from: Vec<usize> = earlier
            .iter()
            .map(|e| e.len().saturating_sub(RECHECK))
            .collect();
        let now = read_from(&client, &from).await;
        let lost = read_then_lost(&earlier, &from, &now);
        lost_after_read += lost;
        assert_eq!(lost, 0, "round {round}: records read before are gone");
        for (p, ids) in now.into_iter().enumerate() {
            earlier[p].truncate(from[p]);
            earlier[p].extend(ids);
        }
        let c = count(&earlier, &HashMap::new(), &[]);
        assert_eq!(
            (c.duplicated, c.out_of_order),
            (0, 0),
            "round {round}: {c:?}"
        );
        let stored: usize = earlier.iter().map(Vec::len).sum();
        println!(
            "idempotent crash round {}/{}: {stored} records stored",
            round + 1,
            rounds()
        );
    }
    // Let the producers see the last broker for a moment, then stop them; they finish their
    // retries and flush.
    tokio::time::sleep(jitter(200)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let client = Client::connect(broker.addr()).await.unwrap();
    let log = read_from(&client, &[0; PARTITIONS as usize]).await;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let mut c = count(&log, &sent.acked, &earlier);
    c.read_then_lost += lost_after_read;
    let stored: usize = log.iter().map(Vec::len).sum();
    println!(
        "idempotent crash suite: {} rounds, {} records acknowledged, {} stored, {} failed, {} \
         retries recognised as duplicates; lost {}, duplicated {}, out of order {}, read then \
         lost {}",
        rounds(),
        c.acknowledged,
        stored,
        sent.failed,
        sent.duplicates_avoided,
        c.lost,
        c.duplicated,
        c.out_of_order,
        c.read_then_lost
    );
    assert_eq!(
        (c.lost, c.duplicated, c.out_of_order, c.read_then_lost),
        (0, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(sent.failed, 0, "every record was delivered in the end");
    assert_eq!(
        stored, c.acknowledged,
        "nothing stored that was not acknowledged"
    );
    assert!(c.acknowledged > 0);
    broker.stop();
}
