//! `Read`: streams whole batches to a gateway while it has credit, and waits for new
//! records (long poll) when a partition is caught up.

use std::sync::Arc;

use futures_util::future::select_all;
use sluice_core::SluiceError;
use sluice_proto::v1::read_request::Kind;
use sluice_proto::v1::{AbortedTransaction, IsolationLevel, PartitionRef, ReadRequest, ReadResponse, ReadStart};
use sluice_storage::PartitionId;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::RpcStream;
use crate::replica::{Committed, Replica};
use crate::{Node, map_storage};

/// Largest single response; the rest follows in later messages.
const MAX_CHUNK: u64 = 1 << 20;
/// Credit when the reader asked for none.
const DEFAULT_CREDIT: u64 = 1 << 20;

struct Cursor {
    r: PartitionRef,
    pid: PartitionId,
    /// Held so that the watch below stays open while the cursor lives.
    replica: Arc<Replica>,
    offset: i64,
    /// Readers see records below the high watermark only.
    committed: watch::Receiver<Committed>,
    epoch: u64,
    /// READ_COMMITTED: below the last stable offset only, with the aborted transactions.
    read_committed: bool,
}

fn error_response(r: PartitionRef, e: SluiceError) -> ReadResponse {
    ReadResponse {
        partition: Some(r),
        batches: Default::default(),
        high_watermark: -1,
        log_start_offset: -1,
        next_offset: -1,
        error: Some(e.to_proto()),
        aborted_transactions: Vec::new(),
    }
}

pub(super) async fn serve(
    node: Arc<Node>,
    mut input: impl super::Input<ReadRequest>,
) -> Result<RpcStream<ReadResponse>, Status> {
    let start = match input.next().await.transpose()?.and_then(|m| m.kind) {
        Some(Kind::Start(s)) => s,
        _ => {
            return Err(
                SluiceError::InvalidRequest("the first message of a read stream must be a ReadStart".into()).into()
            );
        }
    };
    let (tx, rx) = mpsc::channel::<Result<ReadResponse, Status>>(8);
    let span = tracing::info_span!("read_stream", node = node.id, partitions = start.partitions.len());
    tokio::spawn(read_loop(node, start, input, tx).instrument(span));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn open_cursor(
    node: &Node,
    p: sluice_proto::v1::ReadPartition,
    read_committed: bool,
) -> Result<Cursor, (PartitionRef, SluiceError)> {
    let r = p
        .partition
        .ok_or_else(|| (PartitionRef::default(), SluiceError::InvalidRequest("read without a partition".into())))?;
    let served = node.leader(&r, None).map_err(|e| (r.clone(), e))?;
    let pid = PartitionId { topic: r.topic.clone(), topic_id: served.topic.topic_id, partition: r.partition };
    let o = served.log().offsets();
    let offset = match p.offset {
        -2 => o.log_start_offset,
        // The end a reader can see: for read_committed, the last stable offset.
        -1 if read_committed => served.replica.high_watermark().min(served.log().first_unstable_offset()),
        -1 => served.replica.high_watermark(),
        n => n,
    };
    if offset < o.log_start_offset || offset > o.log_end_offset {
        let e = SluiceError::OffsetOutOfRange {
            topic: r.topic.clone(),
            partition: r.partition,
            offset,
            start: o.log_start_offset,
            end: o.log_end_offset,
        };
        return Err((r, e));
    }
    let committed = served.replica.committed();
    Ok(Cursor { r, pid, replica: served.replica.clone(), offset, committed, epoch: served.epoch, read_committed })
}

async fn read_loop(
    node: Arc<Node>,
    start: ReadStart,
    mut input: impl super::Input<ReadRequest>,
    tx: mpsc::Sender<Result<ReadResponse, Status>>,
) {
    let mut credit = if start.max_bytes == 0 { DEFAULT_CREDIT } else { start.max_bytes };
    let mut input_open = true;
    let mut cursors = Vec::new();
    let read_committed = start.isolation_level == IsolationLevel::ReadCommitted as i32;
    for p in start.partitions {
        match open_cursor(&node, p, read_committed) {
            Ok(c) => cursors.push(c),
            Err((r, e)) => {
                if tx.send(Ok(error_response(r, e))).await.is_err() {
                    return;
                }
            }
        }
    }
    loop {
        let mut progressed = false;
        let mut failed = Vec::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            if credit == 0 {
                break;
            }
            let com = *c.committed.borrow_and_update();
            if com.leading != c.epoch {
                let e = SluiceError::NotLeader { topic: c.r.topic.clone(), partition: c.r.partition, node: node.id };
                if tx.send(Ok(error_response(c.r.clone(), e))).await.is_err() {
                    return;
                }
                failed.push(i);
                continue;
            }
            // The last stable offset moves when a marker lands, which also moves the high
            // watermark: waiting for the latter wakes read_committed readers too.
            let limit = if c.read_committed { com.hw.min(c.replica.log.first_unstable_offset()) } else { com.hw };
            if c.offset >= limit {
                continue;
            }
            match c.replica.log.read_to(c.offset, credit.min(MAX_CHUNK) as usize, limit).await {
                Ok(r) if r.batches.is_empty() => {}
                Ok(r) => {
                    let aborted = match c.read_committed {
                        true => match c.replica.log.aborted_transactions(c.offset, r.next_offset).await {
                            Ok(a) => a,
                            Err(e) => {
                                let e = map_storage(&c.pid, e);
                                if tx.send(Ok(error_response(c.r.clone(), e))).await.is_err() {
                                    return;
                                }
                                failed.push(i);
                                continue;
                            }
                        },
                        false => Vec::new(),
                    };
                    credit = credit.saturating_sub(r.batches.len() as u64);
                    c.offset = r.next_offset;
                    progressed = true;
                    let resp = ReadResponse {
                        partition: Some(c.r.clone()),
                        batches: r.batches,
                        high_watermark: com.hw,
                        log_start_offset: r.log_start_offset,
                        next_offset: r.next_offset,
                        error: None,
                        aborted_transactions: aborted
                            .into_iter()
                            .map(|a| AbortedTransaction {
                                producer_id: a.producer_id,
                                first_offset: a.first_offset,
                                last_offset: a.last_offset,
                            })
                            .collect(),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let e = map_storage(&c.pid, e);
                    if tx.send(Ok(error_response(c.r.clone(), e))).await.is_err() {
                        return;
                    }
                    failed.push(i);
                }
            }
        }
        for i in failed.into_iter().rev() {
            cursors.remove(i);
        }
        if cursors.is_empty() {
            return;
        }
        if progressed && credit > 0 {
            continue;
        }
        if !input_open && (credit == 0 || !progressed) {
            // A reader that closed its side gets what is there, up to its credit, then the end
            // (it can no longer grant credit, and nobody would wait for its long poll).
            return;
        }
        let any_change = select_all(cursors.iter_mut().map(|c| Box::pin(c.committed.changed())));
        tokio::select! {
            msg = input.next(), if input_open => match msg {
                Some(Ok(ReadRequest { kind: Some(Kind::Credit(c)) })) => credit = credit.saturating_add(c.bytes),
                Some(Ok(_)) => {}
                None => input_open = false,
                Some(Err(_)) => return,
            },
            _ = any_change, if credit > 0 => {}
            _ = tx.closed() => return,
        }
    }
}
