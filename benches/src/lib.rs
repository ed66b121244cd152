//! Shared inputs for the criterion benches in `benches/`. Run them with `cargo bench -p rill-benches`.

use bytes::Bytes;
use rill_protocol::batch::BatchBuilder;

/// A batch of `records` records with `value_len`-byte values and 8-byte keys.
pub fn batch(records: usize, value_len: usize) -> Bytes {
    let value = vec![0xabu8; value_len];
    let mut b = BatchBuilder::with_capacity(records * (value_len + 24));
    for i in 0..records {
        b.push(
            Some(&(i as u64).to_be_bytes()),
            &value,
            &[],
            1_700_000_000_000 + i as i64,
        );
    }
    b.finish()
}
