//! `Produce`: a bidirectional stream of produce requests, answered by id.
//!
//! Requests are dispatched to the nodes in the order they arrive, so records sent on one
//! stream keep their order per partition; the answers are awaited concurrently. Plain records
//! are partitioned here (explicit partition, murmur2 of the key as Kafka does, or sticky
//! batches) and encoded into RecordBatch v2; ready-encoded batches are forwarded untouched.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::SluiceError;
use sluice_core::batch::{BatchBuilder, HEADER_LEN};
use sluice_core::compression::Compression;
use sluice_core::error::codes;
use sluice_core::partitioner::{StickyPartitioner, partition_for_key};
use sluice_meta::{ClusterView, TopicMeta};
use sluice_proto::v1::{
    self, Acks, AppendRequest, AppendResponse, PartitionProduceResult, ProduceRequest, ProduceResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tracing::Instrument;

use crate::{Router, RpcStream, route};

/// Longest wait between two sends of records a leader change left unwritten.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Largest batch the gateway builds from plain records (below max.message.bytes too).
const MAX_BUILT_BATCH: usize = 1 << 20;

/// First pause before sending again a batch refused because an earlier one of its partition,
/// on the same stream, has not landed yet (doubled at each refusal).
const ORDER_PAUSE: Duration = Duration::from_millis(10);

/// The partition batches of one produce stream not answered yet, in dispatch order. An
/// idempotent producer's batch refused as out of order while an earlier batch of its
/// partition from the same stream is still on its way (being sent again after a leader
/// change, or to a leader just taking up its partition) is sent again instead of failing:
/// the leader accepts a producer's sequences only in order, and the router's re-sends must
/// not turn a failover into an error for the later batches.
#[derive(Default)]
pub struct Unanswered {
    next: std::sync::atomic::AtomicU64,
    by_partition: Mutex<std::collections::HashMap<u32, std::collections::BTreeSet<u64>>>,
}

/// One partition batch of a stream, until answered.
struct Ticket {
    owner: Arc<Unanswered>,
    partition: u32,
    n: u64,
}

impl Unanswered {
    fn enter(self: &Arc<Self>, partition: u32) -> Ticket {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.by_partition.lock().unwrap_or_else(|e| e.into_inner()).entry(partition).or_default().insert(n);
        Ticket { owner: self.clone(), partition, n }
    }
}

impl Ticket {
    /// Whether an earlier batch of the same partition on this stream is still unanswered.
    fn behind_another(&self) -> bool {
        let map = self.owner.by_partition.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&self.partition).and_then(|s| s.first()).is_some_and(|first| *first < self.n)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.owner.by_partition.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(&self.partition) {
            s.remove(&self.n);
            if s.is_empty() {
                map.remove(&self.partition);
            }
        }
    }
}

