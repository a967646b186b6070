//! Topic names and per-topic configuration: validation and defaults, as Kafka defines them.

use std::collections::BTreeMap;

use crate::error::SluiceError;

/// Longest topic name accepted, as in Kafka.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// The internal topic holding consumer groups' committed offsets (written by the group
/// coordinator).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic holding the transaction coordinator's state, one record per
/// transactional id.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// What an internal topic holds, when `name` is one: such topics cannot be deleted, and
/// consumer groups do not assign them.
pub fn internal_topic(name: &str) -> Option<&'static str> {
    match name {
        OFFSETS_TOPIC => Some("consumer groups' committed offsets"),
        TRANSACTION_STATE_TOPIC => Some("transaction coordinator state"),
        CONNECT_CONFIGS_TOPIC => Some("Connect's connector configs"),
        CONNECT_STATUS_TOPIC => Some("Connect's connector and task states"),
        CONNECT_OFFSETS_TOPIC => Some("Connect's source offsets"),
        _ => None,
    }
}

/// Connect's internal topics: connector configs and target states, task states, source
/// offsets.
pub const CONNECT_CONFIGS_TOPIC: &str = "__connect_configs";
pub const CONNECT_STATUS_TOPIC: &str = "__connect_status";
pub const CONNECT_OFFSETS_TOPIC: &str = "__connect_offsets";

/// A topic partition, as consumer groups name it.
pub type TopicPartition = (String, u32);

/// Topic partitions grouped by topic, as `TopicPartitions` messages carry them.
pub fn group_by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<sluice_proto::v1::TopicPartitions> {
    let mut m: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in tps {
        m.entry(t).or_default().push(*p);
    }
    m.into_iter()
        .map(|(t, partitions)| sluice_proto::v1::TopicPartitions { topic: t.to_string(), partitions, topic_id: 0 })
        .collect()
}

/// The topic partitions listed in `TopicPartitions` messages.
pub fn flatten_topics<C: FromIterator<TopicPartition>>(list: &[sluice_proto::v1::TopicPartitions]) -> C {
    list.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p))).collect()
}

/// Checks a topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), SluiceError> {
    let bad = |reason: &str| {
        Err(SluiceError::InvalidTopicName { name: name.chars().take(60).collect(), reason: reason.into() })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad(&format!("the name is {} characters long, the maximum is {MAX_TOPIC_NAME_LEN}", name.len()));
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("character {c:?} is not allowed (use a-z, A-Z, 0-9, '.', '_' and '-')"));
    }
    Ok(())
}

/// What happens to old records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

/// Whose clock stamps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Effective per-topic configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Records older than this are deleted; -1 keeps them forever.
    pub retention_ms: i64,
    /// A partition larger than this loses its oldest batches; -1 means no limit.
    pub retention_bytes: i64,
    pub cleanup_policy: CleanupPolicy,
    /// How long tombstones survive compaction.
    pub delete_retention_ms: i64,
    /// Largest record batch accepted, in bytes.
    pub max_message_bytes: usize,
    /// Fewest in-sync replicas for an acks=all write (used once replication exists).
    pub min_insync_replicas: u32,
    pub message_timestamp_type: TimestampType,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy { delete: true, compact: false },
            delete_retention_ms: 24 * 3600 * 1000,
            max_message_bytes: 1024 * 1024,
            min_insync_replicas: 1,
            message_timestamp_type: TimestampType::CreateTime,
        }
    }
}

/// The keys a topic config may hold.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "delete.retention.ms",
    "max.message.bytes",
    "min.insync.replicas",
    "message.timestamp.type",
];

