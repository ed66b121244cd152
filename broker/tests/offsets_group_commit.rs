//! Concurrent group commits share fsyncs: the offsets log is a partition log, whose writer
//! syncs every append queued during one fsync with the next. Alone in its test binary, so the
//! process-wide fsync counter counts only this store.

use rill_broker::groups::OffsetStore;
use rill_protocol::TopicName;
use rill_protocol::messages::TopicPartition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = OffsetStore::open(
        dir.path(),
        true,
        rill_broker::groups::offsets::DEFAULT_COMPACT_BYTES,
    )
    .unwrap();
    let store = std::sync::Arc::new(store);
    let commits = 400u64;
    let before = rill_broker::metrics::global().fsyncs.get();
    let tasks: Vec<_> = (0..commits)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let tp = TopicPartition {
                    topic: TopicName::new("t").unwrap(),
                    partition: (i % 8) as u32,
                };
                store
                    .commit(&format!("group-{i}"), &[(tp, Some(i))])
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let fsyncs = rill_broker::metrics::global().fsyncs.get() - before;
    assert!(
        (1..commits / 2).contains(&fsyncs),
        "{fsyncs} fsyncs for {commits} concurrent commits"
    );
    eprintln!("{commits} concurrent commits took {fsyncs} fsyncs");
    for i in [0, commits - 1] {
        let tp = TopicPartition {
            topic: TopicName::new("t").unwrap(),
            partition: (i % 8) as u32,
        };
        assert_eq!(store.get(&format!("group-{i}"), &tp), Some(i));
    }
}
