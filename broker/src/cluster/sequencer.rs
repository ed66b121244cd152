//! The partition leader's sequencer: idempotent producers in a cluster.
//!
//! On a single node the writer checks each idempotent batch against the partition's producer
//! windows as it assigns offsets. In a cluster the Raft log decides what is stored, and an entry
//! cannot be refused once proposed, so the check moves in front of the proposal: every produce
//! for a partition this node leads passes through its sequencer, one task per replica taking
//! batches in arrival order, which
//! - at the first batch of each term, copies the producer windows from the local writer (they
//!   cover the whole local log, uncommitted tail included: a new leader's log holds every batch
//!   it will ever commit from earlier terms);
//! - checks the batch against them plus the batches it proposed in this term and not yet saw
//!   committed: the next sequence is proposed (and recorded at once, so the next batch of the
//!   same producer follows it); a retry of a committed batch is answered with its offsets and
//!   stores nothing; a retry of a batch still being replicated waits for that batch and gets
//!   the same answer; a gap or an old epoch is refused;
//! - learns each proposal's base offset when it commits.
//!
//! While proposals wait, the task checks the leader lease each heartbeat: a leader that no
//! majority heard from within the lease (cut off, or resumed after a pause) cannot commit, and
//! openraft keeps its proposals waiting until it learns of the next leader. Their producers are
//! told at once (`Refused::Lapsed`, retriable), so they look for the new leader instead of
//! waiting out their request timeout. The batch may still commit (if the next leader holds
//! it); the producer's retry is then answered as a duplicate, as after a timeout.
//!
//! Windows are recorded on append on every replica (`log/writer.rs`), so the next leader
//! starts from the same state. A proposal that fails (leadership lost) leaves a batch recorded
//! that may not be in the log; the term then changes, and the next term starts from the writer's
//! state again.

use crate::log::PartitionLog;
use crate::log::producers::{Producers, SequenceError, Verdict};
use crate::raft::{NodeInfo, Raft, Timing, confirmed_leader};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::ClientWriteError;
use rill_protocol::batch::BatchHeader;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Why a batch was not stored.
#[derive(Debug, Clone)]
pub enum Refused {
    Sequence(SequenceError),
    /// The proposal failed: this node no longer leads (or the group stopped).
    Write(ClientWriteError<u64, NodeInfo>),
    /// Leadership changed while the batch waited for the one it repeats.
    Moved,
    /// The leader lease lapsed while the batch waited to commit: it may or may not be stored.
    Lapsed,
    /// The group or node is shutting down.
    Stopped,
}

/// A stored batch: where, and whether it was stored by an earlier attempt.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub base_offset: u64,
    pub duplicate: bool,
}

/// The answer to a proposed batch.
pub type Answer = futures::future::BoxFuture<'static, Result<Stored, Refused>>;
type Reply = oneshot::Sender<Result<Stored, Refused>>;

struct Proposal {
    batch: Bytes,
    header: BatchHeader,
    reply: Reply,
}

/// Handle to a replica's sequencer task.
#[derive(Debug, Clone)]
pub struct Sequencer {
    tx: mpsc::UnboundedSender<Proposal>,
    /// Bumped each time the task finds the lease lapsed with proposals waiting.
    lapsed: watch::Receiver<u64>,
}

impl Sequencer {
    /// Starts the task for this node's (`node`) replica; it ends when every handle is dropped.
    pub fn start(raft: Raft, log: Arc<PartitionLog>, node: u64, timing: Timing) -> Sequencer {
        let (tx, rx) = mpsc::unbounded_channel();
        let (lapsed_tx, lapsed) = watch::channel(0);
        let task = Task {
            raft,
            log,
            node,
            timing,
            lapsed: lapsed_tx,
        };
        tokio::spawn(task.run(rx));
        Sequencer { tx, lapsed }
    }

    /// Queues a validated batch (in the caller's order) and returns its answer.
    pub fn propose(&self, batch: Bytes, header: BatchHeader) -> Answer {
        let (reply, rx) = oneshot::channel();
        let mut lapsed = self.lapsed.clone();
        lapsed.borrow_and_update();
        // A stopped task drops `reply`: the caller sees `Stopped`.
        let _ = self.tx.send(Proposal {
            batch,
            header,
            reply,
        });
        Box::pin(async move {
            tokio::select! {
                answer = rx => answer.unwrap_or(Err(Refused::Stopped)),
                Ok(()) = lapsed.changed() => Err(Refused::Lapsed),
            }
        })
    }
}

/// The producer (id, first sequence) a batch is known by.
type Key = (i64, i32);

/// One term's view.
struct Term {
    term: u64,
    producers: Producers,
    /// Batches proposed in this term and not committed yet, with retries waiting for them.
    pending: HashMap<Key, Vec<Reply>>,
    expired_at_ms: i64,
}

type Outcome = (Option<(u64, Key)>, Result<Stored, Refused>);

struct Task {
    raft: Raft,
    log: Arc<PartitionLog>,
    node: u64,
    timing: Timing,
    lapsed: watch::Sender<u64>,
}

