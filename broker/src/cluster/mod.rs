//! A rilld node in a cluster (`[cluster]`): the metadata group, the node's partition replicas,
//! and how requests find leaders. Without cluster settings none of this exists.
//!
//! - **Metadata group** (Raft group 0, every node a voter): its log is an internal partition
//!   log at `<data>/cluster/metadata`; its commands ([`Command`]) are bincode in one-record
//!   batches. The state ([`ClusterState`]: nodes, topics, each partition's replicas) lives in
//!   memory and is rebuilt at every start by applying the whole log again (it is small: one
//!   entry per topic created). The node with the lowest id forms the cluster once every peer
//!   answers and none is formed yet.
//! - **Reconciling**: whenever the state changes, each node creates the topics it does not
//!   have yet (all partitions, locally), and starts a Raft group for every partition it
//!   replicates; a fresh group is formed by its first replica (the preferred leader).
//! - **Requests**: produce and fetch on a partition are served by its leader; elsewhere they
//!   get `NotLeader` naming the leader's client address. Produce goes through the group's
//!   `client_write`: acknowledged once a majority holds the batch under the topic's fsync
//!   policy, with its base offset from the state machine.

mod sequencer;

pub use sequencer::{Answer, Refused, Sequencer, Stored};

use crate::config::ClusterConfig;
use crate::log::{LogConfig, PartitionLog};
use crate::raft::net::{GroupId, Hello, NodeService, PartitionOffsets, Peers, Router};
use crate::raft::{self, NodeInfo, Raft, store};
use crate::server::Context;
use bytes::Bytes;
use futures::StreamExt;
use openraft::EntryPayload;
use rill_protocol::batch::{BatchBuilder, RecordIter};
use rill_protocol::{TopicConfig, TopicName, codec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The metadata group's id.
pub const METADATA_GROUP: GroupId = 0;
/// `<data>/cluster/joined`: this node joined the cluster and caught up once.
const JOINED: &str = "joined";
/// `<data>/cluster/incarnation`: this data directory's random id (see `NodeInfo`).
const INCARNATION: &str = "incarnation";

/// This data directory's incarnation: read, or chosen and written (synced) the first time.
fn incarnation(path: &std::path::Path) -> anyhow::Result<u64> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()));
    }
    // Random enough to tell two lives of a data directory apart.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let value = now ^ (u64::from(std::process::id()) << 40) | 1;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, value.to_string())?;
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(value)
}
/// Bits of a partition group id that hold the partition (the rest is the topic's id).
const PARTITION_BITS: u32 = 20;
const RPC_TTL: Duration = Duration::from_secs(5);

/// A change to the cluster's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: TopicName,
        partitions: u32,
        config: TopicConfig,
        replication_factor: u32,
        /// The replication factor was not asked for: use at most as many replicas as there
        /// are nodes (decided when applied, when the membership is known).
        capped: bool,
    },
    /// Starts moving a partition to `replicas` (its `target`; see `TopicState`).
    Reassign {
        topic: TopicName,
        partition: u32,
        replicas: Vec<u64>,
    },
    /// The partition's group reached the target of move `epoch`: it becomes the replicas.
    Reassigned {
        topic: TopicName,
        partition: u32,
        epoch: u64,
    },
    /// Changes a topic's settings (those given; the rest stay).
    AlterTopic {
        name: TopicName,
        changes: TopicConfig,
    },
    /// Grows a topic to `partitions` partitions, placed like a new topic's.
    AddPartitions { name: TopicName, partitions: u32 },
    /// Deletes a topic: every node stops its replicas and removes its data (see
    /// `Cluster::remove_deleted_topics`).
    DeleteTopic { name: TopicName },
    /// A named producer (re)starts: the name keeps its id and gets the next epoch, fencing
    /// every earlier instance on every node.
    NameProducer { name: String },
    /// A node asks to join (carried to the metadata leader like a command; the leader adds it
    /// to the metadata group as a learner rather than logging it).
    AddNode { id: u64, info: NodeInfo },
    /// Removes a node from the metadata group (executed by the leader like `AddNode`).
    RemoveNode { id: u64 },
    /// A change to the users or ACLs, checked by the proposer (`auth::Security::check`).
    Security(crate::auth::Change),
}

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: u64,
    pub config: TopicConfig,
    /// For each partition, its replicas' node ids, the preferred leader first: the voters of
    /// its Raft group.
    pub replicas: Vec<Vec<u64>>,
    /// For each partition, the replicas it is moving to, while a move is under way.
    pub targets: Vec<Option<Vec<u64>>>,
    /// For each partition, how many moves were begun. A group is formed afresh only at 0.
    pub epochs: Vec<u64>,
}

impl TopicState {
    /// Whether node `id` holds (or is about to hold) a replica of partition `p`.
    pub fn hosts(&self, p: usize, id: u64) -> bool {
        self.replicas.get(p).is_some_and(|r| r.contains(&id))
            || self
                .targets
                .get(p)
                .is_some_and(|t| t.as_ref().is_some_and(|t| t.contains(&id)))
    }
}

/// The metadata group's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Nodes of the metadata group's membership.
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub topics: BTreeMap<TopicName, TopicState>,
    next_topic_id: u64,
    /// Why the last command was refused, by its log index (for the proposer).
    refusals: BTreeMap<u64, String>,
    /// Named producers: name -> (producer id, current epoch). Their ids come from the range
    /// below bit 44, which no node uses (node ids start at 1; see `handlers::producers`).
    producers: BTreeMap<String, (i64, i16)>,
    /// The current epoch of each named producer's id (for fencing on produce).
    producer_epochs: HashMap<i64, i16>,
    next_producer_id: i64,
    /// What the last `NameProducer` commands handed out, by log index (for the proposer).
    named: BTreeMap<u64, (i64, i16)>,
    /// Ids of deleted topics (ids are never reused): a local copy holding one is removed.
    deleted: BTreeSet<u64>,
    /// Users and ACLs (`Command::Security`), handed to `auth::Security` as they change.
    pub security: Arc<crate::auth::SecurityState>,
    /// Log index of the last entry applied.
    pub applied: u64,
}

