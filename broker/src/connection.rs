//! One client connection: read frames, dispatch them, write responses.
//!
//! Requests are pipelined: each one read is dispatched at once (up to `max_in_flight`, after
//! which reading pauses) and its response is written when ready, so responses may leave in a
//! different order than requests came; clients match them by correlation id. A framing error
//! (oversize or undersized frame) is answered with a typed error and the connection closed,
//! because the byte stream's frame boundaries can no longer be trusted. A request error
//! (unknown api, bad body, unknown topic) is answered and the connection carries on.

use crate::handlers;
use crate::server::Context;
use bytes::BytesMut;
use rill_protocol::ErrorCode;
use rill_protocol::frame::{self, FrameError, OutFrame};
use rill_protocol::messages::{
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use rill_protocol::request::{Request, RequestError};
use rill_protocol::scram::Mechanism;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// A connection's byte stream, split into the halves its reading and writing tasks own: a
/// plain TCP socket into its lock-free owned halves, a TLS stream through `tokio::io::split`.
pub trait Split: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
    /// What the transport vouches for.
    fn transport(&self) -> Transport;
}

/// What a connection's transport tells about it.
#[derive(Debug, Default)]
pub struct Transport {
    /// Encrypted: the only kind that may carry SASL PLAIN, which sends the password.
    pub tls: bool,
    /// The subject (CN) of the client certificate that mutual TLS verified.
    pub certificate: Option<Arc<str>>,
}

impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
    fn transport(&self) -> Transport {
        Transport::default()
    }
}

impl Split for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
    fn transport(&self) -> Transport {
        let leaf = self.get_ref().1.peer_certificates().and_then(|c| c.first());
        Transport {
            tls: true,
            certificate: leaf
                .and_then(|c| crate::tls::subject_name(c))
                .map(Arc::from),
        }
    }
}

/// Bytes reserved for a request's response before it runs: what a fetch asked for (its
/// `max_bytes`, as the handler bounds it) plus room for the frame, anything else small. A fetch
/// that returns one batch larger than it asked for (allowed, so readers always progress)
/// reserves the rest when its response is ready.
fn response_cost(ctx: &Context, request: &Result<Request, RequestError>) -> usize {
    let small = 64 * 1024;
    let cost = match request {
        Ok(Request::Fetch(f)) => handlers::fetch_bytes(ctx, f) + small,
        _ => small,
    };
    cost.min(ctx.config.max_connection_buffer_bytes)
}

