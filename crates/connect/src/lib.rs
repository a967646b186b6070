//! Sluice Connect: what connectors are made of, shared by the gateway (which validates and
//! stores connector configs) and the connect runners (which run their tasks).
//!
//! The data model is Kafka Connect's, carried as JSON values: a record's key and value are
//! [`Data`] (a value and, when known, its Kafka Connect schema), turned into bytes and back
//! by [`convert`]ers and reshaped by [`transform`]s, with Kafka Connect's names and meaning
//! so that existing connector configs read the same here.

pub mod config;
pub mod convert;
pub mod pgoutput;
pub mod plugins;
pub mod store;
pub mod transform;

use bytes::Bytes;
use serde_json::Value;

/// Why a connector, converter or transform refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A config key is unknown, missing or has a bad value; names the key.
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    /// A record could not be converted or transformed (it goes to the dead-letter topic
    /// when errors.tolerance=all).
    #[error("{0}")]
    Data(String),
}

impl ConnectError {
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { key: key.into(), reason: reason.into() }
    }
}

/// A key or value: a JSON value (`Null` for none) and, when known, its Kafka Connect schema
/// (the `schema` object of JsonConverter's envelope: `{"type": "struct", "fields": [...],
/// "optional": false, "name": ...}`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Data {
    pub schema: Option<Value>,
    pub value: Value,
}

impl Data {
    /// A value without a schema.
    pub fn plain(value: Value) -> Self {
        Self { schema: None, value }
    }
}

/// A record as connectors and transforms see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectRecord {
    pub topic: String,
    /// Set by sinks (where it was read) and by sources that choose one.
    pub partition: Option<u32>,
    /// Where a sink read it; `None` for a source's records.
    pub offset: Option<i64>,
    pub key: Data,
    pub value: Data,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
}
