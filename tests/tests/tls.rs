//! TLS on the client listener: the Rust client and `rill` work over it; untrusted, expired and
//! wrong-host certificates are refused with a clear error on both sides; mutual TLS refuses a
//! client without a certificate; a certificate replaced on disk is served after SIGHUP; and a
//! listener off loopback is refused without `--allow-anonymous`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rill_client::{
    Admin, Client, ClientConfig, PartitionReader, Producer, ProducerConfig, ProducerRecord,
    StartOffset, TlsSettings, TopicConfig,
};
use rill_e2e::{Broker, binaries, rill};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A certificate authority that signs server and client certificates into PEM files.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// Its own certificate, as a PEM file to trust.
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client, valid
    /// now or expired; written as `file.pem` and `file.key`.
    fn issue(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        client: bool,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A broker serving TLS with a certificate from `ca` for localhost and 127.0.0.1 (plus `extra`
/// flags), and the certificate and key files it reads.
fn tls_broker(pki: &Path, ca: &Ca, extra: &[&str]) -> (Broker, PathBuf, PathBuf) {
    let (cert, key) = ca.issue(pki, "broker", &["localhost", "127.0.0.1"], false, false);
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let broker = Broker::start(&pki.join("data"), &args);
    (broker, cert, key)
}

fn config(tls: TlsSettings) -> ClientConfig {
    ClientConfig {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// Connecting must fail; returns the error's text.
async fn refused(addr: &str, tls: TlsSettings) -> String {
    let started = std::time::Instant::now();
    match Client::connect_with(addr, config(tls)).await {
        Ok(_) => panic!("a client connected that should have been refused"),
        Err(e) => {
            eprintln!("refused after {:?}: {e}", started.elapsed());
            e.to_string()
        }
    }
}

/// Produces one record and reads it back over `client`.
async fn round_trip(client: &Client, topic: &str, value: &str) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let stored = producer
        .send(ProducerRecord::new(topic, value.to_string()))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut reader = PartitionReader::new(
        client.clone(),
        topic,
        stored.partition,
        StartOffset::Offset(stored.offset),
    )
    .await
    .unwrap();
    assert_eq!(&reader.next().await.unwrap().value[..], value.as_bytes());
}

/// Story: an operator turns on TLS. Clients that trust the broker's CA work, through the
/// library and through `rill`; a client that trusts another CA, or expects another name, is
/// refused and the broker logs why. The operator then replaces the certificate on disk (by
/// mistake an expired one, then a good one) and sends SIGHUP: new connections get each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_refuses_bad_certificates_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca = Ca::new(pki, "rill-ca");
    let other = Ca::new(pki, "other-ca");
    let (broker, cert, key) = tls_broker(pki, &ca, &[]);
    let addr = broker.addr().to_string();

    let client = Client::connect_with(&addr, config(TlsSettings::new(&ca.pem)))
        .await
        .unwrap();
    Admin::new(client.clone())
        .create_topic("secret", 1, TopicConfig::default())
        .await
        .unwrap();
    round_trip(&client, "secret", "over tls").await;

    // `rill` with --tls-ca lists the topic; without it, it cannot talk to the broker.
    let out = rill(
        Some(&addr),
        &["--tls-ca", ca.pem.to_str().unwrap(), "topic", "list"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret"));

    // Untrusted: the broker's certificate is not signed by the CA this client trusts.
    let err = refused(&addr, TlsSettings::new(&other.pem)).await;
    assert!(
        err.contains("TLS handshake failed") && err.contains("UnknownIssuer"),
        "{err}"
    );
    broker.wait_for_log("TLS handshake failed", 1).await;
    // Wrong host: the certificate does not name what the client expects.
    let err = refused(
        &addr,
        TlsSettings::new(&ca.pem).server_name("kafka.example"),
    )
    .await;
    assert!(
        err.contains("TLS handshake failed") && err.contains("not valid for name"),
        "{err}"
    );
    broker.wait_for_log("TLS handshake failed", 2).await;
    let log = broker.log();
    // Why, as the broker sees it: each client's alert.
    assert!(log.contains("received fatal alert: UnknownCA"), "{log}");
    assert!(
        log.contains("received fatal alert: BadCertificate"),
        "{log}"
    );

    // An expired certificate replaces the good one on disk; after SIGHUP it is what new
    // connections get, and clients refuse it. The connection already open carries on.
    let (expired_cert, expired_key) =
        ca.issue(pki, "expired", &["localhost", "127.0.0.1"], false, true);
    std::fs::copy(&expired_cert, &cert).unwrap();
    std::fs::copy(&expired_key, &key).unwrap();
    broker.hangup();
    broker.wait_for_log("TLS certificate reloaded", 1).await;
    let err = refused(&addr, TlsSettings::new(&ca.pem)).await;
    assert!(
        err.contains("TLS handshake failed") && err.contains("certificate expired"),
        "{err}"
    );
    round_trip(&client, "secret", "still open").await;

    // A broken file and SIGHUP: the reload fails loudly and the last good one is still served.
    std::fs::write(&cert, "not a certificate").unwrap();
    broker.hangup();
    broker.wait_for_log("TLS reload failed", 1).await;
    let err = refused(&addr, TlsSettings::new(&ca.pem)).await;
    assert!(err.contains("certificate expired"), "{err}");

    // A good certificate again: served after SIGHUP.
    let (fresh_cert, fresh_key) = ca.issue(pki, "fresh", &["localhost", "127.0.0.1"], false, false);
    std::fs::copy(&fresh_cert, &cert).unwrap();
    std::fs::copy(&fresh_key, &key).unwrap();
    broker.hangup();
    broker.wait_for_log("TLS certificate reloaded", 2).await;
    let again = Client::connect_with(&addr, config(TlsSettings::new(&ca.pem)))
        .await
        .unwrap();
    round_trip(&again, "secret", "after rotation").await;
}

/// Story: a broker that requires client certificates (mutual TLS). A client with one signed by
/// the configured CA works; one without a certificate, or with one from another CA, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca = Ca::new(pki, "rill-ca");
    let clients = Ca::new(pki, "clients-ca");
    let other = Ca::new(pki, "other-ca");
    let (broker, _, _) = tls_broker(
        pki,
        &ca,
        &["--tls-client-ca", clients.pem.to_str().unwrap()],
    );
    let addr = broker.addr().to_string();

    let (alice, alice_key) = clients.issue(pki, "alice", &["alice"], true, false);
    let client = Client::connect_with(
        &addr,
        config(TlsSettings::new(&ca.pem).identity(&alice, &alice_key)),
    )
    .await
    .unwrap();
    Admin::new(client.clone())
        .create_topic("mtls", 1, TopicConfig::default())
        .await
        .unwrap();
    round_trip(&client, "mtls", "with a certificate").await;
    let out = rill(
        Some(&addr),
        &[
            "--tls-ca",
            ca.pem.to_str().unwrap(),
            "--tls-cert",
            alice.to_str().unwrap(),
            "--tls-key",
            alice_key.to_str().unwrap(),
            "topic",
            "list",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No certificate: with TLS 1.3 the client's side of the handshake completes before the
    // broker has checked it, so the refusal arrives as the broker's alert on the first request.
    let err = refused(&addr, TlsSettings::new(&ca.pem)).await;
    assert!(err.contains("CertificateRequired"), "{err}");
    let (mallory, mallory_key) = other.issue(pki, "mallory", &["mallory"], true, false);
    let err = refused(
        &addr,
        TlsSettings::new(&ca.pem).identity(&mallory, &mallory_key),
    )
    .await;
    assert!(err.contains("UnknownCA"), "{err}");
    broker.wait_for_log("TLS handshake failed", 2).await;
    let log = broker.log();
    assert!(log.contains("peer sent no certificates"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
}

/// With authentication on, a client certificate verified by mutual TLS is the principal (its
/// CN): ACLs apply to it with no password. Without mutual TLS, SASL PLAIN works over TLS, and a
/// plaintext listener refuses it (it would send the password in the clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_a_principal_and_plain_is_offered_only_over_tls() {
    use rill_client::acl::{Acl, Operation, PatternType, Permission, ResourceType};
    use rill_client::{Error, ErrorCode};
    use rill_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca = Ca::new(pki, "rill-ca");
    let clients = Ca::new(pki, "clients-ca");
    let (cert, key) = ca.issue(pki, "broker", &["localhost", "127.0.0.1"], false, false);
    let broker = Broker::start_with_env(
        &pki.join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            clients.pem.to_str().unwrap(),
            "--auth",
            "--superuser",
            "ops",
        ],
        &[("RILL_SUPERUSER_PASSWORD", "unused")],
    );
    let addr = broker.addr().to_string();
    // "ops" logs in by certificate alone: it is a superuser.
    let (ops, ops_key) = clients.issue(pki, "ops", &["ops"], true, false);
    let su = Client::connect_with(
        &addr,
        config(TlsSettings::new(&ca.pem).identity(&ops, &ops_key)),
    )
    .await
    .unwrap();
    let admin = Admin::new(su);
    for t in ["svc-data", "private"] {
        admin
            .create_topic(t, 1, TopicConfig::default())
            .await
            .unwrap();
    }
    let entry = Acl {
        principal: "svc".into(),
        resource: ResourceType::Topic,
        pattern: PatternType::Prefix,
        name: "svc-".into(),
        operation: Operation::All,
        permission: Permission::Allow,
    };
    admin.create_acls(vec![entry]).await.unwrap();
    let (svc, svc_key) = clients.issue(pki, "svc", &["svc"], true, false);
    let client = Client::connect_with(
        &addr,
        config(TlsSettings::new(&ca.pem).identity(&svc, &svc_key)),
    )
    .await
    .unwrap();
    round_trip(&client, "svc-data", "by certificate").await;
    let e = Admin::new(client.clone())
        .describe_topic("private")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            }
        ),
        "{e}"
    );
    assert!(broker.log().contains("authenticated by client certificate"));
    drop(broker);

    // TLS without client certificates: PLAIN is offered and checks the stored keys.
    let broker = rill_e2e::auth_broker(
        &pki.join("data2"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr = broker.addr().to_string();
    let plain = |message: &str| SaslAuthenticateRequest {
        bytes: message.as_bytes().to_vec(),
    };
    let c = Client::connect_with(&addr, config(TlsSettings::new(&ca.pem)))
        .await
        .unwrap();
    let offered = c
        .call(&SaslHandshakeRequest {
            mechanism: "PLAIN".into(),
        })
        .await
        .unwrap()
        .0
        .mechanisms;
    assert!(offered.contains(&"PLAIN".to_string()), "{offered:?}");
    let answer = c.call(&plain("\0admin\0admin-secret")).await.unwrap().0;
    assert_eq!(answer.principal.as_deref(), Some("admin"));
    assert!(
        Admin::new(c).list_users().await.is_ok(),
        "authenticated as the superuser"
    );
    let c = Client::connect_with(&addr, config(TlsSettings::new(&ca.pem)))
        .await
        .unwrap();
    c.call(&SaslHandshakeRequest {
        mechanism: "PLAIN".into(),
    })
    .await
    .unwrap();
    let e = c.call(&plain("\0admin\0guess")).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Broker {
                code: ErrorCode::AuthenticationFailed,
                ..
            }
        ),
        "{e}"
    );
    drop(broker);

    // Plaintext: PLAIN is refused with the reason, SCRAM still works.
    let broker = rill_e2e::auth_broker(&pki.join("data3"), &[]);
    let addr = broker.addr().to_string();
    let c = Client::connect(&addr).await.unwrap();
    let e = c
        .call(&SaslHandshakeRequest {
            mechanism: "PLAIN".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Broker { code: ErrorCode::UnsupportedSaslMechanism, message, .. } if message.contains("only over TLS")),
        "{e}"
    );
    Client::connect_with(&addr, rill_e2e::as_user("admin", "admin-secret"))
        .await
        .unwrap();
}

/// A cluster whose nodes talk mutual TLS (`--cluster-tls-ca`): it forms, replicates and serves
/// clients; a peer without a certificate of the cluster's CA is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_talk_mutual_tls_and_refuse_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca = Ca::new(pki, "cluster-ca");
    // One certificate for every node here (they all live at 127.0.0.1): it names the address
    // and serves both as the server's and as the connecting client's.
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "rill-node");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (cert_file, key_file) = (pki.join("node.pem"), pki.join("node.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::create_dir(pki.join("nodes")).unwrap();
    let cluster = rill_e2e::Cluster::start(
        &pki.join("nodes"),
        3,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--cluster-tls-ca",
            ca.pem.to_str().unwrap(),
        ],
    );
    for node in &cluster.nodes {
        assert!(node.log().contains("tls=true"), "{}", node.log());
    }
    let client = Client::connect_with(&cluster.addrs(), config(TlsSettings::new(&ca.pem)))
        .await
        .unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("replicated", 1, TopicConfig::default())
        .await
        .unwrap();
    // Replicated to three nodes over TLS: the write commits only once a majority holds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = admin.metadata(&["replicated"]).await.unwrap();
        let p = m.topics.first().and_then(|t| t.partitions.first()).cloned();
        if p.as_ref()
            .is_some_and(|p| p.leader.is_some() && p.replicas.len() == 3)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    round_trip(&client, "replicated", "over node-to-node TLS").await;

    // A stranger on the cluster port: plaintext gets nowhere, and the node says why.
    let mut stranger = tokio::net::TcpStream::connect(&cluster.cluster_addrs[0])
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stranger
        .write_all(&[
            0, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ])
        .await
        .unwrap();
    // All it gets back before the close is, at most, a TLS alert record (type 21).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stranger.read_to_end(&mut answer))
        .await
        .expect("the node closes the connection");
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() <= 7),
        "{read:?} {answer:?}"
    );
    cluster.nodes[0]
        .wait_for_log("cluster TLS handshake failed", 1)
        .await;
}

