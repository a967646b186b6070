//! Fetch: stored batches from each partition's leader, as they are, through the same fan-out
//! as `Broker.Fetch`; waits up to `max_wait_ms` for a first batch (the nodes long-poll) and
//! answers with what arrived. No fetch sessions: clients are told session 0 and send full
//! fetches, as they do with brokers that have sessions off.
//!
//! Sizes: the request's `max_bytes` is shared by its topics in proportion to their
//! partitions, and a partition gets at most its `partition_max_bytes` beyond its first chunk
//! (which always goes, however large, so that a big batch cannot stall a consumer).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use sluice_proto::v1::{self, FetchPartition, FetchStart, IsolationLevel, OffsetSpec};
use sluice_router::fetch;
use tokio_stream::StreamExt;

use super::offsets::isolation;
use super::{Kafka, error_of, errors, kafka_error};

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Bytes read from one topic when the request sets no limit.
const DEFAULT_MAX_BYTES: u64 = 50 << 20;

pub(super) async fn handle(k: &Kafka, r: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(r.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let isolation = isolation(r.isolation_level);
    let max_bytes = if r.max_bytes > 0 { r.max_bytes as u64 } else { DEFAULT_MAX_BYTES };
    let min_bytes = r.min_bytes.max(1) as u64;
    let all: u64 = r.topics.iter().map(|t| t.partitions.len() as u64).sum::<u64>().max(1);
    let topics = r.topics.into_iter().map(|t| {
        let share = (max_bytes.saturating_mul(t.partitions.len() as u64) / all).max(1);
        topic(k, t, isolation, share, min_bytes, deadline)
    });
    FetchResponse::default().with_session_id(0).with_responses(futures_util::future::join_all(topics).await)
}

/// What one partition's answer holds so far.
#[derive(Default)]
struct Part {
    chunks: Vec<Bytes>,
    high_watermark: Option<i64>,
    log_start: Option<i64>,
    aborted: Vec<AbortedTransaction>,
    error: i16,
    /// A chunk was left out for the partition's limit: later ones are too (they follow it).
    full: bool,
    /// Bytes of `chunks`.
    held: u64,
}

async fn topic(
    k: &Kafka,
    t: FetchTopic,
    isolation: IsolationLevel,
    max_bytes: u64,
    min_bytes: u64,
    deadline: tokio::time::Instant,
) -> FetchableTopicResponse {
    let name = t.topic.0.as_str().to_string();
    let mut parts: BTreeMap<i32, Part> = BTreeMap::new();
    let mut wanted = Vec::new();
    // A partition the topic lacks fails alone, not the whole topic's fetch.
    let count = k.router.snapshot().topics.get(&name).map_or(0, |m| m.partitions.len() as u32);
    let mut caps: BTreeMap<i32, u64> = BTreeMap::new();
    for p in &t.partitions {
        caps.insert(p.partition, if p.partition_max_bytes > 0 { p.partition_max_bytes as u64 } else { u64::MAX });
        match u32::try_from(p.partition).ok().filter(|i| *i < count) {
            Some(i) => {
                parts.entry(p.partition).or_default();
                wanted.push(FetchPartition { partition: i, offset: p.fetch_offset });
            }
            None => parts.entry(p.partition).or_default().error = errors::UNKNOWN_TOPIC_OR_PARTITION,
        }
    }
    if !wanted.is_empty() {
        // The credit need not exceed what the partitions may take.
        let room = caps.values().fold(0u64, |a, c| a.saturating_add(*c));
        let limits = Limits { max_bytes: max_bytes.min(room).max(1), min_bytes, caps: &caps };
        collect(k, &name, wanted, isolation, limits, deadline, &mut parts).await;
        fill_offsets(k, &name, &mut parts).await;
    }
    let lso = stable_offsets(k, &name, isolation, &parts).await;
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            let part = parts.remove(&p.partition).unwrap_or_default();
            let hw = part.high_watermark.unwrap_or(-1);
            // An empty record set, not a null one: clients (librdkafka) refuse null.
            let records = match part.chunks.len() {
                0 => Some(Bytes::new()),
                1 => part.chunks.into_iter().next(),
                _ => {
                    let mut all = BytesMut::new();
                    for c in &part.chunks {
                        all.extend_from_slice(c);
                    }
                    Some(all.freeze())
                }
            };
            PartitionData::default()
                .with_partition_index(p.partition)
                .with_error_code(part.error)
                .with_high_watermark(hw)
                .with_last_stable_offset(lso.get(&p.partition).copied().unwrap_or(hw))
                .with_log_start_offset(part.log_start.unwrap_or(-1))
                .with_aborted_transactions((isolation == IsolationLevel::ReadCommitted).then_some(part.aborted))
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
                .with_records(records)
        })
        .collect();
    FetchableTopicResponse::default().with_topic(t.topic).with_topic_id(t.topic_id).with_partitions(partitions)
}

/// How much one topic's fetch may bring.
struct Limits<'a> {
    /// The topic's share of the request's max_bytes: the fan-out's credit.
    max_bytes: u64,
    min_bytes: u64,
    /// Each partition's partition_max_bytes.
    caps: &'a BTreeMap<i32, u64>,
}

