//! The producer: records are accumulated per partition into RecordBatch v2 (sealed when
//! `batch_bytes` is reached or after `linger`), sent as ready-encoded batches over one
//! bidirectional stream with up to `max_in_flight` requests outstanding, and retried on
//! transient errors until `delivery_timeout`.
//!
//! Retries can reorder batches of one partition when more than one request is in flight, as in
//! Kafka without idempotence; set `max_in_flight = 1` where strict order matters under failures.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::RemoteError;
use sluice_core::batch::BatchBuilder;
use sluice_core::compression::Compression;
use sluice_core::partitioner::{StickyPartitioner, partition_for_key};
use sluice_proto::v1::{Acks, PartitionBatches, ProduceRequest, ProduceResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{Client, ClientError};

/// Producer settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// [acks] How many replicas must have a batch before it is acknowledged.
    pub acks: Acks,
    /// [linger.ms] How long a partly filled batch waits for more records.
    pub linger: Duration,
    /// [batch.size] A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// [compression.type]
    pub compression: Compression,
    /// [max.in.flight.requests.per.connection]
    pub max_in_flight: usize,
    /// [delivery.timeout.ms] Give up on a record after this long.
    pub delivery_timeout: Duration,
    /// [retry.backoff.ms]
    pub retry_backoff: Duration,
    /// [request.timeout.ms] How long the gateway waits for the nodes.
    pub request_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            compression: Compression::None,
            max_in_flight: 16,
            delivery_timeout: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// Explicit partition; otherwise murmur2 of the key, or sticky batches without a key.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// 0 means now.
    pub timestamp_ms: i64,
}

/// Where an acknowledged record landed. `offset` is -1 with acks=0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: i64,
}

/// Resolves when the record is acknowledged or has finally failed.
pub type DeliveryFuture = oneshot::Receiver<Result<Delivery, ClientError>>;

enum Cmd {
    Send(ProducerRecord, oneshot::Sender<Result<Delivery, ClientError>>),
    Flush(oneshot::Sender<()>),
}

/// A Sluice producer. Cheap to share by reference; dropping it sends what is buffered first.
pub struct Producer {
    tx: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        let task = tokio::spawn(Engine::new(client, config).run(rx));
        Self { tx, task }
    }

    /// Queues a record; waits only while the producer's queue is full.
    pub async fn send(&self, mut record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        // When traced, the record carries the sender's trace context, so that whoever
        // consumes it can continue the trace.
        if let Some(tp) = sluice_telemetry::traceparent()
            && !record.headers.iter().any(|(k, _)| k == sluice_telemetry::RECORD_HEADER)
        {
            record.headers.push((sluice_telemetry::RECORD_HEADER.to_string(), Bytes::from(tp)));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(record, tx))
            .await
            .map_err(|_| ClientError::Invalid("the producer has stopped".into()))?;
        Ok(rx)
    }

    /// Sends everything queued so far and waits until each record is acknowledged or failed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Flushes and stops the background task.
    pub async fn close(self) {
        self.flush().await;
        drop(self.tx);
        let _ = self.task.await;
    }
}

type Waiter = oneshot::Sender<Result<Delivery, ClientError>>;

struct Acc {
    builder: BatchBuilder,
    waiters: Vec<Waiter>,
    since: Instant,
    /// Trace context of the first traced record, for the request that carries the batch.
    traceparent: Option<String>,
}

struct Batch {
    topic: String,
    partition: u32,
    data: Bytes,
    waiters: Vec<Waiter>,
    first_sent: Instant,
    traceparent: Option<String>,
}

impl Batch {
    fn fail(self, e: ClientError) {
        for w in self.waiters {
            let _ = w.send(Err(e.clone()));
        }
    }
}

struct Conn {
    tx: mpsc::Sender<ProduceRequest>,
    rx: Streaming<ProduceResponse>,
}

