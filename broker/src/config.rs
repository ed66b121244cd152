//! Broker configuration: built-in defaults, then an optional TOML file, then command-line
//! flags (flags win). `rilld --help` documents every setting; `rilld --print-config` shows the
//! effective result. Unknown keys in the file are an error naming the key and its line.

use crate::log::LogConfig;
use clap::Parser;
use rill_protocol::FsyncPolicy;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The address `rilld` listens on when not told otherwise, and `rill` connects to by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";
/// Where `/metrics` and `/health` are served by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7172";
/// Where Kafka clients are served by default: Kafka's own port.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to accept client connections on.
    pub listen: SocketAddr,
    /// Where topics, partition logs and metadata are stored.
    pub data_dir: PathBuf,
    /// Largest request frame accepted, in bytes; larger ones get an error and the connection closes.
    pub max_frame_bytes: u32,
    /// Most client connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Most connections from one client address at once (0: no limit); one more is closed
    /// on arrival (logged, `rill_connections_refused`).
    pub max_connections_per_ip: usize,
    /// Most connections authenticated as one principal at once (0: no limit); one more gets
    /// `TooManyConnections` at login and is closed.
    pub max_connections_per_principal: usize,
    /// Most requests one connection may have in progress; further ones wait to be read.
    pub max_in_flight: usize,
    /// Bytes of responses one connection may have in progress (a fetch counts at its largest
    /// possible response); a client that stops reading holds at most this much.
    pub max_connection_buffer_bytes: usize,
    /// Close a connection that sends nothing for this many milliseconds (0: never).
    pub idle_timeout_ms: u64,
    /// Produced bytes the broker holds at most while they wait for the disk; beyond it,
    /// producing connections are not read until room frees up (backpressure).
    pub max_produce_queue_bytes: usize,
    /// The same bound for each partition.
    pub max_partition_queue_bytes: usize,
    /// Default log level (trace, debug, info, warn, error); RUST_LOG overrides it.
    pub log_level: String,
    /// Log line format: "text" or "json".
    pub log_format: String,
    /// Address of the HTTP endpoint serving /metrics (Prometheus) and /health, or "off".
    pub metrics_listen: String,
    /// Address of the Kafka-protocol listener, or "off".
    pub kafka_listen: String,
    /// `host:port` that Kafka clients are told to connect to (Metadata); absent: the bound
    /// address (a wildcard bind advertises the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_advertise: Option<String>,
    /// Serve /metrics and /health over TLS, with the `[tls]` certificate.
    pub metrics_tls: bool,
    /// `user:password` that /metrics requires (HTTP basic authentication; /health stays open
    /// for probes). Better given through RILL_METRICS_BASIC_AUTH than written in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_basic_auth: Option<String>,
    /// Storage defaults; topics may override some of them.
    pub storage: StorageConfig,
    /// Consumer-group coordination.
    pub groups: GroupsConfig,
    /// Replication across several rilld nodes; absent: a single-node broker.
    pub cluster: Option<ClusterConfig>,
    /// TLS on the client listener; absent: plaintext.
    pub tls: Option<TlsConfig>,
    /// Client authentication (SASL SCRAM) and who the superusers are.
    pub auth: AuthConfig,
    /// Serve clients on a non-loopback address without TLS and authentication. Off by default:
    /// rilld refuses to start so exposed unless told this explicitly, and warns on every start
    /// with it on.
    pub allow_anonymous: bool,
    /// For tests only (`--test-write-rate`, never from a file): throttle partition-log writes
    /// to this many bytes per second.
    #[serde(skip)]
    pub test_write_rate: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// How long a group with no members waits after its first join for more members before it
    /// assigns partitions (each newcomer extends the wait, never past the rebalance deadline).
    /// Kafka's `group.initial.rebalance.delay.ms`; 0 assigns at once.
    pub initial_rebalance_delay_ms: u64,
    /// Most consumer groups with members at once; a join that would create one more gets
    /// `TooManyGroups`.
    pub max_groups: usize,
    /// Most members of one group (ids issued to first joins count until they expire); a join
    /// beyond it gets `GroupFull`.
    pub max_members: usize,
    /// The committed-offsets log is compacted (its live entries written again, the rest
    /// deleted) once it holds more than this many bytes and four times its live entries.
    pub offsets_compact_bytes: u64,
}

