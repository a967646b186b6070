//! One consumer group's membership and assignment: the incremental rebalancing protocol.
//!
//! The coordinator computes a target assignment (see [`crate::assignor`]) whenever members,
//! subscriptions or partition counts change. Each member is then sent the set it should hold
//! now: what it holds that is still its target, plus target partitions nobody holds. A
//! partition leaving a member is simply missing from its next set; the member releases it and
//! acknowledges, and only then is the partition handed to its new owner. A member that does
//! not release within its rebalance timeout, or goes silent for its session timeout, is
//! removed and what it held is free.
//!
//! Commits are fenced here: a member may commit a partition only while it holds it, under a
//! generation no older than the one it was handed the partition at.
//!
//! Events reach a member through a bounded queue ([`EVENTS_QUEUED`]). A member (or the
//! gateway in front of it) that does not read them fills it; its stream is then ended with a
//! retriable COORDINATOR_NOT_AVAILABLE and the member is kept for its session timeout, as
//! after a broken connection: it re-attaches under its id with what it holds, and the
//! coordinator's memory stays bounded whatever members do.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_proto::v1::member_event::Kind as EventKind;
use sluice_proto::v1::{Assignment, CommittedOffset, MemberEvent};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Status;

use sluice_core::topic::group_by_topic;

use crate::assignor::{Assignor, MemberSpec, Tp};
use crate::classic::{self, Classic};
use crate::store::{Committed, GroupSnapshot, KafkaSnapshot, MemberSnapshot};

/// Events queued for a member's stream before it counts as not reading.
pub const EVENTS_QUEUED: usize = 64;

/// How events reach a member's stream.
pub type EventTx = mpsc::Sender<Result<MemberEvent, Status>>;

/// A member's open stream.
pub struct Conn {
    pub id: u64,
    pub tx: EventTx,
    /// Tells the stream's task to stop reading (the member was removed or replaced, or does
    /// not read its events).
    pub kick: Arc<Notify>,
    /// Set once the queue overflowed: nothing more is sent, the stream is ending.
    stalled: Arc<AtomicBool>,
}

impl Conn {
    pub fn new(id: u64, tx: EventTx, kick: Arc<Notify>) -> Self {
        Self { id, tx, kick, stalled: Arc::default() }
    }

    /// Queues an event; a full queue ends the stream (see the module docs).
    pub fn send(&self, kind: EventKind) {
        if self.stalled.load(Ordering::Acquire) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Ok(MemberEvent { kind: Some(kind) })) {
            self.stalled.store(true, Ordering::Release);
            let why = SluiceError::CoordinatorNotAvailable(format!(
                "{EVENTS_QUEUED} membership events were not read; rejoin under the same member id"
            ));
            self.end(why.into());
        }
    }

    /// Ends the stream with `status`.
    fn close(&self, status: Status) {
        self.stalled.store(true, Ordering::Release);
        self.end(status);
    }

    fn end(&self, status: Status) {
        self.kick.notify_one();
        // The status waits for room behind the queued events, for a while: a member that
        // never reads again just loses its stream when the queue is dropped.
        let tx = self.tx.clone();
        if let Err(mpsc::error::TrySendError::Full(last)) = tx.try_send(Err(status)) {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), tx.send(last)).await;
            });
        }
    }
}

/// What a member asked for when it joined.
pub struct JoinSpec {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Partitions it says it still holds (it rejoins after a broken stream or a new
    /// coordinator).
    pub owned: Vec<Tp>,
}

/// A Kafka consumer-protocol member (KIP-848): it has no stream; its heartbeats report what it
/// owns and are answered with what it may use and its epoch (the generation of its set).
#[derive(Debug, Clone, Default)]
pub struct KafkaState {
    /// The epoch last answered, and the one before it: a member whose answer was lost sends
    /// the older one.
    pub reported_epoch: i32,
    pub previous_epoch: i32,
    /// The set last answered (`None`: never, or lost with a failover).
    pub reported_set: Option<BTreeSet<Tp>>,
    /// Restored from a snapshot and not heard from since (see `consumer_heartbeat`).
    pub restored: bool,
    /// A static member that left (epoch -2): it keeps its partitions, and nothing moves, until
    /// a member with its instance id takes them over or its session ends.
    pub static_left: bool,
    pub client_host: String,
}

/// What a consumer-protocol member joins with.
pub struct ConsumerJoin {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub client_host: String,
    pub topics: BTreeSet<String>,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// What a consumer-protocol heartbeat may change; `None` leaves a field as it is.
#[derive(Default)]
pub struct ConsumerUpdate {
    pub topics: Option<BTreeSet<String>>,
    pub assignor: Option<Assignor>,
    pub rebalance_timeout: Option<Duration>,
    /// The partitions it owns: held ones it no longer owns and was asked to release are free.
    pub owned: Option<BTreeSet<Tp>>,
}

pub struct Member {
    pub id: String,
    pub instance_id: String,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub last_seen: Instant,
    /// `None` for a static member whose stream closed: kept for its session timeout.
    pub conn: Option<Conn>,
    /// What the member holds, with the generation it was handed each partition at (0 for
    /// partitions it already held when it joined).
    pub held: BTreeMap<Tp, u64>,
    /// The last set sent.
    pub sent: BTreeSet<Tp>,
    /// The generation of the last set sent.
    pub generation: u64,
    /// Sets sent and not yet acknowledged, by generation.
    unacked: BTreeMap<u64, BTreeSet<Tp>>,
    /// When a revocation must be acknowledged by.
    revoke_deadline: Option<Instant>,
    /// A new stream: send the whole assignment, with offsets, even if it did not change.
    needs_full: bool,
    /// Commits accepted and being written: a member is not expired meanwhile, so that a new
    /// owner never starts from an offset older than one about to be committed.
    pub commits_in_flight: usize,
    /// Set for a Kafka consumer-protocol member.
    pub kafka: Option<KafkaState>,
}

impl Member {
    /// Moves the member to its next set: what it holds of `desired` (its target) plus target
    /// partitions nobody holds (`holders`, which gains them), handed at `generation`. Returns
    /// the set and the partitions added, or `None` when nothing changes for it.
    fn step(
        &mut self,
        desired: &BTreeSet<Tp>,
        holders: &mut BTreeSet<Tp>,
        generation: u64,
        now: Instant,
    ) -> Option<(BTreeSet<Tp>, Vec<Tp>)> {
        let mut next: BTreeSet<Tp> = self.held.keys().filter(|tp| desired.contains(*tp)).cloned().collect();
        let mut added = Vec::new();
        for tp in desired.iter().filter(|tp| !holders.contains(*tp)) {
            next.insert(tp.clone());
            added.push(tp.clone());
        }
        if next == self.sent && !self.needs_full {
            return None;
        }
        for tp in &added {
            self.held.insert(tp.clone(), generation);
            holders.insert(tp.clone());
        }
        self.sent = next.clone();
        self.generation = generation;
        self.needs_full = false;
        if self.revoking().next().is_some() {
            self.revoke_deadline.get_or_insert(now + self.rebalance_timeout);
        } else {
            self.revoke_deadline = None;
        }
        Some((next, added))
    }

