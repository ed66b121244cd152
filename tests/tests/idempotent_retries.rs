//! Idempotent producer against lost answers and a second instance of itself.
//!
//! - A proxy between producer and broker drops the answers to produce requests after the
//!   broker stored the batches and cuts the connection: the producer resends, and the broker
//!   recognises each resend as a duplicate, so every record is stored once, in order. The same
//!   run without idempotence stores the resent batches twice, which is what this guards.
//! - Fencing: a second producer with the same `producer_name` fences the first, whose next
//!   write fails with `ProducerFenced`, and nothing it sent after the fence is stored.

use rill_client::{
    Admin, Client, ErrorCode, FetchOptions, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use rill_e2e::{Broker, Proxy};
use std::time::Duration;

/// Every record value of `partition`, in offset order.
async fn values(client: &Client, topic: &str, partition: u32) -> Vec<String> {
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        ..FetchOptions::default()
    };
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = client
            .fetch(topic, partition, offset, &options)
            .await
            .unwrap();
        if r.records.is_empty() {
            return out;
        }
        for rec in r.records {
            out.push(String::from_utf8(rec.value.to_vec()).unwrap());
        }
        offset = r.next_offset;
    }
}

/// Sends 20 batches of 10 records through a proxy that drops the answers to three of them;
/// returns what the partition holds, the offsets the deliveries reported, and the retries
/// the broker recognised.
async fn through_lossy_proxy(idempotent: bool) -> (Vec<String>, Vec<u64>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let direct = Client::connect(broker.addr()).await.unwrap();
    Admin::new(direct.clone())
        .create_topic("lossy", 1, TopicConfig::default())
        .await
        .unwrap();
    let proxy = Proxy::start(broker.addr()).await;
    let producer = Producer::new(
        Client::connect(proxy.addr()).await.unwrap(),
        ProducerConfig {
            idempotent,
            ..ProducerConfig::default()
        },
    );
    let mut offsets = Vec::new();
    for b in 0..20 {
        if [3, 4, 11].contains(&b) {
            proxy.drop_produce_answers(1);
        }
        let mut deliveries = Vec::new();
        for i in 0..10 {
            let record = ProducerRecord::new("lossy", format!("b{b}-r{i}")).partition(0);
            deliveries.push(producer.send(record).await.unwrap());
        }
        producer.flush().await.unwrap();
        for d in deliveries {
            offsets.push(d.await.expect("delivered despite the lost answer").offset);
        }
    }
    assert_eq!(proxy.dropped(), 3, "the proxy dropped three answers");
    let stored = values(&direct, "lossy", 0).await;
    (stored, offsets, producer.duplicates_avoided())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_whose_answer_was_lost_is_stored_once() {
    let (stored, offsets, duplicates) = through_lossy_proxy(true).await;
    let sent: Vec<String> = (0..20)
        .flat_map(|b| (0..10).map(move |i| format!("b{b}-r{i}")))
        .collect();
    assert_eq!(stored, sent, "every record once, in send order");
    assert_eq!(
        offsets,
        (0..200).collect::<Vec<u64>>(),
        "each delivery reports the offset its record is stored at"
    );
    assert_eq!(duplicates, 3, "the broker recognised each resend");

    // The same without idempotence: each resend is stored again.
    let (stored, _, duplicates) = through_lossy_proxy(false).await;
    assert_eq!(stored.len(), 230, "three batches of ten stored twice");
    assert_eq!(duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_name_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("fenced", 2, TopicConfig::default())
        .await
        .unwrap();
    let named = || ProducerConfig {
        producer_name: Some("billing".into()),
        ..ProducerConfig::default()
    };
    let send = |p: &Producer, partition: u32, value: &str| {
        let (p, value) = (p.clone(), value.to_string());
        async move {
            let record = ProducerRecord::new("fenced", value).partition(partition);
            p.send(record).await?.await
        }
    };
    let first = Producer::new(Client::connect(broker.addr()).await.unwrap(), named());
    for i in 0..5 {
        send(&first, i % 2, &format!("first-{i}")).await.unwrap();
    }
    let (id, epoch) = first.identity().expect("the first batch asked for an id");

    let second = Producer::new(Client::connect(broker.addr()).await.unwrap(), named());
    send(&second, 0, "second-0").await.unwrap();
    assert_eq!(
        second.identity(),
        Some((id, epoch + 1)),
        "same id, next epoch"
    );

    // Partition 1 has not seen the new epoch yet; the first instance is refused there too.
    let refused = send(&first, 1, "first-after-fence").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ProducerFenced), "{refused}");
    let again = send(&first, 0, "first-after-fence-2").await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::ProducerFenced), "{again}");
    send(&second, 1, "second-1").await.unwrap();

    let p0 = values(&client, "fenced", 0).await;
    let p1 = values(&client, "fenced", 1).await;
    assert_eq!(p0, ["first-0", "first-2", "first-4", "second-0"]);
    assert_eq!(p1, ["first-1", "first-3", "second-1"]);
}