/// Story: an operator points rilld at every interface without thinking about who can reach it.
/// It refuses, saying why and what to do; `--allow-anonymous` is the explicit way through, and
/// it is logged at warn on every start.
#[tokio::test]
async fn a_listener_off_loopback_needs_allow_anonymous_and_it_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&binaries().rilld)
        .args([
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rilld started exposed: {stderr}");
    assert!(
        stderr.contains("0.0.0.0:0")
            && stderr.contains("--allow-anonymous")
            && stderr.contains("TLS"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before the refusal"
    );

    // With the flag (on a loopback address: this machine serves nothing beyond it) rilld
    // starts, and says what it allows.
    let broker = Broker::start(&dir.path().join("data"), &["--allow-anonymous"]);
    assert!(Client::connect(broker.addr()).await.is_ok());
    assert!(
        broker.log().contains("anonymous access allowed"),
        "{}",
        broker.log()
    );
}

/// GET `path` from an HTTPS endpoint whose certificate `ca` signed, with basic `auth`:
/// the status and body.
async fn https_get(addr: &str, ca: &Path, path: &str, auth: Option<&str>) -> (u16, String) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, RootCertStore, pki_types::pem::PemObject};
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: rill\r\nConnection: close\r\n");
    if let Some(a) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(a);
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    rill_e2e::http_response(&String::from_utf8_lossy(&raw))
}