impl ClusterState {
    /// Applies one committed metadata entry.
    fn apply(&mut self, entry: &raft::RaftEntry) {
        self.applied = entry.log_id.index;
        match &entry.payload {
            EntryPayload::Membership(m) => {
                self.nodes = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
            }
            EntryPayload::Normal(batch) => match decode_command(batch) {
                Ok(Command::NameProducer { name }) => {
                    let named = match self.producers.get(&name) {
                        Some((_, i16::MAX)) => Err(format!(
                            "producer name '{name}' used up its epochs; choose another name"
                        )),
                        Some((id, epoch)) => Ok((*id, epoch + 1)),
                        None => {
                            self.next_producer_id += 1;
                            Ok((self.next_producer_id - 1, 0))
                        }
                    };
                    match named {
                        Ok((id, epoch)) => {
                            self.producers.insert(name, (id, epoch));
                            self.producer_epochs.insert(id, epoch);
                            self.named.insert(entry.log_id.index, (id, epoch));
                            while self.named.len() > 1000 {
                                self.named.pop_first();
                            }
                        }
                        Err(why) => {
                            self.refusals.insert(entry.log_id.index, why);
                        }
                    }
                }
                Ok(cmd) => {
                    if let Err(why) = self.command(cmd) {
                        self.refusals.insert(entry.log_id.index, why);
                        while self.refusals.len() > 100 {
                            self.refusals.pop_first();
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(index = entry.log_id.index, error = %e, "undecodable metadata entry; skipped")
                }
            },
            EntryPayload::Blank => {}
        }
    }

    fn command(&mut self, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::CreateTopic {
                name,
                partitions,
                config,
                replication_factor,
                capped,
            } => {
                if self.topics.contains_key(&name) {
                    return Err(format!("topic '{name}' already exists"));
                }
                let nodes: Vec<u64> = self.nodes.keys().copied().collect();
                let rf = if capped {
                    (replication_factor as usize).min(nodes.len())
                } else {
                    replication_factor as usize
                };
                if rf == 0 || rf > nodes.len() {
                    return Err(format!(
                        "replication factor {replication_factor} needs between 1 and {} nodes",
                        nodes.len()
                    ));
                }
                self.next_topic_id += 1;
                let id = self.next_topic_id;
                let replicas = place(id, 0..partitions, rf, &nodes);
                self.topics.insert(
                    name,
                    TopicState {
                        id,
                        config,
                        replicas,
                        targets: vec![None; partitions as usize],
                        epochs: vec![0; partitions as usize],
                    },
                );
                Ok(())
            }
            Command::Reassign {
                topic,
                partition,
                replicas,
            } => {
                let known: BTreeSet<u64> = self.nodes.keys().copied().collect();
                let t = self
                    .topics
                    .get_mut(&topic)
                    .ok_or_else(|| format!("unknown topic '{topic}'"))?;
                let p = partition as usize;
                if p >= t.replicas.len() {
                    return Err(format!(
                        "topic '{topic}' has {} partition(s); there is no partition {partition}",
                        t.replicas.len()
                    ));
                }
                let set: BTreeSet<u64> = replicas.iter().copied().collect();
                if replicas.is_empty() || set.len() != replicas.len() {
                    return Err("the new replicas must be distinct node ids, at least one".into());
                }
                if let Some(unknown) = set.difference(&known).next() {
                    return Err(format!("node {unknown} is not in the cluster"));
                }
                if let Some(target) = &t.targets[p] {
                    return Err(format!(
                        "{topic}-{partition} is already moving to {target:?}; wait for that move to finish"
                    ));
                }
                if set == t.replicas[p].iter().copied().collect::<BTreeSet<u64>>() {
                    // The same replicas: only the preferred leader's place may change.
                    t.replicas[p] = replicas;
                    return Ok(());
                }
                t.targets[p] = Some(replicas);
                t.epochs[p] += 1;
                Ok(())
            }
            Command::Reassigned {
                topic,
                partition,
                epoch,
            } => {
                let t = self
                    .topics
                    .get_mut(&topic)
                    .ok_or_else(|| format!("unknown topic '{topic}'"))?;
                let p = partition as usize;
                if t.epochs.get(p) != Some(&epoch) || t.targets.get(p).is_none_or(Option::is_none) {
                    return Err(format!(
                        "{topic}-{partition}: move {epoch} is not under way"
                    ));
                }
                t.replicas[p] = t.targets[p].take().unwrap_or_default();
                Ok(())
            }
            Command::AlterTopic { name, changes } => {
                if name.as_str() == rill_protocol::OFFSETS_TOPIC {
                    return Err(format!(
                        "'{name}' is internal: its settings cannot be changed"
                    ));
                }
                let t = self
                    .topics
                    .get_mut(&name)
                    .ok_or_else(|| format!("unknown topic '{name}'"))?;
                t.config = t.config.merged(&changes);
                Ok(())
            }
            Command::AddPartitions { name, partitions } => {
                let nodes: Vec<u64> = self.nodes.keys().copied().collect();
                let t = self
                    .topics
                    .get_mut(&name)
                    .ok_or_else(|| format!("unknown topic '{name}'"))?;
                let current = t.replicas.len() as u32;
                if partitions <= current {
                    return Err(format!(
                        "topic '{name}' has {current} partitions; it can only grow (asked for {partitions})"
                    ));
                }
                let rf = t.replicas.first().map_or(1, Vec::len).min(nodes.len());
                t.replicas
                    .extend(place(t.id, current..partitions, rf.max(1), &nodes));
                t.targets.resize(partitions as usize, None);
                t.epochs.resize(partitions as usize, 0);
                Ok(())
            }
            Command::DeleteTopic { name } => {
                if name.as_str() == rill_protocol::OFFSETS_TOPIC {
                    return Err(format!("'{name}' is internal and cannot be deleted"));
                }
                let t = self
                    .topics
                    .remove(&name)
                    .ok_or_else(|| format!("unknown topic '{name}'"))?;
                self.deleted.insert(t.id);
                Ok(())
            }
            Command::Security(change) => {
                Arc::make_mut(&mut self.security).apply(&change);
                Ok(())
            }
            Command::NameProducer { .. } => Err("named producers are applied apart".into()),
            Command::AddNode { .. } | Command::RemoveNode { .. } => {
                Err("membership changes are not log commands".into())
            }
        }
    }
}

/// Replicas of a topic's `partitions`: `rf` nodes each, spread round-robin from an offset of
/// the topic's id, so preferred leaders (the first) are balanced over the nodes.
fn place(
    topic_id: u64,
    partitions: std::ops::Range<u32>,
    rf: usize,
    nodes: &[u64],
) -> Vec<Vec<u64>> {
    partitions
        .map(|p| {
            (0..rf)
                .map(|r| nodes[(topic_id as usize + p as usize + r) % nodes.len()])
                .collect()
        })
        .collect()
}

fn encode_command(cmd: &Command) -> Bytes {
    let mut value = bytes::BytesMut::new();
    codec::encode(cmd, &mut value);
    let mut b = BatchBuilder::with_capacity(value.len() + 96);
    b.push(None, &value, &[], 0);
    b.finish()
}

fn decode_command(batch: &Bytes) -> Result<Command, String> {
    let record = RecordIter::new(batch.clone())
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("empty command batch")?
        .map_err(|e| e.to_string())?;
    codec::decode(&record.value, "metadata command").map_err(|e| e.to_string())
}

/// The group id of a topic's partition.
pub fn group_id(topic_id: u64, partition: u32) -> GroupId {
    (topic_id << PARTITION_BITS) | u64::from(partition)
}

/// This node's replica of a partition.
#[derive(Clone)]
pub struct Replica {
    pub raft: Raft,
    pub log: Arc<PartitionLog>,
    pub group: GroupId,
    /// Where produce goes when this replica leads.
    pub sequencer: Sequencer,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("log", &self.log.label())
            .field("group", &self.group)
            .finish()
    }
}

