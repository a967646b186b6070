//! `ListNodes`: the partition nodes registered (alive) in the metadata.

use sluice_proto::v1::{ListNodesRequest, ListNodesResponse, NodeDescription};

use crate::Gateway;

pub fn handle(gw: &Gateway, _req: ListNodesRequest) -> ListNodesResponse {
    let view = gw.snapshot();
    let nodes = view.nodes.values().map(|n| NodeDescription { id: n.id, addr: n.addr.clone(), alive: true }).collect();
    ListNodesResponse { nodes }
}