impl TopicConfig {
    /// Parses explicit settings over the defaults; unknown keys and bad values are refused.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, SluiceError> {
        let mut c = Self::default();
        for (k, v) in map {
            let bad = |why: &str| SluiceError::InvalidConfig(format!("{k}={v}: {why}"));
            let int = |min: i64| -> Result<i64, SluiceError> {
                let n: i64 = v.trim().parse().map_err(|_| bad("not an integer"))?;
                if n < min {
                    return Err(bad(&format!("must be at least {min}")));
                }
                Ok(n)
            };
            match k.as_str() {
                "retention.ms" => c.retention_ms = int(-1)?,
                "retention.bytes" => c.retention_bytes = int(-1)?,
                "delete.retention.ms" => c.delete_retention_ms = int(0)?,
                "max.message.bytes" => {
                    let n = int(64)?;
                    if n > 64 * 1024 * 1024 {
                        return Err(bad("must be at most 67108864 (64 MiB)"));
                    }
                    c.max_message_bytes = n as usize;
                }
                "min.insync.replicas" => {
                    c.min_insync_replicas = u32::try_from(int(1)?).map_err(|_| bad("too large"))?;
                }
                "cleanup.policy" => {
                    let mut p = CleanupPolicy { delete: false, compact: false };
                    for part in v.split(',').map(str::trim) {
                        match part {
                            "delete" => p.delete = true,
                            "compact" => p.compact = true,
                            _ => return Err(bad("expected delete, compact or compact,delete")),
                        }
                    }
                    c.cleanup_policy = p;
                }
                "message.timestamp.type" => {
                    c.message_timestamp_type = match v.as_str() {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => return Err(bad("expected CreateTime or LogAppendTime")),
                    }
                }
                _ => {
                    return Err(SluiceError::InvalidConfig(format!(
                        "unknown config key '{k}' (known keys: {})",
                        TOPIC_CONFIG_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(c)
    }

    /// Every key with its effective value, for describe.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let policy = match (self.cleanup_policy.compact, self.cleanup_policy.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        };
        [
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("cleanup.policy", policy.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            (
                "message.timestamp.type",
                match self.message_timestamp_type {
                    TimestampType::CreateTime => "CreateTime",
                    TimestampType::LogAppendTime => "LogAppendTime",
                }
                .to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// One change to a topic's explicit configuration, as Kafka's IncrementalAlterConfigs sends
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub key: String,
    pub op: ConfigOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// The topic sets the key to this value.
    Set(String),
    /// The topic stops setting the key: the default applies again.
    Delete,
    /// Adds items to a list value (`cleanup.policy`), starting from the effective value.
    Append(String),
    /// Removes items from a list value.
    Subtract(String),
}

/// The keys whose values are comma-separated lists.
const LIST_KEYS: &[&str] = &["cleanup.policy"];

/// `explicit` (a topic's own settings, over `effective` values) with `changes` applied in
/// order, validated as a creation validates them. Changes to one key apply in order, so a
/// request may delete then set it.
pub fn apply_config_changes(
    explicit: &BTreeMap<String, String>,
    effective: &TopicConfig,
    changes: &[ConfigChange],
) -> Result<BTreeMap<String, String>, SluiceError> {
    let mut out = explicit.clone();
    let defaults = effective.to_map();
    for c in changes {
        if !TOPIC_CONFIG_KEYS.contains(&c.key.as_str()) {
            return Err(SluiceError::InvalidConfig(format!(
                "unknown config key '{}' (known keys: {})",
                c.key,
                TOPIC_CONFIG_KEYS.join(", ")
            )));
        }
        let list_op = matches!(c.op, ConfigOp::Append(_) | ConfigOp::Subtract(_));
        if list_op && !LIST_KEYS.contains(&c.key.as_str()) {
            return Err(SluiceError::InvalidConfig(format!(
                "'{}' is not a list: only {} can be appended to or subtracted from",
                c.key,
                LIST_KEYS.join(", ")
            )));
        }
        let current = || list_items(out.get(&c.key).or_else(|| defaults.get(&c.key)).map_or("", |v| v.as_str()));
        match &c.op {
            ConfigOp::Set(v) => {
                out.insert(c.key.clone(), v.trim().to_string());
            }
            ConfigOp::Delete => {
                out.remove(&c.key);
            }
            ConfigOp::Append(v) => {
                let mut list = current();
                for item in list_items(v) {
                    if !list.contains(&item) {
                        list.push(item);
                    }
                }
                out.insert(c.key.clone(), list.join(","));
            }
            ConfigOp::Subtract(v) => {
                let gone = list_items(v);
                let list: Vec<String> = current().into_iter().filter(|i| !gone.contains(i)).collect();
                if list.is_empty() {
                    return Err(SluiceError::InvalidConfig(format!(
                        "subtracting '{v}' from {} would leave it empty",
                        c.key
                    )));
                }
                out.insert(c.key.clone(), list.join(","));
            }
        }
    }
    TopicConfig::from_map(&out)?;
    Ok(out)
}

fn list_items(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "é", &"a".repeat(250)] {
            let e = validate_topic_name(bad).unwrap_err();
            assert!(matches!(e, SluiceError::InvalidTopicName { .. }), "{bad}");
        }
    }

    #[test]
    fn config_parses_and_refuses_bad_values() {
        let m = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(TopicConfig::from_map(&m("retention.ms", "1000")).unwrap().retention_ms, 1000);
        assert!(TopicConfig::from_map(&m("cleanup.policy", "compact")).unwrap().cleanup_policy.compact);
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("cleanup.policy", "keep"),
            ("no.such.key", "1"),
            ("max.message.bytes", "1"),
        ] {
            assert!(matches!(TopicConfig::from_map(&m(k, v)), Err(SluiceError::InvalidConfig(_))), "{k}={v}");
        }
        let c = TopicConfig::default();
        assert_eq!(TopicConfig::from_map(&c.to_map()).unwrap(), c);
    }

    #[test]
    fn config_changes_set_delete_append_and_subtract() {
        let explicit: BTreeMap<String, String> = [("retention.ms".to_string(), "1000".to_string())].into();
        let eff = TopicConfig::from_map(&explicit).unwrap();
        let change = |key: &str, op: ConfigOp| ConfigChange { key: key.into(), op };
        let out = apply_config_changes(
            &explicit,
            &eff,
            &[
                change("retention.ms", ConfigOp::Delete),
                change("max.message.bytes", ConfigOp::Set("2048".into())),
                change("cleanup.policy", ConfigOp::Append("compact".into())),
            ],
        )
        .unwrap();
        assert_eq!(out.get("retention.ms"), None);
        assert_eq!(out["max.message.bytes"], "2048");
        assert_eq!(out["cleanup.policy"], "delete,compact");
        let eff = TopicConfig::from_map(&out).unwrap();
        let out =
            apply_config_changes(&out, &eff, &[change("cleanup.policy", ConfigOp::Subtract("delete".into()))]).unwrap();
        assert_eq!(out["cleanup.policy"], "compact");
        let eff = TopicConfig::from_map(&out).unwrap();
        for bad in [
            change("cleanup.policy", ConfigOp::Subtract("compact".into())),
            change("retention.ms", ConfigOp::Append("5".into())),
            change("no.such.key", ConfigOp::Set("1".into())),
            change("retention.ms", ConfigOp::Set("soon".into())),
        ] {
            let e = apply_config_changes(&out, &eff, std::slice::from_ref(&bad)).unwrap_err();
            assert!(matches!(e, SluiceError::InvalidConfig(_)), "{bad:?}: {e}");
        }
    }
}
