//! The partition node: owns partition replicas on local storage, serves the internal
//! `PartitionNode` API (append, read, offsets) to gateways, and replicates: leaders push
//! their logs to followers, followers copy them.
//!
//! - [`handlers`]: one file per RPC; they validate, find the replica, and call the storage
//!   trait.
//! - [`replica`]: a replica's role, its followers' positions, in-sync set and high watermark.
//! - `manager`: follows the metadata view: takes up or gives up leadership, runs a fetcher
//!   per followed partition, elects a new leader from the in-sync set when one dies, shrinks
//!   and grows in-sync sets, moves leadership back to preferred replicas; deletes the data
//!   of topics that no longer exist.
//! - `fetcher`: the follower side of replication, with truncation by leader epoch.
//! - cleaning: retention and compaction run on every open partition in the background.
//!
//! Storage knows nothing of gRPC; this crate maps its errors to [`SluiceError`] in [`map_storage`].

mod fetcher;
pub mod handlers;
mod manager;
mod metrics;
mod peers;
pub mod replica;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use peers::Peers;
use replica::{Replica, Role};
use sluice_core::SluiceError;
use sluice_meta::{ClusterView, MetaStore, NodeInfo, PartitionAssignment, TopicMeta};
use sluice_proto::v1::PartitionRef;
use sluice_runtime::{ReplicationSettings, Settings, Shutdown};
use sluice_storage::producers::SeqError;
use sluice_storage::{AsyncLog, AsyncStore, LogStore, PartitionId, SegmentStore, StorageError, StoreOptions};
use tokio::sync::watch;

/// Maps a storage failure for `p` to what the client is told. The only such mapping.
pub fn map_storage(p: &PartitionId, e: StorageError) -> SluiceError {
    match e {
        StorageError::Batch(b) => b.into(),
        StorageError::OffsetOutOfRange { offset, start, end } => {
            SluiceError::OffsetOutOfRange { topic: p.topic.clone(), partition: p.partition, offset, start, end }
        }
        StorageError::Sequence(e) => {
            let (topic, partition) = (p.topic.clone(), p.partition);
            match e {
                SeqError::OutOfOrder { producer_id, expected, got } => {
                    SluiceError::OutOfOrderSequence { topic, partition, producer_id, expected, got }
                }
                SeqError::StaleEpoch { producer_id, epoch, current } => {
                    SluiceError::InvalidProducerEpoch { topic, partition, producer_id, epoch, current }
                }
                SeqError::OldDuplicate { producer_id, sequence } => {
                    SluiceError::DuplicateSequence { topic, partition, producer_id, sequence }
                }
            }
        }
        e @ (StorageError::DuplicateInRequest { .. }
        | StorageError::ControlBatch
        | StorageError::NotInTransaction { .. }) => SluiceError::InvalidRequest(e.to_string()),
        StorageError::MissingKey => {
            SluiceError::InvalidRequest(format!("topic '{}' is compacted: every record needs a key", p.topic))
        }
        e @ (StorageError::Sled(_)
        | StorageError::Io { .. }
        | StorageError::Sync(_)
        | StorageError::Damaged { .. }
        | StorageError::NotContiguous { .. }
        | StorageError::Task(_)) => {
            tracing::error!(partition = %p, error = %e, "storage failure");
            SluiceError::Storage(format!("partition {p}: {e}"))
        }
    }
}

/// A running partition node's shared state.
pub struct Node {
    pub id: u64,
    store: AsyncStore,
    view: watch::Receiver<Arc<ClusterView>>,
    /// Holds the lease that keeps this node registered, and writes leadership changes.
    meta: Arc<dyn MetaStore>,
    replicas: RwLock<HashMap<(u64, u32), Arc<Replica>>>,
    pub(crate) settings: ReplicationSettings,
    pub(crate) peers: Peers,
    pub(crate) control: manager::Control,
    gauges: std::sync::OnceLock<metrics::NodeGauges>,
    /// The transaction coordinator, asked to add a partition to a producer's transaction
    /// before its first transactional batch there is written.
    pub(crate) coordinator: sluice_runtime::node_api::CoordinatorLink,
    /// The newest coordinator epoch that wrote a transaction marker here: markers from older
    /// coordinators (one paused while a successor took over) are refused.
    pub(crate) coordinator_epoch: std::sync::atomic::AtomicU64,
}

