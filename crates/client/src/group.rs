//! The group consumer: joins a consumer group, reads the partitions the coordinator assigns,
//! and commits offsets.
//!
//! A background task owns the membership stream: it joins, sends heartbeats at the interval
//! the coordinator asks, and rejoins (with the partitions still held) when the stream breaks.
//! Assignment changes are applied inside [`GroupConsumer::poll`], as Kafka does, so that
//! rebalance callbacks run on the caller's task: revoked partitions are committed (with
//! auto-commit), reported to [`RebalanceListener::on_revoked`] and released; then new ones
//! start from their committed offset (or `auto_offset_reset`) and are reported to
//! [`RebalanceListener::on_assigned`].
//!
//! Delivery modes ([`DeliveryMode`]): at-least-once (the default) commits what earlier polls
//! returned, at the next poll after the auto-commit interval, on revocation and on close, so
//! a crash re-delivers what was not committed; at-most-once commits the position after the
//! records a poll returns before returning them, so a crash loses them rather than
//! re-delivering them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::RemoteError;
use sluice_core::error::codes;
use sluice_proto::v1::member_event::Kind as EventKind;
use sluice_proto::v1::member_request::Kind as RequestKind;
use sluice_proto::v1::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use crate::{Client, ClientError};

pub use sluice_core::topic::TopicPartition;
use sluice_core::topic::{flatten_topics, group_by_topic};

/// When offsets are committed relative to processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Commit after processing: nothing is lost, a crash may re-deliver records.
    #[default]
    AtLeastOnce,
    /// Commit before processing: nothing is delivered twice, a crash may lose records.
    AtMostOnce,
}

impl std::str::FromStr for DeliveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at-least-once" => Ok(Self::AtLeastOnce),
            "at-most-once" => Ok(Self::AtMostOnce),
            _ => Err(format!("'{s}' is not at-least-once or at-most-once")),
        }
    }
}

/// Group consumer settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// [group.id]
    pub group_id: String,
    /// [group.instance.id] Makes the member static: restarted within the session timeout,
    /// it gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
    /// [client.id] Prefix of the member id.
    pub client_id: String,
    /// [group.remote.assignor] "sticky" (default), "range" or "round-robin".
    pub assignor: String,
    /// [session.timeout.ms]
    pub session_timeout: Duration,
    /// [max.poll.interval.ms] How long revoked partitions may take to be released (the
    /// application must call poll within it).
    pub rebalance_timeout: Duration,
    /// [auto.offset.reset] Where partitions without a committed offset start: Earliest or
    /// Latest.
    pub auto_offset_reset: StartFrom,
    pub delivery: DeliveryMode,
    /// [enable.auto.commit, auto.commit.interval.ms] `None` leaves commits to the caller
    /// (at-least-once only; at-most-once always commits before returning records).
    pub auto_commit_interval: Option<Duration>,
    /// How long a synchronous commit may take.
    pub commit_timeout: Duration,
    pub fetch: ConsumerConfig,
}

impl GroupConfig {
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_string(),
            instance_id: None,
            client_id: "sluice".into(),
            assignor: "sticky".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            auto_offset_reset: StartFrom::Earliest,
            delivery: DeliveryMode::AtLeastOnce,
            auto_commit_interval: Some(Duration::from_secs(5)),
            commit_timeout: Duration::from_secs(15),
            fetch: ConsumerConfig::default(),
        }
    }
}

/// How long leaving waits for the coordinator to close the membership stream.
const LEAVE_WAIT: Duration = Duration::from_secs(3);

/// Called from [`GroupConsumer::poll`] when the assignment changes.
pub trait RebalanceListener: Send {
    /// Partitions handed to this member; reading starts at their committed offsets.
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions taken away in an orderly way: with auto-commit, their positions were
    /// committed just before. They are released when this returns.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions lost without a chance to commit (the member was removed from the group,
    /// e.g. after missing its session timeout); another member may already read them.
    fn on_lost(&mut self, _partitions: &[TopicPartition]) {}
}

enum ToTask {
    Ack(u64),
    Commit(CommitOffsetsRequest, Option<oneshot::Sender<Result<CommitOffsetsResponse, ClientError>>>),
}