    /// Held partitions it was asked to release.
    pub fn revoking(&self) -> impl Iterator<Item = &Tp> {
        self.held.keys().filter(|tp| !self.sent.contains(*tp))
    }
}

/// One group.
pub struct Group {
    pub id: String,
    pub members: BTreeMap<String, Member>,
    /// Bumped whenever the target assignment changes.
    pub generation: u64,
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    pub assignor: Assignor,
    pub offsets: BTreeMap<Tp, Committed>,
    /// Members removed for silence: a rejoin under their id is refused (they must start over).
    expired: VecDeque<String>,
    /// Kafka classic members (see [`crate::classic`]); a group has these or stream members,
    /// never both. `generation` counts their generations too.
    pub classic: Classic,
}

/// Removed ids remembered per group, for fencing.
const EXPIRED_KEPT: usize = 1000;

impl Group {
    pub fn new(id: String, offsets: BTreeMap<Tp, Committed>) -> Self {
        // Generations continue above the ones offsets were committed under.
        let generation = offsets.values().map(|c| c.generation).max().unwrap_or(0);
        Self {
            id,
            members: BTreeMap::new(),
            generation,
            target: BTreeMap::new(),
            assignor: Assignor::Sticky,
            offsets,
            expired: VecDeque::new(),
            classic: Classic::default(),
        }
    }

    /// The group as a coordinator that took over finds it: the members of the snapshot hold
    /// what they held, without a stream, until they rejoin (under their member id or instance
    /// id) or their session times out from `now`.
    pub fn restore(id: String, offsets: BTreeMap<Tp, Committed>, snap: &GroupSnapshot, now: Instant) -> Self {
        let mut g = Self::new(id, offsets);
        g.generation = g.generation.max(snap.generation);
        for m in &snap.members {
            let member = Member {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.iter().cloned().collect(),
                assignor: Assignor::parse(&m.assignor).unwrap_or(Assignor::Sticky),
                session_timeout: Duration::from_millis(m.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(1)),
                last_seen: now,
                conn: None,
                held: m.held.iter().map(|(t, p, since)| ((t.clone(), *p), *since)).collect(),
                sent: m.sent.iter().cloned().collect(),
                generation: m.generation,
                unacked: BTreeMap::new(),
                revoke_deadline: None,
                needs_full: true,
                commits_in_flight: 0,
                kafka: m.kafka.as_ref().map(|k| KafkaState {
                    reported_epoch: k.reported_epoch,
                    previous_epoch: k.previous_epoch,
                    reported_set: None,
                    restored: true,
                    static_left: k.static_left,
                    client_host: k.client_host.clone(),
                }),
            };
            g.members.insert(m.id.clone(), member);
        }
        g
    }

    /// The membership to write down (see [`crate::store`]).
    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            generation: self.generation,
            members: self
                .members
                .values()
                .map(|m| MemberSnapshot {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    assignor: m.assignor.name().to_string(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    held: m.held.iter().map(|((t, p), since)| (t.clone(), *p, *since)).collect(),
                    sent: m.sent.iter().cloned().collect(),
                    generation: m.generation,
                    kafka: m.kafka.as_ref().map(|k| KafkaSnapshot {
                        reported_epoch: k.reported_epoch,
                        previous_epoch: k.previous_epoch,
                        static_left: k.static_left,
                        client_host: k.client_host.clone(),
                    }),
                })
                .collect(),
        }
    }

    /// "Empty", "Stable" (everyone holds exactly its target) or "Reconciling".
    pub fn state(&self) -> &'static str {
        if !self.classic.members.is_empty() {
            self.classic.state()
        } else if self.members.is_empty() {
            "Empty"
        } else if self.members.values().all(|m| {
            let target = self.target.get(&m.id);
            m.held.keys().eq(m.sent.iter()) && target.is_some_and(|t| t == &m.sent)
        }) {
            "Stable"
        } else {
            "Reconciling"
        }
    }

    /// Refuses `who` (a member assigned by the coordinator) while classic members are in; a
    /// group they left behind becomes a coordinator-assigned group.
    fn leave_classic_protocol(&mut self, who: &str) -> Result<(), SluiceError> {
        if !self.classic.members.is_empty() {
            return Err(SluiceError::InconsistentGroupProtocol {
                group: self.id.clone(),
                reason: format!(
                    "{} Kafka client(s) are members with the classic protocol; {who} can join once they leave",
                    self.classic.members.len()
                ),
            });
        }
        self.classic.protocol_type.clear();
        Ok(())
    }

    /// Adds a member or re-attaches one; returns its id. The caller reconciles afterwards.
    pub fn join(&mut self, spec: JoinSpec, conn: Conn, now: Instant) -> Result<String, SluiceError> {
        self.leave_classic_protocol("a stream member")?;
        let existing = if !spec.instance_id.is_empty() {
            self.members.values().find(|m| m.instance_id == spec.instance_id).map(|m| m.id.clone())
        } else if !spec.member_id.is_empty() && self.members.contains_key(&spec.member_id) {
            Some(spec.member_id.clone())
        } else {
            None
        };
        if let Some(id) = existing {
            let m = self.members.get_mut(&id).ok_or_else(|| SluiceError::Internal("member vanished".into()))?;
            if m.kafka.is_some() {
                return Err(SluiceError::InconsistentGroupProtocol {
                    group: self.id.clone(),
                    reason: format!("member '{id}' is a Kafka consumer-protocol member; a stream cannot take it over"),
                });
            }
            if let Some(old) = m.conn.take() {
                old.close(replaced(&self.id, &id));
            }
            m.conn = Some(conn);
            m.topics = spec.topics;
            m.assignor = spec.assignor;
            m.client_id = spec.client_id;
            m.session_timeout = spec.session_timeout;
            m.rebalance_timeout = spec.rebalance_timeout;
            m.last_seen = now;
            m.needs_full = true;
            return Ok(id);
        }
        if !spec.member_id.is_empty() && self.expired.contains(&spec.member_id) {
            return Err(SluiceError::UnknownMember { group: self.id.clone(), member: spec.member_id });
        }
        let id = if spec.member_id.is_empty() {
            let prefix = if spec.client_id.is_empty() { "member" } else { spec.client_id.as_str() };
            format!("{prefix}-{:016x}", rand::random::<u64>())
        } else {
            spec.member_id
        };
        // A member rejoining after its stream broke keeps what it holds, where nobody else
        // took it meanwhile.
        let taken: BTreeSet<&Tp> = self.members.values().flat_map(|m| m.held.keys()).collect();
        let held: BTreeMap<Tp, u64> =
            spec.owned.into_iter().filter(|tp| !taken.contains(tp)).map(|tp| (tp, 0)).collect();
        let m = Member {
            id: id.clone(),
            instance_id: spec.instance_id,
            client_id: spec.client_id,
            topics: spec.topics,
            assignor: spec.assignor,
            session_timeout: spec.session_timeout,
            rebalance_timeout: spec.rebalance_timeout,
            last_seen: now,
            conn: Some(conn),
            sent: held.keys().cloned().collect(),
            held,
            generation: 0,
            unacked: BTreeMap::new(),
            revoke_deadline: None,
            needs_full: true,
            commits_in_flight: 0,
            kafka: None,
        };
        self.members.insert(id.clone(), m);
        Ok(id)
    }

