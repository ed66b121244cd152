//! Metrics, health and configuration errors, as an operator sees them.

use futures::StreamExt;
use rill_client::{
    Admin, Client, Consumer, ConsumerConfig, FsyncPolicy, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, TopicConfig,
};
use rill_e2e::{Broker, binaries, http_get};

/// Sum of every sample of `metric` whose labels contain `label` (e.g. `topic="m"`).
fn sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(addr: &str) -> String {
    let addr = addr.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    body
}

async fn produce(addr: &str, topic: &str, n: usize) {
    let producer = Producer::new(
        Client::connect(addr).await.unwrap(),
        ProducerConfig::default(),
    );
    let mut deliveries = Vec::new();
    for i in 0..n {
        deliveries.push(
            producer
                .send(ProducerRecord::new(topic, format!("v{i}")).key(format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("m", 2, TopicConfig::default())
        .await
        .unwrap();
    produce(broker.addr(), "m", 1000).await;

    let mut config = ConsumerConfig::new("mg", ["m"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let mut consumer =
        Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), config).unwrap();
    for _ in 0..1000 {
        consumer.next().await.unwrap().unwrap();
    }
    consumer.close().await.unwrap();
    // Exact while nothing more exists to fetch: each of the 1,000 records went out once.
    let text = scrape(broker.metrics_addr()).await;
    assert_eq!(
        sum(&text, "rill_messages_out_total", "topic=\"m\""),
        1000.0,
        "{text}"
    );
    produce(broker.addr(), "m", 200).await;

    let text = scrape(broker.metrics_addr()).await;
    assert_eq!(
        sum(&text, "rill_messages_in_total", "topic=\"m\""),
        1200.0,
        "{text}"
    );
    // Long-polls the closed consumer left parked at the broker may deliver the new records too.
    let out = sum(&text, "rill_messages_out_total", "topic=\"m\"");
    assert!((1000.0..=1200.0).contains(&out), "{text}");
    assert!(sum(&text, "rill_bytes_in_total", "topic=\"m\"") > 1200.0 * 2.0);
    assert_eq!(
        sum(&text, "rill_partition_log_end_offset", "topic=\"m\""),
        1200.0
    );
    assert_eq!(
        sum(&text, "rill_partition_durable_offset", "topic=\"m\""),
        1200.0,
        "under fsync=always everything acknowledged is on disk"
    );
    assert_eq!(
        sum(&text, "rill_group_committed_offset", "group=\"mg\""),
        1000.0
    );
    assert_eq!(sum(&text, "rill_group_lag", "group=\"mg\""), 200.0);
    assert!(sum(&text, "rill_requests_total", "api=\"produce\"") >= 2.0);
    assert!(
        sum(
            &text,
            "rill_request_duration_seconds_count",
            "api=\"fetch\""
        ) >= 1.0
    );
    assert!(
        sum(&text, "rill_fsyncs_total", "") >= 1.0,
        "fsync=always syncs"
    );
    assert!(sum(&text, "rill_connections_opened_total", "") >= 3.0);
    assert!(sum(&text, "rill_disk_used_bytes", "") > 0.0);
    let err = admin.describe_topic("absent").await.unwrap_err();
    assert!(err.to_string().contains("unknown topic"));
    let text = scrape(broker.metrics_addr()).await;
    assert_eq!(
        sum(&text, "rill_request_errors_total", "code=\"UnknownTopic\""),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_ready_while_recovering_and_ready_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    assert_eq!(http_get(broker.metrics_addr(), "/health").0, 200);
    let client = Client::connect(broker.addr()).await.unwrap();
    let config = TopicConfig {
        fsync: Some(FsyncPolicy::Interval { ms: 1000 }),
        ..TopicConfig::default()
    };
    Admin::new(client.clone())
        .create_topic("big", 1, config)
        .await
        .unwrap();
    // ~100 MB in the tail segment: after kill -9 all of it is scanned and CRC-checked.
    rill_e2e::fill_partition(&client, "big", 100, 1000).await;
    drop(client);
    broker.kill9();

    let mut during = Vec::new();
    broker.restart_observing(|metrics| during.push(http_get(metrics, "/health")));
    assert_eq!(during.len(), 1);
    assert_eq!(
        during[0],
        (503, "recovering\n".to_string()),
        "not ready while recovering"
    );
    assert_eq!(
        http_get(broker.metrics_addr(), "/health"),
        (200, "ok\n".to_string())
    );
    assert!(broker.log().contains("did not shut down cleanly"));
}

#[test]
fn an_unknown_config_key_stops_start_up_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rill.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\n[storage]\nfsync = \"always\"\nsegment_byte = 4096\n",
    )
    .unwrap();
    let out = std::process::Command::new(&binaries().rilld)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("segment_byte") && err.contains("line 4") && err.contains("rill.toml"),
        "{err}"
    );
    assert!(
        !dir.path().join("rill-data").exists(),
        "nothing was started"
    );
}
