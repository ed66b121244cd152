//! Partition log behaviour against real files in a temporary directory.

use super::*;
use bytes::Bytes;
use rill_protocol::FsyncPolicy;
use rill_protocol::batch::{BatchBuilder, Batches, RecordIter};
use std::fs::OpenOptions;
use std::path::Path;

/// `config(segment_bytes)` with `fsync=interval:ms`.
fn interval(ms: u32, segment_bytes: u64) -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Interval { ms },
        ..config(segment_bytes)
    }
}

pub(super) fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
        retention_ms: 0,
        retention_bytes: 0,
        producer_expiration_ms: 86_400_000,
    }
}

/// A batch of `n` records whose values are `"{tag}-{i}"` and timestamps `ts0 + i`.
fn batch(tag: u64, n: usize, ts0: i64) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 * n);
    for i in 0..n {
        b.push(None, format!("{tag}-{i}").as_bytes(), &[], ts0 + i as i64);
    }
    b.finish()
}

fn open(dir: &Path, cfg: LogConfig, clean: bool) -> (PartitionLog, RecoveryReport) {
    PartitionLog::open(dir, "t-0".into(), cfg, clean).expect("opens")
}

/// Every record from `from` on, as (offset, value), read the way a consumer would.
pub(super) fn read_all(log: &PartitionLog, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 1000).expect("reads");
        if r.batches.is_empty() {
            return out;
        }
        for b in Batches::new(r.batches) {
            for rec in RecordIter::new(b).expect("valid batch") {
                let rec = rec.unwrap();
                if rec.offset >= next {
                    out.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap()));
                }
            }
        }
        next = out.last().map_or(next, |(o, _)| o + 1);
    }
}

fn append_batches(log: &PartitionLog, count: u64, per_batch: usize) -> Vec<u64> {
    let pending: Vec<_> = (0..count)
        .map(|t| log.append(batch(t, per_batch, t as i64 * 100)).unwrap())
        .collect();
    pending
        .into_iter()
        .map(|p| p.wait_blocking().unwrap().base_offset)
        .collect()
}

#[test]
fn appends_get_dense_offsets_and_read_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    let bases = append_batches(&log, 200, 3);
    assert_eq!(bases, (0..200).map(|t| t * 3).collect::<Vec<_>>());
    assert_eq!(log.high_watermark(), 600);
    let stats = log.stats();
    assert!(
        stats.segments >= 4,
        "small segments must roll, got {}",
        stats.segments
    );
    let all = read_all(&log, 0);
    assert_eq!(all.len(), 600);
    for (i, (off, v)) in all.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(v, &format!("{}-{}", i / 3, i % 3));
    }
}

#[test]
fn a_read_at_any_offset_starts_with_the_batch_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(8192), true);
    append_batches(&log, 120, 5);
    for offset in 0..600 {
        let r = log.read(offset, 1).unwrap();
        let first = Batches::new(r.batches).next().expect("one batch");
        let h = rill_protocol::batch::validate(&first).unwrap();
        assert!(
            h.base_offset <= offset && offset <= h.last_offset(),
            "offset {offset} not in [{}, {}]",
            h.base_offset,
            h.last_offset()
        );
    }
    assert!(
        log.read(600, 100).unwrap().batches.is_empty(),
        "reading at the end returns nothing"
    );
    assert!(matches!(
        log.read(601, 100),
        Err(ReadError::OffsetOutOfRange {
            offset: 601,
            end: 600,
            ..
        })
    ));
}

#[test]
fn reopening_after_a_clean_close_trusts_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    append_batches(&log, 100, 2);
    let before = read_all(&log, 0);
    log.close();
    drop(log);
    let (log, report) = open(dir.path(), config(4096), true);
    assert_eq!(report.rebuilt_indexes, 0);
    assert!(report.truncated.is_empty());
    assert_eq!(read_all(&log, 0), before);
    assert_eq!(
        append_batches(&log, 1, 1),
        vec![200],
        "appends continue after the old end"
    );
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn tail_segment(dir: &Path) -> std::path::PathBuf {
    segments(dir).pop().unwrap()
}

#[test]
fn a_torn_tail_is_truncated_to_the_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    append_batches(&log, 10, 4);
    log.close();
    drop(log);
    // Simulate a crash in the middle of writing batch 10: half of it reached the file.
    let tail = tail_segment(dir.path());
    let half = batch(10, 4, 0);
    let mut f = OpenOptions::new().append(true).open(&tail).unwrap();
    std::io::Write::write_all(&mut f, &half[..half.len() / 2]).unwrap();
    let len_before = std::fs::metadata(&tail).unwrap().len();

    let (log, report) = open(dir.path(), config(1 << 20), false);
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(
        report.truncated[0].2,
        (half.len() / 2) as u64,
        "exactly the torn bytes are cut"
    );
    assert_eq!(
        std::fs::metadata(&tail).unwrap().len(),
        len_before - (half.len() / 2) as u64
    );
    assert_eq!(log.high_watermark(), 40);
    assert_eq!(read_all(&log, 0).len(), 40);
    assert_eq!(append_batches(&log, 1, 1), vec![40]);
}

