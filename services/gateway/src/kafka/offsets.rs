//! ListOffsets: the earliest offset (-2), the latest (-1: the high watermark, or the last
//! stable offset for read_committed) or the first at or after a timestamp, per partition.

use std::collections::BTreeMap;

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
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
