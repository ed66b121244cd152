//! `rill-bench`: end-to-end throughput and latency of a Rill broker.
//!
//! Runs one scenario against a broker (`--broker`, or `--spawn-broker` to start `rilld` on a
//! temporary directory), prints a progress line every second and a summary, and verifies
//! every message it read (count and checksum) so that a fast wrong answer cannot pass.

mod broker;
mod scenarios;
mod stats;

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use rill_client::{Admin, Client, FsyncPolicy, TopicConfig};
use scenarios::Params;
use stats::Percentiles;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// Producers send batches as fast as acknowledgements allow.
    Produce,
    /// Produce the messages first (untimed), then time partition readers reading them all.
    Consume,
    /// Like consume, but the readers are members of one consumer group.
    GroupConsume,
    /// Producers and readers at the same time; timed until everything is read.
    ProduceConsume,
    /// One producer at a fixed --rate; end-to-end latency from send to receipt.
    Latency,
    /// The latency scenario twice in one run: alone, then beside --idle-connections idle
    /// connections and a flood of --flood-rate tiny requests/s; reports both and their ratios.
    Hostile,
    /// --groups consumer groups of two members each join, then heartbeat every 3 s for
    /// --duration seconds (default 30); reports heartbeat latency.
    Groups,
    /// The latency scenario twice in one run, as an authenticated principal without a quota:
    /// alone, then beside a principal with a produce quota of --quota-rate bytes/s that
    /// produces as fast as it is let; reports both, their ratios, and the rate the quota held
    /// the other principal to (spawns a broker with authentication).
    Quota,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Api {
    Batch,
    Producer,
}

