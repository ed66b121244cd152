//! The record-batch validator, the at-rest check, the reader and the batch splitter, on
//! arbitrary bytes.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rill_protocol::batch::{self, Batches, RecordIter};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let stored = batch::check_stored(data);
    if batch::validate(data).is_ok() {
        assert!(stored.is_ok(), "a validated batch failed the at-rest check");
        // Whatever validates must also iterate cleanly.
        let records: Vec<_> = RecordIter::new(bytes.clone()).expect("validated").collect();
        assert!(
            records.iter().all(|r| r.is_ok()),
            "a validated batch failed to iterate"
        );
    }
    for b in Batches::new(bytes) {
        let _ = RecordIter::new(b).map(|it| it.count());
    }
});
