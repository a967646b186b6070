//! `Replicate` and `EpochEnd`: the leader side of replication.
//!
//! The leader pushes its log to a follower from the follower's log end, within the credit the
//! follower grants, and sends the high watermark whenever it moves. Every acknowledgement
//! (a flushed log end) moves the follower's position, the high watermark, and may bring the
//! follower back into the in-sync set. The stream ends as soon as this node stops leading the
//! epoch the follower asked for.

use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_proto::v1::replica_request::Kind;
use sluice_proto::v1::{EpochEndRequest, EpochEndResponse, ReplicaRequest, ReplicaResponse, ReplicaStart};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::RpcStream;
use crate::{Node, Served, manager, map_storage};

/// Largest single push.
const MAX_CHUNK: u64 = 1 << 20;

fn served_for_follower(
    node: &Node,
    r: &sluice_proto::v1::PartitionRef,
    follower: u64,
    epoch: u64,
) -> Result<Served, SluiceError> {
    let served = node.leader(r, Some(epoch))?;
    let is_replica = served.topic.partitions.get(r.partition as usize).is_some_and(|a| a.replicas.contains(&follower));
    if !is_replica {
        return Err(SluiceError::InvalidRequest(format!(
            "node {follower} holds no replica of partition {} of '{}'",
            r.partition, r.topic
        )));
    }
    Ok(served)
}

pub(super) async fn epoch_end(node: &Node, req: EpochEndRequest) -> EpochEndResponse {
    let r = req.partition.unwrap_or_default();
    let served = if req.for_client {
        node.leader(&r, Some(req.leader_epoch))
    } else {
        served_for_follower(node, &r, req.follower, req.leader_epoch)
    };
    let found = match served {
        Ok(s) => s.log().epoch_end(req.epoch).await.map_err(|e| map_storage(&s.replica.pid, e)),
        Err(e) => Err(e),
    };
    match found {
        Ok((epoch, end_offset)) => EpochEndResponse { epoch, end_offset, error: None },
        Err(e) => EpochEndResponse { epoch: -1, end_offset: -1, error: Some(e.to_proto()) },
    }
}

fn error_response(e: SluiceError, log_start: i64) -> ReplicaResponse {
    ReplicaResponse {
        batches: Default::default(),
        high_watermark: -1,
        log_start_offset: log_start,
        error: Some(e.to_proto()),
        traceparent: String::new(),
    }
}

pub(super) async fn serve(
    node: Arc<Node>,
    mut input: impl super::Input<ReplicaRequest>,
) -> Result<RpcStream<ReplicaResponse>, Status> {
    let start = match input.next().await.transpose()?.and_then(|m| m.kind) {
        Some(Kind::Start(s)) => s,
        _ => {
            return Err(SluiceError::InvalidRequest(
                "the first message of a replication stream must be a ReplicaStart".into(),
            )
            .into());
        }
    };
    let (tx, rx) = mpsc::channel::<Result<ReplicaResponse, Status>>(8);
    let r = start.partition.clone().unwrap_or_default();
    let span = tracing::info_span!("replicate", node = node.id, follower = start.follower, topic = %r.topic, partition = r.partition);
    tokio::spawn(push(node, start, input, tx).instrument(span));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn push(
    node: Arc<Node>,
    start: ReplicaStart,
    mut input: impl super::Input<ReplicaRequest>,
    tx: mpsc::Sender<Result<ReplicaResponse, Status>>,
) {
    let r = start.partition.clone().unwrap_or_default();
    let follower = start.follower;
    let served = match served_for_follower(&node, &r, follower, start.leader_epoch) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Ok(error_response(e, -1))).await;
            return;
        }
    };
    let (replica, epoch) = (served.replica.clone(), served.epoch);
    let log = replica.log.clone();
    let o = log.offsets();
    if start.offset < o.log_start_offset || start.offset > o.log_end_offset {
        let e = SluiceError::OffsetOutOfRange {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: start.offset,
            start: o.log_start_offset,
            end: o.log_end_offset,
        };
        let _ = tx.send(Ok(error_response(e, o.log_start_offset))).await;
        return;
    }
    let ack = |end: i64, flushed: i64| {
        if let Some(change) = replica.on_follower_ack(follower, end, flushed) {
            manager::follower_caught_up(&node, &r, replica.clone(), change);
        }
    };
    // The follower flushed everything before it started this session.
    ack(start.offset, start.offset);
    let mut pos = start.offset;
    let mut credit = start.credit.max(MAX_CHUNK);
    let mut sent_hw = -1;
    let mut end_rx = log.subscribe();
    let mut committed = replica.committed();
    loop {
        let c = *committed.borrow_and_update();
        if c.leading != epoch {
            let e = SluiceError::NotLeader { topic: r.topic.clone(), partition: r.partition, node: node.id };
            let _ = tx.send(Ok(error_response(e, -1))).await;
            return;
        }
        let end = *end_rx.borrow_and_update();
        if pos < end && credit > 0 {
            match log.read_to(pos, credit.min(MAX_CHUNK) as usize, i64::MAX).await {
                Ok(rr) if !rr.batches.is_empty() => {
                    credit = credit.saturating_sub(rr.batches.len() as u64);
                    let traceparent = replica.traced_within(pos, rr.next_offset).unwrap_or_default();
                    pos = rr.next_offset;
                    sent_hw = c.hw;
                    let msg = ReplicaResponse {
                        batches: rr.batches,
                        high_watermark: c.hw,
                        log_start_offset: rr.log_start_offset,
                        error: None,
                        traceparent,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let start = log.offsets().log_start_offset;
                    let _ = tx.send(Ok(error_response(map_storage(&replica.pid, e), start))).await;
                    return;
                }
            }
        }
        if c.hw != sent_hw {
            sent_hw = c.hw;
            let msg = ReplicaResponse {
                batches: Default::default(),
                high_watermark: c.hw,
                log_start_offset: log.offsets().log_start_offset,
                error: None,
                traceparent: String::new(),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            msg = input.next() => match msg {
                Some(Ok(ReplicaRequest { kind: Some(Kind::Ack(a)) })) => {
                    credit = credit.saturating_add(a.credit);
                    ack(a.log_end_offset, a.flushed_offset);
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
            r = end_rx.changed(), if credit > 0 => if r.is_err() { return },
            r = committed.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
