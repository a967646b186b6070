//! The producer: records are accumulated per partition into RecordBatch v2 (sealed when
//! `batch_bytes` is reached or after `linger`), sent as ready-encoded batches over one
//! bidirectional stream with up to `max_in_flight` requests outstanding, and retried on
//! transient errors until `delivery_timeout`.
//!
//! Idempotence is on by default (as in Kafka 3+): the producer gets an id from the
//! coordinator and numbers its batches per partition; the partition leader writes each
//! sequence once and in order, so retries (any number, across leader failovers) neither
//! duplicate nor reorder records, with up to [`MAX_IN_FLIGHT_PER_PARTITION`] batches of a
//! partition in flight. A refusal of the oldest unacknowledged batch of a partition proves
//! that it and every later one were not written (a later sequence is only accepted after it):
//! the partition then starts over under a new producer id, its batches renumbered in order
//! (as Kafka's epoch bump of KIP-360 does). Without idempotence, retries can reorder batches
//! of one partition when more than one request is in flight, and duplicate a batch whose
//! answer was lost.
//!
//! A transactional producer ([`Producer::transactional`]) adds transactions on top: its
//! records are sent between [`Producer::begin_transaction`] and
//! [`Producer::commit_transaction`] (or abort), to any partitions, with consumer offsets
//! ([`Producer::send_offsets_to_transaction`]); read_committed consumers see all of them or
//! none. Its transactional id fences older producers with the same id. A record of a
//! transaction that fails makes the transaction abortable only ([`ClientError::MustAbort`]);
//! being fenced is final.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::RemoteError;
use sluice_core::batch::BatchBuilder;
use sluice_core::compression::Compression;
use sluice_core::error::codes;
use sluice_core::partitioner::{StickyPartitioner, partition_for_key};
use sluice_core::topic::TopicPartition;
use sluice_proto::v1::{
    Acks, CommittedOffset, EndTxnRequest, PartitionBatches, ProduceRequest, ProduceResponse, TxnOffsetCommitRequest,
};
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
    /// [buffer.memory] Bytes of sealed batches waiting to be acknowledged before `send` waits:
    /// a producer faster than the cluster is slowed down instead of queueing without bound
    /// (and its records timing out in the queue).
    pub buffer_bytes: usize,
    /// [retry.backoff.ms]
    pub retry_backoff: Duration,
    /// [request.timeout.ms] How long the gateway waits for the nodes.
    pub request_timeout: Duration,
    /// [enable.idempotence] Each batch written once, in order, whatever the retries. Only with
    /// acks=all, as in Kafka (with fewer acks a failover may lose acknowledged batches, and
    /// with them what the leader knew of the producer): otherwise it is off.
    pub idempotence: bool,
    /// [transaction.timeout.ms] How long a transaction of a transactional producer may stay
    /// open before the coordinator aborts it.
    pub transaction_timeout: Duration,
}

/// Batches of one partition in flight at once with idempotence: as many as a partition
/// leader remembers per producer to recognise a retry.
pub const MAX_IN_FLIGHT_PER_PARTITION: usize = 5;

/// Beyond a request's timeout, how long a copy of a batch that the gateway may still be
/// sending is counted as possibly landing.
const COPY_MARGIN: Duration = Duration::from_secs(5);

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            compression: Compression::None,
            max_in_flight: 16,
            delivery_timeout: Duration::from_secs(60),
            buffer_bytes: 32 << 20,
            retry_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(30),
            idempotence: true,
            transaction_timeout: Duration::from_secs(60),
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

type Reply = oneshot::Sender<Result<(), ClientError>>;

enum Cmd {
    Send(ProducerRecord, oneshot::Sender<Result<Delivery, ClientError>>),
    Flush(oneshot::Sender<()>),
    Begin(Reply),
    /// Commit (true) or abort.
    End(bool, Reply),
    Offsets(TxnOffsetCommitRequest, Reply),
}

/// Where a group member consuming the records of a transaction stands, for
/// [`Producer::send_offsets_to_transaction`]: offsets are then fenced like the member's own
/// commits (a member that lost a partition cannot commit it).
#[derive(Debug, Clone, Default)]
pub struct GroupMetadata {
    pub group_id: String,
    /// Empty for a consumer outside a group's membership (assigned partitions).
    pub member_id: String,
    pub generation: u64,
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

