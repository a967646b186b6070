//! Statements and records run in memory, no cluster: each persistent query in a Streams
//! [`TestDriver`], records routed between queries through their topics. What the
//! query-validation tests use, and what a user can test statements with.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use serde_json::Value as Json;
use sluice_streams::TestDriver;
use sluice_streams::topology::RawRecord;

use crate::engine::{Engine, Outcome};
use crate::format::{Format, from_json, to_json};
use crate::plan::{SourceDef, Window, split_window};
use crate::types::{Column, Row, Value};
use crate::{SqlError, parse};

/// A record on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp: i64,
}

/// The engine and its queries' drivers.
#[derive(Default)]
pub struct Harness {
    pub engine: Engine,
    drivers: BTreeMap<String, (TestDriver, Vec<String>, String)>,
    topics: BTreeMap<String, Vec<TopicRecord>>,
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs statements; persistent queries start, inserted values are produced.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<Outcome>, SqlError> {
        let mut outcomes = Vec::new();
        for p in parse(sql)? {
            let out = self.engine.execute(&p)?;
            match &out {
                Outcome::Started { id, .. } => {
                    let q = self.engine.query(id).ok_or_else(|| SqlError::NotFound(id.clone()))?;
                    let sink = self.engine.source(&q.sink).ok_or_else(|| SqlError::NotFound(q.sink.clone()))?.clone();
                    let reads: Vec<String> = q
                        .plan
                        .sources()
                        .iter()
                        .filter_map(|s| self.engine.source(s))
                        .map(|s| s.topic.clone())
                        .collect();
                    let driver =
                        TestDriver::new(q.topology(&sink), id).map_err(|e| SqlError::Invalid(e.to_string()))?;
                    self.drivers.insert(id.clone(), (driver, reads, sink.topic.clone()));
                }
                Outcome::Insert { topic, key, value, timestamp } => {
                    let r = TopicRecord { key: key.clone(), value: value.clone(), timestamp: timestamp.unwrap_or(0) };
                    self.produce(topic, r).map_err(SqlError::Invalid)?;
                }
                Outcome::Terminated(ids) => {
                    for id in ids {
                        self.drivers.remove(id);
                    }
                }
                _ => {}
            }
            outcomes.push(out);
        }
        Ok(outcomes)
    }

    /// Appends a record to `topic` and runs it through every query reading it, and their
    /// outputs through the queries reading those.
    pub fn produce(&mut self, topic: &str, record: TopicRecord) -> Result<(), String> {
        let mut queue = VecDeque::from([(topic.to_string(), record)]);
        while let Some((topic, r)) = queue.pop_front() {
            self.topics.entry(topic.clone()).or_default().push(r.clone());
            for (driver, reads, sink) in self.drivers.values_mut() {
                if !reads.contains(&topic) {
                    continue;
                }
                let raw = RawRecord {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    timestamp: r.timestamp,
                    headers: Vec::new(),
                };
                driver.pipe_raw(&topic, raw).map_err(|e| e.to_string())?;
                let outs = driver.read::<Option<Bytes>, Option<Bytes>>(sink).map_err(|e| e.to_string())?;
                for o in outs {
                    queue.push_back((sink.clone(), TopicRecord { key: o.key, value: o.value, timestamp: o.timestamp }));
                }
            }
        }
        Ok(())
    }

    /// The records on `topic` so far.
    pub fn records(&self, topic: &str) -> &[TopicRecord] {
        self.topics.get(topic).map_or(&[], |v| v.as_slice())
    }

