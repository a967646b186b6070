//! The connector classes this build runs, with their documented keys (`connect plugins`).

use crate::ConnectError;
use crate::config::{ConfigKey, ConnectorConfig, KeyType, plugin_key, plugin_required};

/// Whether a connector writes into topics or reads from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Source,
    Sink,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Sink => "sink",
        }
    }
}

/// A connector class.
#[derive(Debug)]
pub struct Plugin {
    /// Kafka Connect's class name, where the connector is Kafka's.
    pub class: &'static str,
    /// Other names it answers to, the short one first.
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub doc: &'static str,
    /// Its own keys, in groups (the common ones are in [`crate::config`]).
    pub keys: &'static [&'static [ConfigKey]],
    /// Checks between its keys that a key's type cannot express.
    pub check: fn(&ConnectorConfig) -> Result<(), ConnectError>,
    /// How many tasks a valid config runs, at most (`tasks.max` is capped to it).
    pub max_tasks: fn(&ConnectorConfig) -> u32,
}

/// A class is itself: its name says which.
impl PartialEq for Plugin {
    fn eq(&self, other: &Self) -> bool {
        self.class == other.class
    }
}

fn no_check(_: &ConnectorConfig) -> Result<(), ConnectError> {
    Ok(())
}

fn any_tasks(_: &ConnectorConfig) -> u32 {
    u32::MAX
}

fn one_task(c: &ConnectorConfig) -> Result<(), ConnectError> {
    if c.tasks_max > 1 {
        return Err(ConnectError::config("tasks.max", "a file is read by one task: set 1"));
    }
    Ok(())
}

pub const FILE_SOURCE: Plugin = Plugin {
    class: "org.apache.kafka.connect.file.FileStreamSourceConnector",
    aliases: &["file-source", "FileStreamSource"],
    kind: Kind::Source,
    doc: "Tails a file: each line becomes a record (a string value, no key); resumes at the byte offset after the last line written, so nothing is lost or repeated across restarts.",
    keys: &[&[
        plugin_required("file", KeyType::String, "The file read, on the runner's machine."),
        plugin_required("topic", KeyType::String, "The topic written."),
        plugin_key(
            "batch.size",
            KeyType::Int { min: 1, max: 100_000 },
            Some("2000"),
            "Most lines read before they are written out.",
        ),
    ]],
    check: one_task,
    max_tasks: any_tasks,
};

pub const FILE_SINK: Plugin = Plugin {
    class: "org.apache.kafka.connect.file.FileStreamSinkConnector",
    aliases: &["file-sink", "FileStreamSink"],
    kind: Kind::Sink,
    doc: "Appends each record to a file as a line, in the chosen format.",
    keys: &[&[
        plugin_required("file", KeyType::String, "The file appended to, on the runner's machine."),
        plugin_key(
            "format",
            KeyType::Choice(&["value", "key-value", "json"]),
            Some("value"),
            "value: the value's text; key-value: key, a tab, value; json: an object with topic, partition, offset, timestamp, key and value.",
        ),
    ]],
    check: no_check,
    max_tasks: any_tasks,
};

/// How the PostgreSQL connectors reach their database.
const POSTGRES_CONNECTION: &[ConfigKey] = &[
    plugin_required(
        "connection.url",
        KeyType::String,
        "postgresql://host:port/database (jdbc:postgresql:// accepted), or libpq key=value settings.",
    ),
    plugin_key("connection.user", KeyType::String, Some(""), "User, when the URL has none."),
    plugin_key("connection.password", KeyType::String, Some(""), "Password, when the URL has none."),
];

fn postgres_sink_check(c: &ConnectorConfig) -> Result<(), ConnectError> {
    let mode = c.get("pk.mode").unwrap_or("none");
    if c.get("insert.mode") == Some("upsert") && mode == "none" {
        return Err(ConnectError::config("pk.mode", "upsert needs a primary key: record_key or record_value"));
    }
    if c.get("delete.enabled") == Some("true") && mode != "record_key" {
        return Err(ConnectError::config("delete.enabled", "deletes on tombstones need pk.mode=record_key"));
    }
    if mode == "record_value" && c.get("pk.fields").is_none_or(|f| f.trim().is_empty()) {
        return Err(ConnectError::config("pk.fields", "pk.mode=record_value needs the value fields of the key"));
    }
    Ok(())
}