#[test]
fn whole_batches_lost_while_stopped_are_reported_with_their_offsets() {
    // Segments of a few batches, so there is a sealed one and a tail.
    for (which, clean) in [("tail", true), ("tail", false), ("sealed", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), config(600), true);
        append_batches(&log, 30, 4);
        log.close();
        drop(log);
        let mut logs = segments(dir.path());
        let victim = if which == "tail" {
            logs.pop().unwrap()
        } else {
            logs.remove(0)
        };
        // Cut the last two batches off exactly at a batch boundary: nothing torn is left.
        let bytes = std::fs::read(&victim).unwrap();
        let headers: Vec<_> = Batches::new(Bytes::from(bytes.clone()))
            .map(|b| rill_protocol::batch::validate(&b).unwrap())
            .collect();
        assert!(headers.len() >= 3, "{which}: {} batches", headers.len());
        let keep: usize = headers[..headers.len() - 2]
            .iter()
            .map(|h| h.total_len())
            .sum();
        let first_lost = headers[headers.len() - 2].base_offset;
        let end = headers.last().unwrap().last_offset() + 1;
        OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap()
            .set_len(keep as u64)
            .unwrap();
        let (log, report) = open(dir.path(), config(600), clean);
        let lost = report
            .truncated
            .iter()
            .find(|(path, ..)| *path == victim)
            .unwrap_or_else(|| panic!("{which} (clean {clean}): not reported: {report:?}"));
        assert_eq!(lost.1, keep as u64, "{which}: position");
        assert_eq!(lost.2, (bytes.len() - keep) as u64, "{which}: bytes");
        assert!(
            lost.3
                .contains(&format!("offsets {first_lost}..{end} are gone")),
            "{which}: {}",
            lost.3
        );
        // Crash (no clean close, so no fresh index) and start again: reported once only.
        std::mem::forget(log);
        let (_log, report) = open(dir.path(), config(600), false);
        assert!(
            report.truncated.is_empty(),
            "{which}: reported again: {report:?}"
        );
    }
}

/// The bug: recovery cut a sealed segment at the first bad batch whenever it rescanned one (for
/// example because its index was missing), deleting every later intact, fsynced, acknowledged
/// batch in it.
#[test]
fn damage_in_a_sealed_segment_loses_only_the_damaged_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = open(dir.path(), config(4096), true);
        append_batches(&log, 200, 3);
        log.close();
    }
    let sealed = segments(dir.path())[0].clone();
    let len_before = std::fs::metadata(&sealed).unwrap().len();
    // Flip a byte inside the 10th batch's records, and make recovery rescan the segment.
    let bytes = std::fs::read(&sealed).unwrap();
    let mut pos = 0;
    let mut damaged = None;
    for (i, b) in Batches::new(Bytes::from(bytes.clone())).enumerate() {
        if i == 10 {
            let h = rill_protocol::batch::BatchHeader::parse(&b).unwrap();
            damaged = Some((pos + b.len() / 2 + 20, h.base_offset, h.last_offset() + 1));
            break;
        }
        pos += b.len();
    }
    let (at, lost_from, lost_to) = damaged.unwrap();
    let mut bytes = bytes;
    bytes[at] ^= 0x40;
    std::fs::write(&sealed, &bytes).unwrap();
    std::fs::remove_file(sealed.with_extension("index")).unwrap();

    for round in 0..2 {
        let (log, report) = open(dir.path(), config(4096), true);
        assert!(report.truncated.is_empty(), "round {round}: nothing is cut");
        assert_eq!(report.holes.len(), 1, "round {round}: {report:?}");
        assert_eq!(
            std::fs::metadata(&sealed).unwrap().len(),
            len_before,
            "the sealed segment keeps every byte"
        );
        for offset in 0..600u64 {
            match log.read(offset, 1) {
                Ok(r) => {
                    assert!(!(lost_from..lost_to).contains(&offset));
                    let first = Batches::new(r.batches).next().expect("a batch");
                    let found = RecordIter::new(first)
                        .unwrap()
                        .map(|r| r.unwrap())
                        .find(|r| r.offset == offset)
                        .expect("the batch holds the offset");
                    let tag = offset / 3;
                    assert_eq!(found.value, format!("{tag}-{}", offset % 3).as_bytes());
                }
                Err(ReadError::RecordsLost { from, to, .. }) => {
                    assert!((lost_from..lost_to).contains(&offset), "{offset}");
                    assert_eq!((from, to), (lost_from, lost_to));
                }
                Err(e) => panic!("offset {offset}: {e}"),
            }
        }
        // Reading across the hole from before it stops at it; the rest needs a read after it.
        let r = log.read(0, 1 << 20).unwrap();
        let last = Batches::new(r.batches)
            .map(|b| {
                rill_protocol::batch::BatchHeader::parse(&b)
                    .unwrap()
                    .last_offset()
            })
            .last();
        assert_eq!(last.map(|o| o + 1), Some(lost_from));
        assert_eq!(read_all(&log, lost_to).len() as u64, 600 - lost_to);
        // Round 1 opens again after a clean close: the hole must be found again.
        log.close();
    }
}

#[test]
fn a_bit_flip_in_the_last_batch_cuts_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    append_batches(&log, 10, 4);
    log.close();
    drop(log);
    let tail = tail_segment(dir.path());
    let mut bytes = std::fs::read(&tail).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&tail, &bytes).unwrap();

    let (log, report) = open(dir.path(), config(1 << 20), false);
    assert_eq!(report.truncated.len(), 1);
    assert!(
        report.truncated[0].3.contains("CRC"),
        "reason names the CRC: {}",
        report.truncated[0].3
    );
    assert_eq!(log.high_watermark(), 36, "the nine intact batches survive");
    let all = read_all(&log, 0);
    assert_eq!(all.last().unwrap(), &(35, "8-3".to_string()));
}

