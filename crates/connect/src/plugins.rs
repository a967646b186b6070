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
    /// Its own keys (the common ones are in [`crate::config`]).
    pub keys: &'static [ConfigKey],
    /// Checks between its keys that a key's type cannot express.
    pub check: fn(&ConnectorConfig) -> Result<(), ConnectError>,
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
    keys: &[
        plugin_required("file", KeyType::String, "The file read, on the runner's machine."),
        plugin_required("topic", KeyType::String, "The topic written."),
        plugin_key(
            "batch.size",
            KeyType::Int { min: 1, max: 100_000 },
            Some("2000"),
            "Most lines read before they are written out.",
        ),
    ],
    check: one_task,
};

pub const FILE_SINK: Plugin = Plugin {
    class: "org.apache.kafka.connect.file.FileStreamSinkConnector",
    aliases: &["file-sink", "FileStreamSink"],
    kind: Kind::Sink,
    doc: "Appends each record to a file as a line, in the chosen format.",
    keys: &[
        plugin_required("file", KeyType::String, "The file appended to, on the runner's machine."),
        plugin_key(
            "format",
            KeyType::Choice(&["value", "key-value", "json"]),
            Some("value"),
            "value: the value's text; key-value: key, a tab, value; json: an object with topic, partition, offset, timestamp, key and value.",
        ),
    ],
    check: no_check,
};

/// Every class this build runs.
pub const PLUGINS: &[&Plugin] = &[&FILE_SOURCE, &FILE_SINK];

/// The plugin a class name or alias names.
pub fn find(name: &str) -> Option<&'static Plugin> {
    PLUGINS.iter().copied().find(|p| p.class == name || p.aliases.contains(&name))
}

/// The short names, for messages.
pub fn names() -> Vec<&'static str> {
    PLUGINS.iter().map(|p| p.aliases.first().copied().unwrap_or(p.class)).collect()
}
