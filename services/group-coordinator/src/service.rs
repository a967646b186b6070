//! `sluice.v1.Groups` as the active coordinator serves it.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::member_event::Kind as EventKind;
use sluice_proto::v1::member_request::Kind as RequestKind;
use sluice_proto::v1::*;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::assignor::{Assignor, Tp};
use sluice_core::topic::{flatten_topics, group_by_topic};

use crate::group::{Conn, JoinSpec};
use crate::store::{Committed, MAX_METADATA};
use crate::{Coordinator, validate_group_id};

type EventStream = Pin<Box<dyn Stream<Item = Result<MemberEvent, Status>> + Send + 'static>>;

/// How long a new stream may take to send its JoinGroup.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// The gRPC face of a [`Coordinator`].
#[derive(Clone)]
pub struct GroupsService(pub Arc<Coordinator>);

impl GroupsService {
    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
    }
}

fn now_ms() -> i64 {
    sluice_core::settings::now_ms()
}

impl Coordinator {
    fn join_spec(&self, j: JoinGroup) -> Result<JoinSpec, SluiceError> {
        validate_group_id(&j.group_id)?;
        if j.topics.is_empty() {
            return Err(SluiceError::InvalidRequest("a member must subscribe to at least one topic".into()));
        }
        for t in &j.topics {
            sluice_core::topic::validate_topic_name(t)?;
        }
        let assignor = Assignor::parse(&j.assignor).ok_or_else(|| {
            SluiceError::InvalidRequest(format!("unknown assignor '{}': use one of {}", j.assignor, Assignor::NAMES))
        })?;
        let s = &self.settings;
        let session = if j.session_timeout_ms == 0 { s.session_timeout_ms } else { j.session_timeout_ms as u64 };
        if !(s.min_session_timeout_ms..=s.max_session_timeout_ms).contains(&session) {
            return Err(SluiceError::InvalidRequest(format!(
                "session timeout {session} ms is outside the allowed {}..={} ms",
                s.min_session_timeout_ms, s.max_session_timeout_ms
            )));
        }
        let rebalance =
            if j.rebalance_timeout_ms == 0 { s.rebalance_timeout_ms } else { j.rebalance_timeout_ms as u64 };
        let owned = flatten_topics(&j.owned);
        Ok(JoinSpec {
            member_id: j.member_id,
            instance_id: j.instance_id,
            client_id: j.client_id,
            topics: j.topics.into_iter().collect(),
            assignor,
            session_timeout: Duration::from_millis(session),
            rebalance_timeout: Duration::from_millis(rebalance.max(1)),
            owned,
        })
    }

