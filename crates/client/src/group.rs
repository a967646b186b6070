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
use crate::{Client, ClientError, start_position};

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
    /// A reader's failure held back while other readers' records were handed out; the next
    /// poll reports it.
    deferred: Option<ClientError>,
    /// An assignment whose start positions could not be looked up yet: applied again, whole,
    /// by the next poll (nothing of it was applied).
    pending: Option<Assignment>,
    /// Held partitions without a committed offset whose start is not known yet (no leader
    /// answered): read by no reader until a later poll's lookup finds it, while the other
    /// partitions are read. Never started from a guess.
    unplaced: BTreeSet<TopicPartition>,
    /// When `unplaced` was last looked up.
    placed_at: Instant,
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
            deferred: None,
            pending: None,
            unplaced: BTreeSet::new(),
            placed_at: Instant::now(),
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
            // Nothing read: wait for an assignment, or for the next lookup of unplaced ones.
            let until = match self.unplaced.is_empty() {
                true => deadline,
                false => deadline.min(Instant::now() + PLACE_EVERY),
            };
            if let Ok(Some(ev)) = tokio::time::timeout_at(until, self.from_task.recv()).await {
                self.on_event(ev).await?;
            }
            return Ok(Vec::new());
        }
        if self.readers.len() == 1 {
            let step = (deadline.saturating_duration_since(Instant::now())).min(Duration::from_millis(200));
            let r = self.readers.values_mut().next().ok_or_else(|| ClientError::Invalid("no reader".into()))?;
            return r.poll(step).await;
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let mut out = Vec::new();
        for r in self.readers.values_mut() {
            match r.poll(Duration::ZERO).await {
                Ok(records) => out.extend(records),
                // Records already taken from other topics' readers moved their positions:
                // they are handed out now, not dropped with this error, which the next poll
                // reports.
                Err(e) if !out.is_empty() => {
                    self.deferred = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
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
        records: Vec<ConsumerRecord>,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &self.unsure);
        let outcome = self.commit_offsets(&upto).await;
        let settled = settle_commit(
            records,
            &spans,
            upto,
            outcome.as_ref().ok().map(Vec::as_slice),
            &self.assigned,
            &mut self.unsure,
        );
        if let Ok(failed) = &outcome
            && !failed.is_empty()
        {
            tracing::warn!(
                partitions = failed.len(),
                "commit failed; those records are not delivered yet (at-most-once)"
            );
        }
        self.rewind(settled.rewind);
        outcome.map(|_| settled.records)
    }

    /// Moves partitions back to where [`settle_commit`] says.
    fn rewind(&mut self, to: Vec<(TopicPartition, i64)>) {
        for ((t, p), at) in to {
            // Cannot fail: only held partitions are rewound, so their reader exists.
            let _ = self.seek(&t, p, at);
        }
    }

    async fn handle_events(&mut self) -> Result<(), ClientError> {
        if let Some(a) = self.pending.take() {
            self.apply(a).await?;
        }
        while let Ok(ev) = self.from_task.try_recv() {
            self.on_event(ev).await?;
        }
        if !self.unplaced.is_empty() && self.placed_at.elapsed() >= PLACE_EVERY {
            self.place().await;
        }
        Ok(())
    }

    /// Looks up where the unplaced partitions start and gives the ones now known to their
    /// topic's reader (rebuilt from the positions it has, as an assignment does).
    async fn place(&mut self) {
        self.placed_at = Instant::now();
        let spec = reset_spec(self.cfg.auto_offset_reset);
        let wanted: Vec<TopicPartitions> = group_by_topic(&self.unplaced);
        for TopicPartitions { topic, partitions, .. } in wanted {
            let found = match self.client.list_offsets(&topic, partitions, spec, 0).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, topic, "start offsets not available yet");
                    continue;
                }
            };
            let mut parts: BTreeMap<u32, i64> =
                self.readers.get(&topic).map(|r| r.positions().clone()).unwrap_or_default();
            let before = parts.len();
            for o in found.iter().filter(|o| o.error.is_none()) {
                if self.unplaced.remove(&(topic.clone(), o.partition)) {
                    parts.insert(o.partition, start_position(o));
                }
            }
            if parts.len() > before {
                let reader = Consumer::at(self.client.clone(), &topic, parts, self.cfg.fetch.clone());
                self.readers.insert(topic, reader);
            }
        }
    }

    async fn on_event(&mut self, ev: FromTask) -> Result<(), ClientError> {
        match ev {
            FromTask::Joined(id) => self.member_id = id,
            FromTask::Assignment(a) => {
                // The newest assignment is the whole truth: an older one still pending goes.
                self.pending = None;
                self.apply(a).await?
            }
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
                self.unplaced.clear();
                self.pending = None;
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

    async fn apply(&mut self, mut a: Assignment) -> Result<(), ClientError> {
        let added = plan_assignment(&self.assigned, &a).added;
        if self.cfg.fetch.isolation == IsolationLevel::ReadCommitted && !added.is_empty() {
            // A read_committed member starts added partitions at stable offsets only: not
            // at one committed before a transaction (of the partition's previous owner)
            // that is still ending and carries newer offsets (Kafka's require_stable).
            let mut stable = Vec::new();
            for (topic, partitions) in group_by_topic(&added).into_iter().map(|t| (t.topic, t.partitions)) {
                match self.client.fetch_stable_offsets(&self.cfg.group_id, &topic, partitions).await {
                    Ok(offsets) => stable.extend(offsets),
                    Err(e) if e.is_retriable() => {
                        tracing::debug!(error = %e, "committed offsets not stable yet; the assignment waits");
                        self.pending = Some(a);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Ok(());
                    }
                    Err(e) => {
                        self.pending = Some(a);
                        return Err(e);
                    }
                }
            }
            // Held partitions keep their positions; only the added ones take these.
            a.offsets = stable;
        }
        let plan = plan_assignment(&self.assigned, &a);
        // Looked up before anything changes: when it fails, the assignment is kept whole for
        // the next poll rather than half applied (revocations done, partitions not taken).
        let spec = reset_spec(self.cfg.auto_offset_reset);
        let mut reset_at = BTreeMap::new();
        let mut unplaced = BTreeSet::new();
        for (topic, parts) in &plan.reset {
            match self.client.list_offsets(topic, parts.clone(), spec, 0).await {
                Ok(found) => {
                    for o in found {
                        let tp = (topic.clone(), o.partition);
                        match o.error {
                            // No leader to tell where it starts: placed by a later poll.
                            Some(e) => {
                                tracing::debug!(topic, partition = o.partition, error = %e.message, "start not known yet");
                                unplaced.insert(tp);
                            }
                            None => {
                                reset_at.insert(tp, start_position(&o));
                            }
                        }
                    }
                }
                // The coordinator may hand out a topic just created before this gateway's view
                // has it: the assignment waits for it, as for any passing error.
                Err(e) if e.is_retriable() || e.code() == Some(tonic::Code::NotFound) => {
                    tracing::debug!(error = %e, topic, "start offsets not available yet; the assignment waits");
                    self.pending = Some(a);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(());
                }
                Err(e) => {
                    // A newer assignment replaces this one; a pending one stays otherwise.
                    self.pending = Some(a);
                    return Err(e);
                }
            }
        }
        let positions = self.positions();
        if !plan.revoked.is_empty() {
            let auto_commit = self.cfg.auto_commit_interval.is_some();
            let offsets = revocation_commit(self.cfg.delivery, auto_commit, &plan.revoked, &positions);
            if !offsets.is_empty()
                && let Err(e) = self.commit_offsets(&offsets).await
            {
                tracing::warn!(error = %e, "commit of revoked partitions failed");
            }
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&plan.revoked);
            }
            for tp in &plan.revoked {
                // Its next owner starts from what was really committed.
                self.unsure.remove(tp);
            }
        }
        let rebuild = rebuilt_readers(&plan, positions, reset_at);
        self.assigned = plan.held;
        self.unplaced.extend(unplaced);
        self.unplaced.retain(|tp| self.assigned.contains(tp));
        self.generation = plan.generation;
        *self.owned.lock().unwrap_or_else(|p| p.into_inner()) = self.assigned.clone();
        for (topic, parts) in rebuild {
            if parts.is_empty() {
                self.readers.remove(&topic);
            } else {
                let reader = Consumer::at(self.client.clone(), &topic, parts, self.cfg.fetch.clone());
                self.readers.insert(topic, reader);
            }
        }
        if !plan.added.is_empty()
            && let Some(l) = self.listener.as_mut()
        {
            l.on_assigned(&plan.added);
        }
        let _ = self.to_task.send(ToTask::Ack(plan.generation));
        Ok(())
    }

    fn request(&self, offsets: &BTreeMap<TopicPartition, i64>) -> CommitOffsetsRequest {
        commit_request(&self.cfg.group_id, "", self.generation, offsets)
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
        let answer = read_commit_answer(offsets, resp)?;
        for ((t, p), e) in &answer.failed {
            tracing::warn!(topic = %t, partition = *p, error = %e.message, "commit failed");
        }
        self.committed.extend(answer.committed);
        self.last_commit = Instant::now();
        Ok(answer.failed)
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

    /// Positions that moved since they were last committed, never below an at-most-once
    /// commit whose outcome is unknown (committed offsets do not move back, whoever commits).
    fn uncommitted(&self) -> BTreeMap<TopicPartition, i64> {
        moved_since_commit(floored(self.positions(), &self.unsure), &self.committed)
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

// The decisions of the group consumer, apart from its I/O (the membership task, the
// readers, the client), so that they can be tested on their own.

/// An assignment worked out against the partitions the member holds.
#[derive(Debug, PartialEq, Eq)]
struct AssignmentPlan {
    generation: u64,
    /// What the member holds once the assignment is applied.
    held: BTreeSet<TopicPartition>,
    /// Held now and not in the assignment.
    revoked: Vec<TopicPartition>,
    /// In the assignment and not held now.
    added: Vec<TopicPartition>,
    /// Added partitions that start at their committed offset.
    committed: BTreeMap<TopicPartition, i64>,
    /// Added partitions without a committed offset, by topic: they start where
    /// `auto_offset_reset` says.
    reset: BTreeMap<String, Vec<u32>>,
}

fn plan_assignment(held: &BTreeSet<TopicPartition>, a: &Assignment) -> AssignmentPlan {
    let next: BTreeSet<TopicPartition> = flatten_topics(&a.partitions);
    let revoked = held.difference(&next).cloned().collect();
    let added: Vec<TopicPartition> = next.difference(held).cloned().collect();
    let offsets: HashMap<TopicPartition, i64> =
        a.offsets.iter().filter(|o| o.offset >= 0).map(|o| ((o.topic.clone(), o.partition), o.offset)).collect();
    // A full assignment after a rejoin may also restate partitions held all along: their
    // committed offsets are not taken (the local position is ahead).
    let mut committed = BTreeMap::new();
    let mut reset: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for tp in &added {
        match offsets.get(tp) {
            Some(o) => {
                committed.insert(tp.clone(), *o);
            }
            None => reset.entry(tp.0.clone()).or_default().push(tp.1),
        }
    }
    AssignmentPlan { generation: a.generation, held: next, revoked, added, committed, reset }
}

/// What is committed when `revoked` are taken away: their positions, with at-least-once and
/// auto-commit; nothing otherwise (at-most-once committed before handing records out).
fn revocation_commit(
    delivery: DeliveryMode,
    auto_commit: bool,
    revoked: &[TopicPartition],
    positions: &BTreeMap<TopicPartition, i64>,
) -> BTreeMap<TopicPartition, i64> {
    if delivery != DeliveryMode::AtLeastOnce || !auto_commit {
        return BTreeMap::new();
    }
    revoked.iter().filter_map(|tp| positions.get(tp).map(|o| (tp.clone(), *o))).collect()
}

/// The offset lookup for partitions without a committed offset.
fn reset_spec(auto_offset_reset: StartFrom) -> OffsetSpec {
    if auto_offset_reset == StartFrom::Latest { OffsetSpec::Latest } else { OffsetSpec::Earliest }
}

/// How often a member looks up where its unplaced partitions start.
const PLACE_EVERY: Duration = Duration::from_millis(100);

/// The readers to rebuild once `plan` is applied: one per topic that lost or gained
/// partitions, reading its held partitions, kept ones from `positions` (where they are) and
/// added ones from their committed offset or `reset_at`. An empty map means the topic's
/// reader goes.
fn rebuilt_readers(
    plan: &AssignmentPlan,
    mut positions: BTreeMap<TopicPartition, i64>,
    reset_at: BTreeMap<TopicPartition, i64>,
) -> BTreeMap<String, BTreeMap<u32, i64>> {
    positions.extend(plan.committed.iter().map(|(tp, o)| (tp.clone(), *o)));
    positions.extend(reset_at);
    let touched: BTreeSet<&str> = plan.revoked.iter().chain(&plan.added).map(|tp| tp.0.as_str()).collect();
    touched
        .into_iter()
        .map(|topic| {
            let parts: BTreeMap<u32, i64> = positions
                .iter()
                .filter(|(tp, _)| tp.0 == topic && plan.held.contains(*tp))
                .map(|(tp, o)| (tp.1, *o))
                .collect();
            (topic.to_string(), parts)
        })
        .collect()
}

/// (first offset, next offset) per partition of polled records, keyed by the shared topic
/// name: no allocation per record.
type Spans = BTreeMap<(Arc<str>, u32), (i64, i64)>;

fn record_spans(records: &[ConsumerRecord]) -> Spans {
    let mut spans = Spans::new();
    for r in records {
        let e = spans.entry((r.topic.clone(), r.partition)).or_insert((r.offset, r.offset + 1));
        e.0 = e.0.min(r.offset);
        e.1 = e.1.max(r.offset + 1);
    }
    spans
}

/// At-most-once: what to commit before handing out the records of `spans`. The offset after
/// them, but never below an earlier commit of the partition whose outcome is unknown
/// (`unsure`): it may have landed, and the committed offset does not move back.
fn commit_targets(spans: &Spans, unsure: &BTreeMap<TopicPartition, i64>) -> BTreeMap<TopicPartition, i64> {
    spans
        .iter()
        .map(|((t, p), (_, next))| {
            let tp = (t.to_string(), *p);
            let at = unsure.get(&tp).map_or(*next, |u| (*u).max(*next));
            (tp, at)
        })
        .collect()
}

/// `positions` raised to the `floors` of their partitions.
fn floored(
    mut positions: BTreeMap<TopicPartition, i64>,
    floors: &BTreeMap<TopicPartition, i64>,
) -> BTreeMap<TopicPartition, i64> {
    for (tp, floor) in floors {
        if let Some(at) = positions.get_mut(tp) {
            *at = (*at).max(*floor);
        }
    }
    positions
}

/// What an at-most-once poll does once its commit is settled.
#[derive(Debug, PartialEq, Eq)]
struct Settled {
    /// The records to hand out.
    records: Vec<ConsumerRecord>,
    /// Held partitions to move back to the first record held back.
    rewind: Vec<(TopicPartition, i64)>,
}

/// At-most-once, once the commit of `upto` (from [`commit_targets`] over `spans`) is settled:
/// `failed` lists the partitions whose commit failed, `None` when the outcome is unknown (no
/// answer, or the whole request failed). Records of partitions not known to be committed
/// are held back and those partitions rewound to them; `unsure` keeps the commits that may
/// have landed.
fn settle_commit(
    mut records: Vec<ConsumerRecord>,
    spans: &Spans,
    upto: BTreeMap<TopicPartition, i64>,
    failed: Option<&[(TopicPartition, RemoteError)]>,
    held: &BTreeSet<TopicPartition>,
    unsure: &mut BTreeMap<TopicPartition, i64>,
) -> Settled {
    let Some(failed) = failed else {
        unsure.extend(upto);
        return Settled { records: Vec::new(), rewind: rewind_points(spans, held, |_| true) };
    };
    for (tp, at) in upto {
        match failed.iter().find(|(f, _)| *f == tp) {
            None => {
                unsure.remove(&tp);
            }
            // A write that failed on the way (not a refusal) may have landed.
            Some((_, e)) if e.retriable => {
                unsure.insert(tp, at);
            }
            Some(_) => {}
        }
    }
    if failed.is_empty() {
        return Settled { records, rewind: Vec::new() };
    }
    let refused = |t: &str, p: u32| failed.iter().any(|((ft, fp), _)| ft == t && *fp == p);
    let rewind = rewind_points(spans, held, |(t, p)| refused(t, *p));
    records.retain(|r| !refused(&r.topic, r.partition));
    Settled { records, rewind }
}

/// The first offset of each span `which` selects, for partitions still held (a partition
/// gone is not read here any more).
fn rewind_points(
    spans: &Spans,
    held: &BTreeSet<TopicPartition>,
    which: impl Fn(&(Arc<str>, u32)) -> bool,
) -> Vec<(TopicPartition, i64)> {
    spans
        .iter()
        .filter(|(k, _)| which(k))
        .map(|((t, p), (first, _))| ((t.to_string(), *p), *first))
        .filter(|(tp, _)| held.contains(tp))
        .collect()
}

/// A commit of `offsets` (the next offset to read, per partition) under `generation`: on the
/// membership stream (`member_id` empty: the membership task sets its id), or by a classic
/// member.
pub fn commit_request(
    group_id: &str,
    member_id: &str,
    generation: u64,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        id: 0,
        group_id: group_id.to_string(),
        member_id: member_id.to_string(),
        generation,
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

/// The answer to a commit, per partition.
#[derive(Debug, PartialEq, Eq)]
struct CommitAnswer {
    /// The partitions committed, at the offset asked for.
    committed: BTreeMap<TopicPartition, i64>,
    /// The partitions whose commit failed, with why.
    failed: Vec<(TopicPartition, RemoteError)>,
}

/// Reads the answer to a commit of `offsets`; `Err` when the whole request failed.
fn read_commit_answer(
    offsets: &BTreeMap<TopicPartition, i64>,
    resp: CommitOffsetsResponse,
) -> Result<CommitAnswer, RemoteError> {
    if let Some(e) = resp.error {
        return Err(RemoteError::from(&e));
    }
    let mut answer = CommitAnswer { committed: BTreeMap::new(), failed: Vec::new() };
    for r in resp.results {
        let tp = (r.topic, r.partition);
        match r.error {
            None => {
                // A success for a partition not asked about records nothing.
                if let Some(o) = offsets.get(&tp) {
                    answer.committed.insert(tp, *o);
                }
            }
            Some(e) => answer.failed.push((tp, RemoteError::from(&e))),
        }
    }
    Ok(answer)
}

/// Positions that differ from the offset last committed (or sent asynchronously) for their
/// partition.
fn moved_since_commit(
    positions: BTreeMap<TopicPartition, i64>,
    committed: &BTreeMap<TopicPartition, i64>,
) -> BTreeMap<TopicPartition, i64> {
    positions.into_iter().filter(|(tp, o)| committed.get(tp) != Some(o)).collect()
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

/// The leader's answer in a classic group's SyncGroup: [`cooperative_assign`] of `tasks`
/// over `members`, each member's running tasks read from its join metadata by `owned`, each
/// share written by `encode`.
pub fn cooperative_assignments<T: Ord + Clone>(
    members: &[sluice_proto::v1::ClassicMember],
    tasks: &[T],
    owned: impl Fn(&[u8]) -> Vec<T>,
    encode: impl Fn(&[T]) -> Vec<u8>,
) -> Vec<sluice_proto::v1::ClassicAssignment> {
    let running: BTreeMap<String, Vec<T>> = members.iter().map(|m| (m.member_id.clone(), owned(&m.metadata))).collect();
    cooperative_assign(&running, tasks)
        .into_iter()
        .map(|(member_id, share)| sluice_proto::v1::ClassicAssignment { member_id, assignment: encode(&share).into() })
        .collect()
}

/// A cooperative, sticky split of `tasks` over the members of a classic group, as the
/// leader computes it (Connect's runners and Streams instances use it). `owned` is what each
/// member runs now. A task stays where it runs while that member is within the fair share
/// (tasks / members, rounded up); tasks nobody runs go to the least loaded members (ties to
/// the lowest member id); a task whose member is over its share is revoked: assigned to
/// nobody this generation, so that its member stops it before the next generation hands it
/// on (a task never runs in two places at once).
pub fn cooperative_assign<T: Ord + Clone>(owned: &BTreeMap<String, Vec<T>>, tasks: &[T]) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = owned.keys().map(|m| (m.clone(), Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    let fair = tasks.len().div_ceil(out.len());
    let wanted: std::collections::BTreeSet<&T> = tasks.iter().collect();
    let mut placed: std::collections::BTreeSet<&T> = std::collections::BTreeSet::new();
    let mut revoked = std::collections::BTreeSet::new();
    for (member, tasks) in owned {
        let mut kept: Vec<&T> = tasks.iter().filter(|t| wanted.contains(t) && !placed.contains(t)).collect();
        kept.sort();
        for t in kept {
            if out[member].len() < fair {
                placed.insert(t);
                if let Some(list) = out.get_mut(member) {
                    list.push(t.clone());
                }
            } else {
                revoked.insert(t);
            }
        }
    }
    for t in tasks.iter().filter(|t| !placed.contains(t) && !revoked.contains(t)) {
        let least = out.iter().min_by_key(|(m, l)| (l.len(), *m)).map(|(m, _)| m.clone());
        if let Some(list) = least.and_then(|m| out.get_mut(&m)) {
            list.push(t.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: u32) -> TopicPartition {
        (t.to_string(), p)
    }

    fn rec(t: &str, p: u32, offset: i64) -> ConsumerRecord {
        ConsumerRecord {
            topic: t.into(),
            partition: p,
            offset,
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: vec![],
        }
    }

    fn recs(t: &str, p: u32, offsets: std::ops::RangeInclusive<i64>) -> Vec<ConsumerRecord> {
        offsets.map(|o| rec(t, p, o)).collect()
    }

    fn tps(t: &str, partitions: &[u32]) -> TopicPartitions {
        TopicPartitions { topic: t.to_string(), partitions: partitions.to_vec(), topic_id: 0 }
    }

    fn committed_offset(t: &str, p: u32, offset: i64) -> CommittedOffset {
        CommittedOffset { topic: t.to_string(), partition: p, offset, metadata: String::new(), commit_time_ms: 0 }
    }

    /// A per-partition error as the coordinator sends it: retriable when the write failed on
    /// the way (it may have landed), not when the commit was refused.
    fn wire_error(retriable: bool) -> sluice_proto::v1::Error {
        let (code, message) = if retriable { (14, "not written") } else { (9, "not held since that generation") };
        sluice_proto::v1::Error { code, message: message.into(), retriable, sluice_code: 0 }
    }

    fn remote(retriable: bool) -> RemoteError {
        RemoteError::from(&wire_error(retriable))
    }

    /// The answer to a commit that wrote every partition: none failed.
    const ALL_WRITTEN: &[(TopicPartition, RemoteError)] = &[];

    #[test]
    fn assignment_splits_revoked_and_added_and_where_added_ones_start() {
        let held = BTreeSet::from([tp("a", 0), tp("a", 1), tp("b", 0)]);
        let a = Assignment {
            generation: 7,
            partitions: vec![tps("a", &[1, 2, 3, 4]), tps("c", &[0])],
            offsets: vec![
                committed_offset("a", 2, 40),
                // Nothing committed: reset.
                committed_offset("a", 3, -1),
                // Zero is a committed offset.
                committed_offset("a", 4, 0),
                // Held all along: the local position stands.
                committed_offset("a", 1, 5),
                // Not assigned: ignored.
                committed_offset("z", 9, 3),
            ],
        };
        assert_eq!(
            plan_assignment(&held, &a),
            AssignmentPlan {
                generation: 7,
                held: BTreeSet::from([tp("a", 1), tp("a", 2), tp("a", 3), tp("a", 4), tp("c", 0)]),
                revoked: vec![tp("a", 0), tp("b", 0)],
                added: vec![tp("a", 2), tp("a", 3), tp("a", 4), tp("c", 0)],
                committed: BTreeMap::from([(tp("a", 2), 40), (tp("a", 4), 0)]),
                reset: BTreeMap::from([("a".to_string(), vec![3]), ("c".to_string(), vec![0])]),
            }
        );
    }

    #[test]
    fn a_first_assignment_adds_all_and_a_restated_one_changes_nothing() {
        let a = Assignment { generation: 1, partitions: vec![tps("a", &[0, 1])], offsets: vec![] };
        let first = plan_assignment(&BTreeSet::new(), &a);
        assert!(first.revoked.is_empty());
        assert_eq!(first.added, vec![tp("a", 0), tp("a", 1)]);
        assert_eq!(first.reset, BTreeMap::from([("a".to_string(), vec![0, 1])]));

        // After a rejoin the coordinator restates what the member held, with committed
        // offsets behind its positions: only the generation moves, no reader is rebuilt.
        let again = Assignment {
            generation: 2,
            partitions: vec![tps("a", &[0, 1])],
            offsets: vec![committed_offset("a", 0, 3), committed_offset("a", 1, 4)],
        };
        let plan = plan_assignment(&first.held, &again);
        assert_eq!(
            plan,
            AssignmentPlan {
                generation: 2,
                held: first.held.clone(),
                revoked: vec![],
                added: vec![],
                committed: BTreeMap::new(),
                reset: BTreeMap::new(),
            }
        );
        let positions = BTreeMap::from([(tp("a", 0), 10), (tp("a", 1), 20)]);
        assert_eq!(rebuilt_readers(&plan, positions, BTreeMap::new()), BTreeMap::new());
    }

    #[test]
    fn readers_are_rebuilt_for_the_topics_that_changed() {
        let held = BTreeSet::from([tp("a", 0), tp("a", 1), tp("b", 0), tp("d", 0)]);
        let positions = BTreeMap::from([(tp("a", 0), 10), (tp("a", 1), 17), (tp("b", 0), 3), (tp("d", 0), 8)]);
        let a = Assignment {
            generation: 4,
            partitions: vec![tps("a", &[1, 2, 3]), tps("c", &[0]), tps("d", &[0])],
            offsets: vec![committed_offset("a", 2, 40), committed_offset("a", 1, 5)],
        };
        let plan = plan_assignment(&held, &a);
        assert_eq!(plan.reset, BTreeMap::from([("a".to_string(), vec![3]), ("c".to_string(), vec![0])]));
        let reset_at = BTreeMap::from([(tp("a", 3), 100), (tp("c", 0), 0)]);
        assert_eq!(
            rebuilt_readers(&plan, positions, reset_at),
            BTreeMap::from([
                // Kept a1 where it was (not at the restated 5), a2 at its committed offset, a3
                // where the reset put it; a0 dropped.
                ("a".to_string(), BTreeMap::from([(1, 17), (2, 40), (3, 100)])),
                // Nothing of b left: its reader goes.
                ("b".to_string(), BTreeMap::new()),
                ("c".to_string(), BTreeMap::from([(0, 0)])),
                // d is untouched: its reader keeps reading.
            ])
        );
    }

    #[test]
    fn partitions_without_a_committed_offset_start_where_the_reset_says() {
        assert_eq!(reset_spec(StartFrom::Earliest), OffsetSpec::Earliest);
        assert_eq!(reset_spec(StartFrom::Latest), OffsetSpec::Latest);
        let found = PartitionOffset { partition: 0, offset: 7, timestamp_ms: -1, log_end_offset: 12, error: None };
        assert_eq!(start_position(&found), 7);
        let none = PartitionOffset { offset: -1, ..found.clone() };
        assert_eq!(start_position(&none), 12);
    }

    #[test]
    fn revoked_positions_are_committed_only_at_least_once_with_auto_commit() {
        let positions = BTreeMap::from([(tp("a", 0), 10), (tp("a", 1), 17), (tp("b", 0), 3)]);
        // z9 has no reader, hence no position: nothing to commit for it.
        let revoked = [tp("a", 0), tp("b", 0), tp("z", 9)];
        assert_eq!(
            revocation_commit(DeliveryMode::AtLeastOnce, true, &revoked, &positions),
            BTreeMap::from([(tp("a", 0), 10), (tp("b", 0), 3)])
        );
        assert_eq!(revocation_commit(DeliveryMode::AtLeastOnce, false, &revoked, &positions), BTreeMap::new());
        assert_eq!(revocation_commit(DeliveryMode::AtMostOnce, true, &revoked, &positions), BTreeMap::new());
        assert_eq!(revocation_commit(DeliveryMode::AtMostOnce, false, &revoked, &positions), BTreeMap::new());
    }

    #[test]
    fn at_most_once_commits_the_offset_after_each_partitions_records() {
        // Out of order and with a gap (compacted or transaction markers): first and next
        // are the extremes.
        let records = vec![rec("a", 0, 9), rec("b", 1, 0), rec("a", 0, 5), rec("a", 0, 6)];
        let spans = record_spans(&records);
        assert_eq!(spans, Spans::from([((Arc::<str>::from("a"), 0), (5, 10)), ((Arc::<str>::from("b"), 1), (0, 1))]));
        assert_eq!(commit_targets(&spans, &BTreeMap::new()), BTreeMap::from([(tp("a", 0), 10), (tp("b", 1), 1)]));
    }

    #[test]
    fn a_commit_that_succeeded_hands_out_every_record() {
        let records = vec![rec("a", 0, 5), rec("a", 0, 6), rec("b", 1, 0)];
        let held = BTreeSet::from([tp("a", 0), tp("b", 1)]);
        let mut unsure = BTreeMap::from([(tp("a", 0), 3), (tp("c", 2), 50)]);
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        assert_eq!(upto, BTreeMap::from([(tp("a", 0), 7), (tp("b", 1), 1)]));
        let settled = settle_commit(records.clone(), &spans, upto, Some(ALL_WRITTEN), &held, &mut unsure);
        assert_eq!(settled, Settled { records, rewind: vec![] });
        // a0 is known committed now; c2 was not part of this commit.
        assert_eq!(unsure, BTreeMap::from([(tp("c", 2), 50)]));
    }

    #[test]
    fn records_of_partitions_whose_commit_failed_are_held_back_and_rewound() {
        let records = vec![rec("a", 0, 5), rec("b", 1, 0), rec("c", 2, 8), rec("a", 0, 6), rec("c", 2, 9)];
        let held = BTreeSet::from([tp("a", 0), tp("b", 1), tp("c", 2)]);
        let mut unsure = BTreeMap::from([(tp("c", 2), 9)]);
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        assert_eq!(upto, BTreeMap::from([(tp("a", 0), 7), (tp("b", 1), 1), (tp("c", 2), 10)]));
        // a0 not written (it may have landed), b1 refused, c2 committed.
        let failed = [(tp("a", 0), remote(true)), (tp("b", 1), remote(false))];
        let settled = settle_commit(records, &spans, upto, Some(&failed[..]), &held, &mut unsure);
        assert_eq!(
            settled,
            Settled { records: vec![rec("c", 2, 8), rec("c", 2, 9)], rewind: vec![(tp("a", 0), 5), (tp("b", 1), 0)] }
        );
        // a0's commit may have landed: a floor. A refusal wrote nothing: no floor for b1.
        assert_eq!(unsure, BTreeMap::from([(tp("a", 0), 7)]));
    }

    #[test]
    fn a_commit_without_an_answer_holds_every_record_back() {
        let mut records = recs("a", 0, 10..=19);
        records.push(rec("b", 1, 3));
        // b1 is no longer held: it is not rewound (its reader is gone).
        let held = BTreeSet::from([tp("a", 0)]);
        let mut unsure = BTreeMap::new();
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        let settled = settle_commit(records, &spans, upto, None, &held, &mut unsure);
        assert_eq!(settled, Settled { records: vec![], rewind: vec![(tp("a", 0), 10)] });
        assert_eq!(unsure, BTreeMap::from([(tp("a", 0), 20), (tp("b", 1), 4)]));
    }

    #[test]
    fn commits_never_go_below_one_whose_outcome_is_unknown() {
        let held = BTreeSet::from([tp("a", 0)]);
        let mut unsure = BTreeMap::new();

        // 10..=19 read; the commit of 20 gets no answer: nothing handed out, back to 10.
        let records = recs("a", 0, 10..=19);
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        assert_eq!(upto, BTreeMap::from([(tp("a", 0), 20)]));
        let settled = settle_commit(records, &spans, upto, None, &held, &mut unsure);
        assert_eq!(settled.rewind, vec![(tp("a", 0), 10)]);

        // Only 10..=14 come back: the commit is still of 20, not 15. It fails on the way.
        let records = recs("a", 0, 10..=14);
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        assert_eq!(upto, BTreeMap::from([(tp("a", 0), 20)]));
        let failed = [(tp("a", 0), remote(true))];
        let settled = settle_commit(records, &spans, upto, Some(&failed[..]), &held, &mut unsure);
        assert_eq!(settled, Settled { records: vec![], rewind: vec![(tp("a", 0), 10)] });
        assert_eq!(unsure, BTreeMap::from([(tp("a", 0), 20)]));

        // 10..=24 come back: past the floor, the commit is of 25; it succeeds.
        let records = recs("a", 0, 10..=24);
        let spans = record_spans(&records);
        let upto = commit_targets(&spans, &unsure);
        assert_eq!(upto, BTreeMap::from([(tp("a", 0), 25)]));
        let settled = settle_commit(records.clone(), &spans, upto, Some(ALL_WRITTEN), &held, &mut unsure);
        assert_eq!(settled, Settled { records, rewind: vec![] });
        assert_eq!(unsure, BTreeMap::new());

        // The floor is gone once a commit is known written.
        let spans = record_spans(&[rec("a", 0, 25)]);
        assert_eq!(commit_targets(&spans, &unsure), BTreeMap::from([(tp("a", 0), 26)]));
    }

    #[test]
    fn a_commit_request_carries_the_generation_and_the_offsets() {
        let offsets = BTreeMap::from([(tp("b", 1), 3), (tp("a", 0), 10)]);
        assert_eq!(
            commit_request("payments", "", 9, &offsets),
            CommitOffsetsRequest {
                id: 0,
                group_id: "payments".into(),
                member_id: String::new(),
                generation: 9,
                offsets: vec![committed_offset("a", 0, 10), committed_offset("b", 1, 3)],
            }
        );
    }

    #[test]
    fn a_commit_answer_splits_committed_and_failed_partitions() {
        let offsets = BTreeMap::from([(tp("a", 0), 10), (tp("b", 1), 3)]);
        let result = |t: &str, p: u32, error: Option<sluice_proto::v1::Error>| PartitionCommitResult {
            topic: t.to_string(),
            partition: p,
            error,
        };
        let resp = CommitOffsetsResponse {
            id: 4,
            results: vec![result("a", 0, None), result("b", 1, Some(wire_error(true))), result("z", 9, None)],
            error: None,
        };
        assert_eq!(
            read_commit_answer(&offsets, resp),
            Ok(CommitAnswer {
                // z9 was not asked about: nothing is recorded for it.
                committed: BTreeMap::from([(tp("a", 0), 10)]),
                failed: vec![(tp("b", 1), remote(true))],
            })
        );
        let whole = CommitOffsetsResponse { id: 5, results: vec![], error: Some(wire_error(false)) };
        assert_eq!(read_commit_answer(&offsets, whole), Err(remote(false)));
    }

    #[test]
    fn uncommitted_positions_are_those_that_moved() {
        let positions = BTreeMap::from([(tp("a", 0), 10), (tp("a", 1), 5), (tp("b", 0), 7)]);
        let mut committed = BTreeMap::from([(tp("a", 0), 10), (tp("a", 1), 3), (tp("z", 9), 1)]);
        assert_eq!(
            moved_since_commit(positions.clone(), &committed),
            BTreeMap::from([(tp("a", 1), 5), (tp("b", 0), 7)])
        );
        // An asynchronous commit of a0 failed (FromTask::CommitFailed forgets it): a0 is
        // committed again.
        committed.remove(&tp("a", 0));
        assert_eq!(moved_since_commit(positions.clone(), &committed), positions);
    }

    #[test]
    fn manual_commits_never_go_below_an_unknown_outcome() {
        let tp = |p: u32| ("t".to_string(), p);
        // Partition 0 was rewound to 10 after a commit of 20 got no answer; 1 has no floor; a
        // floor for a partition not held is ignored.
        let positions = BTreeMap::from([(tp(0), 10), (tp(1), 7)]);
        let floors = BTreeMap::from([(tp(0), 20), (tp(2), 5)]);
        assert_eq!(floored(positions, &floors), BTreeMap::from([(tp(0), 20), (tp(1), 7)]));
    }
}
