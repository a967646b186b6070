//! Produce: each partition's record batches go to its leader as they are, one Sluice
//! produce per topic, topics in parallel.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_proto::v1::{self, PartitionBatches};

use super::{Kafka, error_of, errors, kafka_error};

pub(super) async fn handle(k: &Kafka, r: ProduceRequest) -> ProduceResponse {
    let timeout_ms = r.timeout_ms.max(0) as u32;
    let acks = match r.acks {
        0 => v1::Acks::None,
        1 => v1::Acks::Leader,
        -1 => v1::Acks::All,
        _ => {
            // Kafka answers every partition with INVALID_REQUIRED_ACKS.
            let topics = r.topic_data.into_iter().map(|t| {
                let parts =
                    t.partition_data.iter().map(|p| partition(p.index).with_error_code(errors::INVALID_REQUIRED_ACKS));
                TopicProduceResponse::default().with_name(t.name).with_partition_responses(parts.collect())
            });
            return ProduceResponse::default().with_responses(topics.collect());
        }
    };
    let topics = r.topic_data.into_iter().map(|t| async move {
        let topic = t.name.0.as_str().to_string();
        let mut refused = Vec::new();
        let mut batches = Vec::new();
        for p in t.partition_data {
            match (u32::try_from(p.index), p.records) {
                (Ok(partition), Some(data)) => batches.push(PartitionBatches { partition, data }),
                (Ok(_), None) => refused.push((p.index, errors::CORRUPT_MESSAGE)),
                (Err(_), _) => refused.push((p.index, errors::UNKNOWN_TOPIC_OR_PARTITION)),
            }
        }
        let mut out: Vec<PartitionProduceResponse> =
            refused.into_iter().map(|(i, code)| partition(i).with_error_code(code)).collect();
        if !batches.is_empty() {
            let indexes: Vec<i32> = batches.iter().map(|b| b.partition as i32).collect();
            let req = v1::ProduceRequest {
                topic: topic.clone(),
                acks: acks as i32,
                batches,
                timeout_ms,
                ..Default::default()
            };
            match k.router.produce(req).await {
                Ok(resp) => match resp.error {
                    Some(e) => {
                        out.extend(indexes.iter().map(|i| partition(*i).with_error_code(kafka_error(e.sluice_code))))
                    }
                    None => out.extend(resp.partitions.iter().map(|p| {
                        let code = p.error.as_ref().map_or(errors::NONE, |e| kafka_error(e.sluice_code));
                        partition(p.partition as i32).with_error_code(code).with_base_offset(p.base_offset)
                    })),
                },
                Err(e) => out.extend(indexes.iter().map(|i| partition(*i).with_error_code(error_of(&e)))),
            }
        }
        TopicProduceResponse::default().with_name(t.name).with_partition_responses(out)
    });
    ProduceResponse::default().with_responses(futures_util::future::join_all(topics).await)
}

fn partition(index: i32) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}
