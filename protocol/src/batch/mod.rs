//! The record batch: Kafka's RecordBatch v2 layout (magic 2), byte-identical on the wire and on
//! disk.
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset          assigned by the broker (rewritten in place; not under CRC)
//!      8     4  batch_length         bytes after this field
//!     12     4  partition_leader_epoch
//!     16     1  magic = 2
//!     17     4  crc                  CRC-32C of bytes 21..end
//!     21     2  attributes           bits 0-2 compression (none, gzip, snappy, lz4, zstd)
//!     23     4  last_offset_delta    record_count - 1
//!     27     8  base_timestamp       ms since the epoch
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  record_count
//!     61     -  records (compressed as one stream if bits 0-2 say so), each: length varint, attributes i8, timestamp_delta varlong,
//!               offset_delta varint, key (varint length, -1 = null), value (likewise),
//!               header_count varint, headers (key: varint length + UTF-8, value: like value)
//! ```
//!
//! Because the CRC starts after `base_offset`, the broker assigns offsets by writing 8 bytes and
//! never recomputes the CRC, and a fetch response is a plain slice of the segment file.
//! [`validate`] is the gate every produced batch passes before it may touch a log.

mod builder;
pub mod compression;
mod record;
mod view;

pub use builder::{BatchBuilder, Producer, seal};
pub use record::{Header, Record, RecordIter};
pub use view::{HeaderViews, RecordView, RecordViews, ValidBatch};

use crate::cursor::Cursor;
use crate::error::DecodeError;

pub const MAGIC: i8 = 2;
/// Bytes before `batch_length`'s coverage starts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed header, up to and including `record_count`.
pub const HEADER_LEN: usize = 61;
/// Where the CRC-covered region starts.
pub const CRC_START: usize = 21;
const CRC_AT: usize = 17;
/// Where the partition leader epoch sits: outside the CRC, like the base offset, so a
/// replicated partition's leader writes its Raft term there when it appends.
pub const LEADER_EPOCH_AT: usize = 12;
/// Attributes bit of a *control batch*: written by the broker (a replicated partition's Raft
/// bookkeeping entries), never by producers; consumers skip them, as Kafka's do.
pub const CONTROL: i16 = 0x20;

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_length: u32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header from the start of `buf` (which may hold more).
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(buf);
        Ok(BatchHeader {
            base_offset: c.u64("batch base offset")?,
            batch_length: c.u32("batch length")?,
            leader_epoch: c.i32("partition leader epoch")?,
            magic: c.i8("magic")?,
            crc: c.u32("crc")?,
            attributes: c.i16("attributes")?,
            last_offset_delta: c.i32("last offset delta")?,
            base_timestamp: c.i64("base timestamp")?,
            max_timestamp: c.i64("max timestamp")?,
            producer_id: c.i64("producer id")?,
            producer_epoch: c.i16("producer epoch")?,
            base_sequence: c.i32("base sequence")?,
            record_count: c.i32("record count")?,
        })
    }

    /// Size of the whole batch including base offset and length fields.
    pub fn total_len(&self) -> usize {
        (self.batch_length as usize).saturating_add(LOG_OVERHEAD)
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.last_offset_delta.max(0) as u32))
    }

    /// Number of records (validated batches have at least one).
    pub fn records(&self) -> u32 {
        self.record_count.max(0) as u32
    }

    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    /// Whether this is a control batch (see [`CONTROL`]).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// Reads `(base_offset, total_len)` from the first 12 bytes of a batch, if they are present.
pub fn peek(buf: &[u8]) -> Option<(u64, usize)> {
    let mut c = Cursor::new(buf);
    let base = c.u64("base offset").ok()?;
    let len = c.u32("batch length").ok()?;
    Some((base, (len as usize).saturating_add(LOG_OVERHEAD)))
}

/// Checks that `buf` holds exactly one well-formed batch: bounds, magic, CRC, record count and
/// every record's layout, decompressing the records first when the batch is compressed (its
/// stored form stays compressed). Allocates only for a compressed batch.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = check_header(buf)?;
    check_records(&records_area(buf, &header)?, &header)?;
    Ok(header)
}

/// [`validate`], returning the batch's records area as well: a slice of `batch`, or the
/// decompressed records of a compressed batch.
pub fn validate_records(batch: &bytes::Bytes) -> Result<(BatchHeader, bytes::Bytes), DecodeError> {
    let header = check_header(batch)?;
    let area = match records_area(batch, &header)? {
        std::borrow::Cow::Borrowed(_) => batch.slice(HEADER_LEN.min(batch.len())..),
        std::borrow::Cow::Owned(plain) => bytes::Bytes::from(plain),
    };
    check_records(&area, &header)?;
    Ok((header, area))
}

/// The records after the header, decompressed if the batch is compressed.
fn records_area<'a>(
    buf: &'a [u8],
    header: &BatchHeader,
) -> Result<std::borrow::Cow<'a, [u8]>, DecodeError> {
    let records = buf.get(HEADER_LEN..).unwrap_or_default();
    Ok(
        match compression::Compression::from_id(header.compression())? {
            compression::Compression::None => std::borrow::Cow::Borrowed(records),
            codec => std::borrow::Cow::Owned(compression::decompress(codec, records)?),
        },
    )
}

