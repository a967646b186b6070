//! Sluice Streams: stream-processing applications over Sluice topics, in Rust, with Kafka
//! Streams' model: a DSL of streams and tables ([`StreamsBuilder`]), tasks per input
//! partition, state stores with changelog topics, windows with grace periods, joins, and a
//! [`TestDriver`] that runs a topology in memory.
//!
//! Keys and values are typed; their bytes come from their [`Codec`] (strings, bytes,
//! big-endian integers, [`Json`] for any serde type, or your own).
//!
//! ```
//! use sluice_streams::{StreamsBuilder, TestDriver};
//!
//! let b = StreamsBuilder::new();
//! b.stream::<(), String>("lines")
//!     .flat_map(|_, line| line.split_whitespace().map(|w| (w.to_lowercase(), ())).collect::<Vec<_>>())
//!     .group_by_key()
//!     .count("counts")
//!     .to_stream()
//!     .to("word-counts");
//! let mut driver = TestDriver::new(b.build(), "wordcount").unwrap();
//! driver.pipe("lines", (), "to be or not to be".to_string(), 0).unwrap();
//! let counts = driver.read_table::<String, i64>("word-counts").unwrap();
//! assert_eq!(counts["to"], 2);
//! assert_eq!(counts["or"], 1);
//! ```

pub mod app;
pub mod codec;
pub mod driver;
pub mod dsl;
mod metrics;
mod nodes;
pub mod record;
pub mod store;
pub mod task;
pub mod topology;
pub mod window;

pub use app::{Guarantee, OffsetReset, StreamsApp, StreamsConfig};
pub use codec::{Codec, CodecError, Json};
pub use driver::TestDriver;
pub use dsl::{JoinWindows, KGroupedStream, KGroupedTable, KStream, KTable, StreamsBuilder};
pub use record::{Change, Record, TableOp, Windowed};
pub use topology::{Output, StoreKind, StoreSpec, TaskMetrics, Topology};
pub use window::{SessionWindows, SlidingWindows, TimeWindows};

/// What can go wrong running a topology.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("no source reads topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{0}': {1}")]
    Codec(String, CodecError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Client(Box<sluice_client::ClientError>),
}
