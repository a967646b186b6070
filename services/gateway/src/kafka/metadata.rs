//! Metadata: this gateway as the only broker, leader of every partition (it routes to the
//! real leaders); topics as the metadata view has them. Topics are never created by a
//! metadata request.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_meta::TopicMeta;

use super::{Kafka, NODE_ID, errors, name, topic_uuid};

pub(super) fn handle(k: &Kafka, r: MetadataRequest) -> MetadataResponse {
    let view = k.router.snapshot();
    let topics = match r.topics {
        None => view.topics.values().map(|t| described(t)).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|w| {
                let found = match &w.name {
                    Some(n) => view.topics.get(n.0.as_str()),
                    None => view.topics.values().find(|t| topic_uuid(t.topic_id) == w.topic_id),
                };
                match found {
                    Some(t) => described(t),
                    None => MetadataResponseTopic::default()
                        .with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_name(w.name)
                        .with_topic_id(w.topic_id),
                }
            })
            .collect(),
    };
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(StrBytes::from_string(k.host.clone()))
        .with_port(k.port);
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("sluice")))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

fn described(t: &TopicMeta) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            MetadataResponsePartition::default()
                .with_partition_index(i as i32)
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(a.leader_epoch.min(i32::MAX as u64) as i32)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(name(&t.name)))
        .with_topic_id(topic_uuid(t.topic_id))
        .with_is_internal(sluice_core::topic::internal_topic(&t.name).is_some())
        .with_partitions(partitions)
}
