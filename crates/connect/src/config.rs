//! Connector configs: Kafka Connect's keys, checked before anything is stored or started.
//!
//! A config is a flat map of strings, as Kafka Connect's REST API takes it. Every connector
//! has the common keys ([`COMMON_KEYS`], and [`SOURCE_KEYS`] or [`SINK_KEYS`]); its class adds its own
//! ([`crate::plugins`]); `transforms.<alias>.*`, `predicates.<name>.*` and
//! `{key,value}.converter.*` are checked by building what they describe. An unknown key, a
//! missing required one or a bad value is refused with the key's name.

use std::collections::BTreeMap;

use crate::ConnectError;
use crate::plugins::{self, Kind, Plugin};
use crate::transform::{self, Transform};

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// A comma-separated list.
    List,
    /// One of these words.
    Choice(&'static [&'static str]),
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int { .. } => "int",
            Self::Bool => "boolean",
            Self::List => "list",
            Self::Choice(_) => "choice",
        }
    }
}

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    pub name: &'static str,
    pub ty: KeyType,
    pub required: bool,
    /// Shown in `connect plugins`; `None` for required keys and keys without a default.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

const fn key(name: &'static str, ty: KeyType, default: Option<&'static str>, doc: &'static str) -> ConfigKey {
    ConfigKey { name, ty, required: false, default, doc }
}

const fn required(name: &'static str, ty: KeyType, doc: &'static str) -> ConfigKey {
    ConfigKey { name, ty, required: true, default: None, doc }
}

pub(crate) const fn plugin_key(
    name: &'static str,
    ty: KeyType,
    default: Option<&'static str>,
    doc: &'static str,
) -> ConfigKey {
    key(name, ty, default, doc)
}

pub(crate) const fn plugin_required(name: &'static str, ty: KeyType, doc: &'static str) -> ConfigKey {
    required(name, ty, doc)
}

/// Most tasks one connector may run.
pub const MAX_TASKS: i64 = 1024;

/// Keys every connector has.
pub const COMMON_KEYS: &[ConfigKey] = &[
    required("name", KeyType::String, "The connector's name, unique in the cluster."),
    required("connector.class", KeyType::String, "The connector's class or short name (see `connect plugins`)."),
    key("tasks.max", KeyType::Int { min: 1, max: MAX_TASKS }, Some("1"), "Most tasks the connector runs."),
    key(
        "key.converter",
        KeyType::String,
        Some("org.apache.kafka.connect.json.JsonConverter"),
        "How record keys are turned into bytes and back: string, bytes, json or their Kafka class names.",
    ),
    key(
        "value.converter",
        KeyType::String,
        Some("org.apache.kafka.connect.json.JsonConverter"),
        "How record values are turned into bytes and back.",
    ),
    key(
        "key.converter.schemas.enable",
        KeyType::Bool,
        Some("true"),
        "With the JSON converter: keys carry their schema (Kafka's schema/payload envelope).",
    ),
    key(
        "value.converter.schemas.enable",
        KeyType::Bool,
        Some("true"),
        "With the JSON converter: values carry their schema (Kafka's schema/payload envelope).",
    ),
    key(
        "transforms",
        KeyType::List,
        Some(""),
        "Aliases of the transforms applied in order (transforms.<alias>.type ...).",
    ),
    key(
        "predicates",
        KeyType::List,
        Some(""),
        "Names of the predicates transforms may use (predicates.<name>.type ...).",
    ),
    key(
        "errors.tolerance",
        KeyType::Choice(&["none", "all"]),
        Some("none"),
        "none: a record that fails conversion or a transform fails the task; all: it is skipped (and sent to the dead-letter topic of a sink when one is set).",
    ),
    key(
        "errors.retry.timeout",
        KeyType::Int { min: -1, max: i64::MAX },
        Some("0"),
        "How long a failed write to the target or commit of a sink is retried, in ms (-1: forever, 0: not retried).",
    ),
    key(
        "errors.retry.delay.max.ms",
        KeyType::Int { min: 1, max: i64::MAX },
        Some("60000"),
        "Longest pause between two retries (they back off exponentially up to it), in ms.",
    ),
    key("errors.log.enable", KeyType::Bool, Some("false"), "Log every failed record."),
    key("errors.log.include.messages", KeyType::Bool, Some("false"), "Include the record's key and value in that log."),
];

/// Keys every source has (Kafka's KIP-158, for the topics a source writes that do not exist).
pub const SOURCE_KEYS: &[ConfigKey] = &[
    key(
        "topic.creation.default.partitions",
        KeyType::Int { min: 1, max: 10_000 },
        Some("1"),
        "Partitions of a topic the connector writes to that does not exist yet (it is created).",
    ),
    key(
        "topic.creation.default.replication.factor",
        KeyType::Int { min: 1, max: 32 },
        Some("3"),
        "Replication factor of such a topic (lowered to the live nodes).",
    ),
];

