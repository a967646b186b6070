//! Follows the metadata and keeps this node's replicas in the roles it gives them.
//!
//! On every view change it first deletes the data of topics that are gone. Then, on every
//! view change and every `replication.check_interval_ms`, for each partition with a replica
//! here:
//! - named leader: take up leadership (stopping the fetcher first), or, when this node led the
//!   same epoch before it restarted, give it up first: hand it to another live in-sync replica
//!   or take it again under a new epoch, since the restart may have lost unflushed writes;
//! - named follower: follow the leader (a fetcher per partition);
//! - leader dead: if this node is in sync, campaign: a compare-and-set of the partition state
//!   that makes it leader at the next epoch. Several candidates may try; the metadata store
//!   lets one win. Only in-sync replicas are candidates (no unclean election);
//! - leading: drop laggards from the in-sync set, and hand leadership back to the preferred
//!   replica once it is in sync and caught up.
//!
//! Every leadership or in-sync change is a compare-and-set against the revision it was
//! computed from, so decisions made on a stale view are refused, never applied.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_meta::{ClusterView, PartitionAssignment, PartitionState, TopicMeta};
use sluice_proto::v1::PartitionRef;
use sluice_runtime::Shutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Node;
use crate::replica::{IsrChange, Replica, Role};

type Key = (u64, u32);

struct Fetcher {
    leader: u64,
    epoch: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The manager's own state.
pub struct Control {
    /// Partitions this node led (and at which epoch) when it started.
    previous: Mutex<HashMap<Key, u64>>,
    /// Partitions with a metadata write in flight.
    busy: Mutex<HashSet<Key>>,
    fetchers: tokio::sync::Mutex<HashMap<Key, Fetcher>>,
    last_rebalance: Mutex<Instant>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            previous: Default::default(),
            busy: Default::default(),
            fetchers: Default::default(),
            last_rebalance: Mutex::new(Instant::now()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    pub fn note_previous_leadership(&self, view: &ClusterView, node: u64) {
        let mut prev = lock(&self.previous);
        for t in view.topics.values() {
            for (p, a) in t.partitions.iter().enumerate() {
                if a.leader == node {
                    prev.insert((t.topic_id, p as u32), a.leader_epoch);
                }
            }
        }
    }
}

pub fn spawn(node: Arc<Node>, shutdown: Shutdown) {
    let mut view_rx = node.meta().view();
    let period = Duration::from_millis(node.settings.check_interval_ms.max(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed = true;
        loop {
            let view = view_rx.borrow_and_update().clone();
            if changed {
                // Data of topics that are gone goes only when the metadata changed.
                node.reconcile(&view).await;
            }
            check(&node).await;
            changed = tokio::select! {
                r = view_rx.changed() => if r.is_err() { break } else { true },
                _ = tick.tick() => false,
                _ = shutdown.wait() => break,
            };
        }
        let fetchers: Vec<Fetcher> = node.control.fetchers.lock().await.drain().map(|(_, f)| f).collect();
        for f in fetchers {
            let _ = f.stop.send(true);
        }
    });
}

/// One pass over every replica of this node.
async fn check(node: &Arc<Node>) {
    let view = node.snapshot();
    if !view.loaded {
        return;
    }
    let rebalance = {
        let interval = node.settings.leader_rebalance_interval_ms;
        let mut last = lock(&node.control.last_rebalance);
        let due = interval > 0 && last.elapsed() >= Duration::from_millis(interval);
        if due {
            *last = Instant::now();
        }
        due
    };
    let mut seen = HashSet::new();
    for t in view.topics.values() {
        for (p, a) in t.partitions.iter().enumerate() {
            let p = p as u32;
            if !a.replicas.contains(&node.id) {
                continue;
            }
            let key = (t.topic_id, p);
            seen.insert(key);
            let replica = match node.replica(t, p).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic = %t.name, partition = p, error = %e, "cannot open replica");
                    continue;
                }
            };
            if a.leader == node.id {
                lead(node, &view, t, p, a, &replica, rebalance).await;
            } else {
                follow(node, &view, t, p, a, &replica).await;
            }
        }
    }
    let gone: Vec<Key> = node.all_replicas().into_iter().map(|(k, _)| k).filter(|k| !seen.contains(k)).collect();
    for key in gone {
        stop_fetcher(node, key).await;
        node.forget(key);
    }
}

async fn lead(
    node: &Arc<Node>,
    view: &ClusterView,
    t: &Arc<TopicMeta>,
    p: u32,
    a: &PartitionAssignment,
    replica: &Arc<Replica>,
    rebalance: bool,
) {
    let key = (t.topic_id, p);
    let alive = |n: u64| view.nodes.contains_key(&n);
    let previous = lock(&node.control.previous).get(&key).copied();
    if previous == Some(a.leader_epoch) {
        // Led this very epoch before a restart: never resume it as if nothing happened.
        stop_fetcher(node, key).await;
        replica.become_follower(a.leader_epoch, None).await;
        let others: Vec<u64> =
            a.replicas.iter().copied().filter(|r| *r != node.id && a.isr.contains(r) && alive(*r)).collect();
        let next = match others.first() {
            Some(o) => PartitionState {
                topic_id: t.topic_id,
                leader: *o,
                leader_epoch: a.leader_epoch + 1,
                isr: a.isr.iter().copied().filter(|r| *r != node.id).collect(),
            },
            None => PartitionState { leader_epoch: a.leader_epoch + 1, ..a.state(t.topic_id) },
        };
        write(node, t.clone(), p, a.clone(), next, "restarted leader steps aside", None);
        return;
    }
    if previous.is_some() {
        lock(&node.control.previous).remove(&key);
    }
    match replica.role() {
        Role::Leader { epoch } if epoch == a.leader_epoch => {}
        _ => {
            stop_fetcher(node, key).await;
            replica.become_leader(a.leader_epoch, a.isr.clone(), a.revision).await;
            return;
        }
    }
    replica.observe_isr(a.leader_epoch, &a.isr, a.revision);
    let lag = Duration::from_millis(node.settings.lag_time_max_ms);
    if let Some(change) = replica.laggards(lag, alive) {
        write_isr(node, t.clone(), p, a, replica.clone(), change);
        return;
    }
    if let Some(change) = replica.joiner(alive) {
        write_isr(node, t.clone(), p, a, replica.clone(), change);
        return;
    }
    let preferred = a.replicas.first().copied().unwrap_or(node.id);
    if rebalance
        && preferred != node.id
        && alive(preferred)
        && a.isr.contains(&preferred)
        && replica.caught_up(preferred)
    {
        let next = PartitionState { leader: preferred, leader_epoch: a.leader_epoch + 1, ..a.state(t.topic_id) };
        write(node, t.clone(), p, a.clone(), next, "leadership back to the preferred replica", None);
    }
}

