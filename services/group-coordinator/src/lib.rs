//! The group-coordinator service: consumer groups (membership, assignment, committed offsets).
//!
//! Any number of coordinators run; one is active (it holds the `coordinator` key in etcd,
//! whose creation revision is its epoch) and the others campaign for the role when it frees
//! up. The active one loads every committed offset from the internal topic (see [`store`]),
//! serves `sluice.v1.Groups` and follows the metadata for partition counts; standbys answer
//! COORDINATOR_NOT_AVAILABLE (retriable), which gateways never see because they route to
//! the active one. A coordinator that cannot prove it still holds the role (its lease not
//! renewed within a TTL) refuses commits, so a paused one cannot write after a successor took
//! over.
//!
//! - [`assignor`]: range, round-robin and sticky.
//! - [`group`]: membership, incremental rebalancing and commit fencing for one group.
//! - [`store`]: the offsets topic.
//! - [`service`]: the gRPC API.
//! - [`metrics`]: group lag and member gauges.

pub mod assignor;
pub mod group;
pub mod metrics;
pub mod service;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_meta::{ClusterView, MetaStore};
use sluice_router::Router;
use sluice_runtime::{GroupSettings, Shutdown};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::group::Group;
use crate::store::{OFFSETS_TOPIC, OffsetStore};

/// The health-service name this service reports under.
pub const SERVICE_NAME: &str = "sluice.v1.Groups";

/// Longest group id accepted.
pub const MAX_GROUP_ID_LEN: usize = 255;

/// Checks a group id: not empty, at most [`MAX_GROUP_ID_LEN`] bytes, no control characters.
pub fn validate_group_id(id: &str) -> Result<(), SluiceError> {
    let bad = |reason: String| Err(SluiceError::InvalidGroupId { name: id.chars().take(60).collect(), reason });
    if id.is_empty() {
        return bad("the id is empty".into());
    }
    if id.len() > MAX_GROUP_ID_LEN {
        return bad(format!("the id is {} bytes long, the maximum is {MAX_GROUP_ID_LEN}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return bad(format!("control character {c:?} is not allowed"));
    }
    Ok(())
}

/// While this coordinator is the active one.
struct Active {
    epoch: u64,
    store: Arc<OffsetStore>,
    /// Groups whose membership changed, for the snapshot writer.
    dirty: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    groups: BTreeMap<String, Group>,
}

impl State {
    /// Ends every member's stream with a retriable error (members rejoin, at the successor);
    /// the members themselves stay, as the successor restores them.
    fn close_streams(&mut self, why: &str) {
        for g in self.groups.values_mut() {
            let ids: Vec<String> = g.members.keys().cloned().collect();
            for id in ids {
                g.close(&id, SluiceError::CoordinatorNotAvailable(why.to_string()));
            }
        }
    }
}

/// A group, created when missing.
fn group_entry<'a>(st: &'a mut State, id: &str) -> &'a mut Group {
    st.groups.entry(id.to_string()).or_insert_with(|| Group::new(id.to_string(), BTreeMap::new()))
}

/// Notes that a group's membership may have changed: the snapshot writer compares and writes.
fn mark(st: &State, id: &str) {
    if let Some(a) = &st.active {
        let _ = a.dirty.send(id.to_string());
    }
}

/// One coordinator process.
pub struct Coordinator {
    settings: GroupSettings,
    meta: Arc<dyn MetaStore>,
    view: watch::Receiver<Arc<ClusterView>>,
    /// Advertised address: names this coordinator in etcd.
    addr: String,
    /// The data path, in process: the offsets topic and log ends.
    router: Arc<Router>,
    state: Mutex<State>,
    next_conn: AtomicU64,
}

