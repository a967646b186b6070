//! `ListNodes`: the partition nodes alive in the metadata, and those only known from the
//! replicas they hold (down), with how many partitions each leads, holds, and lags on.

use std::collections::BTreeMap;

use sluice_proto::v1::{ListNodesRequest, ListNodesResponse, NodeDescription};

use crate::Router;

pub fn handle(gw: &Router, _req: ListNodesRequest) -> ListNodesResponse {
    let view = gw.snapshot();
    let mut nodes: BTreeMap<u64, NodeDescription> = view
        .nodes
        .values()
        .map(|n| (n.id, NodeDescription { id: n.id, addr: n.addr.clone(), alive: true, ..Default::default() }))
        .collect();
    for a in view.topics.values().flat_map(|t| t.partitions.iter()) {
        for r in &a.replicas {
            let d = nodes.entry(*r).or_insert_with(|| NodeDescription { id: *r, ..Default::default() });
            d.replica_partitions += 1;
            d.leader_partitions += u32::from(a.leader == *r);
            d.out_of_sync_partitions += u32::from(!a.isr.contains(r));
        }
    }
    ListNodesResponse { nodes: nodes.into_values().collect() }
}