/// Reads until every partition answered, `min_bytes` arrived (then whatever else is already
/// there), or the deadline.
async fn collect(
    k: &Kafka,
    topic: &str,
    wanted: Vec<FetchPartition>,
    isolation: IsolationLevel,
    limits: Limits<'_>,
    deadline: tokio::time::Instant,
    parts: &mut BTreeMap<i32, Part>,
) {
    let Limits { max_bytes, min_bytes, caps } = limits;
    let count = wanted.len();
    let start = FetchStart {
        topic: topic.to_string(),
        partitions: wanted,
        max_bytes,
        plain_records: false,
        isolation_level: isolation as i32,
    };
    // One-shot: the credit is the request's max_bytes, never topped up.
    let mut stream = match fetch::serve(k.router.clone(), start, futures_util::stream::pending::<u64>()).await {
        Ok(s) => s,
        Err(e) => {
            for p in parts.values_mut() {
                p.error = error_of(&e);
            }
            return;
        }
    };
    let mut bytes = 0u64;
    let mut answered = std::collections::BTreeSet::new();
    loop {
        // Once enough arrived, only what is already there is taken.
        let until = if bytes >= min_bytes { tokio::time::Instant::now() + Duration::from_millis(1) } else { deadline };
        let resp = match tokio::time::timeout_at(until, stream.next()).await {
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(s))) => {
                tracing::debug!(status = %s, "Kafka fetch stream failed");
                break;
            }
            Ok(None) | Err(_) => break,
        };
        answered.insert(resp.partition);
        let part = parts.entry(resp.partition as i32).or_default();
        if let Some(e) = resp.error {
            part.error = kafka_error(e.sluice_code);
        } else {
            part.high_watermark = Some(resp.high_watermark);
            part.log_start = Some(resp.log_start_offset);
            let held = part.held;
            let cap = caps.get(&(resp.partition as i32)).copied().unwrap_or(u64::MAX);
            let len = resp.batches.len() as u64;
            // Beyond the partition's limit a chunk is left for the next fetch (which asks
            // from the last offset the client saw), unless it is the partition's first.
            if len > 0 && !part.full && (part.chunks.is_empty() || held.saturating_add(len) <= cap) {
                bytes += len;
                part.held += len;
                part.chunks.push(resp.batches);
            } else if len > 0 {
                part.full = true;
            }
            part.aborted.extend(resp.aborted_transactions.iter().map(|a| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(a.producer_id))
                    .with_first_offset(a.first_offset)
            }));
        }
        if answered.len() >= count && bytes >= min_bytes {
            break;
        }
    }
}

/// High watermarks and log starts of partitions that sent nothing (caught up, or the
/// deadline came first).
async fn fill_offsets(k: &Kafka, topic: &str, parts: &mut BTreeMap<i32, Part>) {
    let quiet: Vec<u32> = parts
        .iter()
        .filter(|(i, p)| **i >= 0 && p.high_watermark.is_none() && p.error == errors::NONE)
        .map(|(i, _)| *i as u32)
        .collect();
    if quiet.is_empty() {
        return;
    }
    for spec in [OffsetSpec::Latest, OffsetSpec::Earliest] {
        let offsets = match lookup(k, topic, quiet.clone(), spec, IsolationLevel::ReadUncommitted).await {
            Ok(o) => o,
            Err(code) => {
                for i in &quiet {
                    if let Some(p) = parts.get_mut(&(*i as i32)) {
                        p.error = code;
                    }
                }
                return;
            }
        };
        for o in offsets {
            let Some(p) = parts.get_mut(&(o.partition as i32)) else { continue };
            match (&o.error, spec) {
                (Some(e), _) => p.error = kafka_error(e.sluice_code),
                (None, OffsetSpec::Latest) => p.high_watermark = Some(o.log_end_offset),
                (None, _) => p.log_start = Some(o.offset),
            }
        }
    }
}

/// One offsets lookup; the Kafka error code of a failure of the whole lookup.
async fn lookup(
    k: &Kafka,
    topic: &str,
    partitions: Vec<u32>,
    spec: OffsetSpec,
    isolation: IsolationLevel,
) -> Result<Vec<v1::PartitionOffset>, i16> {
    k.router.offsets(topic, partitions, spec, 0, isolation).await.map_err(|e| error_of(&e))
}

/// The last stable offset of each partition for read_committed fetches (the high watermark
/// otherwise, filled in by the caller).
async fn stable_offsets(
    k: &Kafka,
    topic: &str,
    isolation: IsolationLevel,
    parts: &BTreeMap<i32, Part>,
) -> BTreeMap<i32, i64> {
    if isolation != IsolationLevel::ReadCommitted {
        return BTreeMap::new();
    }
    let partitions: Vec<u32> =
        parts.iter().filter(|(i, p)| **i >= 0 && p.error == errors::NONE).map(|(i, _)| *i as u32).collect();
    if partitions.is_empty() {
        return BTreeMap::new();
    }
    match lookup(k, topic, partitions, OffsetSpec::Latest, isolation).await {
        Ok(offsets) => offsets.iter().filter(|o| o.error.is_none()).map(|o| (o.partition as i32, o.offset)).collect(),
        Err(_) => BTreeMap::new(),
    }
}