#[test]
fn an_unclean_start_rebuilds_the_tail_index_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    append_batches(&log, 50, 3);
    log.close();
    drop(log);
    let tail = tail_segment(dir.path());
    let written = std::fs::read(tail.with_extension("index")).unwrap();
    std::fs::remove_file(tail.with_extension("index")).unwrap();
    let (log, report) = open(dir.path(), config(1 << 20), false);
    assert_eq!(report.rebuilt_indexes, 1);
    log.close();
    assert_eq!(
        std::fs::read(tail.with_extension("index")).unwrap(),
        written
    );
}

#[test]
fn offsets_are_found_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    // Batch t holds timestamps t*100 .. t*100+4.
    append_batches(&log, 60, 5);
    assert_eq!(log.offset_for_timestamp(i64::MIN).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(103).unwrap(), Some(8));
    assert_eq!(
        log.offset_for_timestamp(150).unwrap(),
        Some(10),
        "between batches: the next batch's first record"
    );
    assert_eq!(log.offset_for_timestamp(5904).unwrap(), Some(299));
    assert_eq!(log.offset_for_timestamp(5905).unwrap(), None);
}

#[test]
fn interval_mode_acknowledges_and_serves_before_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = interval(60_000, 1 << 20);
    let (log, _) = open(dir.path(), cfg.clone(), true);
    assert_eq!(append_batches(&log, 3, 2), vec![0, 2, 4]);
    assert_eq!(read_all(&log, 0).len(), 6);
    log.close();
    drop(log);
    let (log, _) = open(dir.path(), cfg, false);
    assert_eq!(
        log.high_watermark(),
        6,
        "close syncs what the interval had not yet"
    );
}

#[test]
fn invalid_batches_are_refused_before_touching_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    let good = batch(1, 2, 0);
    let mut bad = good.to_vec();
    bad[40] ^= 1;
    assert!(matches!(
        log.append(Bytes::from(bad)),
        Err(AppendError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(good.slice(..good.len() - 1)),
        Err(AppendError::InvalidBatch(_))
    ));
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.stats().size_bytes, 0);
}

#[test]
fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    log.close();
    let result = log.append(batch(0, 1, 0)).and_then(|p| p.wait_blocking());
    assert!(matches!(result, Err(AppendError::ShuttingDown)));
}

#[test]
fn deleting_old_segments_moves_the_log_start_and_keeps_the_rest_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    append_batches(&log, 200, 3);
    let before = log.stats();
    assert!(before.segments >= 4);
    assert_eq!(
        log.delete_segments_before(0).unwrap(),
        0,
        "nothing ends at or before offset 0"
    );
    let removed = log.delete_segments_before(300).unwrap();
    assert!(removed >= 1);
    let after = log.stats();
    assert_eq!(after.segments, before.segments - removed as u32);
    assert!(after.log_start_offset > 0 && after.log_start_offset <= 300);
    assert!(matches!(
        log.read(0, 100),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    let rest = read_all(&log, after.log_start_offset);
    assert_eq!(rest.len() as u64, 600 - after.log_start_offset);
    // The active segment survives even a cut past the end.
    log.delete_segments_before(u64::MAX).unwrap();
    assert_eq!(log.stats().segments, 1);
    assert_eq!(append_batches(&log, 1, 1), vec![600]);
    // And the deletion is durable: a reopened log starts where it was cut.
    let start = log.stats().log_start_offset;
    log.close();
    drop(log);
    let (log, _) = open(dir.path(), config(4096), true);
    assert_eq!(log.stats().log_start_offset, start);
    assert_eq!(log.high_watermark(), 601);
}

#[test]
fn retention_deletes_expired_and_excess_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    // Batch t has timestamps t*100 .. t*100+2; ~90-byte batches, so ~45 per 4 KiB segment.
    append_batches(&log, 200, 3);
    let before = log.stats();
    assert!(before.segments >= 4);
    // Nothing is old or large enough under the default (keep forever).
    assert_eq!(log.enforce_retention(i64::MAX).unwrap(), 0);

    // By age: everything older than 5,000 ms before "now" = 20,000 goes: batches 0..=149.
    log.reconfigure(LogConfig {
        retention_ms: 5_000,
        ..config(4096)
    })
    .unwrap();
    let removed = log.enforce_retention(20_000).unwrap();
    assert!(removed >= 1);
    let start = log.stats().log_start_offset;
    assert!(
        start > 0 && start <= 450,
        "only whole segments older than the cut go (start {start})"
    );
    assert_eq!(read_all(&log, start).len() as u64, 600 - start);

    // By size: cut down to at most one segment besides the active one.
    log.reconfigure(LogConfig {
        retention_bytes: 4096,
        ..config(4096)
    })
    .unwrap();
    log.enforce_retention(20_000).unwrap();
    let after = log.stats();
    assert!(
        after.segments <= 2 && after.size_bytes <= 4096 + 4096,
        "{after:?}"
    );
    assert_eq!(after.high_watermark, 600);
    // The active segment always stays, even when everything is "expired".
    log.reconfigure(LogConfig {
        retention_ms: 1,
        ..config(4096)
    })
    .unwrap();
    log.enforce_retention(i64::MAX).unwrap();
    assert_eq!(log.stats().segments, 1);
    assert_eq!(append_batches(&log, 1, 1), vec![600]);
}

