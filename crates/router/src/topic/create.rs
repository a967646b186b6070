//! `CreateTopic`.

use sluice_core::SluiceError;
use sluice_meta::NewTopic;
use sluice_proto::v1::{CreateTopicRequest, CreateTopicResponse};

use crate::Router;

/// How long a creation waits for the topic to reach this gateway's metadata view.
pub(super) const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    // Answered once this gateway's view has it: a client that produces or asks for metadata
    // right after (Kafka clients do) finds the topic here. The metadata store already has
    // it, so a slow view delays the answer, bounded, and never fails it.
    let mut view = gw.view.clone();
    let seen = view.wait_for(|v| v.topics.get(&meta.name).is_some_and(|t| t.topic_id == meta.topic_id));
    if tokio::time::timeout(VIEW_WAIT, seen).await.is_err() {
        tracing::warn!(topic_id = meta.topic_id, "the topic is not in this gateway's view yet; answering anyway");
    }
    let topic = super::describe::describe(gw, &meta).await;
    Ok(CreateTopicResponse { topic: Some(topic) })
}
