//! Metadata: the gateways are the brokers Kafka clients see. Every live gateway with a Kafka
//! listener is listed (registered in the metadata store; this one at least, even before its
//! registration shows), and each partition names one of them its leader, spread evenly over
//! the gateways and stable while the set of gateways is. Whichever gateway a client sends to
//! routes to the partition's real leader, so the choice only spreads client connections.
//! Topics are never created by a metadata request.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_meta::{ClusterView, TopicMeta};

use super::{Kafka, errors, name, node_id, topic_uuid};

/// The brokers clients are told of: `(node id, host, port)`, by node id.
pub(super) fn brokers(k: &Kafka, view: &ClusterView) -> Vec<(i32, String, i32)> {
    let mut all: Vec<(i32, String, i32)> = view
        .gateways
        .values()
        .filter_map(|g| {
            let (host, port) = g.kafka.rsplit_once(':')?;
            Some((node_id(&g.kafka), host.to_string(), port.parse().ok()?))
        })
        .collect();
    if !all.iter().any(|(id, _, _)| *id == k.node_id) {
        all.push((k.node_id, k.host.clone(), k.port));
    }
    all.sort();
    all.dedup_by_key(|b| b.0);
    all
}

pub(super) fn handle(k: &Kafka, r: MetadataRequest) -> MetadataResponse {
    let view = k.router.snapshot();
    let brokers = brokers(k, &view);
    let ids: Vec<i32> = brokers.iter().map(|b| b.0).collect();
    let topics = match r.topics {
        None => view.topics.values().map(|t| described(t, &ids)).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|w| {
                let found = match &w.name {
                    Some(n) => view.topics.get(n.0.as_str()),
                    None => view.topics.values().find(|t| topic_uuid(t.topic_id) == w.topic_id),
                };
                match found {
                    Some(t) => described(t, &ids),
                    None => MetadataResponseTopic::default()
                        .with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_name(w.name)
                        .with_topic_id(w.topic_id),
                }
            })
            .collect(),
    };
    let listed = brokers
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(listed)
        .with_cluster_id(Some(StrBytes::from_static_str("sluice")))
        .with_controller_id(BrokerId(k.node_id))
        .with_topics(topics)
}

/// The gateway named leader of partition `p` of `topic` among `ids` (not empty): consecutive
/// partitions on consecutive gateways, from a place that depends on the topic.
fn leader_of(topic: &str, p: usize, ids: &[i32]) -> i32 {
    let start = node_id(topic) as usize;
    ids[(start + p) % ids.len()]
}

fn described(t: &TopicMeta, ids: &[i32]) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let leader = BrokerId(leader_of(&t.name, i, ids));
            MetadataResponsePartition::default()
                .with_partition_index(i as i32)
                .with_leader_id(leader)
                .with_leader_epoch(a.leader_epoch.min(i32::MAX as u64) as i32)
                .with_replica_nodes(vec![leader])
                .with_isr_nodes(vec![leader])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(name(&t.name)))
        .with_topic_id(topic_uuid(t.topic_id))
        .with_is_internal(sluice_core::topic::internal_topic(&t.name).is_some())
        .with_partitions(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_stay_put_while_the_gateways_do() {
        let ids = [3, 17, 40];
        let mut per: std::collections::BTreeMap<i32, usize> = Default::default();
        for p in 0..30 {
            *per.entry(leader_of("orders", p, &ids)).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![10, 10, 10]);
        assert_eq!(leader_of("orders", 7, &ids), leader_of("orders", 7, &ids));
        assert_eq!(leader_of("orders", 0, &[9]), 9);
    }
}
