//! Acceptance: kill -9 during produce loses nothing that was acknowledged.

use bytes::Bytes;
use rill_client::{
    Admin, Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord,
    TopicConfig,
};
use rill_e2e::{Broker, verify_segments};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Stop producing after this many records even if the kill comes late (bounds the test).
const MAX_RECORDS: u64 = 2_000_000;
/// Kill once this many records are acknowledged, so the kill lands mid-stream.
const KILL_AFTER_ACKS: u64 = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let config = ClientConfig {
        retry_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(broker.addr(), config).await.unwrap();
    Admin::new(client.clone())
        .create_topic("crash", 2, TopicConfig::default())
        .await
        .unwrap();

    // Small batches and a short linger: many fsync rounds in flight when the kill lands.
    let producer_config = ProducerConfig {
        batch_bytes: 4096,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), producer_config);
    let acked = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    let stop = Arc::new(tokio::sync::Semaphore::new(0));
    let writer = {
        let (acked, enough, stop) = (acked.clone(), enough.clone(), stop.clone());
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            for i in 0..MAX_RECORDS {
                if stop.available_permits() > 0 {
                    break;
                }
                let record = ProducerRecord::new("crash", Bytes::from(format!("seq-{i}")))
                    .key(format!("k{}", i % 97));
                let Ok(delivery) = producer.send(record).await else {
                    break;
                };
                let (acked, enough) = (acked.clone(), enough.clone());
                waiting.push(tokio::spawn(async move {
                    let result = delivery.await;
                    if result.is_ok()
                        && acked.fetch_add(1, Ordering::Relaxed) + 1 == KILL_AFTER_ACKS
                    {
                        enough.notify_one();
                    }
                    (i, result)
                }));
            }
            let _ = producer.flush().await;
            let mut outcomes = Vec::new();
            for w in waiting {
                outcomes.push(w.await.unwrap());
            }
            outcomes
        })
    };
    enough.notified().await;
    broker.kill9();
    stop.add_permits(1);
    broker.restart();
    assert!(
        broker.log().contains("did not shut down cleanly"),
        "restart must notice the crash"
    );

    // Every delivery is now settled: acknowledged before the kill, failed, or retried into
    // the restarted broker. Each acknowledged one must be readable at its offset.
    let outcomes = writer.await.unwrap();
    let mut acknowledged: HashMap<(u32, u64), u64> = HashMap::new();
    for (i, result) in &outcomes {
        if let Ok(meta) = result {
            acknowledged.insert((meta.partition, meta.offset), *i);
        }
    }
    assert!(acknowledged.len() as u64 >= KILL_AFTER_ACKS);

    let options = FetchOptions {
        max_wait: Duration::ZERO,
        ..FetchOptions::default()
    };
    let mut present: HashMap<(u32, u64), Bytes> = HashMap::new();
    for partition in 0..2 {
        let mut offset = 0;
        loop {
            let r = client
                .fetch("crash", partition, offset, &options)
                .await
                .unwrap();
            if r.records.is_empty() {
                break;
            }
            for rec in r.records {
                assert_eq!(
                    rec.offset, offset,
                    "gap or duplicate offset in partition {partition}"
                );
                offset += 1;
                present.insert((partition, rec.offset), rec.value);
            }
        }
    }
    let mut lost = Vec::new();
    for ((partition, offset), i) in &acknowledged {
        match present.get(&(*partition, *offset)) {
            Some(v) => assert_eq!(
                v,
                &Bytes::from(format!("seq-{i}")),
                "wrong record at {partition}/{offset}"
            ),
            None => lost.push((*partition, *offset)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    println!(
        "acknowledged {}, present after restart {}",
        acknowledged.len(),
        present.len()
    );

    drop(client);
    broker.stop();
    let records: u64 = verify_segments(&data).iter().map(|(_, n)| n).sum();
    assert_eq!(
        records,
        present.len() as u64,
        "files hold exactly the readable records, in whole batches"
    );
}
