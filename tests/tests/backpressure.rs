//! Producers faster than the disk are slowed down, not buffered without bound.
//!
//! `RILL_BACKPRESSURE_SECS` (default 20) sets how long the producers push.

use rill_client::{Admin, Client, ClientConfig, FetchOptions, TopicConfig};
use rill_e2e::{Broker, now_ms};
use rill_protocol::batch::BatchBuilder;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const QUEUE: u64 = 64 * MIB;
const PRODUCERS: usize = 32;
/// Batches each producer keeps awaiting acknowledgement: 32 x 8 x 1 MiB = 256 MiB offered,
/// four times the broker's queue bound.
const IN_FLIGHT: usize = 8;
/// Memory beyond the queue bound: the process itself, and each producing connection's read
/// buffer, which may hold up to a frame it has read but not yet dispatched (docs/operations.md).
const OVERHEAD: u64 = 48 * MIB + PRODUCERS as u64 * 2 * MIB;

fn batch(producer: usize, seq: u64) -> bytes::Bytes {
    let value = vec![b'v'; 1000];
    let mut b = BatchBuilder::with_capacity(1 << 20);
    b.push(
        Some(format!("{producer}/{seq}").as_bytes()),
        &value,
        &[],
        now_ms(),
    );
    for _ in 1..1000 {
        b.push(None, &value, &[], now_ms());
    }
    b.finish()
}

/// The bug: the partition writer's queue was unbounded, so 32 producers pushing 1 MiB batches
/// at a disk doing 10 MB/s grew the broker's memory until it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_faster_than_the_disk_are_held_back_within_the_memory_bound() {
    let secs: u64 = std::env::var("RILL_BACKPRESSURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let queue = QUEUE.to_string();
    let partition_queue = (16 * MIB).to_string();
    let broker = Broker::start(
        dir.path(),
        &[
            "--test-write-rate",
            "10000000",
            "--max-produce-queue-bytes",
            &queue,
            "--max-partition-queue-bytes",
            &partition_queue,
        ],
    );
    let config = ClientConfig {
        // Acknowledgements wait behind the slow disk; this test is about memory, not latency.
        request_timeout: Duration::from_secs(300),
        ..ClientConfig::default()
    };
    let admin = Admin::new(
        Client::connect_with(broker.addr(), config.clone())
            .await
            .unwrap(),
    );
    admin
        .create_topic("firehose", 4, TopicConfig::default())
        .await
        .unwrap();

    let until = Instant::now() + Duration::from_secs(secs);
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = Client::connect_with(broker.addr(), config.clone())
            .await
            .unwrap();
        producers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut in_flight = std::collections::VecDeque::new();
            let mut seq = 0u64;
            let partition = (p % 4) as u32;
            while Instant::now() < until {
                let ack = client
                    .send_batch("firehose", partition, batch(p, seq))
                    .await
                    .unwrap();
                in_flight.push_back((seq, ack));
                seq += 1;
                if in_flight.len() >= IN_FLIGHT {
                    let (s, ack) = in_flight.pop_front().unwrap();
                    acked.push((partition, ack.await.unwrap(), format!("{p}/{s}")));
                }
            }
            for (s, ack) in in_flight {
                acked.push((partition, ack.await.unwrap(), format!("{p}/{s}")));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await.unwrap());
    }
    let peak = broker.peak_rss_bytes();
    let stored: u64 = acked.len() as u64;
    eprintln!(
        "{PRODUCERS} producers, {secs} s at 10 MB/s: {stored} batches of 1 MiB acknowledged; broker peak RSS {} MiB (bound {} MiB + overhead {} MiB)",
        peak / MIB,
        QUEUE / MIB,
        OVERHEAD / MIB
    );
    assert!(stored > 0);
    assert!(
        peak < QUEUE + OVERHEAD,
        "peak RSS {} MiB is over the bound",
        peak / MIB
    );

    // Every acknowledged batch reads back, at its offset, as sent.
    let reader = Client::connect_with(broker.addr(), config).await.unwrap();
    let options = FetchOptions {
        max_bytes: 1,
        max_wait: Duration::ZERO,
        ..FetchOptions::default()
    };
    for (partition, offset, tag) in &acked {
        let r = reader
            .fetch("firehose", *partition, *offset, &options)
            .await
            .unwrap();
        let first = r.records.first().expect("the batch is there");
        assert_eq!(first.offset, *offset);
        assert_eq!(
            first.key.as_deref(),
            Some(tag.as_bytes()),
            "batch at {partition}/{offset}"
        );
    }
}
