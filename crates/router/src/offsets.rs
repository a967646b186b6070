//! `ListOffsets`: earliest, latest, or the first offset at or after a timestamp, per partition.

use sluice_core::SluiceError;
use sluice_meta::TopicMeta;
use sluice_proto::v1::{
    Error, IsolationLevel, ListOffsetsRequest, ListOffsetsResponse, OffsetSpec, PartitionOffset, PartitionOffsetsEntry,
    PartitionOffsetsRequest,
};

use crate::Router;

#[tracing::instrument(skip_all, fields(topic = %req.topic))]
pub async fn handle(gw: &Router, req: ListOffsetsRequest) -> Result<ListOffsetsResponse, SluiceError> {
    let t = crate::route::topic(&gw.snapshot(), &req.topic)?;
    let parts: Vec<u32> =
        if req.partitions.is_empty() { (0..t.partitions.len() as u32).collect() } else { req.partitions.clone() };
    let spec = OffsetSpec::try_from(req.spec)
        .map_err(|_| SluiceError::InvalidRequest(format!("unknown offset spec {}", req.spec)))?;
    let ts = (spec == OffsetSpec::Timestamp).then_some(req.timestamp_ms);
    let committed = match IsolationLevel::try_from(req.isolation_level) {
        Ok(level) => level == IsolationLevel::ReadCommitted,
        Err(_) => {
            return Err(SluiceError::InvalidRequest(format!(
                "unknown isolation level {} (expected 0 read_uncommitted or 1 read_committed)",
                req.isolation_level
            )));
        }
    };
    let offsets = query_offsets(gw, &t, &parts, ts)
        .await
        .into_iter()
        .map(|(p, r)| match r {
            Ok(e) => PartitionOffset {
                partition: p,
                offset: match spec {
                    OffsetSpec::Earliest => e.log_start_offset,
                    OffsetSpec::Latest if committed => e.last_stable_offset,
                    OffsetSpec::Latest => e.high_watermark,
                    OffsetSpec::Timestamp => e.timestamp_offset,
                },
                timestamp_ms: if spec == OffsetSpec::Timestamp { e.timestamp_found_ms } else { -1 },
                log_end_offset: e.high_watermark,
                error: None,
            },
            Err(e) => {
                PartitionOffset { partition: p, offset: -1, timestamp_ms: -1, log_end_offset: -1, error: Some(e) }
            }
        })
        .collect();
    Ok(ListOffsetsResponse { offsets })
}

/// Asks each leader about its partitions, one request per node, all nodes at once.
pub async fn query_offsets(
    gw: &Router,
    t: &TopicMeta,
    partitions: &[u32],
    timestamp_ms: Option<i64>,
) -> Vec<(u32, Result<PartitionOffsetsEntry, Error>)> {
    let view = gw.snapshot();
    let groups = gw.by_leader(&view, t, partitions.iter().map(|p| (*p, ())), |pref, ()| pref);
    let mut out: Vec<_> = groups.failed.into_iter().map(|(p, e)| (p, Err(e.to_proto()))).collect();
    let calls = groups.nodes.into_iter().map(|(conn, refs)| async move {
        let req = PartitionOffsetsRequest { partitions: refs.clone(), timestamp_ms };
        let call = conn.api().partition_offsets(req);
        match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
            Ok(Ok(resp)) => resp
                .partitions
                .into_iter()
                .map(|e| {
                    let p = e.partition.as_ref().map(|r| r.partition).unwrap_or_default();
                    match &e.error {
                        Some(err) => (p, Err(err.clone())),
                        None => (p, Ok(e)),
                    }
                })
                .collect::<Vec<_>>(),
            Ok(Err(s)) => refs.iter().map(|r| (r.partition, Err(conn.unavailable(s.message()).to_proto()))).collect(),
            Err(_) => {
                refs.iter().map(|r| (r.partition, Err(conn.unavailable("no answer within 5 s").to_proto()))).collect()
            }
        }
    });
    for batch in futures_util::future::join_all(calls).await {
        out.extend(batch);
    }
    out.sort_by_key(|(p, _)| *p);
    out
}
