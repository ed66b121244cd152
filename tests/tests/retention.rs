//! Retention of a live topic, changed with `rill topic alter`.

use rill_client::{
    Admin, Client, ErrorCode, FetchOptions, Producer, ProducerConfig, ProducerRecord,
};
use rill_e2e::{Broker, rill};
use std::time::{Duration, Instant};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "rill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altering_retention_of_a_live_topic_deletes_its_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--retention-check-interval-ms", "100"],
    );
    let addr = broker.addr().to_string();
    let run = move |args: &'static [&'static str], input: String| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || rill(Some(&addr), args, &input))
                .await
                .unwrap()
        }
    };
    ok(run(
        &["topic", "create", "logs", "--segment-bytes", "4096"],
        String::new(),
    )
    .await);
    // Small batches, so the log spans many 4 KiB segments.
    let producer = Producer::new(
        Client::connect(broker.addr()).await.unwrap(),
        ProducerConfig {
            batch_bytes: 1024,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..3000 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("logs", format!("line-{i:05}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    let before = admin.describe_topic("logs").await.unwrap().partitions[0].clone();
    assert_eq!((before.log_start_offset, before.log_end_offset), (0, 3000));
    assert!(before.segments > 4, "{before:?}");

    let out = ok(run(
        &["topic", "alter", "logs", "--retention-bytes", "8192"],
        String::new(),
    )
    .await);
    assert!(out.contains("retention_bytes 8192"), "{out}");
    // Retention runs on the broker's timer; wait for its effect, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let p = admin.describe_topic("logs").await.unwrap().partitions[0].clone();
        if p.log_start_offset > 0 {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "retention never deleted anything: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        after.size_bytes <= 8192 + 4096,
        "kept more than the limit plus the active segment: {after:?}"
    );
    assert_eq!(
        after.log_end_offset, 3000,
        "retention never touches the end"
    );

    // Readers past the new start read on; readers before it are told precisely.
    let client = Client::connect(broker.addr()).await.unwrap();
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        ..FetchOptions::default()
    };
    let r = client
        .fetch("logs", 0, after.log_start_offset, &options)
        .await
        .unwrap();
    assert_eq!(r.records[0].offset, after.log_start_offset);
    assert_eq!(
        r.records[0].value,
        format!("line-{:05}", after.log_start_offset).as_bytes()
    );
    let err = client.fetch("logs", 0, 0, &options).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));

    // A group whose committed offset was deleted resets per its policy (earliest here).
    let tp = rill_client::TopicPartition {
        topic: rill_protocol::TopicName::new("logs").unwrap(),
        partition: 0,
    };
    let commit = rill_protocol::messages::CommitOffsetsRequest {
        group: "late".into(),
        member_id: None,
        generation: None,
        offsets: vec![(tp, 5)],
    };
    client.call(&commit).await.unwrap();
    let mut config = rill_client::ConsumerConfig::new("late", ["logs"]);
    config.auto_offset_reset = rill_client::OffsetReset::Earliest;
    let mut consumer =
        rill_client::Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), config)
            .unwrap();
    let first = futures::StreamExt::next(&mut consumer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.offset, after.log_start_offset,
        "resumed at the new log start, not at the deleted offset 5"
    );
    consumer.close().await.unwrap();

    let described = ok(run(&["topic", "describe", "logs"], String::new()).await);
    assert!(
        described.contains("retention_bytes 8192") && described.contains("retention_ms default"),
        "{described}"
    );
    // The setting survives a restart.
    drop(client);
    let mut broker = broker;
    broker.stop();
    broker.restart();
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    assert_eq!(
        admin
            .describe_topic("logs")
            .await
            .unwrap()
            .config
            .retention_bytes,
        Some(8192)
    );
}
