//! `rill`: the command-line tool for a Rill broker.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use rill_client::{
    Admin, AssignmentStrategy, Client, Consumer, ConsumerConfig, FsyncPolicy, OffsetReset,
    PartitionReader, Producer, ProducerConfig, ProducerRecord, ResetTo, StartOffset, TopicConfig,
    acl,
};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

const DEFAULT_BROKER: &str = "127.0.0.1:7171";

/// `println!` that returns the write error instead of panicking, so a closed pipe
/// (`rill ... | head -1`) ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// Exit status of a command whose output pipe was closed: what a shell reports for a Unix tool
/// killed by SIGPIPE (128 + 13).
const BROKEN_PIPE_EXIT: u8 = 141;

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "rill",
    version,
    about = "Command-line tool for the Rill message broker."
)]
struct Cli {
    /// Broker address (host:port), or several comma-separated (a cluster's nodes: the first
    /// that answers is asked where each partition's leader is); also read from RILL_BROKER.
    #[arg(long, global = true, env = "RILL_BROKER", default_value = DEFAULT_BROKER)]
    broker: String,
    /// Print list and describe results as JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Connect with TLS, trusting the CA certificates in this PEM file; also RILL_TLS_CA.
    #[arg(long, global = true, env = "RILL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a broker that requires one (with --tls-key); also
    /// RILL_TLS_CERT.
    #[arg(long, global = true, env = "RILL_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert; also RILL_TLS_KEY.
    #[arg(
        long,
        global = true,
        env = "RILL_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Authenticate as this user (SASL SCRAM); the password from RILL_PASSWORD. Also RILL_USER.
    #[arg(long, global = true, env = "RILL_USER", value_name = "USER")]
    user: Option<String>,
    /// SCRAM mechanism for --user: SCRAM-SHA-512 (default) or SCRAM-SHA-256.
    #[arg(
        long,
        global = true,
        value_name = "MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    sasl_mechanism: String,
    /// The name the broker's certificate must hold, if not the host in --broker.
    #[arg(long, global = true, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input.
    #[command(
        after_help = "Examples:\n  printf 'a\\nb\\n' | rill produce orders\n  echo 'user-7:clicked' | rill produce orders --key-separator :"
    )]
    Produce(ProduceArgs),
    /// Print records, one value per line, from partitions or as a consumer-group member.
    #[command(
        after_help = "Examples:\n  rill consume orders --from-beginning --count 10\n  rill consume orders --partition 2 --offset 500\n  rill consume orders --group billing --idle-exit 3s"
    )]
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// A cluster's nodes and where partitions are led.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and delete the users of a broker that authenticates (superusers only).
    #[command(subcommand)]
    User(UserCommand),
    /// Add, remove and list access control entries (who may do what to which topic or group).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Set, remove and list per-principal rate quotas (requests over them are held back).
    #[command(subcommand)]
    Quota(QuotaCommand),
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Set a principal's quota ('*': everyone without one of their own); rates not given are
    /// unlimited. Sizes take K, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024), with or
    /// without a B.
    #[command(
        after_help = "Examples:\n  rill quota set --principal analytics --produce-rate 10MiB --fetch-rate 50MiB\n  rill quota set --principal '*' --request-rate 1000"
    )]
    Set {
        #[arg(long)]
        principal: String,
        /// Produced bytes per second.
        #[arg(long, value_parser = parse_size, value_name = "BYTES")]
        produce_rate: Option<u64>,
        /// Fetched bytes per second.
        #[arg(long, value_parser = parse_size, value_name = "BYTES")]
        fetch_rate: Option<u64>,
        /// Requests per second, of any kind.
        #[arg(long, value_name = "N")]
        request_rate: Option<u64>,
    },
    /// Remove a principal's quota.
    Remove {
        #[arg(long)]
        principal: String,
    },
    /// Every quota.
    List,
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// Allow (or with --deny, refuse) operations on a resource; a deny wins over any allow.
    #[command(
        after_help = "Examples:\n  rill acl add --principal billing --operation read,describe --topic orders\n  rill acl add --principal '*' --operation read --topic public. --prefix\n  rill acl add --principal billing --operation read --group billing\n  rill acl add --principal ops --operation create --cluster\n  rill acl add --deny --principal intern --operation delete --topic '*'"
    )]
    Add(AclArgs),
    /// Remove entries given exactly as they were added.
    Remove(AclArgs),
    /// List entries, all of them or those of a principal or resource.
    List(AclListArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("resource").required(true).args(["topic", "group", "cluster"]))]