/// Keys every sink has.
pub const SINK_KEYS: &[ConfigKey] = &[
    key("topics", KeyType::List, None, "The topics read (this or topics.regex)."),
    key("topics.regex", KeyType::String, None, "A regular expression of the topics read (this or topics)."),
    key(
        "consumer.override.isolation.level",
        KeyType::Choice(&["read_committed", "read_uncommitted"]),
        Some("read_committed"),
        "What the task reads: committed records only (unlike Kafka Connect's default, so a sink of an \
         exactly-once source never writes an aborted record), or everything.",
    ),
    key(
        "errors.deadletterqueue.topic.name",
        KeyType::String,
        Some(""),
        "Where records that fail (with errors.tolerance=all) are written, as they were read.",
    ),
    key(
        "errors.deadletterqueue.topic.replication.factor",
        KeyType::Int { min: 1, max: 32 },
        Some("3"),
        "Replication factor of the dead-letter topic when it is created (lowered to the live nodes).",
    ),
    key(
        "errors.deadletterqueue.context.headers.enable",
        KeyType::Bool,
        Some("false"),
        "Add headers saying what failed and where (__connect.errors.*) to dead-letter records.",
    ),
];

/// A config that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorConfig {
    pub name: String,
    pub plugin: &'static Plugin,
    pub tasks_max: u32,
    /// Every key as given (defaults are not written in).
    pub raw: BTreeMap<String, String>,
}

impl ConnectorConfig {
    /// The value of `key`, or its documented default.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw
            .get(key)
            .map(String::as_str)
            .or_else(|| documented(self.plugin).find(|k| k.name == key).and_then(|k| k.default))
    }

    /// An integer key's value, or its documented default (validation checked its range).
    pub fn int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    pub fn kind(&self) -> Kind {
        self.plugin.kind
    }
}

/// Every key a plugin documents: the common ones, the sink ones for sinks, and its own.
pub fn documented(plugin: &Plugin) -> impl Iterator<Item = &ConfigKey> {
    let kind: &[ConfigKey] = match plugin.kind {
        Kind::Sink => SINK_KEYS,
        Kind::Source => SOURCE_KEYS,
    };
    COMMON_KEYS.iter().chain(kind).chain(plugin.keys.iter().flat_map(|g| g.iter()))
}

/// Prefixes under which keys are checked by building what they configure.
const OPEN_PREFIXES: &[&str] = &["transforms.", "predicates.", "key.converter.", "value.converter."];

/// Checks `raw` and returns the config, or every problem found (each naming its key).
pub fn validate(raw: &BTreeMap<String, String>) -> Result<ConnectorConfig, Vec<ConnectError>> {
    let mut errors = Vec::new();
    let class = raw.get("connector.class").map(String::as_str).unwrap_or_default();
    let Some(plugin) = plugins::find(class) else {
        let reason = if class.is_empty() {
            "is required".to_string()
        } else {
            format!("no connector class '{class}' (known: {})", plugins::names().join(", "))
        };
        return Err(vec![ConnectError::config("connector.class", reason)]);
    };
    let keys: Vec<&ConfigKey> = documented(plugin).collect();
    for (k, v) in raw {
        match keys.iter().find(|d| d.name == k) {
            Some(d) => {
                if let Err(e) = check(d, v) {
                    errors.push(e);
                }
            }
            None if OPEN_PREFIXES.iter().any(|p| k.starts_with(p)) => {}
            None => errors.push(ConnectError::config(k.as_str(), format!("unknown key for {}", plugin.class))),
        }
    }
    for d in keys.iter().filter(|d| d.required) {
        if raw.get(d.name).is_none_or(|v| v.trim().is_empty()) {
            errors.push(ConnectError::config(d.name, "is required"));
        }
    }
    if let Some(name) = raw.get("name")
        && let Err(e) = check_name(name)
    {
        errors.push(e);
    }
    if plugin.kind == Kind::Sink {
        let topics = raw.get("topics").is_some_and(|t| !t.trim().is_empty());
        let regex = raw.get("topics.regex").is_some_and(|t| !t.trim().is_empty());
        match (topics, regex) {
            (false, false) => errors.push(ConnectError::config("topics", "a sink needs topics or topics.regex")),
            (true, true) => errors.push(ConnectError::config("topics.regex", "give topics or topics.regex, not both")),
            _ => {}
        }
        if let Some(re) = raw.get("topics.regex").filter(|r| !r.is_empty())
            && let Err(e) = regex::Regex::new(re)
        {
            errors.push(ConnectError::config("topics.regex", format!("not a valid regular expression: {e}")));
        }
    }
    let cfg =
        ConnectorConfig { name: raw.get("name").cloned().unwrap_or_default(), plugin, tasks_max: 1, raw: raw.clone() };
    let tasks_max = cfg.get("tasks.max").and_then(|t| t.trim().parse::<u32>().ok()).unwrap_or(1);
    let cfg = ConnectorConfig { tasks_max, ..cfg };
    let cfg = ConnectorConfig { tasks_max: tasks_max.min((plugin.max_tasks)(&cfg)).max(1), ..cfg };
    // Converters and transforms are checked by building them.
    for side in ["key", "value"] {
        let schemas = cfg.get(&format!("{side}.converter.schemas.enable")) == Some("true");
        if let Some(class) = cfg.get(&format!("{side}.converter"))
            && crate::convert::converter(class, schemas).is_err()
        {
            errors.push(ConnectError::config(
                format!("{side}.converter"),
                format!("unknown converter '{class}' (string, bytes, json or their Kafka class names)"),
            ));
        }
    }
    if let Err(e) = transforms(&cfg.raw) {
        errors.push(e);
    }
    if let Err(e) = (plugin.check)(&cfg) {
        errors.push(e);
    }
    if errors.is_empty() { Ok(cfg) } else { Err(errors) }
}

