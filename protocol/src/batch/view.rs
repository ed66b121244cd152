//! Reading a batch's records without allocating: a batch is validated once ([`ValidBatch`]),
//! then its records are yielded as [`RecordView`]s borrowing from it.
//!
//! The owned [`super::Record`] (its own `Bytes` handles and header `Vec`) is built from a view
//! when wanted; both decoders walk the same validated bytes, so they yield the same records.

use super::{BatchHeader, Header, Record};
use crate::error::DecodeError;
use bytes::Bytes;

/// A batch that passed [`super::validate`] (CRC, layout of every record): its records are read
/// without checking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBatch {
    bytes: Bytes,
    header: BatchHeader,
    /// The records area: a slice of `bytes`, or the decompressed records of a compressed batch.
    records: Bytes,
}

impl ValidBatch {
    /// Validates `bytes` (exactly one batch).
    pub fn new(bytes: Bytes) -> Result<Self, DecodeError> {
        let (header, records) = super::validate_records(&bytes)?;
        Ok(ValidBatch {
            bytes,
            header,
            records,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The records area and the header.
    pub(super) fn into_parts(self) -> (Bytes, BatchHeader) {
        (self.records, self.header)
    }

    /// The whole batch, as received (compressed, if it was sent so).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The records area the views borrow from (decompressed): what [`RecordView::to_owned`]
    /// takes.
    pub fn records_bytes(&self) -> &Bytes {
        &self.records
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.header.records() as usize
    }

    /// Never true for a valid batch (it holds at least one record).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records, borrowing from the batch.
    pub fn records(&self) -> RecordViews<'_> {
        Self::views_of(&self.records, &self.header)
    }

    /// Views over a records area (after the header, decompressed).
    pub(super) fn views_of<'a>(records: &'a [u8], header: &BatchHeader) -> RecordViews<'a> {
        RecordViews {
            records,
            pos: 0,
            left: header.records(),
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
        }
    }

    /// The records as owned [`Record`]s sharing the batch's memory.
    pub fn owned(&self) -> impl Iterator<Item = Record> + '_ {
        self.records().map(|r| r.to_owned(&self.records))
    }
}

/// One record of a [`ValidBatch`]: key, value and headers borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// A null value (a Kafka tombstone) reads as empty.
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u32,
}

impl<'a> RecordView<'a> {
    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }

    /// The headers, parsed as they are iterated (nothing is parsed for a record whose headers
    /// are never asked for).
    pub fn headers(&self) -> HeaderViews<'a> {
        HeaderViews {
            buf: self.headers,
            pos: 0,
            left: self.header_count,
        }
    }

    /// The owned form, its fields sliced from `batch` (the batch this view reads) without
    /// copying.
    pub fn to_owned(&self, batch: &Bytes) -> Record {
        Record {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(|k| batch.slice_ref(k)),
            value: if self.value.is_empty() {
                Bytes::new()
            } else {
                batch.slice_ref(self.value)
            },
            headers: self
                .headers()
                .map(|(key, value)| Header {
                    key: key.to_owned(),
                    value: value.map(|v| batch.slice_ref(v)),
                })
                .collect(),
        }
    }
}

/// Iterates the records of a [`ValidBatch`].
#[derive(Debug, Clone)]
pub struct RecordViews<'a> {
    records: &'a [u8],
    pos: usize,
    left: u32,
    base_offset: u64,
    base_timestamp: i64,
}

impl<'a> Iterator for RecordViews<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        self.left = self.left.checked_sub(1)?;
        // The batch was validated: these reads cannot fail; if they did, iteration ends.
        let r = read_record(
            self.records,
            &mut self.pos,
            self.base_offset,
            self.base_timestamp,
        );
        if r.is_none() {
            self.left = 0;
        }
        r
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for RecordViews<'_> {}

/// The record at `pos` of a validated batch's records area (`buf`); moves `pos` past it.
#[inline]
pub(super) fn read_record<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    base_offset: u64,
    base_timestamp: i64,
) -> Option<RecordView<'a>> {
    let len = usize::try_from(zigzag32(uvarint(buf, pos)?)).ok()?;
    let end = pos.checked_add(len)?;
    let body = buf.get(*pos..end)?;
    *pos = end;
    let mut p = 1; // attributes
    let timestamp_delta = zigzag64(uvarint(body, &mut p)?);
    let offset_delta = zigzag32(uvarint(body, &mut p)?);
    let key = bytes_field(body, &mut p)?;
    let value = bytes_field(body, &mut p)?.unwrap_or_default();
    let header_count = u32::try_from(zigzag32(uvarint(body, &mut p)?)).ok()?;
    Some(RecordView {
        offset: base_offset.wrapping_add(u64::from(offset_delta as u32)),
        timestamp: base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers: body.get(p..)?,
        header_count,
    })
}

