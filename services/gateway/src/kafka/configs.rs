//! DescribeConfigs for topics (every config Sluice has, with its effective value and whether
//! the topic sets it or the default applies) and brokers (none of theirs are exposed),
//! IncrementalAlterConfigs for topics (Sluice's AlterTopicConfig), and DescribeCluster (the
//! gateways, as Metadata lists them).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
};
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_proto::v1::{AlterTopicConfigRequest, ConfigChange};

use super::{Kafka, error_of, errors, metadata};

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
                                    .with_read_only(false)
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

/// Each resource is altered on its own: one refused leaves the others applied, as in Kafka.
pub(super) async fn alter(k: &Kafka, r: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
    let validate_only = r.validate_only;
    let answers = r.resources.into_iter().map(|res| async move {
        let answer = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let refused = |code: i16, why: String| answer.clone().with_error_code(code).with_error_message(Some(s(&why)));
        match res.resource_type {
            TOPIC if !k.router.snapshot().topics.contains_key(res.resource_name.as_str()) => refused(
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{}' does not exist", res.resource_name.as_str()),
            ),
            // Nothing to change: Kafka accepts it as is.
            TOPIC if res.configs.is_empty() => answer,
            // Kafka refuses a key named twice in one resource rather than applying both.
            TOPIC if named_twice(&res.configs) => {
                refused(errors::INVALID_REQUEST, "a config key is named twice".into())
            }
            TOPIC => {
                let changes = res
                    .configs
                    .iter()
                    .map(|c| ConfigChange {
                        key: c.name.to_string(),
                        // Same numbers in both protocols; an unknown one is refused by the router.
                        op: i32::from(c.config_operation),
                        value: c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    })
                    .collect();
                let req = AlterTopicConfigRequest { topic: res.resource_name.to_string(), changes, validate_only };
                match k.router.alter_topic_config(req).await {
                    Ok(_) => answer,
                    Err(e) => refused(error_of(&e), e.to_string()),
                }
            }
            BROKER => refused(
                errors::INVALID_REQUEST,
                "gateway configs are set in each gateway's config file and environment".into(),
            ),
            other => refused(errors::INVALID_REQUEST, format!("resource type {other} has no configs here")),
        }
    });
    IncrementalAlterConfigsResponse::default().with_responses(futures_util::future::join_all(answers).await)
}

fn named_twice(configs: &[AlterableConfig]) -> bool {
    let mut keys: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
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
