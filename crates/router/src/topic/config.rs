//! `AlterTopicConfig`: a topic's configuration changed in the metadata store; every node
//! reads it from its view, so nothing else is told.

use sluice_core::SluiceError;
use sluice_core::topic::{ConfigChange, ConfigOp};
use sluice_proto::v1::{AlterTopicConfigRequest, AlterTopicConfigResponse};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.topic, changes = req.changes.len(), validate_only = req.validate_only))]
pub async fn handle(gw: &Router, req: AlterTopicConfigRequest) -> Result<AlterTopicConfigResponse, SluiceError> {
    let changes = changes(&req)?;
    let meta = if req.validate_only {
        let t = crate::route::topic(&gw.snapshot(), &req.topic)?;
        sluice_meta::plan_config(&t, &changes)?
    } else {
        let meta = gw.meta.alter_topic_config(&req.topic, &changes).await?;
        tracing::info!(config = ?meta.config, "topic config altered");
        meta
    };
    Ok(AlterTopicConfigResponse { topic: Some(super::describe::describe(gw, &meta).await) })
}

fn changes(req: &AlterTopicConfigRequest) -> Result<Vec<ConfigChange>, SluiceError> {
    req.changes
        .iter()
        .map(|c| {
            let op = match sluice_proto::v1::ConfigOp::try_from(c.op) {
                Ok(sluice_proto::v1::ConfigOp::Set) => ConfigOp::Set(c.value.clone()),
                Ok(sluice_proto::v1::ConfigOp::Delete) => ConfigOp::Delete,
                Ok(sluice_proto::v1::ConfigOp::Append) => ConfigOp::Append(c.value.clone()),
                Ok(sluice_proto::v1::ConfigOp::Subtract) => ConfigOp::Subtract(c.value.clone()),
                Err(_) => {
                    return Err(SluiceError::InvalidRequest(format!(
                        "unknown config operation {} for '{}' (0 set, 1 delete, 2 append, 3 subtract)",
                        c.op, c.key
                    )));
                }
            };
            Ok(ConfigChange { key: c.key.clone(), op })
        })
        .collect()
}
