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
use sluice_storage::{AppendInfo, AsyncLog, PartitionId, PartitionLog, StorageError};
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

/// What a leader's append did.
pub enum Appended {
    Done(AppendInfo),
    /// Nothing written: a transactional batch of a producer with no transaction open here at
    /// that epoch; the transaction coordinator must add the partition first.
    Unverified {
        producer_id: i64,
        epoch: i16,
    },
}

impl Replica {
    /// NOT_LEADER for this partition, naming `node`.
    fn not_leader(&self, node: u64) -> SluiceError {
        SluiceError::NotLeader { topic: self.pid.topic.clone(), partition: self.pid.partition, node }
    }

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
            // Published with what the in-sync set already tells (a leader without followers:
            // its log end), not only the watermark carried over (0 on a node just restarted),
            // which a reader would take for where the log ends.
            let (hw, durable) = match me.watermarks() {
                Some((h, d, _)) => (hw.max(h), durable.max(d)),
                None => (hw, durable),
            };
            me.committed.send_replace(Committed { hw, durable, leading: epoch, isr: isr.len() });
            tracing::info!(partition = %me.pid, epoch, ?isr, hw, log_end = leo, "leading");
        })
        .await;
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
        let Some((hw, durable, isr)) = self.watermarks() else { return };
        self.committed.send_if_modified(|c| {
            let (next, next_durable) = (c.hw.max(hw), c.durable.max(durable));
            let changed = next != c.hw || next_durable != c.durable || c.isr != isr;
            c.hw = next;
            c.durable = next_durable;
            c.isr = isr;
            changed
        });
    }

    /// The high and durable watermarks the in-sync set allows now (the smallest stored and
    /// flushed ends of its members and of a joining one), and its size; none unless leading.
    fn watermarks(&self) -> Option<(i64, i64, usize)> {
        let leo = self.log.offsets().log_end_offset;
        let guard = lock(&self.leader);
        let l = guard.as_ref()?;
        let (mut hw, mut durable) = (leo, leo);
        for r in l.isr.iter().chain(l.adding.iter()) {
            if *r == self.node {
                continue;
            }
            let f = l.followers.get(r);
            hw = hw.min(f.map_or(-1, |f| f.end));
            durable = durable.min(f.map_or(-1, |f| f.flushed));
        }
        Some((hw, durable, l.isr.len()))
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
            // Only the outcome of the addition itself ends it: a shrink refused or written
            // while the addition is in flight must not stop the joining follower from
            // counting for the watermarks, or an addition written afterwards would put in the
            // in-sync set a replica lacking acknowledged records.
            // (A change naming the joining follower is its addition, possibly already seen
            // back through the metadata by observe_isr.)
            if l.adding.is_some_and(|f| change.isr.contains(&f)) {
                l.adding = None;
            }
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
            // The joining follower is a member now: its addition is done.
            if l.adding.is_some_and(|f| l.isr.contains(&f)) {
                l.adding = None;
            }
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
        verified: Option<(i64, i16)>,
    ) -> Result<Appended, SluiceError> {
        self.under_role(move |role, me, log| {
            let pid = &me.pid;
            if role != (Role::Leader { epoch }) {
                return Err(me.not_leader(me.node));
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
            match log.append_verified(&batches, &config, sluice_core::settings::now_ms(), epoch as i32, verified) {
                Ok(info) => Ok(Appended::Done(info)),
                Err(StorageError::NotInTransaction { producer_id, epoch }) => {
                    Ok(Appended::Unverified { producer_id, epoch })
                }
                Err(e) => Err(crate::map_storage(pid, e)),
            }
        })
        .await
    }

    /// Writes a transaction marker as the leader of `epoch` (see
    /// [`sluice_storage::PartitionLog::append_marker`]).
    pub async fn append_marker_as_leader(
        self: &Arc<Self>,
        epoch: u64,
        producer_id: i64,
        producer_epoch: i16,
        marker: sluice_core::batch::Marker,
        coordinator_epoch: u64,
        keeps_epoch: bool,
    ) -> Result<AppendInfo, SluiceError> {
        self.under_role(move |role, me, log| {
            let pid = &me.pid;
            if role != (Role::Leader { epoch }) {
                return Err(me.not_leader(me.node));
            }
            let now = sluice_core::settings::now_ms();
            // The batch format's field is 32 bits; the fencing above uses the full epoch.
            let coordinator_epoch = coordinator_epoch.min(i32::MAX as u64) as i32;
            let spec = sluice_storage::MarkerSpec {
                keeps_epoch,
                ..sluice_storage::MarkerSpec::new(producer_id, producer_epoch, marker, coordinator_epoch)
            };
            log.append_marker(&spec, now, epoch as i32).map_err(|e| crate::map_storage(pid, e))
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
                return Err(me.not_leader(leader));
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

#[cfg(test)]
mod tests {
    //! The replica logic against an in-memory partition log (`MemLog`), opened through
    //! `AsyncStore` as the node opens its logs:
    //! - the high watermark (smallest stored end in the in-sync set) and the durable watermark
    //!   (smallest flushed end) as followers acknowledge, never going backwards;
    //! - growing the in-sync set: a caught-up follower is proposed, counts for the watermarks
    //!   while its write is pending, and is proposed again by `joiner` when the write failed;
    //! - shrinking it: `laggards` proposes dropping followers behind for too long or dead, never
    //!   the leader;
    //! - role fencing of leader appends, follower copies and truncations;
    //! - truncation by leader epoch, with the target computed as `fetcher.rs` computes it.

    use super::*;
    use sluice_core::batch::{self, BatchBuilder};
    use sluice_core::compression::Compression;
    use sluice_storage::cleaner::CleanStats;
    use sluice_storage::{AsyncStore, LogOffsets, LogStore, ReadResult, StorageError};

    /// A partition log in memory: whole batches as `(base offset, epoch, last offset, bytes)`.
    struct MemLog {
        id: PartitionId,
        state: Mutex<MemState>,
        end_tx: watch::Sender<i64>,
    }

    #[derive(Default)]
    struct MemState {
        start: i64,
        end: i64,
        batches: Vec<(i64, i32, i64, Bytes)>,
    }

    impl MemLog {
        fn new() -> Self {
            Self { id: pid(), state: Mutex::new(MemState::default()), end_tx: watch::Sender::new(0) }
        }

        /// Releases the state, then publishes the log end.
        fn publish(&self, st: std::sync::MutexGuard<'_, MemState>) -> i64 {
            let end = st.end;
            drop(st);
            self.end_tx.send_replace(end);
            end
        }
    }

    impl PartitionLog for MemLog {
        fn id(&self) -> &PartitionId {
            &self.id
        }

        fn append_verified(
            &self,
            batches: &[u8],
            _config: &TopicConfig,
            _now_ms: i64,
            leader_epoch: i32,
            _verified: Option<(i64, i16)>,
        ) -> Result<AppendInfo, StorageError> {
            let parts = batch::split_batches(batches)?;
            let mut st = lock(&self.state);
            let base_offset = st.end;
            let mut record_count = 0u32;
            for (h, range) in parts {
                let base = st.end;
                let mut b = batches[range].to_vec();
                batch::set_base_offset(&mut b, base);
                batch::set_partition_leader_epoch(&mut b, leader_epoch);
                let last = base + h.last_offset_delta as i64;
                st.batches.push((base, leader_epoch, last, Bytes::from(b)));
                st.end = last + 1;
                record_count += h.record_count as u32;
            }
            let end = self.publish(st);
            Ok(AppendInfo { base_offset, last_offset: end - 1, record_count, log_append_time: -1, duplicate: false })
        }

        fn append_replica(&self, batches: &[u8]) -> Result<i64, StorageError> {
            let parts = batch::split_batches(batches)?;
            let mut st = lock(&self.state);
            let mut expected = st.end;
            for (h, _) in &parts {
                if h.base_offset != expected {
                    return Err(StorageError::NotContiguous { expected, got: h.base_offset });
                }
                expected = h.next_offset();
            }
            for (h, range) in parts {
                let b = Bytes::copy_from_slice(&batches[range]);
                st.batches.push((h.base_offset, h.partition_leader_epoch, h.last_offset(), b));
            }
            st.end = expected;
            Ok(self.publish(st))
        }

        fn truncate(&self, offset: i64) -> Result<i64, StorageError> {
            let mut st = lock(&self.state);
            if offset < st.end {
                // Whole batches only: the one holding `offset` goes too.
                let keep = st.batches.iter().take_while(|b| b.2 < offset).count();
                let from = st.batches.get(keep).map_or(offset, |b| b.0.min(offset));
                let start = st.start;
                st.batches.truncate(keep);
                st.end = from.max(start);
            }
            Ok(self.publish(st))
        }

        fn reset(&self, offset: i64) -> Result<(), StorageError> {
            let mut st = lock(&self.state);
            *st = MemState { start: offset, end: offset, batches: Vec::new() };
            self.publish(st);
            Ok(())
        }

        fn last_epoch(&self) -> i32 {
            lock(&self.state).batches.last().map_or(-1, |b| b.1)
        }

        fn epoch_end(&self, epoch: i32) -> (i32, i64) {
            // As the sled log: walk back over later epochs; the first batch at or below `epoch`
            // names the epoch, the batch after it (or the log end) where it ends.
            let st = lock(&self.state);
            let mut end = st.end;
            for (base, e, _, _) in st.batches.iter().rev() {
                if *e <= epoch {
                    return (*e, end);
                }
                end = *base;
            }
            (-1, st.start)
        }

        fn read_to(&self, offset: i64, _max_bytes: usize, max_offset: i64) -> Result<ReadResult, StorageError> {
            let st = lock(&self.state);
            if offset < st.start || offset > st.end {
                return Err(StorageError::OffsetOutOfRange { offset, start: st.start, end: st.end });
            }
            let (mut out, mut next_offset) = (Vec::<u8>::new(), offset);
            for (_, _, last, b) in st.batches.iter().filter(|b| b.2 >= offset && b.2 < max_offset) {
                out.extend_from_slice(b);
                next_offset = last + 1;
            }
            Ok(ReadResult {
                batches: Bytes::from(out),
                next_offset,
                log_start_offset: st.start,
                log_end_offset: st.end,
            })
        }

        fn offsets(&self) -> LogOffsets {
            let st = lock(&self.state);
            LogOffsets { log_start_offset: st.start, log_end_offset: st.end }
        }

        fn offset_for_timestamp(&self, _timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
            Ok(None)
        }

        fn subscribe(&self) -> watch::Receiver<i64> {
            self.end_tx.subscribe()
        }

        fn size_bytes(&self) -> u64 {
            lock(&self.state).batches.iter().map(|b| b.3.len() as u64).sum()
        }

        fn clean(&self, _config: &TopicConfig, _now_ms: i64) -> Result<CleanStats, StorageError> {
            Ok(Default::default())
        }

        // The replica logic under test never writes markers: this log holds no transactions.
        fn append_marker(
            &self,
            _marker: &sluice_storage::MarkerSpec,
            _now_ms: i64,
            _leader_epoch: i32,
        ) -> Result<AppendInfo, StorageError> {
            Err(StorageError::ControlBatch)
        }

        fn first_unstable_offset(&self) -> i64 {
            self.offsets().log_end_offset
        }

        fn aborted_transactions(&self, _from: i64, _to: i64) -> Vec<sluice_storage::txns::AbortedTxn> {
            Vec::new()
        }

        fn producers(&self) -> Vec<sluice_storage::producers::ProducerInfo> {
            Vec::new()
        }
    }

    /// `AsyncLog` has no public constructor: the fake log is opened through a store.
    struct MemStore(Arc<MemLog>);

    impl LogStore for MemStore {
        fn open(&self, _id: &PartitionId) -> Result<Arc<dyn PartitionLog>, StorageError> {
            let log: Arc<dyn PartitionLog> = self.0.clone();
            Ok(log)
        }

        fn remove(&self, _id: &PartitionId) -> Result<(), StorageError> {
            Ok(())
        }

        fn list(&self) -> Result<Vec<PartitionId>, StorageError> {
            Ok(vec![self.0.id.clone()])
        }

        fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>> {
            Box::pin(std::future::ready(Ok::<(), StorageError>(())))
        }
    }

    fn pid() -> PartitionId {
        PartitionId { topic: "t".into(), topic_id: 1, partition: 0 }
    }

    /// A batch of `n` records as a producer sends it (offsets from 0, no epoch).
    fn records(n: usize) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..n {
            b.push(1_000 + i as i64, None, Some(&b"v"[..]), &[]);
        }
        b.build().unwrap()
    }

    /// A batch of `n` records as a leader stored it: at `base`, stamped with `epoch`.
    fn stored(n: usize, base: i64, epoch: i32) -> Bytes {
        let mut b = records(n).to_vec();
        batch::set_base_offset(&mut b, base);
        batch::set_partition_leader_epoch(&mut b, epoch);
        Bytes::from(b)
    }

    /// A replica on `node` over a fresh in-memory log, and that log.
    async fn new_replica(node: u64) -> (Arc<Replica>, Arc<MemLog>) {
        let mem = Arc::new(MemLog::new());
        let log = AsyncStore::new(Arc::new(MemStore(mem.clone()))).open(&pid()).await.unwrap();
        (Arc::new(Replica::new(pid(), log, node)), mem)
    }

    fn committed(r: &Replica) -> Committed {
        *r.committed().borrow()
    }

    /// Appends `n` records as the leader of `epoch`, then moves the high watermark as the
    /// append handler does.
    async fn lead_append(r: &Arc<Replica>, epoch: u64, n: usize) -> AppendInfo {
        let Ok(Appended::Done(info)) =
            r.append_as_leader(epoch, records(n), TopicConfig::default(), None, None, None).await
        else {
            panic!("append refused")
        };
        r.update_hw();
        info
    }

    /// Where a follower truncates before copying, computed as `fetcher::session` does from the
    /// leader's `EpochEnd` answer for the follower's last epoch.
    async fn truncation_target(follower: &Replica, leader: &MemLog) -> i64 {
        let last = follower.log.last_epoch();
        let (epoch, end_offset) = leader.epoch_end(last);
        if epoch < 0 || epoch == last {
            end_offset
        } else {
            end_offset.min(follower.log.epoch_end(epoch).await.unwrap().1)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watermarks_follow_the_slowest_in_sync_replica_and_never_go_back() {
        let (r, _) = new_replica(1).await;
        r.become_leader(1, vec![1, 2, 3], 10).await;
        assert_eq!(r.role(), Role::Leader { epoch: 1 });
        let c = |hw: i64, durable: i64, isr: usize| Committed { hw, durable, leading: 1, isr };
        assert_eq!(committed(&r), c(0, 0, 3));

        let info = lead_append(&r, 1, 5).await;
        assert_eq!(
            info,
            AppendInfo { base_offset: 0, last_offset: 4, record_count: 5, log_append_time: -1, duplicate: false }
        );
        assert_eq!(committed(&r), c(0, 0, 3), "no follower has the records yet");

        assert_eq!(r.on_follower_ack(2, 5, -1), None, "a member's ack proposes nothing");
        assert_eq!(committed(&r), c(0, 0, 3), "follower 3 has not reported");
        r.on_follower_ack(3, 3, -1);
        assert_eq!(committed(&r), c(3, 0, 3));
        r.on_follower_ack(3, 5, -1);
        assert_eq!(committed(&r), c(5, 0, 3), "stored everywhere, flushed nowhere");
        assert_eq!(r.high_watermark(), 5);

        // The durable watermark moves with flushed ends only.
        r.on_follower_ack(2, 5, 5);
        assert_eq!(committed(&r), c(5, 0, 3), "follower 3 flushed nothing yet");
        r.on_follower_ack(3, 5, 3);
        assert_eq!(committed(&r), c(5, 3, 3));
        r.on_follower_ack(3, 5, 5);
        assert_eq!(committed(&r), c(5, 5, 3));

        // Never backwards: a stale ack, a new member with nothing, new records.
        r.on_follower_ack(3, 2, 2);
        assert_eq!(committed(&r), c(5, 5, 3));
        r.observe_isr(1, &[1, 2, 3, 4], 11);
        assert_eq!(committed(&r), c(5, 5, 4), "follower 4 has reported nothing");
        r.observe_isr(1, &[1], 11);
        assert_eq!(committed(&r), c(5, 5, 4), "a revision that is not newer is ignored");
        lead_append(&r, 1, 2).await;
        r.on_follower_ack(2, 7, 7);
        r.on_follower_ack(3, 7, 7);
        assert_eq!(committed(&r), c(5, 5, 4));
        r.on_follower_ack(4, 6, 6);
        assert_eq!(committed(&r), c(6, 6, 4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caught_up_follower_joins_and_counts_while_its_addition_is_written() {
        let (r, mem) = new_replica(1).await;
        // Three records of an earlier epoch: this leadership starts at offset 3.
        mem.append(&records(3), &TopicConfig::default(), 0, 1).unwrap();
        r.become_leader(2, vec![1, 2], 10).await;
        let c = |hw: i64, durable: i64, isr: usize| Committed { hw, durable, leading: 2, isr };
        assert_eq!(committed(&r), c(0, 0, 2));

        assert_eq!(r.on_follower_ack(3, 1, -1), None, "short of the epoch start");
        assert_eq!(r.on_follower_ack(2, 3, 3), None);
        assert_eq!(committed(&r), c(3, 3, 2));
        assert_eq!(r.on_follower_ack(3, 2, -1), None, "below the high watermark");

        lead_append(&r, 2, 2).await;
        let add = IsrChange { epoch: 2, revision: 10, isr: vec![1, 2, 3] };
        assert_eq!(r.on_follower_ack(3, 3, -1), Some(add.clone()));
        // While the addition is written, follower 3 holds both watermarks at its ends.
        assert_eq!(r.on_follower_ack(2, 5, 5), None);
        assert_eq!(committed(&r), c(3, 3, 2));
        assert_eq!(r.on_follower_ack(3, 5, -1), None, "one addition at a time");
        assert_eq!(committed(&r), c(5, 3, 2), "the durable watermark waits for its flush");
        assert_eq!(r.joiner(|_| true), None, "an addition is being written");

        // The write failed: follower 3 stops counting, and joiner proposes it again (alive).
        r.isr_written(&add, None);
        assert_eq!(committed(&r), c(5, 5, 2));
        assert_eq!(r.joiner(|id| id != 3), None);
        assert_eq!(r.joiner(|_| true), Some(add.clone()));
        assert_eq!(r.joiner(|_| true), None, "pending again");

        // Another change refused meanwhile (the partition's write slot is busy) leaves the
        // addition pending: follower 3 still holds the watermarks.
        lead_append(&r, 2, 1).await;
        r.on_follower_ack(2, 6, 6);
        r.isr_written(&IsrChange { epoch: 2, revision: 10, isr: vec![1] }, None);
        assert_eq!(committed(&r), c(5, 5, 2), "the joining follower is at 5");
        r.on_follower_ack(3, 6, 6);
        assert_eq!(committed(&r), c(6, 6, 2));

        // Written: a member at the new revision.
        r.isr_written(&add, Some(11));
        assert_eq!(committed(&r), c(6, 6, 3));
        assert_eq!(r.on_follower_ack(3, 6, 6), None, "already a member");
        lead_append(&r, 2, 1).await;
        r.on_follower_ack(2, 7, 7);
        assert_eq!(committed(&r), c(6, 6, 3));
        r.on_follower_ack(3, 7, 7);
        assert_eq!(committed(&r), c(7, 7, 3));
        assert_eq!(
            r.laggards(Duration::ZERO, |id| id != 3),
            Some(IsrChange { epoch: 2, revision: 11, isr: vec![1, 2] }),
            "later changes start from the written revision"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn laggards_are_followers_behind_too_long_or_dead_never_the_leader() {
        let (r, _) = new_replica(1).await;
        r.become_leader(1, vec![1, 2, 3], 10).await;
        let shrink = |isr: Vec<u64>| Some(IsrChange { epoch: 1, revision: 10, isr });
        let hour = Duration::from_secs(3600);
        assert_eq!(r.laggards(hour, |_| true), None);

        lead_append(&r, 1, 3).await;
        assert_eq!(r.on_follower_ack(2, 3, 3), None);
        assert_eq!(r.laggards(hour, |_| true), None, "follower 3 is behind, not for long");
        assert_eq!(r.laggards(Duration::ZERO, |_| true), shrink(vec![1, 2]));
        assert_eq!(r.laggards(hour, |id| id != 2), shrink(vec![1, 3]), "a dead follower goes at once");
        assert_eq!(r.laggards(Duration::ZERO, |_| false), shrink(vec![1]), "never the leader");

        // Proposals only: the in-sync set changes once written.
        assert_eq!(committed(&r), Committed { hw: 0, durable: 0, leading: 1, isr: 3 });
        r.isr_written(&shrink(vec![1, 2]).unwrap(), Some(11));
        assert_eq!(committed(&r), Committed { hw: 3, durable: 3, leading: 1, isr: 2 });
        assert_eq!(r.laggards(Duration::ZERO, |_| true), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_refused_under_a_role_the_node_does_not_have() {
        let (r, mem) = new_replica(1).await;
        assert_eq!(r.role(), Role::Idle);
        assert!(matches!(
            r.append_as_leader(1, records(1), TopicConfig::default(), None, None, None).await.map(|_| ()),
            Err(SluiceError::NotLeader { node: 1, .. })
        ));
        r.become_leader(2, vec![1], 5).await;
        assert!(
            matches!(
                r.append_as_leader(1, records(1), TopicConfig::default(), None, None, None).await.map(|_| ()),
                Err(SluiceError::NotLeader { node: 1, .. })
            ),
            "another epoch"
        );
        assert!(matches!(
            r.append_as_leader(2, records(1), TopicConfig::default(), Some(2), None, None).await.map(|_| ()),
            Err(SluiceError::NotEnoughReplicas { isr: 1, min: 2, .. })
        ));
        assert_eq!(mem.offsets().log_end_offset, 0, "nothing refused was stored");
        assert_eq!(lead_append(&r, 2, 3).await.last_offset, 2);
        assert_eq!(committed(&r), Committed { hw: 3, durable: 3, leading: 2, isr: 1 });

        let mut waiter = r.committed();
        r.become_follower(3, Some(2)).await;
        assert_eq!(r.role(), Role::Follower { epoch: 3, leader: 2 });
        assert!(waiter.has_changed().unwrap(), "acks=all waiters learn at once");
        assert_eq!(*waiter.borrow_and_update(), Committed { hw: 3, durable: 3, leading: 0, isr: 0 });
        assert!(matches!(
            r.append_as_leader(2, records(1), TopicConfig::default(), None, None, None).await.map(|_| ()),
            Err(SluiceError::NotLeader { .. })
        ));
        assert_eq!(r.on_follower_ack(2, 3, 3), None, "no follower state once following");

        // Copies only under the leader and epoch followed.
        for (epoch, leader) in [(3, 5), (4, 2), (2, 2)] {
            assert!(matches!(
                r.append_as_follower(epoch, leader, stored(2, 3, 3)).await,
                Err(SluiceError::NotLeader { .. })
            ));
        }
        assert_eq!(mem.offsets().log_end_offset, 3);
        assert_eq!(r.append_as_follower(3, 2, stored(2, 3, 3)).await.unwrap(), 5);

        // Truncations likewise: no-ops under another role.
        r.truncate_as_follower(4, 2, 0, false).await.unwrap();
        r.truncate_as_follower(3, 5, 0, true).await.unwrap();
        assert_eq!(mem.offsets(), LogOffsets { log_start_offset: 0, log_end_offset: 5 });
        r.truncate_as_follower(3, 2, 3, false).await.unwrap();
        assert_eq!(mem.offsets(), LogOffsets { log_start_offset: 0, log_end_offset: 3 });

        r.become_follower(4, None).await;
        assert_eq!(r.role(), Role::Idle);
        r.truncate_as_follower(3, 2, 0, true).await.unwrap();
        assert!(r.append_as_follower(3, 2, stored(1, 3, 3)).await.is_err());
        assert_eq!(mem.offsets(), LogOffsets { log_start_offset: 0, log_end_offset: 3 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_truncates_to_where_its_epochs_agree_with_the_leader() {
        let cfg = TopicConfig::default();
        // The follower copied offsets 0..5 of epoch 1, then wrote 5..7 itself at epoch 2.
        let (r, mem) = new_replica(3).await;
        for (n, epoch) in [(3, 1), (2, 1), (2, 2)] {
            mem.append(&records(n), &cfg, 0, epoch).unwrap();
        }
        // The leader of epoch 3 had epoch 1 going on to offset 7, then wrote 7..10.
        let leader = MemLog::new();
        for (n, epoch) in [(3, 1), (2, 1), (2, 1), (3, 3)] {
            leader.append(&records(n), &cfg, 0, epoch).unwrap();
        }
        r.become_follower(3, Some(2)).await;
        assert_eq!((r.log.last_epoch(), r.log.offsets().log_end_offset), (2, 7));
        assert_eq!(leader.epoch_end(2), (1, 7), "the leader lacks epoch 2: its epoch 1 ends at 7");
        assert_eq!(r.log.epoch_end(1).await.unwrap(), (1, 5), "and the follower's at 5");

        let target = truncation_target(&r, &leader).await;
        assert_eq!(target, 5, "the smaller end: the leader's alone would keep offsets 5 and 6");
        r.truncate_as_follower(3, 2, target, false).await.unwrap();
        assert_eq!(r.log.offsets().log_end_offset, 5);
        assert_eq!(r.log.last_epoch(), 1);
        assert_eq!(r.log.epoch_end(2).await.unwrap(), (1, 5));

        // The next session: the leader has epoch 1, nothing to cut; the copy resumes at 5.
        assert_eq!(truncation_target(&r, &leader).await, 7);
        let copy = leader.read_to(5, usize::MAX, i64::MAX).unwrap();
        assert_eq!(r.append_as_follower(3, 2, copy.batches).await.unwrap(), 10);
        assert_eq!(r.log.last_epoch(), 3);
        assert_eq!(r.log.epoch_end(2).await.unwrap(), (1, 7));
        assert_eq!(truncation_target(&r, &leader).await, 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_addition_seen_back_through_the_metadata_first_still_ends() {
        let (r, _) = new_replica(1).await;
        r.become_leader(1, vec![1], 10).await;
        lead_append(&r, 1, 2).await;
        let add2 = IsrChange { epoch: 1, revision: 10, isr: vec![1, 2] };
        assert_eq!(r.on_follower_ack(2, 2, 2), Some(add2.clone()));
        // The leader's watch shows its own write before the write's answer arrives.
        r.observe_isr(1, &[1, 2], 11);
        r.isr_written(&add2, Some(11));
        // Another follower can be added: the first addition did not stay pending for ever.
        let add3 = IsrChange { epoch: 1, revision: 11, isr: vec![1, 2, 3] };
        assert_eq!(r.on_follower_ack(3, 2, 2), Some(add3));
    }
}