pub const POSTGRES_SINK: Plugin = Plugin {
    class: "io.confluent.connect.jdbc.JdbcSinkConnector",
    aliases: &["postgres-sink", "JdbcSinkConnector"],
    kind: Kind::Sink,
    doc: "Writes records as rows of PostgreSQL tables, exactly once: each batch of rows and the offsets it reaches are committed in one PostgreSQL transaction (table __sluice_connect_offsets), and a task resumes from there.",
    keys: &[
        POSTGRES_CONNECTION,
        &[
            plugin_key(
                "table.name.format",
                KeyType::String,
                Some("${topic}"),
                "The table of a record; ${topic} is its topic.",
            ),
            plugin_key(
                "insert.mode",
                KeyType::Choice(&["insert", "upsert"]),
                Some("insert"),
                "insert: INSERT; upsert: INSERT ... ON CONFLICT (primary key) DO UPDATE.",
            ),
            plugin_key(
                "pk.mode",
                KeyType::Choice(&["none", "record_key", "record_value"]),
                Some("none"),
                "Where the primary key comes from: nowhere, the record key (its fields, or one column named by pk.fields for a plain key), or value fields.",
            ),
            plugin_key("pk.fields", KeyType::List, Some(""), "The primary key's columns (see pk.mode)."),
            plugin_key(
                "delete.enabled",
                KeyType::Bool,
                Some("false"),
                "A tombstone (a record without value) deletes the row of its key (pk.mode=record_key).",
            ),
            plugin_key(
                "auto.create",
                KeyType::Bool,
                Some("false"),
                "Create a missing table from the record's schema (or its JSON value's types).",
            ),
            plugin_key("auto.evolve", KeyType::Bool, Some("false"), "Add columns a record has and its table lacks."),
        ],
    ],
    check: postgres_sink_check,
    max_tasks: any_tasks,
};

fn postgres_source_check(c: &ConnectorConfig) -> Result<(), ConnectError> {
    let mode = c.get("mode").unwrap_or_default();
    let needs = |key: &'static str| match c.get(key).is_none_or(|v| v.trim().is_empty()) {
        true => Err(ConnectError::config(key, format!("mode={mode} needs it"))),
        false => Ok(()),
    };
    if mode.contains("incrementing") {
        needs("incrementing.column.name")?;
    }
    if mode.contains("timestamp") {
        needs("timestamp.column.name")?;
    }
    if mode == "cdc" {
        one_task(c)?;
    }
    for key in ["slot.name", "publication.name"] {
        if let Some(v) = c.get(key).filter(|v| !v.is_empty())
            && !v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConnectError::config(key, "lower-case letters, digits and underscores only"));
        }
    }
    Ok(())
}

/// A query-mode source runs a task per table at most.
fn tables_tasks(c: &ConnectorConfig) -> u32 {
    crate::config::list(c.get("table.whitelist").unwrap_or_default()).len().max(1) as u32
}

pub const POSTGRES_SOURCE: Plugin = Plugin {
    class: "io.confluent.connect.jdbc.JdbcSourceConnector",
    aliases: &["postgres-source", "JdbcSourceConnector"],
    kind: Kind::Source,
    doc: "Reads PostgreSQL tables into topics, exactly once per committed position. Query modes (the JDBC source's): bulk, incrementing, timestamp, timestamp+incrementing, a record per row (value: the row as a struct, no key) on topic.prefix + table, the tables dealt over the tasks. mode=cdc: change data capture through logical replication (pgoutput, a replication slot and a publication), one task, Debezium's event layout: key = the primary key's columns; value = {before, after, source, op c/u/d/r, ts_ms}; a tombstone after each delete; an initial snapshot of the tables as op r.",
    keys: &[
        POSTGRES_CONNECTION,
        &[
            plugin_required(
                "mode",
                KeyType::Choice(&["bulk", "incrementing", "timestamp", "timestamp+incrementing", "cdc"]),
                "How new rows are found: the whole table each poll (bulk), a strictly increasing column, a last-modified timestamp column, both, or the write-ahead log (cdc).",
            ),
            plugin_required(
                "table.whitelist",
                KeyType::List,
                "The tables read (schema-qualified or on the search path).",
            ),
            plugin_key(
                "topic.prefix",
                KeyType::String,
                Some(""),
                "Prepended to the table's name (as listed) to name its topic.",
            ),
            plugin_key(
                "incrementing.column.name",
                KeyType::String,
                Some(""),
                "The strictly increasing integer column (incrementing modes).",
            ),
            plugin_key(
                "timestamp.column.name",
                KeyType::String,
                Some(""),
                "The last-modified timestamp column (timestamp modes); compared in UTC.",
            ),
            plugin_key(
                "timestamp.delay.interval.ms",
                KeyType::Int { min: 0, max: 86_400_000 },
                Some("0"),
                "Rows newer than now minus this are left for a later poll, so that transactions still open when a row's timestamp was taken are not skipped.",
            ),
            plugin_key(
                "poll.interval.ms",
                KeyType::Int { min: 10, max: 86_400_000 },
                Some("5000"),
                "Pause between polls that found nothing new (bulk: between copies of the table).",
            ),
            plugin_key(
                "batch.max.rows",
                KeyType::Int { min: 1, max: 100_000 },
                Some("1000"),
                "Most rows (cdc: changes, whole transactions) read per poll and written in one transaction.",
            ),
            plugin_key(
                "slot.name",
                KeyType::String,
                Some(""),
                "cdc: the logical replication slot (created with pgoutput when missing); default sluice_<connector>.",
            ),
            plugin_key(
                "publication.name",
                KeyType::String,
                Some(""),
                "cdc: the publication of the tables (created for table.whitelist when missing); default sluice_<connector>.",
            ),
            plugin_key(
                "snapshot.mode",
                KeyType::Choice(&["initial", "never"]),
                Some("initial"),
                "cdc: initial writes the tables' rows (op r) before streaming changes, when the connector has no position yet; never streams changes only.",
            ),
        ],
    ],
    check: postgres_source_check,
    max_tasks: tables_tasks,
};

