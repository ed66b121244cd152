//! A bounds-checked reader over a byte slice.
//!
//! Every decoder in this crate reads through a [`Cursor`]; it is the one place that slices input,
//! and each read either returns the bytes asked for or a [`DecodeError`] naming what was being
//! read. Integers in frames and record batches are big-endian (Kafka's convention); varints are
//! zig-zag encoded as in Kafka's record format.

use crate::error::DecodeError;

/// Reads fields from a byte slice, failing cleanly at the end of input.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes; `what` names the field for the error message.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                what,
                needed: n,
                remaining: self.remaining(),
            })?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            what,
            needed: n,
            remaining: self.remaining(),
        })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }
    pub fn i8(&mut self, what: &'static str) -> Result<i8, DecodeError> {
        Ok(i8::from_be_bytes(self.array(what)?))
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    pub fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A zig-zag varint of at most 5 bytes (Kafka's `varint`).
    pub fn varint(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let raw = self.unsigned_varint(5, what)?;
        let raw = u32::try_from(raw).map_err(|_| DecodeError::Invalid {
            what,
            reason: "varint overflows 32 bits",
        })?;
        Ok(((raw >> 1) as i32) ^ ((raw & 1) as i32).wrapping_neg())
    }

    /// A zig-zag varint of at most 10 bytes (Kafka's `varlong`).
    pub fn varlong(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let raw = self.unsigned_varint(10, what)?;
        Ok(((raw >> 1) as i64) ^ ((raw & 1) as i64).wrapping_neg())
    }

    fn unsigned_varint(&mut self, max_len: u32, what: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..max_len {
            let byte = self.u8(what)?;
            let shift = i.wrapping_mul(7);
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Invalid {
                    what,
                    reason: "varint overflows 64 bits",
                });
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid {
            what,
            reason: "varint too long",
        })
    }
}

/// Appends a zig-zag varint (Kafka's `varint`).
pub fn put_varint(out: &mut impl bytes::BufMut, v: i32) {
    put_unsigned_varint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends a zig-zag varlong (Kafka's `varlong`).
pub fn put_varlong(out: &mut impl bytes::BufMut, v: i64) {
    put_unsigned_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_unsigned_varint(out: &mut impl bytes::BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Encoded length of a zig-zag varint.
pub fn varint_len(v: i32) -> usize {
    unsigned_varint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Encoded length of a zig-zag varlong.
pub fn varlong_len(v: i64) -> usize {
    unsigned_varint_len(((v << 1) ^ (v >> 63)) as u64)
}

fn unsigned_varint_len(v: u64) -> usize {
    let bits = 64u32.saturating_sub(v.leading_zeros()).max(1);
    bits.div_ceil(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v: i32) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(c.varint("v").unwrap(), v);
            prop_assert!(c.is_empty());
        }

        #[test]
        fn varlong_round_trips(v: i64) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(c.varlong("v").unwrap(), v);
        }

        #[test]
        fn cursor_never_panics(bytes: Vec<u8>) {
            let mut c = Cursor::new(&bytes);
            let _ = c.varlong("a");
            let _ = c.varint("b");
            let _ = c.i64("c");
            let _ = c.take(usize::MAX, "d");
        }
    }

    #[test]
    fn take_past_end_names_the_field() {
        let mut c = Cursor::new(&[1, 2, 3]);
        let err = c.u32("length").unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Truncated {
                what: "length",
                needed: 4,
                remaining: 3
            }
        ));
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let mut c = Cursor::new(&[0xff; 11]);
        assert!(c.varlong("x").is_err());
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(c.varint("x").is_err(), "5th byte carries bits beyond 32");
    }
}
