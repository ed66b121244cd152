//! Reading the records inside a batch.

use super::{BatchHeader, HEADER_LEN};
use crate::cursor::Cursor;
use crate::error::DecodeError;
use bytes::Bytes;

/// One record, its key, value and header values sliced from the batch without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    /// A null value (a Kafka tombstone) reads as empty.
    pub value: Bytes,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// The fields of a record as positions, from a pass that allocates nothing.
pub(super) struct Skimmed {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<(usize, usize)>,
    pub value: Option<(usize, usize)>,
    pub headers_at: usize,
    pub header_count: i32,
    pub end: usize,
}

fn length(c: &mut Cursor<'_>, what: &'static str) -> Result<Option<usize>, DecodeError> {
    let n = c.varint(what)?;
    if n < -1 {
        return Err(DecodeError::Invalid {
            what,
            reason: "negative length",
        });
    }
    Ok(usize::try_from(n).ok())
}

fn field(c: &mut Cursor<'_>, what: &'static str) -> Result<Option<(usize, usize)>, DecodeError> {
    match length(c, what)? {
        None => Ok(None),
        Some(n) => {
            let at = c.position();
            c.take(n, what)?;
            Ok(Some((at, n)))
        }
    }
}

/// Walks one record at the cursor, checking its layout against its declared length.
pub(super) fn skim(c: &mut Cursor<'_>) -> Result<Skimmed, DecodeError> {
    let len = length(c, "record length")?.ok_or(DecodeError::Invalid {
        what: "record length",
        reason: "null",
    })?;
    let start = c.position();
    let body = c.take(len, "record")?;
    let mut r = Cursor::new(body);
    r.i8("record attributes")?;
    let timestamp_delta = r.varlong("timestamp delta")?;
    let offset_delta = r.varint("offset delta")?;
    let key = field(&mut r, "record key")?;
    let value = field(&mut r, "record value")?;
    let header_count = r.varint("header count")?;
    if header_count < 0 {
        return Err(DecodeError::Invalid {
            what: "header count",
            reason: "negative",
        });
    }
    let headers_at = r.position();
    for _ in 0..header_count {
        let (at, n) = field(&mut r, "header key")?.ok_or(DecodeError::Invalid {
            what: "header key",
            reason: "null",
        })?;
        let key = body.get(at..at.saturating_add(n)).unwrap_or_default();
        if std::str::from_utf8(key).is_err() {
            return Err(DecodeError::Invalid {
                what: "header key",
                reason: "not UTF-8",
            });
        }
        field(&mut r, "header value")?;
    }
    if !r.is_empty() {
        return Err(DecodeError::Invalid {
            what: "record",
            reason: "bytes after the last header",
        });
    }
    let shift = |f: Option<(usize, usize)>| f.map(|(at, n)| (at.saturating_add(start), n));
    Ok(Skimmed {
        offset_delta,
        timestamp_delta,
        key: shift(key),
        value: shift(value),
        headers_at: headers_at.saturating_add(start),
        header_count,
        end: c.position(),
    })
}

/// Iterates over the records of one batch (held as `Bytes`, so records share its memory).
#[derive(Debug)]
pub struct RecordIter {
    batch: Bytes,
    header: BatchHeader,
    /// Position within the records area.
    pos: usize,
    left: i32,
}

impl RecordIter {
    /// Validates `batch` (see [`super::validate`]) and iterates its records.
    pub fn new(batch: Bytes) -> Result<Self, DecodeError> {
        let header = super::validate(&batch)?;
        Ok(RecordIter {
            batch,
            header,
            pos: 0,
            left: header.record_count,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn next_record(&mut self) -> Result<Record, DecodeError> {
        let records = self.batch.slice(HEADER_LEN.min(self.batch.len())..);
        let mut c = Cursor::new(&records);
        c.take(self.pos, "records")?;
        let s = skim(&mut c)?;
        self.pos = s.end;
        let slice =
            |f: Option<(usize, usize)>| f.map(|(at, n)| records.slice(at..at.saturating_add(n)));
        let mut headers = Vec::with_capacity(s.header_count as usize);
        let mut h = Cursor::new(&records);
        h.take(s.headers_at, "headers")?;
        for _ in 0..s.header_count {
            let key = slice(field(&mut h, "header key")?).unwrap_or_default();
            let value = slice(field(&mut h, "header value")?);
            let key = String::from_utf8(key.to_vec()).map_err(|_| DecodeError::Invalid {
                what: "header key",
                reason: "not UTF-8",
            })?;
            headers.push(Header { key, value });
        }
        Ok(Record {
            offset: self
                .header
                .base_offset
                .wrapping_add(u64::from(s.offset_delta as u32)),
            timestamp: self.header.base_timestamp.wrapping_add(s.timestamp_delta),
            key: slice(s.key),
            value: slice(s.value).unwrap_or_default(),
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left <= 0 {
            return None;
        }
        self.left = self.left.saturating_sub(1);
        let r = self.next_record();
        if r.is_err() {
            self.left = 0;
        }
        Some(r)
    }
}
