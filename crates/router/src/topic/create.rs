//! `CreateTopic`.

use sluice_core::SluiceError;
use sluice_meta::NewTopic;
use sluice_proto::v1::{CreateTopicRequest, CreateTopicResponse};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.name, partitions = req.partitions))]
pub async fn handle(gw: &Router, req: CreateTopicRequest) -> Result<CreateTopicResponse, SluiceError> {
    let t = NewTopic {
        name: req.name,
        partitions: req.partitions,
        replication_factor: req.replication_factor,
        config: req.config.into_iter().collect(),
    };
    let meta = gw.meta.create_topic(t, gw.limits()).await?;
    tracing::info!(topic_id = meta.topic_id, "topic created");
    let topic = super::describe::describe(gw, &meta).await;
    Ok(CreateTopicResponse { topic: Some(topic) })
}
