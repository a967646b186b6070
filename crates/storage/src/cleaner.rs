//! Retention and compaction of a partition log, run in the background by the partition node.
//!
//! Time retention removes batches whose newest record is older than `retention.ms`; size
//! retention removes the oldest batches while the log is above `retention.bytes`. Compaction
//! (`cleanup.policy=compact`) keeps the latest record per key in every batch but the newest
//! (the active head, as Kafka never cleans its active segment), rewriting a batch with its
//! original base offset and offset range so offsets never move; tombstones go once older than
//! `delete.retention.ms`.

use std::collections::HashMap;

use bytes::Bytes;
use sluice_core::batch::{self, BatchBuilder, BatchHeader, TIMESTAMP_TYPE_LOG_APPEND};
use sluice_core::topic::TopicConfig;

use crate::StorageError;
use crate::sled_store::{BatchMeta, SledPartition};

/// What one cleaning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanStats {
    /// Batches deleted by time or size retention.
    pub deleted_batches: u64,
    /// Batches rewritten or removed by compaction.
    pub compacted_batches: u64,
    /// Records removed by compaction.
    pub compacted_records: u64,
}

pub(crate) fn clean(p: &SledPartition, config: &TopicConfig, now_ms: i64) -> Result<CleanStats, StorageError> {
    let mut stats = CleanStats::default();
    {
        // Idle producers are forgotten on every topic, also ones that never delete anything.
        // A producer with a transaction open is kept: its marker must still find it.
        let mut guard = p.lock();
        let st = &mut *guard;
        let txns = &st.txns;
        if st.producers.expire(now_ms, |id| txns.open_since(id).is_some()) > 0 {
            st.producers_dirty = true;
        }
    }
    if config.cleanup_policy.delete {
        stats.deleted_batches = apply_retention(p, config, now_ms)?;
    }
    if config.cleanup_policy.compact {
        let (b, r) = compact(p, config, now_ms)?;
        stats.compacted_batches = b;
        stats.compacted_records = r;
    }
    Ok(stats)
}

fn apply_retention(p: &SledPartition, config: &TopicConfig, now_ms: i64) -> Result<u64, StorageError> {
    let mut st = p.lock();
    let mut doomed = Vec::new();
    let mut remaining = st.bytes;
    for (base, m) in &st.index {
        let too_old = config.retention_ms >= 0 && m.max_timestamp < now_ms.saturating_sub(config.retention_ms);
        let too_big = config.retention_bytes >= 0 && remaining > config.retention_bytes as u64;
        if !(too_old || too_big) {
            break;
        }
        remaining -= m.size;
        doomed.push(*base);
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    p.snapshot_producers(&mut st)?;
    p.remove_batches(&doomed)?;
    for base in &doomed {
        st.index.remove(base);
    }
    st.bytes = remaining;
    st.log_start = st.index.keys().next().copied().unwrap_or(st.next_offset);
    let start = st.log_start;
    st.txns.trim(start);
    drop(st);
    p.persist_log_start(start)?;
    tracing::debug!(partition = %crate::PartitionLog::id(p), removed = doomed.len(), log_start = start, "retention");
    Ok(doomed.len() as u64)
}

fn load(p: &SledPartition, base: i64) -> Result<Option<Bytes>, StorageError> {
    Ok(p.tree.get(base.to_be_bytes())?.map(|v| Bytes::from(v.to_vec())))
}

fn compact(p: &SledPartition, config: &TopicConfig, now_ms: i64) -> Result<(u64, u64), StorageError> {
    let (batches, first_unstable, aborted) = {
        let st = p.lock();
        let batches: Vec<(i64, BatchMeta)> = st.index.iter().map(|(b, m)| (*b, *m)).collect();
        (batches, st.txns.first_unstable().unwrap_or(i64::MAX), st.txns.aborted(i64::MIN, i64::MAX))
    };
    if batches.len() < 2 {
        return Ok((0, 0));
    }
    // Records of aborted transactions are never read (committed readers skip them): they are
    // dropped, and never hide an older value of their key.
    let is_aborted = |base: i64, m: &BatchMeta| {
        m.attributes & batch::TRANSACTIONAL != 0
            && aborted
                .iter()
                .any(|a| a.producer_id == m.producer_id && a.first_offset <= base && m.last_offset <= a.last_offset)
    };
    // Records of transactions still open may yet be aborted: they hide nothing, and nothing
    // at or after the first of them is rewritten.
    let undecided = |base: i64, m: &BatchMeta| m.attributes & batch::TRANSACTIONAL != 0 && base >= first_unstable;
    // Pass 1: the latest offset of every key, over the whole log including the head.
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
    for (base, m) in &batches {
        // Markers are kept as they are: their keys are control types, not record keys.
        if m.attributes & batch::CONTROL != 0 || is_aborted(*base, m) || undecided(*base, m) {
            continue;
        }
        let Some(v) = load(p, *base)? else { continue };
        for r in batch::decode_records(&v)? {
            if let Some(k) = r.key {
                latest.insert(k.to_vec(), r.offset);
            }
        }
    }
    // Pass 2: rewrite every batch but the head.
    let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
    let (mut rewritten, mut removed_records) = (0u64, 0u64);
    for (base, m) in &batches[..batches.len() - 1] {
        if *base >= first_unstable {
            break;
        }
        if m.attributes & batch::CONTROL != 0 {
            continue;
        }
        let Some(v) = load(p, *base)? else { continue };
        let h = BatchHeader::parse(&v)?;
        let records = batch::decode_records(&v)?;
        let dropped = is_aborted(*base, m);
        let keep: Vec<_> = records
            .iter()
            .filter(|r| {
                let is_latest = r.key.as_ref().is_some_and(|k| latest.get(&k[..]) == Some(&r.offset));
                !dropped && is_latest && !(r.value.is_none() && r.timestamp < tombstone_horizon)
            })
            .collect();
        if keep.len() == records.len() {
            continue;
        }
        removed_records += (records.len() - keep.len()) as u64;
        rewritten += 1;
        if keep.is_empty() {
            let mut st = p.lock();
            if st.index.keys().next() == Some(base) {
                // Compaction never moves the log start: remember it, since it can no longer be
                // read off the first batch after a restart.
                p.persist_log_start(st.log_start)?;
            }
            p.snapshot_producers(&mut st)?;
            p.remove_batches(&[*base])?;
            if let Some(m) = st.index.remove(base) {
                st.bytes -= m.size;
            }
            continue;
        }
        let mut bb = BatchBuilder::new(h.compression()?)
            .producer(h.producer_id, h.producer_epoch, h.base_sequence)
            .flags(h.attributes);
        for r in &keep {
            let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
            bb.push_at((r.offset - h.base_offset) as i32, r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
        }
        let mut nb = bb.build_at(h.base_offset, h.last_offset_delta)?.to_vec();
        batch::set_partition_leader_epoch(&mut nb, h.partition_leader_epoch);
        if h.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0 {
            batch::set_log_append_time(&mut nb, h.max_timestamp);
        }
        let mut guard = p.lock();
        let st = &mut *guard;
        let size = nb.len() as u64;
        if let Some(m) = st.index.get_mut(base) {
            st.bytes = st.bytes - m.size + size;
            m.size = size;
            p.put_batches(vec![(*base, sled::IVec::from(nb), *m)])?;
        }
    }
    Ok((rewritten, removed_records))
}
