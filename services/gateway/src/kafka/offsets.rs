//! ListOffsets: the earliest offset (-2), the latest (-1: the high watermark, or the last
//! stable offset for read_committed) or the first at or after a timestamp, per partition;
//! OffsetForLeaderEpoch: where a leader epoch ends in a partition's log, which consumers ask
//! after a leader change to find out whether the log they read was truncated; and
//! DescribeProducers.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use sluice_proto::v1::{IsolationLevel, OffsetSpec};

use super::{Kafka, error_of, errors, kafka_error};

pub(super) async fn handle(k: &Kafka, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let isolation = isolation(r.isolation_level);
    let topics = r.topics.into_iter().map(|t| async move {
        let topic = t.name.0.as_str().to_string();
        // One lookup per kind of query.
        let mut queries: BTreeMap<i64, Vec<i32>> = BTreeMap::new();
        for p in &t.partitions {
            queries.entry(p.timestamp).or_default().push(p.partition_index);
        }
        let mut out = Vec::new();
        for (timestamp, partitions) in queries {
            let (spec, ts) = match timestamp {
                -1 => (OffsetSpec::Latest, 0),
                -2 => (OffsetSpec::Earliest, 0),
                t if t >= 0 => (OffsetSpec::Timestamp, t),
                _ => {
                    // -3 (max timestamp) and others are not served.
                    out.extend(partitions.iter().map(|i| partition(*i).with_error_code(errors::INVALID_REQUEST)));
                    continue;
                }
            };
            let (valid, invalid): (Vec<i32>, Vec<i32>) = partitions.into_iter().partition(|i| *i >= 0);
            out.extend(invalid.iter().map(|i| partition(*i).with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)));
            if valid.is_empty() {
                // An empty list would mean every partition to the router.
                continue;
            }
            let wanted = valid.iter().map(|i| *i as u32).collect();
            match k.router.offsets(&topic, wanted, spec, ts, isolation).await {
                Ok(offsets) => out.extend(offsets.iter().map(|o| match &o.error {
                    Some(e) => partition(o.partition as i32).with_error_code(kafka_error(e.sluice_code)),
                    // No record at or after the timestamp: Kafka answers -1 too.
                    None => partition(o.partition as i32).with_offset(o.offset).with_timestamp(o.timestamp_ms),
                })),
                Err(e) => out.extend(valid.iter().map(|i| partition(*i).with_error_code(error_of(&e)))),
            }
        }
        ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(out)
    });
    ListOffsetsResponse::default().with_topics(futures_util::future::join_all(topics).await)
}

/// Kafka's isolation level byte.
pub(super) fn isolation(level: i8) -> IsolationLevel {
    if level == 1 { IsolationLevel::ReadCommitted } else { IsolationLevel::ReadUncommitted }
}

fn partition(index: i32) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_timestamp(-1)
        .with_offset(-1)
        .with_leader_epoch(-1)
}

/// A client's current leader epoch is checked as Kafka checks it: older than the partition's
/// is FENCED_LEADER_EPOCH (its metadata is stale), newer is UNKNOWN_LEADER_EPOCH (this
/// gateway's view is behind); both make the client refresh metadata and ask again.
pub(super) async fn epoch_end(k: &Kafka, r: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let topics = r.topics.into_iter().map(|t| async move {
        let topic = t.topic.0.as_str().to_string();
        let partitions = t.partitions.into_iter().map(|p| {
            let topic = topic.as_str();
            async move {
                let answer =
                    EpochEndOffset::default().with_partition(p.partition).with_leader_epoch(-1).with_end_offset(-1);
                if p.partition < 0 {
                    return answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION);
                }
                let view = k.router.snapshot();
                let leader_epoch = view.topics.get(topic).and_then(|t| t.partitions.get(p.partition as usize));
                match (p.current_leader_epoch, leader_epoch.map(|a| a.leader_epoch)) {
                    (c, Some(e)) if c >= 0 && (c as u64) < e => {
                        return answer.with_error_code(errors::FENCED_LEADER_EPOCH);
                    }
                    (c, Some(e)) if c >= 0 && (c as u64) > e => {
                        return answer.with_error_code(errors::UNKNOWN_LEADER_EPOCH);
                    }
                    _ => {}
                }
                match sluice_router::offsets::epoch_end(&k.router, topic, p.partition as u32, p.leader_epoch).await {
                    Ok(e) => answer.with_leader_epoch(e.epoch).with_end_offset(e.end_offset),
                    Err(e) => answer.with_error_code(kafka_error(e.sluice_code)),
                }
            }
        });
        OffsetForLeaderTopicResult::default()
            .with_topic(t.topic)
            .with_partitions(futures_util::future::join_all(partitions).await)
    });
    OffsetForLeaderEpochResponse::default().with_topics(futures_util::future::join_all(topics).await)
}

pub(super) async fn describe_producers(k: &Kafka, r: DescribeProducersRequest) -> DescribeProducersResponse {
    let topics = r.topics.into_iter().map(|t| async move {
        let answer = |index: i32| PartitionResponse::default().with_partition_index(index);
        let (valid, invalid): (Vec<i32>, Vec<i32>) = t.partition_indexes.iter().partition(|i| **i >= 0);
        let mut out: Vec<PartitionResponse> =
            invalid.into_iter().map(|i| answer(i).with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)).collect();
        if !valid.is_empty() {
            let req = sluice_proto::v1::DescribeProducersRequest {
                topic: t.name.0.to_string(),
                partitions: valid.iter().map(|i| *i as u32).collect(),
            };
            match k.router.describe_producers(req).await {
                Ok(resp) => out.extend(resp.partitions.into_iter().map(|p| {
                    match p.error {
                        Some(e) => answer(p.partition as i32)
                            .with_error_code(kafka_error(e.sluice_code))
                            .with_error_message(Some(StrBytes::from_string(e.message))),
                        None => answer(p.partition as i32).with_active_producers(
                            p.producers
                                .into_iter()
                                .map(|s| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(s.producer_id))
                                        .with_producer_epoch(s.producer_epoch)
                                        .with_last_sequence(s.last_sequence)
                                        .with_last_timestamp(s.last_timestamp_ms)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(s.txn_start_offset)
                                })
                                .collect(),
                        ),
                    }
                })),
                Err(e) => out.extend(valid.iter().map(|i| {
                    answer(*i)
                        .with_error_code(error_of(&e))
                        .with_error_message(Some(StrBytes::from_string(e.to_string())))
                })),
            }
        }
        TopicResponse::default().with_name(t.name).with_partitions(out)
    });
    DescribeProducersResponse::default().with_topics(futures_util::future::join_all(topics).await)
}
