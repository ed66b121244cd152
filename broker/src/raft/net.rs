//! Node-to-node transport for every Raft group: one TCP connection per ordered pair of nodes
//! carries the RPCs of all groups between them, each tagged with its group id.
//!
//! Frames are `[length u32 BE][correlation u64 BE][body]`; a request's body is
//! `[group u64 BE][bincode Rpc]`, a response's is a bincode `Reply`. The sending side keeps
//! one connection per peer (`Peer`), opened on first use and again after it fails; a writer
//! task writes queued frames back to back and flushes when its queue is empty, so the RPCs of
//! many groups to one peer leave in few writes. Responses are matched by correlation id and
//! may arrive in any order. A call that fails to connect, times out or loses its connection is
//! `Unreachable` to openraft, which retries with backoff.

use super::{NodeInfo, Rill};
use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Raft};
use rill_protocol::codec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Identifies a Raft group: 0 is the cluster metadata, others are partitions.
pub type GroupId = u64;

/// Largest frame accepted (a replication message plus its header).
const MAX_FRAME: usize = codec::MAX_REPLICATION_BYTES + 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
enum Rpc {
    Append(AppendEntriesRequest<Rill>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<Rill>),
    /// Who are you? (node-level, no group)
    Hello,
    /// Propose this command to the metadata group (sent to its leader).
    Propose(Bytes),
    /// The group's preferred replica (node `to`) asks its leader to step aside for it.
    StepAside {
        to: u64,
        for_ms: u64,
    },
    /// The partition's offsets as this node's replica of the group holds them.
    Offsets {
        timestamp: Option<i64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Hello(Hello),
    /// The proposal's log index once committed, or why it was refused.
    Proposed(Result<u64, String>),
    /// The receiving node has no such group (not created there yet, or removed).
    NoGroup,
    /// Whether the leader stepped aside, or why not.
    SteppedAside(Result<(), String>),
    Offsets(Result<PartitionOffsets, String>),
}

/// A partition's log start and high watermark, and the first offset at or after a timestamp
/// if one was asked for (`None`: past the end), as one replica holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    pub log_start: u64,
    pub high_watermark: u64,
    pub at_timestamp: Option<u64>,
}

/// A node's answer to [`Peer::hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: u64,
    pub info: NodeInfo,
    /// Whether its metadata group already has a membership (the cluster was formed).
    pub initialized: bool,
    /// The metadata group's members as it knows them (empty before the cluster formed).
    pub members: std::collections::BTreeMap<u64, NodeInfo>,
    /// The last metadata log index it applied.
    pub meta_applied: u64,
}

/// What a node answers besides Raft RPCs.
pub trait NodeService: Send + Sync + 'static {
    fn hello(&self) -> Hello;
    fn propose(&self, command: Bytes) -> futures::future::BoxFuture<'static, Result<u64, String>>;
    /// The offsets of the partition whose group is `group`, from this node's replica.
    fn offsets(
        &self,
        group: GroupId,
        timestamp: Option<i64>,
    ) -> futures::future::BoxFuture<'static, Result<PartitionOffsets, String>>;
}

/// The Raft groups this node serves to its peers.
#[derive(Default, Clone)]
pub struct Router {
    groups: Arc<RwLock<HashMap<GroupId, Raft<Rill>>>>,
    service: Arc<std::sync::OnceLock<Arc<dyn NodeService>>>,
    abstain: Arc<Mutex<Abstain>>,
    /// Groups whose leadership this node is handing over, until when (see `step_aside`).
    aside: Arc<Mutex<HashMap<GroupId, std::time::Instant>>>,
}

/// A node that lost its data (a wiped or replaced disk) must not vote until it holds what the
/// cluster committed: its empty log would let a candidate that misses committed entries win
/// (see `cluster::Cluster::rejoin` for how a node finds out).
/// While `rejoining`, every group added abstains (vote requests go unanswered) until its log
/// reaches the commit index the leader sent with the first AppendEntries it received.
#[derive(Debug, Default)]
struct Abstain {
    rejoining: bool,
    /// Abstaining groups, with the commit index to reach once a leader told it.
    groups: HashMap<GroupId, Option<u64>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.groups.read().map_or(0, |g| g.len());
        f.debug_struct("Router").field("groups", &n).finish()
    }
}