    /// A consumer-protocol member joins (epoch 0); returns its id. A known id starts over
    /// with nothing (a member joins again after being fenced, having given up its
    /// partitions). A static member whose instance id belongs to one that left with epoch -2
    /// takes over its partitions and place, without a rebalance. The caller reconciles, then
    /// answers with [`Group::consumer_answer`].
    pub fn consumer_join(&mut self, spec: ConsumerJoin, now: Instant) -> Result<String, SluiceError> {
        self.leave_classic_protocol("a consumer-protocol member")?;
        let id = if spec.member_id.is_empty() {
            let prefix: String =
                if spec.client_id.is_empty() { "consumer".into() } else { spec.client_id.chars().take(200).collect() };
            format!("{prefix}-{:016x}", rand::random::<u64>())
        } else {
            spec.member_id.clone()
        };
        if let Some(old) = self.members.get(&id) {
            if old.kafka.is_none() {
                return Err(SluiceError::InconsistentGroupProtocol {
                    group: self.id.clone(),
                    reason: format!("member id '{id}' belongs to a Sluice stream member"),
                });
            }
            // Starting over frees what it holds: not while a commit of it is being written,
            // whose partitions' next owner must read that commit.
            if old.commits_in_flight > 0 {
                return Err(SluiceError::CoordinatorNotAvailable(format!(
                    "a commit of member '{id}' is being written; join again in a moment"
                )));
            }
        }
        // Kafka clients keep their member id for life: one removed for silence joins again.
        self.expired.retain(|e| e != &id);
        let mut member = Member {
            id: id.clone(),
            instance_id: spec.instance_id.clone(),
            client_id: spec.client_id,
            topics: spec.topics,
            assignor: spec.assignor,
            session_timeout: spec.session_timeout,
            rebalance_timeout: spec.rebalance_timeout,
            last_seen: now,
            conn: None,
            held: BTreeMap::new(),
            sent: BTreeSet::new(),
            generation: 0,
            unacked: BTreeMap::new(),
            revoke_deadline: None,
            needs_full: true,
            commits_in_flight: 0,
            kafka: Some(KafkaState { client_host: spec.client_host, ..KafkaState::default() }),
        };
        // A static member that left with -2 and comes back under the same id (Kafka clients
        // keep theirs for life) keeps its place and partitions.
        if let Some(old) = self.members.get_mut(&id).filter(|m| {
            !spec.instance_id.is_empty()
                && m.instance_id == spec.instance_id
                && m.kafka.as_ref().is_some_and(|k| k.static_left)
        }) {
            old.kafka = member.kafka.take();
            old.topics = member.topics;
            old.assignor = member.assignor;
            old.client_id = member.client_id;
            old.rebalance_timeout = member.rebalance_timeout;
            old.last_seen = now;
            old.needs_full = true;
            return Ok(id);
        }
        let holder = (!spec.instance_id.is_empty())
            .then(|| self.members.values().find(|m| m.instance_id == spec.instance_id && m.id != id))
            .flatten();
        if let Some(old) = holder {
            let left = match &old.kafka {
                Some(k) => k.static_left,
                None => old.conn.is_none(),
            };
            if !left {
                return Err(SluiceError::UnreleasedInstanceId {
                    group: self.id.clone(),
                    instance: spec.instance_id,
                    member: old.id.clone(),
                });
            }
            let old_id = old.id.clone();
            if let Some(old) = self.members.remove(&old_id) {
                tracing::info!(group = %self.id, member = %id, replaced = %old_id, "static member replaced");
                member.held = old.held;
                member.sent = old.sent;
                member.generation = old.generation;
                member.commits_in_flight = old.commits_in_flight;
                if let Some(set) = self.target.remove(&old_id) {
                    self.target.insert(id.clone(), set);
                }
            }
        }
        self.members.insert(id.clone(), member);
        // Epochs start at 1: 0 means "joining" to clients.
        self.generation = self.generation.max(1);
        Ok(id)
    }

    /// A consumer-protocol heartbeat at `epoch` (> 0). An epoch other than the last one
    /// answered is fenced, except the one before it when the member owns nothing it should
    /// not (its last answer was lost).
    pub fn consumer_heartbeat(
        &mut self,
        member: &str,
        instance_id: Option<&str>,
        epoch: i32,
        update: ConsumerUpdate,
        now: Instant,
    ) -> Result<(), SluiceError> {
        let unknown = || SluiceError::UnknownMember { group: self.id.clone(), member: member.to_string() };
        let m = self.members.get_mut(member).ok_or_else(unknown)?;
        let Some(k) = m.kafka.as_mut() else { return Err(unknown()) };
        if instance_id.is_some_and(|i| i != m.instance_id) {
            return Err(SluiceError::FencedInstance { group: self.id.clone(), member: member.to_string() });
        }
        let owns_only_held = update.owned.as_ref().is_none_or(|o| o.iter().all(|tp| m.held.contains_key(tp)));
        // Restored from a snapshot that may be older than the last answer: the member's
        // epoch is taken as it says, if it owns nothing it should not.
        let restored = std::mem::take(&mut k.restored) && owns_only_held && epoch >= k.previous_epoch;
        // Partitions owned beyond what it holds, at its current epoch, are ignored (as Kafka
        // does): it is about to give them up, or was told of them in an answer it lost.
        let current = epoch == k.reported_epoch || (epoch == k.previous_epoch && owns_only_held) || restored;
        if !current || k.static_left {
            return Err(SluiceError::FencedMemberEpoch {
                group: self.id.clone(),
                member: member.to_string(),
                epoch,
                current: if k.static_left { -2 } else { k.reported_epoch },
            });
        }
        if restored && epoch != k.reported_epoch {
            k.previous_epoch = k.reported_epoch;
            k.reported_epoch = epoch;
            m.generation = m.generation.max(epoch as u64);
            self.generation = self.generation.max(epoch as u64);
        }
        if let Some(owned) = update.owned {
            let sent = &m.sent;
            m.held.retain(|tp, _| owned.contains(tp) || sent.contains(tp));
            if m.revoking().next().is_none() {
                m.revoke_deadline = None;
            }
        }
        if let Some(t) = update.topics {
            m.topics = t;
        }
        if let Some(a) = update.assignor {
            m.assignor = a;
        }
        if let Some(r) = update.rebalance_timeout {
            m.rebalance_timeout = r;
        }
        m.last_seen = now;
        Ok(())
    }

