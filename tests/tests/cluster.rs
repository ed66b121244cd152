//! Replication end to end: real rilld nodes on loopback forming a cluster, used through the
//! public client as an application would: one `Client` given every node's address, which
//! routes each partition's produce and fetch to its leader.

use rill_client::{Admin, Client, MetadataResponse, Producer, ProducerConfig, ProducerRecord};
use rill_client::{FetchOptions, TopicConfig};
use rill_e2e::Cluster;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Records per test run (the acceptance run uses 200,000: `RILL_CLUSTER_RECORDS`).
fn records() -> u64 {
    std::env::var("RILL_CLUSTER_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24_000)
}

const PARTITIONS: u32 = 6;

/// Waits (up to 20 s) until the metadata names a leader for every partition of `topic`.
async fn settled_metadata(admin: &Admin, topic: &str) -> MetadataResponse {
    settled_partitions(admin, topic, PARTITIONS).await
}

/// Waits (up to 20 s) until the metadata names a leader for each of `topic`'s `partitions`.
async fn settled_partitions(admin: &Admin, topic: &str, partitions: u32) -> MetadataResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = admin.metadata(&[topic]).await.expect("metadata");
        let led = m.topics.first().is_some_and(|t| {
            t.partitions.len() == partitions as usize
                && t.partitions.iter().all(|p| p.leader.is_some())
        });
        if led {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} still has partitions without a leader after 20 s: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes with default settings, a topic of `partitions` created and led, and a routing
/// client, its admin and an idempotent producer.
async fn three_nodes_with(
    dir: &std::path::Path,
    topic: &str,
    partitions: u32,
) -> (Cluster, Client, Admin, Producer) {
    let cluster = Cluster::start(dir, 3, &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic(topic, partitions, TopicConfig::default())
        .await
        .expect("create");
    settled_partitions(&admin, topic, partitions).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    (cluster, client, admin, producer)
}

fn leader(m: &MetadataResponse, p: u32) -> u64 {
    m.topics[0].partitions[p as usize]
        .leader
        .expect("settled metadata has leaders")
}

/// An acknowledged record: partition, offset, value.
type Acked = (u32, u64, String);

/// Produces `values` keyed by themselves through one idempotent producer, awaiting every
/// delivery in order; returns what was acknowledged and when.
async fn produce(
    producer: &Producer,
    topic: &str,
    values: impl Iterator<Item = String>,
) -> Vec<(Acked, Instant)> {
    let mut deliveries = Vec::new();
    for v in values {
        let record = ProducerRecord::new(topic, v.clone()).key(v.clone());
        deliveries.push((v, producer.send(record).await.expect("send")));
    }
    let mut out = Vec::with_capacity(deliveries.len());
    for (v, d) in deliveries {
        let m = d
            .await
            .expect("every record is acknowledged, retries included");
        out.push(((m.partition, m.offset, v), Instant::now()));
    }
    out
}

/// Every record of partition `p` as (offset, value), read through the routing client.
async fn read_all(client: &Client, topic: &str, p: u32) -> Vec<(u64, String)> {
    let opts = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 1 << 20,
        max_records: None,
    };
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let r = client.fetch(topic, p, at, &opts).await.expect("fetch");
        for rec in &r.records {
            let v = String::from_utf8(rec.value.to_vec()).expect("utf-8");
            out.push((rec.offset, v));
        }
        if r.next_offset >= r.high_watermark {
            return out;
        }
        at = r.next_offset;
    }
}