/// The bug: retention trusted record timestamps, so one record stamped ten years ahead kept
/// its segment, and every later one, for ten years.
#[test]
fn a_far_future_timestamp_does_not_pin_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(
        dir.path(),
        LogConfig {
            retention_ms: 3_600_000,
            ..config(4096)
        },
        true,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ten_years = 10 * 365 * 24 * 3_600_000i64;
    let acks: Vec<_> = (0..200u64)
        .map(|t| {
            let ts = if t == 3 { now + ten_years } else { now };
            log.append(batch(t, 3, ts)).unwrap()
        })
        .collect();
    for a in acks {
        a.wait_blocking().unwrap();
    }
    assert!(log.stats().segments >= 4);
    // An hour from now nothing is due yet: the segments were written just now.
    assert_eq!(log.enforce_retention(now + 3_600_000 / 2).unwrap(), 0);
    // A day from now every sealed segment is past retention by the time it was written,
    // whatever its records claim.
    log.enforce_retention(now + 24 * 3_600_000).unwrap();
    let after = log.stats();
    assert_eq!(
        after.segments, 1,
        "only the active segment stays: {after:?}"
    );
    assert_eq!(
        read_all(&log, after.log_start_offset).len() as u64,
        600 - after.log_start_offset
    );
}

#[test]
fn reconfiguring_fsync_and_segment_size_applies_to_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    append_batches(&log, 50, 3);
    assert_eq!(log.stats().segments, 1);
    log.reconfigure(interval(10, 4096)).unwrap();
    append_batches(&log, 100, 3);
    assert!(
        log.stats().segments > 1,
        "the smaller segment size rolls the log"
    );
    log.reconfigure(config(4096)).unwrap();
    append_batches(&log, 10, 3);
    assert_eq!(read_all(&log, 0).len(), 480);
}

/// Waits (at most 10 s) for the interval syncer to cover the high watermark.
fn await_durable(log: &PartitionLog) {
    let end = log.high_watermark();
    let mut durable = log.subscribe_durable();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            durable.wait_for(|d| *d >= end),
        )
        .await
        .unwrap_or_else(|_| panic!("the syncer never covered offset {end}"))
        .unwrap();
    });
}

#[test]
fn the_durable_offset_follows_fsyncs_under_each_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    append_batches(&log, 5, 2);
    assert_eq!(
        log.durable_offset(),
        10,
        "fsync=always acknowledges only what is synced"
    );
    log.reconfigure(interval(60_000, 1 << 20)).unwrap();
    append_batches(&log, 5, 2);
    assert_eq!(log.high_watermark(), 20);
    assert_eq!(log.durable_offset(), 10, "acknowledged, not yet synced");
    log.reconfigure(interval(1, 1 << 20)).unwrap();
    await_durable(&log);
    assert_eq!(log.durable_offset(), 20);
}

/// A power cut under `fsync=interval` may take any part of what the last fsync did not cover,
/// down to single torn bytes or zero-filled blocks. Recovery from every such disk state must
/// keep every record below the durable offset, and serve only records that were written.
#[test]
fn a_power_loss_keeps_everything_below_the_durable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), interval(1, 1 << 20), true);
    append_batches(&log, 20, 3);
    await_durable(&log);
    // Freeze the syncer, then write an unsynced window.
    log.reconfigure(interval(60_000, 1 << 20)).unwrap();
    let durable = log.durable_offset();
    append_batches(&log, 25, 3);
    let end = log.high_watermark();
    assert!(durable == 60 && end == 135, "durable {durable}, end {end}");
    let original = read_all(&log, 0);

    // The disk as the power cut found it: the synced prefix of the segment, then any part of
    // the rest.
    let tail = tail_segment(dir.path());
    let bytes = std::fs::read(&tail).unwrap();
    let synced_len = Batches::new(Bytes::from(bytes.clone()))
        .map(|b| rill_protocol::batch::validate(&b).unwrap())
        .take_while(|h| h.base_offset < durable)
        .map(|h| h.total_len())
        .sum::<usize>();
    let mut cases = 0;
    for cut in (synced_len..=bytes.len()).step_by(11) {
        for zero_filled in [false, true] {
            let crashed = tempfile::tempdir().unwrap();
            let copy = crashed.path().join(tail.file_name().unwrap());
            let mut disk = bytes[..cut].to_vec();
            if zero_filled {
                disk.resize(bytes.len(), 0);
            }
            std::fs::write(&copy, &disk).unwrap();
            let (recovered, _) = open(crashed.path(), interval(60_000, 1 << 20), false);
            let hw = recovered.high_watermark();
            assert!(
                (durable..=end).contains(&hw),
                "cut at {cut}: recovered end {hw}"
            );
            let got = read_all(&recovered, 0);
            assert_eq!(
                got[..],
                original[..hw as usize],
                "cut at {cut} (zero-filled: {zero_filled})"
            );
            assert_eq!(
                recovered.durable_offset(),
                hw,
                "recovery syncs what it keeps"
            );
            cases += 1;
        }
    }
    assert!(cases > 100, "only {cases} disk states tried");
}