struct AclArgs {
    /// A user name, or '*' for every principal.
    #[arg(long)]
    principal: String,
    /// read, write, create, delete, alter, describe or all; several separated by commas.
    #[arg(long, value_delimiter = ',', required = true)]
    operation: Vec<acl::Operation>,
    /// The topic ('*' for every topic; with --prefix, every topic starting with it).
    #[arg(long)]
    topic: Option<String>,
    /// The consumer group ('*' for every group; with --prefix, every group starting with it).
    #[arg(long)]
    group: Option<String>,
    /// The cluster: creating topics, moving partitions, managing ACLs, named producers.
    #[arg(long)]
    cluster: bool,
    /// Match every topic or group whose name starts with the one given.
    #[arg(long)]
    prefix: bool,
    /// Refuse instead of allow.
    #[arg(long)]
    deny: bool,
}

impl AclArgs {
    fn entries(self) -> anyhow::Result<Vec<acl::Acl>> {
        let (resource, name) = match (self.topic, self.group) {
            (Some(t), _) => (acl::ResourceType::Topic, t),
            (_, Some(g)) => (acl::ResourceType::Group, g),
            _ => (acl::ResourceType::Cluster, acl::CLUSTER.to_string()),
        };
        anyhow::ensure!(
            !(self.prefix && resource == acl::ResourceType::Cluster),
            "--prefix applies to --topic and --group"
        );
        let entries: Vec<acl::Acl> = self
            .operation
            .into_iter()
            .map(|operation| acl::Acl {
                principal: self.principal.clone(),
                resource,
                pattern: if self.prefix {
                    acl::PatternType::Prefix
                } else {
                    acl::PatternType::Literal
                },
                name: name.clone(),
                operation,
                permission: if self.deny {
                    acl::Permission::Deny
                } else {
                    acl::Permission::Allow
                },
            })
            .collect();
        for e in &entries {
            e.validate().map_err(anyhow::Error::msg)?;
        }
        Ok(entries)
    }
}

#[derive(Debug, Args)]
struct AclListArgs {
    /// Only entries of this principal ('*' lists those for everyone).
    #[arg(long)]
    principal: Option<String>,
    /// Only entries naming this topic.
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    topic: Option<String>,
    /// Only entries naming this group.
    #[arg(long, conflicts_with = "cluster")]
    group: Option<String>,
    /// Only entries on the cluster.
    #[arg(long)]
    cluster: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password comes from RILL_NEW_PASSWORD or the first line of stdin.
    #[command(
        after_help = "Example:\n  RILL_NEW_PASSWORD=s3cret rill --user admin user create billing"
    )]
    Create {
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Replace a user's password (RILL_NEW_PASSWORD or the first line of stdin).
    SetPassword {
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Delete a user; its connections stay open until they close.
    Delete {
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Users, their mechanisms, and which are superusers.
    List,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Each node: its address, whether it answers, how many partitions it leads and
    /// replicates; then the partitions without a leader (asking every node).
    #[command(
        after_help = "Examples:\n  rill --broker 127.0.0.1:7171,127.0.0.1:7181 cluster status\n  rill cluster status --json"
    )]
    Status,
    /// Remove a node from the cluster (after moving its partitions away with `topic reassign`);
    /// then stop its process.
    #[command(after_help = "Example:\n  rill cluster remove-node 4")]
    RemoveNode { node_id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Plain,
    KeyValue,
    Json,
}

/// One record to print, wherever it came from.
struct Printable<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: &'a [rill_client::Header],
}

