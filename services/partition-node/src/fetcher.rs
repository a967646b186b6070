//! The follower side of replication, one task per followed partition.
//!
//! A session first makes what the replica holds durable, then asks the leader where the
//! replica's last epoch ends in the leader's log and truncates anything after it (KIP-101 and
//! KIP-279: truncation by leader epoch, not by high watermark, so a replica never keeps
//! records the leader does not have, nor drops acknowledged ones). Then it opens `Replicate`
//! at its log end: the leader pushes batches within the granted credit; the replica stores
//! them as they are and acknowledges its new log end with more credit, then acknowledges
//! again once a flush (shared with other partitions) has made them durable.
//! Sessions restart with a backoff on any failure until the manager stops the task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use sluice_core::SluiceError;
use sluice_core::error::{RemoteError, codes};
use sluice_proto::v1::replica_request::Kind;
use sluice_proto::v1::{EpochEndRequest, PartitionRef, ReplicaAck, ReplicaRequest, ReplicaStart};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::replica::Replica;
use crate::{Node, map_storage};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Local(#[from] SluiceError),
    #[error("leader: {0}")]
    Remote(#[from] RemoteError),
}

impl From<tonic::Status> for FetchError {
    fn from(s: tonic::Status) -> Self {
        Self::Remote(s.into())
    }
}

pub(crate) async fn run(
    node: Arc<Node>,
    replica: Arc<Replica>,
    pref: PartitionRef,
    leader: u64,
    epoch: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        // Dropping a session mid-copy is safe: the replica refuses writes for a role it no
        // longer has.
        let r = tokio::select! {
            r = session(&node, &replica, &pref, leader, epoch) => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(partition = %replica.pid, leader, epoch, error = %e, "replication session ended");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn session(
    node: &Arc<Node>,
    replica: &Arc<Replica>,
    pref: &PartitionRef,
    leader: u64,
    epoch: u64,
) -> Result<(), FetchError> {
    let addr = node
        .snapshot()
        .nodes
        .get(&leader)
        .map(|n| n.addr.clone())
        .ok_or_else(|| SluiceError::NodeUnavailable(format!("leader {leader} of {} is not alive", replica.pid)))?;
    let mut client = node.peers.get(leader, &addr)?;
    // Whatever an earlier session copied is reported below as this replica's position, so it
    // must be on disk first.
    node.sync().await?;

    let last = replica.log.last_epoch();
    let req = EpochEndRequest {
        partition: Some(pref.clone()),
        follower: node.id,
        leader_epoch: epoch,
        epoch: last,
        for_client: false,
    };
    let resp = client.epoch_end(req).await?.into_inner();
    if let Some(e) = resp.error {
        return Err(RemoteError::from(&e).into());
    }
    let end = replica.log.offsets().log_end_offset;
    let target = if resp.epoch < 0 || resp.epoch == last {
        resp.end_offset
    } else {
        // The leader lacks our last epoch: keep only what both logs have up to the largest
        // epoch the leader does have.
        let ours = replica.log.epoch_end(resp.epoch).await.map_err(|e| map_storage(&replica.pid, e))?;
        resp.end_offset.min(ours.1)
    };
    if target < end {
        tracing::info!(partition = %replica.pid, from = end, to = target, last_epoch = last, leader_epoch = resp.epoch, "truncating divergent records");
        replica.truncate_as_follower(epoch, leader, target, false).await?;
        node.sync().await?;
    }

    let window = node.settings.fetch_window_bytes.max(1 << 20);
    let (tx, rx) = mpsc::channel(16);
    let start = ReplicaStart {
        partition: Some(pref.clone()),
        follower: node.id,
        leader_epoch: epoch,
        offset: replica.log.offsets().log_end_offset,
        credit: window,
    };
    let _ = tx.send(ReplicaRequest { kind: Some(Kind::Start(start)) }).await;
    let mut stream = client.replicate(ReceiverStream::new(rx)).await?.into_inner();
    // Copies are stored one after another; their flushes run beside them, one at a time, each
    // covering everything stored before it started (the watch keeps only the newest end).
    let (stored_tx, stored_rx) = watch::channel(-1i64);
    let flusher = tokio::spawn(flush_acks(node.clone(), replica.clone(), stored_rx, tx.clone()));
    let _stop_flusher = AbortOnDrop(flusher);
    loop {
        let Some(first) = stream.next().await.transpose()? else { return Ok(()) };
        // Take everything already received: one flush for all of it.
        let mut msgs = vec![first];
        while let Some(Some(m)) = stream.next().now_or_never() {
            msgs.push(m?);
        }
        let mut copied = 0u64;
        for m in msgs {
            if let Some(e) = m.error {
                let behind = m.log_start_offset > replica.log.offsets().log_end_offset;
                if e.sluice_code == codes::OFFSET_OUT_OF_RANGE && behind {
                    // The leader's retention passed this replica's log end: start over there.
                    let start = m.log_start_offset;
                    tracing::info!(partition = %replica.pid, start, "behind the leader's log start: resetting");
                    replica.truncate_as_follower(epoch, leader, start, true).await?;
                    return Ok(());
                }
                return Err(RemoteError::from(&e).into());
            }
            replica.learn_hw(m.high_watermark);
            if !m.batches.is_empty() {
                copied += m.batches.len() as u64;
                // The copy continues the trace of the append it carries, when traced.
                let span = tracing::info_span!("replicate", partition = %replica.pid, leader, otel.kind = "consumer");
                sluice_telemetry::continue_from(&span, &m.traceparent);
                replica.append_as_follower(epoch, leader, m.batches).instrument(span).await?;
            }
        }
        if copied > 0 {
            // Stored: the leader may show these records to consumers. Flushed, a moment later:
            // it may acknowledge acks=all writes.
            let end = replica.log.offsets().log_end_offset;
            let ack = ReplicaAck { log_end_offset: end, credit: copied, flushed_offset: -1 };
            if tx.send(ReplicaRequest { kind: Some(Kind::Ack(ack)) }).await.is_err() {
                return Ok(());
            }
            stored_tx.send_replace(end);
        }
    }
}

/// Flushes what a session stored and tells the leader how far it is durable: one flush at a
/// time (shared with the node's other partitions), then the next for whatever was stored
/// meanwhile. Ends with the session (its watch sender or the stream gone).
async fn flush_acks(
    node: Arc<Node>,
    replica: Arc<Replica>,
    mut stored: watch::Receiver<i64>,
    tx: mpsc::Sender<ReplicaRequest>,
) {
    while stored.changed().await.is_ok() {
        let end = *stored.borrow_and_update();
        if let Err(e) = node.sync().await {
            // Not durable yet: tried again (with whatever was stored since) after a pause.
            tracing::warn!(partition = %replica.pid, error = %e, "flushing copied records failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            stored.mark_changed();
            continue;
        }
        let ack = ReplicaAck { log_end_offset: end, credit: 0, flushed_offset: end };
        if tx.send(ReplicaRequest { kind: Some(Kind::Ack(ack)) }).await.is_err() {
            return;
        }
    }
}

/// Aborts a task when dropped: a session's flusher must not outlive it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
