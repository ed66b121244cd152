//! The Kafka listener: Kafka's wire protocol in front of the same topics, partition logs,
//! groups and offsets as the Rill listener (ARCHITECTURE.md, "Kafka listener").

pub mod connection;
pub mod groups;
pub mod handlers;
pub mod wire;

use std::net::SocketAddr;

/// What Kafka clients are told about this listener (Metadata's broker entry).
#[derive(Debug, Clone)]
pub struct Listener {
    pub host: String,
    pub port: u16,
}

impl Listener {
    /// From `kafka_advertise` when set, else the bound address (a wildcard bind advertises
    /// the host name, as Kafka does).
    pub fn new(bound: SocketAddr, advertise: Option<&str>) -> anyhow::Result<Listener> {
        if let Some(a) = advertise {
            let (host, port) = a
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("kafka_advertise must be host:port, got {a:?}"))?;
            return Ok(Listener {
                host: host.trim_matches(['[', ']']).to_string(),
                port,
            });
        }
        let host = if bound.ip().is_unspecified() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            bound.ip().to_string()
        };
        Ok(Listener {
            host,
            port: bound.port(),
        })
    }
}
