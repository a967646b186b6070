//! The consumer: reads assigned partitions over one fetch stream.
//!
//! Positions are resolved to concrete offsets up front (earliest, latest, an offset, or a
//! timestamp), batches are decoded here (the gateway forwards them as stored), and credit is
//! returned as records are handed out, so the server never sends more than the consumer can
//! hold. On a transient failure the consumer reconnects and resumes from its positions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::RemoteError;
use sluice_core::batch::{BatchHeader, decode_records};
use sluice_proto::v1::fetch_request::Kind;
use sluice_proto::v1::{FetchCredit, FetchPartition, FetchRequest, FetchResponse, FetchStart, OffsetSpec};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{Client, ClientError};

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this time (ms); the log end when there is none.
    Timestamp(i64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" | "beginning" => Ok(Self::Earliest),
            "latest" | "end" => Ok(Self::Latest),
            _ => {
                if let Some(ts) = s.strip_prefix('@') {
                    return ts.parse().map(Self::Timestamp).map_err(|_| format!("'{s}' is not @TIMESTAMP_MS"));
                }
                match s.parse::<i64>() {
                    Ok(n) if n >= 0 => Ok(Self::Offset(n)),
                    _ => Err(format!("'{s}' is not earliest, latest, an offset or @TIMESTAMP_MS")),
                }
            }
        }
    }
}

/// A record as consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

impl ConsumerRecord {
    /// A span for processing this record: a child of the producer's span when the record
    /// carries its trace context (the `traceparent` header), with a link to it as well, so
    /// that one trace runs from producer to consumer. Enter it while processing.
    pub fn process_span(&self, topic: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "process",
            otel.kind = "consumer",
            messaging.destination.name = %topic,
            messaging.destination.partition.id = self.partition,
            messaging.kafka.offset = self.offset,
        );
        let header = self.headers.iter().find(|(k, _)| k == sluice_telemetry::RECORD_HEADER);
        if let Some(tp) = header.and_then(|(_, v)| std::str::from_utf8(v).ok()) {
            sluice_telemetry::continue_from(&span, tp);
            sluice_telemetry::link_to(&span, tp);
        }
        span
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// [fetch.max.bytes] Bytes the server may send ahead of what was consumed.
    pub max_buffer_bytes: u64,
    /// How long to keep retrying a transient failure before reporting it.
    pub retry_timeout: Duration,
    /// [isolation.level] ReadCommitted reads below the last stable offset and skips aborted
    /// transactions; ReadUncommitted (the default, as Kafka's) reads everything.
    pub isolation: sluice_proto::v1::IsolationLevel,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_buffer_bytes: 8 << 20,
            retry_timeout: Duration::from_secs(60),
            isolation: sluice_proto::v1::IsolationLevel::ReadUncommitted,
        }
    }
}

struct Stream {
    tx: mpsc::Sender<FetchRequest>,
    rx: Streaming<FetchResponse>,
}

/// Reads a set of partitions of one topic.
pub struct Consumer {
    client: Client,
    topic: String,
    topic_name: Arc<str>,
    cfg: ConsumerConfig,
    positions: BTreeMap<u32, i64>,
    buffered: VecDeque<ConsumerRecord>,
    stream: Option<Stream>,
    failing_since: Option<Instant>,
}

impl Consumer {
    /// Assigns `partitions` (all of the topic's when empty), each starting at `from`.
    pub async fn assign(
        client: Client,
        topic: &str,
        partitions: &[u32],
        from: StartFrom,
        cfg: ConsumerConfig,
    ) -> Result<Self, ClientError> {
        let desc = client.describe_topic(topic).await?;
        let count = desc.partitions.len() as u32;
        let parts: Vec<u32> = if partitions.is_empty() { (0..count).collect() } else { partitions.to_vec() };
        if let Some(p) = parts.iter().find(|p| **p >= count) {
            return Err(ClientError::Invalid(format!(
                "partition {p} of topic '{topic}' does not exist (the topic has {count} partitions)"
            )));
        }
        let positions = match from {
            StartFrom::Offset(o) => parts.iter().map(|p| (*p, o)).collect(),
            StartFrom::Earliest | StartFrom::Latest | StartFrom::Timestamp(_) => {
                let (spec, ts) = match from {
                    StartFrom::Earliest => (OffsetSpec::Earliest, 0),
                    StartFrom::Latest => (OffsetSpec::Latest, 0),
                    StartFrom::Timestamp(t) => (OffsetSpec::Timestamp, t),
                    StartFrom::Offset(_) => (OffsetSpec::Latest, 0),
                };
                let mut m = BTreeMap::new();
                for o in client.settled_offsets(topic, parts.clone(), spec, ts).await? {
                    m.insert(o.partition, crate::start_position(&o));
                }
                m
            }
        };
        Ok(Self::at(client, topic, positions, cfg))
    }

