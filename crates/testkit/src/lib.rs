//! Test-only support. Two ways to run a cluster, from the same builder:
//!
//! - real processes with real etcd (`Cluster::builder()...start(dir)`): the launcher of
//!   `sluice cluster up` (`sluice-launcher`, product code), so what the fault tests run is
//!   what users run;
//! - in process (`Cluster::builder()...in_process().start()`): every partition node, gateway
//!   and coordinator in the test's own process, on loopback ports, over embedded metadata
//!   whose leases the test expires and revives at will. Starts in milliseconds, for the tests
//!   that need several nodes but no process to kill.
//!
//! Product crates never depend on this crate.

pub use sluice_launcher::LauncherError as TestkitError;
pub use sluice_launcher::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_gateway::handlers::GatewayService;
use sluice_group_coordinator::Coordinator;
use sluice_meta::MetaStore;
use sluice_meta::embedded::{EmbeddedMeta, EmbeddedSession};
use sluice_partition_node::Node;
use sluice_partition_node::handlers::{LocalNode, NodeService};
use sluice_router::Router;
use sluice_runtime::{Settings, Shutdown};

/// Why an in-process cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("settings: {0}")]
    Settings(String),
    #[error("{what}: {why}")]
    Start { what: String, why: String },
    #[error("the cluster did not come up within {0:?}: {1}")]
    NotReady(Duration, String),
}

/// Adds the in-process mode to the launcher's builder.
pub trait InProcessExt {
    fn in_process(self) -> InProcessBuilder;
}

impl InProcessExt for ClusterBuilder {
    fn in_process(self) -> InProcessBuilder {
        InProcessBuilder { spec: self }
    }
}

pub struct InProcessBuilder {
    spec: ClusterBuilder,
}

/// One service of an in-process cluster: its lease and its stop signal.
struct Service {
    session: Arc<EmbeddedSession>,
    shutdown: Shutdown,
    addr: String,
}

impl Service {
    fn meta(&self) -> Arc<dyn MetaStore> {
        self.session.clone()
    }
}

/// A cluster living in this process. Dropping it stops every service.
pub struct InProcessCluster {
    pub meta: Arc<EmbeddedMeta>,
    nodes: BTreeMap<u64, (Service, Arc<Node>)>,
    gateways: Vec<Service>,
    coordinators: Vec<(Service, Arc<Coordinator>)>,
    _dir: tempfile::TempDir,
}

fn start_err(what: impl Into<String>, why: impl std::fmt::Display) -> InProcessError {
    InProcessError::Start { what: what.into(), why: why.to_string() }
}

/// What every service of the cluster starts with: its own lease, stop signal and port.
async fn service(meta: &Arc<EmbeddedMeta>, what: String) -> Result<(Service, tokio::net::TcpListener), InProcessError> {
    let (listener, addr) = sluice_runtime::bind("127.0.0.1:0").await.map_err(|e| start_err(what, e))?;
    Ok((Service { session: meta.session(), shutdown: Shutdown::new(), addr: addr.to_string() }, listener))
}

/// Serves `router` on the service's port until the service is stopped.
fn serve(s: &Service, listener: tokio::net::TcpListener, router: tonic::transport::server::Router) {
    tokio::spawn(sluice_runtime::serve(router, listener, s.shutdown.clone()));
}

