//! Framing: how requests and responses are delimited on a byte stream.
//!
//! ```text
//! request  = len:u32 | api_key:u16 | api_version:u16 | correlation_id:u32 | body
//! response = len:u32 | correlation_id:u32 | error_code:u16 | body-or-message
//! body     = control_len:u32 | control (codec) | payload (raw record batches, may be empty)
//! ```
//!
//! `len` counts the bytes after itself. All integers are big-endian. An error response
//! (`error_code != 0`) carries a UTF-8 message instead of a body. Decoders take a `BytesMut`
//! that holds whatever has arrived so far: a partial frame is `Ok(None)` and nothing is consumed;
//! a whole frame is split off without copying. The length is checked against the caller's
//! maximum before anything is allocated for it.

use crate::codec;
use crate::cursor::Cursor;
use crate::error::{DecodeError, ErrorCode};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;

pub const LEN_PREFIX: usize = 4;
pub const REQUEST_HEADER_LEN: usize = 8;
pub const RESPONSE_HEADER_LEN: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
}

/// A whole request frame, not yet interpreted beyond its header.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    pub header: RequestHeader,
    pub body: Bytes,
}

/// A whole response frame.
#[derive(Debug, Clone)]
pub struct ResponseFrame {
    pub correlation_id: u32,
    pub result: Result<Bytes, WireError>,
}

/// An error response as received: the code (unknown codes from a newer broker map to
/// [`ErrorCode::Unknown`], keeping the raw number) and the broker's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub raw_code: u16,
    pub message: String,
}

/// Framing failures. After one of these the stream's frame boundaries are lost, so the
/// connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        len: usize,
        max: usize,
        header: Option<RequestHeader>,
    },
    #[error("frame of {len} bytes is shorter than its {min}-byte header")]
    TooShort { len: usize, min: usize },
}

fn frame_len(buf: &[u8], min: usize, max: usize) -> Result<Option<usize>, FrameError> {
    let mut c = Cursor::new(buf);
    let Ok(len) = c.u32("frame length") else {
        return Ok(None);
    };
    let len = len as usize;
    if len < min {
        return Err(FrameError::TooShort { len, min });
    }
    if len > max {
        let header = peek_request_header(buf.get(LEN_PREFIX..).unwrap_or_default());
        return Err(FrameError::TooLarge { len, max, header });
    }
    if c.remaining() < len {
        return Ok(None);
    }
    Ok(Some(len))
}

fn peek_request_header(buf: &[u8]) -> Option<RequestHeader> {
    let mut c = Cursor::new(buf);
    Some(RequestHeader {
        api_key: c.u16("api key").ok()?,
        api_version: c.u16("api version").ok()?,
        correlation_id: c.u32("correlation id").ok()?,
    })
}

/// Makes room in `buf` for the whole frame it has begun to receive (its length was checked
/// against the maximum already), so a large frame is read into one allocation rather than a
/// buffer grown and copied several times; before the length has arrived, room for a header.
fn reserve_frame(buf: &mut BytesMut, header: usize) {
    let whole = Cursor::new(buf)
        .u32("frame length")
        .map_or(header, |len| len as usize)
        .saturating_add(LEN_PREFIX);
    buf.reserve(whole.saturating_sub(buf.len()));
}

