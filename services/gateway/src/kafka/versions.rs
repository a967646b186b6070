//! ApiVersions: the APIs this listener serves and their versions, flexible ones included.
//! Only versions whose every field is served are listed.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::errors;

/// Served APIs with their lowest and highest version.
const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    // 7 adds the max-timestamp query (-3), not served.
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    // KIP-848's consumer protocol; librdkafka asks for 1 exactly. ConsumerGroupDescribe is
    // not served: admin clients fall back to DescribeGroups, which describes these groups.
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // 9 is KIP-848's member epoch; classic members send their generation in the same field.
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    // 4 and later batch transactions for brokers; clients use 3 at most.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    // 5 is transaction version 2: the answer carries the producer's next epoch.
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::DescribeTransactions, 0, 0),
    // 2 adds a transactional id pattern (a Java regular expression), not served.
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    // 2 adds fenced brokers, which gateways never are; answered the same.
    (ApiKey::DescribeCluster, 0, 2),
];

/// The versions of `key` served, if it is.
pub(super) fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SERVED.iter().find(|(k, _, _)| *k == key).map(|(_, min, max)| (*min, *max))
}

fn list() -> Vec<ApiVersion> {
    SERVED
        .iter()
        .map(|(k, min, max)| {
            ApiVersion::default().with_api_key(*k as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect()
}

pub(super) fn handle(_r: ApiVersionsRequest) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(errors::NONE).with_api_keys(list())
}

/// The answer to an ApiVersions of a version not served.
pub(super) fn unsupported() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(errors::UNSUPPORTED_VERSION).with_api_keys(list())
}
