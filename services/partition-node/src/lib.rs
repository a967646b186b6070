//! The partition node: owns partition logs on local storage and serves the internal
//! `PartitionNode` API (append, read, offsets) to gateways.
//!
//! - [`handlers`]: one file per RPC; they validate, find the log, and call the storage trait.
//! - reconciliation: the node follows the metadata view, opens the partitions it leads and
//!   deletes the data of topics that no longer exist.
//! - cleaning: retention and compaction run on every open partition in the background.
//!
//! Storage knows nothing of gRPC; this crate maps its errors to [`SluiceError`] in [`map_storage`].

pub mod handlers;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_meta::{ClusterView, MetaStore, NodeInfo, TopicMeta};
use sluice_proto::v1::PartitionRef;
use sluice_runtime::{Settings, Shutdown};
use sluice_storage::{LogStore, PartitionId, PartitionLog, SledStore, StorageError};
use tokio::sync::watch;

/// Maps a storage failure for `p` to what the client is told. The only such mapping.
pub fn map_storage(p: &PartitionId, e: StorageError) -> SluiceError {
    match e {
        StorageError::Batch(b) => b.into(),
        StorageError::OffsetOutOfRange { offset, start, end } => {
            SluiceError::OffsetOutOfRange { topic: p.topic.clone(), partition: p.partition, offset, start, end }
        }
        StorageError::MissingKey => {
            SluiceError::InvalidRequest(format!("topic '{}' is compacted: every record needs a key", p.topic))
        }
        e @ (StorageError::Sled(_) | StorageError::Damaged { .. } | StorageError::NotContiguous { .. }) => {
            tracing::error!(partition = %p, error = %e, "storage failure");
            SluiceError::Storage(format!("partition {p}: {e}"))
        }
    }
}

/// A running partition node's shared state.
pub struct Node {
    pub id: u64,
    store: Arc<dyn LogStore>,
    view: watch::Receiver<Arc<ClusterView>>,
    /// Held for the node's lifetime: dropping the store would stop the metadata watch and
    /// the lease renewal that keeps this node registered.
    _meta: Arc<dyn MetaStore>,
    logs: RwLock<HashMap<(u64, u32), Arc<dyn PartitionLog>>>,
}

/// A partition this node serves, with the metadata it was resolved against.
pub struct Served {
    pub log: Arc<dyn PartitionLog>,
    pub topic: Arc<TopicMeta>,
}

impl Node {
    /// The log for `r` when this node leads it, opening it on first use.
    pub fn partition(&self, r: &PartitionRef, leader_epoch: Option<u64>) -> Result<Served, SluiceError> {
        let view = self.view.borrow().clone();
        let topic = view
            .topics
            .get(&r.topic)
            .filter(|t| r.topic_id == 0 || t.topic_id == r.topic_id)
            .cloned()
            // The gateway routed here from its own view, so a topic this node does not know
            // yet is metadata still propagating: retriable, not NOT_FOUND.
            .ok_or_else(|| SluiceError::NotLeader { topic: r.topic.clone(), partition: r.partition, node: self.id })?;
        let a = topic.partitions.get(r.partition as usize).ok_or_else(|| SluiceError::UnknownPartition {
            topic: r.topic.clone(),
            partition: r.partition,
            count: topic.partitions.len() as u32,
        })?;
        if a.leader != self.id || leader_epoch.is_some_and(|e| e != a.leader_epoch) {
            return Err(SluiceError::NotLeader { topic: r.topic.clone(), partition: r.partition, node: self.id });
        }
        let key = (topic.topic_id, r.partition);
        if let Some(log) = self.logs.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Served { log: log.clone(), topic });
        }
        let id = PartitionId { topic: topic.name.clone(), topic_id: topic.topic_id, partition: r.partition };
        let log = self.store.open(&id).map_err(|e| map_storage(&id, e))?;
        self.logs.write().unwrap_or_else(|p| p.into_inner()).insert(key, log.clone());
        Ok(Served { log, topic })
    }

    /// Makes appends durable (group commit).
    pub async fn sync(&self) -> Result<(), SluiceError> {
        self.store.sync().await.map_err(|e| SluiceError::Storage(e.to_string()))
    }

    /// Deletes the data of partitions whose topic is gone (or was re-created under a new id).
    fn reconcile(&self, view: &ClusterView) {
        if !view.loaded {
            return;
        }
        let live: HashMap<u64, &TopicMeta> = view.topics.values().map(|t| (t.topic_id, &**t)).collect();
        let stored = match self.store.list() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list stored partitions");
                return;
            }
        };
        for id in stored {
            let keep = live.get(&id.topic_id).is_some_and(|t| (id.partition as usize) < t.partitions.len());
            if !keep {
                self.logs.write().unwrap_or_else(|p| p.into_inner()).remove(&(id.topic_id, id.partition));
                match self.store.remove(&id) {
                    Ok(()) => {
                        tracing::info!(partition = %id, topic_id = id.topic_id, "deleted data of a removed topic")
                    }
                    Err(e) => tracing::warn!(partition = %id, error = %e, "cannot delete partition data"),
                }
            }
        }
    }

    fn clean_all(&self) {
        let view = self.view.borrow().clone();
        let logs: Vec<_> =
            self.logs.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        let now = sluice_core::settings::now_ms();
        for ((topic_id, _), log) in logs {
            let Some(topic) = view.topics.get(&log.id().topic).filter(|t| t.topic_id == topic_id) else { continue };
            match log.clean(&topic.config(), now) {
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
    let store: Arc<dyn LogStore> =
        SledStore::open_with(&dir.join("sled"), settings.storage.cache_bytes, settings.storage.flush_interval_ms)?;
    let node = Arc::new(Node {
        id: settings.node_id,
        store,
        view: meta.view(),
        _meta: meta.clone(),
        logs: RwLock::new(HashMap::new()),
    });
    meta.register_node(NodeInfo { id: settings.node_id, addr: advertised }).await?;

    let mut view_rx = meta.view();
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let v = view_rx.borrow_and_update().clone();
            n.reconcile(&v);
            tokio::select! {
                r = view_rx.changed() => if r.is_err() { break },
                _ = stop.wait() => break,
            }
        }
    });
    let n = node.clone();
    let period = Duration::from_millis(settings.storage.retention_check_interval_ms.max(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let n = n.clone();
                    let _ = tokio::task::spawn_blocking(move || n.clean_all()).await;
                }
                _ = shutdown.wait() => break,
            }
        }
    });
    Ok(node)
}
