//! Cluster metadata: which partition nodes are alive, which topics exist, and where each
//! partition lives.
//!
//! [`MetaStore`] is the trait every service uses. [`etcd::EtcdMeta`] keeps the metadata in etcd
//! (nodes under leases, topics written with transactions, a watch feeding a local view);
//! [`embedded::EmbeddedMeta`] keeps it in process (persisted to a JSON file) for `sluice dev`.
//! Both publish a [`ClusterView`] through a `tokio::sync::watch` channel, so readers never poll.

pub mod embedded;
pub mod etcd;
mod model;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use model::{
    ClusterView, CoordinatorInfo, GatewayInfo, NodeInfo, PartitionAssignment, PartitionState, TopicMeta,
    default_min_insync, plan_config, plan_partitions, plan_topic,
};
use sluice_core::SluiceError;
use tokio::sync::watch;

/// Metadata failures.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The request itself is wrong (bad name, topic exists, ...): passed on as is.
    #[error(transparent)]
    Request(#[from] SluiceError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("metadata encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("metadata file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

impl From<MetaError> for SluiceError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Request(e) => e,
            MetaError::Etcd(e) => SluiceError::MetadataUnavailable(e.to_string()),
            other => SluiceError::Internal(other.to_string()),
        }
    }
}

/// A request to create a topic.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    pub config: BTreeMap<String, String>,
}

/// Limits applied when topics are created.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_partitions: u32,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self { max_partitions: 4096 }
    }
}

/// Cluster metadata, wherever it is kept.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync {
    /// Announces a live partition node; it stays registered while this process keeps it
    /// alive (a lease in etcd) and vanishes otherwise.
    async fn register_node(&self, node: NodeInfo) -> Result<(), MetaError>;
    /// Announces a live gateway, kept as long as a node is (see `register_node`).
    async fn register_gateway(&self, gateway: GatewayInfo) -> Result<(), MetaError>;
    /// Validates and creates a topic, assigning its partitions to live nodes atomically.
    async fn create_topic(&self, topic: NewTopic, limits: TopicLimits) -> Result<TopicMeta, MetaError>;
    /// Grows a topic to `count` partitions (see [`plan_partitions`]); their nodes open the new
    /// ones as they see them.
    async fn add_partitions(&self, name: &str, count: u32, limits: TopicLimits) -> Result<TopicMeta, MetaError>;
    /// Applies `changes` to a topic's configuration (see [`plan_config`]).
    async fn alter_topic_config(
        &self,
        name: &str,
        changes: &[sluice_core::topic::ConfigChange],
    ) -> Result<TopicMeta, MetaError>;
    /// Deletes a topic; its partitions are then removed by their nodes.
    async fn delete_topic(&self, name: &str) -> Result<(), MetaError>;
    /// The current view and every change to it.
    fn view(&self) -> watch::Receiver<Arc<ClusterView>>;
    /// Writes a partition's new leadership if neither the topic nor the partition's state
    /// changed since `topic` and `expected` were read (a compare-and-set of their revisions).
    /// Returns the new revision, or `None` when someone else changed it first. Once this
    /// returns, this store's own view includes the change.
    async fn update_partition(
        &self,
        topic: &TopicMeta,
        partition: u32,
        expected: &PartitionAssignment,
        next: PartitionState,
    ) -> Result<Option<i64>, MetaError>;
    /// Whether this process's registration is certainly still alive: its lease was renewed
    /// less than a TTL ago, and the view has caught up with its latest registration. A
    /// partition node that cannot say so may have been declared dead and replaced, and must
    /// not accept writes.
    fn session_valid(&self) -> bool;
    /// Campaigns for the group-coordinator role: returns once this process holds it, with its
    /// epoch (larger than any earlier holder's). The role is held under this process's lease
    /// and lost when it stops renewing it; [`MetaStore::session_valid`] then turns false and
    /// the view names another coordinator or none.
    async fn campaign_coordinator(&self, addr: &str) -> Result<u64, MetaError>;
    /// Gives the role up if this process still holds it at `epoch` (a clean shutdown), so a
    /// standby takes over at once instead of after the lease expires.
    async fn resign_coordinator(&self, epoch: u64) -> Result<(), MetaError>;
    /// Reserves `count` producer ids no one else was or will be given (a block, so the
    /// coordinator writes once per `count` producers); ids start at 1.
    async fn reserve_producer_ids(&self, count: u64) -> Result<std::ops::Range<i64>, MetaError>;
}
