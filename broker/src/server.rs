//! The broker's life: open the data directory, accept connections, shut down cleanly.
//!
//! Start-up takes an exclusive lock on the data directory, reads and removes the clean-shutdown
//! marker (so a crash during this run is detected at the next start), recovers every partition,
//! and only then binds the listener. Shutdown (SIGINT/SIGTERM or a cancelled token) stops
//! accepting, lets every connection finish the requests it has read, stops every partition
//! writer after a final fsync, and writes the marker again.

use crate::config::Config;
use crate::connection;
use crate::groups::{Groups, OffsetStore};
use crate::producer_ids::ProducerIds;
use crate::topics::Topics;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What handlers share: the topics, the configuration, the shutdown signal.
#[derive(Debug)]
pub struct Context {
    pub topics: Topics,
    pub groups: Groups,
    pub config: Config,
    pub shutdown: CancellationToken,
    /// Produced bytes waiting for the disk, bounded per partition and for the broker.
    pub produce_budget: crate::backpressure::ProduceBudget,
    /// Durable producer ids for idempotent producers.
    pub producer_ids: ProducerIds,
    /// This node's part of a cluster (`[cluster]`); `None` for a single-node broker.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// TLS on the client listener (`[tls]`), its certificate replaced on SIGHUP.
    pub tls: Option<Arc<crate::tls::Reloader>>,
    /// TLS between the nodes of a cluster (`[cluster] tls_ca`), also reloaded on SIGHUP.
    pub cluster_tls: Option<Arc<crate::tls::ClusterTls>>,
    /// Users, their credentials and ACLs; whether clients must authenticate (`[auth]`).
    pub security: Arc<crate::auth::Security>,
    /// Quota buckets and connection counts (the quotas themselves are in `security`).
    pub quotas: Arc<crate::quotas::Quotas>,
}

const CLEAN_MARKER: &str = "clean-shutdown";
const LOCK_FILE: &str = "lock";

/// A broker whose storage is open and whose listener is bound, ready to [`Broker::serve`].
#[derive(Debug)]
pub struct Broker {
    ctx: Arc<Context>,
    listener: TcpListener,
    /// The Kafka listener and what it advertises, unless it is off.
    kafka: Option<(TcpListener, Arc<crate::kafka::Listener>)>,
    _lock: fs::File,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone)]
enum Protocol {
    Rill,
    Kafka(Arc<crate::kafka::Listener>),
}

