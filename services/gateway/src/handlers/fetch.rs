//! `Fetch`: one client stream fanned out to one `Read` stream per leader node.
//!
//! The client's credit (bytes it can take) is passed on to every node stream, and the client
//! stream itself is bounded, so a slow consumer slows the nodes down instead of filling the
//! gateway's memory. Batches go through untouched unless the client asked for plain records.
//! When a partition's leader changes or its node dies, the gateway reads it from the new
//! leader (once the metadata names one) from the next offset: consumers see a pause, not an
//! error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_core::SluiceError;
use sluice_core::batch::{BatchHeader, decode_records};
use sluice_core::error::codes;
use sluice_meta::{ClusterView, TopicMeta};
use sluice_proto::v1::fetch_request::Kind;
use sluice_proto::v1::{
    ConsumedRecord, FetchCredit, FetchRequest, FetchResponse, Header, ReadPartition, ReadRequest, ReadResponse,
    ReadStart, read_request,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::RpcStream;
use crate::pool::NodeConn;
use crate::{Gateway, route};

const DEFAULT_CREDIT: u64 = 1 << 20;

fn partition_error(partition: u32, e: &sluice_proto::v1::Error) -> FetchResponse {
    FetchResponse {
        partition,
        error: Some(e.clone()),
        high_watermark: -1,
        log_start_offset: -1,
        next_offset: -1,
        ..Default::default()
    }
}

pub(super) async fn serve(
    gw: Arc<Gateway>,
    mut input: Streaming<FetchRequest>,
) -> Result<RpcStream<FetchResponse>, Status> {
    let start = match input.message().await?.and_then(|m| m.kind) {
        Some(Kind::Start(s)) => s,
        _ => return Err(Status::invalid_argument("the first message of a fetch stream must be a FetchStart")),
    };
    let view = gw.snapshot();
    let t = route::topic(&view, &start.topic)?;
    gw.metrics.fetch_requests.add(1, &crate::metrics::topic(&t.name));
    let count = t.partitions.len() as u32;
    let wanted: Vec<(u32, i64)> = if start.partitions.is_empty() {
        (0..count).map(|p| (p, -2)).collect()
    } else {
        start.partitions.iter().map(|p| (p.partition, p.offset)).collect()
    };
    for (p, _) in &wanted {
        if *p >= count {
            return Err(SluiceError::UnknownPartition { topic: t.name.clone(), partition: *p, count }.into());
        }
    }
    let credit = if start.max_bytes == 0 { DEFAULT_CREDIT } else { start.max_bytes };
    let (tx, rx) = mpsc::channel::<Result<FetchResponse, Status>>(16);
    let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        gw: gw.clone(),
        topic: t.clone(),
        tx,
        plain: start.plain_records,
        credit,
        attrs: crate::metrics::topic(&t.name),
        credit_senders: Mutex::new(BTreeMap::new()),
        next_reader: AtomicU64::new(0),
        input_closed: AtomicBool::new(false),
        orphans: orphans_tx,
        span: tracing::info_span!("fetch_stream", topic = %t.name, partitions = wanted.len()),
    });
    route_partitions(&shared, &view, wanted).await;
    tokio::spawn(reroute(Arc::downgrade(&shared), orphans_rx));
    let credit_of = Arc::downgrade(&shared);
    drop(shared);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = input.message().await {
            if let Some(Kind::Credit(FetchCredit { bytes })) = msg.kind {
                let Some(shared) = credit_of.upgrade() else { break };
                let senders: Vec<_> =
                    shared.credit_senders.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                for s in senders {
                    let _ = s.send(ReadRequest { kind: Some(read_request::Kind::Credit(FetchCredit { bytes })) }).await;
                }
            }
        }
        // The client closed its side: the node streams get no more credit, so they end once
        // they have sent what they could (and the response stream ends after them).
        if let Some(shared) = credit_of.upgrade() {
            shared.input_closed.store(true, Ordering::Release);
            shared.credit_senders.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    });
    // Counted as open for as long as the client holds the response stream.
    let open = crate::metrics::StreamGuard::open(&gw.metrics.active_streams, "fetch");
    Ok(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |m| {
        let _ = &open;
        m
    })))
}

/// What the node readers of one client fetch share. The response stream ends when the last
/// reader (or partitions waiting for a new leader) lets go of it.
struct Shared {
    gw: Arc<Gateway>,
    topic: Arc<TopicMeta>,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
    plain: bool,
    credit: u64,
    attrs: [opentelemetry::KeyValue; 1],
    /// Every open node stream, to pass the client's credit on (the only holders of their
    /// request sides, so that dropping them ends the node streams).
    credit_senders: Mutex<BTreeMap<u64, mpsc::Sender<ReadRequest>>>,
    next_reader: AtomicU64,
    input_closed: AtomicBool,
    /// Partitions whose leader changed or went away, with their next offset.
    orphans: mpsc::UnboundedSender<Orphans>,
    span: tracing::Span,
}

/// Partitions to read from their new leaders (partition, next offset), keeping the fetch's
/// shared state alive meanwhile.
type Orphans = (Arc<Shared>, Vec<(u32, i64)>);

/// Whether a partition error means "read it from its new leader", not "tell the client".
fn moved(e: &sluice_proto::v1::Error) -> bool {
    [codes::NOT_LEADER, codes::NODE_UNAVAILABLE, codes::LEADER_NOT_AVAILABLE].contains(&e.sluice_code)
}