/// How long a shutting-down broker waits for a connection's pending responses to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves one connection (a TCP socket, or a TLS stream over one, its handshake done) until
/// the peer closes it, it breaks, or the broker shuts down.
pub async fn serve<S: Split>(
    socket: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    slot: (OwnedSemaphorePermit, crate::quotas::Held),
) {
    tracing::info!(%peer, "connection opened");
    let m = crate::metrics::global();
    m.connections.inc();
    m.connections_total.inc();
    let transport = socket.transport();
    let (mut reader, writer) = socket.split();
    let max_in_flight = ctx.config.max_in_flight;
    let (tx, rx) = mpsc::channel::<(OutFrame, OwnedSemaphorePermit)>(max_in_flight);
    // Bytes of responses in progress: reserved before a request is dispatched, released once
    // its response is written, so a peer that stops reading holds a bounded amount.
    let budget = Arc::new(Semaphore::new(ctx.config.max_connection_buffer_bytes));
    let idle = match ctx.config.idle_timeout_ms {
        0 => Duration::MAX,
        ms => Duration::from_millis(ms),
    };
    let writing = tokio::spawn(write_loop(writer, rx));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let max_frame = ctx.config.max_frame_bytes as usize;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Authentication (when `[auth]` is on): the SASL exchange so far, and who the connection
    // acts as once it succeeded.
    let mut sasl = crate::auth::Sasl::default();
    let mut principal: Option<Arc<str>> = None;
    // Under mutual TLS, a verified certificate is the principal: no SASL exchange follows.
    // Counted against `max_connections_per_principal` while the connection lasts.
    let mut principal_slot = None;
    if ctx.security.enabled()
        && let Some(subject) = &transport.certificate
    {
        match log_in(&ctx, peer, subject, "authenticated by client certificate") {
            Ok(held) => {
                principal_slot = Some(held);
                principal = Some(subject.clone());
            }
            Err(_) => {
                drop(slot);
                m.connections.dec();
                return;
            }
        }
    }
    let reason: String = 'conn: loop {
        loop {
            match frame::decode_request(&mut buf, max_frame) {
                Ok(Some(request)) => {
                    let mut decoded = handlers::Decoded::new(request);
                    if ctx.security.enabled() && principal.is_none() {
                        let (cid, api) = (decoded.correlation_id(), decoded.api_name());
                        let answer = match &decoded.request {
                            Ok(Request::ApiVersions(_)) => None,
                            Ok(Request::SaslHandshake(h)) => match ctx.security.admit(peer.ip()) {
                                // After failures from this address, attempts take turns.
                                Some(wait) => {
                                    if !wait.is_zero() {
                                        tokio::select! {
                                            _ = tokio::time::sleep(wait) => {}
                                            _ = ctx.shutdown.cancelled() => break 'conn "broker shutting down".into(),
                                        }
                                    }
                                    Some(handshake(&mut sasl, h, cid, transport.tls))
                                }
                                None => {
                                    tracing::warn!(%peer, "authentication attempt refused: too many failures from this address");
                                    Some(Err(frame::encode_error_response(
                                        cid,
                                        ErrorCode::AuthenticationFailed,
                                        "too many failed attempts from this address; retry later",
                                    )))
                                }
                            },
                            Ok(Request::SaslAuthenticate(a)) => {
                                let step = sasl.step(&ctx.security, &a.bytes);
                                Some(match step {
                                    Ok((bytes, done)) => {
                                        let mut refused = None;
                                        if done && let crate::auth::Sasl::Done(p) = &sasl {
                                            ctx.security.succeeded(peer.ip());
                                            let p: Arc<str> = Arc::from(p.as_str());
                                            match log_in(&ctx, peer, &p, "authenticated") {
                                                Ok(held) => {
                                                    principal_slot = Some(held);
                                                    principal = Some(p);
                                                }
                                                Err(why) => {
                                                    refused = Some(frame::encode_error_response(
                                                        cid,
                                                        ErrorCode::TooManyConnections,
                                                        &why,
                                                    ))
                                                }
                                            }
                                        }
                                        match refused {
                                            Some(out) => Err(out),
                                            None => Ok(frame::encode_response(
                                                cid,
                                                &SaslAuthenticateResponse {
                                                    bytes,
                                                    principal: principal
                                                        .as_deref()
                                                        .map(str::to_string),
                                                },
                                                bytes::Bytes::new(),
                                            )),
                                        }
                                    }
                                    Err(e) => {
                                        // Answered late, later for each failure in a row from
                                        // this address: guessing passwords is slow.
                                        let delay = ctx.security.failed(peer.ip());
                                        tracing::warn!(%peer, error = %e, delay_ms = delay.as_millis() as u64, "authentication failed");
                                        tokio::select! {
                                            _ = tokio::time::sleep(delay) => {}
                                            _ = ctx.shutdown.cancelled() => break 'conn "broker shutting down".into(),
                                        }
                                        Err(frame::encode_error_response(
                                            cid,
                                            ErrorCode::AuthenticationFailed,
                                            &e.to_string(),
                                        ))
                                    }
                                })
                            }
                            _ => {
                                tracing::warn!(%peer, api, "request before authentication; closing");
                                Some(Err(frame::encode_error_response(
                                    cid,
                                    ErrorCode::AuthenticationRequired,
                                    "authenticate first (SaslHandshake, then SaslAuthenticate)",
                                )))
                            }
                        };
                        match answer {
                            None => {}
                            Some(answer) => {
                                let (out, fatal) = match answer {
                                    Ok(out) => (out, false),
                                    Err(out) => (out, true),
                                };
                                if let Ok(bytes) = budget.clone().acquire_owned().await {
                                    let _ = tx.send((out, bytes)).await;
                                }
                                if fatal {
                                    break 'conn "authentication failed or missing".into();
                                }
                                continue;
                            }
                        }
                    }
                    decoded.principal = principal.clone();
                    // Over its quota, a principal's request waits here, and so does the
                    // connection (a fetch's answer waits in the dispatcher, once its size is known).
                    let hold = principal
                        .as_ref()
                        .map_or(Duration::ZERO, |p| quota_hold(&ctx, p, &decoded.request));
                    if !hold.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(hold) => {}
                            _ = ctx.shutdown.cancelled() => break 'conn "broker shutting down".into(),
                        }
                    }
                    let cost = response_cost(&ctx, &decoded.request);
                    // A produced batch waits for room in its partition's and the broker's
                    // queue budget: until then this connection reads nothing (backpressure).
                    let queued = match &decoded.request {
                        Ok(Request::Produce(p, batch)) => Some((p, batch.len())),
                        _ => None,
                    };
                    let slots = async {
                        let permit = in_flight.clone().acquire_owned().await.ok()?;
                        let bytes = budget.clone().acquire_many_owned(cost as u32).await.ok()?;
                        let reserved = match &queued {
                            Some((p, len)) => Some(
                                ctx.produce_budget
                                    .reserve(&p.topic, p.partition, *len)
                                    .await?,
                            ),
                            None => None,
                        };
                        Some(((permit, reserved), bytes))
                    };
                    let (permit, bytes) = tokio::select! {
                        got = slots => match got {
                            Some(got) => got,
                            None => break 'conn "closing".into(),
                        },
                        _ = ctx.shutdown.cancelled() => break 'conn "broker shutting down".into(),
                    };
                    let response = handlers::dispatch(&ctx, decoded);
                    let (tx, budget) = (tx.clone(), budget.clone());
                    let total = ctx.config.max_connection_buffer_bytes;
                    tokio::spawn(async move {
                        let out = response.await;
                        let mut bytes = bytes;
                        // Larger than reserved (a lone batch over max_bytes): reserve the rest.
                        let extra = out.len().saturating_sub(cost).min(total - cost);
                        if extra > 0 {
                            match budget.acquire_many_owned(extra as u32).await {
                                Ok(more) => bytes.merge(more),
                                Err(_) => return,
                            }
                        }
                        let _ = tx.send((out, bytes)).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    let (cid, code) = match &e {
                        FrameError::TooLarge { header, .. } => (
                            header.map_or(0, |h| h.correlation_id),
                            ErrorCode::FrameTooLarge,
                        ),
                        FrameError::TooShort { .. } => (0, ErrorCode::MalformedFrame),
                    };
                    if let Ok(bytes) = budget.clone().acquire_owned().await {
                        let _ = tx
                            .send((
                                frame::encode_error_response(cid, code, &e.to_string()),
                                bytes,
                            ))
                            .await;
                    }
                    break 'conn format!("framing error: {e}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => break format!("idle for {} ms", idle.as_millis()),
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) if buf.is_empty() => break "closed by peer".into(),
                Ok(0) => break format!("closed by peer in the middle of a frame ({} bytes unread)", buf.len()),
                Ok(_) => {}
                Err(e) => break format!("read error: {e}"),
            },
            _ = ctx.shutdown.cancelled() => break "broker shutting down".into(),
        }
    };
    // Logged before the socket closes (when the writer finishes), so whoever sees the close
    // can already read why.
    tracing::info!(%peer, %reason, "closing connection");
    // The writer ends once every in-flight request has sent its response. A peer that stops
    // reading could hold that up forever, so on shutdown it gets a bounded grace period.
    drop(tx);
    let writing_abort = writing.abort_handle();
    let finished = tokio::select! {
        _ = writing => true,
        _ = async { ctx.shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => false,
    };
    if !finished {
        writing_abort.abort();
        tracing::warn!(%peer, "peer did not read its responses within the shutdown grace period; dropped them");
    }
    // The connection no longer counts against any limit once the gauge says it is gone.
    drop((slot, principal_slot));
    m.connections.dec();
}

