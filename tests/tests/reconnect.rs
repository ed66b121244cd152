//! The client rides through a broker restart, and offsets can be looked up over the wire.

use bytes::Bytes;
use rill_client::{
    Admin, Client, OffsetSpec, PartitionReader, Producer, ProducerConfig, ProducerRecord,
    StartOffset, TopicConfig,
};
use rill_e2e::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_needs_no_handling_by_the_application() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("steady", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let first = producer
        .send(ProducerRecord::new("steady", "before"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(first.await.unwrap().offset, 0);

    broker.stop();
    broker.restart();

    // Same client, same producer: the broken connection is replaced behind the scenes.
    let second = producer
        .send(ProducerRecord::new("steady", "after"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(second.await.unwrap().offset, 1);
    let mut reader = PartitionReader::new(client, "steady", 0, StartOffset::Earliest)
        .await
        .unwrap();
    assert_eq!(
        reader.next().await.unwrap().value,
        Bytes::from_static(b"before")
    );
    assert_eq!(
        reader.next().await.unwrap().value,
        Bytes::from_static(b"after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_position_and_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--segment-bytes", "4096"]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("timed", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    // Timestamps 1000, 1010, 1020, ...: record i at 1000 + 10 i, spread over many segments.
    let mut deliveries = Vec::new();
    for i in 0..500i64 {
        let record = ProducerRecord::new("timed", Bytes::from(vec![b'x'; 40]))
            .partition(0)
            .timestamp(1000 + 10 * i);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
    let at = |spec| {
        let client = client.clone();
        async move { client.list_offset("timed", 0, spec).await.unwrap() }
    };
    assert_eq!(at(OffsetSpec::Earliest).await, Some(0));
    assert_eq!(at(OffsetSpec::Latest).await, Some(500));
    assert_eq!(at(OffsetSpec::Timestamp(0)).await, Some(0));
    assert_eq!(at(OffsetSpec::Timestamp(1000 + 10 * 321)).await, Some(321));
    assert_eq!(
        at(OffsetSpec::Timestamp(1000 + 10 * 321 - 5)).await,
        Some(321),
        "between records: the next one"
    );
    assert_eq!(at(OffsetSpec::Timestamp(1000 + 10 * 499 + 1)).await, None);

    let mut reader =
        PartitionReader::new(client, "timed", 0, StartOffset::Timestamp(1000 + 10 * 250))
            .await
            .unwrap();
    let record = reader.next().await.unwrap();
    assert_eq!((record.offset, record.timestamp), (250, 1000 + 10 * 250));
}
