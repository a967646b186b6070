//! Source tasks, exactly once: whatever a source reads from (an [`Origin`]), each batch of its
//! records and the source offsets the batch reaches are written in one transaction under the
//! task's transactional id `connect-<name>-<task>` (offsets to `__connect_offsets`, laid out
//! as Kafka Connect does: key `["<connector>", {<source partition>}]`, value the offset). A
//! task starts from its offsets read back committed, so a restart or a move to another runner
//! resumes exactly after the last batch written, and its transactional init fences an old
//! owner still running (KIP-618).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_connect::config::ConnectorConfig;
use sluice_connect::store;
use sluice_connect::{ConnectRecord, Data};
use sluice_proto::v1::{IsolationLevel, OffsetSpec};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};

use crate::metrics;
use crate::tasks::{Ctx, IDLE, Pipeline, create_missing, ensure_topic};

/// What a source task reads: the system outside, as partitions with offsets.
pub(crate) trait Origin {
    /// The source partitions this task reads (Kafka Connect's partition maps, such as
    /// `{"filename": "/var/log/app.log"}`).
    fn partitions(&self) -> Vec<Value>;
    /// Starts from the offsets committed for [`Origin::partitions`], in their order (`None`:
    /// nothing committed yet).
    async fn open(&mut self, committed: Vec<Option<Value>>) -> Result<(), String>;
    /// What is new, with the offset each partition it touches reaches (an index into
    /// [`Origin::partitions`]). An empty batch: nothing new yet.
    async fn read(&mut self) -> Result<Batch, String>;
    /// The last batch read is committed (records and offsets).
    async fn committed(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The pause after a read that found nothing.
    fn idle(&self) -> Duration {
        IDLE
    }
}

#[derive(Default)]
pub(crate) struct Batch {
    pub records: Vec<ConnectRecord>,
    pub offsets: Vec<(usize, Value)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.offsets.is_empty()
    }
}

/// A source offset's key and its partition of `__connect_offsets`.
fn offset_key(connector: &str, partition: &Value) -> (Bytes, u32) {
    let key = Bytes::from(json!([connector, partition]).to_string());
    let p = sluice_core::partitioner::partition_for_key(&key, store::OFFSETS_PARTITIONS);
    (key, p)
}

/// The offsets last committed under `keys`, read back committed only.
async fn committed_offsets(client: &Client, keys: &[(Bytes, u32)]) -> Result<HashMap<Bytes, Value>, String> {
    let mut by_partition: BTreeMap<u32, Vec<&Bytes>> = BTreeMap::new();
    for (k, p) in keys {
        by_partition.entry(*p).or_default().push(k);
    }
    let mut found = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (partition, wanted) in by_partition {
        // Settled: a partition without a leader yet has an unknown end, not an empty log
        // (taken for empty, the offsets committed before would be missed and records
        // produced again).
        let end = client
            .settled_offsets(store::CONNECT_OFFSETS_TOPIC, vec![partition], OffsetSpec::Latest, 0)
            .await
            .map_err(|e| e.to_string())?
            .first()
            .map_or(0, |o| o.offset.max(0));
        let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..Default::default() };
        let mut c =
            Consumer::assign(client.clone(), store::CONNECT_OFFSETS_TOPIC, &[partition], StartFrom::Earliest, cfg)
                .await
                .map_err(|e| e.to_string())?;
        while c.positions().get(&partition).copied().unwrap_or(0) < end {
            if tokio::time::Instant::now() > deadline {
                return Err("reading the committed source offsets took more than 30 s".into());
            }
            for r in c.poll(Duration::from_millis(500)).await.map_err(|e| e.to_string())? {
                let Some(key) = r.key.as_ref().filter(|k| wanted.contains(k)) else { continue };
                match r.value.as_deref().and_then(|v| serde_json::from_slice::<Value>(v).ok()) {
                    Some(v) => found.insert(key.clone(), v),
                    None => found.remove(key),
                };
            }
        }
    }
    Ok(found)
}