struct Engine {
    client: Client,
    cfg: ProducerConfig,
    partitions: HashMap<String, u32>,
    sticky: StickyPartitioner,
    accs: HashMap<(String, u32), Acc>,
    ready: VecDeque<Batch>,
    retry: Vec<(Instant, Batch)>,
    inflight: HashMap<u64, Vec<Batch>>,
    next_id: u64,
    conn: Option<Conn>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Engine {
    fn new(client: Client, cfg: ProducerConfig) -> Self {
        let sticky = StickyPartitioner::new(cfg.batch_bytes, rand::random());
        Self {
            client,
            cfg,
            partitions: HashMap::new(),
            sticky,
            accs: HashMap::new(),
            ready: VecDeque::new(),
            retry: Vec::new(),
            inflight: HashMap::new(),
            next_id: 1,
            conn: None,
            flushes: Vec::new(),
        }
    }

    fn idle(&self) -> bool {
        self.accs.is_empty() && self.ready.is_empty() && self.retry.is_empty() && self.inflight.is_empty()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut closed = false;
        loop {
            self.pump().await;
            if self.idle() {
                for f in self.flushes.drain(..) {
                    let _ = f.send(());
                }
                if closed {
                    return;
                }
            }
            let deadline = self.next_deadline();
            let can_take = !closed && self.inflight.len() < self.cfg.max_in_flight;
            tokio::select! {
                cmd = rx.recv(), if can_take => match cmd {
                    Some(Cmd::Send(r, w)) => self.add(r, w).await,
                    Some(Cmd::Flush(f)) => {
                        self.seal_all();
                        self.flushes.push(f);
                    }
                    None => {
                        closed = true;
                        self.seal_all();
                    }
                },
                msg = async {
                    match self.conn.as_mut() {
                        Some(c) => c.rx.message().await,
                        None => std::future::pending().await,
                    }
                }, if self.conn.is_some() => match msg {
                    Ok(Some(resp)) => self.on_response(resp),
                    Ok(None) => self.on_disconnect("the gateway closed the produce stream".into()),
                    Err(s) => self.on_disconnect(RemoteError::from(s).message),
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if deadline.is_some() => {
                    self.on_timer();
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let linger = self.accs.values().map(|a| a.since + self.cfg.linger).min();
        let retry = self.retry.iter().map(|(t, _)| *t).min();
        [linger, retry].into_iter().flatten().min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let due: Vec<_> =
            self.accs.iter().filter(|(_, a)| a.since + self.cfg.linger <= now).map(|(k, _)| k.clone()).collect();
        for k in due {
            self.seal(&k);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry).into_iter().partition(|(t, _)| *t <= now);
        self.retry = later;
        self.ready.extend(due.into_iter().map(|(_, b)| b));
    }

    async fn partition_count(&mut self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self.partitions.get(topic) {
            return Ok(*n);
        }
        let t = self.client.describe_topic(topic).await?;
        let n = t.partitions.len() as u32;
        self.partitions.insert(topic.to_string(), n);
        Ok(n)
    }

    async fn add(&mut self, r: ProducerRecord, w: Waiter) {
        let count = match self.partition_count(&r.topic).await {
            Ok(n) => n,
            Err(e) => {
                let _ = w.send(Err(e));
                return;
            }
        };
        let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let size = BatchBuilder::record_size(r.key.as_deref(), r.value.as_deref(), &headers);
        let p = match (r.partition, &r.key) {
            (Some(p), _) if p >= count => {
                let _ = w.send(Err(ClientError::Invalid(format!(
                    "partition {p} of topic '{}' does not exist (the topic has {count} partitions)",
                    r.topic
                ))));
                return;
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => self.sticky.next(count, size),
        };
        let key = (r.topic.clone(), p);
        if self.accs.get(&key).is_some_and(|a| a.builder.estimated_size() + size > self.cfg.batch_bytes) {
            self.seal(&key);
        }
        let compression = self.cfg.compression;
        let acc = self.accs.entry(key.clone()).or_insert_with(|| Acc {
            builder: BatchBuilder::new(compression),
            waiters: Vec::new(),
            since: Instant::now(),
            traceparent: None,
        });
        if acc.traceparent.is_none() {
            acc.traceparent = r
                .headers
                .iter()
                .find(|(k, _)| k == sluice_telemetry::RECORD_HEADER)
                .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string));
        }
        let ts = if r.timestamp_ms > 0 { r.timestamp_ms } else { sluice_core::settings::now_ms() };
        acc.builder.push(ts, r.key.as_deref(), r.value.as_deref(), &headers);
        acc.waiters.push(w);
        if acc.builder.estimated_size() >= self.cfg.batch_bytes {
            self.seal(&key);
        }
    }

    fn seal(&mut self, key: &(String, u32)) {
        let Some(acc) = self.accs.remove(key) else { return };
        match acc.builder.build() {
            Ok(data) => self.ready.push_back(Batch {
                topic: key.0.clone(),
                partition: key.1,
                data,
                waiters: acc.waiters,
                first_sent: Instant::now(),
                traceparent: acc.traceparent,
            }),
            Err(e) => {
                for w in acc.waiters {
                    let _ = w.send(Err(ClientError::Invalid(e.to_string())));
                }
            }
        }
    }

    fn seal_all(&mut self) {
        let keys: Vec<_> = self.accs.keys().cloned().collect();
        for k in keys {
            self.seal(&k);
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(256);
        let resp =
            self.client.broker().produce(ReceiverStream::new(rx)).await.map_err(|s| RemoteError::from(s).message)?;
        self.conn = Some(Conn { tx, rx: resp.into_inner() });
        Ok(())
    }

    /// Sends ready batches: one request per topic, at most one batch per partition each.
    async fn pump(&mut self) {
        while !self.ready.is_empty() && self.inflight.len() < self.cfg.max_in_flight {
            if let Err(why) = self.connect().await {
                self.retry_all_ready(&why);
                return;
            }
            let topic = self.ready[0].topic.clone();
            let mut batches = Vec::new();
            let mut rest = VecDeque::new();
            let mut taken = std::collections::HashSet::new();
            while let Some(b) = self.ready.pop_front() {
                if b.topic == topic && taken.insert(b.partition) {
                    batches.push(b);
                } else {
                    rest.push_back(b);
                }
            }
            self.ready = rest;
            let id = self.next_id;
            self.next_id += 1;
            let req = ProduceRequest {
                id,
                topic,
                acks: self.cfg.acks as i32,
                records: Vec::new(),
                batches: batches
                    .iter()
                    .map(|b| PartitionBatches { partition: b.partition, data: b.data.clone() })
                    .collect(),
                timeout_ms: self.cfg.request_timeout.as_millis() as u32,
                traceparent: batches.iter().find_map(|b| b.traceparent.clone()).unwrap_or_default(),
                ..Default::default()
            };
            self.inflight.insert(id, batches);
            let sent = match &self.conn {
                Some(c) => c.tx.send(req).await.is_ok(),
                None => false,
            };
            if !sent {
                self.on_disconnect("the produce stream is closed".into());
                return;
            }
        }
    }

    fn retry_all_ready(&mut self, why: &str) {
        let batches: Vec<_> = self.ready.drain(..).collect();
        for b in batches {
            self.schedule_retry(b, why);
        }
    }

    fn schedule_retry(&mut self, b: Batch, why: &str) {
        let elapsed = b.first_sent.elapsed();
        if elapsed >= self.cfg.delivery_timeout {
            b.fail(ClientError::Exhausted { elapsed, last: why.to_string() });
        } else {
            tracing::debug!(topic = %b.topic, partition = b.partition, reason = why, "retrying batch");
            self.retry.push((Instant::now() + self.cfg.retry_backoff, b));
        }
    }

    fn on_disconnect(&mut self, why: String) {
        self.conn = None;
        let inflight: Vec<_> = self.inflight.drain().flat_map(|(_, b)| b).collect();
        for b in inflight {
            self.schedule_retry(b, &why);
        }
        self.retry_all_ready(&why);
    }

    fn on_response(&mut self, resp: ProduceResponse) {
        let Some(batches) = self.inflight.remove(&resp.id) else { return };
        if let Some(e) = resp.error {
            let e = RemoteError::from(&e);
            for b in batches {
                if e.retriable {
                    self.schedule_retry(b, &e.message);
                } else {
                    b.fail(ClientError::Remote(e.clone()));
                }
            }
            return;
        }
        let mut results: HashMap<u32, _> = resp.partitions.into_iter().map(|r| (r.partition, r)).collect();
        for b in batches {
            match results.remove(&b.partition) {
                Some(r) => match r.error {
                    None => {
                        for (i, w) in b.waiters.into_iter().enumerate() {
                            let offset = if r.base_offset >= 0 { r.base_offset + i as i64 } else { -1 };
                            let _ = w.send(Ok(Delivery { partition: b.partition, offset }));
                        }
                    }
                    Some(e) => {
                        let e = RemoteError::from(&e);
                        if e.retriable {
                            self.schedule_retry(b, &e.message);
                        } else {
                            b.fail(ClientError::Remote(e));
                        }
                    }
                },
                None => self.schedule_retry(b, "the gateway did not answer for this partition"),
            }
        }
    }
}
