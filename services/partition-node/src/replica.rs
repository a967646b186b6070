//! One partition replica on this node: its log, its role (leader or follower at an epoch),
//! and, when leading, what the leader knows of its followers: their flushed log ends, the
//! in-sync set and the high watermark.
//!
//! The high watermark is the smallest log end among the in-sync replicas (the leader counting
//! its own): consumers read below it. The durable watermark is the smallest *flushed* log end
//! among them: an acks=all append is acknowledged once it passes the append's last offset
//! (and the leader flushed too). Followers report both, the flush a moment later, so that
//! records become visible without waiting for fsyncs while acknowledgements still do. The in-sync set used here is the one last written
//! to the metadata, widened by a follower being added (never narrowed before the metadata
//! write succeeded): a replica that may be elected always holds every acknowledged record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_core::SluiceError;
use sluice_core::topic::TopicConfig;
use sluice_storage::{AppendInfo, AsyncLog, PartitionId, PartitionLog};
use tokio::sync::watch;

/// What this node is for the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not serving yet (just opened, or resigning after a restart).
    Idle,
    Leader {
        epoch: u64,
    },
    Follower {
        epoch: u64,
        leader: u64,
    },
}

/// What readers and acks=all waiters watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub hw: i64,
    /// Offsets below this are flushed on every in-sync follower.
    pub durable: i64,
    /// The epoch this node leads, 0 when it does not lead.
    pub leading: u64,
    /// Size of the in-sync set.
    pub isr: usize,
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy)]
struct FollowerPos {
    /// Stored log end, -1 until it reports.
    end: i64,
    /// Flushed log end, -1 until it reports.
    flushed: i64,
    /// Last time it was known to have everything the leader had a round earlier.
    caught_up_at: Instant,
    /// Leader log end and time at its previous acknowledgement.
    prev_leo: i64,
    prev_at: Instant,
}

#[derive(Debug)]
struct LeaderState {
    epoch: u64,
    /// Log end when this epoch began: a follower must reach it to be in sync.
    epoch_start: i64,
    /// In-sync set as last written (includes this node).
    isr: Vec<u64>,
    /// Metadata revision of that write (or of the state this leadership started from).
    revision: i64,
    /// A follower being added, counted for the high watermark already.
    adding: Option<u64>,
    followers: HashMap<u64, FollowerPos>,
}

/// Lock order, for every method here: `role` (held shared across a log write, on the
/// blocking pool only), then the log's own state lock (inside storage, held across its I/O),
/// then `leader`, `follower_hw` and `traced` (never held across I/O or an await), then the
/// `committed` and `role_now` watches. `role` is never taken on an async worker: appends,
/// copies, truncations and role changes all run on the blocking pool ([`AsyncLog::with_log`]),
/// and async code reads the role from `role_now`.
pub struct Replica {
    pub pid: PartitionId,
    pub log: AsyncLog,
    node: u64,
    /// Held shared across a leader append or a follower copy, exclusively to change roles:
    /// a write can never land under a role the node no longer has.
    role: RwLock<Role>,
    /// The role as last set, for readers that must not wait for a write in progress.
    role_now: watch::Sender<Role>,
    leader: Mutex<Option<LeaderState>>,
    committed: watch::Sender<Committed>,
    /// The high watermark learned from the leader while following.
    follower_hw: Mutex<i64>,
    /// The base offset and trace context of the newest traced append, passed on to followers
    /// with the batches holding it.
    traced: Mutex<Option<(i64, String)>>,
}

