//! ConsumerGroupHeartbeat: Kafka's consumer group protocol (KIP-848, `group.protocol=consumer`
//! in the Java client 3.7+ and librdkafka 2.4+), run by the group coordinator's
//! `ConsumerHeartbeat`: the coordinator assigns, members heartbeat what they own and are
//! answered what they may use. Topics travel by id (Sluice's topic id in the low half of the
//! UUID, as Metadata gives it).

use std::time::Duration;

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_proto::v1;
use sluice_proto::v1::groups_client::GroupsClient;

use super::{Client, Kafka, call_coordinator, errors, kafka_error, topic_uuid};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The codes these clients act on; any other is final to them (the consumer stops), so
/// what the coordinator may answer is narrowed to these.
fn heartbeat_error(code: i16) -> i16 {
    use errors::*;
    match code {
        NONE
        | COORDINATOR_LOAD_IN_PROGRESS
        | COORDINATOR_NOT_AVAILABLE
        | NOT_COORDINATOR
        | UNKNOWN_MEMBER_ID
        | FENCED_MEMBER_EPOCH
        | INVALID_REQUEST
        | GROUP_MAX_SIZE_REACHED
        | FENCED_INSTANCE_ID
        | UNRELEASED_INSTANCE_ID
        | UNSUPPORTED_ASSIGNOR
        | GROUP_ID_NOT_FOUND => code,
        INVALID_GROUP_ID => INVALID_REQUEST,
        // A group of classic members: Kafka (without migration) refuses the same way.
        INCONSISTENT_GROUP_PROTOCOL => GROUP_ID_NOT_FOUND,
        // Everything else is a fault on this side: the client finds the coordinator again.
        _ => COORDINATOR_NOT_AVAILABLE,
    }
}

pub(super) async fn heartbeat(
    k: &Kafka,
    r: ConsumerGroupHeartbeatRequest,
    client: &Client,
) -> ConsumerGroupHeartbeatResponse {
    let answer = |code: i16, message: Option<String>| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
            .with_member_id(Some(r.member_id.clone()))
            .with_member_epoch(r.member_epoch)
    };
    let req = v1::ConsumerHeartbeatRequest {
        group_id: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        member_epoch: r.member_epoch,
        instance_id: r.instance_id.as_ref().map(|i| i.to_string()),
        rebalance_timeout_ms: r.rebalance_timeout_ms,
        subscribed_topics: r
            .subscribed_topic_names
            .as_ref()
            .map(|names| v1::TopicNames { names: names.iter().map(|n| n.0.to_string()).collect() }),
        server_assignor: r.server_assignor.as_ref().map(|a| a.to_string()),
        owned: r.topic_partitions.as_ref().map(|tps| v1::TopicPartitionsList {
            topics: tps
                .iter()
                .map(|t| {
                    let (high, low) = t.topic_id.as_u64_pair();
                    v1::TopicPartitions {
                        topic: String::new(),
                        // An id Sluice never gave names no topic (0).
                        topic_id: if high == 0 { low } else { 0 },
                        partitions: t.partitions.iter().filter_map(|p| u32::try_from(*p).ok()).collect(),
                    }
                })
                .collect(),
        }),
        client_id: client.id.clone(),
        client_host: client.host.clone(),
        subscribed_topic_regex: r.subscribed_topic_regex.as_ref().map(|re| re.to_string()),
    };
    let resp =
        match call_coordinator(
            k,
            TIMEOUT,
            req,
            |ch, req| async move { GroupsClient::new(ch).consumer_heartbeat(req).await },
        )
        .await
        {
            Ok(resp) => resp,
            Err(code) => return answer(heartbeat_error(code), None),
        };
    if let Some(e) = resp.error {
        return answer(heartbeat_error(kafka_error(e.sluice_code)), Some(e.message));
    }
    let assignment = resp.assignment.map(|a| {
        Assignment::default().with_topic_partitions(
            a.topics
                .into_iter()
                .map(|t| {
                    TopicPartitions::default()
                        .with_topic_id(topic_uuid(t.topic_id))
                        .with_partitions(t.partitions.into_iter().map(|p| p as i32).collect())
                })
                .collect(),
        )
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(StrBytes::from_string(resp.member_id)))
        .with_member_epoch(resp.member_epoch)
        .with_heartbeat_interval_ms(i32::try_from(resp.heartbeat_interval_ms).unwrap_or(i32::MAX))
        .with_assignment(assignment)
}