    /// A consumer-protocol member leaves: at once (epoch -1), or as a static member that will
    /// come back (-2), keeping its partitions for its session timeout.
    pub fn consumer_leave(&mut self, member: &str, static_leave: bool) -> Result<(), SluiceError> {
        let unknown = || SluiceError::UnknownMember { group: self.id.clone(), member: member.to_string() };
        let m = self.members.get_mut(member).filter(|m| m.kafka.is_some()).ok_or_else(unknown)?;
        if static_leave && !m.instance_id.is_empty() {
            let sent = &m.sent;
            m.held.retain(|tp, _| sent.contains(tp));
            m.revoke_deadline = None;
            if let Some(k) = m.kafka.as_mut() {
                k.static_left = true;
            }
        } else {
            self.members.remove(member);
            tracing::info!(group = %self.id, member, "consumer-protocol member left");
        }
        Ok(())
    }

    /// Moves a consumer-protocol member to its next set (see [`Member::step`]) and returns
    /// its epoch and, when it must be told (`full`, or it changed since the last answer), the
    /// set it may use now. Called after reconciling, in the call of the member's heartbeat.
    pub fn consumer_answer(&mut self, member: &str, full: bool, now: Instant) -> Option<(i32, Option<BTreeSet<Tp>>)> {
        let mut holders: BTreeSet<Tp> = self.members.values().flat_map(|m| m.held.keys().cloned()).collect();
        let desired = self.target.get(member).cloned().unwrap_or_default();
        let generation = self.generation;
        let m = self.members.get_mut(member)?;
        if m.kafka.as_ref().is_some_and(|k| !k.static_left) {
            m.step(&desired, &mut holders, generation, now);
        }
        let k = m.kafka.as_mut()?;
        let epoch = i32::try_from(m.generation).unwrap_or(i32::MAX);
        if epoch != k.reported_epoch {
            k.previous_epoch = k.reported_epoch;
            k.reported_epoch = epoch;
        }
        let tell = full || k.reported_set.as_ref() != Some(&m.sent);
        if tell {
            k.reported_set = Some(m.sent.clone());
        }
        Some((epoch, tell.then(|| m.sent.clone())))
    }

    /// The member's stream `conn` ended: when it `left` (a clean end), a dynamic member leaves;
    /// a static one, or any whose connection broke, stays for its session timeout and may
    /// re-attach. Returns whether anything changed.
    pub fn disconnected(&mut self, member: &str, conn: u64, left: bool) -> bool {
        let Some(m) = self.members.get_mut(member) else { return false };
        if m.conn.as_ref().is_none_or(|c| c.id != conn) {
            return false;
        }
        if left && m.instance_id.is_empty() {
            self.members.remove(member);
        } else {
            m.conn = None;
        }
        true
    }

    /// Removes a member and ends its stream with `why`.
    pub fn remove(&mut self, member: &str, why: SluiceError) {
        if let Some(m) = self.members.remove(member) {
            tracing::info!(group = %self.id, member, reason = %why, "member removed");
            if let Some(c) = m.conn {
                c.close(why.into());
            }
            self.expired.push_back(member.to_string());
            if self.expired.len() > EXPIRED_KEPT {
                self.expired.pop_front();
            }
        }
    }

    /// Ends a member's stream with `why` but keeps the member (and what it holds): used when
    /// this coordinator stops and a successor will restore the group.
    pub fn close(&mut self, member: &str, why: SluiceError) {
        if let Some(c) = self.members.get_mut(member).and_then(|m| m.conn.take()) {
            c.close(why.into());
        }
    }

    pub fn touch(&mut self, member: &str, conn: u64, now: Instant) {
        if let Some(m) = self.members.get_mut(member).filter(|m| m.conn.as_ref().is_some_and(|c| c.id == conn)) {
            m.last_seen = now;
        }
    }

    /// The member holds exactly the set of `generation`: what it released is free, unless a
    /// later set already sent gives it back (the member takes it again with that set).
    pub fn ack(&mut self, member: &str, generation: u64) {
        let Some(m) = self.members.get_mut(member) else { return };
        let Some(set) = m.unacked.get(&generation).cloned() else { return };
        let later: Vec<(u64, BTreeSet<Tp>)> = m.unacked.range(generation + 1..).map(|(g, s)| (*g, s.clone())).collect();
        m.held = std::mem::take(&mut m.held)
            .into_iter()
            .filter_map(|(tp, since)| {
                if set.contains(&tp) || since > generation {
                    return Some((tp, since));
                }
                later.iter().find(|(_, s)| s.contains(&tp)).map(|(g, _)| (tp, *g))
            })
            .collect();
        m.unacked.retain(|g, _| *g > generation);
        if m.revoking().next().is_none() {
            m.revoke_deadline = None;
        }
    }