async fn follow(
    node: &Arc<Node>,
    view: &ClusterView,
    t: &Arc<TopicMeta>,
    p: u32,
    a: &PartitionAssignment,
    replica: &Arc<Replica>,
) {
    let key = (t.topic_id, p);
    lock(&node.control.previous).remove(&key);
    if view.nodes.contains_key(&a.leader) {
        if replica.role() != (Role::Follower { epoch: a.leader_epoch, leader: a.leader }) {
            stop_fetcher(node, key).await;
            replica.become_follower(a.leader_epoch, Some(a.leader)).await;
        }
        ensure_fetcher(node, key, t, p, a.leader, a.leader_epoch, replica).await;
        return;
    }
    if matches!(replica.role(), Role::Leader { .. }) {
        replica.become_follower(a.leader_epoch, None).await;
    }
    if a.isr.contains(&node.id) {
        // The leader is dead: any live in-sync replica may take over; the compare-and-set
        // picks one.
        let next = PartitionState {
            topic_id: t.topic_id,
            leader: node.id,
            leader_epoch: a.leader_epoch + 1,
            isr: a.isr.iter().copied().filter(|r| *r != a.leader).collect(),
        };
        write(node, t.clone(), p, a.clone(), next, "leader is dead: elected from the in-sync set", None);
    }
}

/// Writes an in-sync set change computed by the leader.
pub fn write_isr(
    node: &Arc<Node>,
    t: Arc<TopicMeta>,
    p: u32,
    a: &PartitionAssignment,
    replica: Arc<Replica>,
    change: IsrChange,
) {
    let expected = PartitionAssignment { revision: change.revision, ..a.clone() };
    let next =
        PartitionState { topic_id: t.topic_id, leader: node.id, leader_epoch: change.epoch, isr: change.isr.clone() };
    write(node, t, p, expected, next, "in-sync set change", Some((replica, change)));
}

/// Called by the replication handler when a follower caught up.
pub fn follower_caught_up(node: &Arc<Node>, r: &PartitionRef, replica: Arc<Replica>, change: IsrChange) {
    match node.resolve(r) {
        Ok((t, a)) => write_isr(node, t, r.partition, &a, replica, change),
        Err(_) => replica.isr_written(&change, None),
    }
}

/// One compare-and-set of a partition's state in the background, at most one per partition.
fn write(
    node: &Arc<Node>,
    t: Arc<TopicMeta>,
    p: u32,
    expected: PartitionAssignment,
    next: PartitionState,
    why: &'static str,
    isr: Option<(Arc<Replica>, IsrChange)>,
) {
    let key = (t.topic_id, p);
    if !lock(&node.control.busy).insert(key) {
        if let Some((replica, change)) = isr {
            replica.isr_written(&change, None);
        }
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let result = node.meta().update_partition(&t, p, &expected, next.clone()).await;
        let written = match result {
            Ok(Some(rev)) => {
                tracing::info!(
                    topic = %t.name, partition = p, leader = next.leader, epoch = next.leader_epoch,
                    isr = ?next.isr, revision = rev, "{why}"
                );
                Some(rev)
            }
            Ok(None) => {
                tracing::debug!(topic = %t.name, partition = p, "{why}: the state changed first");
                None
            }
            Err(e) => {
                tracing::warn!(topic = %t.name, partition = p, error = %e, "{why}: metadata write failed");
                None
            }
        };
        if let Some((replica, change)) = isr {
            replica.isr_written(&change, written);
        }
        lock(&node.control.busy).remove(&key);
    });
}

async fn ensure_fetcher(
    node: &Arc<Node>,
    key: Key,
    t: &TopicMeta,
    p: u32,
    leader: u64,
    epoch: u64,
    replica: &Arc<Replica>,
) {
    let mut fetchers = node.control.fetchers.lock().await;
    if fetchers.get(&key).is_some_and(|f| f.leader == leader && f.epoch == epoch && !f.task.is_finished()) {
        return;
    }
    if let Some(old) = fetchers.remove(&key) {
        let _ = old.stop.send(true);
        let _ = old.task.await;
    }
    let (stop, stop_rx) = watch::channel(false);
    let pref = PartitionRef { topic: t.name.clone(), topic_id: t.topic_id, partition: p };
    let task = tokio::spawn(crate::fetcher::run(node.clone(), replica.clone(), pref, leader, epoch, stop_rx));
    fetchers.insert(key, Fetcher { leader, epoch, stop, task });
}

async fn stop_fetcher(node: &Arc<Node>, key: Key) {
    let old = node.control.fetchers.lock().await.remove(&key);
    if let Some(f) = old {
        let _ = f.stop.send(true);
        let _ = f.task.await;
    }
}
