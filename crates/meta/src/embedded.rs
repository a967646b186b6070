//! In-process metadata for single-node mode: the same model as etcd, kept in memory and
//! written to a JSON file (atomically, by rename) so topics survive a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_core::SluiceError;
use tokio::sync::watch;

use crate::{
    ClusterView, MetaError, MetaStore, NewTopic, NodeInfo, PartitionAssignment, PartitionState, TopicLimits, TopicMeta,
    plan_topic,
};

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    topics: Vec<TopicMeta>,
}

/// Metadata held by the process itself.
pub struct EmbeddedMeta {
    file: Option<PathBuf>,
    // Serialises writers; readers use the watch channel.
    write: Mutex<()>,
    tx: watch::Sender<Arc<ClusterView>>,
}

impl EmbeddedMeta {
    /// Loads topics from `file` when it exists; `None` keeps everything in memory only.
    pub fn open(file: Option<PathBuf>) -> Result<Arc<Self>, MetaError> {
        let mut view = ClusterView { loaded: true, ..ClusterView::default() };
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => {
                    let p: Persisted = serde_json::from_slice(&bytes)?;
                    view.revision = 1;
                    view.topics = p
                        .topics
                        .into_iter()
                        .map(|mut t| {
                            t.revision = 1;
                            for a in &mut t.partitions {
                                if a.isr.is_empty() {
                                    a.isr = a.replicas.clone();
                                }
                            }
                            (t.name.clone(), Arc::new(t))
                        })
                        .collect();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(MetaError::File { path: f.display().to_string(), source }),
            }
        }
        let (tx, _) = watch::channel(Arc::new(view));
        Ok(Arc::new(Self { file, write: Mutex::new(()), tx }))
    }

    fn persist(&self, view: &ClusterView) -> Result<(), MetaError> {
        let Some(f) = &self.file else { return Ok(()) };
        let p = Persisted { topics: view.topics.values().map(|t| (**t).clone()).collect() };
        let tmp = f.with_extension("json.tmp");
        let io = |source| MetaError::File { path: f.display().to_string(), source };
        std::fs::write(&tmp, serde_json::to_vec_pretty(&p)?).map_err(io)?;
        std::fs::rename(&tmp, f).map_err(io)
    }

    /// Applies `f` to a copy of the view at the next revision; persists when it says so.
    fn update(&self, f: impl FnOnce(&mut ClusterView) -> Result<bool, MetaError>) -> Result<(), MetaError> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (**self.tx.borrow()).clone();
        next.revision += 1;
        if f(&mut next)? {
            self.persist(&next)?;
        }
        self.tx.send_replace(Arc::new(next));
        Ok(())
    }
}

#[async_trait::async_trait]
impl MetaStore for EmbeddedMeta {
    async fn register_node(&self, node: NodeInfo) -> Result<(), MetaError> {
        self.update(|v| {
            v.nodes.insert(node.id, node);
            Ok(false)
        })
    }

    async fn create_topic(&self, topic: NewTopic, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        let mut created = None;
        self.update(|v| {
            let mut t = plan_topic(v, &topic, limits, rand::random())?;
            t.revision = v.revision;
            v.topics.insert(t.name.clone(), Arc::new(t.clone()));
            created = Some(t);
            Ok(true)
        })?;
        created.ok_or_else(|| MetaError::Request(SluiceError::Internal("topic creation lost".into())))
    }

    async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.update(|v| match v.topics.remove(name) {
            Some(_) => Ok(true),
            None => Err(SluiceError::UnknownTopic(name.to_string()).into()),
        })
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.tx.subscribe()
    }

    async fn update_partition(
        &self,
        topic: &TopicMeta,
        partition: u32,
        expected: &PartitionAssignment,
        next: PartitionState,
    ) -> Result<Option<i64>, MetaError> {
        let mut written = None;
        self.update(|v| {
            let rev = v.revision;
            let Some(t) = v.topics.get_mut(&topic.name).filter(|t| t.revision == topic.revision) else {
                return Ok(false);
            };
            let current = t.partitions.get(partition as usize).map(|a| a.revision);
            if current != Some(expected.revision) {
                return Ok(false);
            }
            ClusterView::apply_state(Arc::make_mut(t), partition, &next, rev);
            written = Some(rev);
            Ok(true)
        })?;
        Ok(written)
    }

    fn session_valid(&self) -> bool {
        // The process is the whole cluster: nobody can declare it dead.
        true
    }

    async fn campaign_coordinator(&self, addr: &str) -> Result<u64, MetaError> {
        // Wall-clock milliseconds keep epochs increasing across restarts of the process.
        let epoch = sluice_core::settings::now_ms().max(1) as u64;
        self.update(|v| {
            v.coordinator = Some(crate::CoordinatorInfo { addr: addr.to_string(), epoch });
            Ok(false)
        })?;
        Ok(epoch)
    }

    async fn resign_coordinator(&self, epoch: u64) -> Result<(), MetaError> {
        self.update(|v| {
            if v.coordinator.as_ref().is_some_and(|c| c.epoch == epoch) {
                v.coordinator = None;
            }
            Ok(false)
        })
    }
}
