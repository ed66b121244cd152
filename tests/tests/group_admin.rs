//! Admin changes to a group (reset, delete) are atomic with respect to members joining.

use rill_client::{Admin, Client, ErrorCode, TopicConfig, TopicPartition};
use rill_e2e::Broker;
use rill_protocol::TopicName;
use rill_protocol::messages::{
    AssignmentStrategy, CommitOffsetsRequest, FetchOffsetsRequest, JoinGroupRequest,
    LeaveGroupRequest, ResetOffsetsRequest, ResetTo,
};

/// The bug: ResetOffsets checked that the group was empty and then awaited its write; a member
/// joining in between read the old offsets and had them reset under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_racing_a_reset_never_has_its_offsets_reset_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let admin_client = Client::connect(broker.addr()).await.unwrap();
    let member_client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(admin_client.clone())
        .create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let topic = TopicName::new("t").unwrap();
    let tp = TopicPartition {
        topic: topic.clone(),
        partition: 0,
    };
    let (mut resets_won, mut joins_won) = (0, 0);
    for i in 0..1_000 {
        let group = format!("g{i}");
        admin_client
            .call(&CommitOffsetsRequest {
                group: group.clone(),
                member_id: None,
                generation: None,
                offsets: vec![(tp.clone(), 5)],
            })
            .await
            .unwrap();
        let request = |member_id| JoinGroupRequest {
            group: group.clone(),
            member_id,
            client: "race".into(),
            topics: vec![topic.clone()],
            session_timeout_ms: 10_000,
            strategy: AssignmentStrategy::Sticky,
        };
        // The broker's id first (KIP-394); the race is with the join that makes a member.
        let (issued, _) = member_client.call(&request(None)).await.unwrap();
        let join = async {
            let (joined, _) = member_client
                .call(&request(Some(issued.member_id.clone())))
                .await
                .unwrap();
            // What the member starts from, read as a consumer does right after joining.
            let (seen, _) = member_client
                .call(&FetchOffsetsRequest {
                    group: group.clone(),
                    partitions: vec![tp.clone()],
                })
                .await
                .unwrap();
            (joined.member_id, seen.offsets[0].1)
        };
        let reset_request = ResetOffsetsRequest {
            group: group.clone(),
            topic: topic.clone(),
            to: ResetTo::Earliest,
        };
        let reset = admin_client.call(&reset_request);
        let ((member, seen), reset) = tokio::join!(join, reset);
        let (after, _) = admin_client
            .call(&FetchOffsetsRequest {
                group: group.clone(),
                partitions: vec![tp.clone()],
            })
            .await
            .unwrap();
        match reset {
            Ok(_) => {
                resets_won += 1;
                assert_eq!(
                    seen,
                    Some(0),
                    "round {i}: the reset succeeded after the member joined and read its offset"
                );
            }
            Err(e) => {
                joins_won += 1;
                assert_eq!(e.code(), Some(ErrorCode::GroupNotEmpty), "round {i}: {e}");
                assert_eq!(seen, Some(5), "round {i}");
            }
        }
        assert_eq!(
            after.offsets[0].1, seen,
            "round {i}: offsets changed under the member"
        );
        member_client
            .call(&LeaveGroupRequest {
                group,
                member_id: member,
            })
            .await
            .unwrap();
    }
    eprintln!("1000 races: the reset came first {resets_won} times, the join {joins_won} times");
}
