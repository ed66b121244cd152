//! Replication end to end: real rilld nodes on loopback forming a cluster.
//!
//! Clients here talk to each node directly and find a partition's leader by asking (only the
//! leader serves it; the others answer NotLeader); routing inside the client comes with the
//! Metadata API.

use bytes::Bytes;
use rill_client::{BatchBuilder, Client, Error, ErrorCode, FetchOptions, TopicConfig};
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
const PER_BATCH: u64 = 100;

async fn connect_all(cluster: &Cluster) -> Vec<Option<Client>> {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        out.push(Some(Client::connect(n.addr()).await.expect("connect")));
    }
    out
}

fn is_routing(e: &Error) -> bool {
    matches!(
        e,
        Error::Broker {
            code: ErrorCode::NotLeader | ErrorCode::LeaderNotAvailable,
            ..
        }
    )
}

/// The index of the node leading `topic`-`p`: the one that serves a fetch of it. Retries
/// (every 50 ms, up to 20 s) while an election is under way.
async fn leader_of(clients: &[Option<Client>], topic: &str, p: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let quick = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 1,
    };
    loop {
        for (i, c) in clients.iter().enumerate() {
            let Some(c) = c else { continue };
            match c.fetch(topic, p, 0, &quick).await {
                Ok(_) => return i,
                Err(e)
                    if is_routing(&e)
                        || matches!(
                            e,
                            Error::Disconnected(_) | Error::Connect { .. } | Error::Timeout(_)
                        ) => {}
                Err(e) => panic!("fetch of {topic}-{p} from node {}: {e}", i + 1),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic}-{p} has no leader after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(p: u32, first: u64, n: u64) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 * n as usize);
    for i in first..first + n {
        b.push(
            Some(format!("k{p}-{i}").as_bytes()),
            format!("{p}-{i}").as_bytes(),
            &[],
            0,
        );
    }
    b.finish()
}

/// Produces records `first..first + n` of partition `p` in batches, each to whichever node
/// leads it at the time; returns how long the first acknowledgement took.
async fn produce(clients: &[Option<Client>], topic: &str, p: u32, first: u64, n: u64) -> Duration {
    let started = Instant::now();
    let mut first_ack = None;
    let mut next = first;
    while next < first + n {
        let leader = leader_of(clients, topic, p).await;
        let c = clients[leader].as_ref().expect("leader is running");
        let count = PER_BATCH.min(first + n - next);
        match c.send_batch(topic, p, batch(p, next, count)).await {
            Ok(ack) => match ack.await {
                Ok(_) => {
                    first_ack.get_or_insert(started.elapsed());
                    next += count;
                }
                Err(e) if is_routing(&e) => {}
                Err(e) => panic!("produce to {topic}-{p}: {e}"),
            },
            Err(e) if is_routing(&e) => {}
            Err(e) => panic!("produce to {topic}-{p}: {e}"),
        }
    }
    first_ack.unwrap_or_default()
}

/// Every record of partition `p`, as `value`, read from its leader.
async fn read_all(clients: &[Option<Client>], topic: &str, p: u32) -> Vec<String> {
    let leader = leader_of(clients, topic, p).await;
    let c = clients[leader].as_ref().expect("leader is running");
    let opts = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 1 << 20,
    };
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let r = c.fetch(topic, p, at, &opts).await.expect("fetch");
        for rec in &r.records {
            out.push(String::from_utf8(rec.value.to_vec()).expect("utf-8"));
        }
        if r.next_offset >= r.high_watermark {
            return out;
        }
        at = r.next_offset;
    }
}

/// Waits (up to 30 s) until every replica of every partition holds the same bytes. Followers
/// learn of the last entries a heartbeat later; the test can only look at their files.
async fn await_identical(cluster: &Cluster, topic: &str, nodes: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in 0..PARTITIONS {
        loop {
            let logs: Vec<Vec<u8>> = nodes
                .iter()
                .map(|&n| cluster.partition_bytes(n, topic, p))
                .collect();
            if logs.windows(2).all(|w| w[0] == w[1]) && !logs[0].is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of {topic}-{p} still differ after 30 s: sizes {:?}",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a checker saw for one partition: acknowledged values against those read back.
fn check(acked: &[String], read: &[String]) -> (usize, usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for v in read {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    let lost = acked
        .iter()
        .filter(|v| !seen.contains_key(v.as_str()))
        .count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    (lost, duplicated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_byte_identical_logs_and_survive_kill_9_of_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &["--heartbeat-ms", "100"]);
    let clients = connect_all(&cluster).await;
    // Any node takes admin requests; the topic is replicated on all three.
    rill_client::Admin::new(clients[1].clone().unwrap())
        .create_topic("events", PARTITIONS, TopicConfig::default())
        .await
        .expect("create");
    let per_partition = records() / u64::from(PARTITIONS);
    for p in 0..PARTITIONS {
        produce(&clients, "events", p, 0, per_partition).await;
    }
    let expected = |p: u32, n: u64| -> Vec<String> { (0..n).map(|i| format!("{p}-{i}")).collect() };
    // Every replica holds byte-identical batches at identical offsets, and a consumer reads
    // every record once, in order.
    await_identical(&cluster, "events", &[1, 2, 3]).await;
    for p in 0..PARTITIONS {
        assert_eq!(
            read_all(&clients, "events", p).await,
            expected(p, per_partition),
            "partition {p}"
        );
    }
    // Each partition has exactly one leader, and its replicas report the same applied index.
    for p in 0..PARTITIONS {
        let mut leaders = 0;
        for n in &cluster.nodes {
            let (status, body) = rill_e2e::http_get(n.metrics_addr(), "/metrics");
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
            assert!(value("rill_raft_applied_index{") >= per_partition / PER_BATCH);
        }
        assert_eq!(leaders, 1, "partition {p} has one leader");
    }
    // kill -9 the leader of partition 0: another node takes over and acknowledges again.
    let victim = leader_of(&clients, "events", 0).await;
    let mut clients = clients;
    clients[victim] = None;
    cluster.nodes[victim].kill9();
    let failover = produce(&clients, "events", 0, per_partition, 1000).await;
    eprintln!(
        "failover after kill -9 of node {}: first acknowledgement after {failover:?}",
        victim + 1
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    // The killed node comes back, catches up, and all three agree again.
    cluster.nodes[victim].restart();
    clients[victim] = Some(Client::connect(cluster.nodes[victim].addr()).await.unwrap());
    await_identical(&cluster, "events", &[1, 2, 3]).await;
    let mut lost = 0;
    let mut duplicated = 0;
    for p in 0..PARTITIONS {
        let n = per_partition + if p == 0 { 1000 } else { 0 };
        let read = read_all(&clients, "events", p).await;
        let (l, d) = check(&expected(p, n), &read);
        lost += l;
        duplicated += d;
        assert_eq!(read, expected(p, n), "partition {p} after the failover");
    }
    eprintln!(
        "checker: acknowledged {}, lost {lost}, duplicated {duplicated}",
        records() + 1000
    );
    assert_eq!((lost, duplicated), (0, 0));
}