impl Coordinator {
    /// Starts campaigning for the role; serves once active. `router` is this process's data
    /// path (over the same metadata store), through which the offsets topic is read and written.
    pub fn start(
        settings: GroupSettings,
        meta: Arc<dyn MetaStore>,
        addr: String,
        router: Arc<Router>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let view = meta.view();
        let me = Arc::new(Self {
            settings,
            meta,
            view,
            addr,
            router,
            state: Mutex::new(State::default()),
            next_conn: AtomicU64::new(1),
        });
        let run = me.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = run.run() => {}
                _ = shutdown.wait() => {}
            }
        });
        me
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The epoch and store while this coordinator is active and can prove it.
    fn active(&self) -> Result<(u64, Arc<OffsetStore>), SluiceError> {
        let st = self.lock();
        let Some(a) = &st.active else {
            return Err(SluiceError::CoordinatorNotAvailable(format!("coordinator {} is on standby", self.addr)));
        };
        if !self.meta.session_valid() {
            return Err(SluiceError::CoordinatorNotAvailable(format!(
                "coordinator {} cannot confirm it still holds the role (metadata store unreachable)",
                self.addr
            )));
        }
        Ok((a.epoch, a.store.clone()))
    }

    /// Partition counts of every topic, from the current view.
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.view
            .borrow()
            .topics
            .iter()
            .filter(|(n, _)| n.as_str() != OFFSETS_TOPIC)
            .map(|(n, t)| (n.clone(), t.partitions.len() as u32))
            .collect()
    }

    /// The id of every topic in the current view, by name: committed offsets are kept only
    /// for these (see [`store::Committed::is_for`]).
    fn topic_ids(&self) -> HashMap<String, u64> {
        self.view.borrow().topics.iter().map(|(n, t)| (n.clone(), t.topic_id)).collect()
    }

    async fn run(self: Arc<Self>) {
        loop {
            tracing::debug!("campaigning for the coordinator role");
            let epoch = match self.meta.campaign_coordinator(&self.addr).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign for the coordinator role failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(epoch, addr = %self.addr, "coordinator role won; loading committed offsets");
            let Some((store, loaded)) = self.load(epoch).await else {
                tracing::warn!(epoch, "lost the coordinator role while loading");
                continue;
            };
            let store = Arc::new(store);
            let now = Instant::now();
            let groups = loaded.offsets.len().max(loaded.groups.len());
            let (dirty, dirty_rx) = mpsc::unbounded_channel();
            {
                let ids = self.topic_ids();
                let mut st = self.lock();
                let mut offsets = loaded.offsets;
                // Offsets of topics deleted (or re-created) meanwhile are not restored.
                for o in offsets.values_mut() {
                    o.retain(|tp, c| c.is_for(ids.get(&tp.0).copied()));
                }
                // Members of the previous coordinator keep what they held until they rejoin
                // or their sessions expire: nothing moves because the coordinator changed.
                for (id, snap) in &loaded.groups {
                    let o = offsets.remove(id).unwrap_or_default();
                    st.groups.insert(id.clone(), Group::restore(id.clone(), o, snap, now));
                }
                for (id, o) in offsets {
                    st.groups.insert(id.clone(), Group::new(id, o));
                }
                st.active = Some(Active { epoch, store: store.clone(), dirty });
            }
            tokio::spawn(self.clone().write_snapshots(store, dirty_rx, loaded.groups));
            tracing::info!(epoch, groups, "coordinator active");
            self.serve_role(epoch).await;
            tracing::warn!(epoch, "coordinator role lost; standing by");
            let mut st = self.lock();
            st.active = None;
            st.close_streams("the coordinator changed; rejoin");
            st.groups.clear();
        }
    }

    /// Opens the offsets topic and reads it, retrying while this coordinator holds the role.
    async fn load(&self, epoch: u64) -> Option<(OffsetStore, store::Loaded)> {
        loop {
            if !self.holds(epoch) {
                return None;
            }
            let s = &self.settings;
            let r = async {
                let store = OffsetStore::open(
                    self.router.clone(),
                    s.offsets_topic_partitions,
                    s.offsets_topic_replication_factor,
                )
                .await?;
                let offsets = store.load().await?;
                Ok::<_, SluiceError>((store, offsets))
            }
            .await;
            match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load committed offsets yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Gives the role up on a clean stop, so that a standby takes over at once; members are
    /// told to rejoin there.
    pub async fn resign(&self) {
        let epoch = {
            let mut st = self.lock();
            let Some(a) = st.active.take() else { return };
            st.close_streams("the coordinator is stopping; rejoin");
            a.epoch
        };
        match self.meta.resign_coordinator(epoch).await {
            Ok(()) => tracing::info!(epoch, "coordinator role given up"),
            Err(e) => {
                tracing::warn!(epoch, error = %e, "could not give the coordinator role up; it lapses with the lease")
            }
        }
    }

    fn holds(&self, epoch: u64) -> bool {
        self.view.borrow().coordinator.as_ref().is_some_and(|c| c.epoch == epoch && c.addr == self.addr)
    }

    /// Runs the group timers and follows topic changes until the role is lost.
    async fn serve_role(&self, epoch: u64) {
        let mut view = self.view.clone();
        let mut seen = 0i64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = view.changed() => if r.is_err() { return },
            }
            if !self.holds(epoch) {
                return;
            }
            let rev = self.view.borrow().revision;
            let view_changed = rev != seen;
            seen = rev;
            let now = Instant::now();
            let ids = view_changed.then(|| self.topic_ids());
            let mut st = self.lock();
            let mut counts = None;
            let mut changed = Vec::new();
            for g in st.groups.values_mut() {
                if let Some(ids) = &ids {
                    // A deleted or re-created topic's offsets go: a new topic of the same
                    // name is read from its start, not from where the old one was.
                    let before = g.offsets.len();
                    g.offsets.retain(|tp, c| c.is_for(ids.get(&tp.0).copied()));
                    if g.offsets.len() < before {
                        tracing::info!(group = %g.id, dropped = before - g.offsets.len(), "committed offsets of deleted topics dropped");
                    }
                }
                let expired = g.expire(now);
                if expired || view_changed {
                    let counts = counts.get_or_insert_with(|| self.partition_counts());
                    g.reconcile(counts, now);
                    changed.push(g.id.clone());
                }
            }
            st.groups.retain(|_, g| !g.members.is_empty() || !g.offsets.is_empty());
            for id in changed {
                mark(&st, &id);
            }
        }
    }

    /// Applies `f` to a group (created when missing) and reconciles it.
    fn with_group<R>(&self, id: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let counts = self.partition_counts();
        let mut st = self.lock();
        let g = group_entry(&mut st, id);
        let r = f(g);
        g.reconcile(&counts, Instant::now());
        mark(&st, id);
        r
    }

    /// Writes the membership of groups marked dirty whenever it differs from what was last
    /// written (an empty group's snapshot is removed), until the role is lost. Writes go one
    /// at a time, so the last one written is the newest state.
    async fn write_snapshots(
        self: Arc<Self>,
        store: Arc<OffsetStore>,
        mut dirty: mpsc::UnboundedReceiver<String>,
        loaded: HashMap<String, store::GroupSnapshot>,
    ) {
        let mut written: HashMap<String, store::GroupSnapshot> = loaded;
        let mut retry: BTreeSet<String> = BTreeSet::new();
        loop {
            let wait = if retry.is_empty() { Duration::from_secs(3600) } else { Duration::from_millis(500) };
            match tokio::time::timeout(wait, dirty.recv()).await {
                Ok(None) => return,
                Ok(Some(id)) => {
                    retry.insert(id);
                }
                Err(_) => {}
            }
            while let Ok(id) = dirty.try_recv() {
                retry.insert(id);
            }
            for id in std::mem::take(&mut retry) {
                let now = self.lock().groups.get(&id).map(|g| g.snapshot()).filter(|s| !s.members.is_empty());
                if now.as_ref() == written.get(&id) {
                    continue;
                }
                if self.active().is_err() {
                    return;
                }
                match store.write_snapshot(&id, now.as_ref()).await {
                    Ok(()) => match now {
                        Some(s) => {
                            written.insert(id, s);
                        }
                        None => {
                            written.remove(&id);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(group = %id, error = %e, "group snapshot not written; retrying");
                        retry.insert(id);
                    }
                }
            }
        }
    }

    /// Subscribed topics of a group's members, for describing it.
    fn topics_of(g: &Group) -> BTreeSet<String> {
        g.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .chain(g.offsets.keys().map(|tp| tp.0.clone()))
            .collect()
    }
}
