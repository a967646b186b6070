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
            Self::Snappy => {
                Err(BatchError::Compression("snappy is not supported by this build; use lz4, zstd or gzip".into()))
            }
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
            Self::Snappy => return Err(BatchError::Compression("snappy is not supported by this build".into())),
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
            "snappy" => Err("snappy is not supported yet; use lz4, zstd or gzip".into()),
            other => Err(format!("unknown compression '{other}' (expected none, gzip, lz4 or zstd)")),
        }
    }
}
