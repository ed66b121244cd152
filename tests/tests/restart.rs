//! Acceptance: records survive a graceful restart exactly as produced.

use bytes::Bytes;
use rill_client::{
    Admin, Client, FetchOptions, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use rill_e2e::{Broker, verify_segments};
use std::collections::HashMap;

const RECORDS: usize = 200_000;
const KEYS: usize = 1_000;

fn value_of(i: usize) -> Bytes {
    // Varying lengths and every byte value, so "byte-identical" means something.
    let mut v = format!("record-{i}-").into_bytes();
    v.extend((0..(i % 61)).map(|j| ((i + j) % 256) as u8));
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_survive_sigterm_and_restart_byte_identical_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("events", 4, TopicConfig::default())
        .await
        .unwrap();

    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = ProducerRecord::new("events", value_of(i)).key(format!("key-{}", i % KEYS));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    // What was sent to each partition, in send order, and where each key went.
    let mut sent: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
    let mut key_partition: HashMap<usize, u32> = HashMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let meta = d.await.unwrap();
        sent.entry(meta.partition)
            .or_default()
            .push((meta.offset, i));
        let first = *key_partition.entry(i % KEYS).or_insert(meta.partition);
        assert_eq!(
            first,
            meta.partition,
            "key-{} went to two partitions",
            i % KEYS
        );
    }
    assert_eq!(sent.len(), 4, "1,000 keys should reach all 4 partitions");
    drop(producer);
    drop(client);

    let status = broker.stop();
    assert!(status.success(), "rilld exited with {status}");
    assert!(broker.log().contains("shut down cleanly"));
    broker.restart();

    let client = Client::connect(broker.addr()).await.unwrap();
    let options = FetchOptions {
        max_wait: std::time::Duration::ZERO,
        ..FetchOptions::default()
    };
    let mut total = 0;
    for partition in 0..4u32 {
        let expected = &sent[&partition];
        let mut got = Vec::with_capacity(expected.len());
        let mut offset = 0;
        loop {
            let r = client
                .fetch("events", partition, offset, &options)
                .await
                .unwrap();
            if r.records.is_empty() {
                assert_eq!(
                    offset, r.high_watermark,
                    "stopped before the end of partition {partition}"
                );
                break;
            }
            offset = r.next_offset;
            got.extend(r.records);
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "partition {partition}: record count"
        );
        for (n, (record, (offset, i))) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                record.offset, n as u64,
                "partition {partition}: offsets have a gap or duplicate"
            );
            assert_eq!(
                record.offset, *offset,
                "partition {partition}: acknowledged offset differs"
            );
            assert_eq!(
                record.value,
                value_of(*i),
                "partition {partition} offset {n}: value differs"
            );
            assert_eq!(
                record.key.as_deref(),
                Some(format!("key-{}", i % KEYS).as_bytes())
            );
        }
        total += got.len();
    }
    assert_eq!(total, RECORDS);
    drop(client);
    broker.stop();
    let counts: u64 = verify_segments(&data).iter().map(|(_, n)| n).sum();
    assert_eq!(counts, RECORDS as u64);
}

/// Producer ids are durable: never handed out twice across a kill -9, and a producer name keeps
/// its id with a new epoch each time it is initialised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_survive_kill_9_and_names_keep_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = rill_e2e::Broker::start(&dir.path().join("data"), &[]);
    let mut seen = std::collections::BTreeSet::new();
    let mut named = Vec::new();
    for _ in 0..3 {
        let admin =
            rill_client::Admin::new(rill_client::Client::connect(broker.addr()).await.unwrap());
        for _ in 0..10 {
            let (id, epoch) = admin.init_producer(None).await.unwrap();
            assert_eq!(epoch, 0);
            assert!(seen.insert(id), "id {id} handed out twice");
        }
        named.push(admin.init_producer(Some("billing")).await.unwrap());
        broker.kill9();
        broker.restart();
    }
    assert!(named.iter().all(|(id, _)| *id == named[0].0), "{named:?}");
    let epochs: Vec<i16> = named.iter().map(|(_, e)| *e).collect();
    assert_eq!(epochs, vec![0, 1, 2]);
}
