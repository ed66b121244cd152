//! Fault rounds against a three-node cluster (issue 12, acceptance 2): while an idempotent
//! producer, a reader per partition and a consumer group run, each round injects one fault,
//! waits until the affected partition acknowledges again, and heals it. At the end a checker
//! compares what was acknowledged and what readers and the group saw with what the cluster
//! holds; the group must have read every acknowledged record (at least once) whichever node
//! coordinated it.
//!
//! Fault kinds: kill -9 of a leader (restarted), SIGSTOP of a leader beyond the election
//! timeout (then SIGCONT), a network partition cutting one leader's node-to-node links (then
//! healed), kill -9 of two of the three nodes (restarted), and a follower whose data directory
//! is wiped before it restarts. `RILL_CLUSTER_ROUNDS` rounds of each kind (2 by default; the
//! issue's long run uses 30); `RILL_CLUSTER_HEARTBEAT_MS` sets the nodes' heartbeat (rilld's
//! default otherwise); `RILL_CLUSTER_FAULTS` picks kinds (`KillLeader,WipeFollower`).

use futures::stream::{FuturesUnordered, StreamExt};
use rill_client::{Admin, Client, ClientConfig, FetchOptions, MetadataResponse};
use rill_client::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::{Producer, ProducerConfig, ProducerRecord, TopicConfig};
use rill_e2e::Cluster;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 6;
const TOPIC: &str = "events";

fn rounds() -> usize {
    std::env::var("RILL_CLUSTER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The fault kinds to run: all, or those `RILL_CLUSTER_FAULTS` names (comma-separated, as
/// printed: `KillLeader,PauseLeader`).
fn kinds() -> Vec<Fault> {
    let all = [
        Fault::KillLeader,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::KillTwo,
        Fault::WipeFollower,
    ];
    let Ok(names) = std::env::var("RILL_CLUSTER_FAULTS") else {
        return all.to_vec();
    };
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    let chosen: Vec<Fault> = all
        .into_iter()
        .filter(|f| names.contains(&format!("{f:?}").as_str()))
        .collect();
    assert!(
        !chosen.is_empty(),
        "RILL_CLUSTER_FAULTS names no fault kind of {all:?}"
    );
    chosen
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    PauseLeader,
    PartitionLeader,
    KillTwo,
    WipeFollower,
}

/// Clients that notice a stopped node within a few seconds (the default request timeout is
/// Kafka's 30 s).
fn client_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    }
}

/// An acknowledged record (partition, offset, value) and when its acknowledgement came.
type Acked = (u32, u64, String, Instant);