/// Client authentication (`[auth]`, or `--auth`, `--superuser`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every client must authenticate (SASL SCRAM-SHA-256 or -512) before any other request.
    pub enabled: bool,
    /// Users allowed everything, user management included. One without credentials gets them
    /// on start from RILL_SUPERUSER_PASSWORD.
    pub superusers: Vec<String>,
}

/// TLS settings of the client listener (`[tls]`, or `--tls-cert`, `--tls-key`,
/// `--tls-client-ca`). The files are read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the broker's certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CAs that sign client certificates. Set: every client must present a
    /// certificate they signed (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Largest node id: producer ids handed out by a node carry its id above bit 44, so ids from
/// different nodes never meet (`handlers/producers.rs`).
pub const MAX_NODE_ID: u64 = (1 << 18) - 1;

/// Settings of a node in a cluster (`[cluster]`, or `--node-id`, `--cluster-listen`, `--peers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: unique in the cluster, never reused for another machine's data.
    pub node_id: u64,
    /// PEM file with the CA that signs every node's certificate. Set: node-to-node traffic is
    /// mutual TLS, each node presenting its `[tls]` certificate, which must name the address
    /// the other nodes reach it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Address for node-to-node traffic (Raft), apart from the client listener.
    pub listen: SocketAddr,
    /// Every node of the cluster at start, this one included: node id -> cluster address.
    pub peers: std::collections::BTreeMap<u64, String>,
    /// Interval of Raft heartbeats, in ms; a group elects a new leader after 6 to 8 silent
    /// intervals (see `raft::Timing`).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Replication factor of topics created without one (capped at the number of nodes).
    #[serde(default = "default_replication_factor")]
    pub default_replication_factor: u32,
    /// How long a partition's preferred replica (its first) must have been a caught-up
    /// follower before it takes the leadership back, in ms; 0 turns leader rebalancing off.
    #[serde(default = "default_leader_rebalance_ms")]
    pub leader_rebalance_ms: u64,
}

/// 30 s: a node that returns takes its preferred partitions back soon, but not while it may
/// still be flapping. Each move pauses that partition's produce for about one election.
fn default_leader_rebalance_ms() -> u64 {
    30_000
}

/// 150 ms: a leader's death is answered in 0.9-1.2 s of silence, which keeps failover well
/// under the 3 s users are promised even when the first vote splits (openraft 0.9 then waits
/// another election timeout).
fn default_heartbeat_ms() -> u64 {
    150
}

fn default_replication_factor() -> u32 {
    3
}

