//! Idempotent producers: each partition's sequence window per producer, as a pure state
//! machine (no I/O, time passed in).
//!
//! A batch from an idempotent producer carries its producer id, epoch and the sequence number
//! of its first record (Kafka's RecordBatch v2 fields). For each producer the partition keeps
//! the epoch and the last [`WINDOW`] batches it stored: their sequence ranges and offsets.
//! [`Producers::check`] decides, before a batch is appended:
//! - the next sequence of the current epoch: append;
//! - a batch already stored within the window, same range: a duplicate, answered with the
//!   offsets it was stored at (a retry whose first answer was lost);
//! - an older epoch: `Fenced` (a newer instance of the producer took over);
//! - a newer epoch starting at sequence 0: append, and the window starts over;
//! - anything else (a gap, a partial overlap, a sequence older than the window, a first batch
//!   of an unknown producer not at 0): `OutOfOrder`, naming the sequence expected.
//!
//! [`Producers::record`] is called once the batch is appended, in log order. Batches with
//! producer id -1 are not idempotent and bypass all of this. State lives as long as the
//! producer writes within `producer_id_expiration_ms`; retention deleting a producer's batches
//! does not touch it. The partition's writer thread owns the state (`writer.rs`);
//! `producer_state.rs` persists it in snapshots and rebuilds it from batch headers.

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer: the most a client keeps in flight per partition.
pub const WINDOW: usize = 5;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    batches: VecDeque<StoredBatch>,
    last_write_ms: i64,
}

/// One producer's state before a change; see [`Producers::save`].
#[derive(Debug, Clone)]
pub struct Saved(i64, Option<Entry>);

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Append,
    /// Already stored: answer with these offsets and store nothing.
    Duplicate { base_offset: u64, last_offset: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer}: epoch {got} is fenced by epoch {current}")]
    Fenced {
        producer: i64,
        got: i16,
        current: i16,
    },
    #[error("producer {producer}: sequence {got}, expected {expected}")]
    OutOfOrder {
        producer: i64,
        got: i32,
        expected: i32,
    },
}

/// The sequence after `seq`; sequences wrap from `i32::MAX` to 0, as Kafka's do.
pub fn next_seq(seq: i32, records: i32) -> i32 {
    let n = i64::from(seq) + i64::from(records);
    (n % (i64::from(i32::MAX) + 1)) as i32
}

/// Every idempotent producer of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Producers {
    entries: HashMap<i64, Entry>,
}

impl Producers {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides what to do with a batch of `records` records from `producer` at `epoch` whose
    /// first sequence is `base_seq`. Changes nothing.
    pub fn check(
        &self,
        producer: i64,
        epoch: i16,
        base_seq: i32,
        records: i32,
    ) -> Result<Verdict, SequenceError> {
        let out_of_order = |expected| SequenceError::OutOfOrder {
            producer,
            got: base_seq,
            expected,
        };
        let Some(entry) = self.entries.get(&producer) else {
            return if base_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(out_of_order(0))
            };
        };
        if epoch < entry.epoch {
            return Err(SequenceError::Fenced {
                producer,
                got: epoch,
                current: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            return if base_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(out_of_order(0))
            };
        }
        let last_seq = next_seq(base_seq, records.saturating_sub(1));
        if let Some(b) = entry.batches.iter().find(|b| b.first_seq == base_seq) {
            return if b.last_seq == last_seq {
                Ok(Verdict::Duplicate {
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                })
            } else {
                Err(out_of_order(b.first_seq))
            };
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq, 1));
        if base_seq == expected {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(expected))
        }
    }

    /// Records a batch that `check` allowed and that was appended at `base_offset`.
    pub fn record(
        &mut self,
        producer: i64,
        epoch: i16,
        base_seq: i32,
        records: i32,
        base_offset: u64,
        now_ms: i64,
    ) {
        let entry = self.entries.entry(producer).or_insert(Entry {
            epoch,
            batches: VecDeque::new(),
            last_write_ms: now_ms,
        });
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == WINDOW {
            entry.batches.pop_front();
        }
        entry.batches.push_back(StoredBatch {
            first_seq: base_seq,
            last_seq: next_seq(base_seq, records.saturating_sub(1)),
            base_offset,
            last_offset: base_offset + u64::from(records.max(1) as u32) - 1,
        });
        entry.last_write_ms = entry.last_write_ms.max(now_ms);
    }

    /// Sets the offsets of a batch recorded before they were known (a cluster's partition
    /// leader records a batch when it proposes it, and learns its offset when it commits).
    pub fn settle(&mut self, producer: i64, first_seq: i32, base_offset: u64) {
        let batch = self
            .entries
            .get_mut(&producer)
            .and_then(|e| e.batches.iter_mut().find(|b| b.first_seq == first_seq));
        if let Some(b) = batch {
            let span = b.last_offset - b.base_offset;
            b.base_offset = base_offset;
            b.last_offset = base_offset + span;
        }
    }

    /// The state of one producer, to put back with [`Producers::restore`] if the write that
    /// follows is rolled back.
    pub fn save(&self, producer: i64) -> Saved {
        Saved(producer, self.entries.get(&producer).cloned())
    }

    pub fn restore(&mut self, saved: Saved) {
        match saved.1 {
            Some(entry) => self.entries.insert(saved.0, entry),
            None => self.entries.remove(&saved.0),
        };
    }

    /// Forgets producers that wrote nothing for `max_idle_ms` before `now_ms`.
    pub fn expire(&mut self, now_ms: i64, max_idle_ms: i64) {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_write_ms) < max_idle_ms);
    }
}

