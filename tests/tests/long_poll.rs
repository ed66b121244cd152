//! Acceptance: a long-poll fetch returns as soon as a record is appended, not at its deadline.

use bytes::Bytes;
use rill_client::{
    Admin, Client, FetchOptions, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use rill_e2e::Broker;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_woken_by_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let reader = Client::connect(broker.addr()).await.unwrap();
    let admin = Admin::new(reader.clone());
    admin
        .create_topic("waiting", 1, TopicConfig::default())
        .await
        .unwrap();

    let options = FetchOptions {
        max_wait: Duration::from_secs(10),
        ..FetchOptions::default()
    };
    let started = Instant::now();
    let mut fetch = Box::pin(reader.fetch("waiting", 0, 0, &options));
    // Poll once: the fetch frame is now queued on the reader's connection.
    assert!(futures::poll!(&mut fetch).is_pending());
    // A round trip on the same connection: when it returns, the broker has read (and
    // dispatched) the fetch, which found the partition empty and is waiting.
    admin.list_topics().await.unwrap();
    assert!(
        futures::poll!(&mut fetch).is_pending(),
        "an empty partition must not answer at once"
    );

    let writer = Client::connect(broker.addr()).await.unwrap();
    let producer = Producer::new(writer, ProducerConfig::default());
    let delivery = producer
        .send(ProducerRecord::new("waiting", "wake up"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    delivery.await.unwrap();

    let result = fetch.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(result.records.len(), 1);
    assert_eq!(result.records[0].value, Bytes::from_static(b"wake up"));
    assert!(
        waited < Duration::from_secs(5),
        "returned after {waited:?}: woken by the deadline, not the append"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_long_poll_returns_empty_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("quiet", 1, TopicConfig::default())
        .await
        .unwrap();
    let options = FetchOptions {
        max_wait: Duration::from_millis(200),
        ..FetchOptions::default()
    };
    let started = Instant::now();
    let result = client.fetch("quiet", 0, 0, &options).await.unwrap();
    assert!(result.records.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "returned before max_wait with nothing to say"
    );
}