/// Why a request cannot be served here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("not the leader of {what}; the leader is node {leader} at {addr}")]
    NotLeader {
        what: String,
        leader: u64,
        addr: String,
    },
    #[error("{what} has no leader at the moment (an election is under way)")]
    NoLeader { what: String },
    #[error("topic '{topic}' has {partitions} partition(s); there is no partition {partition}")]
    UnknownPartition {
        topic: TopicName,
        partition: u32,
        partitions: u32,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// This node's part of the cluster.
pub struct Cluster {
    pub node_id: u64,
    pub info: NodeInfo,
    config: ClusterConfig,
    raft_config: Arc<openraft::Config>,
    peers: Peers,
    router: Router,
    meta: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    replicas: RwLock<HashMap<(TopicName, u32), Replica>>,
    /// The metadata log index this node's topics and replicas were last brought in line with.
    reconciled: watch::Sender<u64>,
    /// Partitions this node is the preferred replica of but does not lead, since when
    /// (leader rebalancing).
    preferring: Mutex<HashMap<GroupId, std::time::Instant>>,
    /// Partition moves (topic, partition, epoch) this node drives now, as their leader.
    moving: Mutex<BTreeSet<(TopicName, u32, u64)>>,
    /// Where to record that this node joined, if it has no record yet.
    joined: Option<std::path::PathBuf>,
    /// Whether this node is catching up after losing its data: `None` until `rejoin`
    /// decided (always `Some(false)` for a node that has joined before). Such a node must not
    /// form partition groups afresh: they exist on the other replicas.
    lost_data: watch::Sender<Option<bool>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish()
    }
}

struct Service {
    cluster: std::sync::Weak<Cluster>,
}

impl NodeService for Service {
    fn hello(&self) -> Hello {
        let c = self.cluster.upgrade();
        Hello {
            node_id: c.as_ref().map_or(0, |c| c.node_id),
            info: c.as_ref().map(|c| c.info.clone()).unwrap_or_default(),
            initialized: c.as_ref().is_some_and(|c| c.formed()),
            members: c
                .as_ref()
                .map(|c| {
                    let m = c.meta.metrics().borrow().membership_config.clone();
                    m.nodes().map(|(id, n)| (*id, n.clone())).collect()
                })
                .unwrap_or_default(),
            // Only a leader that applied an entry of its own term has applied everything
            // committed before it; until then no node may take its figure as current.
            meta_applied: c.as_ref().map_or(0, |c| {
                let m = c.meta.metrics().borrow().clone();
                match m.last_applied {
                    Some(l) if l.leader_id.term == m.current_term => l.index,
                    _ => u64::MAX,
                }
            }),
        }
    }

    fn offsets(
        &self,
        group: GroupId,
        timestamp: Option<i64>,
    ) -> futures::future::BoxFuture<'static, Result<PartitionOffsets, String>> {
        let c = self.cluster.upgrade();
        Box::pin(async move {
            let replica = c
                .and_then(|c| c.replica_by_group(group))
                .ok_or("no replica of that partition here")?;
            local_offsets(replica.log, timestamp).await
        })
    }

    fn propose(&self, command: Bytes) -> futures::future::BoxFuture<'static, Result<u64, String>> {
        let c = self.cluster.upgrade();
        Box::pin(async move {
            match c {
                Some(c) => c.write_metadata(command).await,
                None => Err("the node is shutting down".into()),
            }
        })
    }
}

