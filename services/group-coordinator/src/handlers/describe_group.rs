//! `DescribeGroup`: members, their assignment, and per partition the committed offset, log
//! end and lag.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::SluiceError;
use sluice_core::topic::group_by_topic;
use sluice_proto::v1::*;

use crate::assignor::Tp;
use crate::registry::Host;
use crate::{Coordinator, validate_group_id};

pub(super) async fn handle(c: &Coordinator, req: DescribeGroupRequest) -> Result<DescribeGroupResponse, SluiceError> {
    let (mut resp, topics) = c.describe(&req.group_id)?;
    c.add_lag(&mut resp, topics).await;
    Ok(resp)
}

impl Coordinator {
    /// The group as it is now, and the topics it involves (subscribed or committed to).
    pub(crate) fn describe(&self, group_id: &str) -> Result<(DescribeGroupResponse, BTreeSet<String>), SluiceError> {
        validate_group_id(group_id)?;
        let (epoch, _) = self.active()?;
        let counts = self.partition_counts();
        let cell = self.groups.get(group_id).ok_or_else(|| SluiceError::UnknownGroup(group_id.to_string()))?;
        let slot = cell.lock();
        let g = &slot.group;
        let mut owner: BTreeMap<&Tp, &str> = BTreeMap::new();
        let members = g
            .members
            .values()
            .map(|m| {
                for tp in m.held.keys() {
                    owner.insert(tp, &m.id);
                }
                GroupMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    assigned: group_by_topic(m.held.keys()),
                    revoking: group_by_topic(m.revoking()),
                    generation: m.generation,
                    connected: match &m.kafka {
                        Some(k) => !k.static_left,
                        None => m.conn.is_some(),
                    },
                    client_host: m.kafka.as_ref().map(|k| k.client_host.clone()).unwrap_or_default(),
                    kind: if m.kafka.is_some() { "consumer" } else { "stream" }.to_string(),
                    ..Default::default()
                }
            })
            .chain(g.classic.members.values().map(|m| GroupMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                generation: g.generation,
                connected: true,
                metadata: m.metadata(&g.classic.protocol),
                assignment: m.assignment.clone(),
                client_host: m.client_host.clone(),
                kind: "classic".to_string(),
                ..Default::default()
            }))
            .collect();
        let topics: BTreeSet<String> = g
            .members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .chain(g.offsets.keys().map(|tp| tp.0.clone()))
            .collect();
        let mut tps: BTreeSet<Tp> = g.offsets.keys().cloned().collect();
        for t in &topics {
            for p in 0..counts.get(t).copied().unwrap_or(0) {
                tps.insert((t.clone(), p));
            }
        }
        let partitions = tps
            .iter()
            .map(|tp| {
                let c = g.offsets.get(tp);
                GroupPartition {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    committed: c.map(|c| c.offset).unwrap_or(-1),
                    log_end: -1,
                    lag: -1,
                    member_id: owner.get(tp).map(|s| s.to_string()).unwrap_or_default(),
                    metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let resp = DescribeGroupResponse {
            group_id: g.id.clone(),
            state: g.state().to_string(),
            assignor: if g.classic.protocol_type.is_empty() {
                g.assignor.name().to_string()
            } else {
                g.classic.protocol.clone()
            },
            generation: g.generation,
            members,
            partitions,
            coordinator: self.addr.clone(),
            coordinator_epoch: epoch,
            protocol_type: g.classic.protocol_type.clone(),
        };
        Ok((resp, topics))
    }

    /// Fills in log ends and lag from the partition leaders' high watermarks.
    pub(crate) async fn add_lag(&self, resp: &mut DescribeGroupResponse, topics: BTreeSet<String>) {
        let Ok((_, store)) = self.active() else { return };
        for t in topics {
            let Ok(ends) = store.list_offsets(&t, vec![], OffsetSpec::Latest, 0).await else { continue };
            let ends: BTreeMap<u32, i64> =
                ends.into_iter().filter(|e| e.error.is_none()).map(|e| (e.partition, e.offset)).collect();
            for p in resp.partitions.iter_mut().filter(|p| p.topic == t) {
                if let Some(end) = ends.get(&p.partition) {
                    p.log_end = *end;
                    if p.committed >= 0 {
                        p.lag = (end - p.committed).max(0);
                    }
                }
            }
        }
    }
}
