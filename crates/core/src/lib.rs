//! Domain types shared by every Sluice crate.
//!
//! - [`batch`]: the Kafka RecordBatch v2 codec (parse, verify, build, decode).
//! - [`compression`]: batch codecs (gzip, snappy, lz4, zstd).
//! - [`error`]: the client-facing error enum, its stable codes and the mapping to gRPC.
//! - [`topic`]: topic-name rules and per-topic configuration.
//! - [`partitioner`]: Kafka-compatible murmur2 and the sticky partitioner.
//! - [`settings`]: configuration loading and logging set-up for the binaries.

pub mod batch;
pub mod compression;
pub mod error;
pub mod partitioner;
pub mod settings;
pub mod topic;
pub mod varint;

pub use error::{RemoteError, SluiceError};

/// The largest HTTP/2 frame every Sluice endpoint accepts (servers and clients): batches of
/// hundreds of KiB cross in a few frames instead of one per 16 KiB (the HTTP/2 default),
/// which saves a frame header, a flow-control update and a wake-up each.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1 << 20;
