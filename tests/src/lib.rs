//! Test harness: build the real binaries once, run `rilld` as a child process, and wait for
//! it by reading its "listening" line rather than by sleeping.

mod cluster;
mod link;
mod proxy;
pub use cluster::Cluster;
pub use link::Link;
pub use proxy::Proxy;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Paths of the freshly built `rilld` and `rill`.
#[derive(Debug)]
pub struct Binaries {
    pub rilld: PathBuf,
    pub rill: PathBuf,
}

/// Builds `rilld` and `rill` with the same profile as the running test, once per test binary,
/// so the tests always exercise the current code.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile directory")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // What `cargo test` sets for this test binary must not reach the build: build scripts
        // that watch these variables (ring's does, CARGO_MANIFEST_DIR and CARGO_PKG_NAME among
        // them) would see them change and rebuild, here and again in the next plain build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
            {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.current_dir(workspace).args([
            "build",
            "--quiet",
            "-p",
            "rill-broker",
            "-p",
            "rill-client",
            "--bins",
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.stdout(Stdio::null()).output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building rilld and rill failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Binaries {
            rilld: profile_dir.join("rilld"),
            rill: profile_dir.join("rill"),
        }
    })
}

/// A free loopback address for a listener that must keep its port across restarts (a node's
/// client and cluster ports).
///
/// The port comes from below the kernel's ephemeral range (32768 and up on Linux), which
/// `bind(0)` and outgoing connections draw from. A port taken from that range and released for
/// `rilld` to bind could be handed to another listener or connection in between, or while the
/// node is down for a restart; below it, only this allocator hands ports out, and never the
/// same one twice in a test binary.
pub fn fixed_addr() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Start somewhere different in each test binary, so a port a previous binary left in use
    // (a node still shutting down) is unlikely to be tried first.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// A running `rilld` child process.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    addr: String,
    /// The Kafka listener's address, when it is on.
    kafka: Option<String>,
    metrics: String,
    data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// Environment variables set for rilld (kept across restarts).
    env: Vec<(String, String)>,
}

/// How long start-up may take before the test fails (recovery of a big log in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Broker {
    /// Starts `rilld` on a free loopback port with `data_dir`, plus `extra` flags.
    ///
    /// Unless `extra` sets it, new consumer groups assign at once
    /// (`--group-initial-rebalance-delay-ms 0`): most tests start one member at a time and
    /// wait for its assignment, and the 3 s default would only slow them down. Tests of the
    /// delay itself pass the flag.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Broker::start`] with these environment variables set for rilld.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // Kafka's port is one per machine: each broker gets its own (kept across restarts).
        if !extra.contains(&"--kafka-listen") {
            args.extend(["--kafka-listen".into(), fixed_addr()]);
        }
        if !extra.contains(&"--group-initial-rebalance-delay-ms") {
            args.extend(["--group-initial-rebalance-delay-ms".into(), "0".into()]);
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_at(data_dir, &fixed_addr(), args, env, |_| {})
    }

    fn start_at(
        data_dir: &Path,
        listen: &str,
        args: Vec<String>,
        env: Vec<(String, String)>,
        mut during_recovery: impl FnMut(&str),
    ) -> Broker {
        let log = data_dir.with_extension("rilld.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open broker log");
        let mut child = Command::new(&binaries().rilld)
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn rilld");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forward every line (and keep draining, so rilld never blocks on a full pipe).
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut metrics = String::new();
        let mut kafka = None;
        let addr = loop {
            let line = match rx.recv_timeout(START_TIMEOUT) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "rilld did not report listening; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            };
            if let Some(m) = line.strip_prefix("rilld metrics listening on ") {
                metrics = m.to_string();
                during_recovery(&metrics);
            } else if let Some(k) = line.strip_prefix("rilld kafka listening on ") {
                kafka = Some(k.to_string());
            } else if let Some(rest) = line.strip_prefix("rilld listening on ") {
                break rest.split(',').next().unwrap_or_default().to_string();
            } else {
                panic!("unexpected line from rilld: {line:?}");
            }
        };
        Broker {
            child: Some(child),
            addr,
            kafka,
            metrics,
            data_dir: data_dir.to_path_buf(),
            log,
            args,
            env,
        }
    }

    /// Resident memory of the broker process now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.proc_status_kib("VmRSS:") * 1024
    }

    /// Peak resident memory of the broker process so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.proc_status_kib("VmHWM:") * 1024
    }

    /// A kB figure from the broker's /proc/<pid>/status.
    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("broker is running").id();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    /// Address of the Kafka listener (`None` when it is off).
    pub fn kafka_addr(&self) -> Option<&str> {
        self.kafka.as_deref()
    }

    /// Address of the HTTP endpoint with /metrics and /health.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics
    }

    /// The address clients connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the broker logged so far (across restarts).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        child.wait().expect("wait for rilld")
    }

    /// SIGSTOP: the process stops answering but keeps its sockets open (the kernel still
    /// accepts and acknowledges bytes), as a hung or half-open peer looks to a client.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGHUP: the broker reads its TLS certificate and key again.
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// Waits (up to 30 s) until the broker's log holds `needle` `count` times or more.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the broker never logged {needle:?} {count} times; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("broker is running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGKILL: no chance to flush or mark anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker is running");
        child.kill().expect("kill -9 rilld");
        let _ = child.wait();
    }

    /// Starts the broker again on the same address and data directory.
    pub fn restart(&mut self) {
        self.restart_observing(|_| {});
    }

    /// Restarts, calling `during_recovery` with the metrics address as soon as the endpoint is
    /// up and before the broker reports that it listens (that is, while it recovers).
    pub fn restart_observing(&mut self, during_recovery: impl FnMut(&str)) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let mut next = Self::start_at(
            &self.data_dir,
            &self.addr,
            self.args.clone(),
            self.env.clone(),
            during_recovery,
        );
        self.child = next.child.take();
        self.metrics = std::mem::take(&mut next.metrics);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `rill` with `args` against `broker` (or no `--broker` at all), feeding `stdin`.