impl Broker {
    /// Locks and recovers the data directory, then binds the listener.
    /// `tls`: the client listener's TLS, built from `config.tls` (shared with the HTTP
    /// endpoint, so one SIGHUP reloads both).
    pub async fn open(
        config: Config,
        tls: Option<Arc<crate::tls::Reloader>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Broker> {
        let data_dir = config.data_dir.clone();
        fs::create_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display())
        })?;
        let lock = lock_data_dir(&data_dir)?;
        let log_config = config.log_config();
        let dir = data_dir.clone();
        let limits = config.group_limits();
        let test_write_rate = config.test_write_rate;
        let compact_bytes = config.groups.offsets_compact_bytes;
        let (topics, groups, producer_ids, clean) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let clean = take_clean_marker(&dir)?;
            if !clean {
                tracing::warn!(data_dir = %dir.display(), "previous run did not shut down cleanly; verifying partition tails");
            }
            let storage = match test_write_rate {
                Some(rate) => {
                    tracing::warn!(rate, "partition-log writes throttled for testing");
                    Arc::new(crate::storage::Throttled::new(crate::storage::disk(), rate))
                        as Arc<dyn crate::storage::Storage>
                }
                None => crate::storage::disk(),
            };
            let (topics, mut reports) = Topics::open(storage, &dir, log_config, clean)?;
            let (offsets, report) = OffsetStore::open(&dir, clean, compact_bytes)?;
            reports.push(("__group_offsets".into(), report));
            let m = crate::metrics::global();
            for (partition, report) in reports {
                m.recovery_truncations.inc_by(report.truncated.len() as u64);
                m.recovery_damaged_ranges.inc_by(report.holes.len() as u64);
                m.recovery_rebuilt_indexes.inc_by(report.rebuilt_indexes as u64);
                for (file, position, bytes, reason) in &report.truncated {
                    tracing::warn!(partition, file = %file.display(), position, bytes, reason, "recovery cut data");
                }
                if report.rebuilt_indexes > 0 {
                    tracing::info!(partition, segments = report.rebuilt_indexes, "rebuilt indexes");
                }
            }
            let producer_ids = ProducerIds::open(&crate::storage::Disk, &dir)?;
            Ok((topics, Groups::new(offsets, limits), producer_ids, clean))
        })
        .await??;
        // A crash between a topic's deletion and the deletion of its committed offsets leaves
        // orphans; drop them before anyone can create the topic again.
        let orphans = groups
            .offsets()
            .forget_topics(|t| topics.get(t).is_ok())
            .await?;
        if orphans > 0 {
            tracing::info!(
                orphans,
                "deleted committed offsets of topics that no longer exist"
            );
        }
        let security = Arc::new(crate::auth::Security::open(
            &config.data_dir,
            &config.auth,
            config.cluster.is_some(),
        )?);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let kafka = match config.kafka_addr()? {
            Some(_) if config.auth.enabled => {
                tracing::warn!(
                    "Kafka listener off: --auth is on and SASL on the Kafka listener is not built yet \
                     (set kafka_listen = \"off\" to silence this)"
                );
                None
            }
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen for Kafka clients on {addr}: {e} (kafka_listen; \"off\" disables it)")
                })?;
                let advertised = crate::kafka::Listener::new(
                    l.local_addr()?,
                    config.kafka_advertise.as_deref(),
                )?;
                Some((l, Arc::new(advertised)))
            }
            None => None,
        };
        if config.allow_anonymous {
            tracing::warn!(
                listen = %config.listen,
                tls = tls.is_some(),
                "anonymous access allowed (--allow-anonymous): any client that reaches this \
                 broker can read, write and delete every topic and group"
            );
        }
        if let Some(tls) = &tls {
            tracing::info!(
                mutual = tls.verifies_clients(),
                "TLS on the client listener; SIGHUP reloads its certificate"
            );
        }
        tracing::info!(topics = topics.list().len(), clean, "storage ready");
        let cluster_tls = match (&config.cluster, &config.tls) {
            (Some(c), Some(identity)) => match &c.tls_ca {
                Some(ca) => Some(Arc::new(crate::tls::ClusterTls::new(identity, ca)?)),
                None => None,
            },
            _ => None,
        };
        let cluster = match config.cluster.clone() {
            Some(c) => Some(
                crate::cluster::Cluster::start(
                    c,
                    listener.local_addr()?,
                    &config.data_dir,
                    config.log_config(),
                    security.clone(),
                    cluster_tls.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let quotas = crate::quotas::Quotas::new(
            config.max_connections_per_ip,
            config.max_connections_per_principal,
        );
        Ok(Broker {
            ctx: Arc::new(Context {
                topics,
                groups,
                producer_ids,
                produce_budget: crate::backpressure::ProduceBudget::new(
                    config.max_produce_queue_bytes,
                    config.max_partition_queue_bytes,
                ),
                config,
                shutdown,
                cluster,
                tls,
                cluster_tls,
                security,
                quotas,
            }),
            listener,
            kafka,
            _lock: lock,
        })
    }

    /// What handlers share; also what the metrics endpoint reads.
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the Kafka listener is bound, unless it is off.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn data_dir(&self) -> &Path {
        &self.ctx.config.data_dir
    }

    /// Serves until the shutdown token is cancelled, then shuts down cleanly.
    pub async fn serve(self) -> anyhow::Result<()> {
        let Broker {
            ctx,
            listener,
            kafka,
            _lock,
        } = self;
        let ticker = tokio::spawn(group_timer(ctx.clone()));
        let retention = tokio::spawn(retention_timer(ctx.clone()));
        let cluster = ctx
            .cluster
            .clone()
            .map(|c| tokio::spawn(c.run(ctx.clone())));
        let kafka_loop = async {
            if let Some((l, advertised)) = &kafka {
                accept_loop(l, &ctx, Protocol::Kafka(advertised.clone())).await;
            }
        };
        tokio::join!(accept_loop(&listener, &ctx, Protocol::Rill), kafka_loop);
        if let Some(cluster) = cluster {
            // Raft groups stop before the logs under them close.
            let _ = cluster.await;
        }
        let _ = ticker.await;
        let _ = retention.await;
        drop(listener);
        drop(kafka);
        let dir = ctx.config.data_dir.clone();
        let healthy = tokio::task::spawn_blocking(move || {
            let healthy = ctx.topics.close() & ctx.groups.close();
            (healthy, ctx)
        })
        .await?
        .0;
        if healthy {
            mark_clean(&dir)?;
            tracing::info!("shut down cleanly");
        } else {
            tracing::warn!(
                "a partition failed during this run; the next start will verify every tail"
            );
        }
        Ok(())
    }
}

/// How often group sessions and rebalance deadlines are checked.
const GROUP_TICK: Duration = Duration::from_millis(100);

/// Drives consumer-group timers (session expiry, rebalance deadlines) until shutdown.
async fn group_timer(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(GROUP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            now = tick.tick() => {
                // Expiry and rebalances (assignment) run off the async workers.
                let c = ctx.clone();
                let _ = tokio::task::spawn_blocking(move || c.groups.tick(&c.topics, now)).await;
            }
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Applies retention every `retention_check_interval_ms` until shutdown.
async fn retention_timer(ctx: Arc<Context>) {
    let every = Duration::from_millis(ctx.config.storage.retention_check_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // In a cluster every partition is replicated and deletes old segments through its
        // Raft group only, even before its group has started (its log is not marked
        // replicated yet then, and a segment deleted behind Raft's back breaks the replica).
        if let Some(cluster) = &ctx.cluster {
            cluster.enforce_retention(now_ms).await;
            continue;
        }
        let c = ctx.clone();
        if let Err(e) =
            tokio::task::spawn_blocking(move || c.topics.enforce_retention(now_ms)).await
        {
            tracing::error!(error = %e, "retention task failed");
        }
    }
}

async fn accept_loop(listener: &TcpListener, ctx: &Arc<Context>, protocol: Protocol) {
    let connections = Arc::new(Semaphore::new(ctx.config.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = ctx.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                // Counted against `max_connections_per_ip` until the connection's task ends.
                let Some(from_ip) = ctx.quotas.admit_ip(peer.ip()) else {
                    crate::metrics::global().connections_refused.inc();
                    tracing::warn!(%peer, limit = ctx.config.max_connections_per_ip, "connection refused: its address has its limit of connections open");
                    drop(socket);
                    continue;
                };
                match &ctx.tls {
                    None => {
                        tracker.spawn(serve(
                            socket,
                            peer,
                            ctx.clone(),
                            (permit, from_ip),
                            protocol.clone(),
                        ));
                    }
                    Some(tls) => {
                        let (acceptor, ctx, protocol) =
                            (tls.acceptor(), ctx.clone(), protocol.clone());
                        tracker.spawn(async move {
                            let handshake = tokio::time::timeout(
                                crate::tls::HANDSHAKE_TIMEOUT,
                                acceptor.accept(socket),
                            );
                            match handshake.await {
                                Ok(Ok(mut stream)) => {
                                    // Encrypt a whole response frame at a time (rustls holds
                                    // 64 KiB by default): fewer, larger socket writes.
                                    stream.get_mut().1.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
                                    serve(stream, peer, ctx, (permit, from_ip), protocol).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    tracing::warn!(%peer, "TLS handshake not finished within 10 s; closed");
                                }
                            }
                        });
                    }
                }
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::info!(
        connections = tracker.len(),
        "no longer accepting; finishing in-flight requests"
    );
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection in its listener's protocol.
async fn serve<S: connection::Split>(
    socket: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    slot: (tokio::sync::OwnedSemaphorePermit, crate::quotas::Held),
    protocol: Protocol,
) {
    match protocol {
        Protocol::Rill => connection::serve(socket, peer, ctx, slot).await,
        Protocol::Kafka(l) => crate::kafka::connection::serve(socket, peer, ctx, l, slot).await,
    }
}

pub(crate) fn lock_data_dir(dir: &Path) -> anyhow::Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            anyhow::bail!(
                "data directory {} is in use by another rilld",
                dir.display()
            )
        }
        Err(fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Reads and removes the marker; a crash from here on is an unclean stop.
fn take_clean_marker(dir: &Path) -> anyhow::Result<bool> {
    let marker: PathBuf = dir.join(CLEAN_MARKER);
    if !marker.exists() {
        // A data directory that never held topics has nothing to recover.
        return Ok(!dir.join("topics").exists());
    }
    fs::remove_file(&marker)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

fn mark_clean(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(CLEAN_MARKER);
    fs::File::create(&marker)?.sync_all()?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
