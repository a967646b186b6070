//! What Connect keeps in its internal compacted topics, and how: the records are JSON so
//! that `sluice consume __connect_configs` shows them.
//!
//! - `__connect_configs` (one partition, so one order for everything): key
//!   `connector:<name>`, value a [`ConnectorRecord`] (config, target state, restart
//!   counters); a tombstone deletes the connector. Gateways write it; runners follow it.
//! - `__connect_status`: key `status:<name>:<task>` (task -1: the connector), value a
//!   [`TaskStatus`]; runners write it as tasks start, stop and fail.
//! - `__connect_offsets`: a source task's position, key `[connector, partition]` and value
//!   its offset object, as Kafka Connect lays them out.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use sluice_core::topic::{CONNECT_CONFIGS_TOPIC, CONNECT_OFFSETS_TOPIC, CONNECT_STATUS_TOPIC};

/// Partitions of each topic when it is created (Kafka's defaults: 1, 5, 25).
pub const CONFIGS_PARTITIONS: u32 = 1;
pub const STATUS_PARTITIONS: u32 = 5;
pub const OFFSETS_PARTITIONS: u32 = 25;

/// What runners are asked to do with a connector's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetState {
    #[default]
    Running,
    Paused,
}

impl TargetState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
        }
    }
}

/// A connector as `__connect_configs` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConnectorRecord {
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub target_state: TargetState,
    /// Bumped to restart every task.
    #[serde(default)]
    pub restarts: u64,
    /// Bumped to restart one task.
    #[serde(default)]
    pub task_restarts: BTreeMap<u32, u64>,
}

/// A task's (or the connector's) state, as runners report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// RUNNING, PAUSED or FAILED (UNASSIGNED is the absence of a record).
    pub state: String,
    pub runner: String,
    #[serde(default)]
    pub error: String,
    pub updated_ms: i64,
}

pub fn connector_key(name: &str) -> Bytes {
    Bytes::from(format!("connector:{name}"))
}

/// The connector a configs-topic key names.
pub fn connector_of(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix("connector:")
}

pub fn status_key(name: &str, task: i32) -> Bytes {
    Bytes::from(format!("status:{name}:{task}"))
}

/// The connector and task a status-topic key names.
pub fn status_of(key: &[u8]) -> Option<(&str, i32)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix("status:")?;
    let (name, task) = rest.rsplit_once(':')?;
    Some((name, task.parse().ok()?))
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    // Plain structs of strings and numbers: serialising cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Folds records of `__connect_configs` (in order) into the connectors they leave.
#[derive(Debug, Default)]
pub struct Connectors(pub BTreeMap<String, ConnectorRecord>);

impl Connectors {
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(name) = key.and_then(connector_of) else { return };
        match value.map(serde_json::from_slice::<ConnectorRecord>) {
            None => {
                self.0.remove(name);
            }
            Some(Ok(r)) => {
                self.0.insert(name.to_string(), r);
            }
            Some(Err(e)) => tracing::warn!(connector = name, error = %e, "skipping an unreadable connector record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records_read_back() {
        assert_eq!(connector_of(&connector_key("a:b")), Some("a:b"));
        assert_eq!(status_of(&status_key("a:b", -1)), Some(("a:b", -1)));
        assert_eq!(status_of(&status_key("c", 3)), Some(("c", 3)));
        let mut c = Connectors::default();
        let r = ConnectorRecord { config: [("name".into(), "x".into())].into(), ..Default::default() };
        c.apply(Some(&connector_key("x")), Some(&encode(&r)));
        assert_eq!(c.0.get("x"), Some(&r));
        let text = String::from_utf8(encode(&r).to_vec()).unwrap();
        assert!(text.contains("\"target_state\":\"RUNNING\""), "{text}");
        c.apply(Some(&connector_key("x")), None);
        assert!(c.0.is_empty());
    }
}
