//! `Append`: batches from gateways, many in flight on one stream.
//!
//! Each partition gets a worker for the life of the stream: appends to one partition are
//! applied in the order they arrived (a producer's pipelined requests keep their order), while
//! different partitions are written concurrently on the blocking pool, so one stream can use
//! every core. acks=1 is answered once the leader stored the records; acks=all once they are
//! flushed here and every in-sync replica acknowledged them (the high watermark passed them),
//! by separate tasks, so that concurrent acks=all writes share one group commit.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::{RemoteError, SluiceError};
use sluice_proto::v1::transactions_client::TransactionsClient;
use sluice_proto::v1::{self, Acks, AddPartitionsToTxnRequest, AppendRequest, AppendResponse};
use sluice_runtime::node_api::coordinator_unreachable;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::RpcStream;
use crate::replica::Appended;
use crate::{Node, Served};

type Responder = mpsc::Sender<Result<AppendResponse, Status>>;

fn failure(id: u64, e: impl Into<v1::Error>) -> AppendResponse {
    AppendResponse {
        id,
        base_offset: -1,
        last_offset: -1,
        record_count: 0,
        error: Some(e.into()),
        log_append_time_ms: -1,
    }
}

/// How long a leader waits for the transaction coordinator to add a partition.
const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the transaction coordinator to add the partition to the producer's transaction; its
/// refusal (fenced producer, ended transaction...) is the producer's answer.
async fn add_partition(
    node: &Node,
    producer_id: i64,
    epoch: i16,
    topic: &str,
    partition: u32,
) -> Result<(), v1::Error> {
    let mut c = TransactionsClient::new(node.coordinator.channel()?);
    let req = AddPartitionsToTxnRequest {
        producer_id,
        producer_epoch: epoch as i32,
        topic: topic.to_string(),
        partition,
        from_client: false,
    };
    match tokio::time::timeout(VERIFY_TIMEOUT, c.add_partitions_to_txn(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(RemoteError::from(coordinator_unreachable(s)).into()),
        Err(_) => Err(SluiceError::CoordinatorNotAvailable(format!(
            "the transaction coordinator did not add the partition within {VERIFY_TIMEOUT:?}"
        ))
        .into()),
    }
}

pub(super) fn serve(node: Arc<Node>, mut input: impl super::Input<AppendRequest>) -> RpcStream<AppendResponse> {
    let (tx, rx) = mpsc::channel::<Result<AppendResponse, Status>>(1024);
    let span = tracing::info_span!("append_stream", node = node.id);
    tokio::spawn(
        async move {
            let mut workers: HashMap<(String, u32), mpsc::Sender<AppendRequest>> = HashMap::new();
            while let Some(msg) = input.next().await {
                let req = match msg {
                    Ok(r) => r,
                    Err(s) => {
                        tracing::debug!(status = %s, "append stream ended");
                        break;
                    }
                };
                let key = req.partition.as_ref().map(|p| (p.topic.clone(), p.partition)).unwrap_or_default();
                let worker = workers.entry(key).or_insert_with(|| spawn_worker(node.clone(), tx.clone()));
                if let Err(mpsc::error::SendError(req)) = worker.send(req).await {
                    let _ =
                        tx.send(Ok(failure(req.id, SluiceError::Internal("partition worker stopped".into())))).await;
                }
            }
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}

fn spawn_worker(node: Arc<Node>, tx: Responder) -> mpsc::Sender<AppendRequest> {
    let (wtx, mut wrx) = mpsc::channel::<AppendRequest>(256);
    tokio::spawn(async move {
        while let Some(req) = wrx.recv().await {
            let id = req.id;
            let acks = Acks::try_from(req.acks).unwrap_or(Acks::All);
            // The write itself runs on the blocking pool (Replica::append_as_leader).
            let result = append_one(&node, req, acks).await;
            match (result, acks) {
                (Ok((resp, wait)), Acks::All | Acks::Unspecified) => {
                    let (node, tx) = (node.clone(), tx.clone());
                    tokio::spawn(async move {
                        let resp = match tokio::try_join!(node.sync(), committed(&node, wait)) {
                            Ok(_) => resp,
                            Err(e) => failure(id, e),
                        };
                        let _ = tx.send(Ok(resp)).await;
                    });
                }
                (Ok((resp, _)), _) => {
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
                (Err(e), _) => {
                    if tx.send(Ok(failure(id, e))).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    wtx
}

/// What an acks=all append waits for: the high watermark past `target` while this node still
/// leads `epoch`.
pub(super) struct Wait {
    pub served: Served,
    pub target: i64,
    pub min_isr: u32,
}

/// Waits until every in-sync replica has the append on disk (the durable watermark passed
/// it). Fails
/// when this node stops leading (the records may be truncated by the new leader), when the
/// in-sync set shrinks below `min.insync.replicas`, or after `replication.ack_timeout_ms`.
pub(super) async fn committed(node: &Node, w: Wait) -> Result<(), SluiceError> {
    let mut rx = w.served.replica.committed();
    let epoch = w.served.epoch;
    let timeout = std::time::Duration::from_millis(node.settings.ack_timeout_ms);
    let c = tokio::time::timeout(
        timeout,
        rx.wait_for(|c| c.leading != epoch || c.durable >= w.target || (c.isr as u32) < w.min_isr),
    )
    .await
    .map_err(|_| {
        SluiceError::Timeout(format!("the in-sync replicas did not all store the records within {timeout:?}"))
    })?
    .map(|c| *c)
    .map_err(|_| SluiceError::Internal("replica closed".into()))?;
    let pid = &w.served.replica.pid;
    if c.durable >= w.target {
        Ok(())
    } else if c.leading != epoch {
        Err(SluiceError::NotLeader { topic: pid.topic.clone(), partition: pid.partition, node: node.id })
    } else {
        Err(SluiceError::NotEnoughReplicasAfterAppend {
            topic: pid.topic.clone(),
            partition: pid.partition,
            isr: c.isr as u32,
            min: w.min_isr,
        })
    }
}

async fn append_one(node: &Node, req: AppendRequest, acks: Acks) -> Result<(AppendResponse, Wait), v1::Error> {
    let r = req.partition.ok_or_else(|| SluiceError::InvalidRequest("append without a partition".into()))?;
    let span = tracing::info_span!("append", topic = %r.topic, partition = r.partition, otel.kind = "server");
    sluice_telemetry::continue_from(&span, &req.traceparent);
    let epoch = (req.leader_epoch > 0).then_some(req.leader_epoch);
    let served = node.leader(&r, epoch)?;
    let cfg = served.topic.config();
    let min_isr = cfg.min_insync_replicas;
    let all = matches!(acks, Acks::All | Acks::Unspecified);
    // Noted before the append: the leader may push the batches to followers the moment they
    // are stored, and the push passes this context on.
    let traceparent = span.in_scope(sluice_telemetry::traceparent);
    let mut verified = None;
    let info = loop {
        let appended = served
            .replica
            .append_as_leader(
                served.epoch,
                req.batches.clone(),
                cfg.clone(),
                all.then_some(min_isr),
                traceparent.clone(),
                verified,
            )
            .instrument(span.clone())
            .await?;
        match appended {
            Appended::Done(info) => break info,
            // KIP-890: the first transactional batch of a producer's transaction here is
            // written only once the coordinator added this partition to the transaction, so
            // that no batch opens a transaction nothing will end (a "hanging" one holding the
            // last stable offset), nor joins a transaction already ended.
            Appended::Unverified { producer_id, epoch } if verified.is_none() => {
                add_partition(node, producer_id, epoch, &r.topic, r.partition).instrument(span.clone()).await?;
                verified = Some((producer_id, epoch));
            }
            Appended::Unverified { .. } => {
                return Err(SluiceError::InvalidRequest(
                    "a request carries transactional batches of more than one producer or epoch".into(),
                )
                .into());
            }
        }
    };
    served.replica.update_hw();
    let resp = AppendResponse {
        id: req.id,
        base_offset: info.base_offset,
        last_offset: info.last_offset,
        record_count: info.record_count,
        error: None,
        log_append_time_ms: info.log_append_time,
    };
    Ok((resp, Wait { served, target: info.last_offset + 1, min_isr }))
}
