//! A group consumer never skips a record: what it commits is only what the application has
//! finished with, and where it starts without a commit is committed before it reads.

use bytes::Bytes;
use futures::StreamExt;
use rill_client::{
    Admin, Assignment, Client, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, TopicConfig, TopicPartition,
};
use rill_e2e::Broker;
use rill_protocol::TopicName;
use rill_protocol::messages::FetchOffsetsRequest;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition {
        topic: TopicName::new(topic).unwrap(),
        partition,
    }
}

async fn produce_values(addr: &str, topic: &str, values: &[String]) {
    let producer = Producer::new(
        Client::connect(addr).await.unwrap(),
        ProducerConfig::default(),
    );
    let mut deliveries = Vec::new();
    for v in values {
        let record = ProducerRecord::new(topic, Bytes::from(v.clone())).key(v.clone());
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
}

async fn wait_assigned(w: &mut watch::Receiver<Assignment>, partitions: usize) -> Assignment {
    tokio::time::timeout(WAIT, w.wait_for(|a| a.partitions.len() == partitions))
        .await
        .expect("the member was not assigned in time")
        .unwrap()
        .clone()
}

async fn committed(client: &Client, group: &str, tp: &TopicPartition) -> Option<u64> {
    client
        .call(&FetchOffsetsRequest {
            group: group.into(),
            partitions: vec![tp.clone()],
        })
        .await
        .unwrap()
        .0
        .offsets
        .first()
        .and_then(|(_, o)| *o)
}

/// Reads from `consumer` until every value in `expected` was seen; returns everything read.
async fn read_until(
    consumer: &mut Consumer,
    expected: &BTreeSet<String>,
) -> Vec<(u32, u64, String)> {
    let mut got = Vec::new();
    let mut seen = BTreeSet::new();
    let read = async {
        while !expected.is_subset(&seen) {
            let r = consumer
                .next()
                .await
                .expect("stream ended")
                .expect("consumer error");
            let v = String::from_utf8(r.value.to_vec()).unwrap();
            seen.insert(v.clone());
            got.push((r.partition, r.offset, v));
        }
    };
    tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| {
        panic!(
            "missing records: {:?}",
            expected.difference(&seen).collect::<Vec<_>>()
        )
    });
    got
}

/// The bug: a member with no committed offsets reset to `Latest` and kept that position only in
/// memory. Killed before it handed out a record, it never committed, so its successor reset to a
/// later `Latest` and everything produced in between was never delivered to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_before_its_first_record_leaves_nothing_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let admin = Admin::new(Client::connect(broker.addr()).await.unwrap());
    admin
        .create_topic("fresh", 3, TopicConfig::default())
        .await
        .unwrap();

    let mut config = ConsumerConfig::new("g", ["fresh"]);
    config.auto_offset_reset = OffsetReset::Latest;
    config.session_timeout = Duration::from_secs(1);
    config.auto_commit_interval = None;
    let a = Consumer::subscribe(
        Client::connect(broker.addr()).await.unwrap(),
        config.clone(),
    )
    .unwrap();
    wait_assigned(&mut a.watch_assignment(), 3).await;

    let values: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
    produce_values(broker.addr(), "fresh", &values).await;
    // A has records to hand out but is killed before the application sees any.
    drop(a);

    let mut b = Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), config).unwrap();
    let expected: BTreeSet<String> = values.into_iter().collect();
    let got = read_until(&mut b, &expected).await;
    assert_eq!(got.len(), expected.len(), "each record exactly once");
}

