//! Every request decoder: the first two bytes pick the api key, the rest is the frame body.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rill_protocol::frame::{RequestFrame, RequestHeader};
use rill_protocol::request::Request;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let api_key = u16::from(data[0] % 24);
    let api_version = u16::from(data[1] % 2);
    let frame = RequestFrame {
        header: RequestHeader {
            api_key,
            api_version,
            correlation_id: 0,
        },
        body: Bytes::copy_from_slice(&data[2..]),
    };
    let _ = Request::decode(frame);
});