    /// Runs a pull query: its column names and rows.
    pub fn pull(&self, sql: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), SqlError> {
        let mut parsed = parse(sql)?;
        let crate::ast::Statement::Select(q) = parsed.remove(0).statement else {
            return Err(SqlError::Invalid("not a query".into()));
        };
        let Outcome::Pull(pull) = self.engine.select(&q)? else {
            return Err(SqlError::Invalid("not a pull query: it reads a stream or ends with EMIT".into()));
        };
        let Some((query, store, _)) = &pull.writer else {
            return Err(SqlError::Invalid(format!("{} is not materialized by a query here", pull.table.name)));
        };
        if pull.table.window.is_some() {
            return Err(SqlError::Invalid(
                "the in-memory harness reads no windowed stores: pull from the topic".into(),
            ));
        }
        let (driver, _, _) =
            self.drivers.get(query).ok_or_else(|| SqlError::NotFound(format!("query {query} is not running")))?;
        let entries = driver.store::<Row, Row>(store).map_err(|e| SqlError::Invalid(e.to_string()))?;
        let rows = pull.select(pull.from_store(entries));
        Ok((pull.columns.clone(), rows))
    }

    /// A source's record as JSON key and value, for tests: the key's single column bare or
    /// an object of key columns, the value an object of columns.
    pub fn encode_json(&self, topic: &str, key: &Json, value: &Json) -> Result<(Option<Bytes>, Option<Bytes>), String> {
        let s = self.reader_of(topic)?;
        let key_cols: Vec<&Column> = s.schema.keys().collect();
        let key = match key {
            Json::Null => None,
            // A keyless source's records may still carry a key: its JSON text.
            k if key_cols.is_empty() => Some(Bytes::from(k.to_string())),
            k => json_to_bytes(k, &key_cols, s.key_format, true)?,
        };
        let value_cols: Vec<&Column> = s.schema.values().collect();
        let value = match value {
            Json::Null => None,
            Json::String(text) if s.value_format == Format::Delimited => Some(Bytes::from(text.clone())),
            v => json_to_bytes(v, &value_cols, s.value_format, false)?,
        };
        Ok((key, value))
    }

    /// A record of `topic` as JSON (key, value, window).
    pub fn decode_json(&self, topic: &str, r: &TopicRecord) -> Result<(Json, Json, Window), String> {
        let s = self
            .engine
            .sources()
            .find(|s| s.topic == topic && s.writer.is_some())
            .or_else(|| self.engine.sources().find(|s| s.topic == topic))
            .ok_or_else(|| format!("no stream or table has topic {topic}"))?;
        let key_cols = s.encoded_key_cols();
        let (mut key, mut window) = (Json::Null, None);
        if let Some(k) = &r.key {
            let (body, w) = split_window(k, s.window)?;
            window = w;
            let vals = s.key_format.decode(body, &key_cols, true)?;
            key = if vals.len() == 1 { to_json(&vals[0]) } else { object(&key_cols, &vals) };
        }
        let value = match &r.value {
            None => Json::Null,
            Some(v) if s.value_format == Format::Delimited => Json::String(String::from_utf8_lossy(v).into_owned()),
            Some(v) => {
                let cols: Vec<&Column> = s.schema.values().collect();
                object(&cols, &s.value_format.decode(v, &cols, false)?)
            }
        };
        Ok((key, value, window))
    }

    fn reader_of(&self, topic: &str) -> Result<&SourceDef, String> {
        self.engine
            .sources()
            .find(|s| s.topic == topic && s.writer.is_none())
            .or_else(|| self.engine.sources().find(|s| s.topic == topic))
            .ok_or_else(|| format!("no stream or table reads topic {topic}"))
    }
}

fn object(cols: &[&Column], vals: &[Value]) -> Json {
    Json::Object(cols.iter().zip(vals).map(|(c, v)| (c.name.clone(), to_json(v))).collect())
}

fn json_to_bytes(v: &Json, cols: &[&Column], format: Format, key: bool) -> Result<Option<Bytes>, String> {
    let vals: Vec<Value> = if cols.len() == 1 && (key || !v.is_object()) {
        vec![from_json(v, &cols[0].ty)?]
    } else {
        let Json::Object(m) = v else { return Err(format!("{v} is not an object of columns")) };
        cols.iter()
            .map(|c| {
                let x = m.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.name)).map(|(_, x)| x);
                x.map_or(Ok(Value::Null), |x| from_json(x, &c.ty))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(format.encode(&vals, cols, key))
}
