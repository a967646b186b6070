//! `Fetch`: one client stream fanned out to one `Read` stream per leader node.
//!
//! The client's credit (bytes it can take) is passed on to every node stream, and the client
//! stream itself is bounded, so a slow consumer slows the nodes down instead of filling the
//! gateway's memory. Batches go through untouched unless the client asked for plain records.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::SluiceError;
use sluice_core::batch::{BatchHeader, decode_records};
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

    let groups =
        gw.by_leader(&view, &t, wanted.iter().copied(), |pref, offset| ReadPartition { partition: Some(pref), offset });
    for (p, e) in groups.failed {
        let _ = tx.send(Ok(partition_error(p, &e.to_proto()))).await;
    }

    let mut credit_senders = Vec::new();
    let span = tracing::info_span!("fetch_stream", topic = %t.name, partitions = wanted.len());
    for (conn, partitions) in groups.nodes {
        let (ctx, crx) = mpsc::channel::<ReadRequest>(64);
        let begin = ReadRequest {
            kind: Some(read_request::Kind::Start(ReadStart { partitions: partitions.clone(), max_bytes: credit })),
        };
        let _ = ctx.send(begin).await;
        credit_senders.push(ctx);
        let tx = tx.clone();
        let plain = start.plain_records;
        let (gw, attrs) = (gw.clone(), crate::metrics::topic(&t.name));
        tokio::spawn(
            async move {
                let failed = |why: String| {
                    let e = conn.unavailable(why).to_proto();
                    partitions
                        .iter()
                        .map(move |rp| partition_error(rp.partition.as_ref().map_or(0, |r| r.partition), &e))
                        .collect::<Vec<_>>()
                };
                let mut stream = match conn.api().read(crx).await {
                    Ok(s) => s,
                    Err(s) => {
                        for r in failed(s.message().to_string()) {
                            let _ = tx.send(Ok(r)).await;
                        }
                        return;
                    }
                };
                let mut next: BTreeMap<u32, i64> =
                    partitions.iter().map(|rp| (rp.partition.as_ref().map_or(0, |r| r.partition), rp.offset)).collect();
                loop {
                    match stream.next().await {
                        Some(Ok(resp)) => {
                            if !resp.batches.is_empty() {
                                gw.metrics.fetch_bytes.add(resp.batches.len() as u64, &attrs);
                                gw.metrics.fetch_records.add(sluice_core::batch::record_count(&resp.batches), &attrs);
                                gw.metrics.fetch_responses.add(1, &attrs);
                            }
                            let out = convert(resp, plain, &mut next);
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                        Some(Err(s)) => {
                            for r in failed(s.message().to_string()) {
                                let _ = tx.send(Ok(r)).await;
                            }
                            return;
                        }
                    }
                }
            }
            .instrument(span.clone()),
        );
    }
    drop(tx);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = input.message().await {
            if let Some(Kind::Credit(FetchCredit { bytes })) = msg.kind {
                for s in &credit_senders {
                    let _ = s.send(ReadRequest { kind: Some(read_request::Kind::Credit(FetchCredit { bytes })) }).await;
                }
            }
        }
    });
    // Counted as open for as long as the client holds the response stream.
    let open = crate::metrics::StreamGuard::open(&gw.metrics.active_streams, "fetch");
    Ok(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |m| {
        let _ = &open;
        m
    })))
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