pub fn rill(broker: Option<&str>, args: &[&str], stdin: &str) -> std::process::Output {
    rill_with_env(broker, args, stdin, &[])
}

/// A broker that authenticates (`--auth`, plus `extra` flags), its superuser "admin" made
/// from RILL_SUPERUSER_PASSWORD "admin-secret".
pub fn auth_broker(data_dir: &Path, extra: &[&str]) -> Broker {
    let mut args = vec!["--auth", "--superuser", "admin"];
    args.extend_from_slice(extra);
    Broker::start_with_env(
        data_dir,
        &args,
        &[("RILL_SUPERUSER_PASSWORD", "admin-secret")],
    )
}

/// A client that logs in as `user` with SCRAM `mechanism`, and fails at once instead of
/// retrying (refusals are what these tests look at).
pub fn scram(
    user: &str,
    password: &str,
    mechanism: rill_client::SaslMechanism,
) -> rill_client::ClientConfig {
    rill_client::ClientConfig {
        sasl: Some(rill_client::SaslSettings {
            mechanism,
            user: user.into(),
            password: password.into(),
        }),
        retry_timeout: Duration::ZERO,
        ..rill_client::ClientConfig::default()
    }
}

/// [`scram`] with SCRAM-SHA-256.
pub fn as_user(user: &str, password: &str) -> rill_client::ClientConfig {
    scram(user, password, rill_client::SaslMechanism::ScramSha256)
}

/// [`rill`] with these environment variables set.
pub fn rill_with_env(
    broker: Option<&str>,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(&binaries().rill);
    cmd.envs(env.iter().copied());
    if let Some(addr) = broker {
        cmd.arg("--broker").arg(addr);
    }
    let mut child = cmd
        .args(args)
        .env_remove("RILL_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rill");
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, data.as_bytes()));
    let out = child.wait_with_output().expect("wait for rill");
    let _ = writer.join();
    out
}

/// Checks every segment file under `data_dir` holds only whole, valid batches with dense
/// offsets, and returns the number of records in each partition directory.
pub fn verify_segments(data_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let topics = data_dir.join("topics");
    for topic in std::fs::read_dir(&topics).expect("topics dir").flatten() {
        for part in std::fs::read_dir(topic.path())
            .expect("topic dir")
            .flatten()
        {
            if !part.path().is_dir() {
                continue;
            }
            let mut logs: Vec<PathBuf> = std::fs::read_dir(part.path())
                .expect("partition dir")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            let mut next: Option<u64> = None;
            let mut records = 0;
            for log in logs {
                let bytes = bytes::Bytes::from(std::fs::read(&log).expect("read segment"));
                let mut batches = rill_protocol::batch::Batches::new(bytes);
                for b in batches.by_ref() {
                    let h = rill_protocol::batch::validate(&b)
                        .unwrap_or_else(|e| panic!("{}: invalid batch: {e}", log.display()));
                    if let Some(n) = next {
                        assert_eq!(h.base_offset, n, "{}: offsets are not dense", log.display());
                    }
                    next = Some(h.last_offset() + 1);
                    records += u64::from(h.records());
                }
                assert_eq!(
                    batches.rest(),
                    0,
                    "{} ends with a partial batch",
                    log.display()
                );
            }
            out.push((part.path(), records));
        }
    }
    out
}

/// A blocking HTTP GET of `path` from `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: rill\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    http_response(&raw)
}

/// An HTTP response's status (0 if there is none) and body.
pub fn http_response(raw: &str) -> (u16, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Wall-clock milliseconds, for record timestamps (retention compares them with the clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends `batches` batches of 1,000 records of `value_len` bytes to partition 0 of `topic`,
/// pipelined, and waits for every acknowledgement.
pub async fn fill_partition(
    client: &rill_client::Client,
    topic: &str,
    batches: usize,
    value_len: usize,
) {
    let value = vec![7u8; value_len];
    let mut acks = Vec::new();
    for _ in 0..batches {
        let mut b = rill_protocol::batch::BatchBuilder::with_capacity(1000 * (value_len + 16));
        for _ in 0..1000 {
            b.push(None, &value, &[], now_ms());
        }
        acks.push(client.send_batch(topic, 0, b.finish()).await.expect("send"));
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
}