/// `rill produce` through the lossy proxy: the lines are stored once each, and the summary
/// says how many retried batches the broker recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_produce_reports_the_duplicates_it_avoided() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let direct = Client::connect(broker.addr()).await.unwrap();
    Admin::new(direct.clone())
        .create_topic("cli", 1, TopicConfig::default())
        .await
        .unwrap();
    let proxy = Proxy::start(broker.addr()).await;
    proxy.drop_produce_answers(1);
    let addr = proxy.addr().to_string();
    let lines: String = (0..500).map(|i| format!("line-{i}\n")).collect();
    let out = tokio::task::spawn_blocking(move || {
        rill_e2e::rill(Some(&addr), &["produce", "cli"], &lines)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(proxy.dropped(), 1);
    assert!(
        stderr.contains("produced 500 record(s) to cli")
            && stderr.contains("1 retried batch(es) recognised as already stored"),
        "{stderr}"
    );
    let stored = values(&direct, "cli", 0).await;
    let expected: Vec<String> = (0..500).map(|i| format!("line-{i}")).collect();
    assert_eq!(stored, expected);
}

/// A broker that forgot a producer (its state expired: here after 1 ms) refuses its next
/// sequence as out of order; an unnamed producer moves the partition to a new epoch and
/// carries on, a named one reports the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_the_broker_forgot_starts_over_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rilld.toml");
    std::fs::write(&config, "[storage]\nproducer_id_expiration_ms = 1\n").unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let client = Client::connect(broker.addr()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("forgot", 1, TopicConfig::default())
        .await
        .unwrap();
    let send = |p: &Producer, value: &str| {
        let (p, value) = (p.clone(), value.to_string());
        async move {
            let record = ProducerRecord::new("forgot", value).partition(0);
            p.send(record).await?.await
        }
    };
    // Expiry is measured in wall-clock milliseconds since the producer's last write.
    let idle = || async {
        let since = std::time::Instant::now();
        while since.elapsed() < Duration::from_millis(5) {
            tokio::task::yield_now().await;
        }
    };
    let anonymous = Producer::new(client.clone(), ProducerConfig::default());
    assert_eq!(send(&anonymous, "a0").await.unwrap().offset, 0);
    idle().await;
    assert_eq!(
        send(&anonymous, "a1").await.unwrap().offset,
        1,
        "renumbered at a new epoch and stored"
    );
    assert_eq!(
        out_of_order_errors(broker.metrics_addr()),
        1,
        "the broker had forgotten it: the first attempt was refused"
    );
    let named = Producer::new(
        client.clone(),
        ProducerConfig {
            producer_name: Some("forgetful".into()),
            ..ProducerConfig::default()
        },
    );
    send(&named, "n0").await.unwrap();
    idle().await;
    let refused = send(&named, "n1").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::OutOfOrderSequence),
        "{refused}"
    );
    assert_eq!(values(&client, "forgot", 0).await, ["a0", "a1", "n0"]);
}

/// `OutOfOrderSequence` answers to produce requests so far (the broker's metrics).
fn out_of_order_errors(metrics: &str) -> u64 {
    let (_, body) = rill_e2e::http_get(metrics, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("rill_request_errors_total{") && l.contains("OutOfOrderSequence"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
