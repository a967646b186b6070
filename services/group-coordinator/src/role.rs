//! The coordinator role: campaigning in etcd, loading committed offsets and memberships from
//! the offsets topic when the role is won, following topic changes while active, writing
//! membership snapshots, and giving the role up on a clean stop.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Coordinator;
use crate::group::Group;
use crate::registry::Host;
use crate::store::{self, GroupSnapshot, LazyTopic, OffsetStore};
use crate::txn::{self, TxnMeta};

/// Every transactional id's state, as loaded.
type Txns = HashMap<String, TxnMeta>;

/// While this coordinator is the active one.
pub(crate) struct Active {
    pub epoch: u64,
    pub store: Arc<OffsetStore>,
    /// `__transaction_state` (created by the first transactional id).
    pub txn_topic: Arc<LazyTopic>,
    /// Groups whose membership changed, for the snapshot writer.
    pub dirty: mpsc::UnboundedSender<String>,
}

impl Coordinator {
    pub(crate) async fn run(self: Arc<Self>) {
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
            let Some((store, loaded, txn_topic, txns)) = self.load(epoch).await else {
                tracing::warn!(epoch, "lost the coordinator role while loading");
                continue;
            };
            let (store, txn_topic) = (Arc::new(store), Arc::new(txn_topic));
            let transactions = txns.len();
            let now = Instant::now();
            let groups = loaded.offsets.len().max(loaded.groups.len());
            let (dirty, dirty_rx) = mpsc::unbounded_channel();
            {
                let ids = self.topic_ids();
                let mut offsets = loaded.offsets;
                // Offsets of topics deleted (or re-created) meanwhile are not restored.
                for o in offsets.values_mut() {
                    o.retain(|tp, c| c.is_for(ids.get(&tp.0).copied()));
                }
                // Members of the previous coordinator keep what they held until they rejoin
                // or their sessions expire: nothing moves because the coordinator changed.
                let mut groups = Vec::new();
                for (id, snap) in &loaded.groups {
                    let o = offsets.remove(id).unwrap_or_default();
                    groups.push(Group::restore(id.clone(), o, snap, now));
                }
                groups.extend(offsets.into_iter().map(|(id, o)| Group::new(id, o)));
                self.groups.open(&self, groups);
                self.txns.load(txns);
                *self.active_slot() = Some(Active { epoch, store: store.clone(), txn_topic, dirty });
            }
            tokio::spawn(self.clone().write_snapshots(store, dirty_rx, loaded.groups));
            tokio::spawn(self.clone().run_transactions(epoch));
            tracing::info!(epoch, groups, transactions, "coordinator active");
            self.follow_topics(epoch).await;
            tracing::warn!(epoch, "coordinator role lost; standing by");
            *self.active_slot() = None;
            self.close_streams("the coordinator changed; rejoin");
            self.groups.clear();
            self.txns.clear();
        }
    }

    /// Opens the offsets and transaction state topics and reads them, retrying while this
    /// coordinator holds the role.
    async fn load(self: &Arc<Self>, epoch: u64) -> Option<(OffsetStore, store::Loaded, LazyTopic, Txns)> {
        loop {
            if !self.holds(epoch) {
                return None;
            }
            let s = &self.settings;
            let holds_role = || -> store::RoleCheck {
                let me = Arc::downgrade(self);
                Arc::new(move || me.upgrade().is_some_and(|c| c.active().is_ok()))
            };
            let r = async {
                let (parts, rf) = (s.offsets_topic_partitions, s.offsets_topic_replication_factor);
                let store = OffsetStore::open(self.router.clone(), parts, rf, holds_role()).await?;
                let offsets = store.load().await?;
                let router = self.router.clone();
                let topic = LazyTopic::open(router, txn::TRANSACTION_STATE_TOPIC, parts, rf, holds_role()).await?;
                let txns = txn::load(&topic).await?;
                Ok::<_, SluiceError>((store, offsets, topic, txns))
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

    /// Ends every member's stream with a retriable error (members rejoin, at the successor);
    /// the members themselves stay, as the successor restores them.
    fn close_streams(&self, why: &str) {
        for cell in self.groups.cells() {
            let mut slot = cell.lock();
            let ids: Vec<String> = slot.group.members.keys().cloned().collect();
            for id in ids {
                slot.group.close(&id, SluiceError::CoordinatorNotAvailable(why.to_string()));
            }
            slot.group.classic.close(|| SluiceError::CoordinatorNotAvailable(why.to_string()));
        }
    }

    /// Gives the role up on a clean stop, so that a standby takes over at once; members are
    /// told to rejoin there.
    pub async fn resign(&self) {
        let Some(a) = self.active_slot().take() else { return };
        self.close_streams("the coordinator is stopping; rejoin");
        match self.meta.resign_coordinator(a.epoch).await {
            Ok(()) => tracing::info!(epoch = a.epoch, "coordinator role given up"),
            Err(e) => {
                tracing::warn!(epoch = a.epoch, error = %e, "could not give the coordinator role up; it lapses with the lease")
            }
        }
    }

    fn holds(&self, epoch: u64) -> bool {
        self.view.borrow().coordinator.as_ref().is_some_and(|c| c.epoch == epoch && c.addr == self.addr)
    }

    /// Follows the metadata until the role is lost: partition counts changed or topics
    /// deleted reach every group (each under its own lock). Member deadlines are the groups'
    /// own timers' business (see [`crate::registry`]).
    async fn follow_topics(self: &Arc<Self>, epoch: u64) {
        let mut view = self.view.clone();
        let mut seen = i64::MIN;
        loop {
            if !self.holds(epoch) {
                return;
            }
            let rev = view.borrow_and_update().revision;
            if rev != seen {
                seen = rev;
                self.topics_changed();
            }
            if view.changed().await.is_err() {
                return;
            }
        }
    }

    fn topics_changed(self: &Arc<Self>) {
        let ids = self.topic_ids();
        let counts = self.partition_counts();
        let now = Instant::now();
        for id in self.groups.ids() {
            let Some(cell) = self.groups.get(&id) else { continue };
            {
                let mut slot = cell.lock();
                let g = &mut slot.group;
                // A deleted or re-created topic's offsets go: a new topic of the same name is
                // read from its start, not from where the old one was.
                let before = g.offsets.len();
                g.offsets.retain(|tp, c| c.is_for(ids.get(&tp.0).copied()));
                if g.offsets.len() < before {
                    tracing::info!(group = %g.id, dropped = before - g.offsets.len(), "committed offsets of deleted topics dropped");
                }
                g.reconcile(&counts, now);
            }
            self.mark(&id);
            self.groups.drop_if_idle(&id);
        }
    }

    /// Writes the membership of groups marked dirty whenever it differs from what was last
    /// written (an empty group's snapshot is removed), until the role is lost. Writes go one
    /// at a time, so the last one written is the newest state.
    async fn write_snapshots(
        self: Arc<Self>,
        store: Arc<OffsetStore>,
        mut dirty: mpsc::UnboundedReceiver<String>,
        loaded: HashMap<String, GroupSnapshot>,
    ) {
        let mut written: HashMap<String, GroupSnapshot> = loaded;
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
                let now = self.groups.read(&id, |g| g.snapshot()).filter(|s| !s.members.is_empty());
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
}