enum FromTask {
    Joined(String),
    Assignment(Assignment),
    /// An asynchronous commit of these partitions failed: they are committed again later.
    CommitFailed(Vec<TopicPartition>),
    Lost(ClientError),
    Fatal(ClientError),
}

/// A member of a consumer group.
pub struct GroupConsumer {
    client: Client,
    cfg: GroupConfig,
    member_id: String,
    generation: u64,
    assigned: BTreeSet<TopicPartition>,
    readers: BTreeMap<String, Consumer>,
    /// What the membership task claims when it rejoins.
    owned: Arc<Mutex<BTreeSet<TopicPartition>>>,
    to_task: mpsc::UnboundedSender<ToTask>,
    from_task: mpsc::UnboundedReceiver<FromTask>,
    listener: Option<Box<dyn RebalanceListener>>,
    last_commit: Instant,
    committed: BTreeMap<TopicPartition, i64>,
    /// At-most-once: offsets whose commit may or may not have been written.
    unsure: BTreeMap<TopicPartition, i64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Dropped without close() or leave(): the stream is cut. Through a gateway that still
        // reads as a leave; on a coordinator reached directly (`sluice dev`) the member is kept
        // for its session timeout, as a Kafka consumer that was not closed.
        self.task.abort();
    }
}

impl GroupConsumer {
    /// Joins `cfg.group_id` subscribed to `topics` and waits until the coordinator accepted
    /// the member (a bad group id or subscription fails here). Topics that do not exist yet
    /// are assigned once they are created.
    pub async fn subscribe(client: Client, topics: &[&str], cfg: GroupConfig) -> Result<Self, ClientError> {
        if topics.is_empty() {
            return Err(ClientError::Invalid("subscribe to at least one topic".into()));
        }
        if !matches!(cfg.auto_offset_reset, StartFrom::Earliest | StartFrom::Latest) {
            return Err(ClientError::Invalid("auto_offset_reset must be earliest or latest".into()));
        }
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let (to_task, cmds) = mpsc::unbounded_channel();
        let (events, mut from_task) = mpsc::unbounded_channel();
        let join = JoinGroup {
            group_id: cfg.group_id.clone(),
            member_id: String::new(),
            instance_id: cfg.instance_id.clone().unwrap_or_default(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignor: cfg.assignor.clone(),
            session_timeout_ms: cfg.session_timeout.as_millis() as u32,
            rebalance_timeout_ms: cfg.rebalance_timeout.as_millis() as u32,
            owned: vec![],
            client_id: cfg.client_id.clone(),
        };
        let task = tokio::spawn(membership(client.clone(), join, owned.clone(), cmds, events));
        // The first answer tells whether the coordinator took the member.
        let deadline = Instant::now() + cfg.fetch.retry_timeout;
        let member_id = loop {
            match tokio::time::timeout_at(deadline, from_task.recv()).await {
                Ok(Some(FromTask::Joined(id))) => break id,
                Ok(Some(FromTask::Fatal(e))) => return Err(e),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(ClientError::Disconnected("the membership task stopped".into())),
                Err(_) => {
                    task.abort();
                    return Err(ClientError::Exhausted {
                        elapsed: cfg.fetch.retry_timeout,
                        last: "no group coordinator answered".into(),
                    });
                }
            }
        };
        Ok(Self {
            client,
            cfg,
            member_id,
            generation: 0,
            assigned: BTreeSet::new(),
            readers: BTreeMap::new(),
            owned,
            to_task,
            from_task,
            listener: None,
            last_commit: Instant::now(),
            committed: BTreeMap::new(),
            unsure: BTreeMap::new(),
            task,
        })
    }

    pub fn set_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(Box::new(listener));
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the assignment held now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions held now.
    pub fn assignment(&self) -> &BTreeSet<TopicPartition> {
        &self.assigned
    }

    /// The next offset to be returned, per held partition.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.readers.iter().flat_map(|(t, r)| r.positions().iter().map(move |(p, o)| ((t.clone(), *p), *o))).collect()
    }