    /// Reads `positions` (partition -> next offset) of `topic`, as they are.
    pub fn at(client: Client, topic: &str, positions: BTreeMap<u32, i64>, cfg: ConsumerConfig) -> Self {
        Self {
            client,
            topic: topic.to_string(),
            topic_name: Arc::from(topic),
            cfg,
            positions,
            buffered: VecDeque::new(),
            stream: None,
            failing_since: None,
        }
    }

    /// Moves a partition's position; the next poll reads from there.
    pub fn seek(&mut self, partition: u32, offset: i64) -> Result<(), ClientError> {
        if !self.positions.contains_key(&partition) {
            return Err(ClientError::Invalid(format!(
                "partition {partition} of '{}' is not assigned to this consumer",
                self.topic
            )));
        }
        if offset < 0 {
            return Err(ClientError::Invalid(format!("offset {offset} is negative")));
        }
        self.positions.insert(partition, offset);
        self.buffered.retain(|r| r.partition != partition);
        // Reopened from the new positions at the next poll.
        self.stream = None;
        Ok(())
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next offset to be returned, per partition.
    pub fn positions(&self) -> &BTreeMap<u32, i64> {
        &self.positions
    }

    async fn open(&mut self) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::channel(64);
        let start = FetchStart {
            topic: self.topic.clone(),
            partitions: self.positions.iter().map(|(p, o)| FetchPartition { partition: *p, offset: *o }).collect(),
            max_bytes: self.cfg.max_buffer_bytes,
            plain_records: false,
            isolation_level: self.cfg.isolation as i32,
        };
        let _ = tx.send(FetchRequest { kind: Some(Kind::Start(start)) }).await;
        let rx = self.client.broker().fetch(ReceiverStream::new(rx)).await?.into_inner();
        self.stream = Some(Stream { tx, rx });
        Ok(())
    }

    /// Waits up to `timeout` for records; an empty vector means none arrived in time.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buffered.is_empty() {
                return Ok(self.buffered.drain(..).collect());
            }
            if self.stream.is_none()
                && let Err(e) = self.open().await
            {
                self.transient(e).await?;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
            let Some(s) = self.stream.as_mut() else { continue };
            let msg = match tokio::time::timeout_at(deadline, s.rx.message()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(m) => m,
            };
            match msg {
                Ok(Some(resp)) => self.on_response(resp).await?,
                Ok(None) => {
                    self.stream = None;
                    self.transient(ClientError::Disconnected("the gateway ended the fetch stream".into())).await?;
                }
                Err(status) => {
                    self.stream = None;
                    self.transient(status.into()).await?;
                }
            }
        }
    }

    /// Handles a failure worth retrying: backs off, or reports it once retrying took too long.
    async fn transient(&mut self, e: ClientError) -> Result<(), ClientError> {
        if !e.is_retriable() {
            return Err(e);
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.cfg.retry_timeout {
            return Err(ClientError::Exhausted { elapsed: since.elapsed(), last: e.to_string() });
        }
        tracing::debug!(error = %e, "fetch interrupted; resuming");
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    async fn on_response(&mut self, resp: FetchResponse) -> Result<(), ClientError> {
        if let Some(e) = &resp.error {
            let e = RemoteError::from(e);
            self.stream = None;
            return self.transient(ClientError::Remote(e)).await;
        }
        self.failing_since = None;
        let p = resp.partition;
        let from = self.positions.get(&p).copied().unwrap_or(0);
        let len = resp.batches.len() as u64;
        let mut rest = resp.batches;
        let mut next = from;
        while !rest.is_empty() {
            let h = BatchHeader::parse(&rest)
                .map_err(|e| ClientError::Invalid(format!("bad batch from the gateway: {e}")))?;
            if h.total_len() > rest.len() {
                return Err(ClientError::Invalid("truncated batch from the gateway".into()));
            }
            let b = rest.split_to(h.total_len());
            // Markers are never handed out; with read_committed, neither are aborted records
            // (the response lists the aborted transactions it overlaps).
            if sluice_core::batch::skipped_when_committed(&h, &resp.aborted_transactions) {
                next = next.max(h.next_offset());
                continue;
            }
            let recs =
                decode_records(&b).map_err(|e| ClientError::Invalid(format!("bad batch from the gateway: {e}")))?;
            for r in recs.into_iter().filter(|r| r.offset >= from) {
                self.buffered.push_back(ConsumerRecord {
                    topic: self.topic_name.clone(),
                    partition: p,
                    offset: r.offset,
                    timestamp_ms: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
            next = next.max(h.next_offset());
        }
        self.positions.insert(p, next);
        if let Some(s) = &self.stream {
            let _ = s.tx.send(FetchRequest { kind: Some(Kind::Credit(FetchCredit { bytes: len })) }).await;
        }
        Ok(())
    }
}