/// Counts a connection that authenticated as `principal` against its connection limit, and
/// logs it; refused, with the reason for the client, when the principal has its limit open.
fn log_in(
    ctx: &Context,
    peer: SocketAddr,
    principal: &Arc<str>,
    how: &'static str,
) -> Result<crate::quotas::Held, String> {
    match ctx.quotas.admit_principal(principal) {
        Some(held) => {
            tracing::info!(%peer, principal = %principal, "{how}");
            Ok(held)
        }
        None => {
            crate::metrics::global().connections_refused.inc();
            let limit = ctx.config.max_connections_per_principal;
            tracing::warn!(%peer, principal = %principal, limit, "connection refused: the principal has its limit of connections open");
            Err(format!(
                "{principal} has {limit} connections open, the most allowed (max_connections_per_principal)"
            ))
        }
    }
}

/// How long `principal`'s request must wait to keep it within its request and produce quotas.
fn quota_hold(
    ctx: &Context,
    principal: &Arc<str>,
    request: &Result<Request, RequestError>,
) -> Duration {
    use crate::quotas::Kind;
    let Some(quota) = ctx.security.quota_for(principal) else {
        return Duration::ZERO;
    };
    let requests = quota.requests_per_sec.map_or(Duration::ZERO, |rate| {
        ctx.quotas.charge(principal, Kind::Requests, rate, 1)
    });
    let produced = match (quota.produce_bytes_per_sec, request) {
        (Some(rate), Ok(Request::Produce(_, batch))) => {
            ctx.quotas
                .charge(principal, Kind::Produce, rate, batch.len() as u64)
        }
        _ => Duration::ZERO,
    };
    requests.max(produced)
}