/// Everything of a batch but its records: length, magic, CRC, count.
fn check_header(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = BatchHeader::parse(buf)?;
    if header.total_len() != buf.len() {
        return Err(DecodeError::InvalidDetail {
            what: "batch length",
            detail: format!(
                "header says {} bytes, buffer holds {}",
                header.total_len(),
                buf.len()
            ),
        });
    }
    if header.magic != MAGIC {
        return Err(DecodeError::InvalidDetail {
            what: "magic",
            detail: format!("expected 2, got {}", header.magic),
        });
    }
    let covered = buf.get(CRC_START..).unwrap_or_default();
    let computed = crc32c::crc32c(covered);
    if computed != header.crc {
        return Err(DecodeError::Crc {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count < 1 {
        return Err(DecodeError::Invalid {
            what: "record count",
            reason: "a batch must hold at least one record",
        });
    }
    if header.last_offset_delta != header.record_count.wrapping_sub(1) {
        return Err(DecodeError::Invalid {
            what: "last offset delta",
            reason: "must equal record count - 1",
        });
    }
    Ok(header)
}

/// Every record's layout, numbered 0, 1, 2, ..., nothing after the last.
fn check_records(records: &[u8], header: &BatchHeader) -> Result<(), DecodeError> {
    if view::well_formed(records, header.record_count) {
        return Ok(());
    }
    // The long way, which names what is wrong.
    let mut c = Cursor::new(records);
    for i in 0..header.record_count {
        if record::skim(&mut c)? != i {
            return Err(DecodeError::Invalid {
                what: "record offset delta",
                reason: "records must be numbered 0, 1, 2, ...",
            });
        }
    }
    if !c.is_empty() {
        return Err(DecodeError::Invalid {
            what: "record batch",
            reason: "bytes after the last record",
        });
    }
    Ok(())
}

/// `batch` (one sealed, uncompressed batch) with its records area compressed by `codec`: the
/// same header with the codec in its attributes, a new length and a new CRC.
pub fn compressed(batch: &[u8], codec: compression::Compression) -> Result<Vec<u8>, DecodeError> {
    let header = BatchHeader::parse(batch)?;
    if header.compression() != 0 {
        return Err(DecodeError::Invalid {
            what: "batch",
            reason: "compressed already",
        });
    }
    let (head, records) = batch
        .split_at_checked(HEADER_LEN)
        .ok_or(DecodeError::Truncated {
            what: "batch header",
            needed: HEADER_LEN,
            remaining: batch.len(),
        })?;
    let packed = compression::compress(codec, records);
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(packed.len()));
    out.extend_from_slice(head);
    out.extend_from_slice(&packed);
    let length = u32::try_from(out.len().saturating_sub(LOG_OVERHEAD)).map_err(|_| {
        DecodeError::Invalid {
            what: "batch",
            reason: "longer than 4 GiB",
        }
    })?;
    let attributes = (header.attributes & !7) | i16::from(codec.id());
    let patch = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        if let Some(dst) = out.get_mut(at..at.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    };
    patch(&mut out, 8, &length.to_be_bytes());
    patch(&mut out, CRC_START, &attributes.to_be_bytes());
    let crc = crc32c::crc32c(out.get(CRC_START..).unwrap_or_default());
    patch(&mut out, CRC_AT, &crc.to_be_bytes());
    Ok(out)
}

/// The cheap check of a batch that already passed [`validate`] once, used when reading it back
/// from disk to catch damage at rest: the header parses, the magic is 2 and the CRC matches.
/// With offset continuity (checked by the reader; the base offset is outside the CRC) and the
/// length (a wrong one moves the CRC's range), that covers every byte a consumer sees.
pub fn check_stored(buf: &[u8]) -> Result<BatchHeader, &'static str> {
    let header = BatchHeader::parse(buf).map_err(|_| "batch header truncated")?;
    if header.magic != MAGIC {
        return Err("batch magic is not 2");
    }
    match buf.get(CRC_START..) {
        Some(covered) if crc32c::crc32c(covered) == header.crc => Ok(header),
        _ => Err("batch CRC mismatch"),
    }
}

/// Splits a buffer of back-to-back batches (a fetch payload) into one `Bytes` per batch,
/// without copying. A trailing partial batch is not yielded; [`Batches::rest`] tells its size.
#[derive(Debug, Clone)]
pub struct Batches {
    buf: bytes::Bytes,
}

impl Batches {
    pub fn new(buf: bytes::Bytes) -> Self {
        Batches { buf }
    }

    /// Bytes not yet yielded (a partial batch, once iteration has ended).
    pub fn rest(&self) -> usize {
        self.buf.len()
    }
}

impl Iterator for Batches {
    type Item = bytes::Bytes;

    fn next(&mut self) -> Option<bytes::Bytes> {
        let (_, len) = peek(&self.buf)?;
        if len > self.buf.len() || len < HEADER_LEN {
            return None;
        }
        Some(self.buf.split_to(len))
    }
}

/// The leading whole batches of `batches` (back to back, as a fetch returns them) that hold
/// at most `max_records` records at or after offset `from`, and always the first batch: a
/// fetch's record cap. Records before `from` (the first batch may start earlier) do not count.
/// Bytes after a batch whose header does not parse are kept as they were; the reader names
/// the damage.
pub fn take_records(batches: bytes::Bytes, from: u64, max_records: u32) -> bytes::Bytes {
    let mut taken: usize = 0;
    let mut counted: u64 = 0;
    for batch in Batches::new(batches.clone()) {
        let Ok(header) = BatchHeader::parse(&batch) else {
            return batches;
        };
        let wanted = header
            .last_offset()
            .saturating_add(1)
            .saturating_sub(header.base_offset.max(from));
        if taken > 0 && counted.saturating_add(wanted) > u64::from(max_records) {
            break;
        }
        taken = taken.saturating_add(batch.len());
        counted = counted.saturating_add(wanted);
    }
    if taken == 0 {
        return batches;
    }
    batches.slice(..taken.min(batches.len()))
}

#[cfg(test)]
mod tests;