/// A partition this node leads, with the metadata it was resolved against.
pub struct Served {
    pub replica: Arc<Replica>,
    pub topic: Arc<TopicMeta>,
    pub epoch: u64,
}

impl Served {
    pub fn log(&self) -> &AsyncLog {
        &self.replica.log
    }
}

impl Node {
    fn not_leader(&self, r: &PartitionRef) -> SluiceError {
        SluiceError::NotLeader { topic: r.topic.clone(), partition: r.partition, node: self.id }
    }

    /// The topic and assignment `r` names in the current view.
    pub(crate) fn resolve(&self, r: &PartitionRef) -> Result<(Arc<TopicMeta>, PartitionAssignment), SluiceError> {
        let view = self.view.borrow().clone();
        let topic = view
            .topics
            .get(&r.topic)
            .filter(|t| r.topic_id == 0 || t.topic_id == r.topic_id)
            .cloned()
            // The sender routed here from its own view, so a topic this node does not know
            // yet is metadata still propagating: retriable, not NOT_FOUND.
            .ok_or_else(|| self.not_leader(r))?;
        let a = topic.partitions.get(r.partition as usize).cloned().ok_or_else(|| SluiceError::UnknownPartition {
            topic: r.topic.clone(),
            partition: r.partition,
            count: topic.partitions.len() as u32,
        })?;
        Ok((topic, a))
    }

    /// The replica for `r` when this node leads it now (at `leader_epoch` when given): the
    /// metadata names it leader, it has taken up that leadership, and its own registration is
    /// certainly alive (a node paused past its lease may have been replaced without knowing).
    pub fn leader(&self, r: &PartitionRef, leader_epoch: Option<u64>) -> Result<Served, SluiceError> {
        let (topic, a) = self.resolve(r)?;
        if a.leader != self.id || leader_epoch.is_some_and(|e| e != a.leader_epoch) {
            return Err(self.not_leader(r));
        }
        let replica = self.existing(topic.topic_id, r.partition).ok_or_else(|| self.not_leader(r))?;
        if replica.role() != (Role::Leader { epoch: a.leader_epoch }) {
            return Err(self.not_leader(r));
        }
        if !self.meta.session_valid() {
            tracing::debug!(topic = %r.topic, partition = r.partition, "refusing to lead: metadata session not confirmed");
            return Err(self.not_leader(r));
        }
        Ok(Served { replica, topic, epoch: a.leader_epoch })
    }

    fn existing(&self, topic_id: u64, partition: u32) -> Option<Arc<Replica>> {
        self.replicas.read().unwrap_or_else(|p| p.into_inner()).get(&(topic_id, partition)).cloned()
    }