/// A change of the in-sync set the leader wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub epoch: u64,
    pub revision: i64,
    pub isr: Vec<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replica {
    pub fn new(pid: PartitionId, log: AsyncLog, node: u64) -> Self {
        let (committed, _) = watch::channel(Committed { hw: 0, durable: 0, leading: 0, isr: 0 });
        Self {
            pid,
            log,
            node,
            role: RwLock::new(Role::Idle),
            role_now: watch::Sender::new(Role::Idle),
            leader: Mutex::new(None),
            committed,
            follower_hw: Mutex::new(0),
            traced: Mutex::new(None),
        }
    }

    /// The role as last set; never waits for a write in progress.
    pub fn role(&self) -> Role {
        *self.role_now.borrow()
    }

    /// Runs `f` on the blocking pool with the role held (no role change until it returns)
    /// and the log.
    async fn under_role<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(Role, &Self, &dyn PartitionLog) -> Result<R, SluiceError> + Send + 'static,
    ) -> Result<R, SluiceError> {
        let me = self.clone();
        self.log
            .with_log(move |log| {
                let role = me.role.read().unwrap_or_else(|p| p.into_inner());
                f(*role, &me, log)
            })
            .await
            .map_err(|e| crate::map_storage(&self.pid, e))?
    }

    /// Changes the role on the blocking pool (waiting there for writes in progress), then
    /// `f` with the new role still held exclusively.
    async fn change_role(self: &Arc<Self>, to: Role, f: impl FnOnce(Role, &Self) + Send + 'static) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut role = me.role.write().unwrap_or_else(|p| p.into_inner());
            let was = *role;
            *role = to;
            f(was, &me);
            // Published once the role's state is in place.
            me.role_now.send_replace(to);
        })
        .await;
    }

    pub fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    pub fn high_watermark(&self) -> i64 {
        self.committed.borrow().hw
    }

    /// Starts leading `epoch` with the in-sync set `isr` read at `revision`.
    pub async fn become_leader(self: &Arc<Self>, epoch: u64, isr: Vec<u64>, revision: i64) {
        self.change_role(Role::Leader { epoch }, move |_, me| {
            let leo = me.log.offsets().log_end_offset;
            let now = Instant::now();
            let followers = isr
                .iter()
                .filter(|r| **r != me.node)
                .map(|r| (*r, FollowerPos { end: -1, flushed: -1, caught_up_at: now, prev_leo: leo, prev_at: now }))
                .collect();
            // Start from what the previous leader had committed; it moves up as followers report.
            let hw = (*lock(&me.follower_hw)).max(me.committed.borrow().hw).min(leo);
            *lock(&me.leader) =
                Some(LeaderState { epoch, epoch_start: leo, isr: isr.clone(), revision, adding: None, followers });
            let durable = me.committed.borrow().durable.min(hw);
            me.committed.send_replace(Committed { hw, durable, leading: epoch, isr: isr.len() });
            tracing::info!(partition = %me.pid, epoch, ?isr, hw, log_end = leo, "leading");
        })
        .await;
        self.update_hw();
    }

    /// Follows `leader` at `epoch` (or stays idle when `leader` is `None`). Pending acks=all
    /// waiters learn at once that this node no longer leads.
    pub async fn become_follower(self: &Arc<Self>, epoch: u64, leader: Option<u64>) {
        let to = match leader {
            Some(leader) => Role::Follower { epoch, leader },
            None => Role::Idle,
        };
        self.change_role(to, move |was, me| {
            *lock(&me.leader) = None;
            let Committed { hw, durable, .. } = *me.committed.borrow();
            me.committed.send_replace(Committed { hw, durable, leading: 0, isr: 0 });
            if matches!(was, Role::Leader { .. }) {
                tracing::info!(partition = %me.pid, epoch, ?leader, "no longer leading");
            }
        })
        .await;
    }

    /// Recomputes the high watermark after the log or a follower moved.
    pub fn update_hw(&self) {
        let leo = self.log.offsets().log_end_offset;
        let guard = lock(&self.leader);
        let Some(l) = guard.as_ref() else { return };
        let (mut hw, mut durable) = (leo, leo);
        for r in l.isr.iter().chain(l.adding.iter()) {
            if *r == self.node {
                continue;
            }
            let f = l.followers.get(r);
            hw = hw.min(f.map_or(-1, |f| f.end));
            durable = durable.min(f.map_or(-1, |f| f.flushed));
        }
        let isr = l.isr.len();
        drop(guard);
        self.committed.send_if_modified(|c| {
            let (next, next_durable) = (c.hw.max(hw), c.durable.max(durable));
            let changed = next != c.hw || next_durable != c.durable || c.isr != isr;
            c.hw = next;
            c.durable = next_durable;
            c.isr = isr;
            changed
        });
    }

    /// A follower's acknowledged log end, and how far it is flushed when the ack says (-1
    /// otherwise). Returns the in-sync set to write when the follower just caught up and is
    /// not in it.
    pub fn on_follower_ack(&self, follower: u64, end: i64, flushed: i64) -> Option<IsrChange> {
        let leo = self.log.offsets().log_end_offset;
        let hw = self.high_watermark();
        let now = Instant::now();
        let change = {
            let mut guard = lock(&self.leader);
            let l = guard.as_mut()?;
            let f = l.followers.entry(follower).or_insert(FollowerPos {
                end: -1,
                flushed: -1,
                caught_up_at: now - Duration::from_secs(3600),
                prev_leo: leo,
                prev_at: now,
            });
            if end >= leo {
                f.caught_up_at = now;
            } else if end >= f.prev_leo {
                f.caught_up_at = f.caught_up_at.max(f.prev_at);
            }
            f.end = f.end.max(end);
            f.flushed = f.flushed.max(flushed.min(f.end));
            f.prev_leo = leo;
            f.prev_at = now;
            let joins = !l.isr.contains(&follower) && l.adding.is_none() && end >= hw && end >= l.epoch_start;
            joins.then(|| {
                l.adding = Some(follower);
                let mut isr = l.isr.clone();
                isr.push(follower);
                IsrChange { epoch: l.epoch, revision: l.revision, isr }
            })
        };
        self.update_hw();
        change
    }

    /// A follower out of the in-sync set that has caught up, to add, when no addition is being
    /// written. Acks propose additions as they come; this catches the ones whose write failed
    /// (etcd away, a concurrent change) while no new ack arrives because nothing is written.
    pub fn joiner(&self, alive: impl Fn(u64) -> bool) -> Option<IsrChange> {
        let hw = self.high_watermark();
        let mut guard = lock(&self.leader);
        let l = guard.as_mut()?;
        if l.adding.is_some() {
            return None;
        }
        let (&follower, _) = l
            .followers
            .iter()
            .find(|(id, f)| !l.isr.contains(id) && alive(**id) && f.end >= hw && f.end >= l.epoch_start)?;
        l.adding = Some(follower);
        let mut isr = l.isr.clone();
        isr.push(follower);
        Some(IsrChange { epoch: l.epoch, revision: l.revision, isr })
    }

    /// Followers to drop from the in-sync set: behind the log end for longer than `lag`, or no
    /// longer alive (their lease expired: whatever they hold, they cannot acknowledge writes).
    pub fn laggards(&self, lag: Duration, alive: impl Fn(u64) -> bool) -> Option<IsrChange> {
        let leo = self.log.offsets().log_end_offset;
        let guard = lock(&self.leader);
        let l = guard.as_ref()?;
        let keep: Vec<u64> = l
            .isr
            .iter()
            .copied()
            .filter(|r| {
                if *r == self.node {
                    return true;
                }
                if !alive(*r) {
                    return false;
                }
                let Some(f) = l.followers.get(r) else { return true };
                f.end >= leo || f.caught_up_at.elapsed() <= lag
            })
            .collect();
        (keep.len() != l.isr.len()).then_some(IsrChange { epoch: l.epoch, revision: l.revision, isr: keep })
    }

    /// Records the outcome of an in-sync set write: `Some(revision)` when it was written.
    pub fn isr_written(&self, change: &IsrChange, revision: Option<i64>) {
        {
            let mut guard = lock(&self.leader);
            let Some(l) = guard.as_mut().filter(|l| l.epoch == change.epoch) else { return };
            l.adding = None;
            if let Some(rev) = revision {
                l.isr = change.isr.clone();
                l.revision = rev;
                tracing::info!(partition = %self.pid, isr = ?change.isr, "in-sync replicas changed");
            }
        }
        self.update_hw();
    }

    /// Adopts a newer in-sync set from the metadata (this leader's own write seen back, or an
    /// operator's).
    pub fn observe_isr(&self, epoch: u64, isr: &[u64], revision: i64) {
        {
            let mut guard = lock(&self.leader);
            let Some(l) = guard.as_mut().filter(|l| l.epoch == epoch && revision > l.revision) else { return };
            l.isr = isr.to_vec();
            l.revision = revision;
        }
        self.update_hw();
    }

    /// Whether `follower` has everything this leader has.
    pub fn caught_up(&self, follower: u64) -> bool {
        let leo = self.log.offsets().log_end_offset;
        lock(&self.leader).as_ref().and_then(|l| l.followers.get(&follower)).is_some_and(|f| f.end >= leo)
    }

    /// Remembers the trace context of an append starting at `base_offset`.
    pub fn note_traced(&self, base_offset: i64, traceparent: String) {
        *lock(&self.traced) = Some((base_offset, traceparent));
    }

    /// The trace context of the newest traced append starting in `[from, to)`.
    pub fn traced_within(&self, from: i64, to: i64) -> Option<String> {
        lock(&self.traced).as_ref().filter(|(o, _)| (from..to).contains(o)).map(|(_, t)| t.clone())
    }

    /// Remembers the high watermark the leader sent.
    pub fn learn_hw(&self, hw: i64) {
        let mut h = lock(&self.follower_hw);
        *h = (*h).max(hw);
    }

    /// Appends `batches` as the leader of `epoch`: refused (NOT_LEADER) unless this node
    /// still leads it, and (`min_isr` given, for acks=all) when the in-sync set is smaller.
    /// `traceparent` is remembered for the push to followers before the batches are stored,
    /// since the push may take them the moment they are.
    pub async fn append_as_leader(
        self: &Arc<Self>,
        epoch: u64,
        batches: Bytes,
        config: TopicConfig,
        min_isr: Option<u32>,
        traceparent: Option<String>,
    ) -> Result<AppendInfo, SluiceError> {
        self.under_role(move |role, me, log| {
            let pid = &me.pid;
            if role != (Role::Leader { epoch }) {
                return Err(SluiceError::NotLeader {
                    topic: pid.topic.clone(),
                    partition: pid.partition,
                    node: me.node,
                });
            }
            let isr = me.committed.borrow().isr as u32;
            if let Some(min) = min_isr.filter(|m| isr < *m) {
                return Err(SluiceError::NotEnoughReplicas {
                    topic: pid.topic.clone(),
                    partition: pid.partition,
                    isr,
                    min,
                });
            }
            if let Some(tp) = traceparent {
                me.note_traced(log.offsets().log_end_offset, tp);
            }
            log.append(&batches, &config, sluice_core::settings::now_ms(), epoch as i32)
                .map_err(|e| crate::map_storage(pid, e))
        })
        .await
    }

    /// Appends a leader's batches while following `epoch` of `leader`; refused once the role
    /// changed, so a copy still in flight cannot land after this node took over.
    pub async fn append_as_follower(
        self: &Arc<Self>,
        epoch: u64,
        leader: u64,
        batches: Bytes,
    ) -> Result<i64, SluiceError> {
        self.under_role(move |role, me, log| {
            if role != (Role::Follower { epoch, leader }) {
                return Err(SluiceError::NotLeader {
                    topic: me.pid.topic.clone(),
                    partition: me.pid.partition,
                    node: leader,
                });
            }
            log.append_replica(&batches).map_err(|e| crate::map_storage(&me.pid, e))
        })
        .await
    }

    /// Truncates (or resets) the log while following `epoch` of `leader`.
    pub async fn truncate_as_follower(
        self: &Arc<Self>,
        epoch: u64,
        leader: u64,
        to: i64,
        reset: bool,
    ) -> Result<(), SluiceError> {
        self.under_role(move |role, me, log| {
            if role != (Role::Follower { epoch, leader }) {
                return Ok(());
            }
            let r = if reset { log.reset(to) } else { log.truncate(to).map(|_| ()) };
            r.map_err(|e| crate::map_storage(&me.pid, e))
        })
        .await
    }
}
