//! DescribeConfigs for topics (every config Sluice has, with its effective value and whether
//! the topic sets it or the default applies) and brokers (none of theirs are exposed), and
//! DescribeCluster (the gateways, as Metadata lists them).
//!
//! Topic configs are read-only to Kafka clients: Sluice sets them at creation, and has no
//! operation altering them yet (IncrementalAlterConfigs is not served).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{Kafka, errors, metadata};

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

/// Kafka's type of each topic config (INT 3, LONG 5, LIST 7, STRING 2).
fn config_type(key: &str) -> i8 {
    match key {
        "max.message.bytes" | "min.insync.replicas" => 3,
        "retention.ms" | "retention.bytes" | "delete.retention.ms" => 5,
        "cleanup.policy" => 7,
        _ => 2,
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub(super) fn describe(k: &Kafka, r: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let view = k.router.snapshot();
    let results = r
        .resources
        .into_iter()
        .map(|res| {
            let answer = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted =
                |key: &str| res.configuration_keys.as_ref().is_none_or(|ks| ks.iter().any(|k| k.as_str() == key));
            match res.resource_type {
                TOPIC => match view.topics.get(res.resource_name.as_str()) {
                    Some(t) => {
                        let configs = t
                            .config()
                            .to_map()
                            .into_iter()
                            .filter(|(key, _)| wanted(key))
                            .map(|(key, value)| {
                                let source =
                                    if t.config.contains_key(&key) { DYNAMIC_TOPIC_CONFIG } else { DEFAULT_CONFIG };
                                DescribeConfigsResourceResult::default()
                                    .with_config_type(config_type(&key))
                                    .with_name(s(&key))
                                    .with_value(Some(s(&value)))
                                    .with_read_only(true)
                                    .with_config_source(source)
                            })
                            .collect();
                        answer.with_configs(configs)
                    }
                    None => answer
                        .with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_error_message(Some(s(&format!("topic '{}' does not exist", res.resource_name.as_str())))),
                },
                // No broker config is exposed: gateways take theirs from files and the
                // environment.
                BROKER => answer,
                other => answer
                    .with_error_code(errors::INVALID_REQUEST)
                    .with_error_message(Some(s(&format!("resource type {other} has no configs here")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub(super) fn cluster(k: &Kafka, _r: DescribeClusterRequest) -> DescribeClusterResponse {
    let view = k.router.snapshot();
    let brokers = metadata::brokers(k, &view)
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default().with_broker_id(BrokerId(id)).with_host(s(&host)).with_port(port)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str("sluice"))
        .with_controller_id(BrokerId(k.node_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(i32::MIN)
}
