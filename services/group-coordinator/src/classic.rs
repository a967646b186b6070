//! Kafka's classic group protocol for one group: join and sync phases, generations, and the
//! leader's client-side assignment, as Kafka clients (librdkafka, the Java client,
//! kafka-python) speak it through a gateway's Kafka listener.
//!
//! A rebalance starts when a member joins, leaves, changes what it supports, or is removed;
//! the group is then "PreparingRebalance" and every member must send JoinGroup again. The
//! join phase ends when every known member has rejoined, or when the longest rebalance
//! timeout among them passed (the missing ones are removed). A group that was empty first
//! waits the initial rebalance delay, so that members starting together land in one
//! generation. The end of the join phase bumps the generation, picks a protocol every member
//! supports, keeps or names a leader, and answers every pending join (the leader's answer
//! carries the members and their metadata). The group is then "CompletingRebalance" until the
//! leader's SyncGroup brings the assignments, which are handed to every member ("Stable").
//!
//! Membership is not written down: after a coordinator failover, classic members find their
//! ids unknown and join again, as after any session loss. Committed offsets are durable as
//! for every group.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::SluiceError;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A join's answer: `(generation, protocol, leader, member id, members for the leader)`.
pub struct Joined {
    pub generation: u64,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// `(member id, instance id, metadata)`; empty unless the receiver leads.
    pub members: Vec<(String, String, Bytes)>,
}

pub type JoinTx = oneshot::Sender<Result<Joined, SluiceError>>;
pub type SyncTx = oneshot::Sender<Result<Bytes, SluiceError>>;

/// What a member asked for in JoinGroup.
pub struct JoinSpec {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// `(name, metadata)` in preference order.
    pub protocols: Vec<(String, Bytes)>,
}

pub struct Member {
    pub id: String,
    pub instance_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader gave it in the current generation.
    pub assignment: Bytes,
    pub last_seen: Instant,
    /// Its JoinGroup waiting for the join phase to end.
    join: Option<JoinTx>,
    /// Its SyncGroup waiting for the leader's.
    sync: Option<SyncTx>,
}

impl Member {
    /// Its metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// No member.
    Empty,
    /// Waiting for members to rejoin.
    Preparing,
    /// Waiting for the leader's assignments.
    Completing,
    Stable,
}

/// The classic side of a group.
pub struct Classic {
    pub members: BTreeMap<String, Member>,
    pub phase: Phase,
    pub protocol_type: String,
    /// The protocol of the current generation.
    pub protocol: String,
    pub leader: String,
    /// When the join phase ends, whoever has rejoined.
    join_deadline: Option<Instant>,
    /// When members that have not sent SyncGroup are removed (a leader that never assigns
    /// must not keep the others waiting).
    sync_deadline: Option<Instant>,
    /// How long a group formed from nothing waits for more members (set by each join).
    initial_delay: Duration,
}

impl Default for Classic {
    fn default() -> Self {
        Self {
            members: BTreeMap::new(),
            phase: Phase::Empty,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            join_deadline: None,
            sync_deadline: None,
            initial_delay: Duration::ZERO,
        }
    }
}

