//! The Rill broker as a library; `rilld` (src/main.rs) is a thin wrapper around [`server`].
//!
//! Dependencies point one way: `server` -> `connection` -> `handlers` -> `topics` -> `log`.

pub mod log;
