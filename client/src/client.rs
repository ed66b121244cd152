//! [`Client`]: a handle to a broker or a cluster that reconnects by itself.
//!
//! Requests that any node can answer (topic and group administration) go over the bootstrap
//! connection: the first of the given addresses that answers. In a cluster, a partition's
//! produce, fetch and offset lookups must reach its leader: the client learns the nodes and each
//! partition's leader with a `Metadata` request, keeps one connection per node it talks to, and
//! forgets a partition's leader when a request to it fails (`NotLeader`, a lost connection), so
//! the next attempt asks again. Against a single node, the first `Metadata` answer (from node
//! 0, which only a single-node broker is) turns routing off for good.

use crate::connection::Connection;
use crate::error::Error;
use crate::tls::TlsSettings;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rill_protocol::messages::{MetadataRequest, MetadataResponse};
use rill_protocol::{Message, TopicName};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The internal partition whose leader coordinates consumer groups.
fn coordinator_topic() -> TopicName {
    static NAME: std::sync::OnceLock<TopicName> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        TopicName::new(rill_protocol::OFFSETS_TOPIC).unwrap_or_else(|e| unreachable!("{e}"))
    })
    .clone()
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name sent to the broker in the handshake, for its logs.
    pub client_name: String,
    /// How long one connection attempt (TCP connect and handshake) may take.
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one request, beyond what the broker may deliberately
    /// hold it (a fetch's `max_wait`, a join's rebalance barrier). A request that misses it fails
    /// with `Error::Timeout` and its connection is closed and replaced (Kafka's
    /// `request.timeout.ms`, 30 s).
    pub request_timeout: Duration,
    /// TCP keepalive: probe a connection after this long without traffic, so a dead peer is
    /// noticed even with nothing outstanding. `None` leaves the OS default (usually off).
    pub keepalive: Option<Duration>,
    /// How long to keep reconnecting and retrying retriable failures before giving up.
    pub retry_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// In a cluster, the fixed delay before a partition's request is tried again after its
    /// leader failed or moved (`NotLeader`, `LeaderNotAvailable`, a lost connection). It does
    /// not grow: an election takes one to two heartbeats' election timeouts, and a retry that
    /// waits a doubled backoff would find the new leader late (Kafka's `retry.backoff.ms`).
    pub leader_backoff: Duration,
    /// TLS to the broker (and to every node of a cluster); `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// Authentication (SASL SCRAM) on every connection; `None`: none.
    pub sasl: Option<SaslSettings>,
}

/// Who a client authenticates as: SCRAM-SHA-512 unless told otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslSettings {
    pub mechanism: rill_protocol::scram::Mechanism,
    pub user: String,
    pub password: String,
}

impl SaslSettings {
    pub fn scram(user: impl Into<String>, password: impl Into<String>) -> Self {
        SaslSettings {
            mechanism: rill_protocol::scram::Mechanism::ScramSha512,
            user: user.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for SaslSettings {
    /// The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: format!("rill-client {}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(30)),
            retry_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            leader_backoff: Duration::from_millis(100),
            tls: None,
            sasl: None,
        }
    }
}

/// Time beyond `connect_timeout` a connection that authenticates may take: after failures from
/// its address the broker lets attempts wait their turn (up to 30 s) and holds the answer to a
/// failed one up to 5 s.
pub(crate) const AUTH_FAILURE_SLACK: Duration = Duration::from_secs(40);

/// A cheap-to-clone handle to a broker. Requests share one pipelined connection; if it breaks,
/// the next request opens a new one, backing off exponentially while the broker is away.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addrs: Vec<String>,
    config: ClientConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// `Some(last error)` while reconnecting fails; `None` once connected.
    unreachable: tokio::sync::watch::Sender<Option<Error>>,
    /// Where partitions are led; `None` for a client to one node of a cluster (a link), which
    /// never routes and tries each connection once.
    routes: Option<Mutex<Routes>>,
    /// One metadata refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Routes {
    /// Whether the broker is a cluster (its nodes have ids from 1); unknown until the first
    /// answer.
    cluster: Option<bool>,
    /// Client address of each node.
    nodes: HashMap<u64, String>,
    /// Each partition's leader and the Raft term it was learned in.
    leaders: HashMap<(TopicName, u32), (u64, u64)>,
    /// A client per node address, connected on first use.
    links: HashMap<String, Client>,
}

