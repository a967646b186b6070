//! `DeleteGroup`: forgets a group and its committed offsets; refused while it has members.

use sluice_core::SluiceError;
use sluice_proto::v1::*;

use crate::Coordinator;
use crate::assignor::Tp;
use crate::registry::Host;
use crate::store::Committed;

pub(super) async fn handle(c: &Coordinator, req: DeleteGroupRequest) -> Result<DeleteGroupResponse, SluiceError> {
    c.delete(&req.group_id).await?;
    Ok(DeleteGroupResponse {})
}

impl Coordinator {
    async fn delete(&self, group_id: &str) -> Result<(), SluiceError> {
        self.require_empty(group_id, "deleting the group")?;
        let (_, store) = self.active()?;
        let tombstones: Vec<(Tp, Option<Committed>)> =
            self.groups.read(group_id, |g| g.offsets.keys().map(|tp| (tp.clone(), None)).collect()).unwrap_or_default();
        if !tombstones.is_empty() {
            store.write(group_id, &tombstones).await?;
        }
        // Forgotten unless a member joined meanwhile (its group keeps nothing committed).
        self.groups.update(group_id, |g| {
            if g.member_count() == 0 {
                g.offsets.clear();
            }
        });
        if self.groups.drop_if_idle(group_id) {
            self.mark(group_id);
        }
        Ok(())
    }
}
