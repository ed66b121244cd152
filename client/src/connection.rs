//! One TCP connection to the broker, shared by many concurrent requests.
//!
//! Requests are written in the order [`Connection::enqueue`] is called and answered in any
//! order; a reader task matches each response to its request by correlation id. If the
//! response stream cannot be parsed, the connection is poisoned: every outstanding and future
//! request on it fails with `Disconnected`, and the client opens a new one. A caller that
//! drops its request's future simply stops waiting; its entry is removed and a late response is
//! discarded.
//!
//! Every request has a deadline (the client's request timeout plus whatever the broker may
//! deliberately hold it, see `Message::server_wait`). A request that misses it fails with
//! `Timeout` and closes the connection, as Kafka's clients do: a peer that stopped answering
//! without closing (a half-open connection, a stopped process) is detected, and the next request
//! opens a fresh connection instead of queueing behind the dead one. TCP keepalive additionally
//! finds a dead peer on a connection with nothing outstanding.

use crate::client::{ClientConfig, SaslSettings};
use crate::error::Error;
use crate::tls::TlsSettings;
use bytes::{Bytes, BytesMut};
use rill_protocol::frame::{self, OutFrame, RequestHeader};
use rill_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use rill_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use rill_protocol::scram::ClientExchange;
use rill_protocol::{ApiKey, Message, codec};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

type Reply = Result<Bytes, Error>;

#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u32, (ApiKey, oneshot::Sender<Reply>)>,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Connection {
    addr: String,
    frames: mpsc::Sender<OutFrame>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU32,
    /// Cancelled when the connection is poisoned: stops the reader task, which may otherwise
    /// wait forever on a peer that went silent.
    closed: CancellationToken,
    pub(crate) versions: ApiVersionsResponse,
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn poison(pending: &Mutex<Pending>, closed: &CancellationToken, why: String) {
    closed.cancel();
    let mut p = lock(pending);
    if p.broken.is_none() {
        p.broken = Some(why.clone());
    }
    for (_, (_, tx)) in p.waiting.drain() {
        let _ = tx.send(Err(Error::Disconnected(why.clone())));
    }
}

impl Connection {
    /// Connects, sets TCP keepalive (`keepalive`: idle time before the first probe), runs the
    /// TLS handshake if `tls` is given, and performs the `ApiVersions` handshake, which must
    /// answer within `timeout`.
    pub(crate) async fn open(addr: &str, config: &ClientConfig) -> Result<Arc<Connection>, Error> {
        let (client_name, keepalive, timeout) = (
            config.client_name.as_str(),
            config.keepalive,
            config.connect_timeout,
        );
        let tls: Option<&TlsSettings> = config.tls.as_ref();
        let connect_err = |e: std::io::Error| Error::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        };
        let socket = TcpStream::connect(addr).await.map_err(connect_err)?;
        socket.set_nodelay(true).map_err(connect_err)?;
        if let Some(idle) = keepalive {
            // Probes every `idle / 3` after `idle` of silence; the kernel gives up after 9.
            let probes = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval((idle / 3).max(Duration::from_secs(1)));
            socket2::SockRef::from(&socket)
                .set_tcp_keepalive(&probes)
                .map_err(connect_err)?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let closed = CancellationToken::new();
        let (p, c) = (pending.clone(), closed.clone());
        match tls {
            None => {
                let (reader, writer) = socket.into_split();
                start_io(reader, writer, rx, p, c);
            }
            Some(settings) => {
                let (connector, name) = (settings.connector()?, settings.name_for(addr)?);
                let stream = connector
                    .connect(name, socket)
                    .await
                    .map_err(|e| Error::Connect {
                        addr: addr.to_string(),
                        message: format!("TLS handshake failed: {e}"),
                    })?;
                let (reader, writer) = tokio::io::split(stream);
                start_io(reader, writer, rx, p, c);
            }
        }
        let mut conn = Connection {
            addr: addr.to_string(),
            frames: tx,
            pending,
            next_id: AtomicU32::new(1),
            closed,
            versions: ApiVersionsResponse {
                broker: String::new(),
                apis: vec![],
                max_frame_bytes: 0,
            },
        };
        let hello = ApiVersionsRequest {
            client: client_name.to_string(),
        };
        let (versions, _) = conn.enqueue(&hello, Bytes::new(), timeout).await?.await?;
        for key in ApiKey::ALL {
            let ours = key.versions();
            let supported = versions
                .apis
                .iter()
                .any(|a| a.key == key as u16 && a.min <= ours.1 && ours.0 <= a.max);
            if !supported {
                return Err(Error::Protocol(format!(
                    "broker {} does not support {key:?} v{}",
                    versions.broker, ours.1
                )));
            }
        }
        conn.versions = versions;
        if let Some(sasl) = &config.sasl {
            conn.authenticate(sasl, timeout).await?;
        }
        Ok(Arc::new(conn))
    }

