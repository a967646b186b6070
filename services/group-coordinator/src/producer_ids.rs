//! Producer ids for idempotent producers, handed out from blocks reserved in the metadata
//! store: one metadata write per [`BLOCK`] producers, and ids that stay unique across
//! coordinator failovers (a new coordinator reserves a fresh block; the rest of its
//! predecessor's block is never used).

use std::ops::Range;
use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_meta::MetaStore;

/// Ids reserved per metadata write.
pub const BLOCK: u64 = 1000;

/// The block being handed out.
pub struct ProducerIds {
    meta: Arc<dyn MetaStore>,
    block: tokio::sync::Mutex<Range<i64>>,
}

impl ProducerIds {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Self { meta, block: tokio::sync::Mutex::new(0..0) }
    }

    /// A producer id never given before.
    pub async fn next(&self) -> Result<i64, SluiceError> {
        let mut block = self.block.lock().await;
        if block.is_empty() {
            *block = self.meta.reserve_producer_ids(BLOCK).await?;
            tracing::info!(from = block.start, to = block.end, "reserved a block of producer ids");
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }
}
