//! CreateTopics, CreatePartitions and DeleteTopics through the same admin path as
//! `sluice.v1.Admin`. Kafka's -1 for partitions or replication factor means the cluster
//! default (1 partition).

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::SluiceError;
use sluice_proto::v1::{CreatePartitionsRequest as CreatePartitionsRequest_, CreateTopicRequest, DeleteTopicRequest};

use super::{Kafka, error_of, errors, topic_uuid};

pub(super) async fn create(k: &Kafka, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let topics = r.topics.into_iter().map(|t| async move {
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let config: Result<std::collections::HashMap<String, String>, SluiceError> = t
            .configs
            .iter()
            .map(|c| match &c.value {
                Some(v) => Ok((c.name.as_str().to_string(), v.as_str().to_string())),
                None => Err(SluiceError::InvalidConfig(format!("config {} has no value", c.name.as_str()))),
            })
            .collect();
        let refused = if !t.assignments.is_empty() {
            Some(SluiceError::InvalidRequest("replica assignments are chosen by Sluice, not the client".into()))
        } else if t.num_partitions == 0
            || t.num_partitions < -1
            || t.replication_factor == 0
            || t.replication_factor < -1
        {
            Some(SluiceError::InvalidPartitions {
                count: t.num_partitions.max(0) as u32,
                reason: "partitions and replication factor must be at least 1, or -1 for the default".into(),
            })
        } else {
            config.as_ref().err().cloned()
        };
        if let Some(e) = refused {
            return failed(result, &e);
        }
        let req = CreateTopicRequest {
            name: t.name.0.as_str().to_string(),
            partitions: if t.num_partitions < 0 { 1 } else { t.num_partitions as u32 },
            replication_factor: t.replication_factor.max(0) as u32,
            config: config.unwrap_or_default(),
        };
        if r.validate_only {
            return result.with_num_partitions(req.partitions as i32).with_replication_factor(t.replication_factor);
        }
        match k.router.create_topic(req).await {
            Ok(resp) => {
                let d = resp.topic.unwrap_or_default();
                result
                    .with_topic_id(topic_uuid(d.topic_id))
                    .with_num_partitions(d.partitions.len() as i32)
                    .with_replication_factor(d.replication_factor as i16)
            }
            Err(e) => failed(result, &e),
        }
    });
    CreateTopicsResponse::default().with_topics(futures_util::future::join_all(topics).await)
}

fn failed(result: CreatableTopicResult, e: &SluiceError) -> CreatableTopicResult {
    result
        .with_error_code(error_of(e))
        .with_error_message(Some(StrBytes::from_string(e.client_message())))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
}

pub(super) async fn delete(k: &Kafka, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // Versions up to 5 name topics in `topic_names`; 6 in `topics` (by name here).
    let names: Vec<Option<kafka_protocol::messages::TopicName>> = if r.topic_names.is_empty() {
        r.topics.into_iter().map(|t| t.name).collect()
    } else {
        r.topic_names.into_iter().map(Some).collect()
    };
    let results = names.into_iter().map(|name| async move {
        let result = DeletableTopicResult::default().with_name(name.clone());
        let Some(n) = name else {
            let e = SluiceError::InvalidRequest("topics are deleted by name".into());
            return result
                .with_error_code(errors::INVALID_REQUEST)
                .with_error_message(Some(StrBytes::from_string(e.to_string())));
        };
        match k.router.delete_topic(DeleteTopicRequest { name: n.0.as_str().to_string() }).await {
            Ok(_) => result,
            Err(e) => {
                result.with_error_code(error_of(&e)).with_error_message(Some(StrBytes::from_string(e.client_message())))
            }
        }
    });
    DeleteTopicsResponse::default().with_responses(futures_util::future::join_all(results).await)
}

pub(super) async fn create_partitions(k: &Kafka, r: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let validate_only = r.validate_only;
    let results = r.topics.into_iter().map(|t| async move {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let name = t.name.0.as_str().to_string();
        let outcome = if t.assignments.is_some() {
            Err(SluiceError::InvalidRequest("replica assignments are chosen by Sluice, not the client".into()))
        } else if t.count < 1 {
            Err(SluiceError::InvalidPartitions { count: 0, reason: "a topic needs at least 1 partition".into() })
        } else if validate_only {
            let view = k.router.snapshot();
            match view.topics.get(&name) {
                Some(topic) => {
                    sluice_meta::plan_partitions(&view, topic, t.count as u32, k.router.limits(), 0).map(|_| ())
                }
                None => Err(SluiceError::UnknownTopic(name)),
            }
        } else {
            k.router
                .create_partitions(CreatePartitionsRequest_ { topic: name, count: t.count as u32 })
                .await
                .map(|_| ())
        };
        match outcome {
            Ok(()) => result,
            Err(e) => {
                result.with_error_code(error_of(&e)).with_error_message(Some(StrBytes::from_string(e.client_message())))
            }
        }
    });
    CreatePartitionsResponse::default().with_results(futures_util::future::join_all(results).await)
}