/// Waits (up to 30 s) until every replica of every partition holds the same bytes. Followers
/// learn of the last entries a heartbeat later; the test can only look at their files.
async fn await_identical(cluster: &Cluster, nodes: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in 0..PARTITIONS {
        loop {
            let logs: Vec<Vec<u8>> = nodes
                .iter()
                .map(|&n| cluster.partition_bytes(n, "events", p))
                .collect();
            if logs.windows(2).all(|w| w[0] == w[1]) && !logs[0].is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of events-{p} still differ after 30 s: sizes {:?}",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the checker counts: acknowledged records missing from what a consumer reads back
/// (lost), values read more than once (duplicated), and acknowledged records found at another
/// offset than acknowledged (moved).
#[derive(Debug, Default, PartialEq, Eq)]
struct Checked {
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    moved: usize,
}

async fn check(client: &Client, acked: &[Acked]) -> Checked {
    let mut c = Checked {
        acknowledged: acked.len(),
        ..Checked::default()
    };
    let mut read: HashMap<(u32, String), Vec<u64>> = HashMap::new();
    for p in 0..PARTITIONS {
        for (offset, v) in read_all(client, "events", p).await {
            read.entry((p, v)).or_default().push(offset);
        }
    }
    c.duplicated = read.values().filter(|o| o.len() > 1).count();
    for (p, offset, v) in acked {
        match read.get(&(*p, v.clone())) {
            None => c.lost += 1,
            Some(o) if !o.contains(offset) => c.moved += 1,
            Some(_) => {}
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_client_produces_exactly_once_through_kill_9_of_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    // Preferred replicas take their leadership back after 1 s as caught-up followers.
    let mut cluster = Cluster::start(dir.path(), 3, &["--leader-rebalance-ms", "1000"]);
    // One client for the whole cluster, as an application would configure it.
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic("events", PARTITIONS, TopicConfig::default())
        .await
        .expect("create");
    // The metadata names three nodes; every partition has three replicas and one leader, and
    // the preferred leaders (first replicas) are spread over the nodes.
    let m = settled_metadata(&admin, "events").await;
    assert_eq!(m.nodes.len(), 3, "{m:?}");
    let mut preferred = [0; 3];
    for p in &m.topics[0].partitions {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
        preferred[p.replicas[0] as usize - 1] += 1;
    }
    assert_eq!(preferred, [2, 2, 2], "preferred leaders per node");
    // Every node becomes ready (it records having joined a moment after catching up), and
    // the leaders report how far behind each follower is.
    let mut lag_series = 0;
    for n in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = rill_e2e::http_get(n.metrics_addr(), "/health");
            if status == 200 {
                assert_eq!(body, "ok\n");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after 20 s: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, metrics) = rill_e2e::http_get(n.metrics_addr(), "/metrics");
        lag_series += metrics
            .lines()
            .filter(|l| l.starts_with("rill_raft_follower_lag{topic=\"events\""))
            .count();
    }
    assert_eq!(
        lag_series,
        6 * 2,
        "two followers of each of the six partitions"
    );

    // A replication factor asked for is kept, and one beyond the node count is refused.
    admin
        .create_topic_replicated("pairs", 3, Some(2), TopicConfig::default())
        .await
        .expect("create with RF 2");
    let pairs = admin.metadata(&["pairs"]).await.expect("metadata");
    assert!(
        pairs.topics[0]
            .partitions
            .iter()
            .all(|p| p.replicas.len() == 2),
        "{pairs:?}"
    );
    // Grown and altered through the metadata group: every node applies the change.
    admin.add_partitions("pairs", 4).await.expect("grow to 4");
    let pairs = admin.metadata(&["pairs"]).await.expect("metadata");
    assert_eq!(
        pairs.topics[0]
            .partitions
            .iter()
            .map(|p| p.replicas.len())
            .collect::<Vec<_>>(),
        [2, 2, 2, 2],
        "{pairs:?}"
    );
    // The new partition takes records (its group formed and elected a leader).
    let one = Producer::new(client.clone(), ProducerConfig::default());
    let d = one
        .send(ProducerRecord::new("pairs", "x").partition(3))
        .await
        .expect("send")
        .await
        .expect("acknowledged on the new partition");
    assert_eq!(d.partition, 3);
    let changes = TopicConfig {
        segment_bytes: Some(1 << 20),
        ..TopicConfig::default()
    };
    let altered = admin.alter_topic("pairs", changes).await.expect("alter");
    assert_eq!(altered.segment_bytes, Some(1 << 20));
    for node in &cluster.nodes {
        // Each node's own copy (its describe answers from its local topic).
        let one = Admin::new(Client::connect(node.addr()).await.expect("connect"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = one.describe_topic("pairs").await.expect("describe");
            if d.partitions.len() == 4 && d.config.segment_bytes == Some(1 << 20) {
                break;
            }
            assert!(Instant::now() < deadline, "node {}: {d:?}", node.addr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let wide = admin
        .create_topic_replicated("wide", 1, Some(4), TopicConfig::default())
        .await
        .expect_err("RF 4 on 3 nodes");
    assert_eq!(
        wide.code(),
        Some(rill_client::ErrorCode::InvalidConfig),
        "{wide}"
    );

    // `rill cluster status` through every node's address: three nodes up, and (once the new
    // topic's groups elected) every partition led.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = rill_e2e::rill(Some(&cluster.addrs()), &["cluster", "status"], "");
        let status = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{status}");
        assert_eq!(
            status.lines().filter(|l| l.contains("\tup\t")).count(),
            3,
            "{status}"
        );
        if status.contains("10 partition(s), 0 without a leader") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Phase 1: every record acknowledged once, at the offset a consumer then reads it at.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let n = records();
    let mut acked: Vec<Acked> = produce(&producer, "events", (0..n).map(|i| format!("r{i}")))
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    await_identical(&cluster, &[1, 2, 3]).await;
    let c = check(&client, &acked).await;
    assert_eq!((c.lost, c.duplicated, c.moved), (0, 0, 0), "{c:?}");

    // Each partition has exactly one leader among the nodes' own metrics.
    for p in 0..PARTITIONS {
        let mut leaders = 0;
        for node in &cluster.nodes {
            let (status, body) = rill_e2e::http_get(node.metrics_addr(), "/metrics");
            assert_eq!(status, 200);
            let label = format!("topic=\"events\",partition=\"{p}\"");
            let value = |name: &str| {
                body.lines()
                    .find(|l| l.starts_with(name) && l.contains(&label))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{name} for partition {p} in:\n{body}"))
            };
            leaders += value("rill_raft_leader{");
            assert!(value("rill_raft_term{") >= 1);
        }
        assert_eq!(leaders, 1, "partition {p} has one leader");
    }

    // Phase 2: kill -9 the leader of partition 0 while records are in flight. The producer
    // follows the new leader by itself; every record is still acknowledged exactly once.
    let victim = leader(&m, 0);
    // Chunks of 100 records, each acknowledged before the next is sent: records keep flowing
    // across the kill, and the time of each chunk's acknowledgements shows the failover.
    const CHUNKS: u64 = 60;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let producing = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut started = Some(started_tx);
            for c in 0..CHUNKS {
                let first = n + c * 100;
                out.extend(
                    produce(
                        &producer,
                        "events",
                        (first..first + 100).map(|i| format!("r{i}")),
                    )
                    .await,
                );
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
            out
        })
    };
    started_rx.await.expect("the first chunk is acknowledged");
    let killed_at = Instant::now();
    cluster.node(victim).kill9();
    let late = producing.await.expect("producer task");
    // The first acknowledgement on partition 0 that came after the kill.
    let failover = late
        .iter()
        .filter(|((p, _, _), t)| *p == 0 && *t > killed_at)
        .map(|(_, t)| *t - killed_at)
        .min();
    eprintln!(
        "failover after kill -9 of node {victim}: first acknowledgement on partition 0 after {failover:?}"
    );
    acked.extend(late.into_iter().map(|(a, _)| a));

    // The killed node comes back, catches up, and all three agree again; it leads its
    // preferred partitions again.
    cluster.node(victim).restart();
    let back = Instant::now();
    await_identical(&cluster, &[1, 2, 3]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = admin.metadata(&["events"]).await.expect("metadata");
        let astray: Vec<_> = m.topics[0]
            .partitions
            .iter()
            .filter(|p| p.leader != p.replicas.first().copied())
            .map(|p| (p.partition, p.leader, p.replicas[0]))
            .collect();
        if astray.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions (partition, leader, preferred) not led by their preferred replica 30 s after node {victim} returned: {astray:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "every partition led by its preferred replica {:?} after node {victim} returned",
        back.elapsed()
    );
    let c = check(&client, &acked).await;
    eprintln!(
        "checker: {c:?}; retries the leaders recognised as stored: {}",
        producer.duplicates_avoided()
    );
    assert_eq!(
        c,
        Checked {
            acknowledged: (n + CHUNKS * 100) as usize,
            ..Checked::default()
        }
    );
}

/// Story: a consumer group commits on a three-node cluster; the node coordinating groups (the
/// leader of `__consumer_offsets`) is killed. Another node takes over with the commits, and
/// the group resumes exactly where it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_resumes_from_its_commits_after_its_coordinator_is_killed() {
    use rill_client::{Consumer, ConsumerConfig, OffsetReset};
    // The client's account of its coordination, with RUST_LOG=rill_client=debug.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic("orders", 3, TopicConfig::default())
        .await
        .expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let send = |range: std::ops::Range<u32>| {
        let producer = producer.clone();
        async move {
            let mut deliveries = Vec::new();
            for i in range {
                let v = format!("o{i}");
                let record = ProducerRecord::new("orders", v.clone()).key(v);
                deliveries.push(producer.send(record).await.expect("send"));
            }
            for d in deliveries {
                d.await.expect("acknowledged");
            }
        }
    };
    send(0..300).await;
    eprintln!("{:?} produced", std::time::SystemTime::now());
    let config = || {
        let mut c = ConsumerConfig::new("g", ["orders"]);
        c.session_timeout = Duration::from_secs(3);
        c.auto_offset_reset = OffsetReset::Earliest;
        c.auto_commit_interval = None;
        c
    };
    let mut consumer = Consumer::subscribe(client.clone(), config()).unwrap();
    let first = read_group(&mut consumer, 300).await;
    consumer.commit().await.expect("commit");
    consumer.close().await.expect("close");
    eprintln!("{:?} read and committed", std::time::SystemTime::now());

    let offsets = settled_partitions(&admin, "__consumer_offsets", 1).await;
    let coordinator = offsets.topics[0].partitions[0]
        .leader
        .expect("the coordinator is known");
    cluster.node(coordinator).kill9();
    send(300..400).await;
    eprintln!(
        "{:?} killed the coordinator and produced",
        std::time::SystemTime::now()
    );
    let mut consumer = Consumer::subscribe(client.clone(), config()).unwrap();
    let fresh = read_group(&mut consumer, 100).await;
    let expected: std::collections::BTreeSet<String> =
        (300..400).map(|i| format!("o{i}")).collect();
    assert!(
        fresh.is_disjoint(&first),
        "records committed before the failover came again"
    );
    assert_eq!(fresh, expected);
    consumer
        .commit()
        .await
        .expect("commit on the new coordinator");
    let described = admin.describe_group("g").await.expect("describe");
    assert_eq!(described.offsets.iter().map(|o| o.lag).sum::<u64>(), 0);
    // Only the coordinator writes the offsets partition.
    let forged = ProducerRecord::new("__consumer_offsets", "forged");
    let refused = producer.send(forged).await.expect("queued").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("internal")),
        "{refused:?}"
    );
    let moved = admin.metadata(&["__consumer_offsets"]).await.unwrap();
    assert_ne!(moved.topics[0].partitions[0].leader, Some(coordinator));
    consumer.close().await.expect("close");
    cluster.node(coordinator).restart();
}

/// Story: a group member is reading when its coordinator's node is killed. The next
/// coordinator restores the group's generation from `__consumer_offsets`: the member keeps its
/// id, generation and partitions (no rebalance, as in Kafka), its commit lands on the new
/// coordinator, and nothing it committed is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_its_generation_when_its_coordinator_is_killed() {
    use rill_client::{Consumer, ConsumerConfig, OffsetReset};
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client, admin, producer) = three_nodes_with(dir.path(), "orders", 3).await;
    let values = |range: std::ops::Range<u32>| range.map(|i| format!("o{i}"));
    produce(&producer, "orders", values(0..300)).await;
    let mut config = ConsumerConfig::new("g", ["orders"]);
    config.session_timeout = Duration::from_secs(10);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = None;
    let mut consumer = Consumer::subscribe(client.clone(), config).unwrap();
    let first = read_group(&mut consumer, 300).await;
    consumer.commit().await.expect("commit");
    let membership = |d: &rill_client::DescribeGroupResponse| {
        let mut members: Vec<_> = d
            .members
            .iter()
            .map(|m| (m.member_id.clone(), m.assignment.len()))
            .collect();
        members.sort();
        (d.state.clone(), d.generation, members)
    };
    let before = membership(&admin.describe_group("g").await.expect("describe"));
    assert_eq!(
        (before.0.as_str(), before.2.len()),
        ("stable", 1),
        "{before:?}"
    );

    let offsets = settled_partitions(&admin, "__consumer_offsets", 1).await;
    let coordinator = leader(&offsets, 0);
    cluster.node(coordinator).kill9();
    produce(&producer, "orders", values(300..400)).await;
    let fresh = read_group(&mut consumer, 100).await;
    let expected: std::collections::BTreeSet<String> = values(300..400).collect();
    assert!(fresh.is_disjoint(&first), "committed records came again");
    assert_eq!(fresh, expected);
    consumer
        .commit()
        .await
        .expect("the commit lands on the new coordinator");
    let described = admin.describe_group("g").await.expect("describe");
    assert_eq!(membership(&described), before, "the group rebalanced");
    assert_eq!(described.offsets.iter().map(|o| o.lag).sum::<u64>(), 0);
    let moved = admin.metadata(&["__consumer_offsets"]).await.unwrap();
    assert_ne!(moved.topics[0].partitions[0].leader, Some(coordinator));
    consumer.close().await.expect("close");
    cluster.node(coordinator).restart();
}

/// Story: an operator resets a group to the end of a topic whose partitions have one replica
/// each, so the coordinator holds only some of them. It takes every partition's figures from a
/// node that holds it, not from its own empty copy (which would send the group back to 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_finds_the_offsets_of_partitions_the_coordinator_does_not_hold() {
    use rill_client::ResetTo;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3, &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic_replicated("single", 3, Some(1), TopicConfig::default())
        .await
        .expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    // Each partition's end: one past its last acknowledged record (Raft's own entries take
    // offsets too).
    let mut ends = Vec::new();
    for p in 0..3u32 {
        let mut deliveries = Vec::new();
        for i in 0..=p * 10 + 10 {
            let record = ProducerRecord::new("single", format!("{i}")).partition(p);
            deliveries.push(producer.send(record).await.expect("send"));
        }
        let mut last = 0;
        for d in deliveries {
            last = d.await.expect("acknowledged").offset;
        }
        ends.push((p, last + 1));
    }
    // The first group request makes the coordinator; its node holds one partition at most.
    let deadline = Instant::now() + Duration::from_secs(20);
    let latest = loop {
        match admin.reset_offsets("g", "single", ResetTo::Latest).await {
            Ok(o) => break o,
            Err(e) => assert!(Instant::now() < deadline, "no coordinator: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let coordinator = leader(
        &settled_partitions(&admin, "__consumer_offsets", 1).await,
        0,
    );
    // (A node's metadata names leaders only where it holds a replica; the replicas it knows.)
    let m = admin.metadata(&["single"]).await.expect("metadata");
    let elsewhere = m.topics[0]
        .partitions
        .iter()
        .filter(|p| p.replicas != [coordinator])
        .count();
    assert!(
        elsewhere >= 2,
        "the test needs partitions away from the coordinator"
    );
    let got = |o: Vec<(rill_client::TopicPartition, u64)>| {
        o.into_iter()
            .map(|(tp, o)| (tp.partition, o))
            .collect::<Vec<_>>()
    };
    assert_eq!(got(latest), ends);
    let middle = admin
        .reset_offsets("g", "single", ResetTo::Offset(5))
        .await
        .expect("reset");
    assert_eq!(got(middle), vec![(0, 5), (1, 5), (2, 5)]);
    // Describing the group reads the same figures: each partition's end and lag.
    let described = admin.describe_group("g").await.expect("describe");
    let lags: Vec<(u32, u64, u64)> = described
        .offsets
        .iter()
        .map(|o| (o.partition.partition, o.log_end, o.lag))
        .collect();
    let expected: Vec<(u32, u64, u64)> = ends.iter().map(|(p, e)| (*p, *e, e - 5)).collect();
    assert_eq!(lags, expected);
}

/// `n` distinct values from a group consumer (each record waited for at most 60 s).
async fn read_group(
    consumer: &mut rill_client::Consumer,
    n: usize,
) -> std::collections::BTreeSet<String> {
    use futures::StreamExt;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .expect("records keep coming")
            .expect("the stream is open")
            .expect("no error");
        got.insert(String::from_utf8(r.value.to_vec()).unwrap());
    }
    got
}

/// Story: an operator adds a fourth node to a running three-node cluster and moves a
/// partition onto it, away from its current leader, while a producer keeps writing; then moves
/// it back and removes the fourth node. Produce pauses for no more than the one election the
/// leader's departure causes, nothing acknowledged is lost or duplicated, the new replica holds
/// the same bytes as the others, and the replica that left is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_an_added_node_and_back_while_producing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic("moving", 1, TopicConfig::default())
        .await
        .expect("create");
    let m = settled_partitions(&admin, "moving", 1).await;
    let old_leader = leader(&m, 0);
    let stay: Vec<u64> = (1..=3).filter(|n| *n != old_leader).collect();

    // The fourth node asks to join by itself and shows up in the metadata.
    let added = cluster.add_node(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.metadata(&[]).await.expect("metadata").nodes.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "node {added} did not join in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A producer writes throughout, in chunks of 50 acknowledged before the next.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let producing = {
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut first = Some(first_tx);
            // Bounded: 2,000 chunks at most, however long the moves take.
            for c in 0..2_000u64 {
                if *stop_rx.borrow() {
                    break;
                }
                let values = (c * 50..c * 50 + 50).map(|i| format!("m{i}"));
                out.extend(produce(&producer, "moving", values).await);
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            out
        })
    };
    first_rx.await.expect("the first chunk is acknowledged");

    // Move the partition onto the new node, away from its leader: the CLI waits until done.
    let target = [added, stay[0], stay[1]];
    let list = target.map(|n| n.to_string()).join(",");
    let addrs = cluster.addrs();
    let out = tokio::task::spawn_blocking(move || {
        rill_e2e::rill(
            Some(&addrs),
            &[
                "topic",
                "reassign",
                "moving",
                "--partition",
                "0",
                "--replicas",
                &list,
            ],
            "",
        )
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("moved moving-0 to nodes "), "{said}");
    let m = admin.metadata(&["moving"]).await.expect("metadata");
    let p = &m.topics[0].partitions[0];
    assert_eq!(
        (p.replicas.as_slice(), p.target.len()),
        (&target[..], 0),
        "{p:?}"
    );

    // The node that left holds nothing of the partition any more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.partition_bytes(old_leader, "moving", 0).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node {old_leader} still holds moving-0 20 s after it left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A node holding a replica cannot be removed.
    let refused = admin
        .remove_node(added)
        .await
        .expect_err("node 4 holds a replica");
    assert!(
        refused
            .to_string()
            .contains("still holds 1 replica(s) (moving-0)"),
        "{refused}"
    );

    // And back: the emptied node catches up from nothing; then the fourth node leaves.
    admin
        .reassign("moving", 0, &[old_leader, stay[0], stay[1]])
        .await
        .expect("reassign back");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = admin.metadata(&["moving"]).await.expect("metadata");
        let p = &m.topics[0].partitions[0];
        if p.target.is_empty() && p.replicas[0] == old_leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move back is not done after 60 s: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    let acked = producing.await.expect("producer task");
    admin.remove_node(added).await.expect("remove node 4");
    assert_eq!(admin.metadata(&[]).await.expect("metadata").nodes.len(), 3);

    // Every acknowledged record is read back once, at its offset; the longest pause between
    // two acknowledgements is reported (one election when the leader left).
    let read = read_all(&client, "moving", 0).await;
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for (offset, v) in &read {
        seen.entry(v.as_str()).or_default().push(*offset);
    }
    let duplicated = seen.values().filter(|o| o.len() > 1).count();
    let lost = acked
        .iter()
        .filter(|((_, offset, v), _)| seen.get(v.as_str()) != Some(&vec![*offset]))
        .count();
    let longest_pause = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "moves under load: {} acknowledged, {lost} lost or moved, {duplicated} duplicated, longest pause between acknowledgements {longest_pause:?}",
        acked.len()
    );
    assert!(acked.len() >= 100, "the producer ran across the moves");
    // Not a speed figure: a stall until the client's request timeout (30 s) would show here.
    assert!(longest_pause < Duration::from_secs(10), "{longest_pause:?}");
    assert_eq!((lost, duplicated), (0, 0));
    // Byte-identical replicas on the nodes that hold it now.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs: Vec<Vec<u8>> = [old_leader, stay[0], stay[1]]
            .iter()
            .map(|&n| cluster.partition_bytes(n, "moving", 0))
            .collect();
        if logs.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas of moving-0 still differ after 30 s: sizes {:?}",
            logs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Megabytes written while a follower is down in the catch-up test (the acceptance
/// run uses 1024: `RILL_CATCHUP_MB=1024`).
fn catch_up_mb() -> u64 {
    std::env::var("RILL_CATCHUP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// Story: a follower's node is killed and stays down while the partition takes many megabytes
/// of writes; it is restarted while a producer keeps writing. It catches up from the leader
/// (AppendEntries from where its log ends) to the same bytes, and nothing acknowledged is lost
/// or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_many_writes_catches_up_while_producing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    admin
        .create_topic("bulk", 1, TopicConfig::default())
        .await
        .expect("create");
    let m = settled_partitions(&admin, "bulk", 1).await;
    let lead = leader(&m, 0);
    let down = (1..=3).find(|n| *n != lead).expect("a follower");
    cluster.node(down).kill9();

    // Many megabytes in 16 KiB records while the follower is down.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let value = "x".repeat(16 * 1024 - 16);
    let count = catch_up_mb() * 64;
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..count {
        let v = format!("{i:015}{value}");
        let record = ProducerRecord::new("bulk", v.clone()).key(format!("{i}"));
        deliveries.push((
            format!("{i:015}"),
            producer.send(record).await.expect("send"),
        ));
    }
    let mut acked = Vec::new();
    for (v, d) in deliveries {
        let m = d.await.expect("acknowledged by the two remaining replicas");
        acked.push((m.offset, v));
    }
    let wrote = started.elapsed();
    let behind = cluster.partition_size(lead, "bulk", 0);

    // Restart it while a producer keeps writing (bounded, until told to stop).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producing = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for c in 0..10_000u64 {
                if *stop_rx.borrow() {
                    break;
                }
                let values = (c * 20..c * 20 + 20).map(|i| format!("late{i}"));
                out.extend(produce(&producer, "bulk", values).await);
            }
            out
        })
    };
    let restarted = Instant::now();
    cluster.node(down).restart();
    let deadline = Instant::now() + Duration::from_secs(30 + catch_up_mb() / 4);
    while cluster.partition_size(down, "bulk", 0) < behind {
        assert!(
            Instant::now() < deadline,
            "node {down} holds {} of {behind} bytes after {:?}",
            cluster.partition_size(down, "bulk", 0),
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = restarted.elapsed();
    stop_tx.send_replace(true);
    let late = producing.await.expect("producer task");
    eprintln!(
        "catch-up: {} MB written in {wrote:?} with node {down} down; it caught up in {caught_up:?} ({:.0} MB/s) while {} more records were acknowledged",
        behind >> 20,
        behind as f64 / 1e6 / caught_up.as_secs_f64(),
        late.len()
    );
    assert!(!late.is_empty(), "the producer ran during the catch-up");
    // Same bytes on every replica, once the last entries reached the follower.
    let deadline = Instant::now() + Duration::from_secs(30);
    for other in (1..=3).filter(|n| *n != down) {
        while cluster.partition_bytes(down, "bulk", 0) != cluster.partition_bytes(other, "bulk", 0)
        {
            assert!(
                Instant::now() < deadline,
                "nodes {down} and {other} still differ"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Everything acknowledged, read back once at its offset.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for (offset, v) in read_all(&client, "bulk", 0).await {
        let key = v.get(..15).unwrap_or(&v).to_string();
        seen.entry(key).or_default().push(offset);
    }
    let late = late.into_iter().map(|((_, o, v), _)| (o, v));
    let all: Vec<(u64, String)> = acked.into_iter().chain(late).collect();
    let lost = all
        .iter()
        .filter(|(o, v)| seen.get(v.get(..15).unwrap_or(v)) != Some(&vec![*o]))
        .count();
    let duplicated = seen.values().filter(|o| o.len() > 1).count();
    assert_eq!((all.is_empty(), lost, duplicated), (false, 0, 0));
}

/// Story: a topic with retention in a cluster. A follower is down while the partition takes
/// more writes than retention keeps; the two others delete their oldest segments (each through
/// a snapshot of its Raft group). When the follower returns, the entries it lacks are gone, so
/// the leader sends it the snapshot: its log starts afresh where the leader's starts, fills up
/// to the same bytes, and it then counts for the majority (the other follower is stopped and
/// produce still succeeds). Everything acknowledged above the log start reads back once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_in_a_cluster_trims_every_replica_and_a_returning_one_starts_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &["--retention-check-interval-ms", "200"]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        segment_bytes: Some(64 << 10),
        retention_bytes: Some(256 << 10),
        ..TopicConfig::default()
    };
    admin.create_topic("trim", 1, config).await.expect("create");
    let m = settled_partitions(&admin, "trim", 1).await;
    let lead = leader(&m, 0);
    let mut followers = (1..=3).filter(|n| *n != lead);
    let (down, other) = (followers.next().unwrap(), followers.next().unwrap());
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let value = "v".repeat(1000);
    let first = produce(&producer, "trim", (0..50).map(|i| format!("{i:06}{value}"))).await;
    cluster.node(down).kill9();
    let later = produce(
        &producer,
        "trim",
        (50..2000).map(|i| format!("{i:06}{value}")),
    )
    .await;
    // The leader and the remaining follower trim their logs.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in [lead, other] {
        // Down to the limit plus the active segment (a follower may trim in steps, as it
        // applies the commit).
        while cluster
            .segment_names(n, "trim", 0)
            .first()
            .map(String::as_str)
            == Some("00000000000000000000.log")
            || cluster.partition_size(n, "trim", 0) > (256 + 64) << 10
        {
            assert!(
                Instant::now() < deadline,
                "node {n} never trimmed to the retention limit: {:?}",
                cluster.segment_names(n, "trim", 0)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The returning follower gets the leader's snapshot and then the rest.
    cluster.node(down).restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.partition_bytes(down, "trim", 0) != cluster.partition_bytes(lead, "trim", 0) {
        assert!(
            Instant::now() < deadline,
            "node {down} never matched the leader: {:?} vs {:?}",
            cluster.segment_names(down, "trim", 0),
            cluster.segment_names(lead, "trim", 0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        cluster
            .segment_names(down, "trim", 0)
            .first()
            .map(String::as_str),
        Some("00000000000000000000.log"),
        "its old segments went with the snapshot"
    );
    // It is a full replica now: with the other follower stopped, it makes the majority.
    cluster.node(other).kill9();
    let last = produce(
        &producer,
        "trim",
        (2000..2020).map(|i| format!("{i:06}{value}")),
    )
    .await;
    let all: Vec<Acked> = first
        .into_iter()
        .chain(later)
        .chain(last)
        .map(|(a, _)| a)
        .collect();
    let start = admin
        .describe_topic("trim")
        .await
        .expect("describe")
        .partitions[0]
        .log_start_offset;
    assert!(start > 0);
    let mut read: HashMap<String, Vec<u64>> = HashMap::new();
    let opts = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 1 << 20,
        max_records: None,
    };
    let mut at = start;
    loop {
        let r = client.fetch("trim", 0, at, &opts).await.expect("fetch");
        for rec in &r.records {
            let v = String::from_utf8(rec.value.to_vec()).expect("utf-8");
            read.entry(v).or_default().push(rec.offset);
        }
        if r.next_offset >= r.high_watermark {
            break;
        }
        at = r.next_offset;
    }
    let kept: Vec<&Acked> = all.iter().filter(|(_, o, _)| *o >= start).collect();
    let lost = kept
        .iter()
        .filter(|(_, o, v)| read.get(v) != Some(&vec![*o]))
        .count();
    let duplicated = read.values().filter(|o| o.len() > 1).count();
    assert_eq!((kept.len() > 20, lost, duplicated), (true, 0, 0));
}

/// Story: a topic is deleted in a cluster while one node is down, then created again under the
/// same name (a new topic, fewer partitions). The running nodes remove their copies before the
/// delete is answered. The node that was down comes back with the old topic's data: it removes
/// it (the cluster's topic id tells the two apart) instead of serving it as the new topic, and
/// every replica of the new topic holds the same bytes; readers see only the new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_while_a_node_is_down_is_removed_there_and_its_name_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _client, admin, producer) = three_nodes_with(dir.path(), "doomed", 3).await;
    produce(&producer, "doomed", (0..300).map(|i| format!("old-{i}"))).await;
    let away = 3;
    cluster.node(away).kill9();
    assert!(cluster.partition_dir(away, "doomed", 2).exists());

    // Asked of node 1 (the client's first address): it answers once its copy is gone.
    admin.delete_topic("doomed").await.expect("delete");
    assert!(!cluster.partition_dir(1, "doomed", 0).exists());
    let names: Vec<String> = admin
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&"doomed".to_string()), "{names:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.partition_dir(2, "doomed", 0).exists() {
        assert!(Instant::now() < deadline, "node 2 kept the deleted topic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleting it again, or the internal offsets topic, is refused.
    assert!(admin.delete_topic("doomed").await.is_err());

    admin
        .create_topic("doomed", 2, TopicConfig::default())
        .await
        .expect("create again");
    settled_partitions(&admin, "doomed", 2).await;
    // A new application (the old producer knew three partitions of the old topic).
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let acked = produce(&producer, "doomed", (0..200).map(|i| format!("new-{i}"))).await;
    cluster.node(away).restart();
    // The returning node drops the old copy (3 partitions) and replicates the new one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let same = (0..2).all(|p| {
            let a = cluster.partition_bytes(1, "doomed", p);
            !a.is_empty()
                && a == cluster.partition_bytes(2, "doomed", p)
                && a == cluster.partition_bytes(away, "doomed", p)
        });
        if same && !cluster.partition_dir(away, "doomed", 2).exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {away} still holds the old topic or differs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut read = Vec::new();
    for p in 0..2 {
        read.extend(
            read_all(&client, "doomed", p)
                .await
                .into_iter()
                .map(|(_, v)| v),
        );
    }
    read.sort();
    let mut expected: Vec<String> = acked.into_iter().map(|((_, _, v), _)| v).collect();
    expected.sort();
    assert_eq!(read, expected, "only the new topic's records, each once");
}

/// Story: two instances of a named producer start through different nodes (each client's
/// bootstrap is another node, which is where it asks for its id). The name lives in the
/// metadata group, so the second gets the same id and the next epoch, and the first is
/// refused on every partition, including one the second has not written to yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_producer_is_fenced_by_an_instance_that_asked_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let admin = Admin::new(Client::connect(&cluster.addrs()).await.expect("connect"));
    admin
        .create_topic("billing", 2, TopicConfig::default())
        .await
        .expect("create");
    settled_partitions(&admin, "billing", 2).await;
    let named = || ProducerConfig {
        producer_name: Some("invoicer".into()),
        ..ProducerConfig::default()
    };
    let send = |p: &Producer, partition: u32, value: &str| {
        let (p, value) = (p.clone(), value.to_string());
        async move {
            let record = ProducerRecord::new("billing", value).partition(partition);
            p.send(record).await?.await
        }
    };
    let one = cluster.node(1).addr().to_string();
    let two = cluster.node(2).addr().to_string();
    let first = Producer::new(Client::connect(&one).await.expect("connect"), named());
    for i in 0..4 {
        send(&first, i % 2, &format!("first-{i}"))
            .await
            .expect("first");
    }
    let (id, epoch) = first.identity().expect("an id");
    assert!(
        id < 1 << 44,
        "a named producer's id is the cluster's, not a node's"
    );

    let second = Producer::new(Client::connect(&two).await.expect("connect"), named());
    send(&second, 0, "second-0").await.expect("second");
    assert_eq!(
        second.identity(),
        Some((id, epoch + 1)),
        "same id, next epoch"
    );
    let refused = send(&first, 1, "first-after-fence").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(rill_client::ErrorCode::ProducerFenced),
        "{refused}"
    );
    send(&second, 1, "second-1").await.expect("second");
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let p1: Vec<String> = read_all(&client, "billing", 1)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(p1, ["first-1", "first-3", "second-1"]);
}

