//! `DescribeTopic`: assignments from the metadata, offsets from the leaders.

use std::collections::BTreeMap;

use sluice_core::SluiceError;
use sluice_meta::TopicMeta;
use sluice_proto::v1::{DescribeTopicRequest, DescribeTopicResponse, PartitionDescription, TopicDescription};

use crate::Router;
use crate::offsets::query_offsets;

#[tracing::instrument(skip_all, fields(topic = %req.name))]
pub async fn handle(gw: &Router, req: DescribeTopicRequest) -> Result<DescribeTopicResponse, SluiceError> {
    let t = crate::route::topic(&gw.snapshot(), &req.name)?;
    Ok(DescribeTopicResponse { topic: Some(describe(gw, &t).await) })
}

/// The full description of `t`, asking each leader for its offsets.
pub async fn describe(gw: &Router, t: &TopicMeta) -> TopicDescription {
    let all: Vec<u32> = (0..t.partitions.len() as u32).collect();
    let offsets: BTreeMap<u32, _> = query_offsets(gw, t, &all, None, false).await.into_iter().collect();
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let p = p as u32;
            let mut d = PartitionDescription {
                partition: p,
                leader: a.leader,
                replicas: a.replicas.clone(),
                leader_epoch: a.leader_epoch,
                log_start_offset: -1,
                log_end_offset: -1,
                high_watermark: -1,
                error: None,
                isr: a.isr.clone(),
                last_stable_offset: -1,
            };
            match offsets.get(&p) {
                Some(Ok(o)) => {
                    d.log_start_offset = o.log_start_offset;
                    d.log_end_offset = o.log_end_offset;
                    d.high_watermark = o.high_watermark;
                    d.last_stable_offset = o.last_stable_offset;
                }
                Some(Err(e)) => d.error = Some(e.clone()),
                None => {}
            }
            d
        })
        .collect();
    TopicDescription {
        name: t.name.clone(),
        topic_id: t.topic_id,
        replication_factor: t.replication_factor,
        config: t.config().to_map().into_iter().collect(),
        partitions,
    }
}
