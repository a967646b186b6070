//! `ListOffsets`: earliest, latest, or the first offset at or after a timestamp, per partition;
//! `DescribeProducers`: the producers each partition's leader remembers; and where a leader
//! epoch ends in a partition's log, for clients checking their position (Kafka's
//! OffsetForLeaderEpoch).

use sluice_core::SluiceError;
use sluice_meta::TopicMeta;
use sluice_proto::v1::{
    DescribeProducersRequest, DescribeProducersResponse, EpochEndRequest, Error, IsolationLevel, ListOffsetsRequest,
    ListOffsetsResponse, OffsetSpec, PartitionOffset, PartitionOffsetsEntry, PartitionOffsetsRequest,
    PartitionProducers,
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
    let offsets = query_offsets(gw, &t, &parts, ts, false)
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

/// Asks each leader about its partitions, one request per node, all nodes at once (with the
/// producers each partition remembers when `producers`).
pub async fn query_offsets(
    gw: &Router,
    t: &TopicMeta,
    partitions: &[u32],
    timestamp_ms: Option<i64>,
    producers: bool,
) -> Vec<(u32, Result<PartitionOffsetsEntry, Error>)> {
    let view = gw.snapshot();
    let groups = gw.by_leader(&view, t, partitions.iter().map(|p| (*p, ())), |pref, ()| pref);
    let mut out: Vec<_> = groups.failed.into_iter().map(|(p, e)| (p, Err(e.to_proto()))).collect();
    let calls = groups.nodes.into_iter().map(|(conn, refs)| async move {
        let req = PartitionOffsetsRequest { partitions: refs.clone(), timestamp_ms, producers };
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

#[tracing::instrument(skip_all, fields(topic = %req.topic))]
pub async fn describe_producers(
    gw: &Router,
    req: DescribeProducersRequest,
) -> Result<DescribeProducersResponse, SluiceError> {
    let t = crate::route::topic(&gw.snapshot(), &req.topic)?;
    let parts: Vec<u32> =
        if req.partitions.is_empty() { (0..t.partitions.len() as u32).collect() } else { req.partitions.clone() };
    let partitions = query_offsets(gw, &t, &parts, None, true)
        .await
        .into_iter()
        .map(|(partition, r)| match r {
            Ok(e) => PartitionProducers { partition, producers: e.producers, error: None },
            Err(e) => PartitionProducers { partition, producers: Vec::new(), error: Some(e) },
        })
        .collect();
    Ok(DescribeProducersResponse { partitions })
}

/// Where a log diverging from a client's view would show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The partition's current leader epoch, as this router's view has it.
    pub leader_epoch: u64,
    /// The largest epoch at or below the one asked in the leader's log, and the offset where
    /// it ends there (the log end for the latest); the epoch is the one asked when the log has
    /// none at or below it (the offset is then where the log starts), as Kafka answers.
    pub epoch: i32,
    pub end_offset: i64,
}

/// Asks the leader of partition `p` of `topic` where `epoch` ends in its log.
pub async fn epoch_end(gw: &Router, topic: &str, p: u32, epoch: i32) -> Result<EpochEnd, Error> {
    let view = gw.snapshot();
    let target = crate::route::topic(&view, topic).and_then(|t| gw.target(&view, &t, p)).map_err(|e| e.to_proto())?;
    let req = EpochEndRequest {
        partition: Some(target.pref),
        follower: 0,
        leader_epoch: target.leader_epoch,
        epoch,
        for_client: true,
    };
    let answer = match tokio::time::timeout(std::time::Duration::from_secs(5), target.conn.api().epoch_end(req)).await {
        Ok(Ok(a)) => a,
        Ok(Err(s)) => return Err(target.conn.unavailable(s.message()).to_proto()),
        Err(_) => return Err(target.conn.unavailable("no answer within 5 s").to_proto()),
    };
    if let Some(e) = answer.error {
        return Err(e);
    }
    let found = if answer.epoch < 0 { epoch } else { answer.epoch };
    Ok(EpochEnd { leader_epoch: target.leader_epoch, epoch: found, end_offset: answer.end_offset })
}