impl Router {
    /// The node's heartbeat ticker: every `every`, each group this node leads sends one
    /// heartbeat to its followers (openraft's own per-group heartbeat timers are off). The
    /// heartbeats of all groups leave together, so those to one peer go out in one write and
    /// arrive in one read: with hundreds of groups, one wake-up per peer per interval instead
    /// of one per group. Ends when the router is dropped.
    pub fn spawn_heartbeats(&self, every: Duration) {
        let groups = Arc::downgrade(&self.groups);
        let aside = Arc::downgrade(&self.aside);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(groups), Some(aside)) = (groups.upgrade(), aside.upgrade()) else {
                    return;
                };
                let now = std::time::Instant::now();
                let aside: Vec<GroupId> = {
                    let mut a = aside.lock().unwrap_or_else(|p| p.into_inner());
                    a.retain(|_, until| *until > now);
                    a.keys().copied().collect()
                };
                let leading: Vec<Raft<Rill>> = groups
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|(g, _)| !aside.contains(g))
                    .map(|(_, r)| r)
                    .filter(|r| r.metrics().borrow().state == openraft::ServerState::Leader)
                    .cloned()
                    .collect();
                drop(groups);
                for raft in leading {
                    // Fails only once the group stopped.
                    let _ = raft.trigger().heartbeat().await;
                }
            }
        });
    }

    /// Puts the node in rejoining mode (`true`: groups added from now on abstain) or out of
    /// it (`false`: every group votes again; a fresh cluster).
    pub fn set_rejoining(&self, rejoining: bool) {
        let mut a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
        a.rejoining = rejoining;
        if !rejoining {
            a.groups.clear();
        }
    }

    /// Whether `group` is still catching up before it votes again.
    pub fn is_abstaining(&self, group: GroupId) -> bool {
        let a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
        a.groups.contains_key(&group)
    }

    /// Groups still catching up before they vote again.
    pub fn abstaining(&self) -> usize {
        let a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
        a.groups.len()
    }

    /// Whether `group` may vote: not abstaining, or caught up (then it stops abstaining).
    fn may_vote(&self, group: GroupId, raft: &Raft<Rill>) -> bool {
        let mut a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = a.groups.get(&group).copied() else {
            return true;
        };
        let last = raft.metrics().borrow().last_log_index;
        match target {
            Some(t) if last.is_some_and(|l| l >= t) => {
                a.groups.remove(&group);
                tracing::info!(group, "caught up with the cluster's commit; voting again");
                true
            }
            _ => false,
        }
    }

    /// Notes the leader's commit index from the first AppendEntries an abstaining group gets.
    fn heard_leader(&self, group: GroupId, commit: Option<u64>) {
        let mut a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(target @ None) = a.groups.get_mut(&group) {
            *target = Some(commit.unwrap_or(0));
        }
    }

    pub fn add(&self, group: GroupId, raft: Raft<Rill>) {
        {
            let mut a = self.abstain.lock().unwrap_or_else(|p| p.into_inner());
            if a.rejoining {
                a.groups.insert(group, None);
            }
        }
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, raft);
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft<Rill>> {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group)
    }

    pub fn get(&self, group: GroupId) -> Option<Raft<Rill>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Whether this node is handing `group`'s leadership over: it serves nothing of it and
    /// sends it no heartbeats until then.
    pub fn is_aside(&self, group: GroupId) -> bool {
        let a = self.aside.lock().unwrap_or_else(|p| p.into_inner());
        a.get(&group)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// On the leader of `group`: stops heartbeats and service for `for_ms`, so the followers'
    /// leases run out and the preferred replica `to` (which asked, and must have every entry
    /// this leader has) can win the election it then starts. openraft 0.9 has no leader
    /// transfer; this only times an ordinary openraft election. If the election does not
    /// happen, heartbeats resume after `for_ms` and this node leads on.
    fn step_aside(
        &self,
        group: GroupId,
        raft: &Raft<Rill>,
        to: u64,
        for_ms: u64,
    ) -> Result<(), String> {
        let m = raft.metrics().borrow().clone();
        if m.state != openraft::ServerState::Leader {
            return Err("not the leader".into());
        }
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&to).cloned())
            .flatten()
            .map(|l| l.index);
        if matched.is_none() || matched != m.last_log_index {
            return Err(format!(
                "node {to} has not caught up (it holds up to {matched:?} of {:?})",
                m.last_log_index
            ));
        }
        let until = std::time::Instant::now() + Duration::from_millis(for_ms);
        self.aside
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, until);
        tracing::info!(group, to, "stepping aside for the preferred replica");
        Ok(())
    }

    /// Sets what answers node-level requests (once).
    pub fn set_service(&self, service: Arc<dyn NodeService>) {
        let _ = self.service.set(service);
    }

    async fn handle(&self, group: GroupId, rpc: Rpc) -> Reply {
        match (&rpc, self.service.get()) {
            (Rpc::Hello, Some(s)) => return Reply::Hello(s.hello()),
            (Rpc::Propose(_), Some(s)) => {
                let Rpc::Propose(command) = rpc else {
                    return Reply::NoGroup;
                };
                return Reply::Proposed(s.propose(command).await);
            }
            (Rpc::Offsets { timestamp }, Some(s)) => {
                return Reply::Offsets(s.offsets(group, *timestamp).await);
            }
            (Rpc::Hello | Rpc::Propose(_) | Rpc::Offsets { .. }, None) => return Reply::NoGroup,
            _ => {}
        }
        let Some(raft) = self.get(group) else {
            return Reply::NoGroup;
        };
        match rpc {
            Rpc::Append(r) => {
                self.heard_leader(group, r.leader_commit.map(|l| l.index));
                let reply = raft.append_entries(r).await;
                // Caught up by this append? Then it votes again.
                self.may_vote(group, &raft);
                Reply::Append(reply)
            }
            // Abstaining: no answer, as if unreachable; the candidate needs other votes.
            Rpc::Vote(_) if !self.may_vote(group, &raft) => Reply::NoGroup,
            Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
            Rpc::StepAside { to, for_ms } => {
                Reply::SteppedAside(self.step_aside(group, &raft, to, for_ms))
            }
            Rpc::Hello | Rpc::Propose(_) | Rpc::Offsets { .. } => Reply::NoGroup,
        }
    }
}