#[derive(Debug, Parser)]
#[command(
    name = "rill-bench",
    version,
    about = "Throughput and latency benchmark for the Rill broker.",
    after_help = "Examples:\n  rill-bench --spawn-broker produce --messages 5000000\n  rill-bench --spawn-broker --fsync interval:1000 consume --message-size 1024\n  rill-bench --spawn-broker latency --rate 10000 --duration 10\n  rill-bench --spawn-broker --fsync interval:1000 hostile --duration 10 --idle-connections 1000 --flood-rate 40000\n  rill-bench --spawn-broker groups --groups 10000 --duration 30\n  rill-bench --cluster 3 produce --messages 2000000"
)]
struct Cli {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker to benchmark.
    #[arg(long, default_value = "127.0.0.1:7171")]
    broker: String,
    /// Start a rilld on a temporary directory for this run (and report its CPU and memory).
    #[arg(long)]
    spawn_broker: bool,
    /// Start a cluster of this many rilld nodes on loopback instead (implies --spawn-broker;
    /// topics get the cluster's default replication factor, min(3, nodes)); CPU and memory
    /// are summed over the nodes.
    #[arg(long, value_name = "NODES")]
    cluster: Option<usize>,
    /// The spawned broker serves TLS (a certificate from a CA made for the run), and every
    /// client of the benchmark connects with TLS.
    #[arg(long)]
    tls: bool,
    /// Connect to --broker with TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "tls")]
    tls_ca: Option<PathBuf>,
    /// The rilld binary for --spawn-broker [default: next to rill-bench].
    #[arg(long, value_name = "PATH")]
    rilld: Option<PathBuf>,
    /// Durability of the benchmark topics: always or interval:MS.
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Bytes per message (at least 16: a sequence number and a send time).
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    /// Messages to produce in total.
    #[arg(long, default_value_t = 2_000_000)]
    messages: u64,
    /// Stop producing after this many seconds even if --messages are not all sent
    /// (for latency: how long to run, default 10).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
    /// Messages per batch [default: 1000; with --api producer, as many as fit the Producer's
    /// default `batch_bytes`].
    #[arg(long = "batch", value_name = "BATCH")]
    batch_arg: Option<usize>,
    #[arg(skip)]
    batch: usize,
    /// Batches awaiting acknowledgement per producer (1 = wait for each ack before the next)
    /// [default: 8; with --api producer, the Producer's default `max_in_flight`].
    #[arg(long = "in-flight", value_name = "IN_FLIGHT")]
    in_flight_arg: Option<usize>,
    #[arg(skip)]
    in_flight: usize,
    /// Messages per second for the latency scenario.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How producers send: pre-built batches (`batch`), or the per-record Producer API (`producer`).
    #[arg(long, value_enum, default_value = "batch")]
    api: Api,
    /// With --api producer: how long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5)]
    linger: u64,
    /// For group-consume: how members commit. `auto` (the default: every 5 s), `async`
    /// (`commit_async` after every poll: a record, or a batch with `--reader batches`) or `sync`
    /// (`commit().await` after every poll).
    #[arg(long, value_enum, default_value = "auto")]
    commit: scenarios::Commit,
    /// For consume and produce-consume: how records are read. `records` (the default:
    /// `PartitionReader::next`, one owned record at a time, default settings), `batches`
    /// (`PartitionReader::poll_batch`, records read in place, default settings), or `fetch`
    /// (`Client::fetch` with 4 MiB fetches, one at a time: no reader).
    #[arg(long, value_enum, default_value = "records")]
    reader: scenarios::Reader,
    /// With --api producer: turn the producer's idempotence off (it is on by default).
    #[arg(long)]
    no_idempotence: bool,
    /// For hostile: connections opened and left idle during the second measurement.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// For hostile: tiny requests per second (ListTopics) during the second measurement.
    #[arg(long, default_value_t = 40_000)]
    flood_rate: u64,
    /// For hostile: connections the flood is spread over.
    #[arg(long, default_value_t = 2)]
    flooders: usize,
    /// For groups: consumer groups of two members each.
    #[arg(long, default_value_t = 10_000)]
    groups: usize,
    /// For groups: connections the members share.
    #[arg(long, default_value_t = 128)]
    group_connections: usize,
    /// For quota: the produce quota of the heavy principal, bytes per second.
    #[arg(long, default_value_t = 20_000_000)]
    quota_rate: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    // The Producer API is measured with the Producer's own defaults unless told otherwise.
    let producer = rill_client::ProducerConfig::default();
    let per_record = cli.message_size + scenarios::RECORD_OVERHEAD;
    (cli.batch, cli.in_flight) = match cli.api {
        Api::Batch => (1000, 8),
        Api::Producer => (
            (producer.batch_bytes / per_record.max(1)).max(1),
            producer.max_in_flight,
        ),
    };
    cli.batch = cli.batch_arg.unwrap_or(cli.batch);
    cli.in_flight = cli.in_flight_arg.unwrap_or(cli.in_flight);
    ensure!(
        cli.message_size >= stats::HEADER,
        "--message-size must be at least {}",
        stats::HEADER
    );
    ensure!(
        cli.producers > 0
            && cli.consumers > 0
            && cli.topics > 0
            && cli.partitions > 0
            && cli.batch > 0
            && cli.in_flight > 0,
        "counts must be at least 1"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

struct Summary {
    phase: &'static str,
    messages: u64,
    elapsed: Duration,
    latency: Option<Percentiles>,
    latency_kind: &'static str,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The quota scenario needs principals: its broker authenticates, with "bench" as its
    // superuser.
    let quota = cli.scenario == Scenario::Quota;
    let (auth_args, auth_env): (Vec<String>, Vec<(&str, &str)>) = match quota {
        true => (
            ["--auth", "--superuser", "bench"]
                .map(String::from)
                .to_vec(),
            vec![("RILL_SUPERUSER_PASSWORD", BENCH_PASSWORD)],
        ),
        false => (Vec::new(), Vec::new()),
    };
    anyhow::ensure!(
        !quota || (cli.spawn_broker && cli.cluster.is_none()),
        "the quota scenario starts its own single broker: give --spawn-broker"
    );
    let spawned = match (cli.spawn_broker, cli.cluster) {
        (_, Some(nodes)) => Some(broker::Spawned::start(
            cli.rilld.clone(),
            &[],
            &[],
            nodes,
            cli.tls,
        )?),
        (true, None) => Some(broker::Spawned::start(
            cli.rilld.clone(),
            &auth_args,
            &auth_env,
            1,
            cli.tls,
        )?),
        (false, None) => None,
    };
    let addr = spawned
        .as_ref()
        .map_or(cli.broker.clone(), |s| s.addr.clone());
    anyhow::ensure!(
        !cli.tls || spawned.is_some(),
        "--tls starts a broker with TLS (with --spawn-broker or --cluster); for a running one, give --tls-ca"
    );
    let ca = spawned
        .as_ref()
        .and_then(|s| s.ca().map(PathBuf::from))
        .or(cli.tls_ca.clone());
    let client_config = rill_client::ClientConfig {
        tls: ca.map(rill_client::TlsSettings::new),
        sasl: quota.then(|| rill_client::SaslSettings::scram("bench", BENCH_PASSWORD)),
        ..rill_client::ClientConfig::default()
    };
    let client = Client::connect_with(&addr, client_config.clone())
        .await
        .with_context(|| format!("cannot reach the broker at {addr}"))?;
    let admin = Admin::new(client.clone());
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let targets = create_targets(&admin, &cli, &format!("bench-{run_id}")).await?;
    let params = Params {
        addr: addr.clone(),
        client: client_config,
        targets,
        producers: cli.producers,
        consumers: cli.consumers,
        message_size: cli.message_size,
        messages: cli.messages,
        duration: cli.duration.map(Duration::from_secs),
        batch: cli.batch,
        in_flight: cli.in_flight,
        rate: cli.rate,
        via_producer: cli.api == Api::Producer,
        linger: Duration::from_millis(cli.linger),
        idempotent: !cli.no_idempotence,
        commit: cli.commit,
        reader: cli.reader,
        // Reading back what was produced earlier has no end-to-end latency worth keeping.
        end_to_end: !matches!(cli.scenario, Scenario::Consume | Scenario::GroupConsume),
        start: Instant::now(),
    };
    let progress = Arc::new(AtomicU64::new(0));
    let reporter = tokio::spawn(report_progress(progress.clone()));
    let cpu_before = spawned.as_ref().and_then(|s| s.cpu_seconds());
    let timer = Instant::now();
    let mut summaries = Vec::new();
    let mut extra: Vec<(&str, f64)> = Vec::new();
    match cli.scenario {
        Scenario::Produce => {
            let produced = scenarios::produce(&params, progress.clone()).await?;
            let elapsed = timer.elapsed();
            let mut stored: u64 = stored(&admin, &params).await?;
            // In a cluster, Raft's own entries (a leader's first entry of each term) take an
            // offset each too, and the answering node's count stops at the commit it knows: a
            // follower learns the last one with the leader's next heartbeat.
            let clustered = admin.metadata(&[]).await?.nodes.len() > 1;
            let deadline = Instant::now() + Duration::from_secs(5);
            while clustered && stored < produced.messages && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stored = self::stored(&admin, &params).await?;
            }
            ensure!(
                stored == produced.messages || (clustered && stored >= produced.messages),
                "broker holds {stored} messages, {} were acknowledged",
                produced.messages
            );
            summaries.push(Summary {
                phase: "produce",
                messages: produced.messages,
                elapsed,
                latency: stats::percentiles(produced.ack_micros),
                latency_kind: "batch ack",
            });
        }
        Scenario::Consume | Scenario::GroupConsume => {
            let produced = scenarios::produce(&params, Arc::new(AtomicU64::new(0))).await?;
            let cpu_before = spawned.as_ref().and_then(|s| s.cpu_seconds());
            let timer = Instant::now();
            let consumed = if cli.scenario == Scenario::Consume {
                scenarios::consume(&params, produced.messages, progress.clone()).await?
            } else {
                scenarios::group_consume(&params, produced.messages, progress.clone()).await?
            };
            // A group is timed from its first record: joining is not reading.
            let elapsed = consumed.first_at.unwrap_or(timer).elapsed();
            scenarios::verify(produced.messages, produced.checksum, &consumed)?;
            summaries.push(Summary {
                phase: "consume",
                messages: consumed.messages,
                elapsed,
                latency: None,
                latency_kind: "",
            });
            return finish(
                &cli,
                spawned.as_ref(),
                cpu_before,
                elapsed,
                summaries,
                &extra,
                reporter,
            );
        }
        Scenario::ProduceConsume => {
            let (p, c) = (params.clone(), params.clone());
            let progress2 = progress.clone();
            let producing =
                tokio::spawn(
                    async move { scenarios::produce(&p, Arc::new(AtomicU64::new(0))).await },
                );
            let consumed = scenarios::consume(&c, params.messages, progress2).await?;
            let elapsed = timer.elapsed();
            let produced = producing.await??;
            scenarios::verify(produced.messages, produced.checksum, &consumed)?;
            summaries.push(Summary {
                phase: "produce",
                messages: produced.messages,
                elapsed: produced.elapsed,
                latency: stats::percentiles(produced.ack_micros),
                latency_kind: "batch ack",
            });
            summaries.push(Summary {
                phase: "consume",
                messages: consumed.messages,
                elapsed,
                latency: stats::percentiles(consumed.e2e_micros),
                latency_kind: "end to end",
            });
        }
        Scenario::Latency => {
            let (produced, consumed) = scenarios::latency(&params, progress.clone()).await?;
            let elapsed = timer.elapsed();
            scenarios::verify(produced.messages, produced.checksum, &consumed)?;
            summaries.push(Summary {
                phase: "latency",
                messages: consumed.messages,
                elapsed,
                latency: stats::percentiles(consumed.e2e_micros),
                latency_kind: "end to end",
            });
        }
        Scenario::Groups => {
            let beats = scenarios::group_heartbeats(
                &params,
                cli.groups,
                Duration::from_secs(3),
                cli.group_connections,
                progress.clone(),
            )
            .await?;
            extra.push(("groups", cli.groups as f64));
            extra.push(("members", beats.members as f64));
            extra.push(("heartbeats_refused", beats.refused as f64));
            summaries.push(Summary {
                phase: "heartbeat",
                messages: beats.micros.len() as u64,
                elapsed: timer.elapsed(),
                latency: stats::percentiles(beats.micros),
                latency_kind: "heartbeat round trip",
            });
        }
        Scenario::Quota => {
            let heavy_topic = format!("bench-{run_id}-heavy");
            admin
                .create_topic(&heavy_topic, 1, rill_client::TopicConfig::default())
                .await?;
            admin.create_user("heavy", BENCH_PASSWORD).await?;
            let write = rill_client::acl::Acl {
                principal: "heavy".into(),
                resource: rill_client::acl::ResourceType::Topic,
                pattern: rill_client::acl::PatternType::Literal,
                name: heavy_topic.clone(),
                operation: rill_client::acl::Operation::Write,
                permission: rill_client::acl::Permission::Allow,
            };
            admin.create_acls(vec![write]).await?;
            let limit = rill_client::Quota {
                produce_bytes_per_sec: Some(cli.quota_rate),
                ..rill_client::Quota::default()
            };
            admin.set_quota("heavy", Some(limit)).await?;
            for beside in [false, true] {
                let mut params = params.clone();
                let heavy = if beside {
                    // Fresh topics: the reader starts at the beginning.
                    params.targets =
                        create_targets(&admin, &cli, &format!("bench-{run_id}-beside")).await?;
                    let config = rill_client::ClientConfig {
                        sasl: Some(rill_client::SaslSettings::scram("heavy", BENCH_PASSWORD)),
                        ..params.client.clone()
                    };
                    let batch = scenarios::heavy_batch(cli.message_size, cli.batch);
                    Some(scenarios::Heavy::start(&addr, config, heavy_topic.clone(), batch).await?)
                } else {
                    None
                };
                let timer = Instant::now();
                let (produced, consumed) = scenarios::latency(&params, progress.clone()).await?;
                let elapsed = timer.elapsed();
                if let Some(h) = heavy {
                    let (bytes, steady) = h.stop().await?;
                    let rate = |(b, t): (u64, Duration)| b as f64 / t.as_secs_f64().max(1e-9);
                    extra.push(("quota_bytes_per_sec", cli.quota_rate as f64));
                    extra.push(("heavy_bytes_per_sec", rate(bytes)));
                    extra.push(("heavy_steady_bytes_per_sec", rate(steady)));
                    extra.push((
                        "heavy_steady_over_quota",
                        rate(steady) / cli.quota_rate as f64,
                    ));
                }
                // The measured principal's produce acknowledgements, beside the end-to-end
                // latency the summary shows.
                if let Some(ack) = stats::percentiles(produced.ack_micros.clone()) {
                    let us = |d: Duration| d.as_secs_f64() * 1e6;
                    let (p50, p99) = match beside {
                        false => ("alone_ack_p50_us", "alone_ack_p99_us"),
                        true => ("beside_ack_p50_us", "beside_ack_p99_us"),
                    };
                    extra.push((p50, us(ack.p50)));
                    extra.push((p99, us(ack.p99)));
                }
                scenarios::verify(produced.messages, produced.checksum, &consumed)?;
                summaries.push(Summary {
                    phase: if beside { "beside quota" } else { "alone" },
                    messages: consumed.messages,
                    elapsed,
                    latency: stats::percentiles(consumed.e2e_micros),
                    latency_kind: "end to end",
                });
            }
            latency_ratios(&summaries, &mut extra);
        }
        Scenario::Hostile => {
            for abused in [false, true] {
                let mut params = params.clone();
                let abuse = if abused {
                    params.targets =
                        create_targets(&admin, &cli, &format!("bench-{run_id}-abused")).await?;
                    let max = params.duration.unwrap_or(Duration::from_secs(10)) * 3;
                    let a = scenarios::Abuse::start(
                        &addr,
                        &params.client,
                        cli.idle_connections,
                        cli.flood_rate,
                        cli.flooders,
                        max + Duration::from_secs(30),
                    )
                    .await?;
                    Some(a)
                } else {
                    None
                };
                let timer = Instant::now();
                let (produced, consumed) = scenarios::latency(&params, progress.clone()).await?;
                let elapsed = timer.elapsed();
                if let Some(a) = abuse {
                    let flood = a.stop().await?;
                    extra.push(("flood_requests_answered", flood as f64));
                    extra.push((
                        "flood_requests_per_sec",
                        flood as f64 / elapsed.as_secs_f64(),
                    ));
                }
                scenarios::verify(produced.messages, produced.checksum, &consumed)?;
                summaries.push(Summary {
                    phase: if abused { "abused" } else { "alone" },
                    messages: consumed.messages,
                    elapsed,
                    latency: stats::percentiles(consumed.e2e_micros),
                    latency_kind: "end to end",
                });
            }
            latency_ratios(&summaries, &mut extra);
        }
    }
    finish(
        &cli,
        spawned.as_ref(),
        cpu_before,
        timer.elapsed(),
        summaries,
        &extra,
        reporter,
    )
}

/// The second phase's latency percentiles over the first's.
fn latency_ratios(summaries: &[Summary], extra: &mut Vec<(&str, f64)>) {
    if let [
        Summary {
            latency: Some(a), ..
        },
        Summary {
            latency: Some(b), ..
        },
    ] = summaries
    {
        let ratio = |x: Duration, y: Duration| y.as_secs_f64() / x.as_secs_f64().max(1e-9);
        extra.push(("p50_ratio", ratio(a.p50, b.p50)));
        extra.push(("p99_ratio", ratio(a.p99, b.p99)));
        extra.push(("p999_ratio", ratio(a.p999, b.p999)));
    }
}

/// The password of the quota scenario's principals (a broker spawned for the run).
const BENCH_PASSWORD: &str = "bench-secret";

/// Creates the benchmark topics `{prefix}-{i}`; returns every (topic, partition).
async fn create_targets(
    admin: &Admin,
    cli: &Cli,
    prefix: &str,
) -> anyhow::Result<Vec<(String, u32)>> {
    let mut targets = Vec::new();
    for t in 0..cli.topics {
        let name = format!("{prefix}-{t}");
        let config = TopicConfig {
            fsync: Some(cli.fsync),
            ..TopicConfig::default()
        };
        // A cluster that just started may still be electing its metadata leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin
                .create_topic(&name, cli.partitions, config.clone())
                .await
            {
                Ok(()) => break,
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        targets.extend((0..cli.partitions).map(|p| (name.clone(), p)));
        // In a cluster (spawned or not), each partition elects its leader after creation:
        // wait for all. A single node names itself the leader of everything at once.
        loop {
            let m = admin.metadata(&[name.as_str()]).await?;
            let led = m.topics.iter().all(|t| {
                t.partitions.len() == cli.partitions as usize
                    && t.partitions.iter().all(|p| p.leader.is_some())
            });
            if led {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{name} has partitions without a leader after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(targets)
}

/// Messages the broker holds in the benchmark topics.
async fn stored(admin: &Admin, params: &Params) -> anyhow::Result<u64> {
    let mut total = 0;
    let topics: std::collections::BTreeSet<&String> =
        params.targets.iter().map(|(t, _)| t).collect();
    for t in topics {
        total += admin
            .describe_topic(t)
            .await?
            .partitions
            .iter()
            .map(|p| p.log_end_offset)
            .sum::<u64>();
    }
    Ok(total)
}

async fn report_progress(progress: Arc<AtomicU64>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let terminal = std::io::stderr().is_terminal();
    let mut last = 0;
    loop {
        tick.tick().await;
        let now = progress.load(Ordering::Relaxed);
        let line = format!(
            "[{:>5.1}s] {:>12} msgs  {:>12.0} msg/s",
            start.elapsed().as_secs_f64(),
            now,
            (now - last) as f64
        );
        last = now;
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

fn finish(
    cli: &Cli,
    spawned: Option<&broker::Spawned>,
    cpu_before: Option<f64>,
    elapsed: Duration,
    summaries: Vec<Summary>,
    extra: &[(&str, f64)],
    reporter: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    reporter.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let cpu = spawned
        .and_then(|s| Some(s.cpu_seconds()? - cpu_before?))
        .map(|c| c / elapsed.as_secs_f64() * 100.0);
    let rss = spawned.and_then(|s| s.peak_rss_mib());
    let size = scenarios::payload_bytes(cli.message_size) as f64;
    if cli.json {
        let mut parts = vec![
            format!("\"scenario\":\"{:?}\"", cli.scenario).to_lowercase(),
            format!("\"fsync\":\"{}\"", cli.fsync),
            format!("\"message_size\":{}", cli.message_size),
            format!(
                "\"producers\":{},\"consumers\":{},\"topics\":{},\"partitions\":{}",
                cli.producers, cli.consumers, cli.topics, cli.partitions
            ),
            format!(
                "\"batch\":{},\"in_flight\":{},\"api\":\"{:?}\",\"linger_ms\":{},\"reader\":\"{:?}\"",
                cli.batch, cli.in_flight, cli.api, cli.linger, cli.reader
            )
            .to_lowercase(),
            "\"verified\":true".to_string(),
        ];
        if let Some(s) = spawned {
            parts.push(format!("\"broker_nodes\":{}", s.nodes()));
        }
        for s in &summaries {
            let secs = s.elapsed.as_secs_f64();
            parts.push(format!("\"{p}_messages\":{},\"{p}_seconds\":{secs:.3},\"{p}_msgs_per_sec\":{:.0},\"{p}_mb_per_sec\":{:.1}", s.messages, s.messages as f64 / secs, s.messages as f64 * size / secs / 1e6, p = s.phase));
            if let Some(l) = s.latency {
                parts.push(format!(
                    "\"{p}_p50_us\":{},\"{p}_p99_us\":{},\"{p}_p999_us\":{},\"{p}_max_us\":{}",
                    l.p50.as_micros(),
                    l.p99.as_micros(),
                    l.p999.as_micros(),
                    l.max.as_micros(),
                    p = s.phase
                ));
            }
        }
        for (k, v) in extra {
            parts.push(format!("\"{k}\":{v:.2}"));
        }
        if let Some(c) = cpu {
            parts.push(format!("\"broker_cpu_percent\":{c:.0}"));
        }
        if let Some(r) = rss {
            parts.push(format!("\"broker_peak_rss_mib\":{r:.1}"));
        }
        println!("{{{}}}", parts.join(","));
        return Ok(());
    }
    println!(
        "scenario {:?}  fsync {}  message {} B  producers {}  consumers {}  topics {}  partitions {}  batch {}  in-flight {}  api {:?}  reader {:?}",
        cli.scenario,
        cli.fsync,
        cli.message_size,
        cli.producers,
        cli.consumers,
        cli.topics,
        cli.partitions,
        cli.batch,
        cli.in_flight,
        cli.api,
        cli.reader
    );
    if let Some(s) = spawned.filter(|s| s.nodes() > 1) {
        println!(
            "cluster of {} rilld nodes on loopback, replication factor {}",
            s.nodes(),
            s.nodes().min(3)
        );
    }
    for s in &summaries {
        let secs = s.elapsed.as_secs_f64();
        println!(
            "{:<8} {:>11} msgs in {:>7.2} s  {:>12.0} msg/s  {:>8.1} MB/s",
            s.phase,
            s.messages,
            secs,
            s.messages as f64 / secs,
            s.messages as f64 * size / secs / 1e6
        );
        if let Some(l) = s.latency {
            println!(
                "         {} latency  p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}  ({} samples)",
                s.latency_kind, l.p50, l.p99, l.p999, l.max, l.samples
            );
        }
    }
    for (k, v) in extra {
        println!("{k} {v:.2}");
    }
    if let (Some(c), Some(r)) = (cpu, rss) {
        println!("broker   cpu {c:.0}% of one core  peak rss {r:.1} MiB");
    }
    println!("verified: counts and checksums match");
    Ok(())
}