/// Snapshot encoding (the file around it is `producer_state.rs`'s): a count (u32), then per
/// producer its id (i64), epoch (i16), last write in ms since the epoch (i64), number of
/// batches (u8) and per batch first and last sequence (i32 each), base and last offset (u64
/// each). All little-endian.
impl Producers {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut ids: Vec<&i64> = self.entries.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.entries[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.last_write_ms.to_le_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
    }

    /// The inverse of [`Producers::encode`]; `None` if `bytes` is not exactly one encoding.
    pub fn decode(bytes: &[u8]) -> Option<Producers> {
        let mut r = Reader(bytes);
        let count = u32::from_le_bytes(r.take()?);
        let mut entries = HashMap::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(r.take()?);
            let epoch = i16::from_le_bytes(r.take()?);
            let last_write_ms = i64::from_le_bytes(r.take()?);
            let [n] = r.take::<1>()?;
            if usize::from(n) > WINDOW {
                return None;
            }
            let mut batches = VecDeque::with_capacity(WINDOW);
            for _ in 0..n {
                batches.push_back(StoredBatch {
                    first_seq: i32::from_le_bytes(r.take()?),
                    last_seq: i32::from_le_bytes(r.take()?),
                    base_offset: u64::from_le_bytes(r.take()?),
                    last_offset: u64::from_le_bytes(r.take()?),
                });
            }
            let entry = Entry {
                epoch,
                batches,
                last_write_ms,
            };
            if entries.insert(id, entry).is_some() {
                return None;
            }
        }
        r.0.is_empty().then_some(Producers { entries })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Send {
        /// Send (or resend) the client's batch number `n`.
        Batch(usize),
        /// A new instance of the producer takes over (epoch + 1) and starts at sequence 0.
        Restart,
    }

    fn sends() -> impl Strategy<Value = Vec<Send>> {
        proptest::collection::vec(
            prop_oneof![
                8 => (0usize..40).prop_map(Send::Batch),
                1 => Just(Send::Restart),
            ],
            1..120,
        )
    }

