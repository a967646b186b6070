//! The gateway: the stateless entry point of a Sluice cluster.
//!
//! It serves `sluice.v1.Admin` and `sluice.v1.Broker`. Routing comes from the metadata view
//! (followed through a watch, never polled); partition data lives on the nodes, reached through
//! [`pool::NodePool`]. Any number of gateways can run side by side.
//!
//! - [`handlers`]: one file per RPC (`topic/create.rs`, `produce.rs`, `fetch.rs`, ...).
//! - [`route`]: resolving topics, partitions and their leaders from the view.

pub mod handlers;
pub mod metrics;
pub mod pool;
pub mod route;

use std::sync::Arc;

use sluice_meta::{ClusterView, MetaStore, TopicLimits};
use sluice_runtime::GatewaySettings;
use tokio::sync::watch;

/// Shared state of one gateway process.
pub struct Gateway {
    pub meta: Arc<dyn MetaStore>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub pool: pool::NodePool,
    pub settings: GatewaySettings,
    pub metrics: metrics::GatewayMetrics,
}

impl Gateway {
    pub fn new(meta: Arc<dyn MetaStore>, settings: GatewaySettings) -> Arc<Self> {
        let view = meta.view();
        Arc::new(Self { meta, view, pool: pool::NodePool::default(), settings, metrics: Default::default() })
    }

    pub fn limits(&self) -> TopicLimits {
        TopicLimits { max_partitions: self.settings.max_partitions }
    }

    /// The current metadata view.
    pub fn snapshot(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }
}
