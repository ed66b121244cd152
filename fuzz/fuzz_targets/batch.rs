//! The record-batch validator, the at-rest check, both readers (owned records and borrowed
//! views) and the batch splitter, on arbitrary bytes; and the same bytes made into a batch a
//! liar would send (length, magic and CRC set right), so the layout checks are reached.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rill_protocol::batch::{self, Batches, RecordIter, ValidBatch, CRC_START, HEADER_LEN};

/// Whatever validates must read the same through both decoders, every record it claims.
fn check(bytes: &Bytes) {
    let stored = batch::check_stored(bytes);
    let Ok(header) = batch::validate(bytes) else {
        assert!(ValidBatch::new(bytes.clone()).is_err());
        return;
    };
    assert!(stored.is_ok(), "a validated batch failed the at-rest check");
    let owned: Vec<_> = RecordIter::new(bytes.clone())
        .expect("validated")
        .collect::<Result<_, _>>()
        .expect("a validated batch failed to iterate");
    let valid = ValidBatch::new(bytes.clone()).expect("validated");
    assert_eq!(owned.len(), header.records() as usize);
    assert_eq!(valid.records().count(), owned.len(), "the views lost records");
    for (view, record) in valid.records().zip(&owned) {
        assert_eq!(&view.to_owned(valid.records_bytes()), record);
        assert_eq!(view.headers().count(), view.header_count());
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    check(&bytes);
    for b in Batches::new(bytes) {
        let _ = RecordIter::new(b).map(|it| it.count());
    }
    // Resealed: the header's length, magic and CRC made consistent with the bytes.
    if data.len() >= HEADER_LEN {
        let mut v = data.to_vec();
        let len = u32::try_from(v.len() - 12).unwrap_or(u32::MAX);
        v[8..12].copy_from_slice(&len.to_be_bytes());
        v[16] = 2;
        // Codec bits as the input has them (0-4 are codecs): the decompressors get garbage too.
        v[21] = 0;
        let crc = crc32c::crc32c(&v[CRC_START..]);
        v[17..21].copy_from_slice(&crc.to_be_bytes());
        check(&Bytes::from(v));
    }
});
