//! `DeleteTopic`: removes the topic from the metadata; nodes then delete its data.

use sluice_core::SluiceError;
use sluice_core::topic::validate_topic_name;
use sluice_proto::v1::{DeleteTopicRequest, DeleteTopicResponse};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.name))]
pub async fn handle(gw: &Router, req: DeleteTopicRequest) -> Result<DeleteTopicResponse, SluiceError> {
    validate_topic_name(&req.name)?;
    if let Some(what) = sluice_core::topic::internal_topic(&req.name) {
        return Err(SluiceError::InvalidRequest(format!(
            "'{}' is an internal topic ({what}) and cannot be deleted",
            req.name
        )));
    }
    gw.meta.delete_topic(&req.name).await?;
    tracing::info!("topic deleted");
    Ok(DeleteTopicResponse {})
}