/// The bug: `poll_next` moved the committed position past record N as it returned N, so an
/// auto-commit during N's processing followed by a crash lost N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_being_processed_at_a_crash_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("work", 1, TopicConfig::default())
        .await
        .unwrap();
    let values: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    produce_values(broker.addr(), "work", &values).await;

    let mut config = ConsumerConfig::new("g", ["work"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.session_timeout = Duration::from_secs(1);
    config.auto_commit_interval = Some(Duration::from_millis(20));
    let mut a = Consumer::subscribe(
        Client::connect(broker.addr()).await.unwrap(),
        config.clone(),
    )
    .unwrap();
    let mut last = None;
    for _ in 0..5 {
        let r = tokio::time::timeout(WAIT, a.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        last = Some(r.offset);
    }
    let processing = last.unwrap();
    assert_eq!(processing, 4);
    // The application is "processing" record 4. Auto-commit runs meanwhile: it may commit the
    // four finished records and must not commit record 4 itself.
    let partition = tp("work", 0);
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(o) = committed(&client, "g", &partition)
                .await
                .filter(|o| *o >= 4)
            {
                return o;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("auto-commit never committed the finished records");
    assert_eq!(settled, 4, "the record in processing was committed");
    drop(a); // crash while processing record 4

    let mut b = Consumer::subscribe(Client::connect(broker.addr()).await.unwrap(), config).unwrap();
    let r = tokio::time::timeout(WAIT, b.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        r.offset, processing,
        "the next owner starts at the unfinished record"
    );

    // An explicit commit says the application is done with what it was handed.
    let r = tokio::time::timeout(WAIT, b.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.offset, 5);
    b.commit().await.unwrap();
    assert_eq!(committed(&client, "g", &partition).await, Some(6));
}

/// The bug: deleting a topic left its committed offsets behind, so a group on a topic created
/// again under the same name resumed at the old offsets and skipped the new topic's first records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_a_recreated_topic_starts_per_its_reset_policy() {
    use rill_protocol::messages::CommitOffsetsRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("reborn", 1, TopicConfig::default())
        .await
        .unwrap();
    let old: Vec<String> = (0..8).map(|i| format!("old{i}")).collect();
    produce_values(broker.addr(), "reborn", &old).await;
    let partition = tp("reborn", 0);
    client
        .call(&CommitOffsetsRequest {
            group: "g".into(),
            member_id: None,
            generation: None,
            offsets: vec![(partition.clone(), 5)],
        })
        .await
        .unwrap();
    assert_eq!(committed(&client, "g", &partition).await, Some(5));

    admin.delete_topic("reborn").await.unwrap();
    assert_eq!(
        committed(&client, "g", &partition).await,
        None,
        "deleted with the topic"
    );
    broker.kill9();
    broker.restart();
    let client = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(
        committed(&client, "g", &partition).await,
        None,
        "the deletion is durable"
    );

    Admin::new(client.clone())
        .create_topic("reborn", 1, TopicConfig::default())
        .await
        .unwrap();
    let new: Vec<String> = (0..20).map(|i| format!("new{i}")).collect();
    produce_values(broker.addr(), "reborn", &new).await;
    let mut config = ConsumerConfig::new("g", ["reborn"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let mut c = Consumer::subscribe(client, config).unwrap();
    let got = read_until(&mut c, &new.iter().cloned().collect()).await;
    assert_eq!(got.first().map(|(_, o, _)| *o), Some(0));
    assert_eq!(got.len(), new.len());
}

/// The bug: JoinGroup failed with UnknownTopic when any subscribed topic was missing, and the
/// consumer treated that as fatal, so one missing topic stopped every topic of the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_subscribed_topic_is_picked_up_once_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("here", 2, TopicConfig::default())
        .await
        .unwrap();

    let mut config = ConsumerConfig::new("g", ["here", "later"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let mut c = Consumer::subscribe(client, config).unwrap();
    let mut assignments = c.watch_assignment();
    wait_assigned(&mut assignments, 2).await;

    let first: Vec<String> = (0..50).map(|i| format!("here-a{i}")).collect();
    produce_values(broker.addr(), "here", &first).await;
    read_until(&mut c, &first.iter().cloned().collect()).await;

    admin
        .create_topic("later", 3, TopicConfig::default())
        .await
        .unwrap();
    let assigned = tokio::time::timeout(
        WAIT,
        assignments.wait_for(|a| {
            a.partitions
                .iter()
                .filter(|tp| tp.topic.as_str() == "later")
                .count()
                == 3
        }),
    );
    // Produce while the group rebalances (the member's driver runs in the background).
    let later: Vec<String> = (0..50).map(|i| format!("later-{i}")).collect();
    let (assigned, ()) = tokio::join!(assigned, async {
        produce_values(broker.addr(), "later", &later).await;
    });
    assigned.expect("the new topic was never assigned").unwrap();
    read_until(&mut c, &later.iter().cloned().collect()).await;

    admin.delete_topic("later").await.unwrap();
    let more: Vec<String> = (0..50).map(|i| format!("here-b{i}")).collect();
    produce_values(broker.addr(), "here", &more).await;
    let got = read_until(&mut c, &more.iter().cloned().collect()).await;
    assert!(
        got.iter().all(|(_, _, v)| !v.starts_with("later")),
        "nothing of the deleted topic"
    );
    c.close().await.unwrap();
}

/// The bug: two `rill consume --group g` started together on a new 4-partition group: the first
/// member was assigned every partition at once and read all 20,000 records, the other none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_started_together_share_a_new_groups_partitions() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's default delay, stated so the harness does not turn it off.
    let broker = Broker::start(dir.path(), &["--group-initial-rebalance-delay-ms", "3000"]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("shared", 4, TopicConfig::default())
        .await
        .unwrap();
    let values: Vec<String> = (0..20_000).map(|i| format!("s{i}")).collect();
    produce_values(broker.addr(), "shared", &values).await;

    let mut config = ConsumerConfig::new("g", ["shared"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    let mut members = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(broker.addr()).await.unwrap();
        members.push(Consumer::subscribe(client, config.clone()).unwrap());
    }
    let mut firsts = Vec::new();
    for m in &members {
        let mut w = m.watch_assignment();
        let first = tokio::time::timeout(WAIT, w.wait_for(|a| !a.partitions.is_empty()))
            .await
            .expect("no assignment")
            .unwrap()
            .clone();
        firsts.push(first);
    }
    for (i, a) in firsts.iter().enumerate() {
        assert_eq!(a.generation, 1, "one rebalance formed the group");
        assert_eq!(
            a.partitions.len(),
            2,
            "member {i}'s first assignment: {a:?}"
        );
    }
    // And both read their share.
    let mut all = BTreeSet::new();
    for (i, m) in members.iter_mut().enumerate() {
        let mine: BTreeSet<u32> = firsts[i].partitions.iter().map(|tp| tp.partition).collect();
        let expected: BTreeSet<String> = values
            .iter()
            .filter(|v| mine.contains(&rill_client::partition_for_key(v.as_bytes(), 4)))
            .cloned()
            .collect();
        assert!(!expected.is_empty());
        let got = read_until(m, &expected).await;
        all.extend(got.into_iter().map(|(_, _, v)| v));
    }
    assert_eq!(all.len(), values.len(), "every record delivered");
}

/// `commit_async` after every poll: the handles resolve in order, the group ends up committed
/// after the last record, and the commits folded together (far fewer commit requests than
/// polls reached the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_async_after_every_poll_folds_commits_and_commits_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("async", 1, TopicConfig::default())
        .await
        .unwrap();
    let values: Vec<String> = (0..5000).map(|i| format!("v{i}")).collect();
    produce_values(broker.addr(), "async", &values).await;
    let commits_before = commit_requests(broker.metrics_addr());
    let mut config = ConsumerConfig::new("async-group", ["async"]);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = None;
    let mut consumer = Consumer::subscribe(client.clone(), config).unwrap();
    let mut handles = Vec::new();
    for _ in 0..values.len() {
        let r = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a record in time")
            .expect("stream open")
            .expect("no error");
        handles.push((r.offset, consumer.commit_async()));
    }
    let mut last = None;
    for (offset, h) in handles {
        h.wait().await.expect("commit succeeded");
        last = Some(offset);
    }
    assert_eq!(last, Some(4999));
    assert_eq!(
        committed(&client, "async-group", &tp("async", 0)).await,
        Some(5000),
        "the last handle resolved after the position past the last record was committed"
    );
    let commits = commit_requests(broker.metrics_addr()) - commits_before;
    assert!(
        (1..1000).contains(&commits),
        "{commits} commit requests for 5000 polls"
    );
    consumer.close().await.unwrap();
}

/// Commit requests the broker has handled (its metrics).
fn commit_requests(metrics: &str) -> u64 {
    let (_, body) = rill_e2e::http_get(metrics, "/metrics");
    body.lines()
        .find(|l| l.starts_with("rill_requests_total{api=\"commit_offsets\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `next_batch` hands out many records at once, read in place; mixed with `next`, every
/// record comes once, and a commit after a batch covers the whole batch: a successor reads
/// only what was produced after it, nothing of the batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_single_records_mix_and_a_commit_covers_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("batched", 2, TopicConfig::default())
        .await
        .unwrap();
    let values: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
    let (first_half, second_half) = values.split_at(1500);
    produce_values(broker.addr(), "batched", first_half).await;

    let config = || {
        let mut c = ConsumerConfig::new("batched-group", ["batched"]);
        c.auto_offset_reset = OffsetReset::Earliest;
        c.auto_commit_interval = None;
        c
    };
    let mut first = Consumer::subscribe(client.clone(), config()).unwrap();
    let mut seen: Vec<(u32, u64, String)> = Vec::new();
    // Alternate a batch and a single record until the first half is read.
    let mut batches = 0;
    while seen.len() < first_half.len() {
        let batch = tokio::time::timeout(WAIT, first.next_batch())
            .await
            .expect("a batch in time")
            .expect("consumer open")
            .expect("no error");
        assert!(!batch.records.is_empty());
        assert_eq!(batch.records.len(), batch.records.records().count());
        batches += 1;
        for r in batch.records.records() {
            let v = String::from_utf8(r.value.to_vec()).unwrap();
            seen.push((batch.partition, r.offset, v));
        }
        if seen.len() == first_half.len() {
            break;
        }
        let one = tokio::time::timeout(WAIT, first.next())
            .await
            .expect("a record in time")
            .expect("stream open")
            .expect("no error");
        seen.push((
            one.partition,
            one.offset,
            String::from_utf8(one.value.to_vec()).unwrap(),
        ));
    }
    assert!(batches >= 1);
    // Everything handed out is committed; the successor reads exactly what comes after.
    first.commit().await.unwrap();
    first.close().await.unwrap();
    produce_values(broker.addr(), "batched", second_half).await;
    let mut second = Consumer::subscribe(client.clone(), config()).unwrap();
    let rest = read_until(&mut second, &second_half.iter().cloned().collect()).await;
    assert!(
        rest.iter().all(|(_, _, v)| second_half.contains(v)),
        "the successor read a record the first member had committed"
    );
    seen.extend(rest);
    let mut positions: Vec<(u32, u64)> = seen.iter().map(|(p, o, _)| (*p, *o)).collect();
    positions.sort();
    let before = positions.len();
    positions.dedup();
    assert_eq!(before, positions.len(), "a record was delivered twice");
    let got: BTreeSet<String> = seen.into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(got, values.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(before, values.len(), "every record exactly once");
    second.close().await.unwrap();
}