    /// A transactional producer for `transactional_id`: gets the id's producer id at its next
    /// epoch, which fences any older producer with the same id (a transaction it left open is
    /// aborted). Needs acks=all; idempotence is on.
    pub async fn transactional(
        client: Client,
        transactional_id: &str,
        mut config: ProducerConfig,
    ) -> Result<Self, ClientError> {
        if !matches!(config.acks, Acks::All | Acks::Unspecified) {
            return Err(ClientError::Invalid("a transactional producer needs acks=all".into()));
        }
        config.idempotence = true;
        let mut engine = Engine::new(client, config);
        let started = Instant::now();
        let identity = loop {
            let r = tokio::time::timeout(
                engine.cfg.request_timeout,
                engine.client.init_transactional_id(transactional_id, engine.cfg.transaction_timeout),
            )
            .await;
            match r {
                Ok(Ok(id)) => break id,
                Ok(Err(e)) if !e.is_retriable() || started.elapsed() >= engine.cfg.delivery_timeout => return Err(e),
                Ok(Err(e)) => tracing::debug!(error = %e, "transactional id not initialised yet; trying again"),
                Err(_) if started.elapsed() >= engine.cfg.delivery_timeout => {
                    return Err(ClientError::Exhausted {
                        elapsed: started.elapsed(),
                        last: "no answer from the transaction coordinator".into(),
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(engine.cfg.retry_backoff).await;
        };
        tracing::info!(transactional_id, producer_id = identity.0, epoch = identity.1, "transactional producer ready");
        engine.identity = Some(identity);
        engine.txn = Some(Txn { id: transactional_id.to_string(), ..Txn::default() });
        let (tx, rx) = mpsc::channel(8192);
        let task = tokio::spawn(engine.run(rx));
        Ok(Self { tx, task })
    }

    async fn call(&self, cmd: impl FnOnce(Reply) -> Cmd) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(cmd(tx)).await.map_err(|_| ClientError::Invalid("the producer has stopped".into()))?;
        rx.await.map_err(|_| ClientError::Invalid("the producer has stopped".into()))?
    }

    /// Opens a transaction (a transactional producer only): records sent until the commit or
    /// abort belong to it.
    pub async fn begin_transaction(&self) -> Result<(), ClientError> {
        self.call(Cmd::Begin).await
    }

    /// Sends every record of the open transaction, waits for them, then commits it: its
    /// records and offsets become visible to read_committed consumers together.
    /// [`ClientError::MustAbort`]: it cannot commit (abort it). Fenced: this producer can do
    /// nothing more. Any other failure leaves the outcome unknown: commit again (the
    /// coordinator answers a repeated end as it did the first one).
    pub async fn commit_transaction(&self) -> Result<(), ClientError> {
        self.call(|r| Cmd::End(true, r)).await
    }

    /// Aborts the open transaction: records not sent yet fail, those written are never
    /// shown to read_committed consumers, offsets sent in it are dropped.
    pub async fn abort_transaction(&self) -> Result<(), ClientError> {
        self.call(|r| Cmd::End(false, r)).await
    }

    /// Commits a consumer group's offsets (the next offset to read, per partition) as part
    /// of the open transaction: they become the group's committed offsets only if it commits.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
        group: &GroupMetadata,
    ) -> Result<(), ClientError> {
        let req = TxnOffsetCommitRequest {
            group_id: group.group_id.clone(),
            member_id: group.member_id.clone(),
            generation: group.generation,
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| CommittedOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                    commit_time_ms: 0,
                })
                .collect(),
            ..Default::default()
        };
        self.call(|r| Cmd::Offsets(req, r)).await
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
    /// With idempotence: the batch's place in its partition (never reused) and the producer
    /// id its last sent copy carried.
    ordinal: u64,
    sent_pid: i64,
    /// Until when the copy on the stream may still be written (the gateway keeps sending it
    /// again until the request's timeout), and the same for copies whose stream was lost
    /// before they were answered: a partition does not start over while one may still land.
    copy_until: Option<Instant>,
    lost_copy_until: Option<Instant>,
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

/// An idempotent producer's numbering of one partition.
struct Seq {
    producer_id: i64,
    epoch: i16,
    /// The sequence of the next batch sealed.
    next: i32,
    next_ordinal: u64,
    /// Ordinals of the batches sealed and neither acknowledged nor failed.
    unacked: std::collections::BTreeSet<u64>,
    /// Ordinals of the batches on the stream.
    in_flight: std::collections::BTreeSet<u64>,
    /// Every unacknowledged batch is known to be unwritten: renumber them under a new id.
    restart: bool,
}

/// What an answer for an idempotent batch means.
enum Outcome {
    Retry,
    /// Written long ago (beyond what the leader remembers): delivered, offsets unknown.
    Written,
    /// Certainly not written, and in the way of every later batch.
    Refused,
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
    /// With idempotence: the id new partitions are numbered under, and each partition's state.
    identity: Option<(i64, i16)>,
    seqs: HashMap<(String, u32), Seq>,
    /// When to try again to get a producer id for a partition that must start over.
    restart_retry: Option<Instant>,
    /// Bytes of sealed batches not yet acknowledged or failed.
    buffered: usize,
    /// A transactional producer's transaction state.
    txn: Option<Txn>,
}

/// A transactional producer's state.
#[derive(Default)]
struct Txn {
    id: String,
    /// Between begin and the commit or abort request.
    open: bool,
    /// Why the open transaction can only be aborted.
    doomed: Option<String>,
    /// Why this producer can do nothing more (fenced).
    fatal: Option<ClientError>,
    /// A commit (true) or abort waiting for every batch of the transaction to be answered.
    ending: Option<(bool, Reply)>,
}

impl Engine {
    fn new(client: Client, mut cfg: ProducerConfig) -> Self {
        cfg.idempotence &= matches!(cfg.acks, Acks::All | Acks::Unspecified);
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
            identity: None,
            seqs: HashMap::new(),
            restart_retry: None,
            buffered: 0,
            txn: None,
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
                if let Some((commit, reply)) = self.txn.as_mut().and_then(|t| t.ending.take()) {
                    let r = self.end_transaction(commit).await;
                    let _ = reply.send(r);
                }
                if closed {
                    return;
                }
            }
            let deadline = self.next_deadline();
            let ending = self.txn.as_ref().is_some_and(|t| t.ending.is_some());
            let can_take = !closed
                && !ending
                && self.inflight.len() < self.cfg.max_in_flight
                && self.buffered < self.cfg.buffer_bytes;
            tokio::select! {
                cmd = rx.recv(), if can_take => match cmd {
                    Some(Cmd::Send(r, w)) => {
                        match self.txn.as_ref().and_then(Txn::refusal) {
                            Some(e) => { let _ = w.send(Err(e)); }
                            None => self.add(r, w).await,
                        }
                    }
                    Some(Cmd::Flush(f)) => {
                        self.seal_all();
                        self.flushes.push(f);
                    }
                    Some(Cmd::Begin(reply)) => {
                        let _ = reply.send(self.begin());
                    }
                    Some(Cmd::End(commit, reply)) => self.request_end(commit, reply),
                    Some(Cmd::Offsets(req, reply)) => {
                        let r = self.send_offsets(req).await;
                        let _ = reply.send(r);
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

    /// Partitions with a sealed batch waiting to be sent (ready or to be retried). Their open
    /// batches are not sealed at `linger`: they keep filling up to `batch_bytes` (as Kafka's
    /// accumulator does), so that a backlog goes out as a few full batches rather than one
    /// small batch per linger, each waiting for the ones before it.
    fn waiting_partitions(&self) -> std::collections::HashSet<(&str, u32)> {
        self.ready.iter().chain(self.retry.iter().map(|(_, b)| b)).map(|b| (b.topic.as_str(), b.partition)).collect()
    }

    /// Open batches whose linger has passed (by `now`, when given) and whose partition has
    /// nothing sealed waiting.
    fn lingered(&self, now: Option<Instant>) -> Vec<((String, u32), Instant)> {
        let waiting = self.waiting_partitions();
        self.accs
            .iter()
            .map(|(k, a)| (k, a.since + self.cfg.linger))
            .filter(|(k, due)| now.is_none_or(|now| *due <= now) && !waiting.contains(&(k.0.as_str(), k.1)))
            .map(|(k, due)| (k.clone(), due))
            .collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let linger = self.lingered(None).into_iter().map(|(_, due)| due).min();
        let retry = self.retry.iter().map(|(t, _)| *t).min();
        // The oldest waiting batch is (nearly always) at the front.
        let expiry = self.ready.front().map(|b| b.first_sent + self.cfg.delivery_timeout);
        [linger, retry, self.restart_retry, expiry].into_iter().flatten().min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.restart_retry.is_some_and(|t| t <= now) {
            self.restart_retry = None;
        }
        for (k, _) in self.lingered(Some(now)) {
            self.seal(&k);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry).into_iter().partition(|(t, _)| *t <= now);
        self.retry = later;
        self.ready.extend(due.into_iter().map(|(_, b)| b));
        // Batches that cannot go (their partition waits to start over, or for earlier ones)
        // still give up at their delivery timeout.
        let timeout = self.cfg.delivery_timeout;
        let (expired, ready): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.ready).into_iter().partition(|b| b.first_sent.elapsed() >= timeout);
        self.ready = ready;
        for b in expired {
            let elapsed = b.first_sent.elapsed();
            self.fail(b, ClientError::Exhausted { elapsed, last: "the batch could not be sent in time".into() });
        }
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

    /// One request for a producer id, bounded by `request_timeout`.
    async fn init_producer_id(&self) -> Result<(i64, i16), ClientError> {
        match tokio::time::timeout(self.cfg.request_timeout, self.client.init_producer_id()).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Remote(RemoteError {
                code: tonic::Code::DeadlineExceeded,
                message: "no producer id from the coordinator in time".into(),
                retriable: true,
                sluice_code: 0,
            })),
        }
    }

    /// A new producer id, asked again on retriable failures until `delivery_timeout`.
    async fn new_producer_id(&self) -> Result<(i64, i16), ClientError> {
        let started = Instant::now();
        loop {
            match self.init_producer_id().await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_retriable() && started.elapsed() < self.cfg.delivery_timeout => {
                    tracing::debug!(error = %e, "no producer id yet; asking again");
                    tokio::time::sleep(self.cfg.retry_backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fails a record before it is in a batch (and with it, a transactional producer's open
    /// transaction: committing without it would break the all-or-nothing).
    fn refuse(&mut self, w: Waiter, e: ClientError) {
        if let Some(t) = self.txn.as_mut() {
            t.failed(&e);
        }
        let _ = w.send(Err(e));
    }

    async fn add(&mut self, r: ProducerRecord, w: Waiter) {
        if self.cfg.idempotence && self.identity.is_none() {
            match self.new_producer_id().await {
                Ok(id) => self.identity = Some(id),
                Err(e) => return self.refuse(w, e),
            }
        }
        let count = match self.partition_count(&r.topic).await {
            Ok(n) => n,
            Err(e) => return self.refuse(w, e),
        };
        let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let size = BatchBuilder::record_size(r.key.as_deref(), r.value.as_deref(), &headers);
        let p = match (r.partition, &r.key) {
            (Some(p), _) if p >= count => {
                let e = ClientError::Invalid(format!(
                    "partition {p} of topic '{}' does not exist (the topic has {count} partitions)",
                    r.topic
                ));
                return self.refuse(w, e);
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
        let flags = if self.txn.is_some() { sluice_core::batch::TRANSACTIONAL } else { 0 };
        let acc = self.accs.entry(key.clone()).or_insert_with(|| Acc {
            builder: BatchBuilder::new(compression).flags(flags),
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
        let Some(mut acc) = self.accs.remove(key) else { return };
        let (mut ordinal, mut first_seq) = (0, 0);
        if let Some((pid, epoch)) = self.identity {
            let seq = self.seqs.entry(key.clone()).or_insert_with(|| Seq {
                producer_id: pid,
                epoch,
                next: 0,
                next_ordinal: 0,
                unacked: Default::default(),
                in_flight: Default::default(),
                restart: false,
            });
            first_seq = seq.next;
            acc.builder.set_producer(seq.producer_id, seq.epoch, seq.next);
            seq.next = sluice_core::batch::add_sequence(seq.next, acc.builder.len() as i32);
            ordinal = seq.next_ordinal;
            seq.next_ordinal += 1;
            seq.unacked.insert(ordinal);
        }
        match acc.builder.build() {
            Ok(data) => {
                self.buffered += data.len();
                self.ready.push_back(Batch {
                    topic: key.0.clone(),
                    partition: key.1,
                    data,
                    waiters: acc.waiters,
                    first_sent: Instant::now(),
                    traceparent: acc.traceparent,
                    ordinal,
                    sent_pid: -1,
                    copy_until: None,
                    lost_copy_until: None,
                })
            }
            Err(e) => {
                if let Some(seq) = self.seqs.get_mut(key) {
                    // The newest batch of its partition: its sequences are given back.
                    seq.unacked.remove(&ordinal);
                    seq.next = first_seq;
                    seq.next_ordinal = ordinal;
                }
                for w in acc.waiters {
                    self.refuse(w, ClientError::Invalid(e.to_string()));
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

    /// Whether a ready batch may go now. With idempotence a partition's batches go in order
    /// (each only once every earlier unacknowledged one is on the stream: the leader accepts
    /// them only in order, and one sent ahead would come back refused), at most as many as the
    /// leader remembers, and none while the partition starts over.
    fn sendable(&self, b: &Batch) -> bool {
        match self.seqs.get(&(b.topic.clone(), b.partition)) {
            Some(seq) => {
                // Ordinals of a partition are consecutive: the batches unacknowledged lie in
                // [first, first + 5) while they can be in flight, so the leader still remembers
                // the oldest when the newest lands.
                let first = seq.unacked.first().copied().unwrap_or(b.ordinal);
                !seq.restart
                    && b.ordinal < first + MAX_IN_FLIGHT_PER_PARTITION as u64
                    && seq.in_flight.len() < MAX_IN_FLIGHT_PER_PARTITION
                    && seq.unacked.range(..b.ordinal).all(|o| seq.in_flight.contains(o))
            }
            None => true,
        }
    }

    /// Partitions whose unacknowledged batches are all known to be unwritten start over under a
    /// new producer id: their batches, wherever they wait, are renumbered from 0 in order.
    async fn restart_partitions(&mut self) {
        if self.restart_retry.is_some() {
            return;
        }
        let keys: Vec<_> = self.seqs.iter().filter(|(_, s)| s.restart).map(|(k, _)| k.clone()).collect();
        for key in keys {
            // A copy lost with an earlier stream may still be written by the gateway: the
            // batches are renumbered only once none can land any more.
            let pending = self
                .ready
                .iter()
                .chain(self.retry.iter().map(|(_, b)| b))
                .chain(self.inflight.values().flatten())
                .filter(|b| b.topic == key.0 && b.partition == key.1)
                .filter_map(|b| b.lost_copy_until)
                .max();
            if let Some(until) = pending.filter(|t| *t > Instant::now()) {
                self.restart_retry = Some(self.restart_retry.map_or(until, |r| r.min(until)));
                continue;
            }
            let (pid, epoch) = match self.init_producer_id().await {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(error = %e, "no new producer id yet");
                    self.restart_retry = Some(Instant::now() + self.cfg.retry_backoff);
                    return;
                }
            };
            let mut batches: Vec<&mut Batch> = self
                .ready
                .iter_mut()
                .chain(self.retry.iter_mut().map(|(_, b)| b))
                .chain(self.inflight.values_mut().flatten())
                .filter(|b| b.topic == key.0 && b.partition == key.1)
                .collect();
            batches.sort_by_key(|b| b.ordinal);
            let mut next = 0i32;
            for b in batches {
                let mut data = b.data.to_vec();
                let h = sluice_core::batch::BatchHeader::parse(&data).ok();
                sluice_core::batch::set_producer(&mut data, pid, epoch, next);
                next = sluice_core::batch::add_sequence(next, h.map(|h| h.record_count).unwrap_or(0));
                b.data = Bytes::from(data);
            }
            if let Some(seq) = self.seqs.get_mut(&key) {
                tracing::info!(topic = %key.0, partition = key.1, old = seq.producer_id, new = pid, "partition starts over under a new producer id");
                (seq.producer_id, seq.epoch, seq.next, seq.restart) = (pid, epoch, next, false);
            }
        }
    }

    fn begin(&mut self) -> Result<(), ClientError> {
        let Some(t) = self.txn.as_mut() else { return Err(not_transactional()) };
        if let Some(e) = &t.fatal {
            return Err(e.clone());
        }
        if t.open {
            return Err(ClientError::Invalid("a transaction is already open: commit or abort it first".into()));
        }
        t.open = true;
        t.doomed = None;
        Ok(())
    }

    /// A commit or abort: once every batch of the transaction is answered (aborting, those
    /// not sent yet fail now), [`Engine::end_transaction`] runs.
    fn request_end(&mut self, commit: bool, reply: Reply) {
        let what = if commit { "commit" } else { "abort" };
        let refusal = match self.txn.as_ref() {
            None => Some(not_transactional()),
            Some(t) if t.fatal.is_some() => t.fatal.clone(),
            Some(t) if !t.open => Some(ClientError::Invalid(format!(
                "{what} without begin: no transaction is open (call begin_transaction first)"
            ))),
            Some(_) => None,
        };
        if let Some(e) = refusal {
            let _ = reply.send(Err(e));
            return;
        }
        if commit {
            self.seal_all();
        } else {
            let aborted = || ClientError::Invalid("the transaction was aborted before the record was sent".into());
            for (_, acc) in self.accs.drain() {
                for w in acc.waiters {
                    let _ = w.send(Err(aborted()));
                }
            }
            let unsent: Vec<Batch> = self.ready.drain(..).chain(self.retry.drain(..).map(|(_, b)| b)).collect();
            for b in unsent {
                self.fail(b, aborted());
            }
        }
        if let Some(t) = self.txn.as_mut() {
            t.open = false;
            t.ending = Some((commit, reply));
        }
    }

    /// Asks the coordinator to end the transaction; on success the producer moves to the
    /// identity it answers (its next epoch), sequences starting again.
    async fn end_transaction(&mut self, commit: bool) -> Result<(), ClientError> {
        let (Some(t), Some((producer_id, epoch))) = (self.txn.as_mut(), self.identity) else {
            return Err(not_transactional());
        };
        if let Some(why) = t.doomed.clone().filter(|_| commit) {
            t.open = true;
            return Err(ClientError::MustAbort(why));
        }
        let req = EndTxnRequest {
            transactional_id: t.id.clone(),
            producer_id,
            producer_epoch: epoch as i32,
            commit,
            keep_epoch: false,
        };
        let client = self.client.clone();
        let r = self
            .coordinator_call(|| {
                let (client, req) = (client.clone(), req.clone());
                async move { Ok(client.transactions().end_txn(req).await?.into_inner()) }
            })
            .await;
        let Some(t) = self.txn.as_mut() else { return Err(not_transactional()) };
        match r {
            Ok(resp) => {
                let epoch = i16::try_from(resp.producer_epoch).map_err(|_| {
                    ClientError::Invalid(format!("the coordinator gave epoch {} out of range", resp.producer_epoch))
                })?;
                self.identity = Some((resp.producer_id, epoch));
                // Every partition starts its sequences again under the new epoch.
                self.seqs.clear();
                t.doomed = None;
                Ok(())
            }
            Err(e) => {
                let refused = e.sluice_code() == codes::INVALID_TXN_STATE;
                if e.sluice_code() == codes::PRODUCER_FENCED || (refused && !commit) {
                    // Fenced, or an abort of a transaction that in fact committed (an earlier
                    // commit whose answer was lost): this producer's identity is gone.
                    t.fatal = Some(e.clone());
                    return Err(e);
                }
                // Still open: the caller may abort, or, when the outcome is unknown (no
                // answer), commit again: the coordinator answers a repeated end the same way.
                t.open = true;
                if refused {
                    t.doomed.get_or_insert_with(|| e.to_string());
                    return Err(ClientError::MustAbort(e.to_string()));
                }
                Err(e)
            }
        }
    }

    async fn send_offsets(&mut self, mut req: TxnOffsetCommitRequest) -> Result<(), ClientError> {
        let Some(t) = self.txn.as_ref() else { return Err(not_transactional()) };
        if let Some(e) = &t.fatal {
            return Err(e.clone());
        }
        if !t.open {
            return Err(ClientError::Invalid(
                "send_offsets_to_transaction outside a transaction (call begin_transaction first)".into(),
            ));
        }
        let Some((producer_id, epoch)) = self.identity else { return Err(not_transactional()) };
        req.transactional_id = t.id.clone();
        req.producer_id = producer_id;
        req.producer_epoch = epoch as i32;
        let client = self.client.clone();
        let r = self
            .coordinator_call(|| {
                let (client, req) = (client.clone(), req.clone());
                async move { Ok(client.transactions().txn_offset_commit(req).await?.into_inner()) }
            })
            .await;
        let r = r.and_then(|resp| match resp.results.iter().find_map(|p| p.error.as_ref()) {
            Some(e) => Err(ClientError::Remote(RemoteError::from(e))),
            None => Ok(()),
        });
        if let (Err(e), Some(t)) = (&r, self.txn.as_mut()) {
            t.failed(e);
        }
        r
    }

    /// One coordinator call, each try bounded by `request_timeout`, tried again on retriable
    /// failures until `delivery_timeout`.
    async fn coordinator_call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let started = Instant::now();
        loop {
            let e = match tokio::time::timeout(self.cfg.request_timeout, call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_retriable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => ClientError::Disconnected("no answer from the transaction coordinator in time".into()),
            };
            if started.elapsed() >= self.cfg.delivery_timeout {
                return Err(ClientError::Exhausted { elapsed: started.elapsed(), last: e.to_string() });
            }
            tracing::debug!(error = %e, "transaction call failed; trying again");
            tokio::time::sleep(self.cfg.retry_backoff).await;
        }
    }

    /// Sends ready batches: one request per topic, at most one batch per partition each.
    async fn pump(&mut self) {
        self.restart_partitions().await;
        while self.inflight.len() < self.cfg.max_in_flight {
            let Some(first) = self.ready.iter().find(|b| self.sendable(b)) else { return };
            let topic = first.topic.clone();
            if let Err(why) = self.connect().await {
                self.retry_all_ready(&why);
                return;
            }
            let mut batches = Vec::new();
            let mut rest = VecDeque::new();
            let mut taken = std::collections::HashSet::new();
            while let Some(b) = self.ready.pop_front() {
                if b.topic == topic && self.sendable(&b) && taken.insert(b.partition) {
                    batches.push(b);
                } else {
                    rest.push_back(b);
                }
            }
            self.ready = rest;
            for b in &mut batches {
                if let Some(seq) = self.seqs.get_mut(&(b.topic.clone(), b.partition)) {
                    seq.in_flight.insert(b.ordinal);
                    b.sent_pid = seq.producer_id;
                    b.copy_until = Some(Instant::now() + self.cfg.request_timeout + COPY_MARGIN);
                }
            }
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

    /// A batch has left the stream (answered, or its connection lost).
    fn landed(&mut self, b: &Batch) {
        if let Some(seq) = self.seqs.get_mut(&(b.topic.clone(), b.partition)) {
            seq.in_flight.remove(&b.ordinal);
        }
    }

    /// A batch is done with: acknowledged or failed for good.
    fn forget(&mut self, b: &Batch) {
        self.buffered = self.buffered.saturating_sub(b.data.len());
        if let Some(seq) = self.seqs.get_mut(&(b.topic.clone(), b.partition)) {
            seq.unacked.remove(&b.ordinal);
        }
    }

    /// Fails a batch for good (and with it, a transactional producer's open transaction).
    fn fail(&mut self, b: Batch, e: ClientError) {
        self.forget(&b);
        if let Some(t) = self.txn.as_mut() {
            t.failed(&e);
        }
        b.fail(e);
    }

    /// What a refusal of an idempotent batch means. A copy sent under an id its partition has
    /// since left is simply sent again (renumbered). An out-of-order refusal while an earlier
    /// batch is unacknowledged waits for that one. Otherwise the batch was not written and
    /// neither was any later one of its partition, which then starts over.
    fn outcome(&mut self, b: &Batch, e: &RemoteError) -> Outcome {
        if e.retriable || (4000..5000).contains(&e.sluice_code) {
            // A server fault may have written it: sending the same sequence again is safe.
            return Outcome::Retry;
        }
        if e.sluice_code == codes::DUPLICATE_SEQUENCE {
            return Outcome::Written;
        }
        let transactional = self.txn.is_some();
        let Some(seq) = self.seqs.get_mut(&(b.topic.clone(), b.partition)) else { return Outcome::Refused };
        if b.sent_pid != seq.producer_id {
            return Outcome::Retry;
        }
        let oldest = seq.unacked.first() == Some(&b.ordinal);
        let sequence = [codes::OUT_OF_ORDER_SEQUENCE, codes::INVALID_PRODUCER_EPOCH].contains(&e.sluice_code);
        if sequence && !oldest {
            // An earlier batch is not acknowledged yet: this one goes again after it.
            return Outcome::Retry;
        }
        if sequence && transactional {
            // A transaction cannot go on under another identity: it must be aborted.
            return Outcome::Refused;
        }
        if sequence {
            // The leader does not have what this producer wrote before (it forgot the
            // producer): the batch goes again, renumbered with every later one.
            tracing::warn!(topic = %b.topic, partition = b.partition, reason = %e.message, "partition refused the producer's sequence; starting over");
            seq.restart = true;
            return Outcome::Retry;
        }
        // Refused for itself (too large, no key on a compacted topic, ...): it fails. Only
        // when it is the oldest are the later ones certainly unwritten and renumbered now;
        // otherwise the next one is refused out of order once it is the oldest, and then.
        seq.restart |= oldest && !transactional;
        Outcome::Refused
    }

    /// Handles a failed answer for a batch.
    fn failed(&mut self, b: Batch, e: RemoteError) {
        if !self.cfg.idempotence {
            return if e.retriable { self.schedule_retry(b, &e.message) } else { self.fail(b, ClientError::Remote(e)) };
        }
        match self.outcome(&b, &e) {
            Outcome::Retry => self.schedule_retry(b, &e.message),
            Outcome::Written => {
                self.forget(&b);
                for w in b.waiters {
                    let _ = w.send(Ok(Delivery { partition: b.partition, offset: -1 }));
                }
            }
            Outcome::Refused => {
                self.fail(b, ClientError::Remote(e));
            }
        }
    }

    fn schedule_retry(&mut self, b: Batch, why: &str) {
        let elapsed = b.first_sent.elapsed();
        if elapsed >= self.cfg.delivery_timeout {
            self.fail(b, ClientError::Exhausted { elapsed, last: why.to_string() });
        } else {
            tracing::debug!(topic = %b.topic, partition = b.partition, reason = why, "retrying batch");
            self.retry.push((Instant::now() + self.cfg.retry_backoff, b));
        }
    }

    fn on_disconnect(&mut self, why: String) {
        self.conn = None;
        let inflight: Vec<_> = self.inflight.drain().flat_map(|(_, b)| b).collect();
        for mut b in inflight {
            b.lost_copy_until = b.lost_copy_until.max(b.copy_until.take());
            self.landed(&b);
            self.schedule_retry(b, &why);
        }
        self.retry_all_ready(&why);
    }

    fn on_response(&mut self, resp: ProduceResponse) {
        let Some(batches) = self.inflight.remove(&resp.id) else { return };
        for b in &batches {
            self.landed(b);
        }
        if let Some(e) = resp.error {
            let e = RemoteError::from(&e);
            for b in batches {
                self.failed(b, e.clone());
            }
            return;
        }
        let mut results: HashMap<u32, _> = resp.partitions.into_iter().map(|r| (r.partition, r)).collect();
        for b in batches {
            match results.remove(&b.partition) {
                Some(r) => match r.error {
                    None => {
                        self.forget(&b);
                        for (i, w) in b.waiters.into_iter().enumerate() {
                            let offset = if r.base_offset >= 0 { r.base_offset + i as i64 } else { -1 };
                            let _ = w.send(Ok(Delivery { partition: b.partition, offset }));
                        }
                    }
                    Some(e) => self.failed(b, RemoteError::from(&e)),
                },
                None => self.schedule_retry(b, "the gateway did not answer for this partition"),
            }
        }
    }
}

fn not_transactional() -> ClientError {
    ClientError::Invalid("not a transactional producer (create it with Producer::transactional)".into())
}

impl Txn {
    /// Why a record cannot be sent now, if it cannot.
    fn refusal(&self) -> Option<ClientError> {
        if let Some(e) = &self.fatal {
            return Some(e.clone());
        }
        (!self.open).then(|| {
            ClientError::Invalid(format!(
                "producer '{}' is transactional: records are sent inside a transaction (call begin_transaction first)",
                self.id
            ))
        })
    }

    /// Accounts for a failure in the transaction: fencing ends the producer, anything else
    /// the transaction.
    fn failed(&mut self, e: &ClientError) {
        if e.sluice_code() == codes::PRODUCER_FENCED {
            self.fatal = Some(e.clone());
        } else if self.doomed.is_none() {
            self.doomed = Some(e.to_string());
        }
    }
}