/// Serves a stream of produce requests: each is dispatched in arrival order and answered by
/// id once its partitions answered. A request whose id is already in flight on this stream is
/// a client bug that would make two answers share one id: it is not dispatched; the requests
/// already in flight are answered, then the stream ends with INVALID_ARGUMENT naming the id.
pub fn serve<S>(gw: Arc<Router>, input: S) -> RpcStream<ProduceResponse>
where
    S: Stream<Item = ProduceRequest> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1024);
    let span = tracing::info_span!("produce_stream");
    tokio::spawn(
        async move {
            let _open = crate::metrics::StreamGuard::open(&gw.metrics.active_streams, "produce");
            let mut sticky = StickyPartitioner::new(gw.settings.batch_bytes, rand::random());
            let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
            // One tracker per topic: a batch can only be behind another of its own partition.
            let mut unanswered: std::collections::HashMap<String, Arc<Unanswered>> = Default::default();
            let mut answers = tokio::task::JoinSet::new();
            let mut input = std::pin::pin!(input);
            while let Some(req) = input.next().await {
                while answers.try_join_next().is_some() {}
                let id = req.id;
                let topic = req.topic.clone();
                // One span per request, continuing the producer's trace.
                let span = tracing::info_span!("produce", %topic, id, otel.kind = "server");
                sluice_telemetry::continue_from(&span, &req.traceparent);
                let started = std::time::Instant::now();
                gw.metrics.produce_requests.add(1, &crate::metrics::topic(&topic));
                if !in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
                    let e = SluiceError::InvalidRequest(format!(
                        "produce request id {id} is already in flight on this stream (ids must be unique among unanswered requests); the stream ends after the requests in flight are answered"
                    ));
                    tracing::debug!(%topic, id, "duplicate produce id");
                    while answers.join_next().await.is_some() {}
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                let order = unanswered.entry(topic.clone()).or_default().clone();
                match dispatch(&gw, req, &mut sticky, &order).instrument(span.clone()).await {
                    Ok(answer) => {
                        let (tx, gw, in_flight) = (tx.clone(), gw.clone(), in_flight.clone());
                        answers.spawn(
                            async move {
                                let resp = answer.await;
                                let ms = started.elapsed().as_secs_f64() * 1000.0;
                                gw.metrics.produce_duration.record(ms, &crate::metrics::topic(&topic));
                                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                                let _ = tx.send(Ok(resp)).await;
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => {
                        tracing::debug!(%topic, error = %e, "produce refused");
                        in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        let _ = tx
                            .send(Ok(ProduceResponse { id, error: Some(e.to_proto()), partitions: Vec::new() }))
                            .await;
                    }
                }
            }
            // The client closed its side: the requests in flight are still answered.
            while answers.join_next().await.is_some() {}
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

#[derive(Default)]
struct Part {
    batches: Vec<Bytes>,
    builder: Option<BatchBuilder>,
    indexes: Vec<u32>,
    records: u32,
    error: Option<SluiceError>,
}

impl Part {
    fn seal(&mut self) -> Result<(), SluiceError> {
        if let Some(b) = self.builder.take().filter(|b| !b.is_empty()) {
            self.batches.push(b.build()?);
        }
        Ok(())
    }

    fn data(&mut self) -> Bytes {
        match self.batches.len() {
            1 => self.batches.pop().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.batches.iter().map(Bytes::len).sum());
                for x in self.batches.drain(..) {
                    b.extend_from_slice(&x);
                }
                b.freeze()
            }
        }
    }
}

enum Pending {
    Sent(oneshot::Receiver<Result<AppendResponse, SluiceError>>),
    Failed(SluiceError),
    /// The node could not be reached at all (e.g. a dead leader whose lease has not expired
    /// yet): certainly not written, so it is sent again once a leader is reachable.
    Unsent(SluiceError),
}

/// Partitions and encodes one request and sends each partition's batches to its leader, in
/// the order of the calls; the returned future awaits the answers.
pub async fn dispatch(
    gw: &Arc<Router>,
    req: ProduceRequest,
    sticky: &mut StickyPartitioner,
    order: &Arc<Unanswered>,
) -> Result<impl Future<Output = ProduceResponse> + use<>, SluiceError> {
    let view = gw.snapshot();
    let t = route::topic(&view, &req.topic)?;
    let cfg = t.config();
    let count = t.partitions.len() as u32;
    let acks = Acks::try_from(req.acks)
        .map_err(|_| SluiceError::InvalidRequest(format!("unknown acks value {}", req.acks)))?;
    if req.records.is_empty() && req.batches.is_empty() {
        return Err(SluiceError::InvalidRequest("a produce request needs records or batches".into()));
    }
    let compression = compression_of(req.compression)?;
    let limit = cfg.max_message_bytes.min(MAX_BUILT_BATCH);
    let now = sluice_core::settings::now_ms();
    let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
    for (i, r) in req.records.iter().enumerate() {
        let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|h| (h.key.as_str(), &h.value[..])).collect();
        let size = BatchBuilder::record_size(r.key.as_deref(), r.value.as_deref(), &headers);
        let p = match (r.partition, &r.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => sticky.next(count, size),
        };
        let part = parts.entry(p).or_default();
        // Every record routed here is listed, also when the partition fails: the client maps
        // the partition's outcome (offsets or error) to each of its records.
        part.indexes.push(i as u32);
        if part.error.is_some() {
            continue;
        }
        if p >= count {
            part.error = Some(SluiceError::UnknownPartition { topic: t.name.clone(), partition: p, count });
            continue;
        }
        if size + HEADER_LEN > cfg.max_message_bytes {
            part.error = Some(SluiceError::RecordTooLarge { size: size + HEADER_LEN, limit: cfg.max_message_bytes });
            continue;
        }
        if part.builder.as_ref().is_some_and(|b| b.estimated_size() + size > limit) {
            part.seal()?;
        }
        let ts = if r.timestamp_ms > 0 { r.timestamp_ms } else { now };
        part.builder.get_or_insert_with(|| BatchBuilder::new(compression)).push(
            ts,
            r.key.as_deref(),
            r.value.as_deref(),
            &headers,
        );
        part.records += 1;
    }
    for pb in req.batches {
        let part = parts.entry(pb.partition).or_default();
        if pb.partition >= count && part.error.is_none() {
            part.error = Some(SluiceError::UnknownPartition { topic: t.name.clone(), partition: pb.partition, count });
        }
        part.seal()?;
        part.batches.push(pb.data);
    }

    // Send in request order; await the answers later, concurrently.
    let mut sent = Vec::with_capacity(parts.len());
    for (p, mut part) in parts {
        part.seal()?;
        let data = part.data();
        let pending = match part.error.take() {
            Some(e) => {
                // Failed here: every plain record routed to the partition failed with it.
                part.records = part.indexes.len() as u32;
                Pending::Failed(e)
            }
            None => {
                let attrs = crate::metrics::topic(&t.name);
                // From the batch headers: plain records and ready-made batches alike.
                gw.metrics.produce_records.add(sluice_core::batch::record_count(&data), &attrs);
                gw.metrics.produce_bytes.add(data.len() as u64, &attrs);
                send(gw, &view, &t, p, data.clone(), acks).await
            }
        };
        let ticket = order.enter(p);
        sent.push((p, part.records, std::mem::take(&mut part.indexes), data, pending, ticket));
    }
    let timeout =
        Duration::from_millis(if req.timeout_ms > 0 { req.timeout_ms as u64 } else { gw.settings.request_timeout_ms });
    let deadline = tokio::time::Instant::now() + timeout;
    let id = req.id;
    let gw = gw.clone();
    let t = t.clone();
    Ok(async move {
        let waits = sent.into_iter().map(|(p, records, record_indexes, data, pending, ticket)| {
            let (gw, t) = (gw.clone(), t.clone());
            async move {
                let mut r = PartitionProduceResult {
                    partition: p,
                    base_offset: -1,
                    record_count: records,
                    error: None,
                    record_indexes,
                };
                match answer(&gw, &t, p, data, acks, pending, deadline, &ticket).await {
                    Ok(Some(resp)) => {
                        r.base_offset = resp.base_offset;
                        r.record_count = resp.record_count;
                    }
                    Ok(None) => {}
                    Err(e) => r.error = Some(e),
                }
                r
            }
        });
        ProduceResponse { id, error: None, partitions: futures_util::future::join_all(waits).await }
    })
}

/// The codec plain records are encoded with.
fn compression_of(value: i32) -> Result<Compression, SluiceError> {
    match v1::Compression::try_from(value) {
        Ok(v1::Compression::Unspecified | v1::Compression::None) => Ok(Compression::None),
        Ok(v1::Compression::Gzip) => Ok(Compression::Gzip),
        Ok(v1::Compression::Lz4) => Ok(Compression::Lz4),
        Ok(v1::Compression::Zstd) => Ok(Compression::Zstd),
        Err(_) => Err(SluiceError::InvalidRequest(format!(
            "unknown compression value {value} (expected 0 unspecified, 1 none, 2 gzip, 3 lz4 or 4 zstd)"
        ))),
    }
}

/// Sends one partition's batches to its leader.
async fn send(gw: &Router, view: &ClusterView, t: &TopicMeta, p: u32, data: Bytes, acks: Acks) -> Pending {
    let target = match gw.target(view, t, p) {
        Ok(target) => target,
        Err(e) => return Pending::Failed(e),
    };
    let append = AppendRequest {
        id: 0,
        partition: Some(target.pref),
        batches: data,
        acks: acks as i32,
        leader_epoch: target.leader_epoch,
        traceparent: sluice_telemetry::traceparent().unwrap_or_default(),
    };
    match target.conn.append(append).await {
        Ok(rx) => Pending::Sent(rx),
        Err((e, false)) => Pending::Unsent(e),
        Err((e, true)) => Pending::Failed(e),
    }
}

/// Whether a failure certainly left the records unwritten, so that sending them again cannot
/// duplicate them: the node refused them (not the leader, or not enough in-sync replicas
/// before the append), or no leader was alive to send them to.
fn unwritten(e: &v1::Error) -> bool {
    [codes::NOT_LEADER, codes::NOT_ENOUGH_REPLICAS, codes::LEADER_NOT_AVAILABLE].contains(&e.sluice_code)
}

/// Whether the batches come from an idempotent producer: the leader then writes each at most
/// once, so they may be sent again after any retriable failure, even one that may have
/// written them (a leader that died before answering).
fn idempotent(data: &[u8]) -> bool {
    sluice_core::batch::BatchHeader::parse(data).is_ok_and(|h| h.has_producer())
}

/// Awaits a partition's answer. During a leader change the records are sent again to the new
/// leader (once the metadata names one) as long as they were certainly not written, or come
/// from an idempotent producer, until the request's deadline: a failover is a pause, not an
/// error, for the producer.
#[allow(clippy::too_many_arguments)]
async fn answer(
    gw: &Router,
    t: &TopicMeta,
    p: u32,
    data: Bytes,
    acks: Acks,
    mut pending: Pending,
    deadline: tokio::time::Instant,
    ticket: &Ticket,
) -> Result<Option<AppendResponse>, v1::Error> {
    let mut view_rx = gw.view.clone();
    let idempotent = idempotent(&data);
    // Doubles with each out-of-order refusal, up to RETRY_PAUSE.
    let mut order_pause = ORDER_PAUSE;
    loop {
        let in_order =
            |e: &v1::Error| idempotent && e.sluice_code == codes::OUT_OF_ORDER_SEQUENCE && ticket.behind_another();
        let (e, retry) = match pending {
            Pending::Unsent(e) => (e.to_proto(), true),
            Pending::Failed(e) => {
                let e = e.to_proto();
                let retry = unwritten(&e) || (idempotent && e.retriable) || in_order(&e);
                (e, retry)
            }
            Pending::Sent(_) if acks == Acks::None => return Ok(None),
            Pending::Sent(rx) => {
                let e = match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(resp))) => match resp.error {
                        Some(e) => e,
                        None => return Ok(Some(resp)),
                    },
                    Ok(Ok(Err(e))) => e.to_proto(),
                    Ok(Err(_)) => SluiceError::NodeUnavailable("the node connection closed".into()).to_proto(),
                    Err(_) => return Err(SluiceError::Timeout("no answer from the node in time".into()).to_proto()),
                };
                let retry = unwritten(&e) || (idempotent && e.retriable) || in_order(&e);
                (e, retry)
            }
        };
        if !retry {
            return Err(e);
        }
        // Wait for the metadata to move (a new leader or epoch), or a moment when the refusal
        // was not about the metadata (a leader briefly unsure of its own lease), then try again.
        view_rx.borrow_and_update();
        let wait = if in_order(&e) {
            order_pause = (order_pause * 2).min(RETRY_PAUSE);
            order_pause / 2
        } else {
            RETRY_PAUSE
        };
        let pause = tokio::time::Instant::now() + wait;
        if pause >= deadline {
            return Err(e);
        }
        let _ = tokio::time::timeout_at(pause, view_rx.changed()).await;
        let view = gw.snapshot();
        let Some(t2) = view.topics.get(&t.name).filter(|x| x.topic_id == t.topic_id).cloned() else { return Err(e) };
        tracing::debug!(topic = %t.name, partition = p, reason = %e.message, "sending again after a leader change");
        pending = send(gw, &view, &t2, p, data.clone(), acks).await;
    }
}