impl Cluster {
    /// Opens the metadata log, starts the metadata group and the cluster listener. Blocking
    /// parts run off the async workers.
    pub async fn start(
        config: ClusterConfig,
        client_addr: SocketAddr,
        data_dir: &std::path::Path,
        log_config: LogConfig,
        security: Arc<crate::auth::Security>,
        tls: Option<Arc<crate::tls::ClusterTls>>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let raft_config = raft::raft_config(config.timing()).map_err(anyhow::Error::msg)?;
        let dir = data_dir.join("cluster").join("metadata");
        let meta_log = tokio::task::spawn_blocking(move || {
            PartitionLog::open(
                &dir,
                "__cluster_metadata".into(),
                LogConfig {
                    retention_ms: 0,
                    retention_bytes: 0,
                    ..log_config
                },
                false,
            )
        })
        .await??
        .0;
        let meta_log = Arc::new(meta_log);
        let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let machine = store::Machine::replaying(
            meta_log.clone(),
            Box::new(move |entry| {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let before = s.security.clone();
                s.apply(entry);
                if !Arc::ptr_eq(&before, &s.security) {
                    // Before the proposer hears it is applied: its next request sees it.
                    security.replace(s.security.clone());
                }
                tx.send_replace(Arc::new(s.clone()));
            }),
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen for cluster traffic on {}: {e}",
                    config.listen
                )
            })?;
        let incarnation = incarnation(&data_dir.join("cluster").join(INCARNATION))?;
        let info = NodeInfo {
            incarnation,
            cluster_addr: config
                .peers
                .get(&config.node_id)
                .cloned()
                .unwrap_or_else(|| config.listen.to_string()),
            client_addr: client_addr.to_string(),
        };
        let (peers, router) = (
            Peers::with_routes(config.peers.clone(), tls.clone()),
            Router::default(),
        );
        router.spawn_heartbeats(Duration::from_millis(config.heartbeat_ms));
        // No record of having joined: a new node, or one whose data was lost. Until the peers
        // tell which, its groups abstain from voting (see `Cluster::rejoin`).
        let joined = data_dir.join("cluster").join(JOINED);
        let rejoining = !joined.exists();
        router.set_rejoining(rejoining);
        let meta = raft::start_group(
            config.node_id,
            METADATA_GROUP,
            raft_config.clone(),
            meta_log,
            Some(machine),
            &peers,
            &router,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let cluster = Arc::new(Cluster {
            node_id: config.node_id,
            info,
            config,
            raft_config,
            peers,
            router: router.clone(),
            meta,
            state: rx,
            replicas: RwLock::new(HashMap::new()),
            reconciled: watch::Sender::new(0),
            moving: Mutex::new(BTreeSet::new()),
            preferring: Mutex::new(HashMap::new()),
            joined: rejoining.then_some(joined),
            lost_data: watch::Sender::new((!rejoining).then_some(false)),
        });
        router.set_service(Arc::new(Service {
            cluster: Arc::downgrade(&cluster),
        }));
        let encrypted = tls.is_some();
        tokio::spawn(crate::raft::net::serve(listener, router, tls));
        tracing::info!(node = cluster.node_id, cluster_listen = %cluster.config.listen, tls = encrypted, "cluster node started");
        Ok(cluster)
    }

    /// The current metadata.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    pub fn default_replication_factor(&self) -> u32 {
        self.config.default_replication_factor
    }

    /// Whether this node is ready to serve (`/health`): it caught up with the cluster's
    /// metadata and, if it came back with an empty data directory, with every partition it
    /// replicates.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.state().nodes.is_empty() {
            return Err("joining: not caught up with the cluster's metadata yet");
        }
        match &self.joined {
            Some(marker) if !marker.exists() => {
                Err("catching up: copying partitions from their leaders before taking part")
            }
            _ => Ok(()),
        }
    }

    /// Forms the cluster (lowest node id only, once every peer answers and none is formed),
    /// then keeps this node's topics and replicas in line with the metadata until shutdown.
    pub async fn run(self: Arc<Self>, ctx: Arc<Context>) {
        let bootstrap = self.clone();
        tokio::spawn(async move { bootstrap.bootstrap().await });
        let superuser = self.clone();
        let c = ctx.clone();
        tokio::spawn(async move { superuser.bootstrap_superuser(&c).await });
        if let Some(marker) = self.joined.clone() {
            let rejoin = self.clone();
            tokio::spawn(async move { rejoin.rejoin(marker).await });
        }
        let mut state = self.state.clone();
        // Leadership moves without a metadata change: moves are looked at every second too.
        let mut moves = tokio::time::interval(Duration::from_secs(1));
        moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let current = state.borrow_and_update().clone();
            let applied = current.applied;
            match self.reconcile(&ctx, &current).await {
                Ok(()) => {
                    self.reconciled.send_if_modified(|r| {
                        let moved = applied > *r;
                        *r = (*r).max(applied);
                        moved
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not apply the cluster metadata yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = ctx.shutdown.cancelled() => break,
                    }
                }
            }
            self.drive_moves();
            if let Err(e) = self.tidy(&ctx).await {
                tracing::warn!(error = %e, "could not empty a replica that moved away; retrying");
            }
            loop {
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return self.shutdown().await } else { break },
                    _ = moves.tick() => {
                        self.drive_moves();
                        self.prefer_leaders();
                        if let Err(e) = self.tidy(&ctx).await {
                            tracing::warn!(error = %e, "could not empty a replica that moved away; retrying");
                        }
                    }
                    _ = ctx.shutdown.cancelled() => return self.shutdown().await,
                }
            }
        }
        self.shutdown().await;
    }

    /// For a node with no record of having joined: asks the peers for the membership. If the
    /// cluster has not formed, or records this node with its own incarnation, this is a new
    /// node and its groups vote at once. If the membership records another incarnation, this
    /// node lost its data: each group abstains until it caught up with its leader's commit, and
    /// only then is the record written (a crash before that leaves it abstaining again).
    async fn rejoin(&self, marker: std::path::PathBuf) {
        let poll = Duration::from_millis(200);
        // Whether the cluster is formed without this node: a new node, which asks to join.
        let mut outsider = false;
        let lost = loop {
            let mut decided = None;
            for (&id, addr) in self
                .config
                .peers
                .iter()
                .filter(|(id, _)| **id != self.node_id)
            {
                let Ok(h) = self.peers.get(id, addr).hello(Duration::from_secs(1)).await else {
                    continue;
                };
                outsider = h.initialized && !h.members.contains_key(&self.node_id);
                decided = match h.members.get(&self.node_id) {
                    _ if h.members.is_empty() => Some(false),
                    Some(me) => Some(me.incarnation != self.info.incarnation),
                    // A member set without this node: not a voter of it anyway.
                    None => Some(false),
                };
                break;
            }
            if let Some(lost) = decided {
                break lost;
            }
            tokio::time::sleep(poll).await;
        };
        if outsider {
            self.ask_to_join(poll).await;
        }
        self.lost_data.send_replace(Some(lost));
        if lost {
            tracing::warn!(
                "this node lost its data (the cluster knows an earlier incarnation of it): its replicas catch up before they vote"
            );
        } else {
            self.router.set_rejoining(false);
        }
        // Caught up: the metadata, every replica the metadata gives this node, and their logs.
        loop {
            let caught_up = self.formed() && !self.router.is_abstaining(METADATA_GROUP) && {
                let applied = self
                    .meta
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |l| l.index);
                *self.reconciled.borrow() >= applied && self.router.abstaining() == 0
            };
            if caught_up {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        self.router.set_rejoining(false);
        self.lost_data.send_replace(Some(false));
        let written = std::fs::write(&marker, self.node_id.to_string())
            .and_then(|()| std::fs::File::open(&marker)?.sync_all())
            .and_then(|()| std::fs::File::open(marker.parent().unwrap_or(&marker))?.sync_all());
        match written {
            Ok(()) => tracing::info!("joined the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, path = %marker.display(), "cannot record that this node joined")
            }
        }
    }

    /// A new node of a formed cluster: asks its peers (the metadata leader among them acts)
    /// to add it to the metadata group, until its own metadata group lists it.
    async fn ask_to_join(&self, poll: Duration) {
        let command = encode_command(&Command::AddNode {
            id: self.node_id,
            info: self.info.clone(),
        });
        tracing::info!("the cluster is formed without this node: asking to join");
        loop {
            let listed = |c: &Self| {
                c.meta
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&c.node_id)
                    .is_some()
            };
            if listed(self) {
                return;
            }
            for (&id, addr) in self
                .config
                .peers
                .iter()
                .filter(|(id, _)| **id != self.node_id)
            {
                match self
                    .peers
                    .get(id, addr)
                    .propose(command.clone(), RPC_TTL)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => tracing::debug!(node = id, error = %e, "join request not taken"),
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn bootstrap(&self) {
        if self.config.peers.keys().next() != Some(&self.node_id) {
            return;
        }
        let mut members = BTreeMap::new();
        for (&id, addr) in &self.config.peers {
            loop {
                if self.formed() {
                    return;
                }
                if id == self.node_id {
                    members.insert(id, self.info.clone());
                    break;
                }
                match self.peers.get(id, addr).hello(RPC_TTL).await {
                    Ok(h) if h.initialized => return,
                    Ok(h) => {
                        members.insert(id, h.info);
                        break;
                    }
                    Err(e) => {
                        tracing::info!(node = id, %addr, error = %e, "waiting for peer to form the cluster");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        match self.meta.initialize(members).await {
            Ok(()) => tracing::info!(nodes = self.config.peers.len(), "cluster formed"),
            Err(e) => tracing::info!(error = %e, "cluster already formed"),
        }
    }

    fn formed(&self) -> bool {
        self.meta
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }

    /// Proposes a metadata command from any node: directly on the metadata leader, otherwise
    /// through it. Returns once it is committed and applied here.
    pub async fn propose(&self, cmd: &Command) -> Result<(), String> {
        self.propose_at(cmd).await.map(|_| ())
    }

    /// A named producer's id and new epoch, handed out by the metadata group so that every
    /// node fences its earlier instances.
    pub async fn name_producer(&self, name: &str) -> Result<(i64, i16), String> {
        let index = self
            .propose_at(&Command::NameProducer { name: name.into() })
            .await?;
        self.state().named.get(&index).copied().ok_or_else(|| {
            "the producer name was registered, but its epoch is no longer known here; retry".into()
        })
    }

    /// The current epoch of named producer `id`, if `epoch` is older (a fenced instance).
    pub fn fenced(&self, id: i64, epoch: i16) -> Option<i16> {
        self.state()
            .producer_epochs
            .get(&id)
            .copied()
            .filter(|current| epoch < *current)
    }

    /// Gives a superuser without credentials those of RILL_SUPERUSER_PASSWORD, through the
    /// metadata log (applied only if the user is still unknown then), retrying until a
    /// metadata leader takes it or the broker stops.
    async fn bootstrap_superuser(&self, ctx: &Context) {
        loop {
            let change = match ctx.security.bootstrap() {
                Ok(Some(change)) => change,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the bootstrap superuser");
                    return;
                }
            };
            let user = match &change {
                crate::auth::Change::BootstrapUser { user, .. } => user.clone(),
                _ => String::new(),
            };
            match self.propose(&Command::Security(change)).await {
                Ok(()) => {
                    tracing::info!(user = %user, "created superuser from RILL_SUPERUSER_PASSWORD (unless the cluster had it already)");
                    continue;
                }
                Err(why) => tracing::debug!(%why, "bootstrap superuser not proposed yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
        }
    }

    /// [`Cluster::propose`], returning the command's metadata log index.
    async fn propose_at(&self, cmd: &Command) -> Result<u64, String> {
        let batch = encode_command(cmd);
        // Just after start, or during an election, wait a little for a leader.
        let known = self.meta.metrics().borrow().current_leader;
        let leader = match known {
            Some(l) => Some(l),
            None => self
                .meta
                .wait(Some(RPC_TTL))
                .metrics(|m| m.current_leader.is_some(), "a metadata leader")
                .await
                .ok()
                .and_then(|m| m.current_leader),
        };
        let index = match leader {
            Some(l) if l == self.node_id => self.write_metadata(batch).await?,
            Some(l) => {
                let m = self.meta.metrics().borrow().clone();
                let addr = self
                    .cluster_addr(&m, l)
                    .ok_or_else(|| format!("metadata leader {l} unknown"))?;
                self.peers.get(l, &addr).propose(batch, RPC_TTL).await?
            }
            None => return Err("the cluster has no metadata leader at the moment".into()),
        };
        // Applied and reconciled here too before answering, so the caller sees the change.
        let mut done = self.reconciled.subscribe();
        tokio::time::timeout(RPC_TTL, done.wait_for(|applied| *applied >= index))
            .await
            .map_err(|_| {
                "the change was committed but this node has not applied it yet".to_string()
            })?
            .map_err(|_| "the node is shutting down".to_string())?;
        if let Some(why) = self.state().refusals.get(&index) {
            return Err(why.clone());
        }
        Ok(index)
    }

    async fn write_metadata(&self, batch: Bytes) -> Result<u64, String> {
        match decode_command(&batch) {
            Ok(Command::AddNode { id, info }) => return self.add_node(id, info).await,
            Ok(Command::RemoveNode { id }) => return self.remove_node(id).await,
            _ => {}
        }
        let r = self
            .meta
            .client_write(batch)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(why) = self.state().refusals.get(&r.log_id.index) {
            return Err(why.clone());
        }
        Ok(r.log_id.index)
    }

    /// On the metadata leader: adds node `id` to the metadata group as a learner (a node
    /// asking to join). A node already in the membership is left as it is (a retry).
    async fn add_node(&self, id: u64, info: NodeInfo) -> Result<u64, String> {
        let m = self.meta.metrics().borrow().membership_config.clone();
        if m.membership().get_node(&id).is_some() {
            return Ok(m.log_id().map_or(0, |l| l.index));
        }
        tracing::info!(node = id, cluster_addr = %info.cluster_addr, client_addr = %info.client_addr, "adding a node to the cluster");
        let r = self
            .meta
            .add_learner(id, info, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.log_id.index)
    }

    /// On the metadata leader: removes node `id` from the metadata group, refused while any
    /// partition's replicas or move target name it. A voter's place goes to a learner when
    /// fewer than three voters would remain.
    async fn remove_node(&self, id: u64) -> Result<u64, String> {
        let state = self.state();
        let held: Vec<String> = state
            .topics
            .iter()
            .flat_map(|(name, t)| {
                (0..t.replicas.len())
                    .filter(move |p| t.hosts(*p, id))
                    .map(move |p| format!("{name}-{p}"))
            })
            .collect();
        if !held.is_empty() {
            let shown = held.iter().take(10).cloned().collect::<Vec<_>>().join(" ");
            let more = if held.len() > 10 { " ..." } else { "" };
            return Err(format!(
                "node {id} still holds {} replica(s) ({shown}{more}); move them to other nodes first with `rill topic reassign`",
                held.len()
            ));
        }
        let m = self.meta.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        if membership.get_node(&id).is_none() {
            return Err(format!("node {id} is not in the cluster"));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change: openraft::ChangeMembers<u64, NodeInfo> = if voters.contains(&id) {
            let mut next: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            let learners: Vec<u64> = membership.learner_ids().filter(|l| *l != id).collect();
            for l in learners {
                if next.len() >= 3 {
                    break;
                }
                next.insert(l);
            }
            if next.is_empty() {
                return Err(format!("node {id} is the cluster's last voter"));
            }
            openraft::ChangeMembers::ReplaceAllVoters(next)
        } else {
            openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(node = id, "removing a node from the cluster");
        let r = self
            .meta
            .change_membership(change, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.log_id.index)
    }

    /// Creates missing topics locally and starts this node's missing replicas; removes the
    /// local copies of deleted topics (see [`Cluster::remove_deleted_topics`]).
    async fn reconcile(&self, ctx: &Arc<Context>, state: &ClusterState) -> anyhow::Result<()> {
        for (name, topic) in &state.topics {
            let local = ctx.topics.get(name);
            if local.is_ok() {
                let (c, n) = (ctx.clone(), name.clone());
                let held = tokio::task::spawn_blocking(move || c.topics.cluster_id(&n)).await?;
                match held {
                    // A topic created before ids were recorded: it is this one.
                    None => {
                        let (c, n, id) = (ctx.clone(), name.clone(), topic.id);
                        tokio::task::spawn_blocking(move || c.topics.set_cluster_id(&n, id))
                            .await??;
                    }
                    Some(held) if held == topic.id => {}
                    // A later topic of this name, and this state is replayed part-way:
                    // leave it until the state reaches it.
                    Some(held) if held > topic.id => continue,
                    // An earlier topic of this name, deleted while this node was away.
                    Some(held) if state.deleted.contains(&held) => {
                        self.remove_local_topic(ctx, name).await?;
                    }
                    Some(held) => anyhow::bail!(
                        "local topic '{name}' holds cluster topic {held}, which the metadata neither has nor deleted"
                    ),
                }
            }
            match ctx.topics.get(name) {
                Err(_) => {
                    let (c, n, t) = (ctx.clone(), name.clone(), topic.clone());
                    tokio::task::spawn_blocking(move || {
                        c.topics
                            .create_with_id(n, t.replicas.len() as u32, t.config, Some(t.id))
                    })
                    .await??;
                }
                Ok(local) => {
                    // Grown or altered since this node created it.
                    let count = topic.replicas.len() as u32;
                    let grow = local.partitions.len() < count as usize;
                    let alter = local.config != topic.config;
                    if grow || alter {
                        let (c, n, config) = (ctx.clone(), name.clone(), topic.config.clone());
                        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                            if grow {
                                c.topics.add_partitions(&n, count)?;
                            }
                            if alter {
                                c.topics.alter(&n, &config)?;
                            }
                            Ok(())
                        })
                        .await??;
                    }
                }
            }
            let missing: Vec<u32> = (0..topic.replicas.len() as u32)
                .filter(|p| {
                    topic.hosts(*p as usize, self.node_id) && self.replica_of(name, *p).is_none()
                })
                .collect();

            // Started side by side: each start waits a random part of a tick (`start_group`).
            let mut starts = futures::stream::iter(missing)
                .map(|p| self.start_replica(ctx, state, name, topic, p))
                .buffer_unordered(1024);
            while let Some(started) = starts.next().await {
                started?;
            }
        }
        self.remove_deleted_topics(ctx, state).await
    }

    /// Removes the local copy of every topic the metadata deleted: one whose recorded cluster
    /// id is among the deleted ids (never one that is merely missing from the state, which
    /// may be replayed part-way or applied late by a new metadata leader). The coordinator
    /// then drops the deleted topics' committed offsets, so a topic created again under the
    /// name starts without them.
    async fn remove_deleted_topics(
        &self,
        ctx: &Arc<Context>,
        state: &ClusterState,
    ) -> anyhow::Result<()> {
        let candidates: Vec<TopicName> = ctx
            .topics
            .list()
            .into_iter()
            .map(|t| t.name.clone())
            .filter(|n| !state.topics.contains_key(n))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let (c, gone) = (ctx.clone(), state.deleted.clone());
        let deleted: Vec<TopicName> = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter(|n| c.topics.cluster_id(n).is_some_and(|id| gone.contains(&id)))
                .collect()
        })
        .await?;
        if deleted.is_empty() {
            return Ok(());
        }
        for name in &deleted {
            self.remove_local_topic(ctx, name).await?;
        }
        if state
            .topics
            .keys()
            .any(|t| t.as_str() == rill_protocol::OFFSETS_TOPIC)
            && crate::handlers::groups::coordinating(ctx).await.is_ok()
        {
            let dropped = ctx
                .groups
                .offsets()
                .forget_topics(|t| state.topics.contains_key(t))
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if dropped > 0 {
                tracing::info!(dropped, "deleted the committed offsets of deleted topics");
            }
        }
        Ok(())
    }

    /// Stops this node's replicas of `name` and deletes its local copy.
    async fn remove_local_topic(&self, ctx: &Arc<Context>, name: &TopicName) -> anyhow::Result<()> {
        let partitions = ctx
            .topics
            .get(name)
            .map_or(0, |t| t.partitions.len() as u32);
        for p in 0..partitions {
            self.drop_replica(name, p).await;
        }
        let (c, n) = (ctx.clone(), name.clone());
        match tokio::task::spawn_blocking(move || c.topics.delete(&n)).await? {
            Ok(()) | Err(crate::topics::TopicError::UnknownTopic(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(topic = %name, "topic deleted in the cluster; local copy removed");
        Ok(())
    }

    /// Stops this node's replica of `name`-`p`, if it runs.
    async fn drop_replica(&self, name: &TopicName, p: u32) {
        let replica = self
            .replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.clone(), p));
        if let Some(r) = replica {
            self.router.remove(r.group);
            let _ = r.raft.shutdown().await;
        }
    }

    /// Starts this node's replica of `name`-`p`, forming the group if this node is its first
    /// replica and the group is new.
    async fn start_replica(
        &self,
        ctx: &Arc<Context>,
        state: &ClusterState,
        name: &TopicName,
        topic: &TopicState,
        p: u32,
    ) -> anyhow::Result<()> {
        let replicas = &topic.replicas[p as usize];
        let log = ctx.topics.partition(name, p)?;
        let group = group_id(topic.id, p);
        let raft = raft::start_group(
            self.node_id,
            group,
            self.raft_config.clone(),
            log.clone(),
            None,
            &self.peers,
            &self.router,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        // Only a partition never moved is formed here; a moved one's group exists on its
        // other replicas, which add this one. The first replica forms it (and so usually
        // leads it, which balances leaders). If the first replica's node is down, the others
        // form it after a few election timeouts without hearing from it: openraft allows
        // several nodes to initialize a group with the same membership, and every node
        // derives the same one from the metadata.
        let pristine = topic.epochs.get(p as usize) == Some(&0) && log.index_range() == (0, 0);
        if pristine && replicas.contains(&self.node_id) && !self.lost_data().await {
            let members: BTreeMap<u64, NodeInfo> = replicas
                .iter()
                .filter_map(|id| state.nodes.get(id).map(|n| (*id, n.clone())))
                .collect();
            let first = replicas.first() == Some(&self.node_id);
            let wait = Duration::from_millis(self.config.timing().election_max_ms * 3);
            let (raft, name) = (raft.clone(), name.clone());
            let form = async move {
                if !first {
                    tokio::time::sleep(wait).await;
                    if raft.is_initialized().await.unwrap_or(true) {
                        return;
                    }
                    tracing::info!(topic = %name, partition = p, "forming the partition group: its first replica has not");
                }
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!(topic = %name, partition = p, error = %e, "partition group already formed");
                }
            };
            if first {
                form.await;
            } else {
                tokio::spawn(form);
            }
        }
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (name.clone(), p),
                Replica {
                    sequencer: Sequencer::start(
                        raft.clone(),
                        log.clone(),
                        self.node_id,
                        self.config.timing(),
                    ),
                    raft,
                    log,
                    group,
                },
            );
        tracing::info!(topic = %name, partition = p, group, "replica started");
        Ok(())
    }

    /// Stops and empties the replicas this node no longer holds (moved away), and the
    /// leftovers of one it left while down or before a crash, once this node's metadata is
    /// known to be current: a replica is emptied only on the latest word, never on a state
    /// replayed part-way (a later entry may have given the partition back to this node).
    async fn tidy(&self, ctx: &Arc<Context>) -> anyhow::Result<()> {
        let state = self.state();
        let mut surplus = Vec::new();
        for (name, topic) in &state.topics {
            for p in 0..topic.replicas.len() as u32 {
                if topic.hosts(p as usize, self.node_id) {
                    continue;
                }
                let running = self.replica_of(name, p).is_some();
                let log = ctx.topics.partition(name, p)?;
                let (first, end) = log.index_range();
                if running || end > first {
                    surplus.push((name.clone(), p, log));
                }
            }
        }
        if !surplus.is_empty() && self.metadata_current(state.applied).await {
            for (name, p, log) in surplus {
                self.stop_replica(&name, p, log).await?;
            }
        }
        self.remove_deleted_topics(ctx, &state).await
    }

    /// Node `id`'s cluster address: from the membership a group's metrics `m` know (it may be
    /// ahead of what was applied), else from this node's `--peers`.
    fn cluster_addr(&self, m: &openraft::RaftMetrics<u64, NodeInfo>, id: u64) -> Option<String> {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.cluster_addr.clone())
            .or_else(|| self.config.peers.get(&id).cloned())
    }

    /// The last metadata index applied here.
    fn meta_applied(&self) -> u64 {
        self.meta
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Whether state `applied` is as new as the metadata leader's now: this node leads the
    /// metadata group, or its leader answers that it applied no more.
    async fn metadata_current(&self, applied: u64) -> bool {
        let m = self.meta.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            return false;
        };
        if leader == self.node_id {
            // A new leader may not have applied what earlier terms committed yet: it has once
            // it applied an entry of its own term.
            let own_term = m
                .last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term);
            return self.confirmed_leader(&m) && own_term && applied >= self.meta_applied();
        }
        let Some(addr) = self.cluster_addr(&m, leader) else {
            return false;
        };
        match self.peers.get(leader, &addr).hello(RPC_TTL).await {
            Ok(h) => applied >= h.meta_applied,
            Err(_) => false,
        }
    }

    /// Stops this node's replica of `name`-`p` (if running) and empties its log and Raft files:
    /// the partition moved away from this node.
    async fn stop_replica(
        &self,
        name: &TopicName,
        p: u32,
        log: Arc<PartitionLog>,
    ) -> anyhow::Result<()> {
        self.drop_replica(name, p).await;
        tokio::task::spawn_blocking(move || store::forget(&log))
            .await?
            .map_err(anyhow::Error::msg)?;
        tracing::info!(topic = %name, partition = p, "replica moved away; stopped and emptied");
        Ok(())
    }

    /// Starts a task for every move this node's replicas lead and no task drives yet.
    fn drive_moves(self: &Arc<Self>) {
        let state = self.state();
        for (name, t) in &state.topics {
            for (p, target) in t.targets.iter().enumerate() {
                let Some(target) = target else { continue };
                let Some(r) = self.replica_of(name, p as u32) else {
                    continue;
                };
                if !self.confirmed_leader(&r.raft.metrics().borrow()) {
                    continue;
                }
                let key = (name.clone(), p as u32, t.epochs[p]);
                if !self
                    .moving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone())
                {
                    continue;
                }
                let (this, target) = (self.clone(), target.clone());
                tokio::spawn(async move {
                    let (name, p, epoch) = key.clone();
                    match this.drive_move(&r, &name, p, &target, epoch).await {
                        Ok(()) => {
                            tracing::info!(topic = %name, partition = p, replicas = ?target, "partition moved")
                        }
                        Err(e) => {
                            tracing::warn!(topic = %name, partition = p, error = %e, "partition move interrupted; the group's leader resumes it")
                        }
                    }
                    this.moving
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                });
            }
        }
    }

    /// Leader rebalancing: for each partition whose preferred replica (first) is this node's
    /// and has been a follower for `leader_rebalance_ms`, asks the leader to step aside
    /// (`Router::step_aside`: it stops heartbeats and service once this replica holds all it
    /// has), waits out the followers' leases, and starts an election, which this replica
    /// then wins as the first candidate with a full log. The election is openraft's; this
    /// only picks its moment (openraft 0.9 has no leader transfer). Produce to the partition
    /// pauses for about one election; an attempt that fails is retried after another
    /// `leader_rebalance_ms`.
    fn prefer_leaders(self: &Arc<Self>) {
        let delay = Duration::from_millis(self.config.leader_rebalance_ms);
        if delay.is_zero() || self.readiness().is_err() {
            return;
        }
        let state = self.state();
        let now = std::time::Instant::now();
        let mut preferring = self.preferring.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = BTreeSet::new();
        for (name, t) in &state.topics {
            for p in 0..t.replicas.len() {
                if t.replicas[p].first() != Some(&self.node_id) || t.targets[p].is_some() {
                    continue;
                }
                let Some(r) = self.replica_of(name, p as u32) else {
                    continue;
                };
                let m = r.raft.metrics().borrow().clone();
                let Some(leader) = m.current_leader.filter(|l| *l != self.node_id) else {
                    continue;
                };
                if m.state != openraft::ServerState::Follower {
                    continue;
                }
                seen.insert(r.group);
                let since = *preferring.entry(r.group).or_insert(now);
                if now.duration_since(since) < delay {
                    continue;
                }
                // The next attempt, if this one fails, after another delay.
                preferring.insert(r.group, now);
                let Some(addr) = self.cluster_addr(&m, leader) else {
                    continue;
                };
                let this = self.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let timing = this.config.timing();
                    let lease = timing.leader_lease_ms();
                    let hb = timing.heartbeat_ms;
                    let asked = this
                        .peers
                        .get(leader, &addr)
                        .step_aside(r.group, this.node_id, lease + 4 * hb, RPC_TTL)
                        .await;
                    match asked {
                        Ok(()) => {
                            // The followers' leases run out a lease after the last heartbeat;
                            // their own election timeouts start no sooner than that.
                            tokio::time::sleep(Duration::from_millis(lease + hb / 2)).await;
                            let _ = r.raft.trigger().elect().await;
                            tracing::info!(topic = %name, partition = p, from = leader, "taking the leadership back as the preferred replica");
                        }
                        Err(e) => {
                            tracing::debug!(topic = %name, partition = p, error = %e, "leader did not step aside")
                        }
                    }
                });
            }
        }
        preferring.retain(|g, _| seen.contains(g));
    }

    /// On the partition's leader: adds the target's new replicas as learners (each answers
    /// once it caught up), makes the target the group's voters (joint consensus), then records
    /// the move as done. Every step is skipped when already reached, so a new leader resumes
    /// where the last one stopped.
    async fn drive_move(
        &self,
        r: &Replica,
        name: &TopicName,
        p: u32,
        target: &[u64],
        epoch: u64,
    ) -> Result<(), String> {
        let state = self.state();
        let membership = || r.raft.metrics().borrow().membership_config.clone();
        for id in target {
            if membership().membership().get_node(id).is_some() {
                continue;
            }
            let info = state
                .nodes
                .get(id)
                .cloned()
                .ok_or_else(|| format!("node {id} is not in the cluster"))?;
            tracing::info!(topic = %name, partition = p, node = id, "adding a replica; it catches up before it votes");
            r.raft
                .add_learner(*id, info, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let goal: BTreeSet<u64> = target.iter().copied().collect();
        let voters: BTreeSet<u64> = membership().membership().voter_ids().collect();
        if voters != goal || membership().membership().get_joint_config().len() > 1 {
            r.raft
                .change_membership(goal, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.propose(&Command::Reassigned {
            topic: name.clone(),
            partition: p,
            epoch,
        })
        .await
    }

    /// Whether this node is catching up after losing its data (waits for `rejoin` to decide).
    /// An empty log then does not mean a new group: the others hold it and replicate it here.
    /// (Known gap: a topic created while such a node catches up, with this node as its first
    /// replica, is not formed.)
    async fn lost_data(&self) -> bool {
        let mut decided = self.lost_data.subscribe();
        match decided.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }

    fn replica_of(&self, topic: &TopicName, partition: u32) -> Option<Replica> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.clone(), partition))
            .cloned()
    }

    /// Whether this node's replica leads and knows it still does: a majority acknowledged it
    /// within the leader lease (`Timing::leader_lease_ms`: no follower votes for another
    /// candidate that soon after hearing from it, so no other leader can exist yet). A leader
    /// with no acknowledgement time yet (just elected) counts as confirmed. A leader cut off
    /// from the others (a network partition, a pause) stops serving and stops naming itself in
    /// metadata, so clients look for the new leader instead of waiting on one that cannot
    /// commit; what it served was committed anyway (fetch stops at the commit), so the lease
    /// steers clients rather than guarding data.
    fn confirmed_leader(&self, m: &openraft::RaftMetrics<u64, NodeInfo>) -> bool {
        raft::confirmed_leader(self.node_id, m, self.config.timing().leader_lease_ms())
    }

    /// This node's replica of the partition, if this node leads it; otherwise where to go.
    pub fn leader_replica(&self, topic: &TopicName, partition: u32) -> Result<Replica, RouteError> {
        let what = format!("{topic}-{partition}");
        let state = self.state();
        let Some(t) = state.topics.get(topic) else {
            return Err(RouteError::Unavailable(format!(
                "topic '{topic}' is not known to this node yet"
            )));
        };
        if partition as usize >= t.replicas.len() {
            return Err(RouteError::UnknownPartition {
                topic: topic.clone(),
                partition,
                partitions: t.replicas.len() as u32,
            });
        }
        let replica = self.replica_of(topic, partition);
        let leader = match &replica {
            Some(r) => {
                let m = r.raft.metrics().borrow().clone();
                if self.router.is_aside(r.group) {
                    return Err(RouteError::NoLeader { what });
                }
                if self.confirmed_leader(&m) {
                    return Ok(r.clone());
                }
                m.current_leader
            }
            // Not a replica here: the preferred leader is the best guess.
            None => t
                .replicas
                .get(partition as usize)
                .and_then(|r| r.first().copied()),
        };
        match leader {
            Some(l) if l != self.node_id => Err(RouteError::NotLeader {
                what,
                leader: l,
                addr: state
                    .nodes
                    .get(&l)
                    .map(|n| n.client_addr.clone())
                    .unwrap_or_default(),
            }),
            _ => Err(RouteError::NoLeader { what }),
        }
    }

    fn replica_by_group(&self, group: GroupId) -> Option<Replica> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|r| r.group == group)
            .cloned()
    }

    /// A partition's log start, high watermark and first offset at or after `timestamp`: from
    /// this node's replica, or else from a node that holds one (the leader first). A node that
    /// coordinates a group need not replicate its partitions; a follower's figures may trail
    /// the leader's by what is being committed.
    pub async fn partition_offsets(
        &self,
        topic: &TopicName,
        partition: u32,
        timestamp: Option<i64>,
    ) -> Result<PartitionOffsets, String> {
        if let Some(r) = self.replica_of(topic, partition) {
            return local_offsets(r.log, timestamp).await;
        }
        let state = self.state();
        let t = state
            .topics
            .get(topic)
            .ok_or_else(|| format!("unknown topic '{topic}'"))?;
        let group = group_id(t.id, partition);
        let mut why = format!("{topic}-{partition} has no replica to ask");
        for id in t.replicas.get(partition as usize).into_iter().flatten() {
            let addr = state
                .nodes
                .get(id)
                .map(|n| n.cluster_addr.clone())
                .or_else(|| self.config.peers.get(id).cloned());
            let Some(addr) = addr else { continue };
            match self
                .peers
                .get(*id, &addr)
                .offsets(group, timestamp, RPC_TTL)
                .await
            {
                Ok(o) => return Ok(o),
                Err(e) => why = format!("{topic}-{partition}: node {id}: {e}"),
            }
        }
        Err(why)
    }

    /// The partition's leader and the term it leads in, as far as this node knows: its own
    /// replica's view; `(None, 0)` where it holds no replica (it does not follow that group).
    /// This node names itself only while its leadership is confirmed.
    pub fn leadership(&self, topic: &TopicName, partition: u32) -> (Option<u64>, u64) {
        match self.replica_of(topic, partition) {
            Some(r) => {
                let m = r.raft.metrics().borrow().clone();
                let leader = m.current_leader.filter(|l| {
                    *l != self.node_id
                        || (self.confirmed_leader(&m) && !self.router.is_aside(r.group))
                });
                (leader, m.current_term)
            }
            None => (None, 0),
        }
    }

    /// openraft's view of every partition replica on this node.
    pub fn replica_metrics(&self) -> Vec<((TopicName, u32), openraft::RaftMetrics<u64, NodeInfo>)> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, r)| (k.clone(), r.raft.metrics().borrow().clone()))
            .collect()
    }

    /// Retention of this node's replicas: each one whose oldest segments have expired
    /// (`PartitionLog::retention_index`) beyond its current snapshot is asked to snapshot up to
    /// them; openraft then purges them (see `raft::store::SnapshotBuilder`). Returns how many
    /// replicas were asked. The offsets partition has no retention (it would forget idle
    /// groups' offsets); its segments go once a compaction marker supersedes them
    /// (`groups::offsets`).
    pub async fn enforce_retention(&self, now_ms: i64) -> usize {
        let replicas: Vec<(bool, Replica)> = self
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((t, _), r)| (t.as_str() == rill_protocol::OFFSETS_TOPIC, r.clone()))
            .collect();
        let mut asked = 0;
        for (offsets, r) in replicas {
            if offsets {
                let log = r.log.clone();
                let floor = tokio::task::spawn_blocking(move || {
                    crate::groups::offsets::superseded_below(&log, log.superseded_below())
                })
                .await;
                match floor {
                    Ok(Ok(Some(floor))) => r.log.supersede_below(floor),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the committed offsets could not be scanned for compaction");
                    }
                    Err(e) => tracing::warn!(error = %e, "compaction scan"),
                }
            }
            let Some(keep) = r.log.retention_index(now_ms) else {
                continue;
            };
            let snapshot = r.raft.metrics().borrow().snapshot.map(|s| s.index);
            if keep
                .checked_sub(1)
                .is_some_and(|last| snapshot.is_none_or(|s| s < last))
            {
                // Only a failed group refuses; it has nothing to delete then.
                let _ = r.raft.trigger().snapshot().await;
                asked += 1;
            }
        }
        asked
    }

    /// Node ids that replicate the partition (empty if unknown).
    pub fn replicas_of(&self, topic: &TopicName, partition: u32) -> BTreeSet<u64> {
        self.state()
            .topics
            .get(topic)
            .and_then(|t| t.replicas.get(partition as usize))
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    async fn shutdown(&self) {
        let replicas: Vec<Replica> = self
            .replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in replicas {
            let _ = r.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

/// A partition's offsets from a local log (see `Cluster::partition_offsets`); only a
/// timestamp lookup reads the disk (off the async workers).
pub async fn local_offsets(
    log: Arc<PartitionLog>,
    timestamp: Option<i64>,
) -> Result<PartitionOffsets, String> {
    let stats = log.stats();
    let at_timestamp = match timestamp {
        Some(ts) => tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?,
        None => None,
    };
    Ok(PartitionOffsets {
        log_start: stats.log_start_offset,
        high_watermark: stats.high_watermark,
        at_timestamp,
    })
}
