//! Segment recovery: arbitrary bytes appended after a valid batch, as if torn or corrupted,
//! must be cut at the first bad batch on open, keeping every valid one before it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rill_broker::log::{LogConfig, PartitionLog};
use rill_protocol::FsyncPolicy;
use rill_protocol::batch::BatchBuilder;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = BatchBuilder::with_capacity(64);
    b.push(Some(b"k"), b"valid", &[], 1);
    let mut file = b.finish().to_vec();
    file.extend_from_slice(data);
    std::fs::write(dir.path().join("00000000000000000000.log"), &file).expect("write segment");
    let config = LogConfig { segment_bytes: 1 << 20, index_interval_bytes: 64, fsync: FsyncPolicy::Interval { ms: 1000 }, retention_ms: 0, retention_bytes: 0 };
    let (log, _report) = PartitionLog::open(dir.path(), "fuzz-0".into(), config, false).expect("recovery never fails on bad data");
    let end = log.high_watermark();
    assert!(end >= 1, "the valid batch was lost");
    // Everything kept must read back as valid batches.
    let mut offset = 0;
    while offset < end {
        let r = log.read(offset, 1 << 16).expect("recovered data reads");
        let mut next = offset;
        for batch in rill_protocol::batch::Batches::new(r.batches) {
            let h = rill_protocol::batch::validate(&batch).expect("only valid batches are kept");
            next = h.last_offset() + 1;
        }
        assert!(next > offset, "no progress at {offset}");
        offset = next;
    }
    log.close();
});