    /// Runs the SASL SCRAM exchange; the broker must prove it knows the credential too.
    async fn authenticate(&self, sasl: &SaslSettings, timeout: Duration) -> Result<(), Error> {
        let failed = |message: String| Error::Connect {
            addr: self.addr.clone(),
            message: format!("authentication as {:?} failed: {message}", sasl.user),
        };
        let handshake = SaslHandshakeRequest {
            mechanism: sasl.mechanism.name().to_string(),
        };
        self.enqueue(&handshake, Bytes::new(), timeout)
            .await?
            .await?;
        let nonce = rill_protocol::scram::nonce()
            .ok_or_else(|| failed("no randomness for a nonce".into()))?;
        let mut exchange = ClientExchange::new(sasl.mechanism, &sasl.user, &sasl.password, &nonce);
        let first = SaslAuthenticateRequest {
            bytes: exchange.client_first().into_bytes(),
        };
        // A refused login says why in its message; a connection limit keeps its typed code.
        let step = |e: Error| match e {
            Error::Broker {
                code: rill_protocol::ErrorCode::TooManyConnections,
                ..
            } => e,
            Error::Broker { message, .. } => failed(message),
            other => other,
        };
        let (challenge, _) = self
            .enqueue(&first, Bytes::new(), timeout)
            .await?
            .await
            .map_err(step)?;
        let last = exchange
            .client_final(&challenge.bytes)
            .map_err(|e| failed(e.to_string()))?;
        let last = SaslAuthenticateRequest {
            bytes: last.into_bytes(),
        };
        // A failed proof is answered late (the broker slows guessing): allow for it.
        let (done, _) = self
            .enqueue(
                &last,
                Bytes::new(),
                timeout + crate::client::AUTH_FAILURE_SLACK,
            )
            .await?
            .await
            .map_err(step)?;
        exchange
            .verify_server_final(&done.bytes)
            .map_err(|e| failed(e.to_string()))
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn is_broken(&self) -> bool {
        lock(&self.pending).broken.is_some() || self.frames.is_closed()
    }

    /// Queues a request for writing (in call order) and returns the future of its response,
    /// which fails with `Timeout` (and closes the connection) if no answer came in `timeout`.
    pub(crate) async fn enqueue<M: Message>(
        &self,
        request: &M,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<(M::Response, Bytes), Error>> + use<M>, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(why) = &p.broken {
                return Err(Error::Disconnected(why.clone()));
            }
            p.waiting.insert(id, (M::API_KEY, tx));
        }
        let guard = Waiting {
            id,
            pending: self.pending.clone(),
        };
        let header = RequestHeader {
            api_key: M::API_KEY as u16,
            api_version: M::API_KEY.versions().1,
            correlation_id: id,
        };
        let out = frame::encode_request(header, request, payload);
        if self.frames.send(out).await.is_err() {
            return Err(Error::Disconnected("connection closed".into()));
        }
        let (pending, closed) = (self.pending.clone(), self.closed.clone());
        Ok(async move {
            let reply = match tokio::time::timeout(timeout, rx).await {
                Ok(reply) => {
                    reply.unwrap_or_else(|_| Err(Error::Disconnected("connection closed".into())))
                }
                Err(_) => {
                    let why = format!("no response to {:?} within {timeout:?}", M::API_KEY);
                    tracing::info!(reason = %why, "closing the connection");
                    poison(&pending, &closed, why);
                    Err(Error::Timeout(timeout))
                }
            };
            drop(guard);
            let body = reply?;
            let (control, payload) =
                frame::split_body(body).map_err(|e| Error::Protocol(e.to_string()))?;
            let response =
                codec::decode(&control, "response").map_err(|e| Error::Protocol(e.to_string()))?;
            Ok((response, payload))
        })
    }
}

/// Removes a request's entry if its caller stops waiting before the response arrives.
struct Waiting {
    id: u32,
    pending: Arc<Mutex<Pending>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.pending).waiting.remove(&self.id);
    }
}

/// Starts the tasks that write the connection's frames and read its responses.
fn start_io<R, W>(
    reader: R,
    writer: W,
    frames: mpsc::Receiver<OutFrame>,
    pending: Arc<Mutex<Pending>>,
    closed: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Generous: a fetch may return one batch larger than asked for.
    let max_response = 1 << 30;
    tokio::spawn(write_loop(writer, frames, pending.clone(), closed.clone()));
    tokio::spawn(read_loop(reader, pending, closed, max_response));
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<OutFrame>,
    pending: Arc<Mutex<Pending>>,
    closed: CancellationToken,
) {
    let mut out = BufWriter::with_capacity(256 * 1024, writer);
    loop {
        let first = tokio::select! {
            f = rx.recv() => match f {
                Some(f) => f,
                None => {
                    // The connection was dropped: close the stream properly (a TLS stream
                    // sends its close_notify).
                    let _ = out.shutdown().await;
                    return;
                }
            },
            _ = closed.cancelled() => return,
        };
        // Writing into a peer that stopped reading blocks; a timed-out request cancels it.
        let written = async {
            let mut next = Some(first);
            while let Some(f) = next.take() {
                out.write_all(&f.head).await?;
                out.write_all(&f.payload).await?;
                next = rx.try_recv().ok();
            }
            out.flush().await
        };
        let flushed = tokio::select! {
            r = written => r,
            _ = closed.cancelled() => return,
        };
        if let Err(e) = flushed {
            poison(&pending, &closed, format!("write failed: {e}"));
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    pending: Arc<Mutex<Pending>>,
    closed: CancellationToken,
    max_response: usize,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let why = loop {
        match frame::decode_response(&mut buf, max_response) {
            Ok(Some(response)) => {
                let waiter = lock(&pending).waiting.remove(&response.correlation_id);
                if let Some((api, tx)) = waiter {
                    let reply = response.result.map_err(|e| Error::Broker {
                        api,
                        code: e.code,
                        message: e.message,
                    });
                    let _ = tx.send(reply);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("bad response frame: {e}"),
        }
        let read = tokio::select! {
            r = reader.read_buf(&mut buf) => r,
            _ = closed.cancelled() => return,
        };
        match read {
            Ok(0) => break "broker closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
    };
    poison(&pending, &closed, why);
}
