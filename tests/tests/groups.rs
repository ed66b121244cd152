//! Acceptance for consumer groups, against the real daemon.

use bytes::Bytes;
use futures::StreamExt;
use rill_client::{
    Admin, Assignment, Client, Consumer, ConsumerConfig, ConsumerRecord, ErrorCode, OffsetReset,
    Producer, ProducerConfig, ProducerRecord, TopicConfig, TopicPartition,
};
use rill_e2e::{Broker, rill};
use rill_protocol::TopicName;
use rill_protocol::messages::{
    AssignmentStrategy, CommitOffsetsRequest, FetchOffsetsRequest, HeartbeatRequest,
    JoinGroupRequest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const SETTLE: Duration = Duration::from_secs(60);

fn member_config(group: &str, topic: &str) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(group, [topic]);
    c.session_timeout = Duration::from_secs(2);
    c.auto_offset_reset = OffsetReset::Earliest;
    c.auto_commit_interval = Some(Duration::from_millis(200));
    c
}

/// `n` members of `group` on `topic`, each with its own connection.
async fn members(addr: &str, group: &str, topic: &str, n: usize) -> Vec<Consumer> {
    let mut consumers = Vec::new();
    for _ in 0..n {
        let client = Client::connect(addr).await.unwrap();
        consumers.push(Consumer::subscribe(client, member_config(group, topic)).unwrap());
    }
    consumers
}