impl Classic {
    /// Kafka's name for the group state.
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Empty => "Empty",
            Phase::Preparing => "PreparingRebalance",
            Phase::Completing => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }

    /// Adds a member or takes a known one's rejoin; `reply` answers it when the join phase
    /// ends (at once when nothing has to change). `generation` is the group's counter,
    /// bumped when a join phase ends. Fails when the member cannot join at all.
    pub fn join(
        &mut self,
        group: &str,
        spec: JoinSpec,
        reply: JoinTx,
        generation: &mut u64,
        initial_delay: Duration,
        now: Instant,
    ) -> Result<(), SluiceError> {
        self.initial_delay = initial_delay;
        if !self.members.is_empty() {
            if spec.protocol_type != self.protocol_type {
                return Err(inconsistent(
                    group,
                    format!("its members use protocol type '{}', not '{}'", self.protocol_type, spec.protocol_type),
                ));
            }
            let others = self.members.values().filter(|m| m.id != spec.member_id);
            let mut common: Vec<&str> = spec.protocols.iter().map(|(n, _)| n.as_str()).collect();
            for m in others {
                common.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
            }
            if common.is_empty() {
                return Err(inconsistent(group, "no protocol (assignor) is supported by every member".into()));
            }
        }
        let known = if !spec.instance_id.is_empty() {
            self.members.values().find(|m| m.instance_id == spec.instance_id).map(|m| m.id.clone())
        } else {
            self.members.contains_key(&spec.member_id).then(|| spec.member_id.clone())
        };
        // A static member replaced while the leader is assigning: the leader's assignments name
        // its old id, so the group must rebalance (as Kafka does).
        let mut renamed = false;
        let id = match known {
            // A static member restarted (it forgot its id): it takes the place of its old
            // incarnation, which is fenced.
            Some(old) if !spec.instance_id.is_empty() && spec.member_id.is_empty() => {
                let m = self.members.remove(&old).ok_or_else(|| SluiceError::Internal("member vanished".into()))?;
                let fenced = || SluiceError::FencedInstance { group: group.to_string(), member: old.clone() };
                if let Some(tx) = m.join {
                    let _ = tx.send(Err(fenced()));
                }
                if let Some(tx) = m.sync {
                    let _ = tx.send(Err(fenced()));
                }
                let id = new_member_id(&spec.client_id);
                if self.leader == old {
                    self.leader = id.clone();
                }
                // What it supported stays until its join below compares: unchanged, a follower
                // goes on with its assignment without a rebalance.
                let mut fresh = member(&id, &spec, m.assignment, now);
                fresh.protocols = m.protocols;
                self.members.insert(id.clone(), fresh);
                renamed = true;
                id
            }
            Some(id) if !spec.instance_id.is_empty() && id != spec.member_id => {
                return Err(SluiceError::FencedInstance { group: group.to_string(), member: spec.member_id });
            }
            Some(id) => id,
            None if !spec.member_id.is_empty() => {
                return Err(SluiceError::UnknownMember { group: group.to_string(), member: spec.member_id });
            }
            None => {
                let id = new_member_id(&spec.client_id);
                self.members.insert(id.clone(), member(&id, &spec, Bytes::new(), now));
                id
            }
        };
        if self.members.len() == 1 {
            self.protocol_type = spec.protocol_type.clone();
        }
        let m = self.members.get_mut(&id).ok_or_else(|| SluiceError::Internal("member vanished".into()))?;
        let unchanged = m.protocols == spec.protocols && m.join.is_none();
        m.protocols = spec.protocols;
        m.session_timeout = spec.session_timeout;
        m.rebalance_timeout = spec.rebalance_timeout;
        m.client_id = spec.client_id;
        m.client_host = spec.client_host;
        m.last_seen = now;
        // A follower that lost its answer rejoins with nothing new: it gets the current
        // generation again rather than a rebalance for everyone.
        let current = self.phase == Phase::Stable || (self.phase == Phase::Completing && !renamed);
        if unchanged && id != self.leader && current {
            let _ = reply.send(Ok(self.joined(&id, *generation)));
            return Ok(());
        }
        if let Some(old) = m.join.replace(reply) {
            let _ = old.send(Err(SluiceError::RebalanceInProgress(group.to_string())));
        }
        if self.phase != Phase::Preparing {
            self.prepare(group, now);
        }
        self.try_complete(group, generation, now);
        Ok(())
    }

    /// Starts a join phase: pending syncs are told to rejoin.
    fn prepare(&mut self, group: &str, now: Instant) {
        let was_empty = self.phase == Phase::Empty;
        self.phase = Phase::Preparing;
        let longest = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        let wait = if was_empty { self.initial_delay.min(longest) } else { longest };
        self.join_deadline = Some(now + wait);
        self.sync_deadline = None;
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(Err(SluiceError::RebalanceInProgress(group.to_string())));
            }
        }
        tracing::info!(group, members = self.members.len(), "classic group rebalancing");
    }

    /// Ends the join phase when every member rejoined (after the initial delay of a group
    /// that was empty), or when its deadline passed.
    fn try_complete(&mut self, group: &str, generation: &mut u64, now: Instant) {
        if self.phase != Phase::Preparing {
            return;
        }
        let all_in = self.members.values().all(|m| m.join.is_some());
        let due = self.join_deadline.is_none_or(|d| now >= d);
        // A group formed from nothing waits out its delay; one with members ends as soon as
        // all are back.
        let delaying = self.protocol.is_empty() && !due;
        if !(due || (all_in && !delaying)) {
            return;
        }
        let late: Vec<String> = self.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        for id in late {
            tracing::info!(group, member = %id, "classic member did not rejoin within the rebalance timeout");
            self.drop_member(group, &id);
        }
        self.join_deadline = None;
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        *generation += 1;
        self.protocol = self.choose_protocol();
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        self.phase = Phase::Completing;
        let longest = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.sync_deadline = Some(now + longest);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.joined(&id, *generation);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
                m.assignment = Bytes::new();
                if let Some(tx) = m.join.take() {
                    let _ = tx.send(Ok(joined));
                }
            }
        }
        tracing::info!(group, generation = *generation, protocol = %self.protocol, leader = %self.leader, "classic group generation");
    }

    /// The protocol most members prefer among those all support (a tie goes to the one the
    /// member with the smallest id ranks first, as arbitrary as Kafka's choice).
    fn choose_protocol(&self) -> String {
        let mut candidates: Vec<&str> = match self.members.values().next() {
            Some(m) => m.protocols.iter().map(|(n, _)| n.as_str()).collect(),
            None => return String::new(),
        };
        for m in self.members.values() {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        let mut votes: Vec<(usize, &str)> = candidates.iter().map(|c| (0, *c)).collect();
        for m in self.members.values() {
            if let Some(first) = m.protocols.iter().find(|(n, _)| candidates.contains(&n.as_str()))
                && let Some(v) = votes.iter_mut().find(|(_, c)| *c == first.0)
            {
                v.0 += 1;
            }
        }
        // max_by_key keeps the last maximum: iterate reversed to keep the first.
        votes.iter().rev().max_by_key(|(n, _)| *n).map(|(_, c)| c.to_string()).unwrap_or_default()
    }

    fn joined(&self, id: &str, generation: u64) -> Joined {
        let members = if id == self.leader {
            self.members.values().map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&self.protocol))).collect()
        } else {
            Vec::new()
        };
        Joined {
            generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            member_id: id.to_string(),
            members,
        }
    }

    /// Checks that `member` (with `instance_id`, when static) is in the group at `generation`.
    fn check(
        &self,
        group: &str,
        member: &str,
        instance_id: &str,
        generation: u64,
        current: u64,
    ) -> Result<(), SluiceError> {
        let Some(m) = self.members.get(member) else {
            if !instance_id.is_empty() && self.members.values().any(|m| m.instance_id == instance_id) {
                return Err(SluiceError::FencedInstance { group: group.to_string(), member: member.to_string() });
            }
            return Err(SluiceError::UnknownMember { group: group.to_string(), member: member.to_string() });
        };
        if !instance_id.is_empty() && m.instance_id != instance_id {
            return Err(SluiceError::FencedInstance { group: group.to_string(), member: member.to_string() });
        }
        if generation != current {
            return Err(SluiceError::StaleGeneration(format!(
                "member '{member}' of group '{group}' is at generation {generation}, the group at {current}: rejoin"
            )));
        }
        Ok(())
    }

    /// A member's SyncGroup: the leader's brings every assignment; `reply` gets the member's.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        group: &str,
        member: &str,
        instance_id: &str,
        generation: u64,
        current: u64,
        assignments: Vec<(String, Bytes)>,
        reply: SyncTx,
        now: Instant,
    ) -> Result<(), SluiceError> {
        self.check(group, member, instance_id, generation, current)?;
        if matches!(self.phase, Phase::Empty | Phase::Preparing) {
            return Err(SluiceError::RebalanceInProgress(group.to_string()));
        }
        let m = self.members.get_mut(member).ok_or_else(|| SluiceError::Internal("member vanished".into()))?;
        m.last_seen = now;
        match self.phase {
            Phase::Empty | Phase::Preparing | Phase::Stable => {
                let _ = reply.send(Ok(m.assignment.clone()));
                Ok(())
            }
            Phase::Completing => {
                m.sync = Some(reply);
                if member == self.leader {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                        if let Some(tx) = m.sync.take() {
                            let _ = tx.send(Ok(m.assignment.clone()));
                        }
                    }
                    self.phase = Phase::Stable;
                    self.sync_deadline = None;
                    tracing::info!(group, generation = current, "classic group stable");
                }
                Ok(())
            }
        }
    }

    /// A heartbeat: alive, and told to rejoin while a join phase runs.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member: &str,
        instance_id: &str,
        generation: u64,
        current: u64,
        now: Instant,
    ) -> Result<(), SluiceError> {
        if self.phase == Phase::Preparing && self.members.contains_key(member) {
            if let Some(m) = self.members.get_mut(member) {
                m.last_seen = now;
            }
            return Err(SluiceError::RebalanceInProgress(group.to_string()));
        }
        self.check(group, member, instance_id, generation, current)?;
        if let Some(m) = self.members.get_mut(member) {
            m.last_seen = now;
        }
        Ok(())
    }

    /// Whether `member` may commit under `generation` (the group's current one).
    pub fn check_commit(&self, group: &str, member: &str, generation: u64, current: u64) -> Result<(), SluiceError> {
        self.check(group, member, "", generation, current)?;
        if self.phase == Phase::Completing {
            return Err(SluiceError::RebalanceInProgress(group.to_string()));
        }
        Ok(())
    }

    /// Removes a member (by id, or by instance id when the id is empty); the others rebalance.
    pub fn leave(
        &mut self,
        group: &str,
        member: &str,
        instance_id: &str,
        generation: &mut u64,
        now: Instant,
    ) -> Result<(), SluiceError> {
        let id = if member.is_empty() && !instance_id.is_empty() {
            self.members.values().find(|m| m.instance_id == instance_id).map(|m| m.id.clone())
        } else {
            self.members.contains_key(member).then(|| member.to_string())
        };
        let Some(id) = id else {
            return Err(SluiceError::UnknownMember { group: group.to_string(), member: member.to_string() });
        };
        if !instance_id.is_empty() && self.members.get(&id).is_some_and(|m| m.instance_id != instance_id) {
            return Err(SluiceError::FencedInstance { group: group.to_string(), member: id });
        }
        tracing::info!(group, member = %id, "classic member left");
        self.drop_member(group, &id);
        self.after_removal(group, generation, now);
        Ok(())
    }

    fn drop_member(&mut self, group: &str, id: &str) {
        if let Some(m) = self.members.remove(id) {
            let gone = || SluiceError::UnknownMember { group: group.to_string(), member: id.to_string() };
            if let Some(tx) = m.join {
                let _ = tx.send(Err(gone()));
            }
            if let Some(tx) = m.sync {
                let _ = tx.send(Err(gone()));
            }
        }
    }

    fn after_removal(&mut self, group: &str, generation: &mut u64, now: Instant) {
        if self.members.is_empty() {
            self.become_empty();
        } else if self.phase != Phase::Preparing {
            self.prepare(group, now);
        } else {
            self.try_complete(group, generation, now);
        }
    }

    /// No member left; the protocol type stays, as in Kafka (the group is still a classic one
    /// to listings).
    fn become_empty(&mut self) {
        self.phase = Phase::Empty;
        self.protocol.clear();
        self.leader.clear();
        self.join_deadline = None;
        self.sync_deadline = None;
    }

    /// The next time [`Classic::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.members
            .values()
            .filter(|m| m.join.is_none())
            .map(|m| m.last_seen + m.session_timeout + Duration::from_millis(1))
            .chain(self.join_deadline)
            .chain(self.sync_deadline)
            .min()
    }

    /// Removes members silent past their session timeout and ends a join phase whose time
    /// is up. Returns whether anything changed.
    pub fn expire(&mut self, group: &str, generation: &mut u64, now: Instant) -> bool {
        let silent: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none() && now.duration_since(m.last_seen) > m.session_timeout)
            .map(|m| m.id.clone())
            .collect();
        for id in &silent {
            tracing::info!(group, member = %id, "classic member expired (no heartbeat within its session timeout)");
            self.drop_member(group, id);
        }
        if !silent.is_empty() {
            self.after_removal(group, generation, now);
            return true;
        }
        if self.join_deadline.is_some_and(|d| now >= d) {
            self.try_complete(group, generation, now);
            return true;
        }
        if self.phase == Phase::Completing && self.sync_deadline.is_some_and(|d| now >= d) {
            self.sync_deadline = None;
            let late: Vec<String> = self.members.values().filter(|m| m.sync.is_none()).map(|m| m.id.clone()).collect();
            for id in &late {
                tracing::info!(group, member = %id, "classic member removed: no SyncGroup within the rebalance timeout");
                self.drop_member(group, id);
            }
            self.after_removal(group, generation, now);
            return true;
        }
        false
    }

    /// Answers every waiting call with `why` (the coordinator stops serving the group).
    pub fn close(&mut self, why: impl Fn() -> SluiceError) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.join.take() {
                let _ = tx.send(Err(why()));
            }
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(Err(why()));
            }
        }
    }
}

