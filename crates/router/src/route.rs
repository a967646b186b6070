//! Resolving a topic and partition to the node that leads it.

use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_meta::{ClusterView, TopicMeta};
use sluice_proto::v1::PartitionRef;

use crate::Router;
use crate::pool::NodeConn;

/// The topic, or NOT_FOUND naming it.
pub fn topic(view: &ClusterView, name: &str) -> Result<Arc<TopicMeta>, SluiceError> {
    view.topics.get(name).cloned().ok_or_else(|| SluiceError::UnknownTopic(name.to_string()))
}

/// A partition's leader connection and the reference the node expects.
pub struct Target {
    pub conn: Arc<NodeConn>,
    pub pref: PartitionRef,
    pub leader_epoch: u64,
}

impl Router {
    /// Where partition `p` of `t` is served; NOT_FOUND for a partition the topic lacks and
    /// LEADER_NOT_AVAILABLE (UNAVAILABLE, retriable) when its leader is not alive.
    pub fn target(&self, view: &ClusterView, t: &TopicMeta, p: u32) -> Result<Target, SluiceError> {
        let a = t.partitions.get(p as usize).ok_or_else(|| SluiceError::UnknownPartition {
            topic: t.name.clone(),
            partition: p,
            count: t.partitions.len() as u32,
        })?;
        let node = view.nodes.get(&a.leader).ok_or_else(|| SluiceError::LeaderNotAvailable {
            topic: t.name.clone(),
            partition: p,
            node: a.leader,
        })?;
        Ok(Target {
            conn: self.pool.get(node)?,
            pref: PartitionRef { topic: t.name.clone(), topic_id: t.topic_id, partition: p },
            leader_epoch: a.leader_epoch,
        })
    }
}

/// Partitions grouped by the node leading them, and those that could not be placed.
pub struct ByLeader<T> {
    pub nodes: Vec<(Arc<NodeConn>, Vec<T>)>,
    pub failed: Vec<(u32, SluiceError)>,
}

impl Router {
    /// Groups `items` (partition, extra) by leader so each node gets one request for all of its
    /// partitions; `make` builds the per-partition entry of that request.
    pub fn by_leader<X, T>(
        &self,
        view: &ClusterView,
        t: &TopicMeta,
        items: impl IntoIterator<Item = (u32, X)>,
        make: impl Fn(PartitionRef, X) -> T,
    ) -> ByLeader<T> {
        let mut nodes: std::collections::BTreeMap<u64, (Arc<NodeConn>, Vec<T>)> = Default::default();
        let mut failed = Vec::new();
        for (p, x) in items {
            match self.target(view, t, p) {
                Ok(target) => nodes
                    .entry(target.conn.id)
                    .or_insert_with(|| (target.conn.clone(), Vec::new()))
                    .1
                    .push(make(target.pref, x)),
                Err(e) => failed.push((p, e)),
            }
        }
        ByLeader { nodes: nodes.into_values().collect(), failed }
    }
}
