//! Quotas against the real daemon: a principal over its produce rate is held back rather than
//! refused (it cannot produce faster than its quota, and the broker counts the time held), the
//! quota can be listed and removed with `rill quota`, and connection limits per principal and
//! per address close the connections beyond them.

use bytes::Bytes;
use rill_client::acl::{Acl, Operation, PatternType, Permission, ResourceType};
use rill_client::{Admin, BatchBuilder, Client, Error, ErrorCode, Quota, TopicConfig};
use rill_e2e::{Broker, as_user, auth_broker, http_get, rill_with_env};
use std::time::{Duration, Instant};

fn batch(bytes: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(bytes + 128);
    b.push(None, &vec![7u8; bytes], &[], 0);
    b.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_quota_is_held_to_it_and_connections_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(
        &dir.path().join("data"),
        &[
            "--max-connections-per-principal",
            "2",
            "--max-connections-per-ip",
            "6",
        ],
    );
    let addr = broker.addr().to_string();
    let su = Client::connect_with(&addr, as_user("admin", "admin-secret"))
        .await
        .unwrap();
    let admin = Admin::new(su.clone());
    admin
        .create_topic("metered", 1, TopicConfig::default())
        .await
        .unwrap();
    admin.create_user("heavy", "pw").await.unwrap();
    let write = Acl {
        principal: "heavy".into(),
        resource: ResourceType::Topic,
        pattern: PatternType::Literal,
        name: "metered".into(),
        operation: Operation::Write,
        permission: Permission::Allow,
    };
    admin.create_acls(vec![write]).await.unwrap();
    const RATE: u64 = 2_000_000;
    let quota = Quota {
        produce_bytes_per_sec: Some(RATE),
        ..Quota::default()
    };
    admin.set_quota("heavy", Some(quota)).await.unwrap();
    assert_eq!(
        admin.list_quotas().await.unwrap(),
        [("heavy".to_string(), quota)]
    );

    // 6 MB in 64 KiB batches, as fast as acknowledgements allow: the first second's worth
    // passes at once, the rest at 2 MB/s, so it cannot take less than 2 s.
    let heavy = Client::connect_with(&addr, as_user("heavy", "pw"))
        .await
        .unwrap();
    let one = batch(64 * 1024);
    let n = 6_000_000 / one.len();
    let started = Instant::now();
    let mut acks = Vec::new();
    for _ in 0..n {
        acks.push(heavy.send_batch("metered", 0, one.clone()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let elapsed = started.elapsed();
    let sent = (n * one.len()) as u64;
    let floor = Duration::from_secs_f64((sent - RATE) as f64 / RATE as f64);
    assert!(
        elapsed >= floor.mul_f64(0.95),
        "{sent} B in {elapsed:?}: faster than the quota"
    );
    eprintln!(
        "{sent} B in {elapsed:?}: {:.0} B/s against a quota of {RATE}",
        sent as f64 / elapsed.as_secs_f64()
    );
    // The superuser, without a quota, is not held.
    let started = Instant::now();
    su.send_batch("metered", 0, batch(3_000_000))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        started.elapsed() < floor,
        "an unmetered principal waited {:?}",
        started.elapsed()
    );
    let held = metric(&broker, "rill_throttle_seconds_total{quota=\"produce\"}")
        .expect("a produce throttle metric");
    assert!(held >= floor.as_secs_f64() * 0.9, "held {held} s");

    // `rill quota`: set for everyone, list, remove.
    let env = [("RILL_PASSWORD", "admin-secret")];
    let rill = |args: &[&str]| {
        let mut all = vec!["--user", "admin", "quota"];
        all.extend_from_slice(args);
        let out = rill_with_env(Some(&addr), &all, "", &env);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = rill(&[
        "set",
        "--principal",
        "*",
        "--fetch-rate",
        "50MiB",
        "--request-rate",
        "1000",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = rill(&["list"]);
    assert!(
        ok && out.contains("52428800") && out.contains("1000") && out.contains("2000000"),
        "{out}"
    );
    let (ok, out) = rill(&["remove", "--principal", "heavy"]);
    assert!(ok, "{out}");
    let (ok, out) = rill(&["set", "--principal", "x", "--produce-rate", "0"]);
    assert!(!ok && out.contains("at least 1 byte"), "{out}");
    let left: Vec<String> = admin
        .list_quotas()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(left, ["*"]);

    // Connection limits: a client holds one or two connections (its administrative one, and a
    // partition link once it routes), so of three clients of "idle" one at least is refused at
    // login, with the typed error; once they are gone, a client is accepted again.
    admin.create_user("idle", "pw").await.unwrap();
    let mut first = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        match Client::connect_with(&addr, as_user("idle", "pw")).await {
            Ok(c) => first.push(c),
            Err(e) => refused = Some(e),
        }
    }
    assert!(
        first.len() <= 2,
        "{} clients of one principal with a limit of 2",
        first.len()
    );
    let e = refused.expect("a refusal");
    assert!(
        matches!(
            &e,
            Error::Broker {
                code: ErrorCode::TooManyConnections,
                message,
                ..
            } if message.contains("max_connections_per_principal")
        ),
        "{e}"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        match Client::connect_with(&addr, as_user("idle", "pw")).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop((second, heavy, admin, su));
    // Per address: 6 from 127.0.0.1 at once. Once the broker has closed every client's
    // connection, open up to the limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&broker, "rill_connections") != Some(0.0) {
        assert!(Instant::now() < deadline, "connections still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the broker did not close the connection beyond the limit; its log:\n{}",
            broker.log()
        )
    });
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    broker
        .wait_for_log(
            "connection refused: its address has its limit of connections open",
            1,
        )
        .await;
}

/// The value of the metric line starting with `name` (labels included) and a space.
fn metric(broker: &Broker, name: &str) -> Option<f64> {
    let (_, body) = http_get(broker.metrics_addr(), "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
