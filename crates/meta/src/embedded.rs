//! In-process metadata for single-node mode: the same model as etcd, kept in memory and
//! written to a JSON file (atomically, by rename) so topics survive a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_core::SluiceError;
use tokio::sync::watch;

use crate::{ClusterView, MetaError, MetaStore, NewTopic, NodeInfo, TopicLimits, TopicMeta, plan_topic};

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
                    view.topics = p.topics.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect();
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

    fn update(&self, f: impl FnOnce(&mut ClusterView) -> Result<bool, MetaError>) -> Result<(), MetaError> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (**self.tx.borrow()).clone();
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
            let t = plan_topic(v, &topic, limits, rand::random())?;
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
}
