//! `WriteTxnMarker`: the transaction coordinator ends a producer's transaction on a partition
//! this node leads. The marker is replicated like any batch and answered once every in-sync
//! replica has it on disk, as an acks=all append.

use std::sync::atomic::Ordering;

use sluice_core::SluiceError;
use sluice_core::batch::Marker;
use sluice_proto::v1::{WriteTxnMarkerRequest, WriteTxnMarkerResponse};

use super::append::{Wait, committed};
use crate::Node;

pub(super) async fn serve(node: &Node, req: WriteTxnMarkerRequest) -> WriteTxnMarkerResponse {
    match write(node, req).await {
        Ok(offset) => WriteTxnMarkerResponse { offset, error: None },
        Err(e) => WriteTxnMarkerResponse { offset: -1, error: Some(e.to_proto()) },
    }
}

async fn write(node: &Node, req: WriteTxnMarkerRequest) -> Result<i64, SluiceError> {
    let r = req.partition.ok_or_else(|| SluiceError::InvalidRequest("a marker needs a partition".into()))?;
    let span = tracing::info_span!("write_txn_marker", topic = %r.topic, partition = r.partition, producer_id = req.producer_id, commit = req.commit);
    let _enter = span.enter();
    let epoch = i16::try_from(req.producer_epoch)
        .ok()
        .filter(|e| *e >= 0 && req.producer_id >= 0)
        .ok_or_else(|| SluiceError::InvalidRequest("a marker needs a producer id and an epoch of 0 or more".into()))?;
    let served = node.leader(&r, None)?;
    // Coordinator epochs are cluster-wide (the revision at which each took the role): one
    // high-water mark per node, raised by markers written, fences every older coordinator.
    let seen = node.coordinator_epoch.load(Ordering::Acquire);
    if seen > req.coordinator_epoch {
        return Err(SluiceError::CoordinatorFenced { epoch: req.coordinator_epoch, current: seen });
    }
    let marker = if req.commit { Marker::Commit } else { Marker::Abort };
    drop(_enter);
    let info = served
        .replica
        .append_marker_as_leader(served.epoch, req.producer_id, epoch, marker, req.coordinator_epoch, req.keeps_epoch)
        .await?;
    node.coordinator_epoch.fetch_max(req.coordinator_epoch, Ordering::AcqRel);
    served.replica.update_hw();
    let min_isr = served.topic.config().min_insync_replicas;
    // A retry that wrote nothing waits for everything before it: the first copy may not be
    // on the replicas yet.
    let target = info.last_offset + 1;
    tokio::try_join!(node.sync(), committed(node, Wait { served, target, min_isr }))?;
    Ok(info.base_offset)
}