    /// Validates and commits offsets for `member` (or, outside a membership stream, for a
    /// group without members); answers per partition, or fails the whole request.
    async fn commit(
        &self,
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
        {
            let mut st = self.lock();
            let group = st.groups.get(&req.group_id);
            if member.is_none() {
                if !req.member_id.is_empty() {
                    return Err(SluiceError::InvalidRequest(
                        "member commits go on the member's stream; outside one, member_id must be empty".into(),
                    ));
                }
                if let Some(g) = group.filter(|g| !g.members.is_empty()) {
                    return Err(SluiceError::GroupNotEmpty {
                        group: req.group_id.clone(),
                        members: g.members.len(),
                        action: "committing without membership".into(),
                    });
                }
            }
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
                } else if let Some(m) = member {
                    match group {
                        Some(g) => g.check_commit(m, req.generation, &tp),
                        None => Err(SluiceError::UnknownMember { group: req.group_id.clone(), member: m.to_string() }),
                    }
                } else {
                    Ok(())
                };
                match check {
                    Ok(()) => {
                        let generation = if member.is_some() { req.generation } else { 0 };
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
            if let Some(m) = member.filter(|_| !accepted.is_empty())
                && let Some(x) = st.groups.get_mut(&req.group_id).and_then(|g| g.members.get_mut(m))
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
        if let Some(m) = member {
            let mut st = self.lock();
            if let Some(x) = st.groups.get_mut(&req.group_id).and_then(|g| g.members.get_mut(m)) {
                x.commits_in_flight = x.commits_in_flight.saturating_sub(1);
            }
        }
        Ok(CommitOffsetsResponse { id, results, error: None })
    }

    /// Applies written changes to the cache.
    fn remember(&self, group: &str, changes: Vec<(Tp, Option<Committed>)>) {
        // The ids of just these topics now, not a map of every topic per commit.
        let live: Vec<Option<u64>> = {
            let view = self.view.borrow();
            changes.iter().map(|(tp, _)| view.topics.get(&tp.0).map(|t| t.topic_id)).collect()
        };
        let mut st = self.lock();
        let g = crate::group_entry(&mut st, group);
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
    }

    /// Serves one membership stream after its JoinGroup.
    fn attach(
        self: &Arc<Self>,
        join: JoinGroup,
        mut input: Streaming<MemberRequest>,
    ) -> Result<EventStream, SluiceError> {
        let group_id = join.group_id.clone();
        let spec = self.join_spec(join)?;
        self.active()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let kick = Arc::new(Notify::new());
        let conn_id = self.conn_id();
        let conn = Conn { id: conn_id, tx: tx.clone(), kick: kick.clone() };
        let joined = Joined {
            member_id: String::new(),
            heartbeat_interval_ms: (spec.session_timeout.as_millis() / 3).max(100) as u32,
            session_timeout_ms: spec.session_timeout.as_millis() as u32,
            assignor: spec.assignor.name().to_string(),
        };
        let member_id = self.with_group(&group_id, |g| {
            let id = g.join(spec, conn, Instant::now())?;
            // Joined goes out before the first assignment, which the reconcile sends.
            let _ =
                tx.send(Ok(MemberEvent { kind: Some(EventKind::Joined(Joined { member_id: id.clone(), ..joined })) }));
            Ok::<_, SluiceError>(id)
        })?;
        tracing::info!(group = %group_id, member = %member_id, "member joined");
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = kick.notified() => break,
                    m = input.message() => m,
                };
                let kind = match msg {
                    Ok(Some(MemberRequest { kind: Some(k) })) => k,
                    Ok(Some(MemberRequest { kind: None })) => continue,
                    // The gateway ends the stream cleanly when the member left or died.
                    Ok(None) => {
                        if me.with_group(&group_id, |g| g.disconnected(&member_id, conn_id, true)) {
                            tracing::info!(group = %group_id, member = %member_id, "member stream closed");
                        }
                        break;
                    }
                    // The connection to its gateway broke: the member may be alive and back
                    // through another gateway within its session timeout.
                    Err(e) => {
                        if me.with_group(&group_id, |g| g.disconnected(&member_id, conn_id, false)) {
                            tracing::info!(group = %group_id, member = %member_id, error = %e, "member connection lost; kept for its session timeout");
                        }
                        break;
                    }
                };
                {
                    let mut st = me.lock();
                    let Some(g) = st.groups.get_mut(&group_id) else { break };
                    g.touch(&member_id, conn_id, Instant::now());
                }
                match kind {
                    RequestKind::Heartbeat(_) => {}
                    RequestKind::Ack(a) => me.with_group(&group_id, |g| g.ack(&member_id, a.generation)),
                    RequestKind::Commit(mut c) => {
                        c.group_id = group_id.clone();
                        let id = c.id;
                        // On the stream a failed request is an answer, not the stream's end.
                        let r = me.commit(Some(&member_id), c).await.unwrap_or_else(|e| CommitOffsetsResponse {
                            id,
                            results: vec![],
                            error: Some(e.to_proto()),
                        });
                        let _ = tx.send(Ok(MemberEvent { kind: Some(EventKind::Commit(r)) }));
                    }
                    RequestKind::Join(_) => {
                        let _ = tx.send(Err(SluiceError::InvalidRequest(
                            "this stream has already joined; open a new stream to join again".into(),
                        )
                        .into()));
                        break;
                    }
                }
            }
        });
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    pub(crate) fn describe(&self, group_id: &str) -> Result<(DescribeGroupResponse, BTreeSet<String>), SluiceError> {
        validate_group_id(group_id)?;
        let (epoch, _) = self.active()?;
        let counts = self.partition_counts();
        let st = self.lock();
        let g = st.groups.get(group_id).ok_or_else(|| SluiceError::UnknownGroup(group_id.to_string()))?;
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
                    connected: m.conn.is_some(),
                }
            })
            .collect();
        let topics = Self::topics_of(g);
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
            assignor: g.assignor.name().to_string(),
            generation: g.generation,
            members,
            partitions,
            coordinator: self.addr.clone(),
            coordinator_epoch: epoch,
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

    /// The group, which must exist and have no members, for `action`.
    fn require_empty(&self, group_id: &str, action: &str) -> Result<(), SluiceError> {
        validate_group_id(group_id)?;
        let st = self.lock();
        let g = st.groups.get(group_id).ok_or_else(|| SluiceError::UnknownGroup(group_id.to_string()))?;
        if !g.members.is_empty() {
            return Err(SluiceError::GroupNotEmpty {
                group: group_id.to_string(),
                members: g.members.len(),
                action: action.to_string(),
            });
        }
        Ok(())
    }

    async fn reset(&self, r: ResetOffsetsRequest) -> Result<ResetOffsetsResponse, SluiceError> {
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
                let spec = OffsetSpec::try_from(r.spec).unwrap_or(OffsetSpec::Latest);
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

    async fn delete(&self, group_id: &str) -> Result<(), SluiceError> {
        self.require_empty(group_id, "deleting the group")?;
        let (_, store) = self.active()?;
        let tombstones: Vec<(Tp, Option<Committed>)> = {
            let st = self.lock();
            st.groups.get(group_id).map(|g| g.offsets.keys().map(|tp| (tp.clone(), None)).collect()).unwrap_or_default()
        };
        if !tombstones.is_empty() {
            store.write(group_id, &tombstones).await?;
        }
        let mut st = self.lock();
        if st.groups.get(group_id).is_some_and(|g| g.members.is_empty()) {
            st.groups.remove(group_id);
            crate::mark(&st, group_id);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    type MembershipStream = EventStream;

    async fn membership(
        &self,
        r: Request<Streaming<MemberRequest>>,
    ) -> Result<Response<Self::MembershipStream>, Status> {
        let mut input = r.into_inner();
        let first = tokio::time::timeout(JOIN_WAIT, input.message())
            .await
            .map_err(|_| SluiceError::Timeout("no JoinGroup within 10 s of opening the stream".into()))??;
        let Some(MemberRequest { kind: Some(RequestKind::Join(join)) }) = first else {
            return Err(SluiceError::InvalidRequest(
                "the first message of a membership stream must be a JoinGroup".into(),
            )
            .into());
        };
        Ok(Response::new(self.0.attach(join, input)?))
    }

    async fn commit_offsets(
        &self,
        r: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        Ok(Response::new(self.0.commit(None, r.into_inner()).await?))
    }

    async fn fetch_offsets(&self, r: Request<FetchOffsetsRequest>) -> Result<Response<FetchOffsetsResponse>, Status> {
        let r = r.into_inner();
        validate_group_id(&r.group_id)?;
        self.0.active()?;
        let st = self.0.lock();
        let offsets = st
            .groups
            .get(&r.group_id)
            .map(|g| {
                g.offsets
                    .iter()
                    .filter(|(tp, _)| r.topic.is_empty() || tp.0 == r.topic)
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
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(&self, _r: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        self.0.active()?;
        let st = self.0.lock();
        let groups = st
            .groups
            .values()
            .map(|g| GroupSummary {
                group_id: g.id.clone(),
                state: g.state().to_string(),
                members: g.members.len() as u32,
            })
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        r: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let (mut resp, topics) = self.0.describe(&r.into_inner().group_id)?;
        self.0.add_lag(&mut resp, topics).await;
        Ok(Response::new(resp))
    }

    async fn reset_offsets(&self, r: Request<ResetOffsetsRequest>) -> Result<Response<ResetOffsetsResponse>, Status> {
        Ok(Response::new(self.0.reset(r.into_inner()).await?))
    }

    async fn delete_group(&self, r: Request<DeleteGroupRequest>) -> Result<Response<DeleteGroupResponse>, Status> {
        self.0.delete(&r.into_inner().group_id).await?;
        Ok(Response::new(DeleteGroupResponse {}))
    }
}