    /// When [`Group::expire`] may next remove a member: the earliest session or rebalance
    /// deadline among members without commits in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.members
            .values()
            .filter(|m| m.commits_in_flight == 0)
            .flat_map(|m| [Some(m.last_seen + m.session_timeout), m.revoke_deadline])
            .flatten()
            .min()
            // expire() removes strictly after a deadline.
            .map(|d| d + Duration::from_millis(1))
            .into_iter()
            .chain(self.classic.next_deadline())
            .min()
    }

    /// Members of either kind.
    pub fn member_count(&self) -> usize {
        self.members.len() + self.classic.members.len()
    }

    /// A Kafka client's JoinGroup (see [`Classic::join`]); refused while stream members are in.
    pub fn classic_join(
        &mut self,
        spec: classic::JoinSpec,
        reply: classic::JoinTx,
        initial_delay: Duration,
        now: Instant,
    ) -> Result<(), SluiceError> {
        if !self.members.is_empty() {
            return Err(SluiceError::InconsistentGroupProtocol {
                group: self.id.clone(),
                reason: format!(
                    "{} Sluice stream member(s) are in the group; a Kafka client can join once they leave",
                    self.members.len()
                ),
            });
        }
        self.classic.join(&self.id, spec, reply, &mut self.generation, initial_delay, now)
    }

    /// Whether the group holds nothing worth keeping: no member and no committed offset.
    pub fn is_idle(&self) -> bool {
        self.member_count() == 0 && self.offsets.is_empty()
    }

    /// Removes members silent past their session timeout or late releasing partitions.
    /// Returns whether any was removed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let classic = self.classic.expire(&self.id, &mut self.generation, now);
        let mut gone = Vec::new();
        for m in self.members.values().filter(|m| m.commits_in_flight == 0) {
            if now.duration_since(m.last_seen) > m.session_timeout {
                gone.push((m.id.clone(), format!("no heartbeat for {:?} (session timeout)", m.session_timeout)));
            } else if m.revoke_deadline.is_some_and(|d| now > d) {
                gone.push((
                    m.id.clone(),
                    format!("revoked partitions not released within {:?} (rebalance timeout)", m.rebalance_timeout),
                ));
            }
        }
        for (id, why) in &gone {
            tracing::info!(group = %self.id, member = %id, why, "member expired");
            self.remove(id, SluiceError::UnknownMember { group: self.id.clone(), member: id.clone() });
        }
        classic || !gone.is_empty()
    }

    /// Recomputes the target and sends every member whose set changes its new set.
    /// `partitions`: partition count of each existing topic.
    pub fn reconcile(&mut self, partitions: &BTreeMap<String, u32>, now: Instant) {
        // The assignor most members ask for; ties go to the first in Assignor's order.
        let mut votes: BTreeMap<Assignor, usize> = BTreeMap::new();
        for m in self.members.values() {
            *votes.entry(m.assignor).or_default() += 1;
        }
        if let Some(best) = votes.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(a, _)| *a) {
            self.assignor = best;
        }
        let relevant: BTreeMap<String, u32> = partitions
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(*t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec {
                id: &m.id,
                sort_key: if m.instance_id.is_empty() { &m.id } else { &m.instance_id },
                topics: &m.topics,
                owned: m.held.keys().collect(),
            })
            .collect();
        let target = self.assignor.assign(&specs, &relevant);
        if target != self.target {
            self.generation += 1;
            self.target = target;
        }
        let mut holders: BTreeSet<Tp> = self.members.values().flat_map(|m| m.held.keys().cloned()).collect();
        let generation = self.generation;
        for m in self.members.values_mut() {
            // Stream members without a stream keep what they hold until they come back or
            // expire. A consumer-protocol member's set changes only in the answer to its own
            // heartbeat ([`Group::consumer_answer`]), as in Kafka: changed in between, it could
            // be given and then lose a partition it never heard of, and never release it.
            if m.kafka.is_some() || m.conn.is_none() {
                continue;
            }
            let desired = self.target.get(&m.id).cloned().unwrap_or_default();
            let full = m.needs_full;
            let Some((next, added)) = m.step(&desired, &mut holders, generation, now) else { continue };
            let Some(conn) = &m.conn else { continue };
            let fresh: Vec<&Tp> = if full { next.iter().collect() } else { added.iter().collect() };
            let offsets = fresh
                .into_iter()
                .filter_map(|tp| {
                    self.offsets.get(tp).map(|c| CommittedOffset {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        offset: c.offset,
                        metadata: c.metadata.clone(),
                        commit_time_ms: c.commit_time_ms,
                    })
                })
                .collect();
            conn.send(EventKind::Assignment(Assignment { generation, partitions: group_by_topic(&next), offsets }));
            m.unacked.insert(generation, next);
        }
    }

    /// Whether `member` may commit `tp` under `generation`.
    pub fn check_commit(&self, member: &str, generation: u64, tp: &Tp) -> Result<(), SluiceError> {
        // Classic members are fenced by generation alone: their assignment is the leader's,
        // opaque here.
        if self.classic.members.contains_key(member) {
            return self.classic.check_commit(&self.id, member, generation, self.generation);
        }
        let m = self
            .members
            .get(member)
            .ok_or_else(|| SluiceError::UnknownMember { group: self.id.clone(), member: member.to_string() })?;
        // Kafka's consumer-protocol clients expect STALE_MEMBER_EPOCH (they then commit again
        // with their newest epoch, or give the partition up); ILLEGAL_GENERATION would make
        // them drop their whole assignment.
        let stale = m.kafka.is_some();
        self.check_held(m, generation, tp).map_err(|e| match e {
            SluiceError::StaleGeneration(why) if stale => SluiceError::StaleMemberEpoch(why),
            e => e,
        })
    }

    fn check_held(&self, m: &Member, generation: u64, tp: &Tp) -> Result<(), SluiceError> {
        let member = &m.id;
        match m.held.get(tp) {
            None => Err(SluiceError::StaleGeneration(format!(
                "member '{member}' of group '{}' does not hold partition {} of '{}' (it was reassigned): the commit is refused",
                self.id, tp.1, tp.0
            ))),
            Some(since) if generation < *since => Err(SluiceError::StaleGeneration(format!(
                "commit for partition {} of '{}' from generation {generation}, but member '{member}' was handed it at generation {since}: the commit is refused",
                tp.1, tp.0
            ))),
            Some(_) if generation > m.generation => Err(SluiceError::StaleGeneration(format!(
                "commit from generation {generation}, but group '{}' gave member '{member}' generation {} at most",
                self.id, m.generation
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// The status sent to a stream taken over by a newer one of the same member.
fn replaced(group: &str, member: &str) -> Status {
    SluiceError::FencedInstance { group: group.to_string(), member: member.to_string() }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Events = mpsc::Receiver<Result<MemberEvent, Status>>;

    fn conn(id: u64) -> (Conn, Events) {
        let (tx, rx) = mpsc::channel(EVENTS_QUEUED);
        (Conn::new(id, tx, Arc::new(Notify::new())), rx)
    }

    fn spec(instance: &str) -> JoinSpec {
        JoinSpec {
            member_id: String::new(),
            instance_id: instance.into(),
            client_id: "c".into(),
            topics: ["t".to_string()].into(),
            assignor: Assignor::Sticky,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            owned: vec![],
        }
    }

    fn last_assignment(rx: &mut Events) -> Option<(u64, Vec<u32>)> {
        let mut last = None;
        while let Ok(Ok(ev)) = rx.try_recv() {
            if let Some(EventKind::Assignment(a)) = ev.kind {
                last = Some((a.generation, a.partitions.iter().flat_map(|t| t.partitions.clone()).collect()));
            }
        }
        last
    }

    /// A group on a 4-partition topic whose one member (connection 1) holds everything and
    /// acknowledged it: the group, the parts, the time, the member, its events, the generation.
    fn one_member() -> (Group, BTreeMap<String, u32>, Instant, String, Events, u64) {
        let parts: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (c1, mut r1) = conn(1);
        let a = g.join(spec(""), c1, now).unwrap();
        g.reconcile(&parts, now);
        let (gen1, p1) = last_assignment(&mut r1).unwrap();
        assert_eq!(p1, vec![0, 1, 2, 3]);
        g.ack(&a, gen1);
        (g, parts, now, a, r1, gen1)
    }

    #[tokio::test]
    async fn partitions_move_only_after_release_and_commits_are_fenced() {
        let (mut g, parts, now, a, mut r1, gen1) = one_member();
        let (c2, mut r2) = conn(2);
        let b = g.join(spec(""), c2, now).unwrap();
        g.reconcile(&parts, now);
        // The first member is asked to give two up; the newcomer gets nothing yet.
        let (gen2, p1) = last_assignment(&mut r1).unwrap();
        assert_eq!(p1.len(), 2);
        assert!(last_assignment(&mut r2).is_none_or(|(_, p)| p.is_empty()));
        assert_eq!(g.state(), "Reconciling");
        let gone: Vec<u32> = (0..4).filter(|p| !p1.contains(p)).collect();
        let moving = ("t".to_string(), gone[0]);
        // Until released, the old owner may still commit it; the newcomer may not.
        assert!(g.check_commit(&a, gen2, &moving).is_ok());
        assert!(g.check_commit(&b, gen2, &moving).is_err());
        g.ack(&a, gen2);
        g.reconcile(&parts, now);
        let (_, p2) = last_assignment(&mut r2).unwrap();
        assert_eq!(p2, gone);
        assert_eq!(g.state(), "Stable");
        // The old owner is now fenced for the moved partition.
        let err = g.check_commit(&a, gen2, &moving).unwrap_err();
        assert!(matches!(err, SluiceError::StaleGeneration(_)), "{err}");
        assert!(g.check_commit(&b, gen1, &moving).is_err(), "a generation older than the handover");
        assert!(g.check_commit(&b, gen2, &moving).is_ok());
        // Silence past the session timeout removes a member and frees its partitions.
        assert!(g.expire(now + Duration::from_secs(11)));
        assert!(g.members.is_empty());
        assert!(matches!(g.check_commit(&b, gen2, &moving), Err(SluiceError::UnknownMember { .. })));
    }

    #[tokio::test]
    async fn a_partition_given_back_before_its_release_is_acknowledged_stays_held() {
        // The CI failure of 2026-12-02 (at_most_once_never_processes_a_record_twice): a member
        // asked to release a partition acknowledged the release after the coordinator, its
        // newcomer gone meanwhile, had already sent it a set keeping that partition. The
        // release dropped it from what the member holds for good: nobody held it, the member's
        // commits for it were refused, and the group never settled.
        let (mut g, parts, now, a, mut r1, _) = one_member();
        let (c2, _r2) = conn(2);
        let b = g.join(spec(""), c2, now).unwrap();
        g.reconcile(&parts, now);
        let (gen2, kept) = last_assignment(&mut r1).unwrap();
        assert_eq!(kept.len(), 2, "asked to release two");
        g.remove(&b, SluiceError::UnknownMember { group: "g".into(), member: b.clone() });
        g.reconcile(&parts, now);
        let (gen3, all) = last_assignment(&mut r1).unwrap();
        assert_eq!(all, vec![0, 1, 2, 3], "the newcomer left: everything is the first member's again");
        // The member released what gen2 asked, then took gen3's set.
        g.ack(&a, gen2);
        g.reconcile(&parts, now);
        g.ack(&a, gen3);
        g.reconcile(&parts, now);
        for p in 0..4 {
            assert!(g.check_commit(&a, gen3, &("t".to_string(), p)).is_ok(), "partition {p} is held");
        }
        assert_eq!(g.state(), "Stable");
    }

    /// A group on a 4-partition topic with two members (instance ids `ia`, `ib`; empty for
    /// dynamic ones) on connections 1 and 2, reconciled: the group, the members' ids, the
    /// partitions the first was given, and the second's event stream (drained).
    fn two_members(ia: &str, ib: &str) -> (Group, BTreeMap<String, u32>, Instant, [String; 2], Vec<u32>, Events) {
        let parts: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (c1, mut r1) = conn(1);
        let (c2, mut r2) = conn(2);
        let a = g.join(spec(ia), c1, now).unwrap();
        let b = g.join(spec(ib), c2, now).unwrap();
        g.reconcile(&parts, now);
        let (_, held_a) = last_assignment(&mut r1).unwrap();
        last_assignment(&mut r2);
        (g, parts, now, [a, b], held_a, r2)
    }

    #[tokio::test]
    async fn a_static_member_returns_to_its_partitions() {
        let (mut g, parts, now, [a, _b], before, mut r2) = two_members("i-1", "i-2");
        assert!(g.disconnected(&a, 1, true));
        g.reconcile(&parts, now);
        let generation = g.generation;
        let (c3, mut r3) = conn(3);
        let again = g.join(spec("i-1"), c3, now).unwrap();
        assert_eq!(again, a);
        g.reconcile(&parts, now);
        let (_, after) = last_assignment(&mut r3).unwrap();
        assert_eq!(before, after);
        assert_eq!(g.generation, generation, "no rebalance");
        assert!(last_assignment(&mut r2).is_none());
    }

    #[tokio::test]
    async fn a_broken_connection_keeps_a_dynamic_member_a_clean_end_does_not() {
        let (mut g, parts, now, [a, b], held_a, mut r2) = two_members("", "");
        let generation = g.generation;
        // Its gateway died: the member stays, nothing moves.
        assert!(g.disconnected(&a, 1, false));
        g.reconcile(&parts, now);
        assert!(g.members.contains_key(&a));
        assert!(last_assignment(&mut r2).is_none(), "the other member is not sent anything");
        // It comes back through another gateway under its id, to the same partitions.
        let (c3, mut r3) = conn(3);
        let again = g.join(JoinSpec { member_id: a.clone(), ..spec("") }, c3, now).unwrap();
        assert_eq!(again, a);
        g.reconcile(&parts, now);
        assert_eq!(last_assignment(&mut r3).unwrap().1, held_a);
        assert_eq!(g.generation, generation, "no rebalance");
        // A clean end is a leave: at once, and its partitions go to the other member.
        assert!(g.disconnected(&a, 3, true));
        assert!(!g.members.contains_key(&a));
        g.reconcile(&parts, now);
        assert_eq!(last_assignment(&mut r2).unwrap().1.len(), 4);
        // A broken member that never comes back is removed after its session timeout.
        assert!(g.disconnected(&b, 2, false));
        assert!(g.expire(now + Duration::from_secs(11)));
        assert!(g.members.is_empty());
    }

    #[tokio::test]
    async fn a_member_that_does_not_read_is_cut_off_and_kept_for_its_session() {
        let (mut g, parts, now, [a, _b], _held_a, _r2) = two_members("", "");
        let (c3, mut r3) = conn(3);
        let kick = c3.kick.clone();
        g.join(JoinSpec { member_id: a.clone(), ..spec("") }, c3, now).unwrap();
        // Nothing is read from r3: flood it with assignments.
        for _ in 0..EVENTS_QUEUED + 5 {
            g.members.get_mut(&a).unwrap().needs_full = true;
            g.reconcile(&parts, now);
        }
        // The reader task is told to stop; the queue holds what fitted, then the end.
        tokio::time::timeout(Duration::from_secs(1), kick.notified()).await.expect("kicked");
        let mut events = 0;
        let last = loop {
            match r3.recv().await {
                Some(Ok(_)) => events += 1,
                Some(Err(s)) => break s,
                None => panic!("the stream must end with a status"),
            }
        };
        assert_eq!(events, EVENTS_QUEUED);
        assert_eq!(last.code(), tonic::Code::Unavailable, "{last:?}");
        assert!(last.message().contains("rejoin under the same member id"), "{}", last.message());
        // The stream's task reports the end as a broken connection: the member stays.
        assert!(g.disconnected(&a, 3, false));
        assert!(g.members.contains_key(&a));
    }

    #[test]
    fn the_next_deadline_is_the_earliest_session_end() {
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        assert_eq!(g.next_deadline(), None);
        let (c1, _r1) = conn(1);
        let (c2, _r2) = conn(2);
        g.join(JoinSpec { session_timeout: Duration::from_secs(5), ..spec("") }, c1, now).unwrap();
        let b = g.join(JoinSpec { session_timeout: Duration::from_secs(3), ..spec("") }, c2, now).unwrap();
        let d = g.next_deadline().unwrap();
        assert!(d > now + Duration::from_secs(3) && d < now + Duration::from_secs(4), "{:?}", d - now);
        assert!(!g.expire(d - Duration::from_millis(2)));
        assert!(g.expire(d));
        assert!(!g.members.contains_key(&b));
    }

    fn consumer(id: &str, instance: &str) -> ConsumerJoin {
        ConsumerJoin {
            member_id: id.into(),
            instance_id: instance.into(),
            client_id: "k".into(),
            client_host: "/127.0.0.1".into(),
            topics: ["t".to_string()].into(),
            assignor: Assignor::Sticky,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    /// Joins `id` (reconciling as the registry does) and returns its epoch and set.
    fn consumer_joins(
        g: &mut Group,
        parts: &BTreeMap<String, u32>,
        id: &str,
        instance: &str,
        now: Instant,
    ) -> Result<(i32, BTreeSet<Tp>), SluiceError> {
        let id = g.consumer_join(consumer(id, instance), now)?;
        g.reconcile(parts, now);
        let (epoch, set) = g.consumer_answer(&id, true, now).expect("a consumer member");
        Ok((epoch, set.expect("a join is told its set")))
    }

    /// One heartbeat reporting `owned` (all it was told when `None`), reconciled as the
    /// registry does.
    fn beat(
        g: &mut Group,
        parts: &BTreeMap<String, u32>,
        id: &str,
        epoch: i32,
        owned: &BTreeSet<Tp>,
        now: Instant,
    ) -> Result<(i32, Option<BTreeSet<Tp>>), SluiceError> {
        let update = ConsumerUpdate { owned: Some(owned.clone()), ..Default::default() };
        g.consumer_heartbeat(id, None, epoch, update, now)?;
        g.reconcile(parts, now);
        Ok(g.consumer_answer(id, false, now).expect("a consumer member"))
    }

    fn tps(ps: &[u32]) -> BTreeSet<Tp> {
        ps.iter().map(|p| ("t".to_string(), *p)).collect()
    }

    #[test]
    fn consumer_protocol_members_split_partitions_only_once_released() {
        let parts: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (ea, set_a) = consumer_joins(&mut g, &parts, "a", "", now).unwrap();
        assert!(ea >= 1, "epochs start at 1");
        assert_eq!(set_a, tps(&[0, 1, 2, 3]));
        let (eb, set_b) = consumer_joins(&mut g, &parts, "b", "", now).unwrap();
        assert!(set_b.is_empty(), "a still holds everything: {set_b:?}");
        // a is told its smaller set; until it reports having let go, b gets nothing.
        let (ea2, told) = beat(&mut g, &parts, "a", ea, &set_a, now).unwrap();
        let kept = told.expect("a's set changed");
        assert_eq!(kept.len(), 2);
        assert!(ea2 > ea);
        let (_, nothing) = beat(&mut g, &parts, "b", eb, &BTreeSet::new(), now).unwrap();
        assert_eq!(nothing, None, "b's set has not changed: nothing is free yet");
        let moved: Vec<u32> = set_a.difference(&kept).map(|tp| tp.1).collect();
        // a commits a partition it is giving up under its newest epoch: allowed until released.
        assert!(g.check_commit("a", ea2 as u64, &("t".to_string(), moved[0])).is_ok());
        let (_, unchanged) = beat(&mut g, &parts, "a", ea2, &kept, now).unwrap();
        assert_eq!(unchanged, None);
        // Released: a's later commit of it is refused as Kafka clients expect.
        let stale = g.check_commit("a", ea2 as u64, &("t".to_string(), moved[0])).unwrap_err();
        assert!(matches!(stale, SluiceError::StaleMemberEpoch(_)), "{stale}");
        let (eb2, got) = beat(&mut g, &parts, "b", eb, &BTreeSet::new(), now).unwrap();
        assert_eq!(got, Some(tps(&moved)));
        assert_eq!(eb2, eb, "freed partitions come at the epoch b already had (its target did not change)");
        // An epoch never given is fenced; the one before the last answer is accepted (the
        // answer was lost) when the member owns nothing it should not.
        let fenced = beat(&mut g, &parts, "b", eb2 + 1, &tps(&moved), now).unwrap_err();
        assert!(matches!(fenced, SluiceError::FencedMemberEpoch { .. }), "{fenced}");
        assert!(beat(&mut g, &parts, "a", ea, &kept, now).is_ok(), "a's previous epoch");
        // Owning more than it holds: ignored at its current epoch (as Kafka does), fenced at
        // the one before (it cannot be a lost answer).
        let (_, nothing) = beat(&mut g, &parts, "b", eb2, &tps(&[0, 1, 2, 3]), now).unwrap();
        assert_eq!(nothing, None);
        let ea2 = g.members["a"].kafka.as_ref().unwrap().reported_epoch;
        let foreign = beat(&mut g, &parts, "a", ea, &tps(&[0, 1, 2, 3]), now).unwrap_err();
        assert!(matches!(foreign, SluiceError::FencedMemberEpoch { .. }), "owning b's partitions: {foreign}");
        // b leaves: a is given everything at its next heartbeat.
        g.consumer_leave("b", false).unwrap();
        g.reconcile(&parts, now);
        let (_, all) = beat(&mut g, &parts, "a", ea2, &kept, now).unwrap();
        assert_eq!(all, Some(tps(&[0, 1, 2, 3])));
    }

    #[test]
    fn a_static_consumer_member_comes_back_under_a_new_id_without_a_rebalance() {
        let parts: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (ea, set_a) = consumer_joins(&mut g, &parts, "a", "", now).unwrap();
        let (eb, _) = consumer_joins(&mut g, &parts, "b1", "box-b", now).unwrap();
        let (_, kept) = beat(&mut g, &parts, "a", ea, &set_a, now).unwrap();
        let kept = kept.unwrap();
        let ea = g.members["a"].generation as i32;
        beat(&mut g, &parts, "a", ea, &kept, now).unwrap();
        let (eb, held) = beat(&mut g, &parts, "b1", eb, &BTreeSet::new(), now).unwrap();
        let held = held.unwrap();
        assert_eq!(held.len(), 2);
        // Another process with the same instance id while b1 is in: refused.
        let e = consumer_joins(&mut g, &parts, "b2", "box-b", now).unwrap_err();
        assert!(matches!(e, SluiceError::UnreleasedInstanceId { .. }), "{e}");
        let generation = g.generation;
        g.consumer_leave("b1", true).unwrap();
        g.reconcile(&parts, now);
        let ea = g.members["a"].generation as i32;
        let (_, nothing) = beat(&mut g, &parts, "a", ea, &kept, now).unwrap();
        assert_eq!(nothing, None, "nothing moves while the static member is away");
        let (eb2, back) = consumer_joins(&mut g, &parts, "b2", "box-b", now).unwrap();
        assert_eq!((eb2, back), (eb, held), "b2 takes b1's place and partitions");
        assert_eq!(g.generation, generation, "no rebalance");
        assert!(!g.members.contains_key("b1"));
        // A member removed for silence joins again under its id (Kafka clients keep theirs).
        g.remove("a", SluiceError::UnknownMember { group: "g".into(), member: "a".into() });
        g.reconcile(&parts, now);
        assert!(consumer_joins(&mut g, &parts, "a", "", now).is_ok());
    }

    #[test]
    fn a_consumer_member_set_changes_only_in_its_own_answers() {
        // Rolling restart: x leaves and x2 joins before a heartbeats. Reconciles run by the
        // others change nothing of a's set, so a is never handed (and then robbed of) x's
        // partitions it would not hear of, and is not expired for failing to release them.
        let parts: BTreeMap<String, u32> = [("t".to_string(), 4)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (ea, set_a) = consumer_joins(&mut g, &parts, "a", "", now).unwrap();
        let (ex, _) = consumer_joins(&mut g, &parts, "x", "", now).unwrap();
        let (ea, kept) = beat(&mut g, &parts, "a", ea, &set_a, now).unwrap();
        let kept = kept.unwrap();
        beat(&mut g, &parts, "a", ea, &kept, now).unwrap();
        let (_, xs) = beat(&mut g, &parts, "x", ex, &BTreeSet::new(), now).unwrap();
        assert_eq!(xs.map(|s| s.len()), Some(2));
        g.consumer_leave("x", false).unwrap();
        g.reconcile(&parts, now);
        let (_, x2) = consumer_joins(&mut g, &parts, "x2", "", now).unwrap();
        assert_eq!(x2.len(), 2, "x's partitions went straight to x2");
        assert_eq!(g.members["a"].held.keys().cloned().collect::<BTreeSet<Tp>>(), kept);
        // Past the rebalance timeout (30 s), within the session (45 s).
        let late = now + Duration::from_secs(35);
        assert!(!g.expire(late), "nobody is late releasing anything");
        let (_, told) = beat(&mut g, &parts, "a", ea, &kept, late).unwrap();
        assert_eq!(told, None, "a's set did not change");
    }

    #[test]
    fn consumer_members_survive_a_failover_and_a_static_rejoin_under_the_same_id() {
        let parts: BTreeMap<String, u32> = [("t".to_string(), 2)].into();
        let now = Instant::now();
        let mut g = Group::new("g".into(), BTreeMap::new());
        let (e, set) = consumer_joins(&mut g, &parts, "s", "box", now).unwrap();
        let snap = g.snapshot();
        // The client was told a newer epoch after the snapshot was written: the successor
        // takes its word once (it owns nothing it should not).
        let mut restored = Group::restore("g".into(), BTreeMap::new(), &snap, now);
        restored.reconcile(&parts, now);
        let update = ConsumerUpdate { owned: Some(set.clone()), ..Default::default() };
        restored.consumer_heartbeat("s", Some("box"), e + 1, update, now).unwrap();
        restored.reconcile(&parts, now);
        let (e2, told) = restored.consumer_answer("s", true, now).unwrap();
        assert!(e2 > e, "epochs never go back: {e2} after {e}");
        assert_eq!(told, Some(set.clone()));
        // A static member leaving with -2 and joining again under its id keeps its partitions.
        let generation = restored.generation;
        restored.consumer_leave("s", true).unwrap();
        let fenced = restored.consumer_heartbeat("s", None, e2, ConsumerUpdate::default(), now).unwrap_err();
        assert!(matches!(fenced, SluiceError::FencedMemberEpoch { current: -2, .. }), "{fenced}");
        let (_, back) = consumer_joins(&mut restored, &parts, "s", "box", now).unwrap();
        assert_eq!(back, set);
        assert_eq!(restored.generation, generation, "no rebalance");
    }
}
