//! A TCP proxy between a client and the broker that the test controls: it forwards whole
//! frames both ways and can drop the answer to a produce request the broker has already
//! handled, cutting the client's connection instead (a response lost in the network).

use rill_protocol::api::ApiKey;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Control {
    /// Produce answers still to drop.
    to_drop: AtomicU64,
    dropped: AtomicU64,
}

/// A running proxy; stops accepting and cuts its connections when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: String,
    control: Arc<Control>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let control = Arc::new(Control::default());
        let (target, c) = (target.to_string(), control.clone());
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(&target).await else {
                    continue;
                };
                connections.spawn(relay(client, broker, c.clone()));
            }
        });
        Proxy {
            addr,
            control,
            accept,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next `n` answers to produce requests are not forwarded: the connection they would
    /// travel on is cut instead, after the broker answered (so after it stored the batch).
    pub fn drop_produce_answers(&self, n: u64) {
        self.control.to_drop.fetch_add(n, Ordering::SeqCst);
    }

    /// Produce answers dropped so far.
    pub fn dropped(&self) -> u64 {
        self.control.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one length-prefixed frame (prefix included); `None` at the end of the stream.
async fn frame(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len).await.ok()?;
    let n = u32::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; 4 + n];
    buf[..4].copy_from_slice(&len);
    from.read_exact(&mut buf[4..]).await.ok()?;
    Some(buf)
}

async fn relay(client: TcpStream, broker: TcpStream, control: Arc<Control>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    // Correlation ids of produce requests on this connection.
    let produces: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let p = produces.clone();
    let upstream = async move {
        while let Some(f) = frame(&mut client_rx).await {
            let key = u16::from_be_bytes([f[4], f[5]]);
            if key == ApiKey::Produce as u16 {
                let correlation = u32::from_be_bytes([f[8], f[9], f[10], f[11]]);
                p.lock().unwrap().insert(correlation);
            }
            if broker_tx.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        while let Some(f) = frame(&mut broker_rx).await {
            let correlation = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
            let produce = produces.lock().unwrap().remove(&correlation);
            let drop_it = produce
                && control
                    .to_drop
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if drop_it {
                control.dropped.fetch_add(1, Ordering::SeqCst);
                return drop_connection(client_tx).await;
            }
            if client_tx.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first ends the connection.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

async fn drop_connection(mut client_tx: OwnedWriteHalf) {
    let _ = client_tx.shutdown().await;
}
