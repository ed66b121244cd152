//! The Rill broker as a library; `rilld` (src/main.rs) is a thin wrapper around [`server`].
//!
//! Dependencies point one way: `server` -> `connection` -> `handlers` -> `groups`/`topics` -> `log`.

pub mod auth;
pub mod backpressure;
pub mod check;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod groups;
pub mod handlers;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod producer_ids;
pub mod quotas;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
pub mod topics;

pub use config::Config;
pub use server::Broker;
