//! The metadata model and the topic placement rule shared by both stores.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::SluiceError;
use sluice_core::topic::{ConfigChange, TopicConfig, apply_config_changes, internal_topic, validate_topic_name};

use crate::{NewTopic, TopicLimits};

/// A live partition node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    /// The address other services dial (host:port).
    pub addr: String,
}

/// Where one partition lives, and its current leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    /// Preferred order: the first is the preferred leader.
    pub replicas: Vec<u64>,
    pub leader: u64,
    /// Bumped on every leader change; stale leaders are fenced by it.
    pub leader_epoch: u64,
    /// The in-sync replicas: those holding every record the leader acknowledged. Only they
    /// may be elected.
    #[serde(default)]
    pub isr: Vec<u64>,
    /// Metadata revision of the partition's state (0 while it is the topic's initial one):
    /// what a compare-and-set of the state compares.
    #[serde(skip)]
    pub revision: i64,
}

impl PartitionAssignment {
    /// The state part, as written by an election or an ISR change.
    pub fn state(&self, topic_id: u64) -> PartitionState {
        PartitionState { topic_id, leader: self.leader, leader_epoch: self.leader_epoch, isr: self.isr.clone() }
    }
}

/// Leadership of one partition, written by elections and ISR changes under a compare-and-set
/// of its revision; overlaid on the topic's initial assignment in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub topic_id: u64,
    pub leader: u64,
    pub leader_epoch: u64,
    pub isr: Vec<u64>,
}

/// A topic as stored in the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Random, so a re-created topic never reuses the data of a deleted one.
    pub topic_id: u64,
    pub replication_factor: u32,
    /// Explicit settings only; defaults are filled in by [`TopicMeta::config`].
    pub config: BTreeMap<String, String>,
    pub partitions: Vec<PartitionAssignment>,
    pub created_ms: i64,
    /// Metadata revision of the topic itself: a state change compares it, so nothing is
    /// written for a topic deleted (or re-created) meanwhile.
    #[serde(skip)]
    pub revision: i64,
}

impl TopicMeta {
    /// The effective configuration. Stored configs were validated on creation; should one be
    /// unreadable anyway, the defaults apply rather than failing every request.
    pub fn config(&self) -> TopicConfig {
        let mut c = TopicConfig::from_map(&self.config).unwrap_or_default();
        if !self.config.contains_key("min.insync.replicas") {
            c.min_insync_replicas = default_min_insync(self.replication_factor);
        }
        c
    }
}

/// `min.insync.replicas` when a topic does not set it: 2 from a replication factor of 3 (one
/// replica may fail without refusing acks=all writes, and an acknowledged write is always on
/// two nodes), 1 below.
pub fn default_min_insync(replication_factor: u32) -> u32 {
    if replication_factor >= 3 { 2 } else { 1 }
}

/// The active group coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// Its advertised address, which also names it.
    pub addr: String,
    /// Larger than every earlier coordinator's: the revision at which it took the role.
    #[serde(default)]
    pub epoch: u64,
}

/// A live gateway, as Kafka clients are told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Unique: the gateway's advertised gRPC address.
    pub name: String,
    /// Its advertised Kafka listener (host:port); empty when it has none.
    pub kafka: String,
}

/// Everything a service needs to route and serve, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// False until the first complete load: nothing may be deleted on an empty view.
    pub loaded: bool,
    /// The metadata revision this view reflects.
    pub revision: i64,
    /// The group coordinator holding the role, if any.
    pub coordinator: Option<CoordinatorInfo>,
    /// Live gateways, by name.
    pub gateways: BTreeMap<String, GatewayInfo>,
}

impl ClusterView {
    /// Overlays a partition's state on its topic (ignored when the topic id does not match).
    pub fn apply_state(topic: &mut TopicMeta, partition: u32, state: &PartitionState, revision: i64) {
        if state.topic_id != topic.topic_id {
            return;
        }
        if let Some(a) = topic.partitions.get_mut(partition as usize) {
            a.leader = state.leader;
            a.leader_epoch = state.leader_epoch;
            a.isr = state.isr.clone();
            a.revision = revision;
        }
    }
}

