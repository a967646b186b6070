//! The tasks a runner runs: started and stopped as its share and the connectors' configs
//! change, each reporting its state in `__connect_status`.
//!
//! - Sources (file-source, postgres-source) run in [`crate::source`]: each batch and the
//!   position it reaches in one transaction, so nothing is lost or written twice.
//! - file-sink is a member of the consumer group `connect-<name>` (its tasks share the
//!   topics' partitions), appends each record as a line, makes the file durable, then
//!   commits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_client::consumer::{ConsumerConfig, ConsumerRecord};
use sluice_client::group::{GroupConfig, GroupConsumer};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};
use sluice_connect::ConnectRecord;
use sluice_connect::config::{self, ConnectorConfig};
use sluice_connect::convert::{self, Converter};
use sluice_connect::plugins::{FILE_SINK, FILE_SOURCE, OPENSEARCH_SINK, PARQUET_SINK, POSTGRES_SINK, POSTGRES_SOURCE};
use sluice_connect::store::{self, TargetState, TaskStatus};
use sluice_connect::transform::Transform;
use sluice_proto::v1::{Acks, IsolationLevel};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;
use crate::source::{FileOrigin, run_source};
use crate::worker::Configs;
pub(crate) use sluice_client::group::TopicPartition;

/// One task of one connector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub connector: String,
    pub task: u32,
}

/// How often an idle task looks again (a file that did not grow, a paused task).
pub(crate) const IDLE: Duration = Duration::from_millis(200);

/// A running task: how to stop or pause it, and what it was started with.
struct Handle {
    stop: watch::Sender<bool>,
    paused: watch::Sender<bool>,
    join: JoinHandle<()>,
    config: BTreeMap<String, String>,
    restarts: u64,
}

/// The tasks this runner runs now.
pub struct Running {
    client: Client,
    runner: String,
    tasks: BTreeMap<TaskId, Handle>,
}

impl Running {
    pub fn new(client: Client, runner: String) -> Self {
        Self { client, runner, tasks: BTreeMap::new() }
    }

    /// Runs exactly the tasks of `mine` whose connector exists, with its current config and
    /// target state: a task whose config or restart counter changed starts again.
    pub async fn apply(&mut self, mine: &[TaskId], configs: &Configs) {
        let wanted: HashMap<&TaskId, (&BTreeMap<String, String>, u64, TargetState)> = mine
            .iter()
            .filter_map(|t| {
                let r = configs.get(&t.connector)?;
                let restarts = r.restarts + r.task_restarts.get(&t.task).copied().unwrap_or(0);
                Some((t, (&r.config, restarts, r.target_state)))
            })
            .collect();
        let gone: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, h)| wanted.get(id).is_none_or(|(c, r, _)| **c != h.config || *r != h.restarts))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(h) = self.tasks.remove(&id) {
                stop(h).await;
            }
        }
        for (id, (config, restarts, state)) in wanted {
            let paused = state == TargetState::Paused;
            if let Some(h) = self.tasks.get(id) {
                h.paused.send_replace(paused);
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let (pause, pause_rx) = watch::channel(paused);
            let ctx = Ctx {
                client: self.client.clone(),
                runner: self.runner.clone(),
                id: id.clone(),
                raw: config.clone(),
                stop: stop_rx,
                paused: pause_rx,
            };
            // The span goes with the task's future: entered in it, it would follow whatever
            // else ran on the thread between its awaits.
            let span = tracing::info_span!("connect_task", connector = %id.connector, task = id.task);
            let join = tokio::spawn(tracing::Instrument::instrument(run(ctx), span));
            self.tasks.insert(id.clone(), Handle { stop, paused: pause, join, config: config.clone(), restarts });
        }
    }

    /// The tasks running here.
    pub fn ids(&self) -> Vec<TaskId> {
        self.tasks.keys().cloned().collect()
    }

    /// Stops every task (out of the group, or the runner stopping).
    pub async fn stop_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.tasks) {
            stop(h).await;
        }
    }
}