async fn produce(addr: &str, topic: &str, from: usize, to: usize) {
    let producer = Producer::new(
        Client::connect(addr).await.unwrap(),
        ProducerConfig::default(),
    );
    let mut deliveries = Vec::new();
    for i in from..to {
        let record = ProducerRecord::new(topic, Bytes::from(format!("r-{i}"))).key(format!("k{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
}

/// Waits until `check` holds for the members' current assignments.
async fn settle(
    watches: &mut [watch::Receiver<Assignment>],
    check: impl Fn(&[Assignment]) -> bool,
) -> Vec<Assignment> {
    let wait = async {
        loop {
            let now: Vec<Assignment> = watches
                .iter_mut()
                .map(|w| w.borrow_and_update().clone())
                .collect();
            if check(&now) {
                return now;
            }
            let changes: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
            let _ = futures::future::select_all(changes).await;
        }
    };
    tokio::time::timeout(SETTLE, wait)
        .await
        .expect("the group did not settle")
}

fn balanced(sizes: &'static [usize]) -> impl Fn(&[Assignment]) -> bool {
    move |a| {
        let generation = a[0].generation;
        let mut got: Vec<usize> = a.iter().map(|x| x.partitions.len()).collect();
        got.sort();
        let mut want = sizes.to_vec();
        want.sort();
        a.iter()
            .all(|x| x.generation == generation && generation > 0)
            && got == want
    }
}

/// Every record a member hands out: (member index, partition, offset, value).
type Seen = Arc<Mutex<Vec<(usize, u32, u64, String)>>>;

/// Reads `consumer` on a task until told to stop; returns the consumer.
fn drain(
    index: usize,
    mut consumer: Consumer,
    seen: Seen,
    count: watch::Sender<usize>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Consumer> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                next = consumer.next() => {
                    let r: ConsumerRecord = next.expect("stream ended").expect("consumer error");
                    let mut s = seen.lock().unwrap();
                    s.push((index, r.partition, r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
                    count.send_replace(s.len());
                }
                _ = stop.wait_for(|s| *s) => return consumer,
            }
        }
    })
}

/// Waits until the distinct values seen cover `expected`.
async fn seen_all(seen: &Seen, count: &mut watch::Receiver<usize>, expected: &BTreeSet<String>) {
    let wait = async {
        loop {
            {
                let s = seen.lock().unwrap();
                let got: BTreeSet<&String> = s.iter().map(|(_, _, _, v)| v).collect();
                if expected.iter().all(|v| got.contains(v)) {
                    return;
                }
            }
            count.changed().await.unwrap();
        }
    };
    tokio::time::timeout(SETTLE, wait)
        .await
        .expect("not every record was delivered");
}

fn values(from: usize, to: usize) -> BTreeSet<String> {
    (from..to).map(|i| format!("r-{i}")).collect()
}

/// Records every assignment each member goes through.
fn record_history(watches: &[watch::Receiver<Assignment>]) -> Arc<Mutex<Vec<(usize, Assignment)>>> {
    let history: Arc<Mutex<Vec<(usize, Assignment)>>> = Arc::default();
    for (i, w) in watches.iter().enumerate() {
        let (mut w, history) = (w.clone(), history.clone());
        history
            .lock()
            .unwrap()
            .push((i, w.borrow_and_update().clone()));
        tokio::spawn(async move {
            while w.changed().await.is_ok() {
                let a = w.borrow_and_update().clone();
                history.lock().unwrap().push((i, a));
            }
        });
    }
    history
}

/// Within one generation, no partition is held by two members.
fn assert_exclusive(history: &[(usize, Assignment)]) {
    let mut owner: HashMap<(u32, &TopicPartition), usize> = HashMap::new();
    for (member, a) in history {
        for tp in &a.partitions {
            if let Some(other) = owner.insert((a.generation, tp), *member) {
                assert_eq!(
                    other, *member,
                    "{tp} owned by members {other} and {member} in generation {}",
                    a.generation
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_split_six_partitions_and_two_groups_each_read_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("six", 6, TopicConfig::default())
        .await
        .unwrap();

    let consumers = members(broker.addr(), "g1", "six", 3).await;
    let other = Consumer::subscribe(
        Client::connect(broker.addr()).await.unwrap(),
        member_config("g2", "six"),
    )
    .unwrap();
    let mut watches: Vec<_> = consumers.iter().map(Consumer::watch_assignment).collect();
    let stable = settle(&mut watches, balanced(&[2, 2, 2])).await;
    let owned: Vec<BTreeSet<u32>> = stable
        .iter()
        .map(|a| a.partitions.iter().map(|tp| tp.partition).collect())
        .collect();
    let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    assert_eq!(
        all.len(),
        6,
        "each partition has exactly one owner: {owned:?}"
    );

    let seen: Seen = Arc::default();
    let (count_tx, mut count) = watch::channel(0);
    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = consumers
        .into_iter()
        .enumerate()
        .map(|(i, c)| drain(i, c, seen.clone(), count_tx.clone(), stop.clone()))
        .collect();
    let other_seen: Seen = Arc::default();
    let (other_tx, mut other_count) = watch::channel(0);
    let other_task = drain(9, other, other_seen.clone(), other_tx, stop.clone());

    produce(broker.addr(), "six", 0, 3000).await;
    seen_all(&seen, &mut count, &values(0, 3000)).await;
    seen_all(&other_seen, &mut other_count, &values(0, 3000)).await;
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap().close().await.unwrap();
    }
    other_task.await.unwrap().close().await.unwrap();

    let s = seen.lock().unwrap();
    assert_eq!(
        s.len(),
        3000,
        "with nothing failing, every record is read exactly once"
    );
    for (member, partition, _, _) in s.iter() {
        assert!(
            owned[*member].contains(partition),
            "member {member} read partition {partition} it does not own"
        );
    }
    assert_eq!(
        other_seen.lock().unwrap().len(),
        3000,
        "the second group reads everything too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_rebalances_and_a_dead_members_partitions_move() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("six", 6, TopicConfig::default())
        .await
        .unwrap();

    let consumers = members(broker.addr(), "g", "six", 3).await;
    let mut watches: Vec<_> = consumers.iter().map(Consumer::watch_assignment).collect();
    settle(&mut watches, balanced(&[2, 2, 2])).await;

    // A fourth member, committing only by hand: the one that will die.
    let mut victim_config = member_config("g", "six");
    victim_config.auto_commit_interval = None;
    let mut victim =
        Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), victim_config).unwrap();
    watches.push(victim.watch_assignment());
    let history = record_history(&watches);
    let after_join = settle(&mut watches, balanced(&[2, 2, 1, 1])).await;
    let victim_partitions: BTreeSet<u32> = after_join[3]
        .partitions
        .iter()
        .map(|tp| tp.partition)
        .collect();

    let seen: Seen = Arc::default();
    let (count_tx, mut count) = watch::channel(0);
    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = consumers
        .into_iter()
        .enumerate()
        .map(|(i, c)| drain(i, c, seen.clone(), count_tx.clone(), stop.clone()))
        .collect();
    // The test reads the victim itself (read_alongside), so it knows exactly what it committed.
    produce(broker.addr(), "six", 0, 2000).await;
    read_alongside(&mut victim, &seen, &count_tx, &mut count, &values(0, 2000)).await;
    victim.commit().await.unwrap();
    let committed: BTreeMap<u32, u64> = {
        let s = seen.lock().unwrap();
        victim_partitions
            .iter()
            .map(|p| {
                (
                    *p,
                    s.iter()
                        .filter(|(m, part, _, _)| *m == 3 && part == p)
                        .map(|(_, _, o, _)| o + 1)
                        .max()
                        .unwrap_or(0),
                )
            })
            .collect()
    };
    produce(broker.addr(), "six", 2000, 3000).await;
    read_alongside(&mut victim, &seen, &count_tx, &mut count, &values(0, 3000)).await;
    let victim_read_after_commit = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, o, _)| *m == 3 && *o >= committed[p])
        .count();
    assert!(
        victim_read_after_commit > 0,
        "the victim must read past its commit for this test to mean anything"
    );

    // Kill the victim: no leave, no commit, no more heartbeats.
    drop(victim);
    watches.pop();
    settle(&mut watches, balanced(&[2, 2, 2])).await;
    produce(broker.addr(), "six", 3000, 4000).await;
    seen_all(&seen, &mut count, &values(0, 4000)).await;
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap().close().await.unwrap();
    }

    // At least once: everything arrived. Duplicates only where the victim read past its commit.
    let s = seen.lock().unwrap();
    let mut deliveries: HashMap<&String, Vec<(usize, u32, u64)>> = HashMap::new();
    for (m, p, o, v) in s.iter() {
        deliveries.entry(v).or_default().push((*m, *p, *o));
    }
    assert_eq!(deliveries.len(), 4000);
    let mut duplicates = 0;
    for (value, got) in &deliveries {
        if got.len() > 1 {
            duplicates += 1;
            let (_, p, o) = got[0];
            assert!(
                victim_partitions.contains(&p) && o >= committed[&p],
                "{value} delivered {} times at {p}/{o}: not after the dead member's last commit",
                got.len()
            );
        }
    }
    assert_eq!(
        duplicates, victim_read_after_commit,
        "exactly what the victim read after its commit is read again"
    );
    assert_exclusive(&history.lock().unwrap());
}

