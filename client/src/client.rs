//! [`Client`]: a handle to one broker that reconnects by itself.

use crate::connection::Connection;
use crate::error::Error;
use bytes::Bytes;
use rill_protocol::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
        }
    }
}

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
        let client = Client {
            inner: Arc::new(Inner {
                addrs,
                config,
                conn: tokio::sync::Mutex::new(None),
                unreachable: tokio::sync::watch::channel(None).0,
            }),
        };
        let conn = client.open_once().await?;
        *client.inner.conn.lock().await = Some(conn);
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `Some(last error)` while this client fails to reconnect to the broker, `None` once it
    /// is connected again: for tools that tell their user the broker is away.
    pub fn watch_unreachable(&self) -> tokio::sync::watch::Receiver<Option<Error>> {
        self.inner.unreachable.subscribe()
    }

    async fn open_once(&self) -> Result<Arc<Connection>, Error> {
        let mut last = None;
        for addr in &self.inner.addrs {
            let cfg = &self.inner.config;
            let attempt = tokio::time::timeout(
                cfg.connect_timeout,
                Connection::open(addr, &cfg.client_name, cfg.keepalive, cfg.connect_timeout),
            );
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
                    if Instant::now() + backoff >= deadline {
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
    pub(crate) async fn enqueue_within<M: Message>(
        &self,
        request: &M,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<(M::Response, Bytes), Error>> + use<M>, Error> {
        self.connection()
            .await?
            .enqueue(request, payload, timeout)
            .await
    }

    /// A client to the same broker with the same settings and its own connection: for traffic
    /// that must not queue behind another's (a consumer's group coordination beside its fetches).
    pub fn with_own_connection(&self) -> Client {
        Client {
            inner: Arc::new(Inner {
                addrs: self.inner.addrs.clone(),
                config: self.inner.config.clone(),
                conn: tokio::sync::Mutex::new(None),
                unreachable: tokio::sync::watch::channel(None).0,
            }),
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
                // NotLeader is retriable on another node; this connection cannot follow it.
                Err(e)
                    if e.is_retriable()
                        && !e.is_not_leader()
                        && Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.max_backoff);
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