fn lock(m: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Connects to the broker at `addrs` (comma-separated `host:port` list; the first that
    /// answers is used) with default settings.
    pub async fn connect(addrs: &str) -> Result<Client, Error> {
        Self::connect_with(addrs, ClientConfig::default()).await
    }

    pub async fn connect_with(addrs: &str, config: ClientConfig) -> Result<Client, Error> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(Error::InvalidArgument("no broker address given".into()));
        }
        let client = Client::unconnected(addrs, config, true);
        let conn = client.open_once().await?;
        *client.inner.conn.lock().await = Some(conn);
        Ok(client)
    }

    fn unconnected(addrs: Vec<String>, config: ClientConfig, routing: bool) -> Client {
        Client {
            inner: Arc::new(Inner {
                addrs,
                config,
                conn: tokio::sync::Mutex::new(None),
                unreachable: tokio::sync::watch::channel(None).0,
                routes: routing.then(Mutex::default),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `Some(last error)` while this client fails to reconnect to the broker, `None` once it
    /// is connected again: for tools that tell their user the broker is away.
    pub fn watch_unreachable(&self) -> tokio::sync::watch::Receiver<Option<Error>> {
        self.inner.unreachable.subscribe()
    }

    /// One connection attempt to each bootstrap address in turn, then to the other nodes of
    /// the cluster this client learned of, until one answers.
    async fn open_once(&self) -> Result<Arc<Connection>, Error> {
        let mut last = None;
        let mut addrs = self.inner.addrs.clone();
        if let Some(routes) = &self.inner.routes {
            let r = lock(routes);
            let known = r.nodes.values().filter(|a| !self.inner.addrs.contains(a));
            addrs.extend(known.cloned());
        }
        for addr in &addrs {
            let cfg = &self.inner.config;
            // A failed login is answered late on purpose (the broker slows guessing): allow
            // for it, so the error says why rather than "timed out".
            let limit = match cfg.sasl {
                Some(_) => cfg.connect_timeout + AUTH_FAILURE_SLACK,
                None => cfg.connect_timeout,
            };
            let attempt = tokio::time::timeout(limit, Connection::open(addr, cfg));
            match attempt.await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Connect {
                        addr: addr.clone(),
                        message: "timed out".into(),
                    })
                }
            }
        }
        Err(last.unwrap_or(Error::InvalidArgument("no broker address given".into())))
    }

    /// A live connection, reconnecting with backoff until `retry_timeout` if needed.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_broken()) {
            return Ok(conn.clone());
        }
        if let Some(old) = slot.take() {
            tracing::info!(broker = old.addr(), "connection lost; reconnecting");
        }
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.retry_timeout;
        let mut backoff = cfg.min_backoff;
        loop {
            match self.open_once().await {
                Ok(conn) => {
                    tracing::info!(broker = conn.addr(), "connected");
                    *slot = Some(conn.clone());
                    self.inner
                        .unreachable
                        .send_if_modified(|u| u.take().is_some());
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?backoff, "reconnect failed");
                    self.inner.unreachable.send_replace(Some(e.clone()));
                    // A link to one node of a cluster fails at once: its caller asks the
                    // cluster where to go instead.
                    if self.inner.routes.is_none() || Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.max_backoff);
        }
    }

    /// Writes a request now (in call order) and returns the future of its response. One attempt;
    /// the response must come within `request_timeout` plus the request's `server_wait`.
    pub(crate) async fn enqueue<M: Message>(
        &self,
        request: &M,
        payload: Bytes,
    ) -> Result<impl Future<Output = Result<(M::Response, Bytes), Error>> + use<M>, Error> {
        let timeout = self.inner.config.request_timeout + request.server_wait();
        self.enqueue_within(request, payload, timeout).await
    }

    /// [`Client::enqueue`] with an explicit response timeout (a heartbeat must not wait as long
    /// as the session it keeps alive).
    /// A group request (`Message::COORDINATED`) goes to the group coordinator; a failure that
    /// may mean it moved makes the next one ask where it is.
    pub(crate) async fn enqueue_within<M: Message>(
        &self,
        request: &M,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<(M::Response, Bytes), Error>> + use<M>, Error> {
        let to = match M::COORDINATED {
            true => self.coordinator().await,
            false => self.clone(),
        };
        let me = self.clone();
        let moved = move |e: &Error| {
            if M::COORDINATED && e.may_mean_new_leader() {
                me.forget_leader(&coordinator_topic(), 0);
            }
        };
        let sent = async {
            to.connection()
                .await?
                .enqueue(request, payload, timeout)
                .await
        }
        .await;
        let response = sent.inspect_err(&moved)?;
        Ok(async move { response.await.inspect_err(moved) })
    }

    /// The group coordinator: in a cluster, the leader of the internal offsets partition.
    /// (Boxed: finding it sends a metadata request, through `enqueue_within` again.)
    fn coordinator(&self) -> futures::future::BoxFuture<'_, Client> {
        Box::pin(async move {
            match self.inner.routes {
                None => self.clone(),
                Some(_) => self.leader_for(&coordinator_topic(), 0).await,
            }
        })
    }

    /// A client to the same broker with the same settings and its own connection: for traffic
    /// that must not queue behind another's (a consumer's group coordination beside its fetches).
    pub fn with_own_connection(&self) -> Client {
        Client::unconnected(
            self.inner.addrs.clone(),
            self.inner.config.clone(),
            self.inner.routes.is_some(),
        )
    }

    /// The client to send a partition's produce, fetch or offset lookup to: in a cluster, a
    /// connection to its leader (asking the cluster first if the leader is not known); this
    /// client otherwise, or when no leader is known yet (the node then answers `NotLeader` or
    /// `LeaderNotAvailable`, and the caller retries).
    pub(crate) async fn leader_for(&self, topic: &TopicName, partition: u32) -> Client {
        if let Some(link) = self.known_leader(topic, partition) {
            return link;
        }
        if let Err(e) = self.refresh(topic, partition).await {
            tracing::debug!(%topic, partition, error = %e, "metadata refresh failed");
        }
        self.known_leader(topic, partition)
            .unwrap_or_else(|| self.clone())
    }

    /// `Some` once the route is settled: this client (not a cluster), or the leader's link.
    fn known_leader(&self, topic: &TopicName, partition: u32) -> Option<Client> {
        let Some(routes) = &self.inner.routes else {
            return Some(self.clone());
        };
        let mut r = lock(routes);
        match r.cluster {
            Some(false) => return Some(self.clone()),
            None => return None,
            Some(true) => {}
        }
        let (leader, _) = *r.leaders.get(&(topic.clone(), partition))?;
        let addr = r.nodes.get(&leader)?.clone();
        Some(self.link(&mut r, addr))
    }

    /// The link (a non-routing client) to the node at `addr`, made on first use.
    fn link(&self, r: &mut Routes, addr: String) -> Client {
        let config = &self.inner.config;
        r.links
            .entry(addr.clone())
            .or_insert_with(|| Client::unconnected(vec![addr], config.clone(), false))
            .clone()
    }

    /// Whether this client talks to a cluster (known after the first metadata answer).
    fn is_cluster(&self) -> bool {
        self.inner
            .routes
            .as_ref()
            .is_some_and(|r| lock(r).cluster == Some(true))
    }

    /// How long to wait before retrying after `e`: in a cluster, when `e` may mean the
    /// partition has a new leader, the fixed `leader_backoff`; otherwise `backoff`, which
    /// then doubles up to `max_backoff`.
    pub(crate) fn retry_delay(&self, e: &Error, backoff: &mut Duration) -> Duration {
        let cfg = &self.inner.config;
        if e.may_mean_new_leader() && self.is_cluster() {
            return cfg.leader_backoff;
        }
        let wait = *backoff;
        *backoff = (wait * 2).min(cfg.max_backoff);
        wait
    }

    /// Forgets the partition's leader after a request to it failed, so the next one asks.
    pub(crate) fn forget_leader(&self, topic: &TopicName, partition: u32) {
        if let Some(routes) = &self.inner.routes {
            lock(routes).leaders.remove(&(topic.clone(), partition));
        }
    }

    /// Asks the cluster for the topic's leaders. The first time, the bootstrap node says
    /// which nodes there are; then every node is asked at once (a node that is down or paused
    /// must not hold the answer up), and the refresh ends with the first answers that place
    /// the partition, plus whatever else arrives within `leader_backoff` after them (of two
    /// answers, the higher term wins).
    async fn refresh(&self, topic: &TopicName, partition: u32) -> Result<(), Error> {
        let _one = self.inner.refreshing.lock().await;
        if self.known_leader(topic, partition).is_some() {
            return Ok(()); // Another caller's refresh found it.
        }
        let request = MetadataRequest {
            topics: vec![topic.clone()],
        };
        let Some(routes) = &self.inner.routes else {
            return Ok(());
        };
        if lock(routes).cluster.is_none() {
            let (answer, _) = self.call(&request).await?;
            self.learn(answer);
            if self.known_leader(topic, partition).is_some() {
                return Ok(());
            }
        }
        let links: Vec<(u64, Client)> = {
            let mut r = lock(routes);
            let nodes: Vec<(u64, String)> = r.nodes.iter().map(|(n, a)| (*n, a.clone())).collect();
            nodes
                .into_iter()
                .map(|(node, addr)| (node, self.link(&mut r, addr)))
                .collect()
        };
        let mut asks: FuturesUnordered<_> = links
            .into_iter()
            .map(|(node, link)| {
                let request = &request;
                async move {
                    (
                        node,
                        async { link.enqueue(request, Bytes::new()).await?.await }.await,
                    )
                }
            })
            .collect();
        let mut until = Instant::now() + self.inner.config.request_timeout;
        while let Ok(Some((node, answer))) = tokio::time::timeout_at(until, asks.next()).await {
            match answer {
                Ok((answer, _)) => {
                    self.learn(answer);
                    if self.known_leader(topic, partition).is_some() {
                        until = until.min(Instant::now() + self.inner.config.leader_backoff);
                    }
                }
                Err(e) => tracing::debug!(node, error = %e, "metadata from a node failed"),
            }
        }
        Ok(())
    }

    /// Takes in a metadata answer: the nodes, and leaders of a term at least as new as the
    /// one known.
    fn learn(&self, answer: MetadataResponse) {
        let Some(routes) = &self.inner.routes else {
            return;
        };
        let mut r = lock(routes);
        // Cluster nodes have ids from 1; a single-node broker answers as node 0.
        r.cluster = Some(answer.node_id != 0);
        r.nodes = answer
            .nodes
            .into_iter()
            .map(|n| (n.node_id, n.addr))
            .collect();
        for t in answer.topics {
            for p in t.partitions {
                let key = (t.name.clone(), p.partition);
                match p.leader {
                    Some(leader) if r.leaders.get(&key).is_none_or(|(_, term)| *term <= p.term) => {
                        r.leaders.insert(key, (leader, p.term));
                    }
                    Some(_) | None => {}
                }
            }
        }
    }

    /// Sends a partition's request to its leader, retrying retriable failures (a moved leader
    /// included) with backoff until `retry_timeout`. Only for requests that are safe to repeat.
    pub(crate) async fn call_partition<M: Message>(
        &self,
        topic: &TopicName,
        partition: u32,
        request: &M,
    ) -> Result<(M::Response, Bytes), Error> {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.retry_timeout;
        let mut backoff = cfg.min_backoff;
        loop {
            let to = self.leader_for(topic, partition).await;
            let result = async { to.enqueue(request, Bytes::new()).await?.await }.await;
            match result {
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    tracing::debug!(%topic, partition, error = %e, "retrying");
                    self.forget_leader(topic, partition);
                    tokio::time::sleep(self.retry_delay(&e, &mut backoff)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends a request, retrying retriable failures (with backoff) until `retry_timeout`.
    /// Only for requests that are safe to repeat.
    pub async fn call<M: Message>(&self, request: &M) -> Result<(M::Response, Bytes), Error> {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.retry_timeout;
        let mut backoff = cfg.min_backoff;
        loop {
            let result = async { self.enqueue(request, Bytes::new()).await?.await }.await;
            match result {
                // NotLeader is retriable on another node: only group requests follow it here
                // (to the coordinator); others go to one node whatever it says.
                Err(e)
                    if e.is_retriable()
                        && (!e.is_not_leader() || M::COORDINATED)
                        && Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(self.retry_delay(&e, &mut backoff)).await;
                }
                other => return other,
            }
        }
    }

    /// Largest request frame the broker accepts (from the handshake).
    pub async fn max_frame_bytes(&self) -> Result<u32, Error> {
        Ok(self.connection().await?.versions.max_frame_bytes)
    }
}