/// Reads `victim` in this task (while the other members drain on theirs) until `expected` is seen.
async fn read_alongside(
    victim: &mut Consumer,
    seen: &Seen,
    count_tx: &watch::Sender<usize>,
    count: &mut watch::Receiver<usize>,
    expected: &BTreeSet<String>,
) {
    let wait = async {
        loop {
            {
                let s = seen.lock().unwrap();
                let got: BTreeSet<&String> = s.iter().map(|(_, _, _, v)| v).collect();
                if expected.iter().all(|v| got.contains(v)) {
                    return;
                }
            }
            tokio::select! {
                next = victim.next() => {
                    let r = next.expect("stream ended").expect("consumer error");
                    let mut s = seen.lock().unwrap();
                    s.push((3, r.partition, r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
                    count_tx.send_replace(s.len());
                }
                _ = count.changed() => {}
            }
        }
    };
    tokio::time::timeout(SETTLE, wait)
        .await
        .expect("not every record was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill_9_and_the_group_resumes_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("resume", 2, TopicConfig::default())
        .await
        .unwrap();
    produce(broker.addr(), "resume", 0, 500).await;

    let mut consumer = Consumer::subscribe(
        Client::connect(broker.addr()).await.unwrap(),
        member_config("r", "resume"),
    )
    .unwrap();
    let mut read = BTreeSet::new();
    while read.len() < 500 {
        let r = consumer.next().await.unwrap().unwrap();
        read.insert(String::from_utf8(r.value.to_vec()).unwrap());
    }
    consumer.commit().await.unwrap();
    let committed = admin.describe_group("r").await.unwrap();
    assert_eq!(committed.offsets.iter().map(|o| o.lag).sum::<u64>(), 0);
    drop(consumer);
    broker.kill9();
    broker.restart();

    produce(broker.addr(), "resume", 500, 600).await;
    let mut consumer = Consumer::subscribe(
        Client::connect(broker.addr()).await.unwrap(),
        member_config("r", "resume"),
    )
    .unwrap();
    let mut fresh = BTreeSet::new();
    while fresh.len() < 100 {
        let r = consumer.next().await.unwrap().unwrap();
        let v = String::from_utf8(r.value.to_vec()).unwrap();
        assert!(
            !read.contains(&v),
            "{v} was committed before the crash but delivered again"
        );
        fresh.insert(v);
    }
    assert_eq!(fresh, values(500, 600));
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_a_stale_generation_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("stale", 2, TopicConfig::default())
        .await
        .unwrap();
    produce(broker.addr(), "stale", 0, 50).await;
    let topic = TopicName::new("stale").unwrap();
    let join = |member: Option<String>| JoinGroupRequest {
        group: "s".into(),
        member_id: member,
        client: "test".into(),
        topics: vec![topic.clone()],
        session_timeout_ms: 10_000,
        strategy: AssignmentStrategy::Range,
    };
    // A first join only gets an id; the join with it is the membership.
    let issued = client.call(&join(None)).await.unwrap().0;
    assert!(issued.rejoin_with_id && issued.assignment.is_empty());
    let a = client.call(&join(Some(issued.member_id))).await.unwrap().0;
    assert_eq!((a.generation, a.assignment.len()), (1, 2));
    let tp = a.assignment[0].clone();
    let commit = |generation, offset| CommitOffsetsRequest {
        group: "s".into(),
        member_id: Some(a.member_id.clone()),
        generation: Some(generation),
        offsets: vec![(tp.clone(), offset)],
    };
    client.call(&commit(1, 5)).await.unwrap();

    // B joins; A learns of it from its heartbeat and rejoins: generation 2.
    let b_client = client.clone();
    let b_id = client.call(&join(None)).await.unwrap().0.member_id;
    let b_join = join(Some(b_id));
    let b = tokio::spawn(async move { b_client.call(&b_join).await.unwrap().0 });
    let heartbeat = HeartbeatRequest {
        group: "s".into(),
        member_id: a.member_id.clone(),
        generation: 1,
    };
    let refused = loop {
        match client.call(&heartbeat).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), Some(ErrorCode::RebalanceInProgress));
    let a2 = client
        .call(&join(Some(a.member_id.clone())))
        .await
        .unwrap()
        .0;
    let b = b.await.unwrap();
    assert_eq!((a2.generation, b.generation), (2, 2));

    let err = client.call(&commit(1, 40)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StaleGeneration), "{err}");
    assert!(!err.is_retriable());
    let fetched = client
        .call(&FetchOffsetsRequest {
            group: "s".into(),
            partitions: vec![tp.clone()],
        })
        .await
        .unwrap()
        .0;
    assert_eq!(
        fetched.offsets,
        vec![(tp, Some(5))],
        "the refused commit did not move the offset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_group_describe_shows_members_assignment_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("lagging", 2, TopicConfig::default())
        .await
        .unwrap();
    let mut config = member_config("watchers", "lagging");
    config.auto_offset_reset = OffsetReset::Latest;
    let consumer =
        Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), config).unwrap();
    let mut watches = vec![consumer.watch_assignment()];
    settle(&mut watches, balanced(&[2])).await;
    // Nobody reads the stream: nothing is consumed.
    produce(broker.addr(), "lagging", 0, 1000).await;

    let addr = broker.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        rill(Some(&addr), &["group", "describe", "watchers"], "")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("state stable") && text.contains("members 1"),
        "{text}"
    );
    assert!(text.contains("partitions [lagging-0, lagging-1]"), "{text}");
    let mut lag = 0;
    let mut ends = 0;
    for line in text.lines().filter(|l| l.starts_with("lagging ")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Nothing consumed: what is committed is the reset position (`Latest` when the
        // member was assigned, 0), committed before the member reads anything.
        assert_eq!(cols[2], "0", "the reset position is committed: {line}");
        ends += cols[3].parse::<u64>().unwrap();
        lag += cols[4].parse::<u64>().unwrap();
    }
    assert_eq!((ends, lag), (1000, 1000), "{text}");
    drop(consumer);
}