/// Writes one record in the chosen format.
fn print_record(out: &mut impl Write, format: Format, r: Printable<'_>) -> std::io::Result<()> {
    match format {
        Format::Plain => out.write_all(r.value)?,
        Format::KeyValue => {
            out.write_all(r.key.unwrap_or_default())?;
            out.write_all(b"=")?;
            out.write_all(r.value)?;
        }
        Format::Json => {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.key.clone(),
                        h.value
                            .as_deref()
                            .map_or(serde_json::Value::Null, |v| text(v).into()),
                    )
                })
                .collect();
            let line = serde_json::json!({
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": r.key.map(text),
                "value": text(r.value),
                "headers": headers,
            });
            serde_json::to_writer(&mut *out, &line)?;
        }
    }
    out.write_all(b"\n")
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List groups with their state and member count.
    #[command(after_help = "Examples:\n  rill group list\n  rill group list --json")]
    List,
    /// Show a group's members, their partitions, and committed offset and lag per partition.
    #[command(
        after_help = "Examples:\n  rill group describe billing\n  rill group describe billing --json | jq '[.offsets[].lag] | add'"
    )]
    Describe { group: String },
    /// Set a group's committed offsets for every partition of a topic (the group must be empty).
    #[command(
        after_help = "Examples:\n  rill group reset-offsets billing --topic orders --to-earliest\n  rill group reset-offsets billing --topic orders --to-timestamp 1767225600000"
    )]
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, group = "target")]
        to_earliest: bool,
        #[arg(long, group = "target")]
        to_latest: bool,
        #[arg(long, group = "target", value_name = "OFFSET")]
        to_offset: Option<u64>,
        /// Milliseconds since the epoch.
        #[arg(long, group = "target", value_name = "MS")]
        to_timestamp: Option<i64>,
    },
    /// Delete a group's committed offsets (the group must be empty).
    #[command(after_help = "Example:\n  rill group delete billing")]
    Delete { group: String },
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    #[command(
        after_help = "Examples:\n  rill topic create orders --partitions 4 --fsync interval:100\n  rill topic create orders --partitions 6 --replication-factor 3   (a cluster)"
    )]
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (a cluster); the broker default if unset (1 on a single node).
        #[arg(long, short = 'r')]
        replication_factor: Option<u32>,
        /// Durability: "always" (fsync before ack) or "interval:MS"; the broker default if unset.
        #[arg(long)]
        fsync: Option<FsyncPolicy>,
        /// Segment size in bytes; the broker default if unset.
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Delete data older than this many ms (0: keep forever); the broker default if unset.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most this many bytes per partition (0: no limit); the broker default if unset.
        #[arg(long)]
        retention_bytes: Option<u64>,
    },
    /// List topics and their partition counts.
    #[command(after_help = "Examples:\n  rill topic list\n  rill topic list --json")]
    List,
    /// Show a topic's settings (fsync, segment size, retention) and each partition's offsets and size.
    #[command(
        after_help = "Examples:\n  rill topic describe orders\n  rill topic describe orders --json | jq '.partitions[].log_end_offset'"
    )]
    Describe { name: String },
    /// Delete a topic and all its data.
    #[command(after_help = "Example:\n  rill topic delete orders")]
    Delete { name: String },
    /// Change a live topic: grow its partitions, or change retention, segment size or fsync.
    #[command(
        after_help = "Examples:\n  rill topic alter orders --partitions 8\n  rill topic alter orders --retention-ms 3600000 --retention-bytes 1073741824\n  rill topic alter orders --fsync interval:100"
    )]
    Alter {
        name: String,
        /// The new, larger partition count.
        #[arg(long)]
        partitions: Option<u32>,
        /// Delete data older than this many ms (0: keep forever).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most this many bytes per partition (0: no limit).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Segment size in bytes (applies to new segments).
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Durability: "always" or "interval:MS".
        #[arg(long)]
        fsync: Option<FsyncPolicy>,
    },
    /// Move a partition to other nodes (a cluster): the new replicas catch up from the leader
    /// before the old ones are dropped; produce and fetch go on meanwhile.
    #[command(
        after_help = "Examples:\n  rill topic reassign orders --partition 0 --replicas 2,3,4\n  rill topic reassign orders --partition 0 --replicas 2,3,4 --no-wait"
    )]
    Reassign {
        name: String,
        #[arg(long, short)]
        partition: u32,
        /// The new replicas' node ids, comma-separated, the preferred leader first.
        #[arg(long, short, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
        /// Return once the move is recorded instead of waiting until it is done.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Args)]
struct ProduceArgs {
    topic: String,
    /// Read records from this file (one per line) instead of standard input.
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
    /// Use this key for every record.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Give up on a record not acknowledged this long after it was read, retries included
    /// (e.g. 30s, 2m). On the first record given up, rill stops reading its input and exits
    /// non-zero, saying how many records were not acknowledged.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "120s")]
    delivery_timeout: Duration,
    /// Compress each batch: none, gzip, snappy, lz4 or zstd (Kafka's compression.type).
    #[arg(long, value_parser = parse_compression, value_name = "CODEC", default_value = "none")]
    compression: rill_protocol::batch::compression::Compression,
}

fn parse_compression(s: &str) -> Result<rill_protocol::batch::compression::Compression, String> {
    rill_protocol::batch::compression::Compression::from_name(s)
        .ok_or_else(|| format!("unknown codec {s:?}: none, gzip, snappy, lz4 or zstd"))
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    topic: String,
    /// Start at each partition's first record (default: only new records).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long)]
    offset: Option<u64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Exit after printing this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Consume as a member of this consumer group (committing as it goes).
    #[arg(long, conflicts_with_all = ["offset", "partition"])]
    group: Option<String>,
    /// With --group: leave the group cleanly and exit after this long without a new record
    /// (e.g. 500ms, 3s, 1m).
    #[arg(long, requires = "group", value_parser = parse_duration, value_name = "DURATION")]
    idle_exit: Option<Duration>,
    /// Output: plain (value per line), key-value (key=value per line), or json (one object per
    /// line with topic, partition, offset, timestamp, key, value and headers).
    #[arg(long, value_enum, default_value = "plain")]
    format: Format,
    /// With --group: how partitions are divided among members.
    #[arg(long, requires = "group", default_value = "sticky")]
    strategy: AssignmentStrategy,
}

/// `10MB`, `5MiB`, `1.5G`, `2048`: bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 1048576, 10MB, 5MiB"))?;
    let scale: u64 = match unit.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?}: use K, M, G, Ki, Mi or Gi")),
    };
    let bytes = n * scale as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("size {s:?} must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

async fn quotas(client: Client, cmd: QuotaCommand, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    let rate = |r: Option<u64>, unit: &str| r.map_or("-".to_string(), |r| format!("{r}{unit}"));
    match cmd {
        QuotaCommand::Set {
            principal,
            produce_rate,
            fetch_rate,
            request_rate,
        } => {
            anyhow::ensure!(
                produce_rate.or(fetch_rate).or(request_rate).is_some(),
                "give at least one of --produce-rate, --fetch-rate, --request-rate (rill quota remove clears a quota)"
            );
            let quota = rill_client::Quota {
                produce_bytes_per_sec: produce_rate,
                fetch_bytes_per_sec: fetch_rate,
                requests_per_sec: request_rate,
            };
            admin.set_quota(&principal, Some(quota)).await?;
            outln!(
                "quota of {principal}: produce {} fetch {} requests {}",
                rate(produce_rate, " B/s"),
                rate(fetch_rate, " B/s"),
                rate(request_rate, "/s")
            );
        }
        QuotaCommand::Remove { principal } => {
            admin.set_quota(&principal, None).await?;
            outln!("removed the quota of {principal}");
        }
        QuotaCommand::List => {
            let all = admin.list_quotas().await?;
            if json {
                outln!("{}", serde_json::to_string(&all)?);
            } else {
                outln!(
                    "{:<24} {:>16} {:>16} {:>12}",
                    "PRINCIPAL",
                    "PRODUCE B/S",
                    "FETCH B/S",
                    "REQUESTS/S"
                );
                for (p, q) in all {
                    outln!(
                        "{:<24} {:>16} {:>16} {:>12}",
                        p,
                        rate(q.produce_bytes_per_sec, ""),
                        rate(q.fetch_bytes_per_sec, ""),
                        rate(q.requests_per_sec, "")
                    );
                }
            }
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 500ms, 3s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rill: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head -1`): stop quietly, as Unix tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            eprintln!("rill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    /// The client settings the flags ask for (TLS among them).
    fn client_config(&self) -> rill_client::ClientConfig {
        let tls = self.tls_ca.as_ref().map(|ca| {
            let mut tls = rill_client::TlsSettings::new(ca);
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(cert, key);
            }
            if let Some(name) = &self.tls_server_name {
                tls = tls.server_name(name);
            }
            tls
        });
        let sasl = self.user.as_ref().map(|user| rill_client::SaslSettings {
            mechanism: rill_client::SaslMechanism::from_name(&self.sasl_mechanism)
                .unwrap_or(rill_client::SaslMechanism::ScramSha512),
            user: user.clone(),
            password: std::env::var("RILL_PASSWORD").unwrap_or_default(),
        });
        rill_client::ClientConfig {
            tls,
            sasl,
            ..rill_client::ClientConfig::default()
        }
    }
}

/// A new password: RILL_NEW_PASSWORD, or the first line of standard input.
fn new_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("RILL_NEW_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(
        !p.is_empty(),
        "no password: set RILL_NEW_PASSWORD or give it on stdin"
    );
    Ok(p)
}

async fn user(client: Client, cmd: UserCommand, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        UserCommand::Create { name: user } => {
            admin.create_user(&user, &new_password()?).await?;
            outln!("created user {user}");
        }
        UserCommand::SetPassword { name: user } => {
            admin.set_password(&user, &new_password()?).await?;
            outln!("changed the password of {user}");
        }
        UserCommand::Delete { name: user } => {
            admin.delete_user(&user).await?;
            outln!("deleted user {user}");
        }
        UserCommand::List => {
            let users = admin.list_users().await?;
            if json {
                outln!("{}", serde_json::to_string(&users)?);
            } else {
                outln!("{:<24} {:<32} SUPERUSER", "USER", "MECHANISMS");
                for u in users {
                    let mechs: Vec<&str> = u.mechanisms.iter().map(|m| m.name()).collect();
                    outln!(
                        "{:<24} {:<32} {}",
                        u.user,
                        mechs.join(","),
                        if u.superuser { "yes" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

async fn acls(client: Client, cmd: AclCommand, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        AclCommand::Add(args) => {
            let entries = args.entries()?;
            let asked = entries.len();
            let added = admin.create_acls(entries).await?;
            outln!(
                "added {added} entries ({} already there)",
                asked as u32 - added.min(asked as u32)
            );
        }
        AclCommand::Remove(args) => {
            let removed = admin.delete_acls(args.entries()?).await?;
            outln!("removed {removed} entries");
        }
        AclCommand::List(args) => {
            let (resource, name) = match (args.topic, args.group, args.cluster) {
                (Some(t), _, _) => (Some(acl::ResourceType::Topic), Some(t)),
                (_, Some(g), _) => (Some(acl::ResourceType::Group), Some(g)),
                (_, _, true) => (Some(acl::ResourceType::Cluster), None),
                _ => (None, None),
            };
            let filter = acl::AclFilter {
                principal: args.principal,
                resource,
                name,
            };
            let entries = admin.list_acls(filter).await?;
            if json {
                outln!("{}", serde_json::to_string(&entries)?);
            } else {
                outln!(
                    "{:<6} {:<20} {:<9} {:<8} {:<8} NAME",
                    "",
                    "PRINCIPAL",
                    "OPERATION",
                    "RESOURCE",
                    "PATTERN"
                );
                for e in entries {
                    outln!(
                        "{:<6} {:<20} {:<9} {:<8} {:<8} {}",
                        e.permission.to_string(),
                        e.principal,
                        e.operation.to_string(),
                        e.resource.to_string(),
                        e.pattern.to_string(),
                        e.name
                    );
                }
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        rill_client::SaslMechanism::from_name(&cli.sasl_mechanism).is_some(),
        "--sasl-mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512, got {:?}",
        cli.sasl_mechanism
    );
    let client = Client::connect_with(&cli.broker, cli.client_config())
        .await
        .with_context(|| format!("cannot reach the broker at {}", cli.broker))?;
    match cli.command {
        Command::Topic(cmd) => topic(client, cmd, cli.json).await,
        Command::Produce(args) => produce(client, args).await,
        Command::Consume(args) if args.group.is_some() => consume_group(client, args).await,
        Command::Consume(args) => consume(client, args).await,
        Command::Group(cmd) => group(client, cmd, cli.json).await,
        Command::User(cmd) => user(client, cmd, cli.json).await,
        Command::Acl(cmd) => acls(client, cmd, cli.json).await,
        Command::Quota(cmd) => quotas(client, cmd, cli.json).await,
        Command::Cluster(ClusterCommand::Status) => {
            cluster_status(client, cli.client_config(), cli.json).await
        }
        Command::Cluster(ClusterCommand::RemoveNode { node_id }) => {
            Admin::new(client).remove_node(node_id).await?;
            outln!("removed node {node_id} from the cluster; stop its process now");
            Ok(())
        }
    }
}

/// `rill cluster status`: the metadata as each node sees it (a node knows the leaders of the
/// partitions it replicates; of two answers the higher term wins), and whether it answers now.
async fn cluster_status(
    client: Client,
    config: rill_client::ClientConfig,
    json: bool,
) -> anyhow::Result<()> {
    let mut m = Admin::new(client).metadata(&[]).await?;
    if json {
        outln!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let quick = rill_client::ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        retry_timeout: Duration::ZERO,
        ..config
    };
    let mut up = BTreeMap::new();
    for n in &m.nodes {
        let answer = match Client::connect_with(&n.addr, quick.clone()).await {
            Ok(c) => Admin::new(c).metadata(&[]).await.ok(),
            Err(_) => None,
        };
        up.insert(n.node_id, answer.is_some());
        for t in answer.into_iter().flat_map(|a| a.topics) {
            let Some(mine) = m.topics.iter_mut().find(|x| x.name == t.name) else {
                continue;
            };
            for (p, theirs) in mine.partitions.iter_mut().zip(t.partitions) {
                if theirs.leader.is_some() && (p.leader.is_none() || theirs.term > p.term) {
                    (p.leader, p.term) = (theirs.leader, theirs.term);
                }
            }
        }
    }
    let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
    let mut replicas: BTreeMap<u64, usize> = BTreeMap::new();
    let mut leaderless = Vec::new();
    let mut total = 0;
    for t in &m.topics {
        for p in &t.partitions {
            total += 1;
            match p.leader {
                Some(l) => *leads.entry(l).or_default() += 1,
                None => leaderless.push(format!("{}-{}", t.name, p.partition)),
            }
            for r in &p.replicas {
                *replicas.entry(*r).or_default() += 1;
            }
        }
    }
    outln!("NODE\tADDRESS\tSTATUS\tLEADS\tREPLICAS");
    for n in &m.nodes {
        let status = match up.get(&n.node_id) {
            Some(true) => "up",
            _ => "unreachable",
        };
        outln!(
            "{}\t{}\t{status}\t{}\t{}",
            n.node_id,
            n.addr,
            leads.get(&n.node_id).copied().unwrap_or(0),
            replicas.get(&n.node_id).copied().unwrap_or(0)
        );
    }
    outln!(
        "{total} partition(s), {} without a leader{}",
        leaderless.len(),
        if leaderless.is_empty() {
            String::new()
        } else {
            format!(": {}", leaderless.join(" "))
        }
    );
    for t in &m.topics {
        for p in t.partitions.iter().filter(|p| !p.target.is_empty()) {
            outln!(
                "moving {}-{}: nodes {:?} -> {:?}",
                t.name,
                p.partition,
                p.replicas,
                p.target
            );
        }
    }
    Ok(())
}

async fn topic(client: Client, cmd: TopicCommand, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            fsync,
            segment_bytes,
            retention_ms,
            retention_bytes,
        } => {
            let config = TopicConfig {
                fsync,
                segment_bytes,
                retention_ms,
                retention_bytes,
            };
            admin
                .create_topic_replicated(&name, partitions, replication_factor, config)
                .await?;
            match replication_factor {
                Some(rf) => outln!(
                    "created topic {name} with {partitions} partition(s), {rf} replica(s) each"
                ),
                None => outln!("created topic {name} with {partitions} partition(s)"),
            }
        }
        TopicCommand::List if json => {
            outln!("{}", serde_json::to_string(&admin.list_topics().await?)?)
        }
        TopicCommand::Describe { name } if json => outln!(
            "{}",
            serde_json::to_string(&admin.describe_topic(&name).await?)?
        ),
        TopicCommand::List => {
            for t in admin.list_topics().await? {
                outln!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let d = admin.describe_topic(&name).await?;
            outln!(
                "topic {}  partitions {}  {}",
                d.name,
                d.partitions.len(),
                describe_config(&d.config)
            );
            outln!(
                "{:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>8}",
                "partition",
                "start",
                "end",
                "durable",
                "bytes",
                "segments"
            );
            for p in d.partitions {
                outln!(
                    "{:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>8}",
                    p.partition,
                    p.log_start_offset,
                    p.log_end_offset,
                    p.durable_offset,
                    p.size_bytes,
                    p.segments
                );
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            fsync,
        } => {
            let changes = TopicConfig {
                fsync,
                segment_bytes,
                retention_ms,
                retention_bytes,
            };
            if partitions.is_none() && changes == TopicConfig::default() {
                bail!(
                    "nothing to change: give --partitions, --retention-ms, --retention-bytes, --segment-bytes or --fsync"
                );
            }
            if let Some(n) = partitions {
                admin.add_partitions(&name, n).await?;
                outln!("topic {name} now has {n} partition(s)");
            }
            if changes != TopicConfig::default() {
                let config = admin.alter_topic(&name, changes).await?;
                outln!("topic {name} settings: {}", describe_config(&config));
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            outln!("deleted topic {name}");
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            no_wait,
        } => {
            admin.reassign(&name, partition, &replicas).await?;
            let list = replicas
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            if no_wait {
                outln!(
                    "moving {name}-{partition} to nodes {list}; `rill cluster status` shows the moves under way"
                );
                return Ok(());
            }
            let started = std::time::Instant::now();
            let mut told = started;
            loop {
                let m = admin.metadata(&[&name]).await?;
                let done = m
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .find(|p| p.partition == partition)
                    .is_some_and(|p| p.target.is_empty() && p.replicas == replicas);
                if done {
                    break;
                }
                if told.elapsed() >= Duration::from_secs(5) {
                    told = std::time::Instant::now();
                    eprintln!(
                        "still moving {name}-{partition} to nodes {list} ({} s; new replicas catch up first; Ctrl-C leaves the move running)",
                        started.elapsed().as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            outln!(
                "moved {name}-{partition} to nodes {list} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

async fn produce(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    let config = ProducerConfig {
        delivery_timeout: args.delivery_timeout,
        compression: args.compression,
        ..ProducerConfig::default()
    };
    let unreachable = client.watch_unreachable();
    let producer = Producer::new(client, config);
    // Read stdin on a blocking thread; lines arrive through a bounded channel.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<String>>(1024);
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    std::thread::spawn(move || {
        for line in input.lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let (acks, mut failed) = track_deliveries();
    tokio::spawn(report_retries(
        producer.watch_retries(),
        unreachable,
        args.delivery_timeout,
    ));
    // On a terminal, a progress line every second during long runs.
    let progress = std::io::stderr()
        .is_terminal()
        .then(std::time::Instant::now);
    let mut last_report = std::time::Instant::now();
    let mut sent = 0u64;
    let mut input_done = false;
    loop {
        // A record given up on stops the run: the rest would meet the same broker.
        let line = tokio::select! {
            line = rx.recv() => line,
            _ = failed.wait_for(|f| *f) => break,
        };
        let Some(line) = line else {
            input_done = true;
            break;
        };
        let line = line.context("reading standard input")?;
        let (key, value) = match (&args.key, &args.key_separator) {
            (Some(k), _) => (Some(k.clone()), line),
            (None, Some(sep)) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => bail!("line {} has no key separator {sep:?}: {line:?}", sent + 1),
            },
            (None, None) => (None, line),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value));
        if let Some(k) = key {
            record = record.key(Bytes::from(k));
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        let delivery = tokio::select! {
            d = producer.send(record) => d?,
            _ = failed.wait_for(|f| *f) => break,
        };
        let _ = acks.send(delivery);
        sent += 1;
        if progress.is_some() && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = std::time::Instant::now();
            eprint!("\rproduced {sent} record(s)...");
        }
    }
    // Every batch has a delivery deadline, so this ends within the delivery timeout.
    producer.flush().await?;
    let outcome = acks.finish().await;
    let cr = if progress.is_some() { "\r" } else { "" };
    if let Some(first) = outcome.first_error {
        let unread = if input_done {
            String::new()
        } else {
            "; stopped reading the input there".to_string()
        };
        bail!(
            "{cr}{} of {sent} record(s) sent to {} were not acknowledged{unread}: {first}",
            sent - outcome.acknowledged,
            args.topic
        );
    }
    let took = progress
        .map(|t| format!(" in {:.1} s", t.elapsed().as_secs_f64()))
        .unwrap_or_default();
    // Retries whose first attempt had been stored: without idempotence, each a duplicate.
    let avoided = match producer.duplicates_avoided() {
        0 => String::new(),
        n => format!(" ({n} retried batch(es) recognised as already stored, not duplicated)"),
    };
    eprintln!(
        "{cr}produced {sent} record(s) to {}{took}{avoided}",
        args.topic
    );
    Ok(())
}

/// What became of the records `rill produce` sent.
struct Outcome {
    acknowledged: u64,
    first_error: Option<rill_client::Error>,
}

/// Awaits deliveries in the order they were sent, counting them; the watch turns true at the
/// first failure.
struct Acks {
    tx: mpsc::UnboundedSender<rill_client::Delivery>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Acks {
    fn send(&self, d: rill_client::Delivery) -> Result<(), ()> {
        self.tx.send(d).map_err(|_| ())
    }

    async fn finish(self) -> Outcome {
        drop(self.tx);
        self.task.await.unwrap_or(Outcome {
            acknowledged: 0,
            first_error: Some(rill_client::Error::Closed),
        })
    }
}

fn track_deliveries() -> (Acks, tokio::sync::watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<rill_client::Delivery>();
    let (failed_tx, failed) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut out = Outcome {
            acknowledged: 0,
            first_error: None,
        };
        while let Some(d) = rx.recv().await {
            match d.await {
                Ok(_) => out.acknowledged += 1,
                Err(e) => {
                    if out.first_error.is_none() {
                        out.first_error = Some(e);
                        failed_tx.send_replace(true);
                    }
                }
            }
        }
        out
    });
    (Acks { tx, task }, failed)
}

/// Tells the user, once per outage, that the broker is being retried (batches resent, or
/// the connection re-established), and when records flow again.
async fn report_retries(
    mut retries: tokio::sync::watch::Receiver<Option<rill_client::Error>>,
    mut unreachable: tokio::sync::watch::Receiver<Option<rill_client::Error>>,
    timeout: Duration,
) {
    let mut retrying = false;
    loop {
        let now = tokio::select! {
            r = retries.changed() => match r {
                Ok(()) => retries.borrow_and_update().clone(),
                Err(_) => return,
            },
            r = unreachable.changed() => match r {
                // Reconnected: wait for a batch to be acknowledged before saying so.
                Ok(()) => match unreachable.borrow_and_update().clone() {
                    Some(e) => Some(e),
                    None => continue,
                },
                Err(_) => return,
            },
        };
        match now {
            Some(e) if !retrying => {
                retrying = true;
                eprintln!(
                    "\rrill: cannot deliver ({e}); retrying for up to {timeout:?} per record..."
                );
            }
            None if retrying => {
                retrying = false;
                eprintln!("\rrill: delivering again");
            }
            _ => {}
        }
    }
}

async fn consume(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let start = match (args.from_beginning, args.offset) {
        (true, _) => StartOffset::Earliest,
        (false, Some(o)) => StartOffset::Offset(o),
        (false, None) => StartOffset::Latest,
    };
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..Admin::new(client.clone())
            .describe_topic(&args.topic)
            .await?
            .partitions
            .len() as u32)
            .collect(),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    for p in partitions {
        let mut reader = PartitionReader::new(client.clone(), &args.topic, p, start).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let batch = reader.poll().await;
                let failed = batch.is_err();
                if tx.send((p, batch)).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(tx);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while printed < limit {
        let Some((partition, records)) = rx.recv().await else {
            break;
        };
        let mut out = stdout.lock();
        for r in records? {
            if printed == limit {
                break;
            }
            let (topic, key) = (args.topic.as_str(), r.key.as_deref());
            let p = Printable {
                topic,
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key,
                value: &r.value,
                headers: &r.headers,
            };
            print_record(&mut out, args.format, p)?;
            printed += 1;
        }
        out.flush()?;
    }
    Ok(())
}

async fn consume_group(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let group = args.group.clone().unwrap_or_default();
    let mut config = ConsumerConfig::new(group.clone(), [args.topic.clone()]);
    config.strategy = args.strategy;
    if args.from_beginning {
        config.auto_offset_reset = OffsetReset::Earliest;
    }
    let mut consumer = Consumer::subscribe(client, config)?;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while printed < limit {
        let next = match args.idle_exit {
            Some(idle) => match tokio::time::timeout(idle, consumer.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => consumer.next().await,
        };
        let Some(record) = next else { break };
        let r = record?;
        let mut out = stdout.lock();
        let (topic, key) = (&*r.topic, r.key.as_deref());
        let p = Printable {
            topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key,
            value: &r.value,
            headers: &r.headers,
        };
        let written = print_record(&mut out, args.format, p).and_then(|()| out.flush());
        if let Err(e) = written {
            // Output closed. Not `close()`: that would commit this unprinted record. Dropping
            // the member leaves its last commit in place (the group notices at the session
            // timeout), so whatever was not printed is delivered again.
            return Err(e.into());
        }
        printed += 1;
    }
    consumer
        .close()
        .await
        .with_context(|| format!("leaving group {group}"))?;
    eprintln!("consumed {printed} record(s) as a member of {group}");
    Ok(())
}

async fn group(client: Client, cmd: GroupCommand, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        GroupCommand::List if json => {
            outln!("{}", serde_json::to_string(&admin.list_groups().await?)?)
        }
        GroupCommand::Describe { group } if json => outln!(
            "{}",
            serde_json::to_string(&admin.describe_group(&group).await?)?
        ),
        GroupCommand::List => {
            for g in admin.list_groups().await? {
                outln!("{}\t{}\t{}", g.group, g.state, g.members);
            }
        }
        GroupCommand::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            let strategy = d.strategy.map_or("-".to_string(), |s| s.to_string());
            outln!(
                "group {}  state {}  generation {}  strategy {strategy}  members {}",
                d.group,
                d.state,
                d.generation,
                d.members.len()
            );
            for m in &d.members {
                let parts: Vec<String> = m.assignment.iter().map(|tp| tp.to_string()).collect();
                outln!(
                    "member {}  client {}  partitions [{}]",
                    m.member_id,
                    m.client,
                    parts.join(", ")
                );
            }
            outln!(
                "{:<30}  {:>9}  {:>14}  {:>14}  {:>10}",
                "topic",
                "partition",
                "committed",
                "log-end",
                "lag"
            );
            for o in &d.offsets {
                let committed = o.committed.map_or("-".to_string(), |c| c.to_string());
                outln!(
                    "{:<30}  {:>9}  {:>14}  {:>14}  {:>10}",
                    o.partition.topic,
                    o.partition.partition,
                    committed,
                    o.log_end,
                    o.lag
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
        } => {
            let to = match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, _, _, _) => ResetTo::Earliest,
                (_, true, _, _) => ResetTo::Latest,
                (_, _, Some(o), _) => ResetTo::Offset(o),
                (_, _, _, Some(ts)) => ResetTo::Timestamp(ts),
                _ => bail!(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp MS"
                ),
            };
            for (tp, offset) in admin.reset_offsets(&group, &topic, to).await? {
                outln!("{}\t{}\t{offset}", tp.topic, tp.partition);
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            outln!("deleted group {group}");
        }
    }
    Ok(())
}

/// A topic's own settings, "default" where it uses the broker's.
fn describe_config(c: &TopicConfig) -> String {
    fn show<T: std::fmt::Display>(v: &Option<T>) -> String {
        v.as_ref().map_or("default".to_string(), |v| v.to_string())
    }
    format!(
        "fsync {}  segment_bytes {}  retention_ms {}  retention_bytes {}",
        show(&c.fsync),
        show(&c.segment_bytes),
        show(&c.retention_ms),
        show(&c.retention_bytes)
    )
}