/// Connector names: 1 to 249 characters without control characters or '/' (they name
/// records and status entries).
pub fn check_name(name: &str) -> Result<(), ConnectError> {
    if name.is_empty() || name.len() > 249 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ConnectError::config("name", "must be 1 to 249 characters, without '/' or control characters"));
    }
    Ok(())
}

fn check(d: &ConfigKey, v: &str) -> Result<(), ConnectError> {
    let bad = |why: String| Err(ConnectError::config(d.name, why));
    match d.ty {
        KeyType::String | KeyType::List => Ok(()),
        KeyType::Int { min, max } => match v.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            Ok(n) => bad(format!("{n} is outside {min}..={max}")),
            Err(_) => bad(format!("'{v}' is not an integer")),
        },
        KeyType::Bool => match v.trim() {
            "true" | "false" => Ok(()),
            _ => bad(format!("'{v}' is not true or false")),
        },
        KeyType::Choice(words) => {
            if words.contains(&v.trim()) {
                Ok(())
            } else {
                bad(format!("'{v}' is not one of {}", words.join(", ")))
            }
        }
    }
}

/// The transforms `transforms` names, in order, each with its predicate when it has one.
pub fn transforms(raw: &BTreeMap<String, String>) -> Result<Vec<Box<dyn Transform>>, ConnectError> {
    let props = |prefix: &str| -> BTreeMap<String, String> {
        raw.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|rest| (rest.to_string(), v.clone()))).collect()
    };
    let declared = list(raw.get("predicates").map_or("", String::as_str));
    let mut out = Vec::new();
    for alias in list(raw.get("transforms").map_or("", String::as_str)) {
        let mut own = props(&format!("transforms.{alias}."));
        let predicate = own.remove("predicate");
        let negate = match own.remove("negate").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(ConnectError::config(
                    format!("transforms.{alias}.negate"),
                    format!("'{v}' is not true or false"),
                ));
            }
        };
        let inner = transform::build(&alias, &own)?;
        out.push(match predicate {
            None => inner,
            Some(name) => {
                if !declared.contains(&name) {
                    return Err(ConnectError::config(
                        format!("transforms.{alias}.predicate"),
                        format!("predicate '{name}' is not listed in predicates"),
                    ));
                }
                let predicate = transform::predicate(&name, &props(&format!("predicates.{name}.")))?;
                Box::new(transform::Conditional { inner, predicate, negate })
            }
        });
    }
    Ok(out)
}