    /// The replica of partition `p` of `topic`, opening its log on first use.
    pub(crate) async fn replica(&self, topic: &TopicMeta, p: u32) -> Result<Arc<Replica>, SluiceError> {
        if let Some(r) = self.existing(topic.topic_id, p) {
            return Ok(r);
        }
        let id = PartitionId { topic: topic.name.clone(), topic_id: topic.topic_id, partition: p };
        let log = self.store.open(&id).await.map_err(|e| map_storage(&id, e))?;
        let mut map = self.replicas.write().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry((topic.topic_id, p)).or_insert_with(|| Arc::new(Replica::new(id, log, self.id))).clone())
    }

    pub(crate) fn all_replicas(&self) -> Vec<((u64, u32), Arc<Replica>)> {
        self.replicas.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub(crate) fn forget(&self, key: (u64, u32)) {
        self.replicas.write().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    pub(crate) fn snapshot(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub(crate) fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// Makes appends durable (group commit).
    pub async fn sync(&self) -> Result<(), SluiceError> {
        self.store.sync().await.map_err(|e| SluiceError::Storage(e.to_string()))
    }

    /// Makes appends and the stores' indexes durable: called before the process stops.
    pub async fn checkpoint(&self) -> Result<(), SluiceError> {
        self.store.checkpoint().await.map_err(|e| SluiceError::Storage(e.to_string()))
    }

    /// Deletes the data of partitions whose topic is gone (or was re-created under a new id).
    pub(crate) async fn reconcile(&self, view: &ClusterView) {
        if !view.loaded {
            return;
        }
        let live: HashMap<u64, usize> = view.topics.values().map(|t| (t.topic_id, t.partitions.len())).collect();
        let stored = match self.store.list().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list stored partitions");
                return;
            }
        };
        for id in stored {
            let keep = live.get(&id.topic_id).is_some_and(|n| (id.partition as usize) < *n);
            if !keep {
                self.forget((id.topic_id, id.partition));
                match self.store.remove(&id).await {
                    Ok(()) => {
                        tracing::info!(partition = %id, topic_id = id.topic_id, "deleted data of a removed topic")
                    }
                    Err(e) => tracing::warn!(partition = %id, error = %e, "cannot delete partition data"),
                }
            }
        }
    }

    async fn clean_all(&self) {
        let view = self.view.borrow().clone();
        let now = sluice_core::settings::now_ms();
        for ((topic_id, _), replica) in self.all_replicas() {
            let log = &replica.log;
            let Some(topic) = view.topics.get(&log.id().topic).filter(|t| t.topic_id == topic_id) else { continue };
            match log.clean(topic.config(), now).await {
                Ok(s) if s != Default::default() => tracing::info!(partition = %log.id(), ?s, "cleaned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(partition = %log.id(), error = %e, "cleaning failed"),
            }
        }
    }
}

/// Opens storage, registers the node in the metadata and starts its background tasks.
pub async fn start(
    settings: &Settings,
    meta: Arc<dyn MetaStore>,
    advertised: String,
    shutdown: Shutdown,
) -> anyhow::Result<Arc<Node>> {
    let dir = settings.data_dir.clone();
    std::fs::create_dir_all(&dir)?;
    // Opening replays sled's log: blocking work, kept off the async workers.
    let options = StoreOptions {
        cache_bytes: settings.storage.cache_bytes,
        flush_interval_ms: settings.storage.flush_interval_ms,
        segment_bytes: settings.storage.segment_bytes,
        preallocate: settings.storage.preallocate,
    };
    let (root, handle) = (dir.clone(), tokio::runtime::Handle::current());
    let store: Arc<dyn LogStore> = tokio::task::spawn_blocking(move || {
        let _runtime = handle.enter();
        SegmentStore::open_with(&root, options)
    })
    .await??;
    let store = AsyncStore::new(store);
    let node = Arc::new(Node {
        id: settings.node_id,
        store,
        view: meta.view(),
        meta: meta.clone(),
        replicas: RwLock::new(HashMap::new()),
        settings: settings.replication.clone(),
        peers: Peers::default(),
        control: Default::default(),
        gauges: std::sync::OnceLock::new(),
        coordinator: sluice_runtime::node_api::CoordinatorLink::new(meta.view()),
        coordinator_epoch: Default::default(),
    });
    let _ = node.gauges.set(metrics::register(&node));
    // Partitions this node led before it stopped: it gives that leadership up (or takes it
    // again under a new epoch) before serving them, since it may have lost writes a
    // follower still has.
    node.control.note_previous_leadership(&meta.view().borrow(), node.id);
    meta.register_node(NodeInfo { id: settings.node_id, addr: advertised }).await?;
    manager::spawn(node.clone(), shutdown.clone());

    let n = node.clone();
    let period = Duration::from_millis(settings.storage.retention_check_interval_ms.max(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => n.clean_all().await,
                _ = shutdown.wait() => break,
            }
        }
    });
    Ok(node)
}
