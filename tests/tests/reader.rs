//! Reading ahead of the application: the partition reader's prefetch and a group member's
//! fetchers hold bounded memory while the application does not read, and every record comes
//! exactly once, in order, through each of their APIs.

use futures::StreamExt;
use rill_client::{
    Admin, BatchBuilder, Client, Consumer, ConsumerConfig, FetchOptions, OffsetReset,
    PartitionReader, StartOffset, TopicConfig,
};
use rill_e2e::{Broker, http_get};
use std::time::{Duration, Instant};

/// Record-batch bytes the broker has served for `topic` (its `rill_bytes_out_total`).
async fn bytes_out(metrics: &str, topic: &str) -> u64 {
    let addr = metrics.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let label = format!("topic=\"{topic}\"");
    body.lines()
        .filter(|l| l.starts_with("rill_bytes_out_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `batches` batches of `per_batch` 100-byte records; record i holds i in its first 8 bytes.
async fn fill(client: &Client, topic: &str, batches: u64, per_batch: u64) {
    for b in 0..batches {
        let mut builder = BatchBuilder::with_capacity((per_batch * 120) as usize);
        for i in 0..per_batch {
            let mut value = [0u8; 100];
            value[..8].copy_from_slice(&(b * per_batch + i).to_be_bytes());
            builder.push(None, &value, &[], 1_700_000_000_000);
        }
        client
            .send_batch(topic, 0, builder.finish())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

fn number(value: &[u8]) -> u64 {
    u64::from_be_bytes(value[..8].try_into().unwrap())
}

/// A broker with one topic of one partition holding 30,000 100-byte records (about 3.6 MB,
/// many times a reader's buffer): its directory, the broker, a client and the record count.
async fn filled_topic(topic: &str) -> (tempfile::TempDir, Broker, Client, u64) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic(topic, 1, TopicConfig::default())
        .await
        .unwrap();
    let (batches, per_batch) = (100u64, 300u64);
    fill(&client, topic, batches, per_batch).await;
    (dir, broker, client, batches * per_batch)
}

/// With the application away: waits until the broker has served `filled` bytes of `topic`
/// (the reader filled its buffer), then checks for 2 s that it serves no more than `bound`.
async fn holds_within(broker: &Broker, topic: &str, filled: u64, bound: u64, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while bytes_out(broker.metrics_addr(), topic).await < filled {
        assert!(Instant::now() < deadline, "the {who} never fetched ahead");
        tokio::task::yield_now().await;
    }
    let stay_away = Instant::now() + Duration::from_secs(2);
    while Instant::now() < stay_away {
        let served = bytes_out(broker.metrics_addr(), topic).await;
        assert!(
            served <= bound,
            "the broker served {served} bytes to a {who} that stopped (bound {bound})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_holds_at_most_its_buffer_and_resumes_exactly() {
    let (_dir, broker, client, total) = filled_topic("slow").await;

    const MAX_BYTES: u32 = 64 << 10;
    const BUFFER: usize = 256 << 10;
    let mut reader = PartitionReader::new(client, "slow", 0, StartOffset::Earliest)
        .await
        .unwrap()
        .with_options(FetchOptions {
            max_bytes: MAX_BYTES,
            min_bytes: 1,
            max_wait: Duration::from_millis(100),
            max_records: None,
        })
        .with_buffer_bytes(BUFFER);
    let first = reader.next().await.unwrap();
    assert_eq!((first.offset, number(&first.value)), (0, 0));

    // The application stops reading. The reader fills its buffer, and then fetches nothing
    // more: it may hold its buffer (the fetch `next` is reading included), and past it at
    // most one batch beyond a fetch's soft `max_bytes` (these batches are about 33 KB).
    let filled = BUFFER as u64 - u64::from(MAX_BYTES);
    holds_within(
        &broker,
        "slow",
        filled,
        BUFFER as u64 + (40 << 10),
        "reader",
    )
    .await;

    // Resumed: every record once, in order, mixing the three ways of reading.
    let mut next = 1u64;
    while next < total {
        match next % 3 {
            0 => {
                let r = reader.next().await.unwrap();
                assert_eq!((r.offset, number(&r.value)), (next, next));
                next += 1;
            }
            1 => {
                for r in reader.poll().await.unwrap() {
                    assert_eq!((r.offset, number(&r.value)), (next, next));
                    next += 1;
                }
            }
            _ => {
                let fetched = reader.poll_batch().await.unwrap();
                let n = fetched.len();
                for r in fetched.records() {
                    assert_eq!((r.offset, number(r.value)), (next, next));
                    next += 1;
                }
                assert_eq!(n, fetched.records().count());
            }
        }
        assert_eq!(reader.position(), next);
    }
    assert_eq!(next, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_that_stops_reading_holds_at_most_its_buffer_and_resumes_exactly() {
    let (_dir, broker, client, total) = filled_topic("idle").await;

    const MAX_BYTES: u32 = 64 << 10;
    const BUFFER: usize = 256 << 10;
    let mut config = ConsumerConfig::new("idle-group", ["idle"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.fetch = FetchOptions {
        max_bytes: MAX_BYTES,
        min_bytes: 1,
        max_wait: Duration::from_millis(100),
        max_records: None,
    };
    config.fetch_buffer_bytes = BUFFER;
    // The chunk count alone would allow 16 x 33 KB: the byte budget is what binds here.
    config.buffered_fetches = 16;
    let mut consumer = Consumer::subscribe(client, config).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("a record in time")
        .unwrap()
        .unwrap();
    assert_eq!((first.offset, number(&first.value)), (0, 0));

    // The member fills its buffer, then holds it while the application stays away: its
    // buffer, plus the one fetch that arrived and waits for room, plus slack of one batch
    // past `max_bytes`.
    let filled = BUFFER as u64 - u64::from(MAX_BYTES);
    let bound = BUFFER as u64 + u64::from(MAX_BYTES) + (40 << 10);
    holds_within(&broker, "idle", filled, bound, "member").await;

    // Resumed: every record once, in order, alternating records and batches.
    let mut next = 1u64;
    while next < total {
        if next.is_multiple_of(2) {
            let r = consumer.next().await.unwrap().unwrap();
            assert_eq!((r.offset, number(&r.value)), (next, next));
            next += 1;
        } else {
            let batch = consumer.next_batch().await.unwrap().unwrap();
            for r in batch.records.records() {
                assert_eq!((r.offset, number(r.value)), (next, next));
                next += 1;
            }
        }
    }
    assert_eq!(next, total);
    consumer.close().await.unwrap();
}

/// Story: an application handles at most 500 records per round, whatever their size. With
/// `max_records` a fetch brings whole batches holding at most that many (always one), the
/// reader's batches respect it, and every record still comes once, in order.
#[tokio::test]
async fn a_record_cap_bounds_every_fetch_and_loses_nothing() {
    let (_dir, _broker, client, total) = filled_topic("capped").await;
    let capped = |n| FetchOptions {
        max_records: Some(n),
        max_wait: Duration::ZERO,
        ..FetchOptions::default()
    };
    // Batches of 300: a cap of 500 takes one, a cap of 600 two, a cap of 1 still one.
    for (cap, records) in [(500, 300), (600, 600), (1, 300)] {
        let got = client
            .fetch_batches("capped", 0, 0, &capped(cap))
            .await
            .unwrap();
        assert_eq!(got.len(), records, "cap {cap}");
    }
    let from_middle = client
        .fetch_batches("capped", 0, 150, &capped(450))
        .await
        .unwrap();
    assert_eq!(
        from_middle.len(),
        450,
        "records before the offset do not count"
    );
    let mut reader = PartitionReader::new(client, "capped", 0, StartOffset::Earliest)
        .await
        .unwrap()
        .with_options(capped(500));
    let mut next = 0;
    while next < total {
        let batch = reader.poll_batch().await.unwrap();
        assert!(
            (1..=500).contains(&batch.len()),
            "a fetch of {} records",
            batch.len()
        );
        for r in batch.records() {
            assert_eq!((r.offset, number(r.value)), (next, next));
            next += 1;
        }
    }
}

/// Batches of `sizes` records each, in turn, until `total` records (100 bytes each, record i
/// holding i); returns the bytes produced.
async fn fill_irregular(client: &Client, topic: &str, sizes: &[u64], total: u64) -> u64 {
    let (mut next, mut bytes) = (0u64, 0u64);
    for size in sizes.iter().cycle() {
        if next >= total {
            break;
        }
        let n = (*size).min(total - next);
        let mut builder = BatchBuilder::with_capacity((n * 120) as usize);
        for i in next..next + n {
            let mut value = [0u8; 100];
            value[..8].copy_from_slice(&i.to_be_bytes());
            builder.push(None, &value, &[], 1_700_000_000_000);
        }
        let batch = builder.finish();
        bytes += batch.len() as u64;
        client
            .send_batch(topic, 0, batch)
            .await
            .unwrap()
            .await
            .unwrap();
        next += n;
    }
    bytes
}

/// Story: a backlog of batches of very different sizes. The reader sends fetches ahead of the
/// one in flight from where it guesses each will start; the guesses are mostly wrong here, and
/// every wrong one must be dropped: the reader and a group member each read every record
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_fetching_ahead_of_irregular_batches_read_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("irregular", 1, TopicConfig::default())
        .await
        .unwrap();
    let total = 40_000;
    fill_irregular(
        &client,
        "irregular",
        &[1, 300, 17, 120, 45, 999, 3, 64],
        total,
    )
    .await;
    let options = FetchOptions {
        max_bytes: 24 << 10,
        max_wait: Duration::from_millis(100),
        ..FetchOptions::default()
    };

    let mut reader = PartitionReader::new(client.clone(), "irregular", 0, StartOffset::Earliest)
        .await
        .unwrap()
        .with_options(options.clone());
    let mut next = 0u64;
    while next < total {
        let fetched = reader.poll_batch().await.unwrap();
        for r in fetched.records() {
            assert_eq!((r.offset, number(r.value)), (next, next));
            next += 1;
        }
    }
    assert_eq!(reader.position(), total);

    let mut config = ConsumerConfig::new("irregular-group", ["irregular"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.fetch = options;
    let mut consumer = Consumer::subscribe(client, config).unwrap();
    let mut next = 0u64;
    while next < total {
        let batch = tokio::time::timeout(Duration::from_secs(60), consumer.next_batch())
            .await
            .expect("records in time")
            .unwrap()
            .unwrap();
        for r in batch.records.records() {
            assert_eq!((r.offset, number(r.value)), (next, next));
            next += 1;
        }
    }
    consumer.close().await.unwrap();
}

/// Story: a backlog of alike batches, read from the start. The fetches sent ahead start where
/// the ones before them end, so none is wasted: the broker serves each byte of the partition
/// once (a reader whose guesses were off by a record would be served whole fetches twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_ahead_of_alike_batches_serves_each_byte_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("alike", 1, TopicConfig::default())
        .await
        .unwrap();
    let total = 60_000;
    let produced = fill_irregular(&client, "alike", &[200], total).await;
    let mut reader = PartitionReader::new(client, "alike", 0, StartOffset::Earliest)
        .await
        .unwrap()
        .with_options(FetchOptions {
            max_bytes: 64 << 10,
            max_wait: Duration::from_millis(100),
            ..FetchOptions::default()
        })
        .with_buffer_bytes(512 << 10);
    let mut next = 0u64;
    while next < total {
        for r in reader.poll_batch().await.unwrap().records() {
            assert_eq!((r.offset, number(r.value)), (next, next));
            next += 1;
        }
    }
    assert_eq!(bytes_out(broker.metrics_addr(), "alike").await, produced);
}
