//! parquet-sink (the role of Confluent's HDFS and S3 sinks): records as Apache Parquet files,
//! one series per topic-partition, exactly once.
//!
//! Records are buffered per partition and written as a file when `flush.size` records or
//! `rotate.size.bytes` bytes are buffered, or `rotate.interval.ms` after the file's first
//! record, as `<topics.dir>/<topic>/partition=<p>/<topic>+<p>+<first offset>+<last offset>.parquet`
//! in a local directory or an S3-compatible bucket (`crate::s3`), in one put: a file is there
//! whole or not at all. The group's commits never run ahead of the files
//! (only offsets below the open buffers are committed), and a task resumes each partition
//! after the last file's last offset, so a crash between a rename and a commit writes
//! nothing twice. Rotation by count is deterministic: a task that takes over a partition
//! writes the same files under the same names. Rotation by time or bytes is not, and a task
//! that lost its partition but writes on until it learns so can leave a file overlapping the
//! new owner's (Confluent's sinks have the same limit).
//!
//! Columns come from the record's Kafka Connect schema (JSON with schemas) or, without one,
//! from the first record's fields: integers, floats, booleans, strings, bytes, and Connect's
//! Timestamp as themselves; structs, arrays and maps as JSON text. A record whose fields or
//! types differ starts a new file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use sluice_connect::ConnectRecord;
use sluice_connect::config::ConnectorConfig;

use crate::tasks::{Ctx, Target, TopicPartition, WriteError, run_sink};

pub(crate) async fn sink(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<(), String> {
    let store = crate::s3::open(cfg)?;
    let int = |k: &str| cfg.int(k).filter(|v| *v > 0);
    let codec = match cfg.get("parquet.codec").unwrap_or("snappy") {
        "none" => Compression::UNCOMPRESSED,
        "gzip" => Compression::GZIP(GzipLevel::default()),
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        "lz4" => Compression::LZ4_RAW,
        _ => Compression::SNAPPY,
    };
    let target = Files {
        store,
        topics_dir: cfg.get("topics.dir").unwrap_or("topics").trim_matches('/').to_string(),
        rotation: Rotation {
            records: int("flush.size").unwrap_or(1000) as usize,
            bytes: int("rotate.size.bytes").map(|b| b as usize),
            after: int("rotate.interval.ms").map(|ms| Duration::from_millis(ms as u64)),
        },
        props: WriterProperties::builder().set_compression(codec).build(),
        open: HashMap::new(),
        durable: BTreeMap::new(),
    };
    run_sink(ctx, cfg, target).await
}

/// A column: its name, type and whether it may be null.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    ty: DataType,
    nullable: bool,
}

/// The columns of a record's value, from its Connect schema or its JSON.
fn columns(r: &ConnectRecord) -> Result<Vec<Column>, String> {
    let Value::Object(fields) = &r.value.value else {
        return Err(format!("a Parquet row must be a struct (a JSON object), not {}", r.value.value));
    };
    match r.value.schema.as_ref().and_then(|s| s.get("fields")).and_then(Value::as_array) {
        Some(schema) => Ok(schema
            .iter()
            .map(|f| Column {
                name: f.get("field").and_then(Value::as_str).unwrap_or_default().to_string(),
                ty: match (f.get("type").and_then(Value::as_str), f.get("name").and_then(Value::as_str)) {
                    (Some("int64"), Some("org.apache.kafka.connect.data.Timestamp")) => {
                        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
                    }
                    (Some("int8"), _) => DataType::Int8,
                    (Some("int16"), _) => DataType::Int16,
                    (Some("int32"), _) => DataType::Int32,
                    (Some("int64"), _) => DataType::Int64,
                    (Some("float32"), _) => DataType::Float32,
                    (Some("float64"), _) => DataType::Float64,
                    (Some("boolean"), _) => DataType::Boolean,
                    (Some("bytes"), _) => DataType::Binary,
                    _ => DataType::Utf8,
                },
                nullable: f.get("optional").and_then(Value::as_bool).unwrap_or(true),
            })
            .collect()),
        None => Ok(fields
            .iter()
            .map(|(name, v)| Column {
                name: name.clone(),
                ty: match v {
                    Value::Bool(_) => DataType::Boolean,
                    Value::Number(n) if n.is_i64() || n.is_u64() => DataType::Int64,
                    Value::Number(_) => DataType::Float64,
                    _ => DataType::Utf8,
                },
                nullable: true,
            })
            .collect()),
    }
}