/// Splits one request frame off the front of `buf`, if a whole one has arrived.
pub fn decode_request(
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<RequestFrame>, FrameError> {
    let Some(len) = frame_len(buf, REQUEST_HEADER_LEN, max_frame)? else {
        reserve_frame(buf, REQUEST_HEADER_LEN);
        return Ok(None);
    };
    buf.advance(LEN_PREFIX);
    let mut frame = buf.split_to(len).freeze();
    let header = RequestHeader {
        api_key: frame.get_u16(),
        api_version: frame.get_u16(),
        correlation_id: frame.get_u32(),
    };
    Ok(Some(RequestFrame {
        header,
        body: frame,
    }))
}

/// Splits one response frame off the front of `buf`, if a whole one has arrived.
pub fn decode_response(
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<ResponseFrame>, FrameError> {
    let Some(len) = frame_len(buf, RESPONSE_HEADER_LEN, max_frame)? else {
        reserve_frame(buf, RESPONSE_HEADER_LEN);
        return Ok(None);
    };
    buf.advance(LEN_PREFIX);
    let mut frame = buf.split_to(len).freeze();
    let correlation_id = frame.get_u32();
    let raw_code = frame.get_u16();
    let result = if raw_code == 0 {
        Ok(frame)
    } else {
        Err(WireError {
            code: ErrorCode::from_u16(raw_code).unwrap_or(ErrorCode::Unknown),
            raw_code,
            message: String::from_utf8_lossy(&frame).into_owned(),
        })
    };
    Ok(Some(ResponseFrame {
        correlation_id,
        result,
    }))
}

/// A frame ready to write: `head` (length, header, control) then `payload`, so record batches
/// are written from the buffer they already live in instead of being copied into the head.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub head: Bytes,
    pub payload: Bytes,
}

impl OutFrame {
    pub fn len(&self) -> usize {
        self.head.len().saturating_add(self.payload.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn finish(mut head: BytesMut, payload: Bytes) -> OutFrame {
    let len = head
        .len()
        .saturating_sub(LEN_PREFIX)
        .saturating_add(payload.len());
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    if let Some(prefix) = head.get_mut(..LEN_PREFIX) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
    OutFrame {
        head: head.freeze(),
        payload,
    }
}

fn put_body<T: Serialize>(head: &mut BytesMut, control: &T) {
    let at = head.len();
    head.put_u32(0);
    codec::encode(control, head);
    let control_len = head.len().saturating_sub(at).saturating_sub(4);
    if let Some(slot) = head.get_mut(at..at.saturating_add(4)) {
        slot.copy_from_slice(&u32::try_from(control_len).unwrap_or(u32::MAX).to_be_bytes());
    }
}

pub fn encode_request<T: Serialize>(
    header: RequestHeader,
    control: &T,
    payload: Bytes,
) -> OutFrame {
    let mut head = BytesMut::with_capacity(64);
    head.put_u32(0);
    head.put_u16(header.api_key);
    head.put_u16(header.api_version);
    head.put_u32(header.correlation_id);
    put_body(&mut head, control);
    finish(head, payload)
}

pub fn encode_response<T: Serialize>(correlation_id: u32, control: &T, payload: Bytes) -> OutFrame {
    let mut head = BytesMut::with_capacity(64);
    head.put_u32(0);
    head.put_u32(correlation_id);
    head.put_u16(0);
    put_body(&mut head, control);
    finish(head, payload)
}

pub fn encode_error_response(correlation_id: u32, code: ErrorCode, message: &str) -> OutFrame {
    let mut head = BytesMut::with_capacity(16usize.saturating_add(message.len()));
    head.put_u32(0);
    head.put_u32(correlation_id);
    head.put_u16(code.as_u16());
    head.put_slice(message.as_bytes());
    finish(head, Bytes::new())
}

/// Splits a body into its control part and its raw payload, without copying.
pub fn split_body(mut body: Bytes) -> Result<(Bytes, Bytes), DecodeError> {
    let mut c = Cursor::new(&body);
    let control_len = c.u32("control length")? as usize;
    if c.remaining() < control_len {
        return Err(DecodeError::Truncated {
            what: "control body",
            needed: control_len,
            remaining: c.remaining(),
        });
    }
    body.advance(4);
    let control = body.split_to(control_len);
    Ok((control, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{FetchRequest, FetchResponse};
    use crate::topic::TopicName;
    use proptest::prelude::*;

    fn bytes_of(f: &OutFrame) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&f.head);
        b.extend_from_slice(&f.payload);
        b
    }

    #[test]
    fn request_round_trips_and_waits_for_whole_frames() {
        let req = FetchRequest {
            topic: TopicName::new("t").unwrap(),
            partition: 3,
            offset: 42,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait_ms: 500,
            max_records: 0,
        };
        let header = RequestHeader {
            api_key: 2,
            api_version: 1,
            correlation_id: 7,
        };
        let out = encode_request(header, &req, Bytes::from_static(b"payload"));
        let all = bytes_of(&out);
        // Feed one byte at a time: nothing comes out until the last byte.
        let mut buf = BytesMut::new();
        for (i, b) in all.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode_request(&mut buf, 1 << 20).unwrap();
            if i + 1 < all.len() {
                assert!(got.is_none());
            } else {
                let frame = got.expect("whole frame");
                assert_eq!(frame.header, header);
                let (control, payload) = split_body(frame.body).unwrap();
                assert_eq!(
                    codec::decode::<FetchRequest>(&control, "fetch").unwrap(),
                    req
                );
                assert_eq!(&payload[..], b"payload");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn responses_carry_results_and_errors() {
        let ok = encode_response(
            9,
            &FetchResponse {
                high_watermark: 5,
                log_start_offset: 0,
            },
            Bytes::new(),
        );
        let err = encode_error_response(10, ErrorCode::UnknownTopic, "unknown topic 'x'");
        let mut buf = bytes_of(&ok);
        buf.extend_from_slice(&bytes_of(&err));
        let first = decode_response(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(first.correlation_id, 9);
        let (control, _) = split_body(first.result.unwrap()).unwrap();
        assert_eq!(
            codec::decode::<FetchResponse>(&control, "f")
                .unwrap()
                .high_watermark,
            5
        );
        let second = decode_response(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(second.correlation_id, 10);
        let e = second.result.unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownTopic);
        assert_eq!(e.message, "unknown topic 'x'");
    }

    #[test]
    fn oversize_frame_is_refused_before_allocation_with_its_header() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        buf.put_u16(1);
        buf.put_u16(0);
        buf.put_u32(77);
        let err = decode_request(&mut buf, 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                header: Some(RequestHeader {
                    correlation_id: 77,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn short_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert!(matches!(
            decode_request(&mut buf, 1024),
            Err(FrameError::TooShort { len: 3, .. })
        ));
    }

    #[test]
    fn a_frame_begun_gets_room_for_all_of_it_at_once() {
        let len = 1u32 << 20;
        for request in [true, false] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let got = if request {
                decode_request(&mut buf, 2 << 20).map(|f| f.is_some())
            } else {
                decode_response(&mut buf, 2 << 20).map(|f| f.is_some())
            };
            assert!(!got.unwrap());
            assert!(buf.capacity() >= LEN_PREFIX + len as usize);
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes: Vec<u8>) {
            let mut a = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = decode_request(&mut a, 4096) {
                let _ = split_body(f.body);
            }
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = decode_response(&mut b, 4096) {
                if let Ok(body) = f.result { let _ = split_body(body); }
            }
        }
    }
}
