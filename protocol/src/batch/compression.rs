//! Compression of a batch's records area, as Kafka defines it for RecordBatch v2: attribute bits
//! 0-2 name the codec, and everything after the 61-byte header is one compressed stream of the
//! records. The header (and so the CRC, which covers the compressed bytes) is never compressed.
//!
//! Formats: gzip (RFC 1952, possibly several members), snappy (raw snappy as librdkafka sends
//! it, or the xerial framing the Java client uses: an 8-byte magic, two 4-byte version fields,
//! then blocks each led by a 4-byte big-endian length), lz4 (the LZ4 frame format, KIP-57), zstd
//! (a zstd frame). Decompression is bounded by [`MAX_DECOMPRESSED`]: a small batch that expands
//! past it is refused, not inflated.

use crate::DecodeError;
use std::io::Read;

/// Most bytes one batch's records may decompress to.
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// The first bytes of a xerial-framed snappy stream.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
/// Magic and the two version fields.
const XERIAL_HEADER: usize = 16;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, Hash,
)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec attribute bits 0-2 name; 5-7 are not codecs.
    pub fn from_id(id: u8) -> Result<Compression, DecodeError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(DecodeError::Compression(other)),
        }
    }

    /// Its value in attribute bits 0-2.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name for it (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }
}

fn failed(codec: Compression, detail: impl std::fmt::Display) -> DecodeError {
    DecodeError::InvalidDetail {
        what: "compressed records",
        detail: format!("{}: {detail}", codec.name()),
    }
}

fn too_large(codec: Compression) -> DecodeError {
    failed(
        codec,
        format!("they expand past {MAX_DECOMPRESSED} bytes; refused"),
    )
}

/// Reads all of `reader`, at most [`MAX_DECOMPRESSED`] bytes.
fn read_bounded(codec: Compression, reader: impl Read) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    reader
        .take((MAX_DECOMPRESSED as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| failed(codec, e))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(too_large(codec));
    }
    Ok(out)
}

/// The records area of a batch compressed with `codec`, decompressed.
pub fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(data)),
        Compression::Snappy => match data.strip_prefix(XERIAL_MAGIC) {
            Some(_) => snappy_xerial(data.get(XERIAL_HEADER..).unwrap_or_default()),
            None => snappy_block(data, 0),
        },
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data)),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| failed(codec, e))?;
            read_bounded(codec, decoder)
        }
    }
}

/// One raw snappy block, refused before allocating if it claims more than is left of the bound.
fn snappy_block(block: &[u8], so_far: usize) -> Result<Vec<u8>, DecodeError> {
    let codec = Compression::Snappy;
    let len = snap::raw::decompress_len(block).map_err(|e| failed(codec, e))?;
    if len > MAX_DECOMPRESSED.saturating_sub(so_far) {
        return Err(too_large(codec));
    }
    snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| failed(codec, e))
}

fn snappy_xerial(mut rest: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| failed(Compression::Snappy, "truncated block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = after
            .get(..len)
            .ok_or_else(|| failed(Compression::Snappy, "truncated block"))?;
        out.extend_from_slice(&snappy_block(block, out.len())?);
        rest = after.get(len..).unwrap_or_default();
    }
    Ok(out)
}

/// `data` compressed with `codec` in the form Kafka clients read (snappy: raw, as librdkafka
/// writes it; the Java client reads both forms).
pub fn compress(codec: Compression, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            // Writing to a Vec cannot fail.
            let _ = e.write_all(data);
            e.finish().unwrap_or_default()
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .unwrap_or_default(),
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            let _ = e.write_all(data);
            e.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in Compression::ALL {
            let packed = compress(codec, &data);
            if codec != Compression::None {
                assert!(packed.len() < data.len() / 2, "{codec:?} compresses");
            }
            assert_eq!(decompress(codec, &packed).unwrap(), data, "{codec:?}");
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
        assert!(matches!(
            Compression::from_id(5),
            Err(DecodeError::Compression(5))
        ));
    }

    #[test]
    fn xerial_framed_snappy_is_read_too() {
        let (a, b) = (vec![7u8; 5000], vec![9u8; 3000]);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for part in [&a, &b] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(decompress(Compression::Snappy, &framed).unwrap(), want);
        framed.truncate(framed.len() - 1);
        assert!(decompress(Compression::Snappy, &framed).is_err());
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let huge = vec![0u8; MAX_DECOMPRESSED + 1];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &huge);
            let e = decompress(codec, &packed).unwrap_err();
            assert!(e.to_string().contains("expand past"), "{codec:?}: {e}");
            assert!(
                decompress(codec, b"not compressed at all").is_err(),
                "{codec:?}"
            );
        }
    }
}