#[test]
fn interval_write_back_neither_changes_the_data_nor_counts_as_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = interval(60_000, 64 << 20);
    let (log, _) = open(dir.path(), cfg.clone(), true);
    // About 10 MiB in 64 KiB batches: write-back is started at least twice.
    let value = vec![b'w'; 1000];
    let mut pending = Vec::new();
    for t in 0..160u64 {
        let mut b = BatchBuilder::with_capacity(70_000);
        for _ in 0..64 {
            b.push(None, &value, &[], t as i64);
        }
        pending.push(log.append(b.finish()).unwrap());
    }
    for p in pending {
        p.wait_blocking().unwrap();
    }
    assert_eq!(log.high_watermark(), 160 * 64);
    assert!(log.stats().size_bytes > 8 << 20);
    assert_eq!(
        log.durable_offset(),
        0,
        "starting write-back is not an fsync; only the syncer may advance the durable offset"
    );
    let mut next = 0;
    while next < log.high_watermark() {
        let r = log.read(next, 1 << 20).unwrap();
        for b in Batches::new(r.batches) {
            for rec in RecordIter::new(b).unwrap() {
                let rec = rec.unwrap();
                assert_eq!(rec.offset, next);
                assert_eq!(&rec.value[..], &value[..]);
                next += 1;
            }
        }
    }
}

#[test]
fn the_scrub_checks_index_entries_against_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(600), true);
    append_batches(&log, 30, 4);
    log.close();
    drop(log);
    let clean = check_partition(dir.path()).unwrap();
    assert!(
        clean.damage.is_empty() && clean.rebuilds.is_empty(),
        "{clean:?}"
    );
    assert_eq!((clean.start_offset, clean.end_offset), (0, 120));

    // A CRC-valid index whose second entry points into the middle of a batch.
    let first = dir.path().join(segment::file_name(0));
    let (mut idx, extent) =
        index::load(&crate::storage::Disk, &first).expect("a sealed segment has an index");
    assert!(idx.offsets.len() >= 2, "{idx:?}");
    idx.offsets[1].position += 1;
    idx.write(&crate::storage::Disk, &first, extent).unwrap();
    let forged = check_partition(dir.path()).unwrap();
    assert!(forged.damage.is_empty(), "{forged:?}");
    assert!(
        forged.rebuilds.len() == 1 && forged.rebuilds[0].contains("is not the start of a batch"),
        "{forged:?}"
    );

    // The same with a time entry claiming a timestamp no batch has.
    idx.offsets[1].position -= 1;
    let t = idx.times.last_mut().unwrap();
    t.timestamp += 1;
    idx.write(&crate::storage::Disk, &first, extent).unwrap();
    let forged = check_partition(dir.path()).unwrap();
    assert!(
        forged.rebuilds.len() == 1 && forged.rebuilds[0].contains("does not match the batches"),
        "{forged:?}"
    );
}

/// A batch of `n` records from idempotent producer `id` at `epoch`, first sequence `seq`.
fn idem(id: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 * n);
    b.set_producer(rill_protocol::batch::Producer {
        id,
        epoch,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push(
            None,
            format!("p{id}e{epoch}s{}", seq + i as i32).as_bytes(),
            &[],
            1,
        );
    }
    b.finish()
}

fn send(log: &PartitionLog, batch: Bytes) -> Result<AppendAck, AppendError> {
    log.append(batch)?.wait_blocking()
}

#[test]
fn an_idempotent_retry_gets_the_original_offsets_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    let first = send(&log, idem(5, 0, 0, 3)).unwrap();
    let plain = send(&log, batch(1, 2, 0)).unwrap();
    let second = send(&log, idem(5, 0, 3, 2)).unwrap();
    assert_eq!(
        (first.base_offset, plain.base_offset, second.base_offset),
        (0, 3, 5)
    );
    assert!(!first.duplicate && !second.duplicate);
    // Retries of both, in any order, within the window: the original offsets, nothing stored.
    let retry = send(&log, idem(5, 0, 0, 3)).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (0, true));
    let retry = send(&log, idem(5, 0, 3, 2)).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (5, true));
    assert_eq!(log.high_watermark(), 7);
    // A gap, and a batch that overlaps a stored one without matching it: refused, typed.
    assert!(matches!(
        send(&log, idem(5, 0, 9, 1)),
        Err(AppendError::Sequence(
            producers::SequenceError::OutOfOrder {
                got: 9,
                expected: 5,
                ..
            }
        ))
    ));
    assert!(matches!(
        send(&log, idem(5, 0, 3, 1)),
        Err(AppendError::Sequence(
            producers::SequenceError::OutOfOrder { .. }
        ))
    ));
    // A newer epoch takes over; the old one is fenced from then on.
    assert_eq!(send(&log, idem(5, 1, 0, 1)).unwrap().base_offset, 7);
    assert!(matches!(
        send(&log, idem(5, 0, 5, 1)),
        Err(AppendError::Sequence(producers::SequenceError::Fenced {
            got: 0,
            current: 1,
            ..
        }))
    ));
    // A producer id with a negative sequence is not a valid batch.
    assert!(matches!(
        log.append(idem(6, 0, -3, 1)),
        Err(AppendError::InvalidBatch(_))
    ));
    assert_eq!(log.high_watermark(), 8);
    assert_eq!(log.producers(), 1);
    let values: Vec<String> = read_all(&log, 0).into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        values,
        [
            "p5e0s0", "p5e0s1", "p5e0s2", "1-0", "1-1", "p5e0s3", "p5e0s4", "p5e1s0"
        ]
    );
}