/// Story: an operator scrapes /metrics from another machine. With `--metrics-tls` and basic
/// authentication, the endpoint answers only over TLS and /metrics only with the password;
/// /health stays open for load-balancer probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tls_require_the_password_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    let ca = Ca::new(pki, "rill-ca");
    let (broker, _, _) = tls_broker(
        pki,
        &ca,
        &[
            "--metrics-tls",
            "--metrics-basic-auth",
            "prometheus:scrape-secret",
        ],
    );
    let metrics = broker.metrics_addr().to_string();

    let (status, body) = https_get(
        &metrics,
        &ca.pem,
        "/metrics",
        Some("prometheus:scrape-secret"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rill_connections"), "{body}");
    for wrong in [
        None,
        Some("prometheus:guess"),
        Some("someone:scrape-secret"),
    ] {
        let (status, body) = https_get(&metrics, &ca.pem, "/metrics", wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(!body.contains("rill_"), "{body}");
    }
    assert_eq!(https_get(&metrics, &ca.pem, "/health", None).await.0, 200);

    // Plain HTTP gets no answer: the endpoint speaks TLS only.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    let _ = plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: rill\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("rill_"),
        "served in plain text"
    );
    broker
        .wait_for_log("metrics: TLS handshake failed", 1)
        .await;
}
