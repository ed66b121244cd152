//! Clients never hang: a broker that dies or stops answering turns into errors within the
//! configured timeouts.

use rill_client::{
    Admin, Client, ClientConfig, Error, FetchOptions, OffsetSpec, Producer, ProducerConfig,
    ProducerRecord, TopicConfig,
};
use rill_e2e::Broker;
use std::io::Write;
use std::time::{Duration, Instant};

/// The bug: `rill produce x --file 5M-lines.txt` with the broker killed 0.3 s in (and not
/// restarted) hung silently for more than two minutes: responses were awaited forever.
#[test]
fn rill_produce_gives_up_within_the_delivery_timeout_when_the_broker_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let b = Some(broker.addr());
    assert!(
        rill_e2e::rill(b, &["topic", "create", "x"], "")
            .status
            .success()
    );
    let file = dir.path().join("lines.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..3_000_000u32 {
            writeln!(f, "line-{i:012}").unwrap();
        }
    }
    let child = std::process::Command::new(&rill_e2e::binaries().rill)
        .args([
            "--broker",
            broker.addr(),
            "produce",
            "x",
            "--delivery-timeout",
            "3s",
        ])
        .arg("--file")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the broker once it has stored something: the producer is mid-stream.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(broker.addr()).await.unwrap();
        let wait = async {
            loop {
                let end = client
                    .list_offset("x", 0, OffsetSpec::Latest)
                    .await
                    .unwrap();
                if end.is_some_and(|e| e > 0) {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("nothing was produced");
    });
    broker.kill9();
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "it cannot have delivered everything: {stderr}"
    );
    assert!(
        stderr.contains("retrying"),
        "it said it was retrying: {stderr}"
    );
    assert!(
        stderr.contains("were not acknowledged"),
        "it said how many records were not acknowledged: {stderr}"
    );
    // Every batch has a 3 s deadline from when it was opened, all before the first failure.
    assert!(
        took < Duration::from_secs(20),
        "exited {took:?} after the broker died: {stderr}"
    );
    eprintln!(
        "rill produce exited {took:?} after the broker died: {}",
        stderr.trim()
    );
}

/// A broker that stops answering without closing its connections (SIGSTOP: the kernel keeps
/// acknowledging bytes) must not hang clients: requests time out, the dead connection is
/// replaced, and once the broker answers again the same client works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(500),
        retry_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(broker.addr(), config).await.unwrap();
    Admin::new(client.clone())
        .create_topic("h", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            delivery_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    );
    let first = producer
        .send(ProducerRecord::new("h", "before"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(first.await.unwrap().offset, 0);

    broker.pause();
    let bounded = Duration::from_secs(30); // a hang fails here instead of blocking the suite
    let stuck = producer
        .send(ProducerRecord::new("h", "during"))
        .await
        .unwrap();
    let err = tokio::time::timeout(bounded, stuck)
        .await
        .expect("the delivery hung")
        .unwrap_err();
    assert!(matches!(err, Error::DeliveryTimeout { .. }), "{err}");
    let err = tokio::time::timeout(bounded, client.fetch("h", 0, 0, &FetchOptions::default()))
        .await
        .expect("the fetch hung")
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");

    broker.resume();
    let after = producer
        .send(ProducerRecord::new("h", "after"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let offset = tokio::time::timeout(bounded, after)
        .await
        .expect("no recovery")
        .unwrap()
        .offset;
    assert!(offset >= 1, "stored after the broker came back");
}
