//! `ResetOffsets`: moves a group's committed offsets (earliest, latest, an offset, a time);
//! refused while the group has members.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_core::settings::now_ms;
use sluice_proto::v1::*;

use crate::assignor::Tp;
use crate::store::Committed;
use crate::{Coordinator, validate_group_id};

pub(super) async fn handle(
    c: &Arc<Coordinator>,
    req: ResetOffsetsRequest,
) -> Result<ResetOffsetsResponse, SluiceError> {
    c.reset(req).await
}

impl Coordinator {
    /// The group, which must exist and have no members, for `action`.
    pub(crate) fn require_empty(&self, group_id: &str, action: &str) -> Result<(), SluiceError> {
        validate_group_id(group_id)?;
        let members = self
            .groups
            .read(group_id, |g| g.member_count())
            .ok_or_else(|| SluiceError::UnknownGroup(group_id.to_string()))?;
        if members > 0 {
            return Err(SluiceError::GroupNotEmpty {
                group: group_id.to_string(),
                members,
                action: action.to_string(),
            });
        }
        Ok(())
    }

    async fn reset(self: &Arc<Self>, r: ResetOffsetsRequest) -> Result<ResetOffsetsResponse, SluiceError> {
        self.require_empty(&r.group_id, "resetting offsets")?;
        let (epoch, store) = self.active()?;
        let (topic_id, count) = self
            .view
            .borrow()
            .topics
            .get(&r.topic)
            .map(|t| (t.topic_id, t.partitions.len() as u32))
            .ok_or_else(|| SluiceError::UnknownTopic(r.topic.clone()))?;
        let parts: Vec<u32> = if r.partitions.is_empty() { (0..count).collect() } else { r.partitions.clone() };
        if let Some(p) = parts.iter().find(|p| **p >= count) {
            return Err(SluiceError::UnknownPartition { topic: r.topic.clone(), partition: *p, count });
        }
        let ask = |spec: OffsetSpec, ts: i64| {
            let parts = parts.clone();
            let topic = r.topic.clone();
            let store = store.clone();
            async move {
                let v = store
                    .list_offsets(&topic, parts, spec, ts)
                    .await
                    .map_err(|e| SluiceError::NodeUnavailable(format!("cannot read the offsets of '{topic}': {e}")))?;
                let mut m = BTreeMap::new();
                for o in v {
                    if let Some(e) = o.error {
                        return Err(SluiceError::NodeUnavailable(e.message));
                    }
                    m.insert(o.partition, (o.offset, o.log_end_offset));
                }
                Ok::<_, SluiceError>(m)
            }
        };
        let targets: BTreeMap<u32, i64> = match r.offset {
            Some(n) => {
                let starts = ask(OffsetSpec::Earliest, 0).await?;
                let ends = ask(OffsetSpec::Latest, 0).await?;
                let mut m = BTreeMap::new();
                for p in &parts {
                    let (start, end) = (starts.get(p).map(|x| x.0).unwrap_or(0), ends.get(p).map(|x| x.0).unwrap_or(0));
                    if n < start || n > end {
                        return Err(SluiceError::OffsetOutOfRange {
                            topic: r.topic.clone(),
                            partition: *p,
                            offset: n,
                            start,
                            end,
                        });
                    }
                    m.insert(*p, n);
                }
                m
            }
            None => {
                let spec = OffsetSpec::try_from(r.spec).map_err(|_| {
                    SluiceError::InvalidRequest(format!(
                        "unknown offset spec {} (expected 0 latest, 1 earliest or 2 timestamp)",
                        r.spec
                    ))
                })?;
                ask(spec, r.timestamp_ms)
                    .await?
                    .into_iter()
                    .map(|(p, (o, end))| (p, if o >= 0 { o } else { end }))
                    .collect()
            }
        };
        let changes: Vec<(Tp, Option<Committed>)> = targets
            .iter()
            .map(|(p, o)| {
                let c = Committed {
                    offset: *o,
                    metadata: String::new(),
                    commit_time_ms: now_ms(),
                    generation: 0,
                    epoch,
                    topic_id,
                };
                ((r.topic.clone(), *p), Some(c))
            })
            .collect();
        // Checked again right before writing: a member may have joined meanwhile.
        self.require_empty(&r.group_id, "resetting offsets")?;
        store.write(&r.group_id, &changes).await?;
        let offsets = changes
            .iter()
            .map(|(tp, c)| CommittedOffset {
                topic: tp.0.clone(),
                partition: tp.1,
                offset: c.as_ref().map(|c| c.offset).unwrap_or(-1),
                metadata: String::new(),
                commit_time_ms: c.as_ref().map(|c| c.commit_time_ms).unwrap_or(0),
            })
            .collect();
        self.remember(&r.group_id, changes);
        Ok(ResetOffsetsResponse { offsets })
    }
}