impl Task {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Proposal>) {
        let (raft, log) = (&self.raft, &self.log);
        let mut term: Option<Term> = None;
        let mut proposed = FuturesUnordered::new();
        let mut lease_check =
            tokio::time::interval(Duration::from_millis(self.timing.heartbeat_ms.max(1)));
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        if let Some(wait) = sequence(raft, log, &mut term, p).await {
                            proposed.push(wait);
                        }
                    }
                    None => return,
                },
                Some((key, result)) = proposed.next(), if !proposed.is_empty() => {
                    settle(&mut term, key, &result);
                }
                _ = lease_check.tick(), if !proposed.is_empty() => {
                    let lease = self.timing.leader_lease_ms();
                    if !confirmed_leader(self.node, &raft.metrics().borrow(), lease) {
                        self.lapsed.send_modify(|n| *n += 1);
                    }
                }
            }
        }
    }
}

/// Decides on one batch; returns the wait for its commit if it was proposed.
async fn sequence(
    raft: &Raft,
    log: &PartitionLog,
    state: &mut Option<Term>,
    p: Proposal,
) -> Option<futures::future::BoxFuture<'static, Outcome>> {
    let Proposal {
        batch,
        header: h,
        reply,
    } = p;
    if h.producer_id < 0 {
        return Some(propose(raft, batch, None, reply).await);
    }
    let current = raft.metrics().borrow().current_term;
    if state.as_ref().is_none_or(|t| t.term != current) {
        if let Some(old) = state.take() {
            for reply in old.pending.into_values().flatten() {
                let _ = reply.send(Err(Refused::Moved));
            }
        }
        let Some(producers) = log.producer_state().await else {
            let _ = reply.send(Err(Refused::Stopped));
            return None;
        };
        *state = Some(Term {
            term: current,
            producers,
            pending: HashMap::new(),
            expired_at_ms: 0,
        });
    }
    let t = state.as_mut()?;
    let now = now_ms();
    let max_idle = i64::try_from(log.config().producer_expiration_ms).unwrap_or(i64::MAX);
    if now.saturating_sub(t.expired_at_ms) >= max_idle.min(60_000) {
        t.expired_at_ms = now;
        t.producers.expire(now, max_idle);
    }
    let records = i32::try_from(h.records()).unwrap_or(i32::MAX);
    let key = (h.producer_id, h.base_sequence);
    match t
        .producers
        .check(h.producer_id, h.producer_epoch, h.base_sequence, records)
    {
        Ok(Verdict::Append) => {
            // Recorded now with a placeholder offset, set when it commits.
            t.producers.record(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                records,
                0,
                now,
            );
            t.pending.insert(key, Vec::new());
            Some(propose(raft, batch, Some((t.term, key)), reply).await)
        }
        Ok(Verdict::Duplicate { base_offset, .. }) => {
            match t.pending.get_mut(&key) {
                Some(waiting) => waiting.push(reply),
                None => {
                    let _ = reply.send(Ok(Stored {
                        base_offset,
                        duplicate: true,
                    }));
                }
            }
            None
        }
        Err(e) => {
            let _ = reply.send(Err(Refused::Sequence(e)));
            None
        }
    }
}

/// Proposes the batch and returns the wait for its answer, which it also sends to `reply`.
async fn propose(
    raft: &Raft,
    batch: Bytes,
    key: Option<(u64, Key)>,
    reply: Reply,
) -> futures::future::BoxFuture<'static, Outcome> {
    let answer = raft.client_write_ff(batch).await;
    Box::pin(async move {
        let result = match answer {
            Ok(rx) => match rx.await {
                Ok(Ok(r)) => Ok(Stored {
                    base_offset: r.data.base_offset,
                    duplicate: false,
                }),
                Ok(Err(e)) => Err(Refused::Write(e)),
                Err(_) => Err(Refused::Stopped),
            },
            Err(_) => Err(Refused::Stopped),
        };
        let _ = reply.send(result.clone());
        (key, result)
    })
}

/// A proposal of this term was answered: its offset is known, and retries waiting for it get
/// the same answer.
fn settle(state: &mut Option<Term>, key: Option<(u64, Key)>, result: &Result<Stored, Refused>) {
    let Some((term, key)) = key else { return };
    let Some(t) = state.as_mut().filter(|t| t.term == term) else {
        return;
    };
    let waiting = t.pending.remove(&key).unwrap_or_default();
    let answer = match result {
        Ok(s) => {
            t.producers.settle(key.0, key.1, s.base_offset);
            Ok(Stored {
                base_offset: s.base_offset,
                duplicate: true,
            })
        }
        Err(e) => {
            // Its record in the windows may name a batch the log will not hold: start over
            // from the writer's state at the next batch.
            for reply in t.pending.drain().flat_map(|(_, w)| w) {
                let _ = reply.send(Err(Refused::Moved));
            }
            *state = None;
            Err(e.clone())
        }
    };
    for reply in waiting {
        let _ = reply.send(answer.clone());
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