fn frame(correlation: u64, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    frame_sized(correlation, 256, body)
}

/// [`frame`] with room for `size` bytes of body from the start: an AppendEntries frame is
/// megabytes, and growing the buffer by doubling copied it about once more.
fn frame_sized(correlation: u64, size: usize, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(size + 12);
    buf.put_u32(0);
    buf.put_u64(correlation);
    body(&mut buf);
    let len = u32::try_from(buf.len() - 4).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Reads one frame: `(correlation, body)`, or `None` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u64, BytesMut)>> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(8..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::other(format!(
            "cluster frame of {len} bytes refused"
        )));
    }
    let correlation = r.read_u64().await?;
    // Read into spare capacity: an AppendEntries frame can be megabytes, and zeroing it first
    // cost a tenth of a follower's CPU.
    let want = len - 8;
    let mut body = BytesMut::with_capacity(want);
    while body.len() < want {
        let rest = (want - body.len()) as u64;
        if (&mut *r).take(rest).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some((correlation, body)))
}

/// A connection's halves: a TCP socket's own, or a TLS stream's (`[cluster] tls_ca`).
type Halves = (
    Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
);

fn halves<S>(stream: S) -> Halves
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

fn tcp_halves(stream: TcpStream) -> Halves {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// `io` unless it takes longer than `limit`, then a `TimedOut` error saying what timed out.
async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
    what: impl FnOnce() -> String,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, what()))?
}

/// Writes queued frames, flushing whenever the queue runs dry.
async fn write_frames(
    stream: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, stream);
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if w.write_all(&f).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Accepts peers' connections and answers their RPCs from `router` until the listener fails.
/// With `tls`, a peer must finish a TLS handshake with a certificate of the cluster's CA first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<crate::tls::ClusterTls>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            let (read, write) = match tls {
                None => tcp_halves(stream),
                Some(tls) => {
                    let accept = tls.acceptor.acceptor().accept(stream);
                    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(s)) => halves(s),
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "cluster TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "cluster TLS handshake not finished within 10 s; closed");
                            return;
                        }
                    }
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_frames(write, rx));
            let mut read = BufReader::with_capacity(64 << 10, read);
            loop {
                let (correlation, body) = match read_frame(&mut read).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cluster connection closed");
                        return;
                    }
                };
                let (router, tx) = (router.clone(), tx.clone());
                tokio::spawn(async move {
                    let Some(group) = body
                        .get(..8)
                        .and_then(|g| g.try_into().ok())
                        .map(u64::from_be_bytes)
                    else {
                        return;
                    };
                    let rpc = match codec::decode_replication::<Rpc>(&body[8..], "raft rpc") {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "undecodable cluster request");
                            return;
                        }
                    };
                    let reply = router.handle(group, rpc).await;
                    let _ = tx.send(frame(correlation, |b| codec::encode(&reply, b)));
                });
            }
        });
    }
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<BytesMut>>>,
    /// Cleared when the peer closed the connection or it broke: the next call reconnects
    /// instead of writing into a dead socket and waiting out its timeout.
    alive: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn usable(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.tx.is_closed()
    }
}