/// Files of the partition with the given extension.
fn files_with(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

#[test]
fn producer_state_survives_clean_and_unclean_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    for i in 0..40 {
        send(&log, idem(1, 0, i * 2, 2)).unwrap();
        send(&log, batch(i as u64, 1, 0)).unwrap();
    }
    log.close();
    drop(log);
    // Clean: the snapshot written at the close is the whole state; no header is read.
    let (log, report) = open(dir.path(), config(4096), true);
    assert_eq!(report.producers.snapshot, Some(120));
    assert_eq!(report.producers.replayed_batches, 0);
    let retry = send(&log, idem(1, 0, 78, 2)).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (117, true));
    send(&log, idem(1, 0, 80, 2)).unwrap();
    log.close();
    drop(log);
    // Unclean, as after a crash: without the close's snapshot the state is the last roll's
    // snapshot plus the headers after it.
    let snaps = files_with(dir.path(), "producers");
    assert_eq!(snaps.len(), 1, "older snapshots are removed: {snaps:?}");
    std::fs::remove_file(&snaps[0]).unwrap();
    let (log, report) = open(dir.path(), config(4096), false);
    assert_eq!(
        report.producers.snapshot, None,
        "no snapshot left at all, so the whole log is read"
    );
    assert_eq!(report.producers.replayed_batches, 81);
    let retry = send(&log, idem(1, 0, 80, 2)).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (120, true));
    assert_eq!(send(&log, idem(1, 0, 82, 1)).unwrap().base_offset, 122);
    // Rolls keep a snapshot at the new segment's base: an unclean start reads only after it.
    for i in 0..40 {
        send(&log, batch(i, 3, 0)).unwrap();
    }
    drop(log);
    let snaps = files_with(dir.path(), "producers");
    std::fs::remove_file(snaps.last().unwrap()).unwrap();
    let segment_bases: Vec<u64> = segments(dir.path())
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    let (log, report) = open(dir.path(), config(4096), false);
    assert!(
        report.producers.snapshot.is_none()
            || segment_bases.contains(&report.producers.snapshot.unwrap()),
        "{report:?}"
    );
    assert!(send(&log, idem(1, 0, 82, 1)).unwrap().duplicate);
}

#[test]
fn a_damaged_producer_snapshot_is_rebuilt_from_the_log_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    for i in 0..10 {
        send(&log, idem(2, 3, i, 1)).unwrap();
    }
    drop(log);
    let snap = files_with(dir.path(), "producers").pop().unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snap, &bytes).unwrap();
    let scrub = check_partition(dir.path()).unwrap();
    assert!(
        scrub.damage.is_empty()
            && scrub.rebuilds.len() == 1
            && scrub.rebuilds[0].contains("producer snapshot unusable"),
        "the offline check reports it: {scrub:?}"
    );
    let (log, report) = open(dir.path(), config(1 << 20), true);
    assert_eq!(report.producers.skipped.len(), 1, "{report:?}");
    assert_eq!(report.producers.replayed_batches, 10);
    let retry = send(&log, idem(2, 3, 9, 1)).unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (9, true));
    assert!(matches!(
        send(&log, idem(2, 2, 10, 1)),
        Err(AppendError::Sequence(
            producers::SequenceError::Fenced { .. }
        ))
    ));
    // A snapshot beyond the log's end (the log lost its tail) is not used either.
    drop(log);
    let snap = files_with(dir.path(), "producers").pop().unwrap();
    std::fs::rename(&snap, dir.path().join("00000000000000009999.producers")).unwrap();
    let (_log, report) = open(dir.path(), config(1 << 20), true);
    assert_eq!(report.producers.skipped.len(), 1, "{report:?}");
    assert_eq!(report.producers.snapshot, None);
}

#[test]
fn retention_deleting_a_producers_batches_does_not_forget_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: 4096,
        ..config(4096)
    };
    let (log, _) = open(dir.path(), cfg.clone(), true);
    send(&log, idem(4, 0, 0, 2)).unwrap();
    for i in 0..200 {
        send(&log, batch(i, 2, 0)).unwrap();
    }
    assert!(log.enforce_retention(0).unwrap() > 0);
    assert!(
        log.stats().log_start_offset > 2,
        "the producer's batch is gone"
    );
    drop(log);
    let (log, _) = open(dir.path(), cfg, false);
    assert_eq!(
        send(&log, idem(4, 0, 2, 1)).map(|a| a.duplicate).ok(),
        Some(false),
        "sequence 2 continues the producer, not a restart at 0"
    );
    assert!(matches!(
        send(&log, idem(4, 0, 0, 1)),
        Err(AppendError::Sequence(_))
    ));
}

#[test]
fn idle_producers_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        producer_expiration_ms: 1,
        ..config(1 << 20)
    };
    let (log, _) = open(dir.path(), cfg.clone(), true);
    send(&log, idem(8, 0, 0, 1)).unwrap();
    drop(log);
    // Expired at the next start (its state is older than 1 ms by then): sequence 0 of a
    // forgotten producer is a new start, and the next sequence is refused as a gap from 0.
    let before = std::time::Instant::now();
    while before.elapsed() < std::time::Duration::from_millis(2) {
        std::hint::spin_loop();
    }
    let (log, _) = open(dir.path(), cfg, true);
    assert_eq!(log.producers(), 0);
    assert!(matches!(
        send(&log, idem(8, 0, 1, 1)),
        Err(AppendError::Sequence(
            producers::SequenceError::OutOfOrder { expected: 0, .. }
        ))
    ));
}

