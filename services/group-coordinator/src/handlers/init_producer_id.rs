//! `InitProducerId`: a new producer id at epoch 0, from the block this coordinator reserved.

use sluice_core::SluiceError;
use sluice_proto::v1::*;

use crate::Coordinator;

pub(super) async fn handle(c: &Coordinator, _r: InitProducerIdRequest) -> Result<InitProducerIdResponse, SluiceError> {
    // Only the active coordinator hands ids out: a standby's block may be a stale one.
    c.active()?;
    let producer_id = c.producer_ids.next().await?;
    tracing::debug!(producer_id, "producer id given");
    Ok(InitProducerIdResponse { producer_id, producer_epoch: 0 })
}
