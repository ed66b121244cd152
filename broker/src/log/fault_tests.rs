//! The partition log on a simulated disk (`crate::storage::sim`): failed fsyncs, failed
//! directory fsyncs, short writes and power losses that keep an arbitrary subset of unsynced
//! writes in every file.

use super::tests::config;
use super::*;
use crate::storage::Storage;
use crate::storage::sim::{OpKind, SimDisk};
use bytes::Bytes;
use rill_protocol::batch::BatchBuilder;
use std::path::Path;
use std::sync::Arc;

fn batch(tag: &str, n: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 * n);
    for i in 0..n {
        b.push(None, format!("{tag}/{i}").as_bytes(), &[], 1_000 + i as i64);
    }
    b.finish()
}

fn open(disk: &SimDisk, dir: &Path, cfg: LogConfig, clean: bool) -> (PartitionLog, RecoveryReport) {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    PartitionLog::open_on(storage, dir, "sim-0".into(), cfg, clean).expect("opens")
}

/// Every record the log holds, as (offset, value).
fn read_all(log: &PartitionLog) -> Vec<(u64, String)> {
    super::tests::read_all(log, log.stats().log_start_offset)
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected {what} failure"))
}

/// An fsync that fails makes the partition fail-stop; what was written in that round is never
/// acknowledged, and a restart (with the page cache still holding those writes) serves only
/// records below the durable offset recorded at the failure.
#[test]
fn a_failed_fsync_stops_the_partition_and_a_restart_serves_only_durable_records() {
    let disk = SimDisk::new(11);
    let dir = Path::new("/data/t/0");
    let (log, _) = open(&disk, dir, config(1 << 20), true);
    for i in 0..5 {
        log.append(batch(&format!("ok{i}"), 3))
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    disk.set_fault(|op| {
        (op.kind == OpKind::Sync && op.path.extension().is_some_and(|e| e == "log"))
            .then(|| injected("fsync"))
    });
    let failed = log.append(batch("lost", 3)).unwrap().wait_blocking();
    assert!(matches!(failed, Err(AppendError::Failed(_))), "{failed:?}");
    assert!(log.failed().is_some());
    disk.clear_faults();
    let refused = log
        .append(batch("after", 1))
        .and_then(|p| p.wait_blocking());
    assert!(
        matches!(refused, Err(AppendError::Failed(_))),
        "fail-stop: {refused:?}"
    );
    assert_eq!(
        log.stats().high_watermark,
        15,
        "nothing of the failed round was published"
    );
    drop(log);

    // The process restarts; the page cache still holds the unsynced "lost" batch.
    let (log, report) = open(&disk, dir, config(1 << 20), false);
    let records = read_all(&log);
    assert_eq!(records.len(), 15, "{records:?}");
    assert!(
        records.iter().all(|(_, v)| v.starts_with("ok")),
        "{records:?}"
    );
    assert!(!report.truncated.is_empty(), "the cut is reported");
    // And the partition takes writes again, at the next offset.
    let ack = log
        .append(batch("again", 2))
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(ack.base_offset, 15);
}

/// A failed directory fsync while a new segment is created must not leave the new file behind:
/// the retry would find it and fail to create it, forever.
#[test]
fn a_failed_directory_fsync_during_a_roll_does_not_block_the_retry() {
    let disk = SimDisk::new(5);
    let dir = Path::new("/data/t/1");
    let (log, _) = open(&disk, dir, config(4096), true);
    let mut acked = Vec::new();
    let mut failures = 0;
    let mut fail_next_dir_sync = true;
    for i in 0..200 {
        if fail_next_dir_sync && log.stats().segments == 1 && log.stats().size_bytes > 3000 {
            disk.set_fault(|op| (op.kind == OpKind::SyncDir).then(|| injected("directory fsync")));
            fail_next_dir_sync = false;
        }
        match log
            .append(batch(&format!("b{i}"), 3))
            .unwrap()
            .wait_blocking()
        {
            Ok(a) => acked.push((a.base_offset, format!("b{i}"))),
            Err(_) => {
                failures += 1;
                disk.clear_faults();
            }
        }
    }
    assert!(failures >= 1, "the roll met the injected failure");
    assert!(
        log.failed().is_none(),
        "a failed roll is not a failed fsync"
    );
    assert!(
        log.stats().segments > 2,
        "rolls succeeded after the failure"
    );
    let records = read_all(&log);
    for (base, tag) in &acked {
        let found = records.iter().find(|(o, _)| o == base);
        assert_eq!(
            found.map(|(_, v)| v.as_str()),
            Some(format!("{tag}/0").as_str())
        );
    }
}

/// Seeded rounds: three partitions on one simulated disk take appends (small segments, so they
/// roll, with short writes) until the power is cut at a random moment; every acknowledged
/// record must be back after recovery, at its offset, and nothing unacknowledged may appear
/// twice or out of order.
#[test]
fn power_loss_never_loses_an_acknowledged_record_under_fsync_always() {
    let rounds: u64 = std::env::var("RILL_POWER_LOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let (mut acknowledged, mut recovered) = (0usize, 0usize);
    for round in 0..rounds {
        let seed = 0x5eed_0000 + round;
        let disk = SimDisk::new(seed);
        let dirs: Vec<_> = (0..3)
            .map(|p| std::path::PathBuf::from(format!("/data/t/{p}")))
            .collect();
        let mut acked: Vec<Vec<(u64, String)>> = vec![Vec::new(); dirs.len()];
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        // Several lives per round: each ends in a power cut, the next starts from what survived.
        for life in 0..3 {
            let logs: Vec<_> = dirs
                .iter()
                .map(|d| open(&disk, d, config(2048 + next() % 4096), false).0)
                .collect();
            disk.set_short_writes(next() % 2 == 0);
            let cut_after = next() % 60;
            let mut pending = Vec::new();
            for i in 0..60 {
                let p = (next() % logs.len() as u64) as usize;
                let tag = format!("r{round}l{life}i{i}");
                pending.push((
                    p,
                    tag.clone(),
                    logs[p]
                        .append(batch(&tag, 1 + (next() % 4) as usize))
                        .unwrap(),
                ));
                if i == cut_after {
                    break;
                }
                // Collect some acknowledgements as we go (the rest stay in flight at the cut).
                if next() % 3 == 0 {
                    for (p, tag, ack) in pending.drain(..) {
                        if let Ok(a) = ack.wait_blocking() {
                            acked[p].push((a.base_offset, tag));
                        }
                    }
                }
            }
            // The cut: from now on every operation fails (the machine is off), then only what
            // was durable survives, plus any subset of what was not.
            disk.set_fault(|_| Some(injected("power")));
            for (p, tag, ack) in pending.drain(..) {
                if let Ok(a) = ack.wait_blocking() {
                    acked[p].push((a.base_offset, tag));
                }
            }
            drop(logs);
            disk.power_loss();
            disk.clear_faults();
            disk.set_short_writes(false);
        }
        for (p, dir) in dirs.iter().enumerate() {
            let (log, _) = open(&disk, dir, config(4096), false);
            let records = read_all(&log);
            acknowledged += acked[p].len();
            recovered += records.len();
            let offsets: Vec<u64> = records.iter().map(|(o, _)| *o).collect();
            assert!(
                offsets.windows(2).all(|w| w[1] == w[0] + 1),
                "round {round} p{p}: offsets dense"
            );
            for (base, tag) in &acked[p] {
                let got = records
                    .iter()
                    .find(|(o, _)| o == base)
                    .map(|(_, v)| v.clone());
                assert_eq!(
                    got,
                    Some(format!("{tag}/0")),
                    "round {round} (seed {seed}) p{p}: acknowledged batch {tag} at {base} lost"
                );
            }
        }
    }
    eprintln!(
        "power loss: {rounds} rounds of 3 lives (3 power cuts each), {acknowledged} batches acknowledged, all present; {recovered} records recovered"
    );
}

fn idempotent_batch(tag: &str, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 * n);
    b.set_producer(rill_protocol::batch::Producer {
        id: 42,
        epoch: 0,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push(None, format!("{tag}/{i}").as_bytes(), &[], 1_000);
    }
    b.finish()
}

/// Seeded rounds of an idempotent producer through power cuts: it keeps at most 5 batches in
/// flight and, after each restart, resends every batch not acknowledged, in order, with its
/// original sequence (what the client does). Whatever survived the cut, the log must end up
/// with every batch exactly once, in send order: the producer state rebuilt from the
/// snapshot and the batch headers recognises each retry of a stored batch.
#[test]
fn power_loss_with_idempotent_retries_stores_each_batch_once_in_order() {
    let rounds: u64 = std::env::var("RILL_POWER_LOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let (mut batches, mut duplicates) = (0usize, 0usize);
    for round in 0..rounds {
        let seed = 0x1de0_0000 + round;
        let disk = SimDisk::new(seed);
        let dir = Path::new("/data/t/0");
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        // (tag, first sequence, records) of every batch made, and how many are acknowledged.
        let mut made: Vec<(String, i32, usize)> = Vec::new();
        let mut acked = 0usize;
        let mut seq = 0i32;
        for life in 0..4 {
            let (log, _) = open(&disk, dir, config(2048 + next() % 4096), false);
            let last_life = life == 3;
            disk.set_short_writes(!last_life && next() % 2 == 0);
            let cut_after = if last_life {
                usize::MAX
            } else {
                (next() % 40) as usize
            };
            let mut in_flight = std::collections::VecDeque::new();
            // Resend what is not acknowledged, then make new batches.
            let mut to_send = acked;
            let mut sends = 0;
            loop {
                if to_send == made.len() {
                    if last_life || made.len() >= 40 * (life + 1) {
                        break;
                    }
                    let n = 1 + (next() % 3) as usize;
                    made.push((format!("r{round}b{}", made.len()), seq, n));
                    seq += n as i32;
                }
                let (tag, s, n) = made[to_send].clone();
                in_flight.push_back((to_send, log.append(idempotent_batch(&tag, s, n)).unwrap()));
                to_send += 1;
                sends += 1;
                if sends == cut_after {
                    break;
                }
                if in_flight.len() == 5 || next() % 3 == 0 {
                    let (i, ack) = in_flight.pop_front().unwrap();
                    match ack.wait_blocking() {
                        Ok(a) if i == acked => {
                            duplicates += usize::from(a.duplicate);
                            acked += 1;
                        }
                        Ok(_) => panic!("round {round}: batch {i} acknowledged before {acked}"),
                        Err(e) => panic!("round {round} life {life}: batch {i} failed: {e}"),
                    }
                }
            }
            if !last_life {
                disk.set_fault(|_| Some(injected("power")));
            }
            for (i, ack) in in_flight {
                if let Ok(a) = ack.wait_blocking() {
                    assert_eq!(i, acked, "round {round}: acknowledged in order");
                    duplicates += usize::from(a.duplicate);
                    acked += 1;
                }
            }
            drop(log);
            if !last_life {
                disk.power_loss();
                disk.clear_faults();
                disk.set_short_writes(false);
            }
        }
        assert_eq!(
            acked,
            made.len(),
            "round {round}: the last life acknowledges everything"
        );
        let (log, _) = open(&disk, dir, config(4096), false);
        let stored: Vec<String> = read_all(&log)
            .into_iter()
            .filter_map(|(_, v)| v.strip_suffix("/0").map(str::to_string))
            .collect();
        let expected: Vec<String> = made.iter().map(|(t, _, _)| t.clone()).collect();
        assert_eq!(
            stored, expected,
            "round {round} (seed {seed}): each batch once, in order"
        );
        batches += made.len();
    }
    eprintln!(
        "power loss with idempotent retries: {rounds} rounds, {batches} batches stored once each, {duplicates} retries recognised as duplicates"
    );
}

/// A write that fails is rolled back, and so is the producer state it had advanced: the
/// retry of the same batch is stored, not mistaken for a duplicate of the failed write.
#[test]
fn a_failed_write_rolls_back_the_producer_state_with_it() {
    let disk = SimDisk::new(3);
    let dir = Path::new("/data/t/2");
    let (log, _) = open(&disk, dir, config(1 << 20), true);
    log.append(idempotent_batch("a", 0, 2))
        .unwrap()
        .wait_blocking()
        .unwrap();
    disk.set_fault(|op| (op.kind == OpKind::Write).then(|| injected("write")));
    let failed = log
        .append(idempotent_batch("b", 2, 2))
        .unwrap()
        .wait_blocking();
    assert!(matches!(failed, Err(AppendError::Storage(_))), "{failed:?}");
    disk.clear_faults();
    let retry = log
        .append(idempotent_batch("b", 2, 2))
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (2, false));
    let values: Vec<String> = read_all(&log).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, ["a/0", "a/1", "b/0", "b/1"]);
}

/// A cut is durable once `truncate_from` returns: a power loss right after it brings back
/// none of the records it removed, whatever else it loses of unsynced writes.
#[test]
fn a_truncation_survives_a_power_loss() {
    for seed in 0..20 {
        let disk = SimDisk::new(0x7c00 + seed);
        let dir = Path::new("/data/t/3");
        let (log, _) = open(&disk, dir, config(2048), true);
        let mut bases = Vec::new();
        for i in 0..40 {
            bases.push(
                log.append(batch(&format!("b{i}"), 2))
                    .unwrap()
                    .wait_blocking()
                    .unwrap()
                    .base_offset,
            );
        }
        let cut = bases[(seed as usize * 7) % 40];
        log.truncate_from(cut).unwrap();
        disk.set_fault(|_| Some(injected("power")));
        drop(log);
        disk.power_loss();
        disk.clear_faults();
        let (log, _) = open(&disk, dir, config(2048), false);
        let records = read_all(&log);
        assert_eq!(
            records.len() as u64,
            cut,
            "seed {seed}: everything below the cut is there, nothing from it on"
        );
    }
}