#[test]
fn rill_consume_as_a_group_member_commits_and_exits_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let b = Some(broker.addr());
    assert!(
        rill(b, &["topic", "create", "jobs", "--partitions", "2"], "")
            .status
            .success()
    );
    let lines: String = (0..20).map(|i| format!("job-{i}\n")).collect();
    assert!(rill(b, &["produce", "jobs"], &lines).status.success());
    let args = [
        "consume",
        "jobs",
        "--group",
        "workers",
        "--from-beginning",
        "--idle-exit",
        "1s",
    ];
    let first = rill(b, &args, "");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let mut got: Vec<String> = String::from_utf8(first.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    // The group committed and left: a second run has nothing left to read.
    let second = rill(b, &args, "");
    assert!(second.status.success());
    assert_eq!(String::from_utf8(second.stdout).unwrap(), "");
    let list = String::from_utf8(rill(b, &["group", "list"], "").stdout).unwrap();
    assert_eq!(list, "workers\tempty\t0\n");
    // Reset to the start (the group is empty), and everything is read again.
    assert!(
        rill(
            b,
            &[
                "group",
                "reset-offsets",
                "workers",
                "--topic",
                "jobs",
                "--to-earliest"
            ],
            ""
        )
        .status
        .success()
    );
    let third = rill(b, &args, "");
    assert_eq!(String::from_utf8(third.stdout).unwrap().lines().count(), 20);
    assert!(
        rill(b, &["group", "delete", "workers"], "")
            .status
            .success()
    );
    assert_eq!(
        String::from_utf8(rill(b, &["group", "list"], "").stdout).unwrap(),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_gaining_partitions_rebalances_its_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("growing", 2, TopicConfig::default())
        .await
        .unwrap();
    let consumers = members(broker.addr(), "grow", "growing", 2).await;
    let mut watches: Vec<_> = consumers.iter().map(Consumer::watch_assignment).collect();
    settle(&mut watches, balanced(&[1, 1])).await;

    let err = admin.add_partitions("growing", 1).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidConfig),
        "shrinking is refused"
    );
    admin.add_partitions("growing", 6).await.unwrap();
    let grown = settle(&mut watches, balanced(&[3, 3])).await;
    let all: BTreeSet<u32> = grown
        .iter()
        .flat_map(|a| a.partitions.iter().map(|tp| tp.partition))
        .collect();
    assert_eq!(all, (0..6).collect());
    for c in consumers {
        c.close().await.unwrap();
    }

    broker.stop();
    broker.restart();
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    assert_eq!(
        admin
            .describe_topic("growing")
            .await
            .unwrap()
            .partitions
            .len(),
        6,
        "the new count is durable"
    );
}