/// Checks a creation request and places its partitions on the live nodes, spreading replicas
/// and leaders evenly from a random starting node.
pub fn plan_topic(view: &ClusterView, t: &NewTopic, limits: TopicLimits, seed: u64) -> Result<TopicMeta, SluiceError> {
    validate_topic_name(&t.name)?;
    if t.partitions < 1 {
        return Err(SluiceError::InvalidPartitions {
            count: t.partitions,
            reason: "a topic needs at least 1 partition".into(),
        });
    }
    if t.partitions > limits.max_partitions {
        return Err(SluiceError::InvalidPartitions {
            count: t.partitions,
            reason: format!("the maximum is {} (max_partitions)", limits.max_partitions),
        });
    }
    let cfg = TopicConfig::from_map(&t.config)?;
    if view.topics.contains_key(&t.name) {
        return Err(SluiceError::TopicExists(t.name.clone()));
    }
    let rf = if t.replication_factor == 0 { 1 } else { t.replication_factor };
    let nodes: Vec<u64> = view.nodes.keys().copied().collect();
    if nodes.is_empty() {
        return Err(SluiceError::NodeUnavailable("no partition node is alive to host the topic".into()));
    }
    if rf as usize > nodes.len() {
        return Err(SluiceError::InvalidReplicationFactor {
            factor: rf,
            reason: format!("only {} partition node(s) are alive", nodes.len()),
        });
    }
    if t.config.contains_key("min.insync.replicas") && cfg.min_insync_replicas > rf {
        return Err(SluiceError::InvalidConfig(format!(
            "min.insync.replicas={} is larger than the replication factor {rf}: acks=all writes could never succeed",
            cfg.min_insync_replicas
        )));
    }
    let start = (seed % nodes.len() as u64) as usize;
    let partitions = (0..t.partitions as usize)
        .map(|p| {
            let replicas: Vec<u64> = (0..rf as usize).map(|j| nodes[(start + p + j) % nodes.len()]).collect();
            PartitionAssignment { leader: replicas[0], isr: replicas.clone(), replicas, leader_epoch: 1, revision: 0 }
        })
        .collect();
    Ok(TopicMeta {
        name: t.name.clone(),
        topic_id: seed | 1,
        replication_factor: rf,
        config: t.config.clone(),
        partitions,
        created_ms: sluice_core::settings::now_ms(),
        revision: 0,
    })
}

/// `topic` with `changes` applied to its explicit configuration (see
/// [`sluice_core::topic::apply_config_changes`]). The nodes read the configuration from the
/// view on every write and cleaning pass, so a change applies as soon as they see it.
pub fn plan_config(topic: &TopicMeta, changes: &[ConfigChange]) -> Result<TopicMeta, SluiceError> {
    if changes.is_empty() {
        return Err(SluiceError::InvalidRequest("no config change was given".into()));
    }
    // The coordinators' own records must always fit and be written: their settings are
    // Sluice's.
    if let Some(what) = internal_topic(&topic.name) {
        return Err(SluiceError::InvalidConfig(format!(
            "'{}' holds {what}; its configuration is managed by Sluice and cannot be altered",
            topic.name
        )));
    }
    let config = apply_config_changes(&topic.config, &topic.config(), changes)?;
    let min_isr = TopicConfig::from_map(&config)?.min_insync_replicas;
    if config.contains_key("min.insync.replicas") && min_isr > topic.replication_factor.max(1) {
        return Err(SluiceError::InvalidConfig(format!(
            "min.insync.replicas={min_isr} is larger than the replication factor {}: acks=all writes could never succeed",
            topic.replication_factor
        )));
    }
    Ok(TopicMeta { config, ..topic.clone() })
}

