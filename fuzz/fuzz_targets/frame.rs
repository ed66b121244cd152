//! Frame decoders (requests and responses) on arbitrary bytes: never panic, never over-read.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rill_protocol::frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode_request(&mut buf, 1 << 16) {
        let _ = frame::split_body(f.body);
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode_response(&mut buf, 1 << 16) {
        if let Ok(body) = f.result {
            let _ = frame::split_body(body);
        }
    }
});
