//! Reading the records inside a batch.

use super::BatchHeader;
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

/// Walks one record at the cursor, checking its layout against its declared length; returns
/// its offset delta.
pub(super) fn skim(c: &mut Cursor<'_>) -> Result<i32, DecodeError> {
    let len = length(c, "record length")?.ok_or(DecodeError::Invalid {
        what: "record length",
        reason: "null",
    })?;
    let body = c.take(len, "record")?;
    let mut r = Cursor::new(body);
    r.i8("record attributes")?;
    r.varlong("timestamp delta")?;
    let offset_delta = r.varint("offset delta")?;
    field(&mut r, "record key")?;
    field(&mut r, "record value")?;
    let header_count = r.varint("header count")?;
    if header_count < 0 {
        return Err(DecodeError::Invalid {
            what: "header count",
            reason: "negative",
        });
    }
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
    Ok(offset_delta)
}

/// Iterates over the records of one batch (held as `Bytes`, so records share its memory).
#[derive(Debug)]
pub struct RecordIter {
    /// The records area (decompressed, if the batch was compressed).
    records: Bytes,
    header: BatchHeader,
    /// Position within the records area.
    pos: usize,
    left: i32,
}

impl RecordIter {
    /// Iterates the records of a batch validated already.
    pub fn from_valid(batch: super::ValidBatch) -> Self {
        let (records, header) = batch.into_parts();
        RecordIter {
            records,
            header,
            pos: 0,
            left: header.record_count,
        }
    }

    /// Offset of the record `next` yields, if any.
    pub fn peek_offset(&self) -> Option<u64> {
        if self.left <= 0 {
            return None;
        }
        let mut pos = self.pos;
        super::view::read_record(
            &self.records,
            &mut pos,
            self.header.base_offset,
            self.header.base_timestamp,
        )
        .map(|r| r.offset)
    }

    /// Validates `batch` (see [`super::validate`]) and iterates its records.
    pub fn new(batch: Bytes) -> Result<Self, DecodeError> {
        let (header, records) = super::validate_records(&batch)?;
        Ok(RecordIter {
            records,
            header,
            pos: 0,
            left: header.record_count,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's records as borrowed views (validated already: nothing is checked again).
    pub fn views(&self) -> super::view::RecordViews<'_> {
        super::view::ValidBatch::views_of(&self.records, &self.header)
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left <= 0 {
            return None;
        }
        self.left = self.left.saturating_sub(1);
        // Validated when the iterator was made: a record cannot fail to read here.
        let Some(view) = super::view::read_record(
            &self.records,
            &mut self.pos,
            self.header.base_offset,
            self.header.base_timestamp,
        ) else {
            self.left = 0;
            return Some(Err(DecodeError::Invalid {
                what: "record",
                reason: "unreadable after validation",
            }));
        };
        Some(Ok(view.to_owned(&self.records)))
    }
}