/// `topic` grown to `count` partitions: the new ones placed on the live nodes as a creation
/// places them (replicas and leaders spread from a random node, `seed`), the others as they
/// are. Partitions can only be added, as in Kafka: keys move to other partitions, so a topic
/// that relies on key order should be created with enough of them.
pub fn plan_partitions(
    view: &ClusterView,
    topic: &TopicMeta,
    count: u32,
    limits: TopicLimits,
    seed: u64,
) -> Result<TopicMeta, SluiceError> {
    let current = topic.partitions.len() as u32;
    if count <= current {
        return Err(SluiceError::InvalidPartitions {
            count,
            reason: format!("topic '{}' has {current} partitions; partitions can only be added", topic.name),
        });
    }
    if count > limits.max_partitions {
        return Err(SluiceError::InvalidPartitions {
            count,
            reason: format!("the maximum is {} (max_partitions)", limits.max_partitions),
        });
    }
    let nodes: Vec<u64> = view.nodes.keys().copied().collect();
    let rf = topic.replication_factor.max(1);
    if (rf as usize) > nodes.len() {
        return Err(SluiceError::InvalidReplicationFactor {
            factor: rf,
            reason: format!("only {} partition node(s) are alive to host the new partitions", nodes.len()),
        });
    }
    let start = (seed % nodes.len() as u64) as usize;
    let mut grown = topic.clone();
    for p in 0..(count - current) as usize {
        let replicas: Vec<u64> = (0..rf as usize).map(|j| nodes[(start + p + j) % nodes.len()]).collect();
        grown.partitions.push(PartitionAssignment {
            leader: replicas[0],
            isr: replicas.clone(),
            replicas,
            leader_epoch: 1,
            revision: 0,
        });
    }
    Ok(grown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_only_added_and_placed_on_live_nodes() {
        let v = view(3);
        let t = plan_topic(
            &v,
            &NewTopic { name: "t".into(), partitions: 2, replication_factor: 2, config: Default::default() },
            TopicLimits::default(),
            7,
        )
        .unwrap();
        let grown = plan_partitions(&v, &t, 5, TopicLimits::default(), 1).unwrap();
        assert_eq!(grown.partitions.len(), 5);
        assert_eq!(grown.partitions[..2], t.partitions[..]);
        assert!(grown.partitions[2..].iter().all(|a| a.replicas.len() == 2 && a.leader == a.replicas[0]));
        assert!(matches!(
            plan_partitions(&v, &t, 2, TopicLimits::default(), 1),
            Err(SluiceError::InvalidPartitions { .. })
        ));
        let few = view(1);
        assert!(matches!(
            plan_partitions(&few, &t, 3, TopicLimits::default(), 1),
            Err(SluiceError::InvalidReplicationFactor { .. })
        ));
    }

    #[test]
    fn config_changes_are_validated_and_internal_topics_refused() {
        use sluice_core::topic::ConfigOp;
        let v = view(3);
        let t = plan_topic(&v, &req("t", 1, 2), TopicLimits::default(), 7).unwrap();
        let set = |k: &str, val: &str| vec![ConfigChange { key: k.into(), op: ConfigOp::Set(val.into()) }];
        let changed = plan_config(&t, &set("retention.ms", "1000")).unwrap();
        assert_eq!(changed.config.get("retention.ms").map(String::as_str), Some("1000"));
        assert_eq!((changed.partitions.clone(), changed.topic_id), (t.partitions.clone(), t.topic_id));
        for bad in [set("min.insync.replicas", "3"), set("min.insync.replicas", "4294967297"), vec![]] {
            assert!(plan_config(&t, &bad).is_err(), "{bad:?}");
        }
        let offsets = plan_topic(&v, &req(sluice_core::topic::OFFSETS_TOPIC, 1, 1), TopicLimits::default(), 7).unwrap();
        let e = plan_config(&offsets, &set("max.message.bytes", "100")).unwrap_err();
        assert!(matches!(e, SluiceError::InvalidConfig(_)), "{e}");
    }

    fn view(n: u64) -> ClusterView {
        let nodes = (1..=n).map(|id| (id, NodeInfo { id, addr: format!("127.0.0.1:{id}") })).collect();
        ClusterView {
            nodes,
            topics: BTreeMap::new(),
            loaded: true,
            revision: 1,
            coordinator: None,
            gateways: BTreeMap::new(),
        }
    }

    fn req(name: &str, partitions: u32, rf: u32) -> NewTopic {
        NewTopic { name: name.into(), partitions, replication_factor: rf, config: BTreeMap::new() }
    }

    #[test]
    fn spreads_leaders_and_replicas_evenly() {
        let t = plan_topic(&view(3), &req("t", 6, 3), TopicLimits::default(), 12345).unwrap();
        let mut leaders = BTreeMap::new();
        for p in &t.partitions {
            *leaders.entry(p.leader).or_insert(0) += 1;
            let mut r = p.replicas.clone();
            r.dedup();
            assert_eq!(r.len(), 3);
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn refuses_bad_requests() {
        let v = view(2);
        let l = TopicLimits { max_partitions: 10 };
        assert!(matches!(plan_topic(&v, &req("t", 0, 1), l, 1), Err(SluiceError::InvalidPartitions { .. })));
        assert!(matches!(plan_topic(&v, &req("t", 11, 1), l, 1), Err(SluiceError::InvalidPartitions { .. })));
        assert!(matches!(plan_topic(&v, &req("t", 1, 3), l, 1), Err(SluiceError::InvalidReplicationFactor { .. })));
        assert!(matches!(plan_topic(&v, &req("a/b", 1, 1), l, 1), Err(SluiceError::InvalidTopicName { .. })));
        assert!(matches!(plan_topic(&view(0), &req("t", 1, 1), l, 1), Err(SluiceError::NodeUnavailable(_))));
    }
}