async fn stop(h: Handle) {
    h.stop.send_replace(true);
    // A task stops at its next step; one stuck in a call is abandoned after a while.
    let mut join = h.join;
    if tokio::time::timeout(Duration::from_secs(10), &mut join).await.is_err() {
        join.abort();
    }
}

/// What a task runs with.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    runner: String,
    pub(crate) id: TaskId,
    raw: BTreeMap<String, String>,
    stop: watch::Receiver<bool>,
    paused: watch::Receiver<bool>,
}

impl Ctx {
    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits `d`, or less when the task is stopped meanwhile.
    pub(crate) async fn idle(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn report(&self, state: &str, error: String) {
        let status = TaskStatus {
            state: state.to_string(),
            runner: self.runner.clone(),
            error,
            updated_ms: sluice_core::settings::now_ms(),
        };
        let mut keys = vec![store::status_key(&self.id.connector, self.id.task as i32)];
        // Task 0's runner speaks for the connector.
        if self.id.task == 0 {
            keys.push(store::status_key(&self.id.connector, -1));
        }
        if let Err(e) = ensure_topic(&self.client, store::CONNECT_STATUS_TOPIC, store::STATUS_PARTITIONS).await {
            tracing::warn!(error = %e, "cannot create the Connect status topic");
            return;
        }
        let producer = Producer::new(self.client.clone(), ProducerConfig { acks: Acks::All, ..Default::default() });
        for key in keys {
            let r = ProducerRecord {
                topic: store::CONNECT_STATUS_TOPIC.into(),
                key: Some(key),
                value: Some(store::encode(&status)),
                ..Default::default()
            };
            if let Ok(done) = producer.send(r).await {
                let _ = done.await;
            }
        }
        producer.close().await;
    }
}

/// Runs one task until it is stopped, reporting its state.
async fn run(ctx: Ctx) {
    let cfg = match config::validate(&ctx.raw) {
        Ok(c) => c,
        Err(errors) => {
            let why = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            ctx.report("FAILED", why).await;
            return;
        }
    };
    ctx.report(if ctx.paused() { "PAUSED" } else { "RUNNING" }, String::new()).await;
    let attrs = metrics::task(&ctx.id.connector, ctx.id.task);
    metrics::metrics().tasks.add(1, &attrs);
    let result = if cfg.plugin == &FILE_SOURCE {
        run_source(&ctx, &cfg, FileOrigin::new(&cfg)).await
    } else if cfg.plugin == &POSTGRES_SOURCE {
        crate::pgsource::source(&ctx, &cfg).await
    } else if cfg.plugin == &FILE_SINK {
        file_sink(&ctx, &cfg).await
    } else if cfg.plugin == &POSTGRES_SINK {
        crate::postgres::sink(&ctx, &cfg).await
    } else if cfg.plugin == &OPENSEARCH_SINK {
        crate::opensearch::sink(&ctx, &cfg).await
    } else if cfg.plugin == &PARQUET_SINK {
        crate::parquet::sink(&ctx, &cfg).await
    } else {
        Err(format!("connector class {} has no task implementation", cfg.plugin.class))
    };
    metrics::metrics().tasks.add(-1, &attrs);
    if let Err(why) = result
        && !ctx.stopped()
    {
        tracing::warn!(error = %why, "connect task failed");
        ctx.report("FAILED", why).await;
    }
}

/// The converters and transforms of a config, and what happens to records they refuse.
pub(crate) struct Pipeline {
    pub(crate) key: Box<dyn Converter>,
    pub(crate) value: Box<dyn Converter>,
    transforms: Vec<Box<dyn Transform>>,
    pub(crate) tolerate: bool,
    log: bool,
    log_messages: bool,
    retry_timeout: Option<Duration>,
    retry_delay_max: Duration,
}

impl Pipeline {
    pub(crate) fn new(cfg: &ConnectorConfig) -> Result<Self, String> {
        let conv = |side: &str| {
            let class = cfg.get(&format!("{side}.converter")).unwrap_or("json");
            let schemas = cfg.get(&format!("{side}.converter.schemas.enable")) == Some("true");
            convert::converter(class, schemas).map_err(|e| e.to_string())
        };
        Ok(Self {
            key: conv("key")?,
            value: conv("value")?,
            transforms: config::transforms(&cfg.raw).map_err(|e| e.to_string())?,
            tolerate: cfg.get("errors.tolerance") == Some("all"),
            log: cfg.get("errors.log.enable") == Some("true"),
            log_messages: cfg.get("errors.log.include.messages") == Some("true"),
            retry_timeout: match cfg.int("errors.retry.timeout").unwrap_or(0) {
                -1 => None,
                ms => Some(Duration::from_millis(ms.max(0) as u64)),
            },
            retry_delay_max: Duration::from_millis(cfg.int("errors.retry.delay.max.ms").unwrap_or(60_000).max(0) as u64),
        })
    }

