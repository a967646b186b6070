//! `ConsumerHeartbeat`: Kafka's consumer group protocol (KIP-848) for the gateways' Kafka
//! listeners. A member joins with epoch 0, then heartbeats with the epoch it was given,
//! reporting the partitions it owns; each answer carries its epoch and, when it changed, the
//! set it may use (see [`crate::group::Group::consumer_answer`]). The assignment is the
//! coordinator's, as for stream members.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_proto::v1::*;
use tokio::time::Instant;

use crate::assignor::{Assignor, Tp};
use crate::group::{ConsumerJoin, ConsumerUpdate};
use crate::{Coordinator, validate_group_id};

/// Longest member or instance id accepted.
const MAX_ID: usize = 255;
/// Most topics one member may subscribe to.
const MAX_TOPICS: usize = 10_000;

impl Coordinator {
    pub(crate) fn consumer_heartbeat(
        self: &Arc<Self>,
        r: ConsumerHeartbeatRequest,
    ) -> Result<ConsumerHeartbeatResponse, SluiceError> {
        validate_group_id(&r.group_id)?;
        check(&r)?;
        self.active()?;
        let interval = u32::try_from(self.settings.consumer_heartbeat_interval_ms).unwrap_or(u32::MAX);
        let answer = |member_id: String, member_epoch: i32, error: Option<SluiceError>| ConsumerHeartbeatResponse {
            error: error.map(|e| e.to_proto()),
            member_id,
            member_epoch,
            heartbeat_interval_ms: interval,
            assignment: None,
        };
        let assignor = match r.server_assignor.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => Some(Assignor::parse(a).ok_or_else(|| SluiceError::UnsupportedAssignor(a.to_string()))?),
            None => None,
        };
        let topics: Option<BTreeSet<String>> = r.subscribed_topics.as_ref().map(|t| t.names.iter().cloned().collect());
        let rebalance = (r.rebalance_timeout_ms > 0).then(|| Duration::from_millis(r.rebalance_timeout_ms as u64));
        let owned = r.owned.as_ref().map(|o| self.partitions_named(&o.topics));
        let group = r.group_id.clone();
        let member = r.member_id.clone();
        match r.member_epoch {
            -1 | -2 => {
                let left =
                    self.groups.update(&group, |g| g.consumer_leave(&member, r.member_epoch == -2)).unwrap_or_else(
                        || Err(SluiceError::UnknownMember { group: group.clone(), member: member.clone() }),
                    );
                // A member whose leave is repeated (or that the coordinator lost) is gone
                // either way: not an error to a client leaving.
                if let Err(e) = left {
                    tracing::debug!(group = %group, member = %member, error = %e, "leave of an unknown member");
                }
                if self.groups.drop_if_idle(&group) {
                    crate::registry::Host::mark(self.as_ref(), &group);
                } else {
                    // Its partitions go to the others at once.
                    self.groups.with_group(self, &group, |_| ())?;
                }
                Ok(answer(member, r.member_epoch, None))
            }
            0 => {
                let spec = ConsumerJoin {
                    member_id: member,
                    instance_id: r.instance_id.clone().unwrap_or_default(),
                    client_id: r.client_id.chars().take(MAX_ID).collect(),
                    client_host: r.client_host.clone(),
                    topics: topics.unwrap_or_default(),
                    assignor: assignor.unwrap_or(Assignor::Sticky),
                    session_timeout: Duration::from_millis(self.settings.consumer_session_timeout_ms),
                    rebalance_timeout: rebalance.unwrap_or(Duration::from_millis(self.settings.rebalance_timeout_ms)),
                };
                let now = Instant::now();
                let joined = self.groups.with_group_then(
                    self,
                    &group,
                    |g| g.consumer_join(spec, now),
                    |g, id| id.map(|id| (g.consumer_answer(&id, true, now), id)),
                )?;
                match joined {
                    Ok((Some((epoch, set)), id)) => Ok(self.with_assignment(answer(id, epoch, None), set)),
                    Ok((None, id)) => Err(SluiceError::Internal(format!("member '{id}' vanished while joining"))),
                    Err(e) => Ok(answer(r.member_id, 0, Some(e))),
                }
            }
            epoch => {
                // Every field given: the member (re)starts talking to this coordinator and is
                // told its whole assignment.
                let full = r.rebalance_timeout_ms != -1 && r.subscribed_topics.is_some() && r.owned.is_some();
                let update = ConsumerUpdate { topics, assignor, rebalance_timeout: rebalance, owned };
                let instance = r.instance_id.as_deref();
                let beat = self.groups.update(&group, |g| g.members.contains_key(&member));
                if beat != Some(true) {
                    // Lost with a failover or expired: the member joins again.
                    let e = SluiceError::UnknownMember { group: group.clone(), member: member.clone() };
                    return Ok(answer(member, epoch, Some(e)));
                }
                let now = Instant::now();
                let done = self.groups.with_group_then(
                    self,
                    &group,
                    |g| g.consumer_heartbeat(&member, instance, epoch, update, now),
                    |g, r| r.map(|()| g.consumer_answer(&member, full, now)),
                )?;
                match done {
                    Ok(Some((epoch, set))) => Ok(self.with_assignment(answer(member, epoch, None), set)),
                    Ok(None) => {
                        let e = SluiceError::UnknownMember { group: group.clone(), member: member.clone() };
                        Ok(answer(member, epoch, Some(e)))
                    }
                    Err(e) => Ok(answer(member, epoch, Some(e))),
                }
            }
        }
    }

    /// The answer with `set` as its assignment, topics named and identified by this
    /// coordinator's view (a topic deleted meanwhile is left out).
    fn with_assignment(
        &self,
        mut a: ConsumerHeartbeatResponse,
        set: Option<BTreeSet<Tp>>,
    ) -> ConsumerHeartbeatResponse {
        if let Some(set) = set {
            let ids = self.topic_ids();
            let topics = sluice_core::topic::group_by_topic(&set)
                .into_iter()
                .filter_map(|mut t| {
                    t.topic_id = *ids.get(&t.topic)?;
                    Some(t)
                })
                .collect();
            a.assignment = Some(TopicPartitionsList { topics });
        }
        a
    }

    /// Owned partitions as named topics: by id when the client gives one (topics it names by
    /// an id this view does not know are gone), by name otherwise.
    fn partitions_named(&self, topics: &[TopicPartitions]) -> BTreeSet<Tp> {
        let names: HashMap<u64, String> = self.topic_ids().into_iter().map(|(n, id)| (id, n)).collect();
        topics
            .iter()
            .filter_map(|t| {
                let name = match t.topic_id {
                    0 if t.topic.is_empty() => return None,
                    0 => t.topic.clone(),
                    id => names.get(&id)?.clone(),
                };
                Some(t.partitions.iter().map(move |p| (name.clone(), *p)).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    }
}

/// The request's own consistency, as Kafka checks it (INVALID_REQUEST otherwise).
fn check(r: &ConsumerHeartbeatRequest) -> Result<(), SluiceError> {
    let bad = |why: &str| Err(SluiceError::InvalidRequest(why.to_string()));
    if r.member_id.len() > MAX_ID || r.instance_id.as_ref().is_some_and(|i| i.len() > MAX_ID || i.is_empty()) {
        return bad("member and instance ids must be 1 to 255 bytes");
    }
    if r.subscribed_topics.as_ref().is_some_and(|t| t.names.len() > MAX_TOPICS) {
        return bad("a member may subscribe to 10000 topics at most");
    }
    if r.subscribed_topic_regex.as_ref().is_some_and(|re| !re.is_empty()) {
        return bad("subscriptions by regular expression are not supported; subscribe to topic names");
    }
    match r.member_epoch {
        0 => {
            if r.rebalance_timeout_ms == -1 || r.subscribed_topics.is_none() {
                return bad("a join (epoch 0) must give its rebalance timeout and subscribed topics");
            }
            if r.owned.as_ref().is_some_and(|o| !o.topics.is_empty()) {
                return bad("a join (epoch 0) owns no partitions");
            }
        }
        -2 if r.instance_id.is_none() => return bad("only a static member leaves with epoch -2"),
        e if e < -2 => return bad(&format!("member epoch {e} is not valid")),
        e if e != 0 && r.member_id.is_empty() => return bad(&format!("a member at epoch {e} must give its id")),
        _ => {}
    }
    Ok(())
}
