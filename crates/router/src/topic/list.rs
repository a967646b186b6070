//! `ListTopics`.

use sluice_proto::v1::{ListTopicsRequest, ListTopicsResponse, TopicSummary};

use crate::Router;

pub fn handle(gw: &Router, _req: ListTopicsRequest) -> ListTopicsResponse {
    let view = gw.snapshot();
    let topics = view
        .topics
        .values()
        .map(|t| TopicSummary {
            name: t.name.clone(),
            partitions: t.partitions.len() as u32,
            replication_factor: t.replication_factor,
        })
        .collect();
    ListTopicsResponse { topics }
}