    /// The pauses between tries of a failed operation: exponential up to
    /// errors.retry.delay.max.ms, for errors.retry.timeout (forever with -1).
    fn backoff(&self) -> Backoff {
        Backoff {
            start: tokio::time::Instant::now(),
            pause: Duration::from_millis(100),
            timeout: self.retry_timeout,
            max: self.retry_delay_max,
        }
    }

    pub(crate) fn transform(&self, mut r: ConnectRecord) -> Result<Option<ConnectRecord>, String> {
        for t in &self.transforms {
            match t.apply(r).map_err(|e| e.to_string())? {
                Some(next) => r = next,
                None => return Ok(None),
            }
        }
        Ok(Some(r))
    }
}

struct Backoff {
    start: tokio::time::Instant,
    pause: Duration,
    timeout: Option<Duration>,
    max: Duration,
}

impl Backoff {
    /// Waits before the next try of `what`, or gives `error` back once the time is up.
    async fn again(&mut self, what: &str, error: String) -> Result<(), String> {
        if self.timeout.is_some_and(|t| self.start.elapsed() + self.pause > t) {
            return Err(error);
        }
        tracing::info!(%error, what, "retrying");
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(self.max);
        Ok(())
    }
}

/// Creates one of Connect's compacted topics when it is missing.
pub(crate) async fn ensure_topic(client: &Client, name: &str, partitions: u32) -> Result<(), ClientError> {
    let config = HashMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    create_missing(client, name, partitions, 3, config).await
}

/// Creates topic `name` when it is missing (see [`Client::create_topic_if_missing`]).
pub(crate) async fn create_missing(
    client: &Client,
    name: &str,
    partitions: u32,
    replication_factor: u32,
    config: HashMap<String, String>,
) -> Result<(), ClientError> {
    client.create_topic_if_missing(name, partitions, replication_factor, config).await
}

/// Where a sink writes.
pub(crate) trait Target {
    /// The offset `partition` of `topic` resumes at when the target keeps its own positions
    /// (records below it were written already); `None` to go by the group's commits.
    async fn resume(&mut self, _topic: &str, _partition: u32) -> Result<Option<i64>, String> {
        Ok(None)
    }
    /// Writes `records` durably; `next` is, per partition, the offset after the last record
    /// handled (written, skipped or dead-lettered), which a target keeping its own positions
    /// records with them. Records the target refuses for good (a document its mapping
    /// rejects, say) come back with the reason, by index: the rest were written.
    async fn write(
        &mut self,
        records: &[ConnectRecord],
        next: &BTreeMap<(String, u32), i64>,
    ) -> Result<Vec<(usize, String)>, WriteError>;
    /// The offsets the group may commit after a write that handled up to `handled`: all of
    /// it for a target that writes durably at once; less for one that buffers.
    fn committable(&mut self, handled: &BTreeMap<TopicPartition, i64>) -> BTreeMap<TopicPartition, i64> {
        handled.clone()
    }
    /// Called at every poll, with records or not: a buffering target writes what is due
    /// and says which offsets that makes committable.
    async fn tick(&mut self) -> Result<BTreeMap<TopicPartition, i64>, WriteError> {
        Ok(BTreeMap::new())
    }
    /// The partitions this task holds now (after a rebalance).
    fn assigned(&mut self, _held: &BTreeSet<TopicPartition>) {}
}

/// Commits `offsets` for the group, trying again with backoff (a rebalance under way, say).
async fn commit(
    consumer: &mut GroupConsumer,
    offsets: &BTreeMap<TopicPartition, i64>,
    pipeline: &Pipeline,
) -> Result<(), String> {
    let mut backoff = pipeline.backoff();
    loop {
        let why = match consumer.commit_offsets(offsets).await {
            Ok(refused) => match refused.first() {
                None => return Ok(()),
                Some(((t, p), e)) => format!("the commit for partition {p} of '{t}' failed: {}", e.message),
            },
            Err(e) => e.to_string(),
        };
        backoff.again("commit", why).await?;
    }
}

pub(crate) enum WriteError {
    /// The target's own positions moved past what this task expected (another task had the
    /// partition): nothing was written; the task resumes from the target's positions.
    Moved(String),
    /// Anything else: the same write is tried again (errors.retry.*).
    Failed(String),
}

/// The topics a sink reads: `topics`, or those matching `topics.regex` now.
async fn sink_topics(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<Vec<String>, String> {
    Ok(match cfg.get("topics.regex").filter(|r| !r.is_empty()) {
        Some(re) => {
            let re = regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())?;
            let all = ctx.client.list_topics().await.map_err(|e| e.to_string())?;
            all.into_iter().map(|t| t.name).filter(|n| re.is_match(n)).collect()
        }
        None => config::list(cfg.get("topics").unwrap_or_default()),
    })
}

/// A sink task: a member of the group `connect-<name>`, converting, transforming and
/// writing what it is given to `target`, then committing.
pub(crate) async fn run_sink(ctx: &Ctx, cfg: &ConnectorConfig, mut target: impl Target) -> Result<(), String> {
    let pipeline = Pipeline::new(cfg)?;
    let topics = sink_topics(ctx, cfg).await?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let isolation = match cfg.get("consumer.override.isolation.level") {
        Some("read_uncommitted") => IsolationLevel::ReadUncommitted,
        _ => IsolationLevel::ReadCommitted,
    };
    let group = GroupConfig {
        client_id: format!("connect-{}-{}", ctx.id.connector, ctx.id.task),
        fetch: ConsumerConfig { isolation, ..ConsumerConfig::default() },
        // The task commits what its target says is written, not the positions polled.
        auto_commit_interval: None,
        ..GroupConfig::new(&format!("connect-{}", ctx.id.connector))
    };
    let mut consumer = GroupConsumer::subscribe(ctx.client.clone(), &names, group).await.map_err(|e| e.to_string())?;
    let dlq = DeadLetters::open(ctx, cfg).await?;
    // Where each partition resumes by the target's own account, per generation: a partition
    // that left and came back may have moved meanwhile.
    let mut resume: HashMap<(String, u32), Option<i64>> = HashMap::new();
    let mut generation = consumer.generation();
    let task_attrs = metrics::task(&ctx.id.connector, ctx.id.task);
    'poll: while !ctx.stopped() {
        if ctx.paused() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let records = consumer.poll(Duration::from_millis(500)).await.map_err(|e| e.to_string())?;
        if consumer.generation() != generation {
            generation = consumer.generation();
            resume.clear();
            target.assigned(consumer.assignment());
        }
        let due = target.tick().await.map_err(|e| match e {
            WriteError::Moved(why) | WriteError::Failed(why) => why,
        })?;
        commit(&mut consumer, &due, &pipeline).await?;
        if records.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(records.len());
        // The records as read, beside what they became: a refused one is dead-lettered as read.
        let mut kept = Vec::with_capacity(records.len());
        let mut next: BTreeMap<(String, u32), i64> = BTreeMap::new();
        let mut polled = 0u64;
        for r in records {
            let tp = (r.topic.to_string(), r.partition);
            if !resume.contains_key(&tp) {
                let from = target.resume(&tp.0, tp.1).await?;
                resume.insert(tp.clone(), from);
            }
            if resume.get(&tp).copied().flatten().is_some_and(|from| r.offset < from) {
                continue;
            }
            next.insert(tp, r.offset + 1);
            polled += 1;
            // The record's processing continues the producer's trace (its traceparent header).
            let span = r.process_span(&r.topic);
            let converted = span.in_scope(|| -> Result<Option<ConnectRecord>, (&'static str, String)> {
                let stage = |s: &'static str| move |e: sluice_connect::ConnectError| (s, e.to_string());
                let record = ConnectRecord {
                    topic: r.topic.to_string(),
                    partition: Some(r.partition),
                    offset: Some(r.offset),
                    key: pipeline.key.to_data(r.key.as_deref()).map_err(stage("KEY_CONVERTER"))?,
                    value: pipeline.value.to_data(r.value.as_deref()).map_err(stage("VALUE_CONVERTER"))?,
                    headers: r.headers.clone(),
                    timestamp_ms: r.timestamp_ms,
                };
                pipeline.transform(record).map_err(|e| ("TRANSFORMATION", e))
            });
            match converted {
                Ok(Some(record)) => {
                    out.push(record);
                    kept.push(r);
                }
                Ok(None) => {}
                Err((stage, e)) => {
                    metrics::metrics().errors.add(1, &metrics::with(task_attrs.clone(), "stage", stage));
                    let at = format!("record at offset {} of partition {} of '{}'", r.offset, r.partition, r.topic);
                    if pipeline.log {
                        match pipeline.log_messages {
                            true => tracing::warn!(stage, error = %e, key = ?r.key, value = ?r.value, "{at} failed"),
                            false => tracing::warn!(stage, error = %e, "{at} failed"),
                        }
                    }
                    if !pipeline.tolerate {
                        return Err(format!("{at}: {e} ({stage})"));
                    }
                    if let Some(d) = &dlq {
                        let mut backoff = pipeline.backoff();
                        while let Err(why) = d.send(ctx, &r, stage, &e).await {
                            backoff.again("dead-letter write", why).await?;
                        }
                    }
                }
            }
        }
        if next.is_empty() {
            continue;
        }
        metrics::metrics().records.add(polled, &metrics::with(task_attrs.clone(), "direction", "in"));
        let mut backoff = pipeline.backoff();
        loop {
            match target.write(&out, &next).await {
                Ok(refused) => {
                    metrics::metrics().records.add(
                        (out.len() - refused.len()) as u64,
                        &metrics::with(task_attrs.clone(), "direction", "out"),
                    );
                    for (i, why) in refused {
                        let Some(r) = kept.get(i) else { continue };
                        metrics::metrics().errors.add(1, &metrics::with(task_attrs.clone(), "stage", "TASK_PUT"));
                        let at = format!("record at offset {} of partition {} of '{}'", r.offset, r.partition, r.topic);
                        if !pipeline.tolerate {
                            return Err(format!("{at}: {why} (TASK_PUT)"));
                        }
                        if pipeline.log {
                            tracing::warn!(stage = "TASK_PUT", error = %why, "{at} refused by the target");
                        }
                        if let Some(d) = &dlq {
                            let mut backoff = pipeline.backoff();
                            while let Err(e) = d.send(ctx, r, "TASK_PUT", &why).await {
                                backoff.again("dead-letter write", e).await?;
                            }
                        }
                    }
                    break;
                }
                Err(WriteError::Failed(e)) => backoff.again("write", e).await?,
                Err(WriteError::Moved(why)) => {
                    // Read on from where the target says, not from what was polled.
                    tracing::info!(%why, "target positions moved; resuming from them");
                    resume.clear();
                    for (topic, partition) in next.keys() {
                        if let Some(from) = target.resume(topic, *partition).await?
                            && let Err(e) = consumer.seek(topic, *partition, from)
                        {
                            tracing::debug!(error = %e, topic, partition, "not seeking a partition no longer held");
                        }
                    }
                    continue 'poll;
                }
            }
        }
        for (tp, n) in &next {
            if let Some(Some(from)) = resume.get_mut(tp) {
                *from = *n;
            }
        }
        let offsets = target.committable(&next);
        commit(&mut consumer, &offsets, &pipeline).await?;
    }
    let _ = consumer.close().await;
    if let Some(d) = dlq {
        d.producer.close().await;
    }
    Ok(())
}

