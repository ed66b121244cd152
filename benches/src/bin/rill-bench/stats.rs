//! Latency percentiles, payload layout and the order-independent checksum.

use std::time::Duration;

/// Payload: sequence number (u64 BE), send time in ns since the run's start (u64 BE), padding.
pub const HEADER: usize = 16;

pub fn payload(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(HEADER)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    v
}

/// Rewrites the sequence number and send time of a payload made by [`payload`].
pub fn stamp(value: &mut [u8], seq: u64, sent_ns: u64) {
    value[..8].copy_from_slice(&seq.to_be_bytes());
    value[8..16].copy_from_slice(&sent_ns.to_be_bytes());
}

pub fn seq_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

pub fn sent_ns_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(8..16)?.try_into().ok()?))
}

/// An order-independent fingerprint of a set of sequence numbers: a missing, extra or
/// duplicated message changes it.
pub fn mix(seq: u64) -> u64 {
    let mut x = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub samples: usize,
}

pub fn percentiles(mut micros: Vec<u64>) -> Option<Percentiles> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let at = |q: f64| {
        Duration::from_micros(micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)])
    };
    Some(Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
        samples: micros.len(),
    })
}
