//! Authentication with SASL SCRAM on the Rill protocol: a bootstrap superuser creates users;
//! correct credentials work with both mechanisms, through the library and `rill`; a wrong
//! password, an unknown user and every request before authenticating are refused and logged;
//! failures from one address are answered ever later.

use rill_client::{
    Admin, Client, ClientConfig, Error, ErrorCode, PartitionReader, Producer, ProducerConfig,
    ProducerRecord, SaslMechanism, StartOffset, TopicConfig,
};
use rill_e2e::{auth_broker, rill_with_env, scram};
use std::time::{Duration, Instant};

fn broker_code(e: &Error) -> Option<ErrorCode> {
    match e {
        Error::Broker { code, .. } => Some(*code),
        _ => None,
    }
}

/// Story: an operator turns authentication on with a bootstrap superuser, creates a user for a
/// service, and the service works; strangers, wrong passwords and clients that skip the
/// handshake get nothing but a clear refusal, and the broker logs each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_work_and_everyone_else_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    assert!(
        broker
            .log()
            .contains("created superuser from RILL_SUPERUSER_PASSWORD")
    );

    let admin = Client::connect_with(
        &addr,
        scram("admin", "admin-secret", SaslMechanism::ScramSha512),
    )
    .await
    .unwrap();
    Admin::new(admin.clone())
        .create_user("billing", "b1ll")
        .await
        .unwrap();
    Admin::new(admin.clone())
        .create_topic("invoices", 1, TopicConfig::default())
        .await
        .unwrap();
    // Authenticated is not authorized: billing may use its topic because an ACL says so.
    let grant = rill_client::acl::Acl {
        principal: "billing".into(),
        resource: rill_client::acl::ResourceType::Topic,
        pattern: rill_client::acl::PatternType::Literal,
        name: "invoices".into(),
        operation: rill_client::acl::Operation::All,
        permission: rill_client::acl::Permission::Allow,
    };
    Admin::new(admin.clone())
        .create_acls(vec![grant])
        .await
        .unwrap();
    let users = Admin::new(admin.clone()).list_users().await.unwrap();
    let names: Vec<(&str, bool)> = users
        .iter()
        .map(|u| (u.user.as_str(), u.superuser))
        .collect();
    assert_eq!(names, [("admin", true), ("billing", false)]);

    // The service, with SCRAM-SHA-256: produces and reads back.
    let billing = Client::connect_with(&addr, scram("billing", "b1ll", SaslMechanism::ScramSha256))
        .await
        .unwrap();
    let producer = Producer::new(billing.clone(), ProducerConfig::default());
    let stored = producer
        .send(ProducerRecord::new("invoices", "inv-1"))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut reader = PartitionReader::new(
        billing.clone(),
        "invoices",
        0,
        StartOffset::Offset(stored.offset),
    )
    .await
    .unwrap();
    assert_eq!(&reader.next().await.unwrap().value[..], b"inv-1");
    // Not a superuser: user management is refused with the typed error.
    let e = Admin::new(billing.clone()).list_users().await.unwrap_err();
    assert_eq!(broker_code(&e), Some(ErrorCode::NotAuthorized), "{e}");

    // A wrong password and an unknown user: the same refusal, logged.
    for (user, password) in [("billing", "guess"), ("nobody", "b1ll")] {
        let e = Client::connect_with(&addr, scram(user, password, SaslMechanism::ScramSha512))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("authentication as {user:?} failed")),
            "{e}"
        );
        assert!(e.contains("wrong password or unknown user"), "{e}");
    }
    broker.wait_for_log("authentication failed", 2).await;

    // No handshake: the connection opens (ApiVersions is served) but the first real request is
    // refused, logged, and the connection closed.
    let anonymous = Client::connect_with(
        &addr,
        ClientConfig {
            retry_timeout: Duration::ZERO,
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let e = Admin::new(anonymous).list_topics().await.unwrap_err();
    assert_eq!(
        broker_code(&e),
        Some(ErrorCode::AuthenticationRequired),
        "{e}"
    );
    broker
        .wait_for_log("request before authentication", 1)
        .await;

    // `rill`: the superuser creates a user whose password comes from the environment; that user
    // lists topics; with a wrong password `rill` fails with the reason.
    let as_admin = [
        ("RILL_PASSWORD", "admin-secret"),
        ("RILL_NEW_PASSWORD", "r3ports"),
    ];
    let out = rill_with_env(
        Some(&addr),
        &["--user", "admin", "user", "create", "reports"],
        "",
        &as_admin,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rill_with_env(
        Some(&addr),
        &[
            "--user",
            "reports",
            "--sasl-mechanism",
            "SCRAM-SHA-256",
            "topic",
            "list",
        ],
        "",
        &[("RILL_PASSWORD", "r3ports")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Logged in, but no ACL lets reports describe invoices: the list leaves it out.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("invoices"));
    let out = rill_with_env(
        Some(&addr),
        &["--user", "reports", "topic", "list"],
        "",
        &[("RILL_PASSWORD", "nope")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication as \"reports\" failed"));

    // Users survive a restart (the bootstrap does not run again: admin keeps its password).
    let mut broker = broker;
    broker.stop();
    broker.restart();
    let again = Client::connect_with(
        broker.addr(),
        scram("reports", "r3ports", SaslMechanism::ScramSha512),
    )
    .await;
    assert!(again.is_ok(), "{:?}", again.err());
}

/// Story: someone guesses passwords. Each failure from the same address is answered later than
/// the one before (100 ms, doubling, up to 5 s each), so six guesses take over 6 s where six
/// logins take milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_passwords_is_slowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    let started = Instant::now();
    for _ in 0..6 {
        let e =
            Client::connect_with(&addr, scram("admin", "guess", SaslMechanism::ScramSha512)).await;
        assert!(e.is_err());
    }
    let guessing = started.elapsed();
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of deliberate delay, at the least.
    assert!(
        guessing >= Duration::from_millis(6300),
        "six wrong guesses took {guessing:?}"
    );
    eprintln!("six wrong guesses took {guessing:?}");
}

/// The SCRAM exchange spoken by hand: a client-final message cut short, and one replayed from
/// an exchange that succeeded on another connection, are both refused (the proof, the nonce)
/// and logged; the honest exchange on a fresh connection succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_replayed_scram_messages_are_refused() {
    use rill_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    use rill_protocol::scram::ClientExchange;
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("data"), &[]);
    let addr = broker.addr().to_string();
    const NONCE: &str = "fixed-client-nonce-for-the-replay";
    // One exchange up to the client-final message, on a fresh connection with no SASL
    // settings: the client's own handshake is not in the way.
    let begin = || async {
        let c = Client::connect(&addr).await.unwrap();
        c.call(&SaslHandshakeRequest {
            mechanism: "SCRAM-SHA-256".into(),
        })
        .await
        .unwrap();
        let mut exchange =
            ClientExchange::new(SaslMechanism::ScramSha256, "admin", "admin-secret", NONCE);
        let first = SaslAuthenticateRequest {
            bytes: exchange.client_first().into_bytes(),
        };
        let server_first = c.call(&first).await.unwrap().0.bytes;
        let last = exchange.client_final(&server_first).unwrap();
        (c, last)
    };
    let send = |c: Client, message: String| async move {
        c.call(&SaslAuthenticateRequest {
            bytes: message.into_bytes(),
        })
        .await
        .map(|(r, _)| r)
    };
    let refused = |r: Result<rill_protocol::messages::SaslAuthenticateResponse, Error>| {
        matches!(
            r,
            Err(Error::Broker {
                code: ErrorCode::AuthenticationFailed,
                ..
            })
        )
    };

    // Cut short: the proof is incomplete.
    let (c, last) = begin().await;
    let cut = last[..last.len() - 12].to_string();
    assert!(refused(send(c, cut).await));

    // The honest exchange succeeds and names the principal.
    let (c, honest) = begin().await;
    let done = send(c, honest.clone()).await.unwrap();
    assert_eq!(done.principal.as_deref(), Some("admin"));

    // Replayed on another connection: the broker's nonce differs there, so the old message
    // does not continue this exchange.
    let (c, _fresh) = begin().await;
    assert!(refused(send(c, honest).await));
    broker.wait_for_log("authentication failed", 2).await;
    let log = broker.log();
    assert!(
        log.contains("the nonce does not continue this exchange"),
        "{log}"
    );
}