/// `http://host:port[/]` as `host:port` (port 9200 when none; TLS is not built in).
pub fn http_host(url: &str, default_port: u16) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("'{url}': only http:// addresses (no TLS)"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("'{url}': expected http://host:port"));
    }
    Ok(if host.contains(':') { host.to_string() } else { format!("{host}:{default_port}") })
}

fn opensearch_check(c: &ConnectorConfig) -> Result<(), ConnectError> {
    for url in crate::config::list(c.get("connection.url").unwrap_or_default()) {
        http_host(&url, 9200).map_err(|why| ConnectError::config("connection.url", why))?;
    }
    Ok(())
}

pub const OPENSEARCH_SINK: Plugin = Plugin {
    class: "io.confluent.connect.elasticsearch.ElasticsearchSinkConnector",
    aliases: &["opensearch-sink", "ElasticsearchSinkConnector"],
    kind: Kind::Sink,
    doc: "Writes records as documents of OpenSearch or Elasticsearch through the _bulk API: the index is the topic (lower-cased), the document id the key, so a batch written again rewrites the same documents; a tombstone deletes its document; 429 and 5xx answers are retried with backoff; documents the index refuses (mapping errors) fail the task or go to the dead-letter topic.",
    keys: &[&[
        plugin_required(
            "connection.url",
            KeyType::List,
            "http://host:port of the nodes (comma-separated; the next is tried when one fails).",
        ),
        plugin_key("connection.username", KeyType::String, Some(""), "Basic authentication user."),
        plugin_key("connection.password", KeyType::String, Some(""), "Basic authentication password."),
        plugin_key(
            "key.ignore",
            KeyType::Bool,
            Some("false"),
            "Ids from topic+partition+offset instead of the key (each record its own document).",
        ),
        plugin_key(
            "write.method",
            KeyType::Choice(&["insert", "upsert"]),
            Some("insert"),
            "insert: index the whole document; upsert: merge its fields into the existing document.",
        ),
        plugin_key(
            "behavior.on.null.values",
            KeyType::Choice(&["delete", "ignore", "fail"]),
            Some("delete"),
            "What a tombstone does (Confluent's default is fail; deleting keeps a compacted topic's index in step).",
        ),
        plugin_key(
            "behavior.on.malformed.documents",
            KeyType::Choice(&["fail", "warn", "ignore"]),
            Some("fail"),
            "A document the index refuses: fail (the task fails, or with errors.tolerance=all it goes to the dead-letter topic), warn (logged and skipped), ignore (skipped).",
        ),
        plugin_key(
            "batch.size",
            KeyType::Int { min: 1, max: 100_000 },
            Some("2000"),
            "Most documents per _bulk request.",
        ),
        plugin_key(
            "max.retries",
            KeyType::Int { min: 0, max: 1000 },
            Some("5"),
            "Retries of a request or of items answered 429 or 5xx, before the write fails.",
        ),
        plugin_key(
            "retry.backoff.ms",
            KeyType::Int { min: 0, max: 600_000 },
            Some("100"),
            "The first pause before a retry; doubled each time, 30 s at most.",
        ),
        plugin_key("connection.timeout.ms", KeyType::Int { min: 1, max: 600_000 }, Some("1000"), "Connecting."),
        plugin_key("read.timeout.ms", KeyType::Int { min: 1, max: 3_600_000 }, Some("3000"), "Waiting for an answer."),
    ]],
    check: opensearch_check,
    max_tasks: any_tasks,
};

