//! In-process metadata: the same model as etcd, kept in memory and written to a JSON file
//! (atomically, by rename) so topics survive a restart. `sluice dev` uses it directly; an
//! in-process test cluster gives each of its services an [`EmbeddedSession`], a lease of its
//! own that the test can expire and revive, as etcd expires the lease of a process that
//! stopped renewing it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_core::SluiceError;
use tokio::sync::watch;

use crate::{
    ClusterView, GatewayInfo, MetaError, MetaStore, NewTopic, NodeInfo, PartitionAssignment, PartitionState,
    TopicLimits, TopicMeta, plan_config, plan_partitions, plan_topic,
};
use sluice_core::topic::ConfigChange;

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    topics: Vec<TopicMeta>,
    /// The next producer id not yet reserved (0 in files written before it existed).
    #[serde(default)]
    next_producer_id: i64,
}

/// Metadata held by the process itself.
pub struct EmbeddedMeta {
    file: Option<PathBuf>,
    // Serialises writers; readers use the watch channel.
    write: Mutex<()>,
    tx: watch::Sender<Arc<ClusterView>>,
    leases: Mutex<Leases>,
    /// The next producer id not yet reserved; changed under `write`.
    next_producer_id: std::sync::atomic::AtomicI64,
}

/// What each lease holds, as etcd would attach keys to a lease. Lease 0 is the process's own
/// (the store used directly), which never expires.
#[derive(Default)]
struct Leases {
    next: u64,
    expired: HashSet<u64>,
    nodes: HashMap<u64, Vec<NodeInfo>>,
    gateways: HashMap<u64, Vec<GatewayInfo>>,
    /// The lease holding the coordinator role, and its epoch.
    coordinator: Option<(u64, u64)>,
}