    /// Moves a held partition's position.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), ClientError> {
        match self.readers.get_mut(topic) {
            Some(r) => r.seek(partition, offset),
            None => Err(ClientError::Invalid(format!("no partition of '{topic}' is assigned to this member"))),
        }
    }

    /// Applies assignment changes, then waits up to `timeout` for records of the held
    /// partitions.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.handle_events().await?;
            if self.cfg.delivery == DeliveryMode::AtLeastOnce
                && let Some(every) = self.cfg.auto_commit_interval
                && self.last_commit.elapsed() >= every
            {
                self.commit_async();
            }
            let records = self.fetch(deadline).await?;
            if !records.is_empty() {
                return match self.cfg.delivery {
                    DeliveryMode::AtLeastOnce => Ok(records),
                    DeliveryMode::AtMostOnce => self.commit_before_handing_out(records).await,
                };
            }
            if Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// Reads from the held partitions until `deadline` or some records; returns early when
    /// the assignment changes.
    async fn fetch(&mut self, deadline: Instant) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.readers.is_empty() {
            // Nothing held: wait for an assignment.
            if let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.from_task.recv()).await {
                self.on_event(ev).await?;
            }
            return Ok(Vec::new());
        }
        if self.readers.len() == 1 {
            let step = (deadline.saturating_duration_since(Instant::now())).min(Duration::from_millis(200));
            let r = self.readers.values_mut().next().ok_or_else(|| ClientError::Invalid("no reader".into()))?;
            return r.poll(step).await;
        }
        let mut out = Vec::new();
        for r in self.readers.values_mut() {
            out.extend(r.poll(Duration::ZERO).await?);
        }
        if out.is_empty() {
            tokio::time::sleep(Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Ok(out)
    }

    /// At-most-once: the position after `records` is committed before they are returned.
    ///
    /// When a commit fails, the records of those partitions are not returned and the
    /// partitions' positions go back to the first of them: they were not processed, so
    /// reading them again (and committing first, again) delivers nothing twice, and a
    /// transient failure neither loses them nor leaves the committed offset behind for good.
    /// A commit whose outcome is unknown (no answer, whole request failed) may still have
    /// landed, so later commits of that partition never go below it.
    async fn commit_before_handing_out(
        &mut self,
        mut records: Vec<ConsumerRecord>,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        // (first offset, next offset) per partition, keyed by the shared topic name: no
        // allocation per record.
        let mut spans: BTreeMap<(Arc<str>, u32), (i64, i64)> = BTreeMap::new();
        for r in &records {
            let e = spans.entry((r.topic.clone(), r.partition)).or_insert((r.offset, r.offset + 1));
            e.0 = e.0.min(r.offset);
            e.1 = e.1.max(r.offset + 1);
        }
        let upto: BTreeMap<TopicPartition, i64> = spans
            .iter()
            .map(|((t, p), (_, next))| {
                let tp = (t.to_string(), *p);
                let at = self.unsure.get(&tp).map_or(*next, |u| (*u).max(*next));
                (tp, at)
            })
            .collect();
        let failed = match self.commit_offsets(&upto).await {
            Ok(failed) => failed,
            Err(e) => {
                self.unsure.extend(upto);
                self.rewind(&spans, |_| true);
                return Err(e);
            }
        };
        for (tp, at) in upto {
            match failed.iter().find(|(f, _)| *f == tp) {
                None => {
                    self.unsure.remove(&tp);
                }
                // A write that failed on the way (not a refusal) may have landed.
                Some((_, e)) if e.retriable => {
                    self.unsure.insert(tp, at);
                }
                Some(_) => {}
            }
        }
        if !failed.is_empty() {
            tracing::warn!(
                partitions = failed.len(),
                "commit failed; those records are not delivered yet (at-most-once)"
            );
            let refused = |t: &str, p: u32| failed.iter().any(|((ft, fp), _)| ft == t && *fp == p);
            self.rewind(&spans, |(t, p)| refused(t, *p));
            records.retain(|r| !refused(&r.topic, r.partition));
        }
        Ok(records)
    }

    /// Moves still-held partitions back to the first offset of their span in `spans`.
    fn rewind(&mut self, spans: &BTreeMap<(Arc<str>, u32), (i64, i64)>, which: impl Fn(&(Arc<str>, u32)) -> bool) {
        for (key, (first, _)) in spans.iter().filter(|(k, _)| which(k)) {
            let (t, p) = (&*key.0, key.1);
            if self.assigned.contains(&(t.to_string(), p)) {
                // Cannot fail: the partition is held, so its reader exists.
                let _ = self.seek(t, p, *first);
            }
        }
    }

    async fn handle_events(&mut self) -> Result<(), ClientError> {
        while let Ok(ev) = self.from_task.try_recv() {
            self.on_event(ev).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: FromTask) -> Result<(), ClientError> {
        match ev {
            FromTask::Joined(id) => self.member_id = id,
            FromTask::Assignment(a) => self.apply(a).await?,
            FromTask::CommitFailed(tps) => {
                for tp in tps {
                    self.committed.remove(&tp);
                }
            }
            FromTask::Lost(e) => {
                let lost: Vec<TopicPartition> = std::mem::take(&mut self.assigned).into_iter().collect();
                tracing::warn!(error = %e, partitions = lost.len(), "removed from the group; partitions lost");
                self.readers.clear();
                self.unsure.clear();
                self.owned.lock().unwrap_or_else(|p| p.into_inner()).clear();
                self.generation = 0;
                if let Some(l) = self.listener.as_mut() {
                    l.on_lost(&lost);
                }
            }
            FromTask::Fatal(e) => return Err(e),
        }
        Ok(())
    }

    async fn apply(&mut self, a: Assignment) -> Result<(), ClientError> {
        let next: BTreeSet<TopicPartition> = flatten_topics(&a.partitions);
        let revoked: Vec<TopicPartition> = self.assigned.difference(&next).cloned().collect();
        let added: Vec<TopicPartition> = next.difference(&self.assigned).cloned().collect();
        let mut positions = self.positions();
        if !revoked.is_empty() {
            if self.cfg.delivery == DeliveryMode::AtLeastOnce && self.cfg.auto_commit_interval.is_some() {
                let offsets: BTreeMap<TopicPartition, i64> =
                    revoked.iter().filter_map(|tp| positions.get(tp).map(|o| (tp.clone(), *o))).collect();
                if let Err(e) = self.commit_offsets(&offsets).await {
                    tracing::warn!(error = %e, "commit of revoked partitions failed");
                }
            }
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&revoked);
            }
            for tp in &revoked {
                positions.remove(tp);
                // Its next owner starts from what was really committed.
                self.unsure.remove(tp);
            }
        }
        if !added.is_empty() {
            let committed: HashMap<TopicPartition, i64> = a
                .offsets
                .iter()
                .filter(|o| o.offset >= 0)
                .map(|o| ((o.topic.clone(), o.partition), o.offset))
                .collect();
            let mut missing: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for tp in &added {
                match committed.get(tp) {
                    Some(o) => {
                        positions.insert(tp.clone(), *o);
                    }
                    None => missing.entry(tp.0.clone()).or_default().push(tp.1),
                }
            }
            let spec =
                if self.cfg.auto_offset_reset == StartFrom::Latest { OffsetSpec::Latest } else { OffsetSpec::Earliest };
            for (topic, parts) in missing {
                for o in self.client.list_offsets(&topic, parts, spec, 0).await? {
                    let at = if o.error.is_some() || o.offset < 0 { o.log_end_offset.max(0) } else { o.offset };
                    positions.insert((topic.clone(), o.partition), at);
                }
            }
        }
        // A full assignment after a rejoin may also restate partitions held all along: their
        // committed offsets are not taken (the local position is ahead).
        self.assigned = next;
        self.generation = a.generation;
        *self.owned.lock().unwrap_or_else(|p| p.into_inner()) = self.assigned.clone();
        let touched: BTreeSet<String> = revoked.iter().chain(added.iter()).map(|tp| tp.0.clone()).collect();
        for topic in touched {
            let parts: BTreeMap<u32, i64> = positions
                .iter()
                .filter(|(tp, _)| tp.0 == topic && self.assigned.contains(*tp))
                .map(|(tp, o)| (tp.1, *o))
                .collect();
            if parts.is_empty() {
                self.readers.remove(&topic);
            } else {
                let reader = Consumer::at(self.client.clone(), &topic, parts, self.cfg.fetch.clone());
                self.readers.insert(topic, reader);
            }
        }
        if !added.is_empty()
            && let Some(l) = self.listener.as_mut()
        {
            l.on_assigned(&added);
        }
        let _ = self.to_task.send(ToTask::Ack(a.generation));
        Ok(())
    }

    fn request(&self, offsets: &BTreeMap<TopicPartition, i64>) -> CommitOffsetsRequest {
        CommitOffsetsRequest {
            id: 0,
            group_id: self.cfg.group_id.clone(),
            member_id: String::new(),
            generation: self.generation,
            offsets: offsets
                .iter()
                .map(|((t, p), o)| CommittedOffset {
                    topic: t.clone(),
                    partition: *p,
                    offset: *o,
                    metadata: String::new(),
                    commit_time_ms: 0,
                })
                .collect(),
        }
    }

    /// Commits `offsets` (the next offset to read, per partition) and waits; returns the
    /// partitions whose commit failed, each with why: refused (reassigned meanwhile, not
    /// retriable) or not written (retriable; it may have landed all the same).
    pub async fn commit_offsets(
        &mut self,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<Vec<(TopicPartition, RemoteError)>, ClientError> {
        if offsets.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        self.to_task
            .send(ToTask::Commit(self.request(offsets), Some(tx)))
            .map_err(|_| ClientError::Disconnected("the membership task stopped".into()))?;
        let resp = tokio::time::timeout(self.cfg.commit_timeout, rx)
            .await
            .map_err(|_| ClientError::Exhausted { elapsed: self.cfg.commit_timeout, last: "commit unanswered".into() })?
            .map_err(|_| ClientError::Disconnected("the membership stream broke during the commit".into()))??;
        if let Some(e) = resp.error {
            return Err(RemoteError::from(&e).into());
        }
        let mut refused = Vec::new();
        for r in resp.results {
            let tp = (r.topic, r.partition);
            match r.error {
                None => {
                    if let Some(o) = offsets.get(&tp) {
                        self.committed.insert(tp, *o);
                    }
                }
                Some(e) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e.message, "commit failed");
                    refused.push((tp, RemoteError::from(&e)));
                }
            }
        }
        self.last_commit = Instant::now();
        Ok(refused)
    }

    /// Commits the positions of every held partition (what earlier polls returned) and waits.
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        let offsets = self.uncommitted();
        match self.commit_offsets(&offsets).await?.into_iter().next() {
            Some(((t, p), e)) => Err(ClientError::Remote(RemoteError {
                message: format!("the commit for partition {p} of '{t}' failed: {}", e.message),
                ..e
            })),
            None => Ok(()),
        }
    }

    /// Sends a commit of the current positions without waiting for the answer.
    pub fn commit_async(&mut self) {
        let offsets = self.uncommitted();
        self.last_commit = Instant::now();
        if offsets.is_empty() {
            return;
        }
        // Commits on one stream are applied in order, so a later one never lands first.
        self.committed.extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        let _ = self.to_task.send(ToTask::Commit(self.request(&offsets), None));
    }

    /// Positions that moved since they were last committed.
    fn uncommitted(&self) -> BTreeMap<TopicPartition, i64> {
        self.positions().into_iter().filter(|(tp, o)| self.committed.get(tp) != Some(o)).collect()
    }

    /// Commits (at-least-once with auto-commit) and leaves the group.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.cfg.delivery == DeliveryMode::AtLeastOnce && self.cfg.auto_commit_interval.is_some() {
            self.commit_sync().await?;
        }
        self.leave().await;
        Ok(())
    }

    /// Leaves the group now, so its partitions move at once: the membership stream is ended
    /// cleanly and read until the coordinator closes it (a stream merely dropped may look
    /// like a broken connection, and the member would be kept for its session timeout).
    pub async fn leave(mut self) {
        // Closing the command channel is what tells the membership task to leave.
        self.to_task = mpsc::unbounded_channel().0;
        let _ = tokio::time::timeout(LEAVE_WAIT, &mut self.task).await;
    }
}

