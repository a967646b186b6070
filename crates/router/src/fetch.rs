//! Fetch: one client stream fanned out to one `Read` stream per leader node.
//!
//! The client's credit is one budget for the whole stream, however many nodes serve it: a
//! forwarder hands responses to the client only while the client has credit left, charging
//! each its stored batch bytes (`FetchResponse.charged_bytes`), and tops up the credit of the
//! node a response came from by what it used. Each node therefore runs at most one window
//! (the client's initial `max_bytes`) ahead of the client, so a slow consumer slows the nodes
//! down, the gateway holds at most a window per node, and a response is sent only while the
//! client has credit left: the total passes what the client granted by less than one response
//! (at most a window, or one batch when a single batch is larger). Batches go through untouched unless the client asked for plain records.
//! When a partition's leader changes or its node dies, it is read from the new leader (once
//! the metadata names one) from the next offset: consumers see a pause, not an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_core::SluiceError;
use sluice_core::batch::{self, BatchHeader, decode_records};
use sluice_core::error::codes;
use sluice_meta::{ClusterView, TopicMeta};
use sluice_proto::v1::{
    ConsumedRecord, FetchCredit, FetchResponse, FetchStart, Header, IsolationLevel, ReadPartition, ReadRequest,
    ReadResponse, ReadStart, read_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::Instrument;

use crate::pool::NodeConn;
use crate::{Router, RpcStream, route};

/// Credit (and node window) when the client asked for none.
pub const DEFAULT_CREDIT: u64 = 1 << 20;

/// The reader id of responses made by the gateway itself (no node credit to top up).
const NO_READER: u64 = u64::MAX;

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

/// Serves one fetch: `start` says what to read, `credits` are the client's later grants (in
/// bytes); the stream ends when the client's side ended and its credit is spent or nothing
/// more is there, or when every partition failed.
pub async fn serve<C>(gw: Arc<Router>, start: FetchStart, credits: C) -> Result<RpcStream<FetchResponse>, SluiceError>
where
    C: Stream<Item = u64> + Send + 'static,
{
    let view = gw.snapshot();
    let t = route::topic(&view, &start.topic)?;
    let isolation = IsolationLevel::try_from(start.isolation_level).map_err(|_| {
        SluiceError::InvalidRequest(format!(
            "unknown isolation level {} (expected 0 read_uncommitted or 1 read_committed)",
            start.isolation_level
        ))
    })?;
    gw.metrics.fetch_requests.add(1, &crate::metrics::topic(&t.name));
    let count = t.partitions.len() as u32;
    let wanted: Vec<(u32, i64)> = if start.partitions.is_empty() {
        (0..count).map(|p| (p, -2)).collect()
    } else {
        start.partitions.iter().map(|p| (p.partition, p.offset)).collect()
    };
    for (p, _) in &wanted {
        if *p >= count {
            return Err(SluiceError::UnknownPartition { topic: t.name.clone(), partition: *p, count });
        }
    }
    let credit = if start.max_bytes == 0 { DEFAULT_CREDIT } else { start.max_bytes };
    let (out_tx, out_rx) = mpsc::channel::<Result<FetchResponse, Status>>(16);
    let (merged_tx, merged_rx) = mpsc::channel::<(u64, FetchResponse)>(16);
    let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
    let readers: Readers = Arc::default();
    let shared = Arc::new(Shared {
        gw: gw.clone(),
        topic: t.clone(),
        tx: merged_tx,
        plain: start.plain_records,
        isolation,
        window: credit,
        attrs: crate::metrics::topic(&t.name),
        readers: readers.clone(),
        next_reader: AtomicU64::new(0),
        input_closed: AtomicBool::new(false),
        orphans: orphans_tx,
        span: tracing::info_span!("fetch_stream", topic = %t.name, partitions = wanted.len()),
    });
    route_partitions(&shared, &view, wanted).await;
    tokio::spawn(reroute(Arc::downgrade(&shared), orphans_rx));
    let closed = Arc::downgrade(&shared);
    drop(shared);
    tokio::spawn(forward(credit, credits, merged_rx, out_tx, readers, closed));
    // Counted as open for as long as the client holds the response stream.
    let open = crate::metrics::StreamGuard::open(&gw.metrics.active_streams, "fetch");
    Ok(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(out_rx), move |m| {
        let _ = &open;
        m
    })))
}

/// The node streams of one fetch, by reader id: the request side (the only holder, so
/// dropping it ends the node stream) and the credit the node has not used yet.
type Readers = Arc<Mutex<BTreeMap<u64, (mpsc::Sender<ReadRequest>, u64)>>>;

