//! Segment recovery. The first input byte picks what is damaged:
//! - even: arbitrary bytes appended after valid batches, as if torn or corrupted, opened
//!   uncleanly: recovery must cut at the first bad batch and keep every valid one before it;
//! - odd: arbitrary `.index` and `.timeindex` files (and an idempotent-producer snapshot)
//!   beside a valid segment, opened cleanly: they must be refused or be consistent, and
//!   nothing invalid may be served.
//!
//! Either way every record read back passes full validation, in offset order.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rill_broker::log::{LogConfig, PartitionLog};
use rill_protocol::FsyncPolicy;
use rill_protocol::batch::BatchBuilder;

const VALID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = Vec::new();
    for i in 0..VALID {
        let mut b = BatchBuilder::with_capacity(64);
        b.push(Some(b"k"), format!("valid-{i}").as_bytes(), &[], 1);
        let mut batch = b.finish().to_vec();
        batch[..8].copy_from_slice(&i.to_be_bytes());
        file.extend_from_slice(&batch);
    }
    let log_path = dir.path().join("00000000000000000000.log");
    let clean = mode % 2 == 1;
    if clean {
        let split = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
        let (index, times) = rest.split_at(split);
        std::fs::write(log_path.with_extension("index"), index).expect("write index");
        std::fs::write(log_path.with_extension("timeindex"), times).expect("write timeindex");
        // The same bytes as an idempotent-producer snapshot: refused or used, never a failure.
        std::fs::write(dir.path().join("00000000000000000003.producers"), times)
            .expect("write producer snapshot");
    } else {
        file.extend_from_slice(rest);
    }
    std::fs::write(&log_path, &file).expect("write segment");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Interval { ms: 1000 },
        retention_ms: 0,
        retention_bytes: 0,
        producer_expiration_ms: 86_400_000,
    };
    let (log, _report) = PartitionLog::open(dir.path(), "fuzz-0".into(), config, clean)
        .expect("recovery never fails on bad data");
    let end = log.high_watermark();
    assert!(end >= VALID, "valid batches were lost: end {end}");
    // Everything kept must read back as valid batches, from every offset.
    for start in 0..end {
        let mut offset = start;
        while offset < end {
            let r = match log.read(offset, 1 << 16) {
                Ok(r) => r,
                // An index forged with a matching CRC but wrong positions can only make reads
                // fail (the reader checks every batch it serves); a scanned log must read.
                Err(e) if clean => {
                    let _ = e;
                    break;
                }
                Err(e) => panic!("recovered data does not read at {offset}: {e}"),
            };
            let mut next = offset;
            for batch in rill_protocol::batch::Batches::new(r.batches) {
                let h =
                    rill_protocol::batch::validate(&batch).expect("only valid batches are kept");
                assert!(
                    h.base_offset <= next.max(offset),
                    "a gap before {}",
                    h.base_offset
                );
                next = h.last_offset() + 1;
            }
            assert!(next > offset, "no progress at {offset}");
            offset = next;
        }
    }
    log.close();
});