/// Story: sixteen tools reset their groups' offsets over and over in a three-node cluster,
/// writing several MiB of commits. The replicated offsets log is compacted by its coordinator
/// and every replica trims itself, so each stays near the live size instead of growing with
/// every commit. The coordinator is then killed: the new one rebuilds the groups' offsets from
/// its trimmed log and serves the latest commit of every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicated_offsets_log_is_compacted_and_trimmed_on_every_replica() {
    use rill_client::ResetTo;
    const GROUPS: u64 = 16;
    const ROUNDS: u64 = 70;
    const WIDE: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        3,
        &[
            "--retention-check-interval-ms",
            "200",
            "--offsets-compact-bytes",
            "262144",
        ],
    );
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(client.clone());
    // Long names make each committed entry about 460 bytes.
    let topic = format!("wide{}", "w".repeat(196));
    admin
        .create_topic(&topic, WIDE, TopicConfig::default())
        .await
        .expect("create");
    settled_partitions(&admin, &topic, WIDE).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for p in 0..WIDE {
        let mut deliveries = Vec::new();
        for i in 0..20 {
            let record = ProducerRecord::new(topic.clone(), format!("{i}")).partition(p);
            deliveries.push(producer.send(record).await.expect("send"));
        }
        for d in deliveries {
            d.await.expect("acknowledged");
        }
    }
    let group = |g: u64| format!("g{g:02}-{}", "x".repeat(236));
    // The first group request creates the offsets partition; its leader then has to start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = admin
        .reset_offsets(&group(0), &topic, ResetTo::Earliest)
        .await
    {
        assert!(Instant::now() < deadline, "no coordinator: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tools: Vec<_> = (0..GROUPS)
        .map(|g| {
            let (admin, topic, group) = (admin.clone(), topic.clone(), group(g));
            tokio::spawn(async move {
                // The last round leaves offset `g` on every partition.
                for round in (0..ROUNDS).rev() {
                    let to = ResetTo::Offset((round + g) % 21);
                    admin
                        .reset_offsets(&group, &topic, to)
                        .await
                        .expect("reset");
                }
            })
        })
        .collect();
    for t in tools {
        t.await.expect("tool");
    }
    eprintln!("{:?} written", std::time::SystemTime::now());
    let offsets = settled_partitions(&admin, "__consumer_offsets", 1).await;
    let coordinator = leader(&offsets, 0);
    let described = admin
        .describe_topic("__consumer_offsets")
        .await
        .expect("describe")
        .partitions[0]
        .clone();
    let written = GROUPS * ROUNDS * u64::from(WIDE);
    assert!(
        described.log_end_offset > written,
        "{} records for {written} commits",
        described.log_end_offset
    );
    // Every replica trims below the latest compaction (down to the segment it is in, with
    // 1 MiB segments): about 4 MiB were written.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 1..=3 {
        while cluster
            .segment_names(n, "__consumer_offsets", 0)
            .first()
            .map(String::as_str)
            == Some("00000000000000000000.log")
            || cluster.partition_size(n, "__consumer_offsets", 0) > 5 << 19
        {
            assert!(
                Instant::now() < deadline,
                "node {n} never trimmed its committed offsets: {:?}, {} bytes",
                cluster.segment_names(n, "__consumer_offsets", 0),
                cluster.partition_size(n, "__consumer_offsets", 0)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The next coordinator knows every group's last commit from what is left.
    eprintln!("{:?} trimmed", std::time::SystemTime::now());
    cluster.node(coordinator).kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    for g in 0..GROUPS {
        loop {
            let committed: Option<Vec<Option<u64>>> = admin
                .describe_group(&group(g))
                .await
                .ok()
                .map(|d| d.offsets.iter().map(|o| o.committed).collect());
            if committed == Some(vec![Some(g); WIDE as usize]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group {g} after the failover: {committed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("{:?} served", std::time::SystemTime::now());
    let moved = admin.metadata(&["__consumer_offsets"]).await.unwrap();
    assert_ne!(moved.topics[0].partitions[0].leader, Some(coordinator));
    // Retention could only forget offsets there: its settings stay as created.
    let expire = TopicConfig {
        retention_ms: Some(1),
        ..TopicConfig::default()
    };
    let refused = admin.alter_topic("__consumer_offsets", expire).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("internal")),
        "{refused:?}"
    );
    cluster.node(coordinator).restart();
}
