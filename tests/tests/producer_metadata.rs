//! The producer follows a topic's partition count while it runs.

use rill_client::{Admin, Client, Producer, ProducerConfig, ProducerRecord, TopicConfig};
use rill_e2e::Broker;
use std::collections::BTreeSet;
use std::time::Duration;

/// The bug: the producer cached a topic's partition count for its lifetime, so partitions added
/// with `rill topic alter --partitions` never received a keyless record from a running producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_reach_partitions_added_while_producing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("grow", 2, TopicConfig::default())
        .await
        .unwrap();
    let config = ProducerConfig {
        metadata_max_age: Duration::from_millis(100),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config);

    let mut used = BTreeSet::new();
    let mut grown = false;
    // Bounded: at most 2,000 rounds of 10 records, or 60 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for round in 0..2_000 {
        let mut deliveries = Vec::new();
        for i in 0..10 {
            let record = ProducerRecord::new("grow", format!("r{round}-{i}"));
            deliveries.push(producer.send(record).await.unwrap());
        }
        producer.flush().await.unwrap();
        for d in deliveries {
            used.insert(d.await.unwrap().partition);
        }
        if !grown && used.len() == 2 {
            // What `rill topic alter grow --partitions 4` sends.
            admin.add_partitions("grow", 4).await.unwrap();
            grown = true;
        }
        if used.len() == 4 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(
        grown,
        "the first two partitions never both received records"
    );
    assert_eq!(
        used,
        (0..4).collect(),
        "the added partitions never received a record"
    );
}