/// Every stored record value from the log start.
fn values(log: &PartitionLog) -> Vec<String> {
    read_all(log, log.stats().log_start_offset)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn truncation_cuts_across_segments_and_appends_continue_from_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    let bases = append_batches(&log, 300, 3);
    assert!(log.stats().segments >= 4, "several segments to cut across");
    let before = values(&log);
    // A cut in an early segment: every later segment goes.
    let cut = bases[30];
    assert!(matches!(
        log.truncate_from(cut + 1),
        Err(TruncateError::NotABatchBoundary(_))
    ));
    assert!(matches!(
        log.truncate_from(log.high_watermark() + 3),
        Err(TruncateError::OutOfRange { .. })
    ));
    assert_eq!(values(&log), before, "a refused cut changes nothing");
    log.truncate_from(cut).unwrap();
    assert_eq!(log.high_watermark(), cut);
    assert!(log.durable_offset() <= cut);
    assert_eq!(values(&log), before[..cut as usize].to_vec());
    let cut_segments = log.stats().segments;
    assert_eq!(
        segments(dir.path()).len() as u32,
        cut_segments,
        "no segment file beyond the cut is left"
    );
    // Appends continue at the cut, and the log reads back whole, from every offset.
    let more: Vec<u64> = (0..40)
        .map(|t| send(&log, batch(1000 + t, 2, 5)).unwrap().base_offset)
        .collect();
    assert_eq!(more[0], cut);
    for offset in (0..log.high_watermark()).step_by(7) {
        let r = log.read(offset, 1).unwrap();
        let first = Batches::new(r.batches).next().expect("a batch");
        let h = rill_protocol::batch::validate(&first).unwrap();
        assert!(h.base_offset <= offset && offset <= h.last_offset());
    }
    let expected = values(&log);
    drop(log);
    // Both kinds of restart see exactly that.
    for clean in [true, false] {
        let (log, report) = open(dir.path(), config(4096), clean);
        assert!(report.truncated.is_empty(), "{report:?}");
        assert_eq!(values(&log), expected);
        drop(log);
    }
}

#[test]
fn truncation_within_the_active_segment_forgets_the_producer_batches_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(1 << 20), true);
    send(&log, idem(3, 0, 0, 2)).unwrap();
    let second = send(&log, idem(3, 0, 2, 2)).unwrap();
    send(&log, batch(9, 1, 0)).unwrap();
    log.truncate_from(second.base_offset).unwrap();
    assert_eq!(log.high_watermark(), 2);
    // The cut batch is not remembered: sending it again stores it, at the cut.
    let again = send(&log, idem(3, 0, 2, 2)).unwrap();
    assert_eq!((again.base_offset, again.duplicate), (2, false));
    assert!(send(&log, idem(3, 0, 2, 2)).unwrap().duplicate);
    assert_eq!(values(&log), ["p3e0s0", "p3e0s1", "p3e0s2", "p3e0s3"]);
    // Truncating at the end changes nothing.
    log.truncate_from(log.high_watermark()).unwrap();
    assert_eq!(log.high_watermark(), 4);
}

/// Every batch read back by log index: `(log index, base offset)` for the whole log.
fn by_index(log: &PartitionLog) -> Vec<(u64, u64)> {
    let (mut next, end) = log.index_range();
    let mut out = Vec::new();
    while next < end {
        let got = log.read_indexed(next, 700).unwrap();
        assert!(
            !got.is_empty(),
            "index {next} below the end {end} is readable"
        );
        for (i, b) in got {
            assert_eq!(i, next, "consecutive indexes");
            let h = rill_protocol::batch::validate(&b).unwrap();
            assert_eq!(log.offset_of_index(i).unwrap(), Some(h.base_offset));
            out.push((i, h.base_offset));
            next += 1;
        }
    }
    out
}

#[test]
fn log_indexes_count_batches_across_rolls_restarts_cuts_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    // Batches of varying size, so offsets and indexes drift apart.
    let bases: Vec<u64> = (0..240u64)
        .map(|t| {
            send(&log, batch(t, 1 + (t % 5) as usize, 0))
                .unwrap()
                .base_offset
        })
        .collect();
    assert!(log.stats().segments >= 4);
    let expected: Vec<(u64, u64)> = bases
        .iter()
        .copied()
        .enumerate()
        .map(|(i, b)| (i as u64, b))
        .collect();
    assert_eq!(by_index(&log), expected);
    assert_eq!(log.index_range(), (0, 240));
    assert_eq!(
        log.offset_of_index(240).unwrap(),
        Some(log.high_watermark())
    );
    assert_eq!(log.offset_of_index(241).unwrap(), None);
    assert!(log.read_indexed(240, 100).unwrap().is_empty());
    drop(log);
    // Restarts: clean (indexes trusted), crash (tail rescanned), and with every index file gone.
    for (clean, wipe) in [(true, false), (false, false), (false, true)] {
        if wipe {
            for f in files_with(dir.path(), "index") {
                std::fs::remove_file(f).unwrap();
            }
        }
        let (log, _) = open(dir.path(), config(4096), clean);
        assert_eq!(by_index(&log), expected, "clean {clean} wipe {wipe}");
        drop(log);
    }
    let (log, _) = open(dir.path(), config(4096), true);
    // A cut at index 100 leaves indexes 0..100, and appends continue at 100.
    log.truncate_from(bases[100]).unwrap();
    assert_eq!(log.index_range(), (0, 100));
    let next = send(&log, batch(999, 2, 0)).unwrap().base_offset;
    assert_eq!(next, bases[100]);
    let mut after_cut = expected[..100].to_vec();
    after_cut.push((100, next));
    assert_eq!(by_index(&log), after_cut);
    // Retention: the oldest kept segment's first index survives a restart.
    let removed = log.delete_segments_before(bases[60]).unwrap();
    assert!(removed > 0);
    let (first, _) = log.index_range();
    assert!(first > 0);
    let kept = after_cut[first as usize..].to_vec();
    assert_eq!(by_index(&log), kept);
    drop(log);
    let (log, _) = open(dir.path(), config(4096), false);
    assert_eq!(by_index(&log), kept);
}