/// The Arrow array of column `c` over `rows`.
fn array(c: &Column, rows: &[Value]) -> Result<ArrayRef, String> {
    let cells = rows.iter().map(|r| r.get(&c.name).filter(|v| !v.is_null()));
    let bad = |v: &Value| format!("field '{}' is {v}, not {}", c.name, c.ty);
    macro_rules! build {
        ($builder:expr, $get:expr) => {{
            let mut b = $builder;
            for cell in cells {
                match cell {
                    None if c.nullable => b.append_null(),
                    None => return Err(format!("field '{}' is null, and not optional", c.name)),
                    Some(v) => b.append_value($get(v).ok_or_else(|| bad(v))?),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let int = |v: &Value| v.as_i64();
    Ok(match &c.ty {
        DataType::Int8 => build!(Int8Builder::new(), |v: &Value| int(v).and_then(|i| i8::try_from(i).ok())),
        DataType::Int16 => build!(Int16Builder::new(), |v: &Value| int(v).and_then(|i| i16::try_from(i).ok())),
        DataType::Int32 => build!(Int32Builder::new(), |v: &Value| int(v).and_then(|i| i32::try_from(i).ok())),
        DataType::Int64 => build!(Int64Builder::new(), int),
        DataType::Float32 => build!(Float32Builder::new(), |v: &Value| v.as_f64().map(|f| f as f32)),
        DataType::Float64 => build!(Float64Builder::new(), Value::as_f64),
        DataType::Boolean => build!(BooleanBuilder::new(), Value::as_bool),
        DataType::Timestamp(..) => build!(TimestampMillisecondBuilder::new().with_timezone("UTC"), int),
        DataType::Binary => {
            build!(BinaryBuilder::new(), |v: &Value| v.as_str().and_then(sluice_connect::convert::base64_decode))
        }
        _ => build!(StringBuilder::new(), |v: &Value| Some(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
    })
}

/// The records of one partition waiting for their file.
struct Open {
    columns: Vec<Column>,
    rows: Vec<Value>,
    first: i64,
    last: i64,
    bytes: usize,
    since: Instant,
}

struct Files {
    store: Arc<dyn ObjectStore>,
    topics_dir: String,
    rotation: Rotation,
    props: WriterProperties,
    open: HashMap<TopicPartition, Open>,
    /// Per partition, the offset after the last record in a file (or handled without one).
    durable: BTreeMap<TopicPartition, i64>,
}

impl Files {
    fn dir(&self, topic: &str, partition: u32) -> String {
        format!("{}/{topic}/partition={partition}", self.topics_dir)
    }

    /// Writes the open file of `tp`, aside then renamed.
    async fn flush(&mut self, tp: &TopicPartition) -> Result<(), WriteError> {
        let Some(open) = self.open.remove(tp) else { return Ok(()) };
        let failed = WriteError::Failed;
        let schema = Arc::new(Schema::new(
            open.columns.iter().map(|c| Field::new(&c.name, c.ty.clone(), c.nullable)).collect::<Vec<_>>(),
        ));
        let arrays = open.columns.iter().map(|c| array(c, &open.rows)).collect::<Result<Vec<_>, _>>();
        let batch = arrays
            .and_then(|a| RecordBatch::try_new(schema.clone(), a).map_err(|e| e.to_string()))
            .map_err(|e| failed(format!("building a Parquet file of '{}' partition {}: {e}", tp.0, tp.1)))?;
        let mut bytes = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut bytes, schema, Some(self.props.clone())).map_err(|e| failed(e.to_string()))?;
        w.write(&batch).map_err(|e| failed(e.to_string()))?;
        w.close().map_err(|e| failed(e.to_string()))?;
        let dir = self.dir(&tp.0, tp.1);
        let name = format!("{}+{}+{:020}+{:020}.parquet", tp.0, tp.1, open.first, open.last);
        // One put: an S3 object appears whole, a local file is written aside and renamed.
        let fin = Path::from(format!("{dir}/{name}"));
        self.store.put(&fin, bytes.into()).await.map_err(|e| failed(format!("{fin}: {e}")))?;
        tracing::debug!(file = %fin, rows = open.rows.len(), "parquet file written");
        self.durable.insert(tp.clone(), open.last + 1);
        Ok(())
    }
}

/// When a file is written: after so many records, bytes, or so long.
#[derive(Clone, Copy)]
struct Rotation {
    records: usize,
    bytes: Option<usize>,
    after: Option<Duration>,
}

impl Rotation {
    fn due(self, o: &Open) -> bool {
        o.rows.len() >= self.records
            || self.bytes.is_some_and(|b| o.bytes >= b)
            || self.after.is_some_and(|t| o.since.elapsed() >= t)
    }
}

impl Target for Files {
    async fn resume(&mut self, topic: &str, partition: u32) -> Result<Option<i64>, String> {
        // A partition taken (again) starts after its last file: what was buffered is gone.
        self.open.remove(&(topic.to_string(), partition));
        let dir = Path::from(self.dir(topic, partition));
        let listed = self.store.list_with_delimiter(Some(&dir)).await.map_err(|e| format!("{dir}: {e}"))?;
        let last = listed
            .objects
            .iter()
            .filter_map(|o| {
                let name = o.location.filename()?.strip_suffix(".parquet")?;
                name.rsplit('+').next()?.parse::<i64>().ok()
            })
            .max();
        Ok(last.map(|l| l + 1))
    }

    async fn write(
        &mut self,
        records: &[ConnectRecord],
        _next: &BTreeMap<TopicPartition, i64>,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let mut refused = Vec::new();
        for (i, r) in records.iter().enumerate() {
            // Tombstones have no row.
            if r.value.value.is_null() {
                continue;
            }
            let tp = (r.topic.clone(), r.partition.unwrap_or(0));
            let offset = r.offset.unwrap_or(0);
            let cols = match columns(r) {
                Ok(c) => c,
                Err(why) => {
                    refused.push((i, why));
                    continue;
                }
            };
            // Fields or types changed: the file so far is written, a new one begins.
            if self.open.get(&tp).is_some_and(|o| o.columns != cols) {
                self.flush(&tp).await?;
            }
            // Sizing a record means writing its JSON: only when a size limit asks for it.
            let size = if self.rotation.bytes.is_some() { r.value.value.to_string().len() } else { 0 };
            let o = self.open.entry(tp.clone()).or_insert_with(|| Open {
                columns: cols,
                rows: Vec::new(),
                first: offset,
                last: offset,
                bytes: 0,
                since: Instant::now(),
            });
            o.rows.push(r.value.value.clone());
            o.last = offset;
            o.bytes += size;
            if self.rotation.due(o) {
                self.flush(&tp).await?;
            }
        }
        Ok(refused)
    }

    fn committable(&mut self, handled: &BTreeMap<TopicPartition, i64>) -> BTreeMap<TopicPartition, i64> {
        let mut out = BTreeMap::new();
        for (tp, next) in handled {
            // Up to the open file's first record, or all handled when nothing waits.
            let upto = match self.open.get(tp) {
                Some(o) => o.first,
                None => *next,
            };
            let durable = self.durable.entry(tp.clone()).or_insert(upto);
            *durable = (*durable).max(upto);
            out.insert(tp.clone(), *durable);
        }
        out
    }

    fn assigned(&mut self, held: &std::collections::BTreeSet<TopicPartition>) {
        // A partition gone to another task: its buffer is that task's to write now.
        self.open.retain(|tp, _| held.contains(tp));
        self.durable.retain(|tp, _| held.contains(tp));
    }

    async fn tick(&mut self) -> Result<BTreeMap<TopicPartition, i64>, WriteError> {
        let rotation = self.rotation;
        let due: Vec<TopicPartition> =
            self.open.iter().filter(|(_, o)| rotation.due(o)).map(|(tp, _)| tp.clone()).collect();
        let mut flushed = BTreeMap::new();
        for tp in due {
            self.flush(&tp).await?;
            if let Some(d) = self.durable.get(&tp) {
                flushed.insert(tp, *d);
            }
        }
        Ok(flushed)
    }
}