/// Runs a source task over `origin` until the task is stopped.
pub(crate) async fn run_source(ctx: &Ctx, cfg: &ConnectorConfig, mut origin: impl Origin) -> Result<(), String> {
    let pipeline = Pipeline::new(cfg)?;
    ensure_topic(&ctx.client, store::CONNECT_OFFSETS_TOPIC, store::OFFSETS_PARTITIONS)
        .await
        .map_err(|e| e.to_string())?;
    let tid = format!("connect-{}-{}", ctx.id.connector, ctx.id.task);
    let producer = Producer::transactional(ctx.client.clone(), &tid, ProducerConfig::default())
        .await
        .map_err(|e| format!("transactional id {tid}: {e}"))?;
    let keys: Vec<(Bytes, u32)> = origin.partitions().iter().map(|p| offset_key(&ctx.id.connector, p)).collect();
    let committed = committed_offsets(&ctx.client, &keys).await?;
    origin.open(keys.iter().map(|(k, _)| committed.get(k).cloned()).collect()).await?;
    let attrs = metrics::task(&ctx.id.connector, ctx.id.task);
    // Topics written to that are missing are created (KIP-158's defaults); those seen exist.
    let int = |k: &str, d: i64| cfg.int(k).unwrap_or(d).max(1) as u32;
    let new_topics = (int("topic.creation.default.partitions", 1), int("topic.creation.default.replication.factor", 3));
    let mut topics: HashSet<String> = HashSet::new();
    while !ctx.stopped() {
        if ctx.paused() {
            ctx.idle(IDLE).await;
            continue;
        }
        let batch = origin.read().await?;
        if batch.is_empty() {
            ctx.idle(origin.idle()).await;
            continue;
        }
        metrics::metrics().records.add(batch.records.len() as u64, &metrics::with(attrs.clone(), "direction", "in"));
        let mut out = Vec::with_capacity(batch.records.len());
        for record in batch.records {
            let record = match pipeline.transform(record) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) if pipeline.tolerate => continue,
                Err(e) => return Err(e),
            };
            out.push(ProducerRecord {
                topic: record.topic,
                partition: record.partition,
                key: pipeline.key.to_bytes(&record.key).map_err(|e| e.to_string())?,
                value: pipeline.value.to_bytes(&record.value).map_err(|e| e.to_string())?,
                headers: record.headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        for r in &out {
            if !topics.contains(&r.topic) {
                create_missing(&ctx.client, &r.topic, new_topics.0, new_topics.1, HashMap::new())
                    .await
                    .map_err(|e| format!("creating topic '{}': {e}", r.topic))?;
                topics.insert(r.topic.clone());
            }
        }
        let sent_records = out.len() as u64;
        producer.begin_transaction().await.map_err(|e| e.to_string())?;
        let sent: Result<(), String> = async {
            for r in out {
                producer.send(r).await.map_err(|e| e.to_string())?;
            }
            for (i, offset) in batch.offsets {
                let Some((key, partition)) = keys.get(i) else {
                    return Err(format!("an offset for source partition {i}, which the task does not read"));
                };
                let offset = ProducerRecord {
                    topic: store::CONNECT_OFFSETS_TOPIC.into(),
                    partition: Some(*partition),
                    key: Some(key.clone()),
                    value: Some(Bytes::from(offset.to_string())),
                    ..Default::default()
                };
                producer.send(offset).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        .await;
        match sent {
            Ok(()) => {
                producer.commit_transaction().await.map_err(|e| e.to_string())?;
                metrics::metrics().records.add(sent_records, &metrics::with(attrs.clone(), "direction", "out"));
                origin.committed().await?;
            }
            Err(e) => {
                let _ = producer.abort_transaction().await;
                return Err(e);
            }
        }
    }
    producer.close().await;
    Ok(())
}

/// file-source: whole lines from a byte position.
pub(crate) struct FileOrigin {
    file: String,
    topic: String,
    batch: usize,
    position: u64,
    reader: Option<tokio::io::BufReader<tokio::fs::File>>,
    /// A line still being written: what was read of it, completed by the next read.
    line: Vec<u8>,
}

impl FileOrigin {
    pub(crate) fn new(cfg: &ConnectorConfig) -> Self {
        Self {
            file: cfg.get("file").unwrap_or_default().to_string(),
            topic: cfg.get("topic").unwrap_or_default().to_string(),
            batch: cfg.int("batch.size").unwrap_or(2000).max(1) as usize,
            position: 0,
            reader: None,
            line: Vec::new(),
        }
    }
}

impl Origin for FileOrigin {
    fn partitions(&self) -> Vec<Value> {
        vec![json!({ "filename": self.file })]
    }

    async fn open(&mut self, committed: Vec<Option<Value>>) -> Result<(), String> {
        self.position = committed.first().and_then(|o| o.as_ref()?.get("position")?.as_u64()).unwrap_or(0);
        Ok(())
    }

    async fn read(&mut self) -> Result<Batch, String> {
        let file = &self.file;
        let r = match self.reader.as_mut() {
            Some(r) => r,
            None => match tokio::fs::File::open(file).await {
                Ok(mut f) => {
                    f.seek(std::io::SeekFrom::Start(self.position)).await.map_err(|e| format!("{file}: {e}"))?;
                    self.reader.insert(tokio::io::BufReader::new(f))
                }
                // Not there yet: a file-source waits for its file, as Kafka's does.
                Err(_) => return Ok(Batch::default()),
            },
        };
        let mut records = Vec::new();
        while records.len() < self.batch {
            let n = r.read_until(b'\n', &mut self.line).await.map_err(|e| format!("{file}: {e}"))?;
            if n == 0 || self.line.last() != Some(&b'\n') {
                break;
            }
            self.position += self.line.len() as u64;
            let text = String::from_utf8_lossy(&self.line[..self.line.len() - 1]).trim_end_matches('\r').to_string();
            self.line.clear();
            records.push(ConnectRecord {
                topic: self.topic.clone(),
                value: Data { schema: Some(json!({"type": "string", "optional": false})), value: text.into() },
                timestamp_ms: sluice_core::settings::now_ms(),
                ..Default::default()
            });
        }
        if records.is_empty() {
            return Ok(Batch::default());
        }
        Ok(Batch { records, offsets: vec![(0, json!({ "position": self.position }))] })
    }
}
