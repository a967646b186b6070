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
//! - [`role`]: election, loading the offsets topic, membership snapshots, resigning.
//! - [`registry`]: the groups, each behind its own lock with its own timer.
//! - [`group`]: membership, incremental rebalancing and commit fencing for one group.
//! - [`assignor`]: range, round-robin and sticky.
//! - [`classic`]: Kafka's classic group protocol (join, sync, client-side assignment).
//! - [`store`]: the offsets topic, through the data path in process.
//! - [`producer_ids`]: ids for idempotent producers, from blocks reserved in etcd.
//! - [`txn`]: the transaction coordinator, its state in `__transaction_state`.
//! - [`handlers`]: the gRPC API, one file per RPC.
//! - [`metrics`]: group lag and member gauges.

pub mod assignor;
pub mod classic;
pub mod group;
pub mod handlers;
pub mod metrics;
pub mod producer_ids;
pub mod registry;
pub mod role;
pub mod store;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::SluiceError;
use sluice_meta::{ClusterView, MetaStore};
use sluice_router::Router;
use sluice_runtime::{GroupSettings, Shutdown};
use tokio::sync::watch;

use crate::registry::Registry;
use crate::role::Active;
use crate::store::{LazyTopic, OffsetStore};

/// The health-service name of the groups service.
pub const SERVICE_NAME: &str = "sluice.v1.Groups";

/// Longest group id accepted.
pub const MAX_GROUP_ID_LEN: usize = 255;

/// Checks a group id: not empty, at most [`MAX_GROUP_ID_LEN`] bytes, no control characters.
pub fn validate_group_id(id: &str) -> Result<(), SluiceError> {
    validate_id(id).map_err(|reason| SluiceError::InvalidGroupId { name: id.chars().take(60).collect(), reason })
}

/// What is wrong with a group or transactional id, if anything: empty, longer than
/// [`MAX_GROUP_ID_LEN`] bytes, or holding control characters.
pub(crate) fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.len() > MAX_GROUP_ID_LEN {
        return Err(format!("the id is {} bytes long, the maximum is {MAX_GROUP_ID_LEN}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!("control character {c:?} is not allowed"));
    }
    Ok(())
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
    /// Set while this coordinator is the active one. Locked only to read or swap it.
    active: Mutex<Option<Active>>,
    groups: Registry,
    next_conn: AtomicU64,
    producer_ids: producer_ids::ProducerIds,
    txns: txn::Txns,
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
            producer_ids: producer_ids::ProducerIds::new(meta.clone()),
            meta,
            view,
            addr,
            router,
            active: Mutex::new(None),
            groups: Registry::default(),
            next_conn: AtomicU64::new(1),
            txns: txn::Txns::default(),
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

    fn active_slot(&self) -> MutexGuard<'_, Option<Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The epoch and store while this coordinator is active and can prove it.
    fn active(&self) -> Result<(u64, Arc<OffsetStore>), SluiceError> {
        let slot = self.active_slot();
        let Some(a) = slot.as_ref() else {
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

    /// The epoch and the transaction state topic while this coordinator is active and can
    /// prove it.
    fn txn_active(&self) -> Result<(u64, Arc<LazyTopic>), SluiceError> {
        let (epoch, _) = self.active()?;
        let slot = self.active_slot();
        let a = slot
            .as_ref()
            .filter(|a| a.epoch == epoch)
            .ok_or_else(|| SluiceError::CoordinatorNotAvailable(format!("coordinator {} is on standby", self.addr)))?;
        Ok((epoch, a.txn_topic.clone()))
    }

    /// The id of every topic in the current view, by name: committed offsets are kept only
    /// for these (see [`store::Committed::is_for`]).
    fn topic_ids(&self) -> HashMap<String, u64> {
        self.view.borrow().topics.iter().map(|(n, t)| (n.clone(), t.topic_id)).collect()
    }
}

impl registry::Host for Coordinator {
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.view
            .borrow()
            .topics
            .iter()
            .filter(|(n, _)| sluice_core::topic::internal_topic(n).is_none())
            .map(|(n, t)| (n.clone(), t.partitions.len() as u32))
            .collect()
    }

    fn mark(&self, group: &str) {
        if let Some(a) = self.active_slot().as_ref() {
            let _ = a.dirty.send(group.to_string());
        }
    }

    fn registry(&self) -> &Registry {
        &self.groups
    }
}
