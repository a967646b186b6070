//! `PartitionOffsets`: log start, log end, high watermark and timestamp lookups, and the
//! producers a partition remembers.

use sluice_core::SluiceError;
use sluice_proto::v1::{PartitionOffsetsEntry, PartitionOffsetsRequest, PartitionOffsetsResponse, ProducerState};
use sluice_storage::PartitionId;

use crate::{Node, map_storage};

pub(super) async fn serve(node: &Node, req: PartitionOffsetsRequest) -> PartitionOffsetsResponse {
    let asks = req.partitions.into_iter().map(|r| entry(node, r, req.timestamp_ms, req.producers));
    PartitionOffsetsResponse { partitions: futures_util::future::join_all(asks).await }
}

async fn entry(
    node: &Node,
    r: sluice_proto::v1::PartitionRef,
    ts: Option<i64>,
    producers: bool,
) -> PartitionOffsetsEntry {
    let mut e = PartitionOffsetsEntry {
        partition: Some(r.clone()),
        log_start_offset: -1,
        log_end_offset: -1,
        high_watermark: -1,
        timestamp_offset: -1,
        timestamp_found_ms: -1,
        error: None,
        last_stable_offset: -1,
        producers: Vec::new(),
    };
    let res: Result<(), SluiceError> = async {
        let served = node.leader(&r, None)?;
        let o = served.log().offsets();
        e.log_start_offset = o.log_start_offset;
        e.log_end_offset = o.log_end_offset;
        e.high_watermark = served.replica.high_watermark();
        e.last_stable_offset = e.high_watermark.min(served.log().first_unstable_offset());
        if producers {
            e.producers = served
                .log()
                .producers()
                .into_iter()
                .map(|p| ProducerState {
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch.into(),
                    last_sequence: p.last_sequence,
                    last_timestamp_ms: p.last_timestamp,
                    txn_start_offset: p.txn_start_offset.unwrap_or(-1),
                })
                .collect();
        }
        if let Some(ts) = ts {
            let pid = PartitionId { topic: r.topic.clone(), topic_id: served.topic.topic_id, partition: r.partition };
            let found = served.log().offset_for_timestamp(ts).await.map_err(|err| map_storage(&pid, err))?;
            if let Some((off, found)) = found {
                e.timestamp_offset = off;
                e.timestamp_found_ms = found;
            }
        }
        Ok(())
    }
    .await;
    if let Err(err) = res {
        e.error = Some(err.to_proto());
    }
    e
}