impl InProcessBuilder {
    /// Starts the services and waits until every node is registered and a coordinator is
    /// active.
    pub async fn start(self) -> Result<InProcessCluster, InProcessError> {
        let spec = self.spec;
        let dir = tempfile::Builder::new().prefix("sluice-inproc-").tempdir().map_err(|e| start_err("temp dir", e))?;
        let base: Settings = sluice_core::settings::load_with_env(None, spec.env.clone())
            .map_err(|e| InProcessError::Settings(e.to_string()))?;
        let meta = EmbeddedMeta::open(None).map_err(|e| InProcessError::Settings(e.to_string()))?;
        let mut nodes = BTreeMap::new();
        for id in 1..=spec.nodes as u64 {
            let mut settings = base.clone();
            settings.node_id = id;
            settings.data_dir = dir.path().join(format!("node-{id}"));
            let (s, listener) = service(&meta, format!("node {id}")).await?;
            let node = sluice_partition_node::start(&settings, s.meta(), s.addr.clone(), s.shutdown.clone())
                .await
                .map_err(|e| start_err(format!("node {id}"), e))?;
            serve(&s, listener, sluice_runtime::server().add_service(NodeService::new(node.clone()).into_server()));
            nodes.insert(id, (s, node));
        }
        let router_for = |s: &Service| {
            let r = Router::new(s.meta(), base.gateway.clone());
            // Nodes of this process are called directly, as in `sluice dev`.
            for (id, (_, node)) in &nodes {
                r.pool.add_local(*id, Arc::new(LocalNode(node.clone())));
            }
            r
        };
        let mut coordinators = Vec::new();
        for i in 0..spec.coordinators {
            let (s, listener) = service(&meta, format!("coordinator {i}")).await?;
            let c =
                Coordinator::start(base.groups.clone(), s.meta(), s.addr.clone(), router_for(&s), s.shutdown.clone());
            serve(
                &s,
                listener,
                sluice_runtime::server().add_routes(sluice_group_coordinator::handlers::routes(c.clone())),
            );
            coordinators.push((s, c));
        }
        let mut gateways = Vec::new();
        for i in 0..spec.gateways {
            let (s, listener) = service(&meta, format!("gateway {i}")).await?;
            let gateway = GatewayService::new(router_for(&s));
            serve(&s, listener, sluice_runtime::server().add_routes(gateway.routes(s.shutdown.clone())));
            gateways.push(s);
        }
        let c = InProcessCluster { meta, nodes, gateways, coordinators, _dir: dir };
        c.wait_ready(Duration::from_secs(20)).await?;
        Ok(c)
    }
}

impl InProcessCluster {
    async fn wait_ready(&self, limit: Duration) -> Result<(), InProcessError> {
        let mut view = self.meta.view();
        let ready = async {
            loop {
                {
                    let v = view.borrow_and_update();
                    let nodes = self.nodes.keys().all(|id| v.nodes.contains_key(id));
                    if nodes && (self.coordinators.is_empty() || v.coordinator.is_some()) {
                        return;
                    }
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, ready).await.map_err(|_| {
            let v = self.meta.view().borrow().clone();
            InProcessError::NotReady(limit, format!("nodes {:?}, coordinator {:?}", v.nodes.keys(), v.coordinator))
        })?;
        // The coordinator answers once it has read the offsets topic back.
        let deadline = tokio::time::Instant::now() + limit;
        if self.coordinators.is_empty() {
            return Ok(());
        }
        loop {
            if self.meta.view().borrow().topics.contains_key(sluice_core::topic::OFFSETS_TOPIC) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(InProcessError::NotReady(limit, "the offsets topic was not created".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The metadata as it is now.
    pub fn view(&self) -> Arc<sluice_meta::ClusterView> {
        self.meta.view().borrow().clone()
    }

    /// The first gateway's address.
    pub fn gateway(&self) -> &str {
        &self.gateways[0].addr
    }

    /// Every gateway, comma-separated (a client's bootstrap list).
    pub fn gateways(&self) -> String {
        self.gateways.iter().map(|g| g.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The partition node `id` (1-based), for looking inside.
    pub fn node(&self, id: u64) -> Option<&Arc<Node>> {
        self.nodes.get(&id).map(|(_, n)| n)
    }

    /// The address partition node `id` serves on.
    pub fn node_addr(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(|(s, _)| s.addr.as_str())
    }

    /// Expires node `id`'s lease, as etcd does for a node that stopped renewing it (paused,
    /// cut off): it leaves the view, its partitions are led by others, and it can no longer
    /// prove it leads anything. It keeps running.
    pub fn expire_node(&self, id: u64) {
        if let Some((s, _)) = self.nodes.get(&id) {
            self.meta.expire(s.session.lease());
        }
    }

    /// Gives node `id` its lease back: it is alive in the view again and follows the leaders.
    pub fn revive_node(&self, id: u64) {
        if let Some((s, _)) = self.nodes.get(&id) {
            self.meta.revive(s.session.lease());
        }
    }

    /// Expires the lease of the coordinator holding the role; a standby takes over.
    pub fn expire_active_coordinator(&self) -> Option<String> {
        let active = self.meta.view().borrow().coordinator.clone()?;
        let (s, _) = self.coordinators.iter().find(|(s, _)| s.addr == active.addr)?;
        self.meta.expire(s.session.lease());
        Some(active.addr)
    }
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        for s in self.gateways.iter().chain(self.coordinators.iter().map(|(s, _)| s)) {
            s.shutdown.trigger();
        }
        for (s, _) in self.nodes.values() {
            s.shutdown.trigger();
        }
        tracing::debug!("in-process cluster stopped");
    }
}