/// What runs during the faults: one producer sending chunks of records (each chunk awaited),
/// and a reader per partition.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    /// Node logs to print if a partition never recovers (set by each round).
    dump: Mutex<Option<String>>,
    /// Bumped after each acknowledgement is recorded.
    progress: tokio::sync::watch::Sender<u64>,
    read: Arc<Mutex<Vec<(u32, u64, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What the consumer group read, and the group's task (stopped after it caught up).
    group_read: Arc<Mutex<Vec<(u32, u64, String)>>>,
    group_stop: Arc<AtomicBool>,
    group_task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(client: &Client) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let progress = tokio::sync::watch::Sender::new(0u64);
        let read: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::default();
        let mut tasks = Vec::new();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let (s, a, tick) = (stop.clone(), acked.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded: stops when told, or after 100,000 chunks or 30 minutes.
            let deadline = Instant::now() + Duration::from_secs(1800);
            let mut next = 0u64;
            for _ in 0..100_000 {
                if s.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let mut deliveries = Vec::new();
                for _ in 0..60 {
                    let v = format!("r{next}");
                    next += 1;
                    let record = ProducerRecord::new(TOPIC, v.clone()).key(v.clone());
                    match producer.send(record).await {
                        Ok(d) => deliveries.push((v, d)),
                        Err(e) => panic!("send: {e}"),
                    }
                }
                // Each acknowledgement is timed as it arrives, not in send order (an early
                // one awaited behind a late one would seem to come after a fault).
                let mut pending: FuturesUnordered<_> = deliveries
                    .into_iter()
                    .map(|(v, d)| async move { (v, d.await) })
                    .collect();
                while let Some((v, delivered)) = pending.next().await {
                    // A record not acknowledged (its delivery timed out) is not counted.
                    if let Ok(m) = delivered {
                        let at = Instant::now();
                        a.lock().unwrap().push((m.partition, m.offset, v, at));
                        tick.send_modify(|n| *n += 1);
                    }
                }
            }
        }));
        for p in 0..PARTITIONS {
            let (s, r, client) = (stop.clone(), read.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let opts = FetchOptions {
                    max_wait: Duration::from_millis(200),
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    max_records: None,
                };
                let mut at = 0;
                while !s.load(Ordering::SeqCst) {
                    match client.fetch(TOPIC, p, at, &opts).await {
                        Ok(f) => {
                            let mut r = r.lock().unwrap();
                            for rec in f.records {
                                let v = String::from_utf8(rec.value.to_vec()).unwrap();
                                r.push((p, rec.offset, v));
                            }
                            at = f.next_offset;
                        }
                        // Retries inside `fetch` gave up (a long fault): try again.
                        Err(_) => tokio::task::yield_now().await,
                    }
                }
            }));
        }
        // A consumer group on the topic throughout, committing automatically; it must end
        // up having read every acknowledged record, whichever node coordinates it.
        let group_read: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::default();
        let group_stop = Arc::new(AtomicBool::new(false));
        let (gs, gr, gclient) = (group_stop.clone(), group_read.clone(), client.clone());
        let group_task = tokio::spawn(async move {
            let mut config = ConsumerConfig::new("audit", [TOPIC]);
            config.auto_offset_reset = OffsetReset::Earliest;
            config.session_timeout = Duration::from_secs(3);
            let mut consumer = Consumer::subscribe(gclient, config).expect("subscribe");
            while !gs.load(Ordering::SeqCst) {
                let next = tokio::time::timeout(Duration::from_millis(200), consumer.next());
                match next.await {
                    Ok(Some(Ok(r))) => {
                        let v = String::from_utf8(r.value.to_vec()).unwrap();
                        gr.lock().unwrap().push((r.partition, r.offset, v));
                    }
                    Ok(Some(Err(e))) => eprintln!("consumer group: {e}"),
                    Ok(None) => panic!("the group consumer stopped"),
                    Err(_) => {} // nothing new within 200 ms: look at the stop flag
                }
            }
            let _ = consumer.close().await;
        });
        Load {
            stop,
            dump: Mutex::new(None),
            acked,
            progress,
            read,
            tasks,
            group_read,
            group_stop,
            group_task,
        }
    }

    /// When partition `p` next acknowledges a record after `since` (waiting up to 120 s).
    async fn next_ack(&self, p: u32, since: Instant) -> Instant {
        let mut progress = self.progress.subscribe();
        let found = || {
            let acked = self.acked.lock().unwrap();
            let after = acked.iter().rev().take_while(|a| a.3 > since);
            after.filter(|a| a.0 == p).map(|a| a.3).min()
        };
        let waited = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if let Some(t) = found() {
                    return t;
                }
                progress.changed().await.expect("the producer runs");
            }
        });
        waited.await.unwrap_or_else(|_| {
            panic!("partition {p} acknowledged nothing for 120 s after the fault")
        })
    }

    /// Stops the load; returns what was acknowledged, what the readers read, and what the
    /// consumer group read (waiting up to 60 s for it to read every acknowledged record).
    async fn finish(self) -> (Vec<Acked>, Vec<(u32, u64, String)>, Vec<(u32, u64, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let read = std::mem::take(&mut *self.read.lock().unwrap());
        let wanted: std::collections::HashSet<&str> = acked.iter().map(|a| a.2.as_str()).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let caught_up = {
                let got = self.group_read.lock().unwrap();
                let seen: std::collections::HashSet<&str> =
                    got.iter().map(|g| g.2.as_str()).collect();
                wanted.is_subset(&seen)
            };
            if caught_up || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.group_stop.store(true, Ordering::SeqCst);
        self.group_task.await.expect("group task");
        let group = std::mem::take(&mut *self.group_read.lock().unwrap());
        (acked, read, group)
    }
}

/// Each node's own answer, by node id (a stopped or unreachable node is left out).
async fn views(cluster: &Cluster, up: &[u64]) -> Vec<(u64, MetadataResponse)> {
    let mut out = Vec::new();
    for &id in up {
        let addr = cluster.nodes[id as usize - 1].addr().to_string();
        let quick = ClientConfig {
            retry_timeout: Duration::from_millis(100),
            ..client_config()
        };
        let Ok(c) = Client::connect_with(&addr, quick).await else {
            continue;
        };
        if let Ok(m) = Admin::new(c).metadata(&[TOPIC]).await {
            out.push((id, m));
        }
    }
    out
}