/// Iterates a record's headers: `(key, value)`, a null value as `None`.
#[derive(Debug, Clone)]
pub struct HeaderViews<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Iterator for HeaderViews<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        let header = (|| {
            let key = bytes_field(self.buf, &mut self.pos)??;
            let value = bytes_field(self.buf, &mut self.pos)?;
            // Validation checked that the key is UTF-8.
            Some((std::str::from_utf8(key).ok()?, value))
        })();
        if header.is_none() {
            self.left = 0;
        }
        header
    }
}

/// Whether `records` (a batch's records area) holds exactly `count` well-formed records
/// numbered 0, 1, 2, ...: the layout [`super::validate`] requires, checked in one tight pass.
/// Conservative: `false` may also mean "unusual" (a varint longer than needed), and the
/// caller then decides with the full check, which also names the fault.
pub(super) fn well_formed(records: &[u8], count: i32) -> bool {
    let mut pos = 0usize;
    for i in 0..count {
        if well_formed_record(records, &mut pos, i).is_none() {
            return false;
        }
    }
    pos == records.len()
}

#[inline(always)]
fn well_formed_record(buf: &[u8], pos: &mut usize, offset_delta: i32) -> Option<()> {
    let len = usize::try_from(varint32(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let body = buf.get(*pos..end)?;
    *pos = end;
    let mut p = 1usize; // attributes
    body.first()?;
    // The timestamp delta: at most 9 bytes here (63 bits), anything longer goes the long way.
    let ts_end = body.get(p..)?.iter().take(9).position(|b| *b < 0x80)?;
    p = p.checked_add(ts_end)?.checked_add(1)?;
    if varint32(body, &mut p)? != offset_delta {
        return None;
    }
    skip_field(body, &mut p)?; // key
    skip_field(body, &mut p)?; // value
    let headers = varint32(body, &mut p)?;
    if headers < 0 {
        return None;
    }
    for _ in 0..headers {
        let key = bytes_field(body, &mut p)??;
        std::str::from_utf8(key).ok()?;
        skip_field(body, &mut p)?;
    }
    (p == body.len()).then_some(())
}

/// Skips a length-prefixed field (length -1: null); a length below -1 is malformed.
#[inline(always)]
fn skip_field(buf: &[u8], pos: &mut usize) -> Option<()> {
    let n = varint32(buf, pos)?;
    if n >= 0 {
        *pos = pos
            .checked_add(n as usize)
            .filter(|end| *end <= buf.len())?;
    } else if n < -1 {
        return None;
    }
    Some(())
}

/// A zig-zag varint of at most 5 bytes that fits 32 bits, as [`crate::cursor::Cursor::varint`]
/// accepts.
#[inline(always)]
fn varint32(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let start = *pos;
    let raw = uvarint(buf, pos)?;
    if pos.checked_sub(start)? > 5 {
        return None;
    }
    Some(zigzag32(u64::from(u32::try_from(raw).ok()?)))
}

/// A length-prefixed field: `Some(None)` for a null one.
#[inline(always)]
fn bytes_field<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let n = zigzag32(uvarint(buf, pos)?);
    if n < 0 {
        return Some(None);
    }
    let end = pos.checked_add(n as usize)?;
    let field = buf.get(*pos..end)?;
    *pos = end;
    Some(Some(field))
}

/// An unsigned varint; one and two bytes (every length up to 8 KiB) take the inlined path.
#[inline(always)]
fn uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos = pos.checked_add(1)?;
        return Some(u64::from(first));
    }
    let second = *buf.get(pos.checked_add(1)?)?;
    if second < 0x80 {
        *pos = pos.checked_add(2)?;
        return Some(u64::from(first & 0x7f) | u64::from(second) << 7);
    }
    uvarint_long(buf, pos)
}

#[inline(never)]
fn uvarint_long(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos = pos.checked_add(1)?;
        value |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b < 0x80 {
            return Some(value);
        }
        shift = shift.checked_add(7).filter(|s| *s < 64)?;
    }
}

#[inline]
fn zigzag32(raw: u64) -> i32 {
    let raw = raw as u32;
    ((raw >> 1) as i32) ^ ((raw & 1) as i32).wrapping_neg()
}

#[inline]
fn zigzag64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ ((raw & 1) as i64).wrapping_neg()
}
