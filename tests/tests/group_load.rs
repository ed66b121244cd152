//! Group coordination keeps working for a member of thousands of partitions, idle or busy.
//!
//! `RILL_GROUP_SOAK_SECS` (default 60) sets how long each test watches the membership.

use bytes::Bytes;
use futures::StreamExt;
use rill_client::{
    Admin, Client, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig, ProducerRecord,
    TopicConfig,
};
use rill_e2e::Broker;
use std::time::Duration;

const PARTITIONS: u32 = 2_000;

fn soak() -> Duration {
    let secs = std::env::var("RILL_GROUP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Joins one member to `topic`, waits for all its partitions, then watches the assignment for
/// the soak period while draining the stream (and, if `load` is given, while it runs). Fails if
/// the member ever loses its generation. Returns the records read.
async fn hold_generation(
    addr: &str,
    topic: &str,
    load: Option<tokio::task::JoinHandle<(u64, Duration)>>,
) -> u64 {
    let mut config = ConsumerConfig::new("g", [topic]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let client = Client::connect(addr).await.unwrap();
    let mut consumer = Consumer::subscribe(client, config).unwrap();
    let mut w = consumer.watch_assignment();
    let first = tokio::time::timeout(
        Duration::from_secs(120),
        w.wait_for(|a| a.partitions.len() == PARTITIONS as usize),
    )
    .await
    .expect("the member was not assigned every partition")
    .unwrap()
    .clone();
    let mut read = 0u64;
    let watch = async {
        loop {
            tokio::select! {
                changed = w.changed() => {
                    changed.unwrap();
                    let now = w.borrow_and_update().clone();
                    panic!("the member lost generation {}: now {} with {} partitions", first.generation, now.generation, now.partitions.len());
                }
                r = consumer.next() => {
                    r.expect("stream ended").expect("consumer error");
                    read += 1;
                }
            }
        }
    };
    // Nothing may happen to the membership for the whole period: the timeout is the pass.
    let _ = tokio::time::timeout(soak(), watch).await;
    if let Some(load) = load {
        let (produced, took) = load.await.unwrap();
        assert!(produced > 0);
        eprintln!(
            "produced {produced} records of 1 KB in {took:?}: {:.1} MB/s",
            produced as f64 / 1000.0 / took.as_secs_f64()
        );
    }
    consumer.close().await.unwrap();
    read
}

/// The bug: every fetch reserved half a frame (8 MiB) of its connection's 64 MiB response
/// budget and heartbeats shared the connection with fetches, so a member of a 400-partition idle
/// topic queued its heartbeats behind long polls and was expired by its own group within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_2000_idle_partitions_keeps_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("idle", PARTITIONS, TopicConfig::default())
        .await
        .unwrap();
    let read = hold_generation(broker.addr(), "idle", None).await;
    assert_eq!(read, 0);
}

/// The same with about 10 MB/s flowing through 50 of the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_2000_partitions_keeps_its_generation_under_10_mb_s() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("busy", PARTITIONS, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(
        Client::connect(broker.addr()).await.unwrap(),
        ProducerConfig::default(),
    );
    // 10 MB/s: every 10 ms, 100 KB as 100 records of 1 KB over 50 partitions. Bounded by the
    // soak period plus the time the member needs to join.
    let until = tokio::time::Instant::now() + soak() + Duration::from_secs(20);
    let load = tokio::spawn(async move {
        let value = Bytes::from(vec![b'x'; 1000]);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut produced = 0u64;
        let mut pending = Vec::new();
        let started = tokio::time::Instant::now();
        while tokio::time::Instant::now() < until {
            tick.tick().await;
            for i in 0..100u32 {
                let record = ProducerRecord::new("busy", value.clone()).partition(i % 50);
                pending.push(producer.send(record).await.unwrap());
            }
            if pending.len() >= 10_000 {
                for d in pending.drain(..) {
                    d.await.unwrap();
                }
            }
            produced += 100;
        }
        producer.flush().await.unwrap();
        for d in pending {
            d.await.unwrap();
        }
        (produced, started.elapsed())
    });
    let read = hold_generation(broker.addr(), "busy", Some(load)).await;
    assert!(read > 0, "records flowed to the member");
    eprintln!("read {read} records of 1 KB while holding the generation");
}