/// file-sink: lines appended to a file, made durable before the commit.
struct FileTarget {
    path: String,
    file: tokio::fs::File,
    format: String,
}

impl Target for FileTarget {
    async fn write(
        &mut self,
        records: &[ConnectRecord],
        _next: &BTreeMap<(String, u32), i64>,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let mut text = String::new();
        for r in records {
            text.push_str(&line_of(r, &self.format));
            text.push('\n');
        }
        append(&mut self.file, text.as_bytes()).await.map_err(|e| WriteError::Failed(format!("{}: {e}", self.path)))?;
        Ok(Vec::new())
    }
}

async fn file_sink(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<(), String> {
    let path = cfg.get("file").unwrap_or_default().to_string();
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let format = cfg.get("format").unwrap_or("value").to_string();
    run_sink(ctx, cfg, FileTarget { path, file, format }).await
}

/// A sink's dead-letter topic: records that failed conversion or a transform, as they were
/// read, with headers saying what failed where when asked.
struct DeadLetters {
    producer: Producer,
    topic: String,
    context: bool,
}

impl DeadLetters {
    async fn open(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<Option<Self>, String> {
        let Some(topic) = cfg.get("errors.deadletterqueue.topic.name").filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let rf = cfg.int("errors.deadletterqueue.topic.replication.factor").unwrap_or(3).max(1) as u32;
        create_missing(&ctx.client, topic, 1, rf, HashMap::new())
            .await
            .map_err(|e| format!("dead-letter topic '{topic}': {e}"))?;
        Ok(Some(Self {
            producer: Producer::new(ctx.client.clone(), ProducerConfig { acks: Acks::All, ..Default::default() }),
            topic: topic.to_string(),
            context: cfg.get("errors.deadletterqueue.context.headers.enable") == Some("true"),
        }))
    }

    async fn send(&self, ctx: &Ctx, r: &ConsumerRecord, stage: &str, error: &str) -> Result<(), String> {
        let mut headers = r.headers.clone();
        if self.context {
            let h = |k: &str, v: String| (format!("__connect.errors.{k}"), Bytes::from(v));
            headers.extend([
                h("topic", r.topic.to_string()),
                h("partition", r.partition.to_string()),
                h("offset", r.offset.to_string()),
                h("connector.name", ctx.id.connector.clone()),
                h("task.id", ctx.id.task.to_string()),
                h("stage", stage.to_string()),
                h("exception.message", error.to_string()),
            ]);
        }
        let record = ProducerRecord {
            topic: self.topic.clone(),
            key: r.key.clone(),
            value: r.value.clone(),
            headers,
            timestamp_ms: r.timestamp_ms,
            ..Default::default()
        };
        let done = self.producer.send(record).await.map_err(|e| e.to_string())?;
        match done.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dead-letter topic '{}': {e}", self.topic)),
            Err(_) => Err(format!("dead-letter topic '{}': the producer stopped", self.topic)),
        }
    }
}

/// Writes `bytes` at the end of `out` and makes them durable.
async fn append(out: &mut tokio::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.sync_data().await
}

/// A value's text: a string as it is, anything else as JSON (null as empty).
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn line_of(r: &ConnectRecord, format: &str) -> String {
    match format {
        "key-value" => format!("{}\t{}", text(&r.key.value), text(&r.value.value)),
        "json" => serde_json::json!({
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp_ms,
            "key": r.key.value,
            "value": r.value.value,
        })
        .to_string(),
        _ => text(&r.value.value),
    }
}
