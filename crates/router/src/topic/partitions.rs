//! `CreatePartitions`: a topic grows; the nodes open the new partitions as they see them.

use sluice_core::SluiceError;
use sluice_proto::v1::{CreatePartitionsRequest, CreatePartitionsResponse};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.topic, count = req.count))]
pub async fn handle(gw: &Router, req: CreatePartitionsRequest) -> Result<CreatePartitionsResponse, SluiceError> {
    sluice_core::topic::validate_topic_name(&req.topic)?;
    let meta = gw.meta.add_partitions(&req.topic, req.count, gw.limits()).await?;
    tracing::info!(partitions = meta.partitions.len(), "partitions added");
    let mut view = gw.view.clone();
    let seen = view.wait_for(|v| v.topics.get(&meta.name).is_some_and(|t| t.partitions.len() >= meta.partitions.len()));
    if tokio::time::timeout(super::create::VIEW_WAIT, seen).await.is_err() {
        tracing::warn!("the new partitions are not in this gateway's view yet; answering anyway");
    }
    let topic = super::describe::describe(gw, &meta).await;
    Ok(CreatePartitionsResponse { topic: Some(topic) })
}