/// The bug: JoinGroup accepted any member id a client named, so two clients naming one id
/// both owned the same partitions; ids are now the broker's, and groups are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_ids_are_the_brokers_and_groups_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--max-group-members", "2", "--max-groups", "1"],
    );
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("bounded", 2, TopicConfig::default())
        .await
        .unwrap();
    let join = |group: &str, member: Option<String>, client_name: String| JoinGroupRequest {
        group: group.into(),
        member_id: member,
        client: client_name,
        topics: vec![TopicName::new("bounded").unwrap()],
        session_timeout_ms: 10_000,
        strategy: AssignmentStrategy::Range,
    };
    let forged = client
        .call(&join("b", Some("someone-else".into()), "t".into()))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Some(ErrorCode::UnknownMember), "{forged}");

    // A first join resent (its answer lost): two ids issued, one used, no ghost member.
    let lost = client.call(&join("b", None, "t".into())).await.unwrap().0;
    let used = client.call(&join("b", None, "t".into())).await.unwrap().0;
    assert!(lost.rejoin_with_id && used.rejoin_with_id);
    assert_ne!(lost.member_id, used.member_id);
    let member = client
        .call(&join("b", Some(used.member_id.clone()), "t".into()))
        .await
        .unwrap()
        .0;
    assert_eq!((member.generation, member.assignment.len()), (1, 2));
    let described = Admin::new(client.clone())
        .describe_group("b")
        .await
        .unwrap();
    assert_eq!(described.members.len(), 1, "{described:?}");

    // Two places, both taken (a member and an issued id): the next first join is refused.
    let full = client.call(&join("b", None, "t".into())).await.unwrap_err();
    assert_eq!(full.code(), Some(ErrorCode::GroupFull), "{full}");
    let too_many = client
        .call(&join("other", None, "t".into()))
        .await
        .unwrap_err();
    assert_eq!(
        too_many.code(),
        Some(ErrorCode::TooManyGroups),
        "{too_many}"
    );
    let long_name = client
        .call(&join("b", Some(used.member_id.clone()), "x".repeat(300)))
        .await
        .unwrap_err();
    assert!(long_name.to_string().contains("at most 255"), "{long_name}");
}
