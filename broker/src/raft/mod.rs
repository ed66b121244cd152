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
use std::time::Duration;

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

/// Timing of every group, all from the heartbeat interval: a heartbeat each `heartbeat_ms`,
/// election timeouts of 2 to 4 heartbeats. openraft 0.9 adds a *leader lease* of the longest
/// election timeout: a follower neither starts an election nor grants a vote until that long
/// after it last heard from its leader, and only then waits its random election timeout. A
/// leader's death is therefore answered after 6 to 8 silent heartbeats (1.5-2 s at the default
/// 150 ms: 0.9-1.2 s), plus one vote round trip. (Redpanda's defaults are alike: 150 ms
/// heartbeats, 1.5 s election timeout.)
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Timing {
    pub fn from_heartbeat(heartbeat_ms: u64) -> Timing {
        Timing {
            heartbeat_ms,
            election_min_ms: heartbeat_ms * 2,
            election_max_ms: heartbeat_ms * 4,
        }
    }

    /// How long after a majority last acknowledged it a leader can be sure no other leader
    /// was elected: no follower votes within openraft's lease of the longest election timeout.
    pub fn leader_lease_ms(&self) -> u64 {
        self.election_max_ms
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::from_heartbeat(150)
    }
}

/// Whether `node` leads the group whose metrics are `m` and knows it still does: a majority
/// acknowledged it within `lease_ms` (`Timing::leader_lease_ms`), or it is the only voter, or it
/// was just elected (no acknowledgement time yet).
pub fn confirmed_leader(
    node: u64,
    m: &openraft::RaftMetrics<u64, NodeInfo>,
    lease_ms: u64,
) -> bool {
    if m.state != openraft::ServerState::Leader || m.current_leader != Some(node) {
        return false;
    }
    let alone = m.membership_config.membership().voter_ids().count() <= 1;
    alone || m.millis_since_quorum_ack.is_none_or(|ms| ms < lease_ms)
}

/// openraft's settings for a group: snapshots only when retention asks for one
/// (`store::SnapshotBuilder`), and then everything they cover is purged at once.
pub fn raft_config(timing: Timing) -> Result<Arc<openraft::Config>, String> {
    let config = openraft::Config {
        cluster_name: "rill".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        max_payload_entries: 256,
        // Sent by the node's one ticker for all its groups (`net::Router::spawn_heartbeats`).
        enable_heartbeat: false,
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
    // Opening reads the Raft files and may finish an interrupted snapshot install: blocking.
    let (machine, store) = tokio::task::spawn_blocking(move || {
        let machine = match machine {
            Some(m) => m,
            None => store::Machine::open(log.clone())?,
        };
        Ok::<_, StorageError>((machine, store::LogStore::open(log)?))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let network = net::GroupNetwork {
        group,
        peers: peers.clone(),
    };
    // openraft checks its election timeout only on a tick every 1.5 heartbeats, counted from
    // `Raft::new`. Replicas of a group start at about the same moment on every node (when its
    // topic is created), so their ticks would run in step: two followers would time out on the
    // same tick, split the vote, and do so again round after round (failovers of 10-20 s were
    // seen). A random delay of up to one tick gives each replica's ticks a phase of its own.
    let tick_ms = config.heartbeat_interval * 3 / 2;
    tokio::time::sleep(Duration::from_millis(random_u64() % tick_ms.max(1))).await;
    let raft = openraft::Raft::new(node, config, network, store, machine)
        .await
        .map_err(|e| e.to_string())?;
    router.add(group, raft.clone());
    Ok(raft)
}
pub type StorageError = openraft::StorageError<u64>;

/// A random number (from the standard library's randomly keyed hasher; nothing here needs
/// more than an unpredictable spread).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

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