fn parquet_check(c: &ConnectorConfig) -> Result<(), ConnectError> {
    let url = c.get("store.url").unwrap_or_default();
    if let Some(rest) = url.strip_prefix("s3://") {
        if rest.split('/').next().unwrap_or_default().is_empty() {
            return Err(ConnectError::config(
                "store.url",
                format!("'{url}': expected s3://bucket or s3://bucket/prefix"),
            ));
        }
        match c.get("s3.endpoint").unwrap_or_default() {
            "" => {
                return Err(ConnectError::config(
                    "s3.endpoint",
                    "required with an s3:// store.url: the http://host:port of the S3-compatible store",
                ));
            }
            e => {
                http_host(e, 80).map_err(|why| ConnectError::config("s3.endpoint", why))?;
            }
        }
    } else if url.contains("://") && !url.starts_with("file://") {
        return Err(ConnectError::config(
            "store.url",
            format!("'{url}': a local directory (a path or file:///path) or s3://bucket[/prefix]"),
        ));
    }
    Ok(())
}

pub const PARQUET_SINK: Plugin = Plugin {
    class: "io.sluice.connect.parquet.ParquetSinkConnector",
    aliases: &["parquet-sink", "ParquetSinkConnector"],
    kind: Kind::Sink,
    doc: "Writes records as Apache Parquet files, a series per topic-partition named <topic>+<partition>+<first offset>+<last offset>.parquet under <topics.dir>/<topic>/partition=<p>/, to a directory or an S3-compatible object store, exactly once: each file appears whole (a single PUT, or a local write renamed into place), the group's commits never pass the files, and a task resumes after the last file. Columns from the value's Connect schema or its JSON fields.",
    keys: &[&[
        plugin_required(
            "store.url",
            KeyType::String,
            "Where the files go: a directory (a path or file:///path), or s3://bucket[/prefix] of an S3-compatible object store.",
        ),
        plugin_key("topics.dir", KeyType::String, Some("topics"), "The directory of the topics inside store.url."),
        plugin_key(
            "s3.endpoint",
            KeyType::String,
            Some(""),
            "http://host:port of the S3-compatible store, for an s3:// store.url (plain HTTP: no TLS in this build).",
        ),
        plugin_key("s3.region", KeyType::String, Some("us-east-1"), "The region requests are signed for."),
        plugin_key(
            "s3.path.style.access.enabled",
            KeyType::Bool,
            Some("true"),
            "Address the bucket in the path (endpoint/bucket/key) rather than as a host name (bucket.endpoint/key).",
        ),
        plugin_key(
            "aws.access.key.id",
            KeyType::String,
            Some(""),
            "The access key (empty: AWS_ACCESS_KEY_ID of the runner's environment).",
        ),
        plugin_key(
            "aws.secret.access.key",
            KeyType::String,
            Some(""),
            "The secret key (empty: AWS_SECRET_ACCESS_KEY of the runner's environment).",
        ),
        plugin_key(
            "flush.size",
            KeyType::Int { min: 1, max: 10_000_000 },
            Some("1000"),
            "Records per file (a deterministic rotation: a task taking a partition over writes the same files).",
        ),
        plugin_key(
            "rotate.size.bytes",
            KeyType::Int { min: 0, max: 1 << 40 },
            Some("0"),
            "Also write the file once its records' JSON reaches this many bytes (0: no limit).",
        ),
        plugin_key(
            "rotate.interval.ms",
            KeyType::Int { min: 0, max: 86_400_000 },
            Some("0"),
            "Also write the file this long after its first record (0: never by time).",
        ),
        plugin_key(
            "parquet.codec",
            KeyType::Choice(&["snappy", "gzip", "zstd", "lz4", "none"]),
            Some("snappy"),
            "The compression of the column chunks.",
        ),
    ]],
    check: parquet_check,
    max_tasks: any_tasks,
};

/// Every class this build runs.
pub const PLUGINS: &[&Plugin] =
    &[&FILE_SOURCE, &FILE_SINK, &POSTGRES_SOURCE, &POSTGRES_SINK, &OPENSEARCH_SINK, &PARQUET_SINK];

/// The plugin a class name or alias names.
pub fn find(name: &str) -> Option<&'static Plugin> {
    PLUGINS.iter().copied().find(|p| p.class == name || p.aliases.contains(&name))
}

/// The short names, for messages.
pub fn names() -> Vec<&'static str> {
    PLUGINS.iter().map(|p| p.aliases.first().copied().unwrap_or(p.class)).collect()
}