impl EmbeddedMeta {
    /// Loads topics from `file` when it exists; `None` keeps everything in memory only.
    pub fn open(file: Option<PathBuf>) -> Result<Arc<Self>, MetaError> {
        let mut view = ClusterView { loaded: true, ..ClusterView::default() };
        let mut next_producer_id = 1;
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => {
                    let p: Persisted = serde_json::from_slice(&bytes)?;
                    next_producer_id = p.next_producer_id.max(1);
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
        Ok(Arc::new(Self {
            file,
            write: Mutex::new(()),
            tx,
            leases: Mutex::default(),
            next_producer_id: std::sync::atomic::AtomicI64::new(next_producer_id),
        }))
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new lease, for one service of an in-process cluster.
    pub fn session(self: &Arc<Self>) -> Arc<EmbeddedSession> {
        let lease = {
            let mut l = self.leases();
            l.next += 1;
            l.next
        };
        Arc::new(EmbeddedSession { meta: self.clone(), lease })
    }

    /// Expires `lease`: what it registered leaves the view (the node is no longer alive, the
    /// coordinator role is free) and its holder can no longer prove its session.
    pub fn expire(&self, lease: u64) {
        let (nodes, gateways, held) = {
            let mut l = self.leases();
            l.expired.insert(lease);
            let held = l.coordinator.filter(|(holder, _)| *holder == lease).map(|(_, epoch)| epoch);
            if held.is_some() {
                l.coordinator = None;
            }
            (
                l.nodes.get(&lease).cloned().unwrap_or_default(),
                l.gateways.get(&lease).cloned().unwrap_or_default(),
                held,
            )
        };
        let _ = self.update(|v| {
            for n in &nodes {
                v.nodes.remove(&n.id);
            }
            for g in &gateways {
                v.gateways.remove(&g.name);
            }
            // Only this lease's own tenure: a successor may already have taken the role.
            if held.is_some() && v.coordinator.as_ref().map(|c| c.epoch) == held {
                v.coordinator = None;
            }
            Ok(false)
        });
    }

    /// Renews an expired lease: its holder's session is valid again and the nodes it
    /// registered are back (a process that was paused and kept its registration going).
    pub fn revive(&self, lease: u64) {
        let (nodes, gateways) = {
            let mut l = self.leases();
            l.expired.remove(&lease);
            (l.nodes.get(&lease).cloned().unwrap_or_default(), l.gateways.get(&lease).cloned().unwrap_or_default())
        };
        let _ = self.update(|v| {
            for n in nodes {
                v.nodes.insert(n.id, n);
            }
            for g in gateways {
                v.gateways.insert(g.name.clone(), g);
            }
            Ok(false)
        });
    }

    fn register_under(&self, lease: u64, node: NodeInfo) -> Result<(), MetaError> {
        {
            let mut l = self.leases();
            let held = l.nodes.entry(lease).or_default();
            held.retain(|n| n.id != node.id);
            held.push(node.clone());
        }
        self.update(|v| {
            v.nodes.insert(node.id, node);
            Ok(false)
        })
    }

    fn register_gateway_under(&self, lease: u64, gateway: GatewayInfo) -> Result<(), MetaError> {
        {
            let mut l = self.leases();
            let held = l.gateways.entry(lease).or_default();
            held.retain(|g| g.name != gateway.name);
            held.push(gateway.clone());
        }
        self.update(|v| {
            v.gateways.insert(gateway.name.clone(), gateway);
            Ok(false)
        })
    }

    /// Waits until no lease holds the coordinator role, then takes it under `lease`.
    async fn campaign_under(&self, lease: u64, addr: &str) -> Result<u64, MetaError> {
        let mut view = self.tx.subscribe();
        loop {
            let taken = {
                let mut l = self.leases();
                if l.coordinator.is_none() && !l.expired.contains(&lease) {
                    // Wall-clock milliseconds keep epochs increasing across restarts; never
                    // below an earlier epoch of this process.
                    let prev = self.tx.borrow().coordinator.as_ref().map_or(0, |c| c.epoch);
                    let epoch = (sluice_core::settings::now_ms().max(1) as u64).max(prev + 1);
                    l.coordinator = Some((lease, epoch));
                    Some(epoch)
                } else {
                    None
                }
            };
            if let Some(epoch) = taken {
                self.update(|v| {
                    v.coordinator = Some(crate::CoordinatorInfo { addr: addr.to_string(), epoch });
                    Ok(false)
                })?;
                return Ok(epoch);
            }
            if view.changed().await.is_err() {
                return Err(MetaError::Request(SluiceError::MetadataUnavailable("metadata store closed".into())));
            }
        }
    }

    fn resign_under(&self, lease: u64, epoch: u64) -> Result<(), MetaError> {
        {
            let mut l = self.leases();
            if l.coordinator.is_some_and(|(holder, _)| holder == lease) {
                l.coordinator = None;
            }
        }
        self.update(|v| {
            if v.coordinator.as_ref().is_some_and(|c| c.epoch == epoch) {
                v.coordinator = None;
            }
            Ok(false)
        })
    }

    fn persist(&self, view: &ClusterView) -> Result<(), MetaError> {
        let Some(f) = &self.file else { return Ok(()) };
        let p = Persisted {
            topics: view.topics.values().map(|t| (**t).clone()).collect(),
            next_producer_id: self.next_producer_id.load(std::sync::atomic::Ordering::SeqCst),
        };
        let tmp = f.with_extension("json.tmp");
        let io = |source| MetaError::File { path: f.display().to_string(), source };
        std::fs::write(&tmp, serde_json::to_vec_pretty(&p)?).map_err(io)?;
        std::fs::rename(&tmp, f).map_err(io)
    }

    fn reserve_producer_ids_now(&self, count: u64) -> Result<std::ops::Range<i64>, MetaError> {
        use std::sync::atomic::Ordering;
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.next_producer_id.load(Ordering::SeqCst);
        let end = next
            .checked_add(count as i64)
            .ok_or_else(|| MetaError::Request(SluiceError::Internal("producer ids are exhausted".into())))?;
        self.next_producer_id.store(end, Ordering::SeqCst);
        let view = self.tx.borrow().clone();
        if let Err(e) = self.persist(&view) {
            self.next_producer_id.store(next, Ordering::SeqCst);
            return Err(e);
        }
        Ok(next..end)
    }

    /// Applies `f` to a copy of the view at the next revision; persists when it says so.
    /// Writes topic `name` as `plan` makes it; a state change planned against the topic as it
    /// was is refused afterwards, as in etcd (the revision moves).
    fn rewrite_topic(
        &self,
        name: &str,
        plan: impl FnOnce(&ClusterView, &TopicMeta) -> Result<TopicMeta, SluiceError>,
    ) -> Result<TopicMeta, MetaError> {
        let mut written = None;
        self.update(|v| {
            let topic = v.topics.get(name).ok_or_else(|| SluiceError::UnknownTopic(name.to_string()))?;
            let mut t = plan(v, topic)?;
            t.revision = v.revision;
            v.topics.insert(name.to_string(), Arc::new(t.clone()));
            written = Some(t);
            Ok(true)
        })?;
        written.ok_or_else(|| MetaError::Request(SluiceError::Internal("topic change lost".into())))
    }

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
        self.register_under(0, node)
    }

    async fn register_gateway(&self, gateway: GatewayInfo) -> Result<(), MetaError> {
        self.register_gateway_under(0, gateway)
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

    async fn add_partitions(&self, name: &str, count: u32, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        self.rewrite_topic(name, |v, topic| plan_partitions(v, topic, count, limits, rand::random()))
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<TopicMeta, MetaError> {
        self.rewrite_topic(name, |_, topic| plan_config(topic, changes))
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
        self.campaign_under(0, addr).await
    }

    async fn resign_coordinator(&self, epoch: u64) -> Result<(), MetaError> {
        self.resign_under(0, epoch)
    }

    async fn reserve_producer_ids(&self, count: u64) -> Result<std::ops::Range<i64>, MetaError> {
        self.reserve_producer_ids_now(count)
    }
}

/// One service's view of an [`EmbeddedMeta`], under a lease of its own.
pub struct EmbeddedSession {
    meta: Arc<EmbeddedMeta>,
    lease: u64,
}

impl EmbeddedSession {
    pub fn lease(&self) -> u64 {
        self.lease
    }
}

#[async_trait::async_trait]
impl MetaStore for EmbeddedSession {
    async fn register_node(&self, node: NodeInfo) -> Result<(), MetaError> {
        self.meta.register_under(self.lease, node)
    }

    async fn register_gateway(&self, gateway: GatewayInfo) -> Result<(), MetaError> {
        self.meta.register_gateway_under(self.lease, gateway)
    }

    async fn create_topic(&self, topic: NewTopic, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        self.meta.create_topic(topic, limits).await
    }

    async fn add_partitions(&self, name: &str, count: u32, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        self.meta.add_partitions(name, count, limits).await
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<TopicMeta, MetaError> {
        self.meta.alter_topic_config(name, changes).await
    }

    async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.meta.delete_topic(name).await
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.meta.view()
    }

    async fn update_partition(
        &self,
        topic: &TopicMeta,
        partition: u32,
        expected: &PartitionAssignment,
        next: PartitionState,
    ) -> Result<Option<i64>, MetaError> {
        if !self.session_valid() {
            return Err(MetaError::Request(SluiceError::MetadataUnavailable(format!("lease {} expired", self.lease))));
        }
        self.meta.update_partition(topic, partition, expected, next).await
    }

    fn session_valid(&self) -> bool {
        !self.meta.leases().expired.contains(&self.lease)
    }

    async fn campaign_coordinator(&self, addr: &str) -> Result<u64, MetaError> {
        self.meta.campaign_under(self.lease, addr).await
    }

    async fn resign_coordinator(&self, epoch: u64) -> Result<(), MetaError> {
        self.meta.resign_under(self.lease, epoch)
    }

    async fn reserve_producer_ids(&self, count: u64) -> Result<std::ops::Range<i64>, MetaError> {
        self.meta.reserve_producer_ids_now(count)
    }
}
