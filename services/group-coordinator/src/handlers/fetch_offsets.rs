//! `FetchOffsets`: a group's committed offsets, from the cache loaded from the offsets topic;
//! with `require_stable`, none while offsets of the group are pending in a transaction.

use sluice_core::SluiceError;
use sluice_proto::v1::*;

use crate::{Coordinator, validate_group_id};

pub(super) fn handle(c: &Coordinator, r: FetchOffsetsRequest) -> Result<FetchOffsetsResponse, SluiceError> {
    validate_group_id(&r.group_id)?;
    c.active()?;
    if r.require_stable
        && let Some((topic, partition)) = c.txns.pending_offset(&r.group_id, &r.topic, &r.partitions)
    {
        return Err(SluiceError::UnstableOffsetCommit { group: r.group_id, topic, partition });
    }
    let offsets = c
        .groups
        .read(&r.group_id, |g| {
            g.offsets
                .iter()
                .filter(|(tp, _)| r.topic.is_empty() || tp.0 == r.topic)
                .filter(|(tp, _)| r.partitions.is_empty() || r.partitions.contains(&tp.1))
                .map(|(tp, c)| CommittedOffset {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: c.offset,
                    metadata: c.metadata.clone(),
                    commit_time_ms: c.commit_time_ms,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(FetchOffsetsResponse { offsets })
}