/// The leader of `p` in the highest term any of `up` reports, waiting up to 30 s for one.
async fn leader_of(cluster: &Cluster, up: &[u64], p: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let best = views(cluster, up)
            .await
            .into_iter()
            .filter_map(|(_, m)| {
                let part = m.topics.first()?.partitions.get(p as usize)?.clone();
                Some((part.term, part.leader?))
            })
            .max();
        if let Some((_, leader)) = best {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader for partition {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node names a leader for every partition (its replicas are up
/// and following), up to 60 s.
async fn settled(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = views(cluster, &[1, 2, 3]).await;
        let all = v.len() == 3
            && v.iter().all(|(_, m)| {
                m.topics.first().is_some_and(|t| {
                    t.partitions.len() == PARTITIONS as usize
                        && t.partitions.iter().all(|p| p.leader.is_some())
                })
            });
        if all {
            return;
        }
        if Instant::now() > deadline {
            for (id, m) in &v {
                let leaders: Vec<_> = m.topics[0]
                    .partitions
                    .iter()
                    .map(|p| (p.leader, p.term))
                    .collect();
                eprintln!("node {id}: (leader, term) per partition {leaders:?}");
            }
            for n in &cluster.nodes {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "=====\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!(
                "the cluster did not settle in 60 s ({} of 3 nodes answered)",
                v.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s, asking every 50 ms) until the nodes `others` name a leader of `p`
/// other than `old`.
async fn until_new_leader(cluster: &Cluster, others: &[u64], p: u32, old: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of(cluster, others, p).await == old {
        assert!(
            Instant::now() < deadline,
            "no new leader for {p} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 120 s) until node `n`'s `/health` says it is ready.
async fn until_ready(cluster: &Cluster, n: u64) {
    let node = &cluster.nodes[n as usize - 1];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = rill_e2e::http_get(node.metrics_addr(), "/health");
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {n} not ready 120 s after restarting with a wiped disk: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one round of `fault` on partition `p`; returns how long `p` acknowledged nothing.
async fn round(cluster: &mut Cluster, load: &Load, fault: Fault, p: u32) -> Duration {
    let leader = leader_of(cluster, &[1, 2, 3], p).await;
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let at = Instant::now();
    let acked = match fault {
        Fault::KillLeader => {
            cluster.node(leader).kill9();
            let acked = load.next_ack(p, at).await;
            cluster.node(leader).restart();
            acked
        }
        Fault::PauseLeader => {
            // Stopped until the others elected a new leader: it resumes in an old term.
            cluster.node(leader).pause();
            until_new_leader(cluster, &others, p, leader).await;
            let acked = load.next_ack(p, at).await;
            cluster.node(leader).resume();
            acked
        }
        Fault::PartitionLeader => {
            // The leader alone on one side: it must acknowledge nothing there.
            cluster.isolate(leader);
            until_new_leader(cluster, &others, p, leader).await;
            let acked = load.next_ack(p, at).await;
            cluster.heal();
            acked
        }
        Fault::KillTwo => {
            cluster.node(leader).kill9();
            cluster.node(others[0]).kill9();
            cluster.node(others[0]).restart();
            cluster.node(leader).restart();
            load.next_ack(p, at).await
        }
        Fault::WipeFollower => {
            let follower = others[0];
            cluster.node(follower).kill9();
            let dir = cluster.nodes[follower as usize - 1]
                .data_dir()
                .to_path_buf();
            std::fs::remove_dir_all(&dir).expect("wipe the follower");
            cluster.node(follower).restart();
            let acked = load.next_ack(p, at).await;
            // As an operator would, wait until the node reports ready (caught up) before the
            // next fault: until then its copies do not count, and losing another node
            // meanwhile would be losing two of three (the partitions then wait for it).
            until_ready(cluster, follower).await;
            acked
        }
    };
    settled(cluster).await;
    acked - at
}

/// Waits (up to 60 s) until every replica of every partition holds the same bytes.
async fn divergent_after_healing(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let differing = (0..PARTITIONS)
            .filter(|p| {
                let logs: Vec<Vec<u8>> = (1..=3)
                    .map(|n| cluster.partition_bytes(n, TOPIC, *p))
                    .collect();
                !logs.windows(2).all(|w| w[0] == w[1])
            })
            .count();
        if differing == 0 || Instant::now() > deadline {
            return differing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rounds_lose_nothing_acknowledged() {
    // The client's own account of retries and reroutes, with RUST_LOG=rill_client=debug.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    // RILL_CLUSTER_KEEP=1 keeps the nodes' directories and logs for a post-mortem.
    let root = match std::env::var_os("RILL_CLUSTER_KEEP") {
        Some(_) => dir.keep(),
        None => dir.path().to_path_buf(),
    };
    eprintln!("cluster directories in {}", root.display());
    // rilld's default heartbeat unless `RILL_CLUSTER_HEARTBEAT_MS` says otherwise.
    let heartbeat = std::env::var("RILL_CLUSTER_HEARTBEAT_MS").ok();
    let flags: Vec<&str> = match &heartbeat {
        Some(ms) => vec!["--heartbeat-ms", ms],
        None => vec![],
    };
    let mut cluster = Cluster::start_linked(&root, 3, &flags);
    let client = Client::connect_with(&cluster.addrs(), client_config())
        .await
        .expect("connect");
    // Creating waits for the cluster to form: longer than the load's request timeout.
    let admin = Client::connect(&cluster.addrs()).await.expect("connect");
    Admin::new(admin)
        .create_topic(TOPIC, PARTITIONS, TopicConfig::default())
        .await
        .unwrap_or_else(|e| {
            for n in &cluster.nodes {
                eprintln!("{}", n.log());
            }
            panic!("create: {e}")
        });
    settled(&cluster).await;
    let load = Load::start(&client);
    let logs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.data_dir()
                .with_extension("rilld.log")
                .display()
                .to_string()
        })
        .collect();
    *load.dump.lock().unwrap() = Some(logs.join("\n"));
    load.next_ack(0, Instant::now()).await;

    let kinds = kinds();
    let mut windows: HashMap<Fault, Vec<Duration>> = HashMap::new();
    let mut acked_before: HashMap<Fault, usize> = HashMap::new();
    for r in 0..rounds() {
        for (k, fault) in kinds.iter().enumerate() {
            let p = ((r * kinds.len() + k) % PARTITIONS as usize) as u32;
            let before = load.acked.lock().unwrap().len();
            let window = round(&mut cluster, &load, *fault, p).await;
            let after = load.acked.lock().unwrap().len();
            *acked_before.entry(*fault).or_default() += after - before;
            eprintln!("round {r} {fault:?} on partition {p}: unavailable {window:?}");
            windows.entry(*fault).or_default().push(window);
        }
    }
    let (acked, read, group) = load.finish().await;
    let divergent = divergent_after_healing(&cluster).await;

    // The checker: the log as a reader sees it now, against what was acknowledged and read.
    let mut now: HashMap<(u32, u64), String> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let opts = FetchOptions {
        max_wait: Duration::ZERO,
        min_bytes: 0,
        max_bytes: 1 << 20,
        max_records: None,
    };
    for p in 0..PARTITIONS {
        let mut at = 0;
        loop {
            let f = client.fetch(TOPIC, p, at, &opts).await.expect("final read");
            for rec in f.records {
                let v = String::from_utf8(rec.value.to_vec()).unwrap();
                *counts.entry(v.clone()).or_default() += 1;
                now.insert((p, rec.offset), v);
            }
            if f.next_offset >= f.high_watermark {
                break;
            }
            at = f.next_offset;
        }
    }
    let lost = acked
        .iter()
        .filter(|(p, o, v, _)| now.get(&(*p, *o)) != Some(v))
        .count();
    let duplicated = counts.values().filter(|n| **n > 1).count();
    let read_then_lost = read
        .iter()
        .chain(&group)
        .filter(|(p, o, v)| now.get(&(*p, *o)) != Some(v))
        .count();
    // At least once: the group read every acknowledged record, across coordinator moves.
    let group_seen: std::collections::HashSet<&str> = group.iter().map(|g| g.2.as_str()).collect();
    let group_missed = acked
        .iter()
        .filter(|a| !group_seen.contains(a.2.as_str()))
        .count();
    eprintln!(
        "checker: rounds {} per kind, acknowledged {}, read {}, read by the group {} (missed {group_missed}), lost {lost}, duplicated {duplicated}, read-then-lost {read_then_lost}, divergent replicas {divergent}",
        rounds(),
        acked.len(),
        read.len(),
        group.len()
    );
    let mut kinds_sorted: Vec<_> = windows.into_iter().collect();
    kinds_sorted.sort();
    for (fault, mut w) in kinds_sorted {
        w.sort();
        eprintln!(
            "  {fault:?}: rounds {}, acknowledged during its rounds {}, unavailable p50 {:?} max {:?}",
            w.len(),
            acked_before.get(&fault).copied().unwrap_or(0),
            percentile(&w, 0.5),
            w.last().copied().unwrap_or_default()
        );
    }
    assert!(!acked.is_empty());
    assert_eq!(
        (lost, duplicated, read_then_lost, divergent, group_missed),
        (0, 0, 0, 0, 0),
        "lost, duplicated, read-then-lost, divergent, missed by the group"
    );
}
