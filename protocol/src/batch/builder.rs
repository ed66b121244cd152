//! Encodes records into a batch, allocation-free per record.

use super::{CRC_AT, CRC_START, HEADER_LEN, MAGIC};
use crate::cursor::{put_varint, put_varlong, varint_len, varlong_len};
use bytes::{BufMut, Bytes, BytesMut};

/// Accumulates records into one uncompressed RecordBatch v2.
///
/// Lengths are written as Kafka's signed 32-bit varints; callers keep records below the
/// broker's frame limit (far below 2 GiB), so they always fit.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: Producer,
    attributes: i16,
}

/// Who wrote a batch, for idempotence: Kafka's producer id, epoch and the sequence number of
/// the batch's first record. `NONE` (all -1) marks a batch from a non-idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl Producer {
    pub const NONE: Producer = Producer {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes.max(HEADER_LEN));
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: i64::MIN,
            producer: Producer::NONE,
            attributes: 0,
        }
    }

    /// Makes this a control batch (see [`super::CONTROL`]): for the broker's own entries.
    pub fn set_control(&mut self) {
        self.attributes |= super::CONTROL;
    }

    /// Stamps the batch with its producer's id, epoch and first sequence number (idempotence).
    pub fn set_producer(&mut self, producer: Producer) {
        self.producer = producer;
    }

    pub fn count(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// An upper bound on the size any record with these fields adds to any batch, computed
    /// without a builder (the timestamp and offset deltas are counted at their widest).
    pub fn max_record_size(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> usize {
        let key_len = key.map_or(1, |k| 5usize.saturating_add(k.len()));
        let mut n = 1usize // attributes
            .saturating_add(10) // timestamp delta
            .saturating_add(5) // offset delta
            .saturating_add(key_len)
            .saturating_add(5)
            .saturating_add(value.len())
            .saturating_add(5);
        for (k, v) in headers {
            n = n
                .saturating_add(10)
                .saturating_add(k.len())
                .saturating_add(v.len());
        }
        n.saturating_add(5) // the record's own length
    }

    /// Size a record would add, to decide whether it still fits.
    pub fn record_size(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) -> usize {
        let body = self.body_len(key, value, headers, timestamp);
        varint_len(len_i32(body)).saturating_add(body)
    }

    fn body_len(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) -> usize {
        let delta = if self.count == 0 {
            0
        } else {
            timestamp.wrapping_sub(self.base_timestamp)
        };
        let key_len = key.map_or(varint_len(-1), |k| {
            varint_len(len_i32(k.len())).saturating_add(k.len())
        });
        let mut n = 1usize
            .saturating_add(varlong_len(delta))
            .saturating_add(varint_len(self.count))
            .saturating_add(key_len)
            .saturating_add(varint_len(len_i32(value.len())))
            .saturating_add(value.len())
            .saturating_add(varint_len(len_i32(headers.len())));
        for (k, v) in headers {
            n = n
                .saturating_add(varint_len(len_i32(k.len())))
                .saturating_add(k.len())
                .saturating_add(varint_len(len_i32(v.len())))
                .saturating_add(v.len());
        }
        n
    }

    /// Appends a record; `timestamp` is milliseconds since the epoch.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        let body = self.body_len(key, value, headers, timestamp);
        self.buf.reserve(body.saturating_add(5));
        put_varint(&mut self.buf, len_i32(body));
        self.buf.put_i8(0);
        put_varlong(&mut self.buf, timestamp.wrapping_sub(self.base_timestamp));
        put_varint(&mut self.buf, self.count);
        match key {
            Some(k) => {
                put_varint(&mut self.buf, len_i32(k.len()));
                self.buf.put_slice(k);
            }
            None => put_varint(&mut self.buf, -1),
        }
        put_varint(&mut self.buf, len_i32(value.len()));
        self.buf.put_slice(value);
        put_varint(&mut self.buf, len_i32(headers.len()));
        for (k, v) in headers {
            put_varint(&mut self.buf, len_i32(k.len()));
            self.buf.put_slice(k.as_bytes());
            put_varint(&mut self.buf, len_i32(v.len()));
            self.buf.put_slice(v);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.count = self.count.saturating_add(1);
    }

    /// Fills in the header and CRC. The base offset is left 0 for the broker to assign.
    pub fn finish(self) -> Bytes {
        let producer = self.producer;
        let mut buf = self.finish_unsealed();
        seal(&mut buf, producer);
        buf.freeze()
    }

    /// Fills in the header but leaves the producer fields and the CRC to [`seal`]: for a
    /// producer that numbers its batches when it sends them, not when it builds them.
    pub fn finish_unsealed(mut self) -> BytesMut {
        let total = self.buf.len();
        let mut h = BytesMut::with_capacity(HEADER_LEN);
        h.put_u64(0);
        h.put_u32(u32::try_from(total.saturating_sub(super::LOG_OVERHEAD)).unwrap_or(u32::MAX));
        h.put_i32(-1); // partition leader epoch: unused on a single node
        h.put_i8(MAGIC);
        h.put_u32(0); // crc, below
        h.put_i16(self.attributes); // no compression, create time, not transactional
        h.put_i32(self.count.saturating_sub(1));
        h.put_i64(self.base_timestamp);
        h.put_i64(if self.count == 0 {
            self.base_timestamp
        } else {
            self.max_timestamp
        });
        h.put_i64(Producer::NONE.id);
        h.put_i16(Producer::NONE.epoch);
        h.put_i32(Producer::NONE.base_sequence);
        h.put_i32(self.count);
        if let Some(header) = self.buf.get_mut(..HEADER_LEN) {
            header.copy_from_slice(&h);
        }
        self.buf
    }
}

/// Where the producer fields start in a batch.
const PRODUCER_AT: usize = 43;

/// Writes the producer fields of a whole batch (from [`BatchBuilder::finish_unsealed`], or a
/// finished one being renumbered) and then its CRC. Does nothing to a buffer shorter than a
/// batch header.
pub fn seal(batch: &mut [u8], producer: Producer) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let mut fields = [0u8; 14];
    let parts = [
        &producer.id.to_be_bytes()[..],
        &producer.epoch.to_be_bytes()[..],
        &producer.base_sequence.to_be_bytes()[..],
    ];
    for (dst, src) in fields.iter_mut().zip(parts.into_iter().flatten()) {
        *dst = *src;
    }
    if let Some(slot) = batch.get_mut(PRODUCER_AT..PRODUCER_AT + 14) {
        slot.copy_from_slice(&fields);
    }
    let crc = crc32c::crc32c(batch.get(CRC_START..).unwrap_or_default());
    if let Some(slot) = batch.get_mut(CRC_AT..CRC_START) {
        slot.copy_from_slice(&crc.to_be_bytes());
    }
}
