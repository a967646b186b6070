//! `ElectLeaders`: preferred leader election on demand. For each partition whose preferred
//! replica (the first) is alive, in sync and not leading, a compare-and-set makes it leader
//! at the next epoch; the old leader sees the new epoch and steps down to follow.

use sluice_core::SluiceError;
use sluice_meta::PartitionState;
use sluice_proto::v1::{ElectLeadersRequest, ElectLeadersResponse, ElectionResult};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.topic))]
pub async fn handle(gw: &Router, req: ElectLeadersRequest) -> Result<ElectLeadersResponse, SluiceError> {
    let view = gw.snapshot();
    let topics: Vec<_> = if req.topic.is_empty() {
        view.topics.values().cloned().collect()
    } else {
        vec![crate::route::topic(&view, &req.topic)?]
    };
    let mut results = Vec::new();
    for t in topics {
        for (p, a) in t.partitions.iter().enumerate() {
            let p = p as u32;
            let Some(&preferred) = a.replicas.first() else { continue };
            let mut r = ElectionResult {
                topic: t.name.clone(),
                partition: p,
                leader: a.leader,
                leader_epoch: a.leader_epoch,
                error: None,
            };
            if a.leader == preferred {
                results.push(r);
                continue;
            }
            let refusal = if !view.nodes.contains_key(&preferred) {
                Some(format!("preferred replica {preferred} is not alive"))
            } else if !a.isr.contains(&preferred) {
                Some(format!("preferred replica {preferred} is not in sync (in-sync set {:?})", a.isr))
            } else {
                None
            };
            if let Some(why) = refusal {
                r.error = Some(SluiceError::NodeUnavailable(why).to_proto());
                results.push(r);
                continue;
            }
            let next = PartitionState { leader: preferred, leader_epoch: a.leader_epoch + 1, ..a.state(t.topic_id) };
            match gw.meta.update_partition(&t, p, a, next).await {
                Ok(Some(_)) => {
                    r.leader = preferred;
                    r.leader_epoch = a.leader_epoch + 1;
                }
                Ok(None) => {
                    r.error =
                        Some(SluiceError::NotLeader { topic: t.name.clone(), partition: p, node: preferred }.to_proto())
                }
                Err(e) => r.error = Some(SluiceError::from(e).to_proto()),
            }
            results.push(r);
        }
    }
    Ok(ElectLeadersResponse { results })
}