impl ClusterConfig {
    /// Raft timing from the heartbeat interval.
    pub fn timing(&self) -> crate::raft::Timing {
        crate::raft::Timing::from_heartbeat(self.heartbeat_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 || self.node_id > MAX_NODE_ID {
            return invalid(format!(
                "cluster node_id must be between 1 and {MAX_NODE_ID}; got {}",
                self.node_id
            ));
        }
        if let Some(id) = self.peers.keys().find(|id| **id == 0 || **id > MAX_NODE_ID) {
            return invalid(format!(
                "cluster peer ids must be between 1 and {MAX_NODE_ID}; got {id}"
            ));
        }
        if !self.peers.contains_key(&self.node_id) {
            return invalid(format!(
                "cluster peers must include this node ({}); got ids {:?}",
                self.node_id,
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        if self.heartbeat_ms < 10 {
            return invalid("cluster heartbeat_ms must be at least 10".into());
        }
        if self.default_replication_factor == 0 {
            return invalid("cluster default_replication_factor must be at least 1".into());
        }
        Ok(())
    }
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_peers(s: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut peers = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=ADDRESS"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer id {id} given twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            initial_rebalance_delay_ms: 3000,
            max_groups: 100_000,
            max_members: 1000,
            offsets_compact_bytes: crate::groups::offsets::DEFAULT_COMPACT_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Roll a partition's active segment before it grows past this many bytes.
    pub segment_bytes: u64,
    /// Bytes of log between two entries of the sparse offset index.
    pub index_interval_bytes: u64,
    /// "always" (fsync before acknowledging, group-committed) or "interval:MS".
    #[serde(with = "as_string")]
    pub fsync: FsyncPolicy,
    /// Default retention by age: delete sealed segments whose newest record is older than this
    /// many milliseconds (0: keep forever).
    pub retention_ms: u64,
    /// Default retention by size: delete a partition's oldest sealed segments while it is larger
    /// than this many bytes (0: no limit).
    pub retention_bytes: u64,
    /// How often retention is checked, in milliseconds.
    pub retention_check_interval_ms: u64,
    /// Forget an idempotent producer's sequence numbers on a partition after this many
    /// milliseconds without a write from it there (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
}

/// A listener setting: `host:port`, or `off` (or empty) for none.
fn listen_or_off(setting: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match value {
        "off" | "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "{setting} must be host:port or \"off\", got {addr:?}"
            ))
        }),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7171))),
            data_dir: PathBuf::from("rill-data"),
            max_frame_bytes: 16 << 20,
            max_connections: 1024,
            max_connections_per_ip: 0,
            max_connections_per_principal: 0,
            max_in_flight: 256,
            max_connection_buffer_bytes: 64 << 20,
            idle_timeout_ms: 600_000,
            max_produce_queue_bytes: 256 << 20,
            max_partition_queue_bytes: 32 << 20,
            log_level: "info".into(),
            log_format: "text".into(),
            metrics_listen: DEFAULT_METRICS_LISTEN.into(),
            kafka_listen: DEFAULT_KAFKA_LISTEN.into(),
            kafka_advertise: None,
            metrics_tls: false,
            metrics_basic_auth: None,
            storage: StorageConfig::default(),
            groups: GroupsConfig::default(),
            cluster: None,
            tls: None,
            auth: AuthConfig::default(),
            allow_anonymous: false,
            test_write_rate: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            retention_check_interval_ms: 60_000,
            producer_id_expiration_ms: 24 * 3600 * 1000,
        }
    }
}

