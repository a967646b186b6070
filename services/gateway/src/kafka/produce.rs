//! Produce: each partition's record batches go to its leader as they are, one Sluice
//! produce per topic; a connection's requests are dispatched in arrival order and answered
//! concurrently.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::partitioner::StickyPartitioner;
use sluice_proto::v1::{self, PartitionBatches};
use sluice_router::produce::{self, Unanswered};
use tokio::sync::OwnedMutexGuard;

use super::{Kafka, error_of, errors, kafka_error};

/// A connection's produce state: its requests are dispatched to the leaders in the order
/// they arrived (whoever holds this, in turn), so that pipelined requests of one producer
/// keep their order per partition, retries through leader changes included.
pub(crate) struct Ordered {
    sticky: StickyPartitioner,
    /// Per topic, the partition batches of this connection not answered yet.
    order: HashMap<String, Arc<Unanswered>>,
}

impl Ordered {
    pub(crate) fn new(batch_bytes: usize) -> Self {
        Self { sticky: StickyPartitioner::new(batch_bytes, rand_seed()), order: HashMap::new() }
    }
}

/// Dispatches `r` while holding the connection's turn, then waits for the answers without it.
pub(super) async fn handle(k: &Kafka, r: ProduceRequest, mut turn: OwnedMutexGuard<Ordered>) -> ProduceResponse {
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
    let mut pending = Vec::with_capacity(r.topic_data.len());
    for t in r.topic_data {
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
        let out: Vec<PartitionProduceResponse> =
            refused.into_iter().map(|(i, code)| partition(i).with_error_code(code)).collect();
        let indexes: Vec<i32> = batches.iter().map(|b| b.partition as i32).collect();
        let sent = if batches.is_empty() {
            None
        } else {
            let req = v1::ProduceRequest {
                topic: topic.clone(),
                acks: acks as i32,
                batches,
                timeout_ms,
                ..Default::default()
            };
            let state = &mut *turn;
            let order = state.order.entry(topic).or_default().clone();
            // Returns once the batches are on their way to the leaders, in this order.
            Some(produce::dispatch(&k.router, req, &mut state.sticky, &order).await)
        };
        pending.push((t.name, out, indexes, sent));
    }
    // The next request of the connection may be dispatched while these are answered.
    drop(turn);
    let topics = pending.into_iter().map(|(name, mut out, indexes, sent)| async move {
        match sent {
            None => {}
            Some(Ok(answer)) => {
                let resp = answer.await;
                match resp.error {
                    Some(e) => {
                        out.extend(indexes.iter().map(|i| partition(*i).with_error_code(kafka_error(e.sluice_code))))
                    }
                    None => out.extend(resp.partitions.iter().map(|p| {
                        let code = p.error.as_ref().map_or(errors::NONE, |e| kafka_error(e.sluice_code));
                        partition(p.partition as i32).with_error_code(code).with_base_offset(p.base_offset)
                    })),
                }
            }
            Some(Err(e)) => out.extend(indexes.iter().map(|i| partition(*i).with_error_code(error_of(&e)))),
        }
        TopicProduceResponse::default().with_name(name).with_partition_responses(out)
    });
    ProduceResponse::default().with_responses(futures_util::future::join_all(topics).await)
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn partition(index: i32) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}