/// Opens a node stream per leader for `wanted` (partition, next offset); partitions without a
/// live leader wait for one.
async fn route_partitions(shared: &Arc<Shared>, view: &ClusterView, wanted: Vec<(u32, i64)>) {
    let t = shared.topic.clone();
    let groups = shared
        .gw
        .by_leader(view, &t, wanted.iter().copied(), |pref, offset| ReadPartition { partition: Some(pref), offset });
    let mut waiting = Vec::new();
    for (p, e) in groups.failed {
        let e = e.to_proto();
        if moved(&e) {
            waiting.push((p, wanted.iter().find(|w| w.0 == p).map_or(-2, |w| w.1)));
        } else {
            let _ = shared.tx.send(Ok(partition_error(p, &e))).await;
        }
    }
    if !waiting.is_empty() {
        let _ = shared.orphans.send((shared.clone(), waiting));
    }
    for (conn, partitions) in groups.nodes {
        spawn_reader(shared.clone(), conn, partitions).await;
    }
}

/// Waits for the metadata to name new leaders (or a moment), then reads the orphaned
/// partitions from where they stopped. Reads are idempotent: a failover is a pause for the
/// consumer, not an error.
async fn reroute(shared: std::sync::Weak<Shared>, mut orphans: mpsc::UnboundedReceiver<Orphans>) {
    let Some(gw) = shared.upgrade().map(|s| s.gw.clone()) else { return };
    let mut view_rx = gw.view.clone();
    while let Some((keep, mut parts)) = orphans.recv().await {
        while let Ok((_, more)) = orphans.try_recv() {
            parts.extend(more);
        }
        view_rx.borrow_and_update();
        tokio::select! {
            _ = view_rx.changed() => {}
            _ = tokio::time::sleep(REROUTE_PAUSE) => {}
            _ = keep.tx.closed() => return,
        }
        tracing::debug!(partitions = ?parts, "fetch: reading moved partitions from their new leaders");
        let view = gw.snapshot();
        route_partitions(&keep, &view, parts).await;
    }
}

/// Longest pause before orphaned partitions are routed again.
const REROUTE_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

async fn spawn_reader(shared: Arc<Shared>, conn: Arc<NodeConn>, partitions: Vec<ReadPartition>) {
    let (ctx, crx) = mpsc::channel::<ReadRequest>(64);
    let begin = ReadRequest {
        kind: Some(read_request::Kind::Start(ReadStart { partitions: partitions.clone(), max_bytes: shared.credit })),
    };
    let _ = ctx.send(begin).await;
    let id = shared.next_reader.fetch_add(1, Ordering::Relaxed);
    if !shared.input_closed.load(Ordering::Acquire) {
        shared.credit_senders.lock().unwrap_or_else(|p| p.into_inner()).insert(id, ctx);
    }
    let span = shared.span.clone();
    tokio::spawn(
        async move {
            let mut next: BTreeMap<u32, i64> =
                partitions.iter().map(|rp| (rp.partition.as_ref().map_or(0, |r| r.partition), rp.offset)).collect();
            let orphan = |parts: Vec<(u32, i64)>| {
                if !parts.is_empty() {
                    let _ = shared.orphans.send((shared.clone(), parts));
                }
            };
            let mut stream = match conn.api().read(crx).await {
                Ok(s) => s,
                Err(s) => {
                    tracing::debug!(node = conn.id, reason = %s.message(), "fetch: node unreachable");
                    orphan(next.into_iter().collect());
                    return;
                }
            };
            loop {
                match stream.next().await {
                    Some(Ok(resp)) => {
                        let p = resp.partition.as_ref().map_or(0, |r| r.partition);
                        if resp.error.as_ref().is_some_and(moved) {
                            // The node stopped serving it: read it elsewhere from where it was.
                            if let Some(o) = next.remove(&p) {
                                orphan(vec![(p, o)]);
                            }
                            continue;
                        }
                        if !resp.batches.is_empty() {
                            let a = &shared.attrs;
                            shared.gw.metrics.fetch_bytes.add(resp.batches.len() as u64, a);
                            shared.gw.metrics.fetch_records.add(sluice_core::batch::record_count(&resp.batches), a);
                            shared.gw.metrics.fetch_responses.add(1, a);
                        }
                        let out = convert(resp, shared.plain, &mut next);
                        if shared.tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                    Some(Err(s)) => {
                        tracing::debug!(node = conn.id, reason = %s.message(), "fetch: node stream broke");
                        orphan(std::mem::take(&mut next).into_iter().collect());
                        break;
                    }
                }
            }
            // This node stream is done: stop passing credit to it.
            shared.credit_senders.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        .instrument(span),
    );
}

fn convert(resp: ReadResponse, plain: bool, next: &mut BTreeMap<u32, i64>) -> FetchResponse {
    let partition = resp.partition.as_ref().map_or(0, |r| r.partition);
    let mut out = FetchResponse {
        partition,
        batches: Bytes::new(),
        records: Vec::new(),
        high_watermark: resp.high_watermark,
        log_start_offset: resp.log_start_offset,
        next_offset: resp.next_offset,
        error: resp.error,
    };
    if !plain || out.error.is_some() {
        out.batches = resp.batches;
        return out;
    }
    let from = next.get(&partition).copied().unwrap_or(-2);
    let mut rest = resp.batches;
    while !rest.is_empty() {
        let Ok(h) = BatchHeader::parse(&rest) else { break };
        if h.total_len() > rest.len() {
            break;
        }
        let b = rest.split_to(h.total_len());
        match decode_records(&b) {
            Ok(recs) => out.records.extend(recs.into_iter().filter(|r| r.offset >= from).map(|r| ConsumedRecord {
                partition,
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|(key, value)| Header { key, value }).collect(),
            })),
            Err(e) => {
                out.error = Some(SluiceError::Storage(format!("stored batch does not decode: {e}")).to_proto());
                break;
            }
        }
    }
    next.insert(partition, resp.next_offset);
    out
}