mod as_string {
    use rill_protocol::FsyncPolicy;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &FsyncPolicy, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Command-line flags of `rilld`. Each overrides the matching setting of the file.
#[derive(Debug, Parser)]
#[command(
    name = "rilld",
    version,
    about = "Rill broker: a persistent, log-structured message broker.",
    after_help = "With no arguments rilld listens on 127.0.0.1:7171 and stores data in ./rill-data.\n\
                  Settings come from built-in defaults, then --config FILE, then these flags."
)]
pub struct Args {
    /// TOML configuration file (see rill.toml in the repository for every key).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check every segment, index and topic metadata file in the data directory of a stopped
    /// broker, print what is damaged and exit: 0 if nothing is, 1 if something is, 2 if the
    /// check could not run (for example, a broker holds the directory). Writes nothing.
    #[arg(long)]
    pub check: bool,
    /// Address to listen on [default: 127.0.0.1:7171]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./rill-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request frame in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Most concurrent client connections [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections from one client address, 0 for no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Most connections authenticated as one principal, 0 for no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_principal: Option<usize>,
    /// Most requests in progress per connection [default: 256].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Response bytes in progress per connection [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub max_connection_buffer_bytes: Option<usize>,
    /// Close connections idle this many ms, 0 for never [default: 600000].
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Produced bytes waiting for the disk, broker-wide, before producers are slowed
    /// [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub max_produce_queue_bytes: Option<usize>,
    /// Produced bytes waiting for the disk per partition [default: 33554432].
    #[arg(long, value_name = "BYTES")]
    pub max_partition_queue_bytes: Option<usize>,
    /// For tests only: throttle writes to partition logs to this many bytes per second, as a
    /// slow disk would be.
    #[arg(long, value_name = "BYTES_PER_SEC", hide = true)]
    pub test_write_rate: Option<u64>,
    /// Default segment size in bytes [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Bytes between sparse index entries [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub index_interval_bytes: Option<u64>,
    /// Default durability: "always" (fsync before ack) or "interval:MS" [default: always].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,
    /// Default retention by age in ms, 0 to keep forever [default: 604800000 = 7 days].
    #[arg(long, value_name = "MS")]
    pub retention_ms: Option<u64>,
    /// Default retention by size per partition in bytes, 0 for no limit [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
    /// How often retention is checked, in ms [default: 60000].
    #[arg(long, value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Log level: trace, debug, info, warn or error [default: info]; RUST_LOG overrides it.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// HTTP address for /metrics and /health, or "off" [default: 127.0.0.1:7172].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Address for Kafka clients (Kafka's wire protocol), or "off" [default: 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR")]
    pub kafka_listen: Option<String>,
    /// HOST:PORT Kafka clients are told to connect to [default: the --kafka-listen address].
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertise: Option<String>,
    /// Serve /metrics and /health over TLS with the --tls-cert certificate.
    #[arg(long)]
    pub metrics_tls: bool,
    /// USER:PASSWORD that /metrics requires (HTTP basic auth); /health stays open.
    #[arg(
        long,
        env = "RILL_METRICS_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub metrics_basic_auth: Option<String>,
    /// A new consumer group waits this long for more members before its first assignment, in
    /// ms; 0 assigns at once [default: 3000].
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Most consumer groups with members at once [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_groups: Option<usize>,
    /// Most members of one consumer group [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_group_members: Option<usize>,
    /// Compact the committed-offsets log beyond this many bytes [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    pub offsets_compact_bytes: Option<u64>,
    /// Run as node N of a cluster (with --cluster-listen and --peers).
    #[arg(long, value_name = "N", requires_all = ["cluster_listen", "peers"])]
    pub node_id: Option<u64>,
    /// Address for node-to-node traffic of this cluster node.
    #[arg(long, value_name = "ADDR", requires = "node_id")]
    pub cluster_listen: Option<SocketAddr>,
    /// Every node of the cluster, this one included: 1=ADDR,2=ADDR,... (cluster addresses).
    #[arg(long, value_name = "PEERS", value_parser = parse_peers, requires = "node_id")]
    pub peers: Option<std::collections::BTreeMap<u64, String>>,
    /// CA (PEM) signing every node's certificate: node-to-node traffic becomes mutual TLS with
    /// the --tls-cert certificate.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) for TLS on the client listener (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CAs whose client certificates are accepted; set, every client must
    /// present one (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Every client must authenticate with SASL SCRAM before any other request.
    #[arg(long)]
    pub auth: bool,
    /// A superuser (repeatable); one without credentials gets them from
    /// RILL_SUPERUSER_PASSWORD on start.
    #[arg(long, value_name = "USER")]
    pub superuser: Vec<String>,
    /// Serve clients on a non-loopback address without TLS and authentication (refused
    /// otherwise); logged at warn on every start.
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Raft heartbeat interval in ms; failover takes 6 to 8 of them plus an election
    /// [default: 150].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// How long a partition's preferred replica must have been a caught-up follower before
    /// it takes the leadership back, in ms; 0: never [default: 30000].
    #[arg(long, value_name = "MS")]
    pub leader_rebalance_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file named by `--config` (if any), then flags.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        let s = &mut config.storage;
        macro_rules! set {
            ($($flag:ident => $field:expr),* $(,)?) => { $(if let Some(v) = args.$flag.clone() { $field = v; })* };
        }
        set!(
            segment_bytes => s.segment_bytes,
            index_interval_bytes => s.index_interval_bytes,
            fsync => s.fsync,
            retention_ms => s.retention_ms,
            retention_bytes => s.retention_bytes,
            retention_check_interval_ms => s.retention_check_interval_ms,
        );
        set!(
            listen => config.listen,
            data_dir => config.data_dir,
            max_frame_bytes => config.max_frame_bytes,
            max_connections => config.max_connections,
            max_connections_per_ip => config.max_connections_per_ip,
            max_connections_per_principal => config.max_connections_per_principal,
            max_in_flight => config.max_in_flight,
            max_connection_buffer_bytes => config.max_connection_buffer_bytes,
            idle_timeout_ms => config.idle_timeout_ms,
            max_produce_queue_bytes => config.max_produce_queue_bytes,
            max_partition_queue_bytes => config.max_partition_queue_bytes,
            log_level => config.log_level,
            log_format => config.log_format,
            metrics_listen => config.metrics_listen,
            kafka_listen => config.kafka_listen,
            group_initial_rebalance_delay_ms => config.groups.initial_rebalance_delay_ms,
            max_groups => config.groups.max_groups,
            max_group_members => config.groups.max_members,
            offsets_compact_bytes => config.groups.offsets_compact_bytes,
        );
        if let (Some(node_id), Some(listen), Some(peers)) =
            (args.node_id, args.cluster_listen, args.peers.clone())
        {
            let old = config.cluster.take();
            config.cluster = Some(ClusterConfig {
                node_id,
                listen,
                peers,
                tls_ca: old.as_ref().and_then(|c| c.tls_ca.clone()),
                heartbeat_ms: old
                    .as_ref()
                    .map_or(default_heartbeat_ms(), |c| c.heartbeat_ms),
                default_replication_factor: old
                    .as_ref()
                    .map_or(default_replication_factor(), |c| {
                        c.default_replication_factor
                    }),
                leader_rebalance_ms: old
                    .as_ref()
                    .map_or(default_leader_rebalance_ms(), |c| c.leader_rebalance_ms),
            });
        }
        if let (Some(ms), Some(c)) = (args.heartbeat_ms, config.cluster.as_mut()) {
            c.heartbeat_ms = ms;
        }
        if let (Some(ms), Some(c)) = (args.leader_rebalance_ms, config.cluster.as_mut()) {
            c.leader_rebalance_ms = ms;
        }
        if let (Some(ca), Some(c)) = (args.cluster_tls_ca.clone(), config.cluster.as_mut()) {
            c.tls_ca = Some(ca);
        }
        if let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) {
            let client_ca = args
                .tls_client_ca
                .clone()
                .or_else(|| config.tls.as_ref().and_then(|t| t.client_ca.clone()));
            config.tls = Some(TlsConfig {
                cert,
                key,
                client_ca,
            });
        }
        config.allow_anonymous |= args.allow_anonymous;
        config.auth.enabled |= args.auth;
        config
            .auth
            .superusers
            .extend(args.superuser.iter().cloned());
        config.metrics_tls |= args.metrics_tls;
        if let Some(auth) = args.metrics_basic_auth.clone() {
            config.metrics_basic_auth = Some(auth);
        }
        config.test_write_rate = args.test_write_rate;
        if let Some(a) = args.kafka_advertise.clone() {
            config.kafka_advertise = Some(a);
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log_config().validate().map_err(ConfigError::Invalid)?;
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must be at least 1024".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            )));
        }
        self.metrics_addr()?;
        self.kafka_addr()?;
        if self.metrics_tls && self.tls.is_none() {
            return Err(ConfigError::Invalid(
                "metrics_tls needs a certificate: set [tls] cert and key (or --tls-cert, --tls-key)"
                    .into(),
            ));
        }
        if let Some(auth) = &self.metrics_basic_auth
            && auth
                .split_once(':')
                .is_none_or(|(u, p)| u.is_empty() || p.is_empty())
        {
            return Err(ConfigError::Invalid(
                "metrics_basic_auth must be USER:PASSWORD, both non-empty".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if self.storage.retention_check_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "retention_check_interval_ms must be at least 1".into(),
            ));
        }
        if self.max_connection_buffer_bytes < (self.max_frame_bytes as usize) {
            return Err(ConfigError::Invalid(
                "max_connection_buffer_bytes must be at least max_frame_bytes".into(),
            ));
        }
        if self.max_produce_queue_bytes < self.max_frame_bytes as usize
            || self.max_partition_queue_bytes < self.max_frame_bytes as usize
        {
            return Err(ConfigError::Invalid(
                "max_produce_queue_bytes and max_partition_queue_bytes must be at least max_frame_bytes".into(),
            ));
        }
        if self.groups.offsets_compact_bytes < 64 << 10 {
            return Err(ConfigError::Invalid(
                "offsets_compact_bytes must be at least 65536".into(),
            ));
        }
        self.check_exposure()?;
        if self.max_connections == 0 || self.max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "max_connections and max_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Refuses a listener off loopback that anyone reaching it could use without credentials,
    /// unless `allow_anonymous` says that is meant.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cluster
            && c.tls_ca.is_some()
            && self.tls.is_none()
        {
            return Err(ConfigError::Invalid(
                "cluster TLS (tls_ca, --cluster-tls-ca) needs this node's certificate and key in [tls] (--tls-cert, --tls-key)".into(),
            ));
        }
        if self.allow_anonymous {
            return Ok(());
        }
        // The cluster listener is protected by mutual TLS between the nodes, whatever the
        // client listener has.
        if let Some(c) = &self.cluster
            && c.tls_ca.is_none()
            && !c.listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve the cluster listener on {} without TLS between the nodes: \
                 anyone who reaches it could join the cluster or read its data. Give every \
                 node a certificate (--tls-cert, --tls-key) and the CA that signs them \
                 (--cluster-tls-ca), bind a loopback address, or pass --allow-anonymous",
                c.listen
            )));
        }
        if let Ok(Some(addr)) = self.metrics_addr()
            && !addr.ip().is_loopback()
            && self.metrics_basic_auth.is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve /metrics on {addr} without basic authentication: it names \
                 every topic and group. Set metrics_basic_auth (RILL_METRICS_BASIC_AUTH), bind \
                 a loopback address, or pass --allow-anonymous"
            )));
        }
        if self.tls.is_some() && self.auth.enabled {
            return Ok(());
        }
        let listeners = [
            Some(("client listener", self.listen)),
            self.kafka_addr()?.map(|a| ("Kafka listener", a)),
        ];
        for (what, addr) in listeners.into_iter().flatten() {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve the {what} on {addr} without TLS and authentication: \
                     anyone who reaches it could read, write and delete every topic and group. \
                     configure [tls] and [auth] (--tls-cert, --tls-key, --auth), bind a \
                     loopback address, or pass --allow-anonymous (allow_anonymous = true) to \
                     accept anonymous access knowingly"
                )));
            }
        }
        Ok(())
    }

    /// The Kafka listener's address, or `None` when it is off.
    pub fn kafka_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        listen_or_off("kafka_listen", &self.kafka_listen)
    }

    /// The metrics endpoint's address, or `None` when it is off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        listen_or_off("metrics_listen", &self.metrics_listen)
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.storage.segment_bytes,
            index_interval_bytes: self.storage.index_interval_bytes,
            fsync: self.storage.fsync,
            retention_ms: self.storage.retention_ms,
            retention_bytes: self.storage.retention_bytes,
            producer_expiration_ms: self.storage.producer_id_expiration_ms,
        }
    }

    pub fn group_limits(&self) -> crate::groups::GroupLimits {
        crate::groups::GroupLimits {
            initial_delay: std::time::Duration::from_millis(self.groups.initial_rebalance_delay_ms),
            max_groups: self.groups.max_groups,
            max_members: self.groups.max_members,
        }
    }

    /// The configuration as TOML, secrets masked (`metrics_basic_auth` keeps its user only).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if let Some(auth) = &mut shown.metrics_basic_auth {
            let user = auth.split(':').next().unwrap_or_default().to_string();
            *auth = format!("{user}:<hidden>");
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("rilld").chain(list.iter().copied()))
    }

    #[test]
    fn no_arguments_gives_the_documented_defaults() {
        let c = Config::load(&args(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("rill-data"));
        assert_eq!(c.storage.fsync, FsyncPolicy::Always);
        assert_eq!(c.groups.initial_rebalance_delay_ms, 3000, "Kafka's default");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rill.toml");
        std::fs::write(
            &file,
            "max_in_flight = 7\n[storage]\nfsync = \"interval:50\"\nsegment_bytes = 65536\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = Config::load(&args(&["--config", path, "--segment-bytes", "8192"])).unwrap();
        assert_eq!(c.max_in_flight, 7);
        assert_eq!(c.storage.fsync, FsyncPolicy::Interval { ms: 50 });
        assert_eq!(c.storage.segment_bytes, 8192, "the flag wins over the file");
        assert_eq!(c.max_connections, Config::default().max_connections);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rill.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nsegmnet_bytes = 5\n").unwrap();
        let err = Config::load(&args(&["--config", file.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("segmnet_bytes") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn cluster_settings_come_from_the_file_or_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rill.toml");
        std::fs::write(
            &file,
            "[cluster]\nnode_id = 2\nlisten = \"127.0.0.1:7272\"\nheartbeat_ms = 100\n[cluster.peers]\n1 = \"127.0.0.1:7271\"\n2 = \"127.0.0.1:7272\"\n",
        )
        .unwrap();
        let c = Config::load(&args(&["--config", file.to_str().unwrap()])).unwrap();
        let cluster = c.cluster.clone().unwrap();
        assert_eq!((cluster.node_id, cluster.heartbeat_ms), (2, 100));
        assert_eq!(cluster.peers.len(), 2);
        assert_eq!(toml::from_str::<Config>(&c.to_toml()).unwrap(), c);
        let c = Config::load(&args(&[
            "--node-id",
            "3",
            "--cluster-listen",
            "127.0.0.1:9003",
            "--peers",
            "1=127.0.0.1:9001, 2=127.0.0.1:9002,3=127.0.0.1:9003",
        ]))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node_id, 3);
        assert_eq!(
            cluster.peers.get(&2).map(String::as_str),
            Some("127.0.0.1:9002")
        );
        assert_eq!(cluster.timing().election_min_ms, 300);
        // This node must be among the peers; peers must parse.
        let err = Config::load(&args(&[
            "--node-id",
            "4",
            "--cluster-listen",
            "127.0.0.1:9004",
            "--peers",
            "1=a:1",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("must include this node"), "{err}");
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_peers("x=a:1").unwrap_err().contains("not a number"));
        assert!(
            Config::load(&args(&[])).unwrap().cluster.is_none(),
            "no flags: a single node"
        );
    }

    #[test]
    fn exposure_without_protection_is_refused_unless_allowed() {
        let err = |list: &[&str]| Config::load(&args(list)).unwrap_err().to_string();
        let e = err(&["--listen", "0.0.0.0:7171"]);
        assert!(
            e.contains("0.0.0.0:7171") && e.contains("--allow-anonymous"),
            "{e}"
        );
        let e = err(&["--kafka-listen", "0.0.0.0:9092"]);
        assert!(
            e.contains("Kafka listener on 0.0.0.0:9092") && e.contains("--allow-anonymous"),
            "{e}"
        );
        let e = err(&["--kafka-listen", "localhost"]);
        assert!(e.contains("kafka_listen must be host:port"), "{e}");
        let off = Config::load(&args(&["--kafka-listen", "off"])).unwrap();
        assert_eq!(off.kafka_addr().unwrap(), None);
        let e = err(&["--metrics-listen", "0.0.0.0:7172"]);
        assert!(
            e.contains("/metrics") && e.contains("metrics_basic_auth"),
            "{e}"
        );
        let e = err(&["--metrics-tls"]);
        assert!(e.contains("needs a certificate"), "{e}");
        let shown = Config::load(&args(&["--metrics-basic-auth", "prom:s3cret"]))
            .unwrap()
            .to_toml();
        assert!(
            shown.contains("prom:<hidden>") && !shown.contains("s3cret"),
            "{shown}"
        );
        let e = err(&["--metrics-basic-auth", "nopassword"]);
        assert!(e.contains("USER:PASSWORD"), "{e}");
        // The cluster listener needs TLS between the nodes, whatever the client listener has.
        let cluster = [
            "--node-id",
            "1",
            "--cluster-listen",
            "0.0.0.0:7180",
            "--peers",
            "1=10.0.0.1:7180",
        ];
        let e = err(&cluster);
        assert!(
            e.contains("cluster listener") && e.contains("--cluster-tls-ca"),
            "{e}"
        );
        let e = err(&[&cluster[..], &["--cluster-tls-ca", "ca.pem"]].concat());
        assert!(e.contains("needs this node's certificate"), "{e}");
        for ok in [
            &["--listen", "0.0.0.0:7171", "--allow-anonymous"][..],
            &[&cluster[..], &["--allow-anonymous"]].concat(),
            &[
                "--metrics-listen",
                "0.0.0.0:7172",
                "--metrics-basic-auth",
                "p:s",
            ],
        ] {
            assert!(Config::load(&args(ok)).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config::default();
        assert_eq!(toml::from_str::<Config>(&c.to_toml()).unwrap(), c);
    }
}

#[cfg(test)]
mod example_file {
    /// The example rill.toml in the repository must stay loadable and equal to the defaults.
    #[test]
    fn repository_example_matches_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rill.toml");
        assert_eq!(
            super::Config::from_file(&path).unwrap(),
            super::Config::default()
        );
    }
}
