//! Replication: Raft groups whose log is a partition's segment log (see ARCHITECTURE.md,
//! "Replication"). Consensus, elections and commit are openraft's; this module supplies its
//! storage ([`store::LogStore`], [`store::Machine`]) and, later, transport.
//!
//! One type configuration serves every group: an entry's application data is a record batch,
//! stored as it is. openraft's own entries (a new leader's blank entry, membership changes)
//! are stored as *control batches*: one record whose value is the bincode of the payload.

// openraft's traits return its `StorageError` (over 200 bytes); helpers return it too.
#![allow(clippy::result_large_err)]

pub mod net;
pub mod store;
#[cfg(test)]
mod tests;

use crate::log::PartitionLog;
use bytes::{Bytes, BytesMut};
use openraft::{Entry, EntryPayload, LogId};
use rill_protocol::batch::{self, BatchBuilder, RecordIter};
use rill_protocol::codec;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A node as Raft knows it: where its peers reach it and where clients do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster_addr: String,
    pub client_addr: String,
    /// Random, chosen when the node's data directory was first used: a node that comes back
    /// with another incarnation than the membership records lost its data.
    pub incarnation: u64,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (clients {})", self.cluster_addr, self.client_addr)
    }
}

/// What applying an entry reports back to the proposer: where its records landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub base_offset: u64,
}

openraft::declare_raft_types!(
    /// The type configuration of every Rill Raft group.
    pub Rill:
        D = Bytes,
        R = Applied,
        NodeId = u64,
        Node = NodeInfo,
        Entry = Entry<Rill>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type RaftEntry = Entry<Rill>;
pub type Raft = openraft::Raft<Rill>;

/// Timing of every group: a heartbeat each `heartbeat_ms`, an election after a silence of
/// 4 to 8 heartbeats. Failover lands near 1–2 s plus the election itself.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
        }
    }
}

/// openraft's settings for a group: no snapshots (a partition's log is its own snapshot and is
/// never purged by openraft; segment transfer comes later).
pub fn raft_config(timing: Timing) -> Result<Arc<openraft::Config>, String> {
    let config = openraft::Config {
        cluster_name: "rill".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_payload_entries: 256,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(|e| e.to_string())
}

/// Starts this node's replica of `group` over `log` (whose state machine is `machine`, by
/// default [`store::Machine::open`]) and makes it reachable through `router`.
pub async fn start_group(
    node: u64,
    group: net::GroupId,
    config: Arc<openraft::Config>,
    log: Arc<PartitionLog>,
    machine: Option<store::Machine>,
    peers: &net::Peers,
    router: &net::Router,
) -> Result<Raft, String> {
    let machine = match machine {
        Some(m) => m,
        None => store::Machine::open(log.clone()).map_err(|e| e.to_string())?,
    };
    let store = store::LogStore::open(log).map_err(|e| e.to_string())?;
    let network = net::GroupNetwork {
        group,
        peers: peers.clone(),
    };
    let raft = openraft::Raft::new(node, config, network, store, machine)
        .await
        .map_err(|e| e.to_string())?;
    router.add(group, raft.clone());
    Ok(raft)
}
pub type StorageError = openraft::StorageError<u64>;

/// The batch that stores `entry`: its own for application data, a control batch otherwise.
pub fn entry_batch(entry: &RaftEntry) -> Bytes {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.clone(),
        other => {
            let mut value = BytesMut::new();
            codec::encode(other, &mut value);
            let mut b = BatchBuilder::with_capacity(value.len() + 96);
            b.set_control();
            // Timestamp 0: every replica builds this batch itself and must store the same bytes.
            b.push(None, &value, &[], 0);
            b.finish()
        }
    }
}

/// The entry a stored batch holds, given its log index (the term is in its leader epoch).
pub fn batch_entry(index: u64, stored: Bytes) -> Result<RaftEntry, String> {
    let header = batch::BatchHeader::parse(&stored).map_err(|e| e.to_string())?;
    let term = u64::try_from(header.leader_epoch).map_err(|_| {
        format!(
            "entry {index} has no term (leader epoch {})",
            header.leader_epoch
        )
    })?;
    let log_id = LogId::new(openraft::CommittedLeaderId::new(term, 0), index);
    let payload = if header.is_control() {
        let record = RecordIter::new(stored)
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("control batch without a record")?
            .map_err(|e| e.to_string())?;
        codec::decode::<EntryPayload<Rill>>(&record.value, "raft entry")
            .map_err(|e| e.to_string())?
    } else {
        EntryPayload::Normal(stored)
    };
    Ok(Entry { log_id, payload })
}

/// Records an entry's batch holds (a control batch holds one).
pub fn entry_records(entry: &RaftEntry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(b) => {
            batch::BatchHeader::parse(b).map_or(0, |h| u64::from(h.records()))
        }
        _ => 1,
    }
}