fn inconsistent(group: &str, reason: String) -> SluiceError {
    SluiceError::InconsistentGroupProtocol { group: group.to_string(), reason }
}

fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() { "member" } else { client_id };
    let prefix: String = prefix.chars().take(100).collect();
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn member(id: &str, spec: &JoinSpec, assignment: Bytes, now: Instant) -> Member {
    Member {
        id: id.to_string(),
        instance_id: spec.instance_id.clone(),
        client_id: spec.client_id.clone(),
        client_host: spec.client_host.clone(),
        session_timeout: spec.session_timeout,
        rebalance_timeout: spec.rebalance_timeout,
        protocols: Vec::new(),
        assignment,
        last_seen: now,
        join: None,
        sync: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(300);

    fn spec(id: &str, protocols: &[&str]) -> JoinSpec {
        JoinSpec {
            member_id: id.into(),
            instance_id: String::new(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
        }
    }

    fn join(
        c: &mut Classic,
        generation: &mut u64,
        s: JoinSpec,
        now: Instant,
    ) -> oneshot::Receiver<Result<Joined, SluiceError>> {
        let (tx, rx) = oneshot::channel();
        c.join("g", s, tx, generation, DELAY, now).unwrap();
        rx
    }

    fn answer<T>(rx: &mut oneshot::Receiver<Result<T, SluiceError>>) -> Option<Result<T, SluiceError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn two_members_join_one_generation_and_the_leader_assigns() {
        let now = Instant::now();
        let mut c = Classic::default();
        let mut generation = 4;
        let mut a = join(&mut c, &mut generation, spec("", &["range", "roundrobin"]), now);
        let mut b = join(&mut c, &mut generation, spec("", &["range", "roundrobin"]), now);
        assert!(answer(&mut a).is_none(), "a new group waits its initial delay");
        assert_eq!(c.state(), "PreparingRebalance");
        assert!(c.expire("g", &mut generation, now + DELAY));
        let ja = answer(&mut a).unwrap().unwrap();
        let jb = answer(&mut b).unwrap().unwrap();
        assert_eq!((ja.generation, jb.generation), (5, 5));
        assert_eq!(ja.protocol, "range", "the protocol both prefer");
        let (leader, follower) = if ja.leader == ja.member_id { (ja, jb) } else { (jb, ja) };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        assert_eq!(c.state(), "CompletingRebalance");
        // The follower waits for the leader's sync.
        let (ftx, mut frx) = oneshot::channel();
        c.sync("g", &follower.member_id, "", 5, 5, vec![], ftx, now).unwrap();
        assert!(answer(&mut frx).is_none());
        let (ltx, mut lrx) = oneshot::channel();
        let given = vec![
            (leader.member_id.clone(), Bytes::from_static(b"L")),
            (follower.member_id.clone(), Bytes::from_static(b"F")),
        ];
        c.sync("g", &leader.member_id, "", 5, 5, given, ltx, now).unwrap();
        assert_eq!(answer(&mut frx).unwrap().unwrap(), Bytes::from_static(b"F"));
        assert_eq!(answer(&mut lrx).unwrap().unwrap(), Bytes::from_static(b"L"));
        assert_eq!(c.state(), "Stable");
        // Fencing: an old generation, an unknown member.
        let stale = c.heartbeat("g", &follower.member_id, "", 4, 5, now).unwrap_err();
        assert!(matches!(stale, SluiceError::StaleGeneration(_)), "{stale}");
        let unknown = c.heartbeat("g", "nobody", "", 5, 5, now).unwrap_err();
        assert!(matches!(unknown, SluiceError::UnknownMember { .. }), "{unknown}");
        assert!(c.check_commit("g", &follower.member_id, 5, 5).is_ok());
        // The leader leaves: the follower is told to rejoin and forms generation 6 alone.
        c.leave("g", &leader.member_id, "", &mut generation, now).unwrap();
        let hb = c.heartbeat("g", &follower.member_id, "", 5, 5, now).unwrap_err();
        assert!(matches!(hb, SluiceError::RebalanceInProgress(_)), "{hb}");
        let mut again = join(&mut c, &mut generation, spec(&follower.member_id, &["roundrobin", "range"]), now);
        let j = answer(&mut again).unwrap().unwrap();
        assert_eq!((j.generation, j.leader.as_str()), (6, follower.member_id.as_str()));
        assert_eq!(j.protocol, "roundrobin");
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
        let now = Instant::now();
        let mut c = Classic::default();
        let mut generation = 0;
        let mut a = join(&mut c, &mut generation, spec("", &["range"]), now);
        c.expire("g", &mut generation, now + DELAY);
        let a_id = answer(&mut a).unwrap().unwrap().member_id;
        let (tx, _rx) = oneshot::channel();
        c.sync("g", &a_id, "", 1, 1, vec![(a_id.clone(), Bytes::from_static(b"x"))], tx, now).unwrap();
        // A second member joins; the first never rejoins.
        let t = now + Duration::from_secs(1);
        let mut b = join(&mut c, &mut generation, spec("", &["range"]), t);
        assert!(answer(&mut b).is_none());
        assert!(!c.expire("g", &mut generation, t + Duration::from_secs(4)));
        assert!(c.expire("g", &mut generation, t + Duration::from_secs(5)));
        let jb = answer(&mut b).unwrap().unwrap();
        assert_eq!(jb.generation, 2);
        assert_eq!(jb.leader, jb.member_id);
        assert!(!c.members.contains_key(&a_id));
    }

    #[test]
    fn a_static_member_replaced_while_the_leader_assigns_makes_the_group_rebalance() {
        let now = Instant::now();
        let mut c = Classic::default();
        let mut generation = 0;
        let statics = |i: &str| JoinSpec { instance_id: i.into(), ..spec("", &["range"]) };
        let mut a = join(&mut c, &mut generation, statics("i-a"), now);
        let mut b = join(&mut c, &mut generation, statics("i-b"), now);
        c.expire("g", &mut generation, now + DELAY);
        let (ja, jb) = (answer(&mut a).unwrap().unwrap(), answer(&mut b).unwrap().unwrap());
        let follower = if ja.leader == ja.member_id { jb } else { ja };
        assert_eq!(c.state(), "CompletingRebalance");
        // The follower restarts before the leader's sync: it is not answered at once, the
        // group prepares a new generation.
        let follower_instance = c.members[&follower.member_id].instance_id.clone();
        let mut again = join(&mut c, &mut generation, statics(&follower_instance), now);
        assert!(answer(&mut again).is_none());
        assert_eq!(c.state(), "PreparingRebalance");
        assert!(!c.members.contains_key(&follower.member_id), "the old incarnation is gone");
    }

    #[test]
    fn a_leader_that_never_assigns_is_removed_and_the_others_rejoin() {
        let now = Instant::now();
        let mut c = Classic::default();
        let mut generation = 0;
        let mut a = join(&mut c, &mut generation, spec("", &["range"]), now);
        let mut b = join(&mut c, &mut generation, spec("", &["range"]), now);
        c.expire("g", &mut generation, now + DELAY);
        let (ja, jb) = (answer(&mut a).unwrap().unwrap(), answer(&mut b).unwrap().unwrap());
        let (leader, follower) = if ja.leader == ja.member_id { (ja, jb) } else { (jb, ja) };
        let (tx, mut waiting) = oneshot::channel();
        c.sync("g", &follower.member_id, "", 1, 1, vec![], tx, now).unwrap();
        // The leader heartbeats but never syncs: past the rebalance timeout it is removed.
        let t = now + DELAY + Duration::from_secs(5);
        c.heartbeat("g", &leader.member_id, "", 1, 1, t - Duration::from_millis(1)).unwrap();
        assert!(c.expire("g", &mut generation, t));
        assert!(!c.members.contains_key(&leader.member_id));
        let told = answer(&mut waiting).unwrap().unwrap_err();
        assert!(matches!(told, SluiceError::RebalanceInProgress(_)), "{told}");
        assert_eq!(c.state(), "PreparingRebalance");
    }

    #[test]
    fn joins_that_cannot_fit_the_group_are_refused() {
        let now = Instant::now();
        let mut c = Classic::default();
        let mut generation = 0;
        let _a = join(&mut c, &mut generation, spec("", &["range"]), now);
        let (tx, _) = oneshot::channel();
        let e = c.join("g", spec("", &["sticky"]), tx, &mut generation, DELAY, now).unwrap_err();
        assert!(matches!(e, SluiceError::InconsistentGroupProtocol { .. }), "{e}");
        let (tx, _) = oneshot::channel();
        let e = c.join(
            "g",
            JoinSpec { protocol_type: "connect".into(), ..spec("", &["range"]) },
            tx,
            &mut generation,
            DELAY,
            now,
        );
        assert!(matches!(e, Err(SluiceError::InconsistentGroupProtocol { .. })));
        let (tx, _) = oneshot::channel();
        let e = c.join("g", spec("gone-1", &["range"]), tx, &mut generation, DELAY, now);
        assert!(matches!(e, Err(SluiceError::UnknownMember { .. })));
    }
}
