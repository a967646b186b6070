//! `CommitOffsets`, and the commits members send on their streams: validated, fenced by the
//! group, written durably to the offsets topic, then cached.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_core::settings::now_ms;
use sluice_proto::v1::*;

use crate::assignor::Tp;
use crate::store::{Committed, MAX_METADATA};
use crate::{Coordinator, validate_group_id};

pub(super) async fn handle(
    c: &Arc<Coordinator>,
    req: CommitOffsetsRequest,
) -> Result<CommitOffsetsResponse, SluiceError> {
    c.commit(None, req).await
}

impl Coordinator {
    /// Validates and commits offsets for `member` (or, outside a membership stream, for a
    /// group without members); answers per partition, or fails the whole request.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        member: Option<&str>,
        req: CommitOffsetsRequest,
    ) -> Result<CommitOffsetsResponse, SluiceError> {
        let id = req.id;
        validate_group_id(&req.group_id)?;
        let (epoch, store) = self.active()?;
        let topics: BTreeMap<String, (u64, u32)> = {
            let view = self.view.borrow();
            req.offsets
                .iter()
                .filter_map(|o| {
                    view.topics.get(&o.topic).map(|t| (o.topic.clone(), (t.topic_id, t.partitions.len() as u32)))
                })
                .collect()
        };
        let mut results = Vec::with_capacity(req.offsets.len());
        let mut accepted: Vec<(Tp, Option<Committed>)> = Vec::new();
        let mut slots = Vec::new();
        let cell = self.groups.get(&req.group_id);
        {
            let mut slot = cell.as_ref().map(|c| c.lock());
            let group = slot.as_deref().map(|s| &s.group);
            // Outside a stream, a commit names a classic member (checked per partition below)
            // or none, which only a group without members takes.
            if member.is_none()
                && req.member_id.is_empty()
                && let Some(g) = group.filter(|g| g.member_count() > 0)
            {
                return Err(SluiceError::GroupNotEmpty {
                    group: req.group_id.clone(),
                    members: g.member_count(),
                    action: "committing without membership".into(),
                });
            }
            let classic = (member.is_none() && !req.member_id.is_empty()).then_some(req.member_id.as_str());
            for o in &req.offsets {
                let tp = (o.topic.clone(), o.partition);
                let topic = topics.get(&o.topic);
                let check = if o.offset < 0 {
                    Err(SluiceError::InvalidRequest(format!("offset {} is negative", o.offset)))
                } else if let Some((_, count)) = topic.filter(|(_, count)| o.partition >= *count) {
                    Err(SluiceError::UnknownPartition { topic: o.topic.clone(), partition: o.partition, count: *count })
                } else if topic.is_none() {
                    Err(SluiceError::UnknownTopic(o.topic.clone()))
                } else if o.metadata.len() > MAX_METADATA {
                    Err(SluiceError::InvalidRequest(format!(
                        "metadata of {} bytes is longer than {MAX_METADATA}",
                        o.metadata.len()
                    )))
                } else if let Some(m) = member.or(classic) {
                    match group {
                        Some(g) => g.check_commit(m, req.generation, &tp),
                        None => Err(SluiceError::UnknownMember { group: req.group_id.clone(), member: m.to_string() }),
                    }
                } else {
                    Ok(())
                };
                match check {
                    Ok(()) => {
                        let generation = if member.or(classic).is_some() { req.generation } else { 0 };
                        let c = Committed {
                            offset: o.offset,
                            metadata: o.metadata.clone(),
                            commit_time_ms: now_ms(),
                            generation,
                            epoch,
                            topic_id: topic.map_or(0, |t| t.0),
                        };
                        slots.push(results.len());
                        accepted.push((tp.clone(), Some(c)));
                        results.push(PartitionCommitResult { topic: tp.0, partition: tp.1, error: None });
                    }
                    Err(e) => {
                        results.push(PartitionCommitResult { topic: tp.0, partition: tp.1, error: Some(e.to_proto()) })
                    }
                }
            }
            // The member is not expired while its commit is written (see Member).
            if let Some(m) = member.or(classic).filter(|_| !accepted.is_empty())
                && let Some(x) = slot.as_deref_mut().and_then(|s| s.group.members.get_mut(m))
            {
                x.commits_in_flight += 1;
            }
        }
        if accepted.is_empty() {
            return Ok(CommitOffsetsResponse { id, results, error: None });
        }
        match store.write(&req.group_id, &accepted).await {
            Ok(()) => self.remember(&req.group_id, accepted),
            Err(e) => {
                for i in slots {
                    results[i].error = Some(e.to_proto());
                }
            }
        }
        // Stream and consumer-protocol members (classic ones are not in `members`).
        let committer = member.or((!req.member_id.is_empty()).then_some(req.member_id.as_str()));
        if let Some(m) = committer {
            self.groups.update(&req.group_id, |g| {
                if let Some(x) = g.members.get_mut(m) {
                    x.commits_in_flight = x.commits_in_flight.saturating_sub(1);
                    // Alive all along: its heartbeats waited on the stream behind this write,
                    // which may have outlasted its session timeout.
                    x.last_seen = tokio::time::Instant::now();
                }
            });
        }
        Ok(CommitOffsetsResponse { id, results, error: None })
    }

    /// Applies written changes to the cache.
    pub(crate) fn remember(self: &Arc<Self>, group: &str, changes: Vec<(Tp, Option<Committed>)>) {
        // The ids of just these topics now, not a map of every topic per commit.
        let live: Vec<Option<u64>> = {
            let view = self.view.borrow();
            changes.iter().map(|(tp, _)| view.topics.get(&tp.0).map(|t| t.topic_id)).collect()
        };
        // Refused only when the role was lost meanwhile: the successor reads the topic.
        let _ = self.groups.with_group(self, group, |g| {
            for ((tp, c), live) in changes.into_iter().zip(live) {
                match c {
                    // Unless its topic was deleted while it was being written.
                    Some(c) if c.is_for(live) => {
                        g.offsets.insert(tp, c);
                    }
                    Some(_) => {}
                    None => {
                        g.offsets.remove(&tp);
                    }
                }
            }
        });
    }
}