/// SASL PLAIN's name (RFC 4616).
const PLAIN: &str = "PLAIN";

/// Answers SaslHandshake: the mechanisms offered (PLAIN only on TLS connections); an error (closing the connection) if the one
/// asked for is not among them or the handshake came out of turn.
fn handshake(
    sasl: &mut crate::auth::Sasl,
    req: &SaslHandshakeRequest,
    cid: u32,
    tls: bool,
) -> Result<OutFrame, OutFrame> {
    let mut mechanisms: Vec<String> = Mechanism::ALL
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    if tls {
        mechanisms.push(PLAIN.into());
    }
    let offered = SaslHandshakeResponse { mechanisms };
    if !matches!(sasl, crate::auth::Sasl::Start) {
        return Err(frame::encode_error_response(
            cid,
            ErrorCode::IllegalSaslState,
            "a second SaslHandshake",
        ));
    }
    let plain = req.mechanism.eq_ignore_ascii_case(PLAIN);
    if plain && !tls {
        return Err(frame::encode_error_response(
            cid,
            ErrorCode::UnsupportedSaslMechanism,
            "PLAIN sends the password itself and is offered only over TLS; use SCRAM-SHA-256 or SCRAM-SHA-512",
        ));
    }
    if plain {
        *sasl = crate::auth::Sasl::Plain;
        return Ok(frame::encode_response(cid, &offered, bytes::Bytes::new()));
    }
    match Mechanism::from_name(&req.mechanism) {
        Some(m) => {
            *sasl = crate::auth::Sasl::Chosen(m);
            Ok(frame::encode_response(cid, &offered, bytes::Bytes::new()))
        }
        None => Err(frame::encode_error_response(
            cid,
            ErrorCode::UnsupportedSaslMechanism,
            &format!(
                "mechanism {:?} is not offered; offered: {}",
                req.mechanism,
                offered.mechanisms.join(", ")
            ),
        )),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<(OutFrame, OwnedSemaphorePermit)>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some((frame, budget)) = next.take() {
            if out.write_all(&frame.head).await.is_err()
                || out.write_all(&frame.payload).await.is_err()
            {
                return;
            }
            // Written (to the socket buffer): its bytes no longer count against the connection.
            drop(budget);
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}