    proptest! {
        /// Any interleaving of first sends, retries, duplicates and gaps, across fencing
        /// restarts: what the window lets through is each batch once, in order, and every other
        /// send is answered with the original offsets or a typed error.
        #[test]
        fn the_window_stores_each_batch_once_in_order(
            sends in sends(),
            sizes in proptest::collection::vec(1i32..5, 40),
        ) {
            let producer = 7;
            let mut window = Producers::default();
            let mut epoch: i16 = 0;
            // The client's batches of the current epoch: sequence ranges by batch number.
            let starts: Vec<i32> = sizes
                .iter()
                .scan(0i32, |seq, n| {
                    let s = *seq;
                    *seq += n;
                    Some(s)
                })
                .collect();
            // What the log holds: (epoch, batch number, base offset).
            let mut log: Vec<(i16, usize, u64)> = Vec::new();
            let mut next_offset = 0u64;
            let mut stored_this_epoch = 0usize;
            for send in sends {
                let n = match send {
                    Send::Restart => {
                        epoch += 1;
                        stored_this_epoch = 0;
                        continue;
                    }
                    Send::Batch(n) => n,
                };
                let (seq, records) = (starts[n], sizes[n]);
                let verdict = window.check(producer, epoch, seq, records);
                // The reference: the next batch is stored; a batch among the last WINDOW
                // stored of this epoch is a duplicate; anything else is refused.
                match verdict {
                    Ok(Verdict::Append) => {
                        prop_assert_eq!(n, stored_this_epoch, "only the next batch is appended");
                        window.record(producer, epoch, seq, records, next_offset, 0);
                        log.push((epoch, n, next_offset));
                        next_offset += records as u64;
                        stored_this_epoch += 1;
                    }
                    Ok(Verdict::Duplicate { base_offset, .. }) => {
                        prop_assert!(n < stored_this_epoch && stored_this_epoch - n <= WINDOW);
                        let original = log.iter().find(|(e, b, _)| *e == epoch && *b == n);
                        prop_assert_eq!(original.map(|(_, _, o)| *o), Some(base_offset));
                    }
                    Err(SequenceError::OutOfOrder { .. }) => {
                        prop_assert!(n != stored_this_epoch);
                        prop_assert!(n > stored_this_epoch || stored_this_epoch - n > WINDOW);
                    }
                    Err(SequenceError::Fenced { .. }) => prop_assert!(false, "no older epoch sends"),
                }
            }
            // Per epoch, the log holds batches 0, 1, 2, ... once each, in order.
            for e in 0..=epoch {
                let numbers: Vec<usize> = log.iter().filter(|(le, _, _)| *le == e).map(|(_, b, _)| *b).collect();
                prop_assert_eq!(numbers.clone(), (0..numbers.len()).collect::<Vec<_>>());
            }
        }
    }

    proptest! {
        #[test]
        fn snapshots_round_trip(
            writes in proptest::collection::vec((0i64..6, 0i16..3, 0i32..1000, 1i32..10), 0..60),
        ) {
            let mut w = Producers::default();
            let mut offset = 0;
            for (id, epoch, seq, n) in writes {
                w.record(id, epoch, seq, n, offset, offset as i64);
                offset += n as u64;
            }
            let mut bytes = Vec::new();
            w.encode(&mut bytes);
            prop_assert_eq!(Producers::decode(&bytes), Some(w));
            for cut in 0..bytes.len() {
                prop_assert_eq!(Producers::decode(&bytes[..cut]), None);
            }
        }
    }

    #[test]
    fn a_restored_producer_is_as_it_was_saved() {
        let mut w = Producers::default();
        w.record(1, 0, 0, 2, 10, 0);
        let before = w.clone();
        let (saved_1, saved_2) = (w.save(1), w.save(2));
        w.record(1, 0, 2, 1, 12, 0);
        w.record(2, 0, 0, 1, 13, 0);
        w.restore(saved_2);
        w.restore(saved_1);
        assert_eq!(w, before);
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_starts_over() {
        let mut w = Producers::default();
        assert_eq!(w.check(1, 0, 0, 3), Ok(Verdict::Append));
        w.record(1, 0, 0, 3, 100, 0);
        assert_eq!(w.check(1, 1, 0, 2), Ok(Verdict::Append));
        w.record(1, 1, 0, 2, 103, 0);
        assert_eq!(
            w.check(1, 0, 3, 1),
            Err(SequenceError::Fenced {
                producer: 1,
                got: 0,
                current: 1
            })
        );
        assert!(matches!(
            w.check(1, 2, 5, 1),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert!(
            matches!(
                w.check(9, 0, 4, 1),
                Err(SequenceError::OutOfOrder { expected: 0, .. })
            ),
            "an unknown producer starts at 0"
        );
    }

    #[test]
    fn sequences_wrap_and_idle_producers_expire() {
        let mut w = Producers::default();
        w.record(1, 0, i32::MAX - 1, 2, 0, 1_000);
        assert_eq!(
            w.check(1, 0, 0, 1),
            Ok(Verdict::Append),
            "after i32::MAX comes 0"
        );
        assert_eq!(next_seq(i32::MAX, 1), 0);
        w.record(2, 0, 0, 1, 2, 5_000);
        w.expire(1_000 + 86_400_000, 86_400_000);
        assert_eq!(w.len(), 1, "only the producer idle for a day is forgotten");
    }
}
