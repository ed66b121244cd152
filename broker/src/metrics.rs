//! What the broker counts, and the HTTP endpoint (`/metrics`, `/health`) that exposes it.
//!
//! Counters and histograms are updated where events happen (a produce acknowledged, a fetch
//! answered, a request finished, an fsync done); partition and group gauges are computed from
//! the live state when Prometheus scrapes, so they are never stale and cost nothing between
//! scrapes. Formatting is `prometheus-client`'s text encoder. The HTTP side answers two GET
//! paths and nothing else; it starts before recovery so `/health` can say "recovering".

use crate::server::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabel {
    pub quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub api: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub topic: String,
    pub partition: String,
    pub follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~100 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub messages_in: Family<TopicLabel, Counter>,
    pub bytes_in: Family<TopicLabel, Counter>,
    pub messages_out: Family<TopicLabel, Counter>,
    pub bytes_out: Family<TopicLabel, Counter>,
    pub requests: Family<ApiLabel, Counter>,
    pub request_errors: Family<ErrorLabels, Counter>,
    pub request_seconds: Family<ApiLabel, Histogram, fn() -> Histogram>,
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Connections closed at once: their address or principal had its limit open.
    pub connections_refused: Counter,
    throttle_seconds: Family<QuotaLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub fsyncs: Counter,
    pub fsync_seconds: Histogram,
    pub recovery_truncations: Counter,
    pub recovery_damaged_ranges: Counter,
    pub recovery_rebuilt_indexes: Counter,
    pub produce_duplicates: Family<TopicLabel, Counter>,
    partition_producers: Family<PartitionLabels, U64Gauge>,
    partition_end: Family<PartitionLabels, U64Gauge>,
    partition_durable: Family<PartitionLabels, U64Gauge>,
    partition_start: Family<PartitionLabels, U64Gauge>,
    partition_bytes: Family<PartitionLabels, U64Gauge>,
    raft_leader: Family<PartitionLabels, U64Gauge>,
    raft_term: Family<PartitionLabels, U64Gauge>,
    raft_applied_index: Family<PartitionLabels, U64Gauge>,
    raft_log_end_index: Family<PartitionLabels, U64Gauge>,
    raft_follower_lag: Family<FollowerLabels, U64Gauge>,
    raft_terms: Counter,
    /// Each replica's term at the last scrape, for `raft_terms`.
    raft_terms_seen: std::sync::Mutex<std::collections::HashMap<(String, u32), u64>>,
    group_committed: Family<GroupLabels, U64Gauge>,
    group_lag: Family<GroupLabels, U64Gauge>,
    disk_bytes: U64Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The broker's metrics (one set per process).
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts time a request was held for a quota.
    pub fn record_throttle(&self, kind: crate::quotas::Kind, held: std::time::Duration) {
        self.throttle_seconds
            .get_or_create(&QuotaLabel { quota: kind.name() })
            .inc_by(held.as_secs_f64());
    }
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("rill");
        let m = Metrics {
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            throttle_seconds: Family::default(),
            fsyncs: Counter::default(),
            fsync_seconds: latency_histogram(),
            recovery_truncations: Counter::default(),
            recovery_damaged_ranges: Counter::default(),
            recovery_rebuilt_indexes: Counter::default(),
            produce_duplicates: Family::default(),
            partition_producers: Family::default(),
            raft_leader: Family::default(),
            raft_term: Family::default(),
            raft_applied_index: Family::default(),
            raft_log_end_index: Family::default(),
            raft_follower_lag: Family::default(),
            raft_terms: Counter::default(),
            raft_terms_seen: Default::default(),
            partition_end: Family::default(),
            partition_durable: Family::default(),
            partition_start: Family::default(),
            partition_bytes: Family::default(),
            group_committed: Family::default(),
            group_lag: Family::default(),
            disk_bytes: U64Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages_in",
            "Records appended (acknowledged produce requests)",
            m.messages_in.clone(),
        );
        r.register(
            "bytes_in",
            "Record-batch bytes appended",
            m.bytes_in.clone(),
        );
        r.register(
            "messages_out",
            "Records returned by fetches",
            m.messages_out.clone(),
        );
        r.register(
            "bytes_out",
            "Record-batch bytes returned by fetches",
            m.bytes_out.clone(),
        );
        r.register("requests", "Requests handled, by API", m.requests.clone());
        r.register(
            "request_errors",
            "Requests answered with an error, by API and code",
            m.request_errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from reading a request to its response, by API",
            m.request_seconds.clone(),
        );
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "connections_opened",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed on arrival or at login: their address or principal had its limit open",
            m.connections_refused.clone(),
        );
        r.register(
            "throttle_seconds",
            "Time requests were held to keep principals within their quotas, by quota",
            m.throttle_seconds.clone(),
        );
        r.register(
            "fsyncs",
            "fdatasync calls on partition logs",
            m.fsyncs.clone(),
        );
        r.register(
            "fsync_duration_seconds",
            "Duration of fdatasync calls",
            m.fsync_seconds.clone(),
        );
        r.register(
            "recovery_truncations",
            "Torn or corrupt log tails cut at start-up",
            m.recovery_truncations.clone(),
        );
        r.register(
            "recovery_damaged_ranges",
            "Damaged stretches of sealed segments found at start-up (kept; their records are lost)",
            m.recovery_damaged_ranges.clone(),
        );
        r.register(
            "recovery_rebuilt_indexes",
            "Segment indexes rebuilt at start-up",
            m.recovery_rebuilt_indexes.clone(),
        );
        r.register(
            "produce_duplicates",
            "Produced batches recognised as retries of batches already stored (idempotent \
             producers): answered with the original offsets, not stored again",
            m.produce_duplicates.clone(),
        );
        r.register(
            "raft_leader",
            "Cluster: 1 for each partition replica this node leads, 0 for the others",
            m.raft_leader.clone(),
        );
        r.register(
            "raft_term",
            "Cluster: the Raft term each partition replica on this node is in",
            m.raft_term.clone(),
        );
        r.register(
            "raft_applied_index",
            "Cluster: the last Raft log index each partition replica applied (committed)",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_log_end_index",
            "Cluster: the last Raft log index each partition replica holds",
            m.raft_log_end_index.clone(),
        );
        r.register(
            "raft_follower_lag",
            "Cluster: on each partition this node leads, how many Raft log entries each follower \
             is behind this node's log (a follower that stays behind is slow or catching up)",
            m.raft_follower_lag.clone(),
        );
        r.register(
            "raft_terms",
            "Cluster: Raft terms begun on this node's partition replicas since it started (each \
             is an election; counted when metrics are scraped)",
            m.raft_terms.clone(),
        );
        r.register(
            "partition_producers",
            "Idempotent producers whose sequence state each partition keeps",
            m.partition_producers.clone(),
        );
        r.register(
            "partition_log_end_offset",
            "High watermark of each partition",
            m.partition_end.clone(),
        );
        r.register(
            "partition_durable_offset",
            "Offset below which every record is fsynced; the gap to the end offset is what a \
             power loss could take under fsync=interval",
            m.partition_durable.clone(),
        );
        r.register(
            "partition_log_start_offset",
            "First offset still stored in each partition",
            m.partition_start.clone(),
        );
        r.register(
            "partition_size_bytes",
            "Bytes stored for each partition",
            m.partition_bytes.clone(),
        );
        r.register(
            "group_committed_offset",
            "Committed offset of each group and partition",
            m.group_committed.clone(),
        );
        r.register(
            "group_lag",
            "Records not yet committed, per group and partition",
            m.group_lag.clone(),
        );
        r.register(
            "disk_used_bytes",
            "Bytes of partition logs on disk",
            m.disk_bytes.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn fsync(&self, took: Duration) {
        self.fsyncs.inc();
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    /// Refreshes the state-derived gauges, then renders everything as Prometheus text.
    pub fn render(&self, ctx: Option<&Context>) -> String {
        if let Some(ctx) = ctx {
            self.refresh(ctx);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    fn refresh(&self, ctx: &Context) {
        // Cleared first, so deleted topics and groups disappear from the output.
        for f in [
            &self.partition_end,
            &self.partition_durable,
            &self.partition_start,
            &self.partition_bytes,
            &self.partition_producers,
            &self.raft_leader,
            &self.raft_term,
            &self.raft_applied_index,
            &self.raft_log_end_index,
        ] {
            f.clear();
        }
        self.raft_follower_lag.clear();
        if let Some(cluster) = &ctx.cluster {
            let mut seen = self
                .raft_terms_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for ((topic, partition), m) in cluster.replica_metrics() {
                let labels = PartitionLabels {
                    topic: topic.to_string(),
                    partition: partition.to_string(),
                };
                let leader = m.state == openraft::ServerState::Leader;
                self.raft_leader
                    .get_or_create(&labels)
                    .set(u64::from(leader));
                self.raft_term.get_or_create(&labels).set(m.current_term);
                self.raft_applied_index
                    .get_or_create(&labels)
                    .set(m.last_applied.map_or(0, |l| l.index));
                self.raft_log_end_index
                    .get_or_create(&labels)
                    .set(m.last_log_index.unwrap_or(0));
                let key = (topic.to_string(), partition);
                if let Some(before) = seen.insert(key, m.current_term) {
                    self.raft_terms
                        .inc_by(m.current_term.saturating_sub(before));
                }
                let end = m.last_log_index.unwrap_or(0);
                for (follower, matched) in m.replication.iter().flatten() {
                    if *follower == cluster.node_id {
                        continue;
                    }
                    let held = matched.map_or(0, |l| l.index + 1);
                    self.raft_follower_lag
                        .get_or_create(&FollowerLabels {
                            topic: topic.to_string(),
                            partition: partition.to_string(),
                            follower: follower.to_string(),
                        })
                        .set((end + 1).saturating_sub(held));
                }
            }
        }
        for f in [&self.group_committed, &self.group_lag] {
            f.clear();
        }
        let mut disk = 0;
        for topic in ctx.topics.list() {
            for (p, log) in topic.partitions.iter().enumerate() {
                let s = log.stats();
                let labels = PartitionLabels {
                    topic: topic.name.to_string(),
                    partition: p.to_string(),
                };
                self.partition_end
                    .get_or_create(&labels)
                    .set(s.high_watermark);
                self.partition_durable
                    .get_or_create(&labels)
                    .set(log.durable_offset());
                self.partition_start
                    .get_or_create(&labels)
                    .set(s.log_start_offset);
                self.partition_bytes
                    .get_or_create(&labels)
                    .set(s.size_bytes);
                self.partition_producers
                    .get_or_create(&labels)
                    .set(log.producers() as u64);
                disk += s.size_bytes;
            }
        }
        self.disk_bytes.set(disk + ctx.groups.offsets().log_size());
        for g in ctx.groups.list() {
            for (tp, committed) in ctx.groups.offsets().of_group(&g.group) {
                let end = ctx
                    .topics
                    .partition(&tp.topic, tp.partition)
                    .map(|l| l.high_watermark())
                    .unwrap_or(committed);
                let labels = GroupLabels {
                    group: g.group.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition.to_string(),
                };
                self.group_committed.get_or_create(&labels).set(committed);
                self.group_lag
                    .get_or_create(&labels)
                    .set(end.saturating_sub(committed));
            }
        }
    }
}

/// What the HTTP endpoint serves: readiness, and the broker once it is open.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    ctx: OnceLock<Arc<Context>>,
}

impl Health {
    /// Recovery is done and the broker accepts clients.
    pub fn set_ready(&self, ctx: Arc<Context>) {
        let _ = self.ctx.set(ctx);
        self.ready.store(true, Ordering::Release);
    }
}

/// Serves `/metrics` and `/health` until the task is dropped.
/// Who may read the HTTP endpoint, and how it is reached.
#[derive(Debug, Clone, Default)]
pub struct HttpSecurity {
    /// Serve over TLS with the client listener's certificate.
    pub tls: Option<Arc<crate::tls::Reloader>>,
    /// `user:password` that /metrics requires (basic authentication); /health stays open.
    pub basic_auth: Option<String>,
}

pub async fn serve_http(listener: TcpListener, health: Arc<Health>, security: HttpSecurity) {
    let slots = Arc::new(Semaphore::new(64));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        let (health, security) = (health.clone(), security.clone());
        tokio::spawn(async move {
            let auth = security.basic_auth.as_deref();
            let served = async {
                match &security.tls {
                    None => answer(socket, &health, auth).await,
                    Some(tls) => match tls.acceptor().accept(socket).await {
                        Ok(stream) => answer(stream, &health, auth).await,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "metrics: TLS handshake failed");
                            Ok(())
                        }
                    },
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
            drop(permit);
        });
    }
}

/// Whether the request's head carries `Authorization: Basic` with exactly `expected`.
fn authorized(head: &str, expected: &str) -> bool {
    use base64::Engine;
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .filter_map(|(_, value)| value.trim().strip_prefix("Basic "))
        .filter_map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .any(|given| rill_protocol::scram::constant_time_eq(&given, expected.as_bytes()))
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    health: &Health,
    basic_auth: Option<&str>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        if socket.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    let line =
        String::from_utf8_lossy(buf.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let ready = health.ready.load(Ordering::Acquire);
    let head = String::from_utf8_lossy(&buf);
    let denied = path != "/health" && basic_auth.is_some_and(|a| !authorized(&head, a));
    let (status, body) = match (method, path) {
        _ if denied => ("401 Unauthorized", "authentication required\n".to_string()),
        ("GET", "/health") if !ready => ("503 Service Unavailable", "recovering\n".to_string()),
        ("GET", "/health") => {
            let cluster = health.ctx.get().and_then(|c| c.cluster.as_ref());
            match cluster.map(|c| c.readiness()) {
                Some(Err(why)) => ("503 Service Unavailable", format!("{why}\n")),
                Some(Ok(())) | None => ("200 OK", "ok\n".to_string()),
            }
        }
        ("GET", "/metrics") => (
            "200 OK",
            global().render(health.ctx.get().map(|c| c.as_ref())),
        ),
        ("GET", _) => (
            "404 Not Found",
            "not found: try /metrics or /health\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{}Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if denied {
            "WWW-Authenticate: Basic realm=\"rill\"\r\n"
        } else {
            ""
        },
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}