/// A list value's items.
pub fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_good_config_passes_and_bad_ones_name_their_key() {
        let ok = validate(&cfg(&[
            ("name", "lines"),
            ("connector.class", "FileStreamSource"),
            ("file", "/tmp/in.txt"),
            ("topic", "lines"),
            ("tasks.max", "1"),
        ]))
        .unwrap();
        assert_eq!((ok.name.as_str(), ok.kind(), ok.tasks_max), ("lines", Kind::Source, 1));
        assert_eq!(ok.get("value.converter"), Some("org.apache.kafka.connect.json.JsonConverter"));
        let keys = |pairs: &[(&str, &str)]| -> Vec<String> {
            match validate(&cfg(pairs)) {
                Ok(_) => vec![],
                Err(es) => es
                    .into_iter()
                    .map(|e| match e {
                        ConnectError::Config { key, .. } => key,
                        ConnectError::Data(d) => d,
                    })
                    .collect(),
            }
        };
        assert_eq!(keys(&[("name", "x"), ("connector.class", "nope")]), vec!["connector.class"]);
        assert_eq!(keys(&[("name", "x"), ("connector.class", "file-source"), ("topic", "t")]), vec!["file"]);
        assert_eq!(
            keys(&[
                ("name", "x"),
                ("connector.class", "file-source"),
                ("file", "f"),
                ("topic", "t"),
                ("tasks.max", "0")
            ]),
            vec!["tasks.max"]
        );
        assert_eq!(
            keys(&[
                ("name", "x"),
                ("connector.class", "file-source"),
                ("file", "f"),
                ("topic", "t"),
                ("colour", "red")
            ]),
            vec!["colour"]
        );
        assert_eq!(keys(&[("name", "x"), ("connector.class", "file-sink"), ("file", "f")]), vec!["topics"]);
        assert_eq!(
            keys(&[
                ("name", "x"),
                ("connector.class", "file-sink"),
                ("file", "f"),
                ("topics", "a"),
                ("value.converter", "xml")
            ]),
            vec!["value.converter"]
        );
        assert_eq!(
            keys(&[("name", "a/b"), ("connector.class", "file-sink"), ("file", "f"), ("topics", "a")]),
            vec!["name"]
        );
    }

    #[test]
    fn the_new_classes_check_their_keys_and_cap_their_tasks() {
        let errors = |pairs: &[(&str, &str)]| -> Vec<String> {
            validate(&cfg(pairs)).err().unwrap_or_default().iter().map(ToString::to_string).collect()
        };
        let pg = [("name", "p"), ("connector.class", "postgres-source"), ("connection.url", "postgresql://h/db")];
        let with = |more: &[(&'static str, &'static str)]| [&pg[..], more].concat();
        let e = errors(&with(&[("mode", "incrementing"), ("table.whitelist", "t")]));
        assert!(e.len() == 1 && e[0].contains("incrementing.column.name"), "{e:?}");
        let e = errors(&with(&[("mode", "cdc"), ("table.whitelist", "t"), ("slot.name", "Bad-Slot")]));
        assert!(e.len() == 1 && e[0].contains("slot.name"), "{e:?}");
        let e = errors(&with(&[("mode", "cdc"), ("table.whitelist", "a,b"), ("tasks.max", "2")]));
        assert!(e.len() == 1 && e[0].contains("tasks.max"), "{e:?}");
        assert!(errors(&with(&[("mode", "sometimes"), ("table.whitelist", "t")]))[0].contains("mode"));
        // A query source runs a task per table at most.
        let three = validate(&cfg(&with(&[("mode", "bulk"), ("table.whitelist", "a,b"), ("tasks.max", "3")]))).unwrap();
        assert_eq!(three.tasks_max, 2);
        let os = [("name", "o"), ("connector.class", "opensearch-sink"), ("topics", "t")];
        let e = errors(&[&os[..], &[("connection.url", "https://search:9200")]].concat());
        assert!(e.len() == 1 && e[0].contains("connection.url") && e[0].contains("no TLS"), "{e:?}");
        let lake = [("name", "l"), ("connector.class", "parquet-sink"), ("topics", "t")];
        // An S3 store needs its endpoint, over plain HTTP, and a bucket.
        let e = errors(&[&lake[..], &[("store.url", "s3://bucket/x")]].concat());
        assert!(e.len() == 1 && e[0].contains("s3.endpoint") && e[0].contains("required"), "{e:?}");
        let e = errors(&[&lake[..], &[("store.url", "s3://bucket/x"), ("s3.endpoint", "https://s3:9000")]].concat());
        assert!(e.len() == 1 && e[0].contains("s3.endpoint") && e[0].contains("no TLS"), "{e:?}");
        let e = errors(&[&lake[..], &[("store.url", "s3:///x"), ("s3.endpoint", "http://s3:9000")]].concat());
        assert!(e.len() == 1 && e[0].contains("s3://bucket"), "{e:?}");
        let e = errors(&[&lake[..], &[("store.url", "gs://bucket")]].concat());
        assert!(e.len() == 1 && e[0].contains("store.url"), "{e:?}");
        assert!(
            validate(&cfg(&[&lake[..], &[("store.url", "s3://b/x"), ("s3.endpoint", "http://s3:9000")]].concat()))
                .is_ok()
        );
        assert!(
            errors(&[&lake[..], &[("store.url", "/data/lake"), ("parquet.codec", "brotli")]].concat())[0]
                .contains("parquet.codec")
        );
    }
}