/// Hands node responses to the client within its credit and tops up each node's window (the
/// client's initial credit).
async fn forward<C>(
    window: u64,
    credits: C,
    mut merged: mpsc::Receiver<(u64, FetchResponse)>,
    out: mpsc::Sender<Result<FetchResponse, Status>>,
    readers: Readers,
    shared: std::sync::Weak<Shared>,
) where
    C: Stream<Item = u64> + Send + 'static,
{
    let mut remaining = window;
    let mut credits = std::pin::pin!(credits);
    let mut credits_open = true;
    loop {
        if !credits_open && remaining == 0 {
            // No more credit can come: what the client could take has been sent.
            break;
        }
        tokio::select! {
            grant = credits.next(), if credits_open => match grant {
                Some(bytes) => remaining = remaining.saturating_add(bytes),
                None => {
                    // The client closed its side: the node streams get no more credit, so they
                    // end once they have sent what they could (and this stream after them).
                    credits_open = false;
                    close_readers(&readers, &shared);
                }
            },
            next = merged.recv(), if remaining > 0 => {
                let Some((reader, resp)) = next else { break };
                let charged = resp.charged_bytes;
                remaining = remaining.saturating_sub(charged);
                if out.send(Ok(resp)).await.is_err() {
                    break;
                }
                if charged > 0 {
                    top_up(&readers, reader, charged, window);
                }
            }
            _ = out.closed() => break,
        }
    }
    // Done (credit spent with the client's side closed, the client gone, or nothing left to
    // read): the node streams end now, not when their partitions next get data.
    close_readers(&readers, &shared);
}

/// Ends every node stream of the fetch (their request sides are dropped) and keeps new ones
/// from starting with credit. The flag is set under the readers' lock, which `spawn_reader`
/// also holds to check it and insert: no reader slips in after the clear.
fn close_readers(readers: &Readers, shared: &std::sync::Weak<Shared>) {
    let mut map = readers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = shared.upgrade() {
        s.input_closed.store(true, Ordering::Release);
    }
    map.clear();
}

/// Gives a node back the credit a forwarded response used, up to the window. Never waits: an
/// in-process node reads its credit only between sends, so waiting here for room while the
/// node waits for room in our data queue would deadlock. A full queue means the node holds
/// grants it has not read yet; what could not be queued is granted with the next top-up.
fn top_up(readers: &Readers, reader: u64, used: u64, window: u64) {
    let mut map = readers.lock().unwrap_or_else(|p| p.into_inner());
    let Some((tx, unused)) = map.get_mut(&reader) else { return };
    *unused = unused.saturating_sub(used);
    let grant = window.saturating_sub(*unused);
    if grant == 0 {
        return;
    }
    let credit = ReadRequest { kind: Some(read_request::Kind::Credit(FetchCredit { bytes: grant })) };
    if tx.try_send(credit).is_ok() {
        *unused += grant;
    }
}

/// What the node readers of one client fetch share. The response stream ends when the last
/// reader (or partitions waiting for a new leader) lets go of it.
struct Shared {
    gw: Arc<Router>,
    topic: Arc<TopicMeta>,
    /// To the forwarder, tagged with the reader id.
    tx: mpsc::Sender<(u64, FetchResponse)>,
    plain: bool,
    isolation: IsolationLevel,
    /// The credit each node stream starts with and is topped up to.
    window: u64,
    attrs: [opentelemetry::KeyValue; 1],
    readers: Readers,
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
    // Leaders from this view, not from the topic as it was when the stream opened: a
    // partition whose leader moved is read from the new one.
    let Some(t) = view.topics.get(&shared.topic.name).filter(|t| t.topic_id == shared.topic.topic_id).cloned() else {
        let e = SluiceError::UnknownTopic(shared.topic.name.clone()).to_proto();
        for (p, _) in wanted {
            let _ = shared.tx.send((NO_READER, partition_error(p, &e))).await;
        }
        return;
    };
    let groups = shared
        .gw
        .by_leader(view, &t, wanted.iter().copied(), |pref, offset| ReadPartition { partition: Some(pref), offset });
    let mut waiting = Vec::new();
    for (p, e) in groups.failed {
        let e = e.to_proto();
        if moved(&e) {
            waiting.push((p, wanted.iter().find(|w| w.0 == p).map_or(-2, |w| w.1)));
        } else {
            let _ = shared.tx.send((NO_READER, partition_error(p, &e))).await;
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
        kind: Some(read_request::Kind::Start(ReadStart {
            partitions: partitions.clone(),
            max_bytes: shared.window,
            isolation_level: shared.isolation as i32,
        })),
    };
    let _ = ctx.send(begin).await;
    let id = shared.next_reader.fetch_add(1, Ordering::Relaxed);
    {
        let mut map = shared.readers.lock().unwrap_or_else(|p| p.into_inner());
        if !shared.input_closed.load(Ordering::Acquire) {
            map.insert(id, (ctx, shared.window));
        }
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
                        if shared.tx.send((id, out)).await.is_err() {
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
            shared.readers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        .instrument(span),
    );
}

fn convert(resp: ReadResponse, plain: bool, next: &mut BTreeMap<u32, i64>) -> FetchResponse {
    let partition = resp.partition.as_ref().map_or(0, |r| r.partition);
    let mut out = FetchResponse {
        partition,
        charged_bytes: resp.batches.len() as u64,
        batches: Bytes::new(),
        records: Vec::new(),
        high_watermark: resp.high_watermark,
        log_start_offset: resp.log_start_offset,
        next_offset: resp.next_offset,
        error: resp.error,
        aborted_transactions: Vec::new(),
    };
    if !plain || out.error.is_some() {
        out.batches = resp.batches;
        out.aborted_transactions = resp.aborted_transactions;
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
        // Markers never reach applications; aborted records only read_uncommitted ones (the
        // node lists aborted transactions for read_committed reads only).
        if batch::skipped_when_committed(&h, &resp.aborted_transactions) {
            continue;
        }
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