/// The connection to one peer, shared by every group.
#[derive(Debug)]
pub struct Peer {
    addr: String,
    tls: Option<Arc<crate::tls::ClusterTls>>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next: AtomicU64,
}

impl Peer {
    pub fn new(addr: String, tls: Option<Arc<crate::tls::ClusterTls>>) -> Self {
        Peer {
            addr,
            tls,
            conn: tokio::sync::Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    async fn connection(&self) -> std::io::Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.usable()) {
            return Ok(c.clone());
        }
        let stream = within(CONNECT_TIMEOUT, TcpStream::connect(&self.addr), || {
            format!("connecting to {}", self.addr)
        })
        .await?;
        let _ = stream.set_nodelay(true);
        let (read, write) = match &self.tls {
            None => tcp_halves(stream),
            Some(tls) => {
                let connector = tls.connector().map_err(std::io::Error::other)?;
                // The peer's certificate must name the host this node reaches it at.
                let host = self
                    .addr
                    .rsplit_once(':')
                    .map_or(self.addr.as_str(), |(h, _)| h)
                    .trim_matches(['[', ']']);
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::other(format!("peer address {host}: {e}")))?;
                let connect = connector.connect(name, stream);
                halves(
                    within(CONNECT_TIMEOUT, connect, || {
                        format!("TLS handshake with {}", self.addr)
                    })
                    .await?,
                )
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(HashMap::new()),
            alive: std::sync::atomic::AtomicBool::new(true),
        });
        tokio::spawn(write_frames(write, rx));
        let reader = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut read = BufReader::with_capacity(64 << 10, read);
            while let Ok(Some((correlation, body))) = read_frame(&mut read).await {
                let Some(conn) = reader.upgrade() else { return };
                let waiter = conn
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&correlation);
                if let Some(w) = waiter {
                    let _ = w.send(body);
                }
            }
            // Lost: fail every call still waiting, and make the next one reconnect.
            if let Some(conn) = reader.upgrade() {
                conn.alive.store(false, Ordering::SeqCst);
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn call(&self, group: GroupId, rpc: &Rpc, ttl: Duration) -> Result<Reply, Unreachable> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Unreachable::from(AnyError::error(format!("{}: {e}", self.addr)))
        };
        let conn = self.connection().await.map_err(|e| unreachable(&e))?;
        let correlation = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation, tx);
        let size = match rpc {
            Rpc::Append(r) => r
                .entries
                .iter()
                .map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(b) => b.len() + 64,
                    _ => 256,
                })
                .sum::<usize>()
                .saturating_add(256),
            _ => 256,
        };
        let f = frame_sized(correlation, size, |b| {
            b.put_u64(group);
            codec::encode(rpc, b);
        });
        // Checked after registering: a connection lost before then fails the call now.
        if !conn.alive.load(Ordering::SeqCst) || conn.tx.send(f).is_err() {
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&correlation);
            return Err(unreachable(&"connection closed"));
        }
        let body = match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return Err(unreachable(&"connection lost")),
            Err(_) => {
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&correlation);
                return Err(unreachable(&"timed out"));
            }
        };
        codec::decode_replication::<Reply>(&body, "raft reply").map_err(|e| unreachable(&e))
    }

    /// Asks the peer who it is.
    pub async fn hello(&self, ttl: Duration) -> Result<Hello, Unreachable> {
        match self.call(0, &Rpc::Hello, ttl).await? {
            Reply::Hello(h) => Ok(h),
            _ => Err(Unreachable::from(AnyError::error("the node is not ready"))),
        }
    }

    /// Asks the peer, leader of `group`, to step aside for node `to` for `for_ms`.
    pub async fn step_aside(
        &self,
        group: GroupId,
        to: u64,
        for_ms: u64,
        ttl: Duration,
    ) -> Result<(), String> {
        match self.call(group, &Rpc::StepAside { to, for_ms }, ttl).await {
            Ok(Reply::SteppedAside(r)) => r,
            Ok(_) => Err(format!("node at {} has no such group", self.addr)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The offsets of the partition whose group is `group`, from the peer's replica.
    pub async fn offsets(
        &self,
        group: GroupId,
        timestamp: Option<i64>,
        ttl: Duration,
    ) -> Result<PartitionOffsets, String> {
        match self.call(group, &Rpc::Offsets { timestamp }, ttl).await {
            Ok(Reply::Offsets(r)) => r,
            Ok(_) => Err(format!("node at {} is not ready", self.addr)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Has the peer (the metadata leader) propose `command`.
    pub async fn propose(&self, command: Bytes, ttl: Duration) -> Result<u64, String> {
        match self.call(0, &Rpc::Propose(command), ttl).await {
            Ok(Reply::Proposed(r)) => r,
            Ok(_) => Err(format!("node at {} is not ready", self.addr)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The peers of this node, by node id.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    peers: Arc<Mutex<HashMap<u64, Arc<Peer>>>>,
    /// How this node reaches each node, from its own configuration (`--peers`): wins over the
    /// address a node advertises, for networks where nodes see each other at different
    /// addresses (NAT, proxies, a test's cuttable links).
    routes: Arc<std::collections::BTreeMap<u64, String>>,
    /// TLS to every peer, when the cluster has it.
    tls: Option<Arc<crate::tls::ClusterTls>>,
}

impl Peers {
    pub fn with_routes(
        routes: std::collections::BTreeMap<u64, String>,
        tls: Option<Arc<crate::tls::ClusterTls>>,
    ) -> Peers {
        Peers {
            peers: Arc::default(),
            routes: Arc::new(routes),
            tls,
        }
    }

    /// The connection to node `id`, at this node's configured address for it or else at
    /// `addr` (replaced if the address changed).
    pub fn get(&self, id: u64, addr: &str) -> Arc<Peer> {
        let addr = self.routes.get(&id).map_or(addr, String::as_str);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers
            .entry(id)
            .or_insert_with(|| Arc::new(Peer::new(addr.to_string(), self.tls.clone())));
        if peer.addr != addr {
            *peer = Arc::new(Peer::new(addr.to_string(), self.tls.clone()));
        }
        peer.clone()
    }
}

/// openraft's network for one group.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    pub group: GroupId,
    pub peers: Peers,
}

impl RaftNetworkFactory<Rill> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> GroupClient {
        GroupClient {
            group: self.group,
            target,
            peer: self.peers.get(target, &node.cluster_addr),
        }
    }
}

/// One group's RPCs to one peer.
#[derive(Debug)]
pub struct GroupClient {
    group: GroupId,
    target: u64,
    peer: Arc<Peer>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, NodeInfo, RaftError<u64, E>>>;

fn unexpected<T, E: std::error::Error>(what: &str) -> RpcResult<T, E> {
    Err(RPCError::Network(NetworkError::new(&AnyError::error(
        format!("unexpected reply to {what}"),
    ))))
}

impl GroupClient {
    fn remote<T, E: std::error::Error>(&self, r: Result<T, RaftError<u64, E>>) -> RpcResult<T, E> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn call<E: std::error::Error>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<u64, NodeInfo, RaftError<u64, E>>> {
        match self.peer.call(self.group, &rpc, option.hard_ttl()).await {
            Ok(Reply::NoGroup) => Err(RPCError::Unreachable(Unreachable::from(AnyError::error(
                format!("node {} has no group {}", self.target, self.group),
            )))),
            Ok(r) => Ok(r),
            Err(e) => Err(RPCError::Unreachable(e)),
        }
    }
}

impl RaftNetwork<Rill> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Rill>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        match self.call(Rpc::Append(rpc), &option).await? {
            Reply::Append(r) => self.remote(r),
            _ => unexpected("append entries"),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Rill>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self.call(Rpc::Snapshot(rpc), &option).await? {
            Reply::Snapshot(r) => self.remote(r),
            _ => unexpected("install snapshot"),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        match self.call(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(r) => self.remote(r),
            _ => unexpected("vote"),
        }
    }
}
