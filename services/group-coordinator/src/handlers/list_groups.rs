//! `ListGroups`: every group this coordinator knows, with its state and member count.

use sluice_core::SluiceError;
use sluice_proto::v1::*;

use crate::Coordinator;

pub(super) fn handle(c: &Coordinator, _r: ListGroupsRequest) -> Result<ListGroupsResponse, SluiceError> {
    c.active()?;
    let groups = c
        .groups
        .cells()
        .iter()
        .map(|cell| {
            let slot = cell.lock();
            let g = &slot.group;
            GroupSummary {
                group_id: g.id.clone(),
                state: g.state().to_string(),
                members: g.member_count() as u32,
                protocol_type: g.classic.protocol_type.clone(),
            }
        })
        .collect();
    Ok(ListGroupsResponse { groups })
}