/// Owns the membership stream: joins, heartbeats, forwards events, rejoins when it breaks.
async fn membership(
    client: Client,
    mut join: JoinGroup,
    owned: Arc<Mutex<BTreeSet<TopicPartition>>>,
    mut cmds: mpsc::UnboundedReceiver<ToTask>,
    events: mpsc::UnboundedSender<FromTask>,
) {
    type Reply = oneshot::Sender<Result<CommitOffsetsResponse, ClientError>>;
    let mut backoff = Duration::from_millis(100);
    let mut next_id = 1u64;
    loop {
        join.owned = group_by_topic(owned.lock().unwrap_or_else(|p| p.into_inner()).iter());
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(MemberRequest { kind: Some(RequestKind::Join(join.clone())) });
        let failure = match client.groups().membership(UnboundedReceiverStream::new(rx)).await {
            Err(s) => ClientError::from(s),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                let mut pending: HashMap<u64, Reply> = HashMap::new();
                // Asynchronous commits in flight: their partitions, retried when they fail.
                let mut unanswered: HashMap<u64, Vec<TopicPartition>> = HashMap::new();
                let mut beat =
                    tokio::time::interval(Duration::from_millis((join.session_timeout_ms as u64 / 3).max(100)));
                let failure = loop {
                    tokio::select! {
                        _ = beat.tick() => {
                            let _ = tx.send(MemberRequest { kind: Some(RequestKind::Heartbeat(Heartbeat {})) });
                        }
                        cmd = cmds.recv() => match cmd {
                            // The consumer leaves: end this side, then read until the
                            // coordinator closes its side.
                            None => {
                                drop(tx);
                                let _ = tokio::time::timeout(LEAVE_WAIT, async {
                                    while let Ok(Some(_)) = stream.message().await {}
                                })
                                .await;
                                return;
                            }
                            Some(ToTask::Ack(generation)) => {
                                let _ = tx.send(MemberRequest { kind: Some(RequestKind::Ack(AssignmentAck { generation })) });
                            }
                            Some(ToTask::Commit(mut req, reply)) => {
                                req.id = next_id;
                                next_id += 1;
                                match reply {
                                    Some(r) => {
                                        pending.insert(req.id, r);
                                    }
                                    None => {
                                        let tps = req.offsets.iter().map(|o| (o.topic.clone(), o.partition)).collect();
                                        unanswered.insert(req.id, tps);
                                    }
                                }
                                let _ = tx.send(MemberRequest { kind: Some(RequestKind::Commit(req)) });
                            }
                        },
                        msg = stream.message() => match msg {
                            Ok(Some(MemberEvent { kind: Some(kind) })) => match kind {
                                EventKind::Joined(j) => {
                                    backoff = Duration::from_millis(100);
                                    join.member_id = j.member_id.clone();
                                    beat = tokio::time::interval(Duration::from_millis(j.heartbeat_interval_ms.max(50) as u64));
                                    let _ = events.send(FromTask::Joined(j.member_id));
                                }
                                EventKind::Assignment(a) => {
                                    let _ = events.send(FromTask::Assignment(a));
                                }
                                EventKind::Commit(r) => {
                                    if let Some(reply) = pending.remove(&r.id) {
                                        let _ = reply.send(Ok(r));
                                    } else if let Some(tps) = unanswered.remove(&r.id) {
                                        let failed: Vec<TopicPartition> = if r.error.is_some() {
                                            tps
                                        } else {
                                            r.results.iter().filter(|x| x.error.is_some()).map(|x| (x.topic.clone(), x.partition)).collect()
                                        };
                                        if let Some(e) = r.error.as_ref().or_else(|| r.results.iter().find_map(|x| x.error.as_ref())) {
                                            tracing::warn!(error = %e.message, "asynchronous commit refused");
                                        }
                                        if !failed.is_empty() {
                                            let _ = events.send(FromTask::CommitFailed(failed));
                                        }
                                    }
                                }
                            },
                            Ok(Some(MemberEvent { kind: None })) => {}
                            Ok(None) => break ClientError::Disconnected("the coordinator ended the membership stream".into()),
                            Err(s) => break ClientError::from(s),
                        },
                    }
                };
                for (_, r) in pending.drain() {
                    let _ = r.send(Err(failure.clone()));
                }
                let lost: Vec<TopicPartition> = unanswered.drain().flat_map(|(_, tps)| tps).collect();
                if !lost.is_empty() {
                    let _ = events.send(FromTask::CommitFailed(lost));
                }
                failure
            }
        };
        let code = match &failure {
            ClientError::Remote(r) => r.sluice_code,
            _ => 0,
        };
        if code == codes::UNKNOWN_MEMBER {
            // Removed from the group: start over as a new member, holding nothing.
            join.member_id.clear();
            owned.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let _ = events.send(FromTask::Lost(failure));
        } else if !failure.is_retriable() {
            let _ = events.send(FromTask::Fatal(failure));
            return;
        } else {
            tracing::debug!(error = %failure, "membership stream interrupted; rejoining");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