#[test]
fn raft_entries_carry_their_term_and_reads_stop_at_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), config(4096), true);
    log.make_replicated(0);
    let entry = |b: Bytes, i: u64, term: i32| log.append_entry(b, i, term).unwrap().wait_blocking();
    assert_eq!(entry(batch(1, 3, 0), 0, 7).unwrap().base_offset, 0);
    // The same idempotent batch twice is two Raft entries: the leader decided, nothing dedups.
    assert_eq!(entry(idem(5, 0, 0, 2), 1, 7).unwrap().base_offset, 3);
    assert_eq!(entry(idem(5, 0, 0, 2), 2, 8).unwrap().base_offset, 5);
    // An entry that does not follow the log is refused and changes nothing.
    assert!(matches!(
        entry(batch(2, 1, 0), 5, 8),
        Err(AppendError::Failed(_))
    ));
    assert_eq!(log.index_range(), (0, 3));
    // Stored with the term in the leader epoch; the CRC still holds (the epoch is outside it).
    let stored = log.read_indexed(0, 1 << 20).unwrap();
    let terms: Vec<i32> = stored
        .iter()
        .map(|(_, b)| rill_protocol::batch::validate(b).unwrap().leader_epoch)
        .collect();
    assert_eq!(terms, [7, 7, 8]);
    // Readers see only what is committed.
    assert!(log.read(0, 1 << 20).unwrap().batches.is_empty());
    log.set_high_watermark(5);
    let r = log.read(0, 1 << 20).unwrap();
    assert_eq!(r.high_watermark, 5);
    let bases: Vec<u64> = Batches::new(r.batches)
        .map(|b| rill_protocol::batch::validate(&b).unwrap().base_offset)
        .collect();
    assert_eq!(bases, [0, 3], "the batch at 5 is not committed yet");
    assert!(log.read(5, 1 << 20).unwrap().batches.is_empty());
}

#[test]
fn retention_leaves_a_replicated_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: 4096,
        ..config(4096)
    };
    let (log, _) = open(dir.path(), cfg, true);
    log.make_replicated(0);
    append_entries(&log, 200);
    let before = log.stats();
    assert!(before.segments >= 4);
    assert_eq!(log.enforce_retention(i64::MAX).unwrap(), 0);
    assert_eq!(log.stats().segments, before.segments);
    assert_eq!(
        log.index_range(),
        (0, 200),
        "every Raft entry is still there"
    );
}

#[test]
fn a_replicated_log_started_afresh_continues_at_its_new_start_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(4096);
    let (log, _) = open(dir.path(), cfg.clone(), true);
    log.make_replicated(0);
    append_entries(&log, 100);
    assert!(log.stats().segments > 2);
    // A snapshot up to index 499 (offset 2000 next) replaces everything.
    log.restart_at(2000, 500).unwrap();
    assert_eq!(log.index_range(), (500, 500));
    assert_eq!(log.offset_of_index(500).unwrap(), Some(2000));
    assert_eq!(log.stats().log_start_offset, 2000);
    assert_eq!(log.stats().segments, 1);
    // Entries follow the new start only.
    assert!(matches!(
        log.append_entry(batch(1, 1, 0), 100, 2)
            .unwrap()
            .wait_blocking(),
        Err(AppendError::Failed(_))
    ));
    log.close();
    // Empty, its start is known only from `log-start`: after a crash too.
    for clean in [true, false] {
        let (log, _) = open(dir.path(), cfg.clone(), clean);
        assert_eq!(log.index_range(), (500, 500), "clean {clean}");
        assert_eq!(log.offset_of_index(500).unwrap(), Some(2000));
        log.close();
    }
    let (log, _) = open(dir.path(), cfg.clone(), true);
    log.make_replicated(0);
    let ack = log
        .append_entry(batch(7, 2, 0), 500, 3)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(ack.base_offset, 2000);
    log.set_high_watermark(2002);
    assert_eq!(
        read_all(&log, 2000),
        [(2000, "7-0".into()), (2001, "7-1".into())]
    );
    drop(log);
    // Every index file gone: the first segment's index still starts at 500.
    for f in files_with(dir.path(), "index") {
        std::fs::remove_file(f).unwrap();
    }
    let (log, _) = open(dir.path(), cfg, false);
    assert_eq!(log.index_range(), (500, 501));
    assert_eq!(by_index(&log), [(500, 2000)]);
}

#[test]
fn retention_of_a_replicated_log_names_the_first_index_it_keeps_below_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: 4096,
        ..config(4096)
    };
    let (log, _) = open(dir.path(), cfg, true);
    log.make_replicated(0);
    append_entries(&log, 200);
    // Nothing committed: nothing may go.
    assert_eq!(log.retention_index(i64::MAX), None);
    log.set_high_watermark(600);
    let keep = log.retention_index(i64::MAX).expect("old segments expire");
    let (first, end) = log.index_range();
    assert!(first < keep && keep < end, "{first} < {keep} < {end}");
    // It is a segment's first index; deleting below its offset keeps exactly from there.
    let offset = log.offset_of_index(keep).unwrap().unwrap();
    assert!(log.delete_segments_before(offset).unwrap() > 0);
    assert_eq!(log.index_range().0, keep);
}

/// Raft entries 0..count of term 1, three records each, each awaited.
fn append_entries(log: &PartitionLog, count: u64) {
    for i in 0..count {
        log.append_entry(batch(i, 3, 0), i, 1)
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
}
