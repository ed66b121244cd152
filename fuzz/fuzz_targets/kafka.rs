//! The Kafka listener's framing and request decoding on arbitrary bytes: never panic (a panic
//! inside the kafka-protocol crate would be caught by `wire::decode` and reported as "the
//! decoder failed", which this target treats as a failure too). The first two bytes pick a
//! served API and a version within its range, so bodies are reached, not only headers.
#![no_main]
use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rill_broker::kafka::wire::{self, Request, WireError};

fuzz_target!(|data: &[u8]| {
    // Framing: whatever the length prefix says.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::split_frame(&mut buf, 1 << 16) {
        check(wire::decode(frame));
    }
    if data.len() < 2 {
        return;
    }
    let (api, min, max) = wire::SUPPORTED[usize::from(data[0]) % wire::SUPPORTED.len()];
    let span = u8::try_from(max - min + 1).unwrap_or(1);
    let version = min + i16::from(data[1] % span);
    let mut frame = BytesMut::new();
    frame.put_i16(api as i16);
    frame.put_i16(version);
    frame.put_i32(1);
    frame.put_slice(&data[2..]);
    check(wire::decode(Bytes::from(frame)));
});

fn check(decoded: Result<Request, WireError>) {
    if let Err(WireError::Malformed { reason, .. }) = &decoded {
        assert!(reason != "the decoder failed", "the decoder panicked");
    }
}
