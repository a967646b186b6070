//! Record-batch compression codecs, with the attribute numbers Kafka uses.

use std::io::{Read, Write};

use crate::batch::BatchError;

/// A compression codec; the discriminant is the value in the batch attributes' low 3 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    /// The codec from batch attributes.
    pub fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        match attributes & 0x07 {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            n => Err(BatchError::Malformed(format!("unknown compression codec {n}"))),
        }
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    /// Compresses `data` with this codec.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, BatchError> {
        let io = |e: std::io::Error| BatchError::Compression(format!("{}: {e}", self.name()));
        match self {
            Self::None => Ok(data.to_vec()),
            Self::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), flate2::Compression::fast());
                enc.write_all(data).map_err(io)?;
                enc.finish().map_err(io)
            }
            Self::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
                enc.write_all(data).map_err(io)?;
                enc.finish().map_err(|e| BatchError::Compression(format!("lz4: {e}")))
            }
            Self::Zstd => zstd::bulk::compress(data, 1).map_err(io),
            Self::Snappy => snappy_compress(data),
        }
    }

    /// Decompresses `data`, refusing to produce more than `limit` bytes (a decompression bomb
    /// must not exhaust memory).
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
        let io = |e: std::io::Error| BatchError::Compression(format!("{}: {e}", self.name()));
        let mut out = Vec::new();
        let read_limited = |r: &mut dyn Read, out: &mut Vec<u8>| -> std::io::Result<()> {
            r.take(limit as u64 + 1).read_to_end(out)?;
            Ok(())
        };
        match self {
            Self::None => return Ok(data.to_vec()),
            Self::Gzip => read_limited(&mut flate2::read::GzDecoder::new(data), &mut out).map_err(io)?,
            Self::Lz4 => read_limited(&mut lz4_flex::frame::FrameDecoder::new(data), &mut out).map_err(io)?,
            Self::Zstd => {
                read_limited(&mut zstd::stream::read::Decoder::new(data).map_err(io)?, &mut out).map_err(io)?
            }
            Self::Snappy => out = snappy_decompress(data, limit)?,
        }
        if out.len() > limit {
            return Err(BatchError::TooLarge { size: out.len(), limit });
        }
        Ok(out)
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "uncompressed" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            "snappy" => Ok(Self::Snappy),
            other => Err(format!("unknown compression '{other}' (expected none, gzip, snappy, lz4 or zstd)")),
        }
    }
}

/// The header the Java client's snappy stream (xerial's framing) starts with: a magic, then
/// version 1 and compatible version 1.
const XERIAL_HEADER: [u8; 16] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1];
/// Uncompressed bytes per xerial block (the Java client's block size).
const XERIAL_BLOCK: usize = 32 << 10;

fn snappy_error(e: snap::Error) -> BatchError {
    BatchError::Compression(format!("snappy: {e}"))
}

/// Snappy as Kafka's Java client writes it: xerial's framing (a header, then blocks each
/// prefixed with its compressed length), which every Kafka client reads.
fn snappy_compress(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(XERIAL_HEADER.len() + data.len() / 2 + 64);
    out.extend_from_slice(&XERIAL_HEADER);
    let mut enc = snap::raw::Encoder::new();
    for block in data.chunks(XERIAL_BLOCK) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.resize(at + 4 + snap::raw::max_compress_len(block.len()), 0);
        let n = enc.compress(block, &mut out[at + 4..]).map_err(snappy_error)?;
        out.truncate(at + 4 + n);
        out[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
    }
    Ok(out)
}

/// Either framing Kafka clients write: xerial's (the Java client), or one raw snappy block
/// (librdkafka). Sizes are read from the data and checked against `limit` before anything is
/// allocated for them.
fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut dec = snap::raw::Decoder::new();
    let too_large = |size: usize| BatchError::TooLarge { size, limit };
    if !data.starts_with(&XERIAL_HEADER[..8]) {
        let len = snap::raw::decompress_len(data).map_err(snappy_error)?;
        if len > limit {
            return Err(too_large(len));
        }
        return dec.decompress_vec(data).map_err(snappy_error);
    }
    let mut rest =
        data.get(XERIAL_HEADER.len()..).ok_or_else(|| BatchError::Compression("snappy: truncated header".into()))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) =
            rest.split_at_checked(4).ok_or_else(|| BatchError::Compression("snappy: truncated block length".into()))?;
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (block, tail) = tail
            .split_at_checked(n)
            .ok_or_else(|| BatchError::Compression(format!("snappy: a block of {n} bytes, {} left", tail.len())))?;
        let size = snap::raw::decompress_len(block).map_err(snappy_error)?;
        if out.len() + size > limit {
            return Err(too_large(out.len() + size));
        }
        let at = out.len();
        out.resize(at + size, 0);
        dec.decompress(block, &mut out[at..]).map_err(snappy_error)?;
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..100_000u32).flat_map(|i| format!("record-{}-", i % 977).into_bytes()).collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for c in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let packed = c.compress(&data).unwrap();
            assert_eq!(c.decompress(&packed, data.len()).unwrap(), data, "{}", c.name());
            assert_eq!(c.name().parse::<Compression>().unwrap(), c);
        }
    }

    #[test]
    fn snappy_reads_both_framings_and_bounds_its_output() {
        let data = sample();
        // The Java client's framing: several 32 KiB blocks behind xerial's header.
        let framed = Compression::Snappy.compress(&data).unwrap();
        assert_eq!(&framed[..16], &XERIAL_HEADER);
        // librdkafka's: one raw block.
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw, data.len()).unwrap(), data);
        // A bomb is refused before its output is allocated, in either framing.
        for packed in [&framed, &raw] {
            let e = Compression::Snappy.decompress(packed, data.len() - 1).unwrap_err();
            assert!(matches!(e, BatchError::TooLarge { .. }), "{e}");
        }
        // Cut short: an error, not a panic.
        for cut in [10, 18, framed.len() - 3] {
            assert!(Compression::Snappy.decompress(&framed[..cut], data.len()).is_err(), "cut at {cut}");
        }
    }
}
