//! Limits and hostile load: idle and surplus connections, a client that never reads, and a
//! thousand idle connections with a flood of tiny requests, next to a well-behaved client.

use bytes::{Bytes, BytesMut};
use rill_client::{Admin, Client, TopicConfig};
use rill_e2e::Broker;
use rill_protocol::batch::BatchBuilder;
use rill_protocol::frame::{self, RequestHeader};
use rill_protocol::messages::{ApiVersionsRequest, FetchRequest, ListTopicsRequest};
use rill_protocol::{ApiKey, TopicName};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn request(key: ApiKey, id: u32, body: &impl serde::Serialize) -> Vec<u8> {
    let out = frame::encode_request(
        RequestHeader {
            api_key: key as u16,
            api_version: key.versions().1,
            correlation_id: id,
        },
        body,
        Bytes::new(),
    );
    [&out.head[..], &out.payload[..]].concat()
}

fn small_batch() -> Bytes {
    let mut b = BatchBuilder::with_capacity(256);
    b.push(None, b"ping", &[], rill_e2e::now_ms());
    b.finish()
}

/// The well-behaved client's topic. Its latency is compared before and during the abuse; with
/// fsync=always it would mostly measure this shared disk's fsync jitter, not the broker.
fn calm() -> TopicConfig {
    TopicConfig {
        fsync: Some(rill_client::FsyncPolicy::Interval { ms: 1000 }),
        ..TopicConfig::default()
    }
}

/// Median round trip of `n` acknowledged produce requests on a well-behaved client.
async fn median_produce_latency(client: &Client, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client
            .send_batch("calm", 0, small_batch())
            .await
            .unwrap()
            .await
            .unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--idle-timeout-ms", "300"]);
    let mut s = TcpStream::connect(broker.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("closed by the broker")
        .unwrap();
    assert_eq!(n, 0);
    assert!(broker.log().contains("idle for 300 ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--max-connections", "3"]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(broker.addr()).await.unwrap());
    }
    let mut fourth = TcpStream::connect(broker.addr()).await.unwrap();
    fourth
        .write_all(&request(
            ApiKey::ApiVersions,
            1,
            &ApiVersionsRequest {
                client: "4th".into(),
            },
        ))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let waiting = tokio::time::timeout(Duration::from_millis(300), fourth.read_buf(&mut buf)).await;
    assert!(
        waiting.is_err(),
        "a fourth connection must not be served while three are open"
    );
    clients.pop();
    let response = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(r) = frame::decode_response(&mut buf, 1 << 20).unwrap() {
                return r;
            }
            assert!(
                fourth.read_buf(&mut buf).await.unwrap() > 0,
                "closed without an answer"
            );
        }
    })
    .await
    .expect("served once a slot frees");
    assert_eq!(response.correlation_id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_bounded_memory_and_does_not_slow_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--max-frame-bytes",
            "4194304",
            "--max-connection-buffer-bytes",
            "8388608",
        ],
    );
    let client = Client::connect(broker.addr()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("big", 1, TopicConfig::default())
        .await
        .unwrap();
    admin.create_topic("calm", 1, calm()).await.unwrap();
    // 64 MB to fetch.
    rill_e2e::fill_partition(&client, "big", 64, 1000).await;
    let before = median_produce_latency(&client, 100).await;
    let rss_before = broker.rss_bytes();

    // Ask for the whole topic, 2,000 times over, and never read a byte of the answers.
    let mut stalled = TcpStream::connect(broker.addr()).await.unwrap();
    let topic = TopicName::new("big").unwrap();
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let fetch = FetchRequest {
            topic: topic.clone(),
            partition: 0,
            offset: u64::from(i % 64) * 1000,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 0,
            max_records: 0,
        };
        flood.extend(request(ApiKey::Fetch, i, &fetch));
    }
    let writer = tokio::spawn(async move {
        // The broker stops reading once this connection's budget is used: this write stalls.
        let _ = tokio::time::timeout(Duration::from_secs(5), stalled.write_all(&flood)).await;
        stalled
    });
    let during = median_produce_latency(&client, 100).await;
    let rss_during = broker.rss_bytes();
    let stalled = writer.await.unwrap();
    println!(
        "produce p50 {before:?} -> {during:?}; broker rss {} -> {} MiB",
        rss_before >> 20,
        rss_during >> 20
    );
    assert!(
        rss_during < rss_before + (64 << 20),
        "broker memory grew by {} MiB",
        (rss_during - rss_before) >> 20
    );
    assert!(
        during <= before * 2 + Duration::from_millis(2),
        "a stalled reader slowed others: {before:?} -> {during:?}"
    );
    drop(stalled);
    assert_eq!(median_produce_latency(&client, 10).await.as_secs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_and_a_flood_of_tiny_requests() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("calm", 1, calm())
        .await
        .unwrap();
    let before = median_produce_latency(&client, 200).await;
    let rss_before = broker.rss_bytes();

    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(broker.addr()).await.unwrap());
    }
    // Two flooders, each sending 20 tiny requests every millisecond (40,000/s in all, far more
    // than the calm client's rate) until told to stop. An unthrottled flood on this 2-core
    // machine would measure CPU saturation (client and broker share the cores), not the broker.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let addr = broker.addr().to_string();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let mut buf = BytesMut::new();
                let (mut sent, mut answered) = (0u32, 0u32);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while !*stop.borrow() && sent < 1_000_000 {
                    tick.tick().await;
                    let burst: Vec<u8> = (0..20)
                        .flat_map(|k| request(ApiKey::ListTopics, sent + k, &ListTopicsRequest {}))
                        .collect();
                    s.write_all(&burst).await.unwrap();
                    sent += 20;
                    while answered < sent {
                        while frame::decode_response(&mut buf, 1 << 20).unwrap().is_some() {
                            answered += 1;
                        }
                        if answered < sent {
                            assert!(
                                s.read_buf(&mut buf).await.unwrap() > 0,
                                "flooder disconnected"
                            );
                        }
                    }
                }
                answered
            })
        })
        .collect();
    let during = median_produce_latency(&client, 2000).await;
    let rss_during = broker.rss_bytes();
    stop_tx.send_replace(true);
    let mut flood = 0;
    for f in flooders {
        flood += f.await.unwrap();
    }
    assert!(
        flood > 1000,
        "the flood must overlap the measurement ({flood} requests)"
    );
    println!(
        "produce p50 {before:?} -> {during:?} with 1,000 idle connections and {flood} tiny requests; rss {} -> {} MiB",
        rss_before >> 20,
        rss_during >> 20
    );
    // A starvation guard, not the 2x target, which is measured rather than asserted
    // (timed assertions on this shared 2-core machine would measure its scheduler): see
    // `rill-bench hostile` and BENCHMARKS.md, "Under hostile load".
    assert!(
        during <= before * 2 + Duration::from_millis(10),
        "latency {before:?} -> {during:?}"
    );
    assert!(
        rss_during < rss_before + (128 << 20),
        "rss grew by {} MiB",
        (rss_during - rss_before) >> 20
    );
    drop(idle);
}
