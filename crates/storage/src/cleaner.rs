//! Retention and compaction of a partition log, run in the background by the partition node.
//!
//! Time retention removes batches whose newest record is older than `retention.ms`; size
//! retention removes the oldest batches while the log is above `retention.bytes`. Compaction
//! (`cleanup.policy=compact`) keeps the latest record per key in every batch but the newest
//! (the active head, as Kafka never cleans its active segment), rewriting a batch with its
//! original base offset and offset range so offsets never move; tombstones go once older than
//! `delete.retention.ms`.
//!
//! Files: retention deletes a segment file once none of its batches is left; compaction writes
//! the batches it rewrites into one new file per pass (synced before the index points to it),
//! with the live batches of any closed file that is more than half dead, so that space comes
//! back without rewriting whole segments for one changed batch.

use std::collections::HashMap;

use bytes::Bytes;
use sluice_core::batch::{self, BatchBuilder, BatchHeader, TIMESTAMP_TYPE_LOG_APPEND};
use sluice_core::topic::TopicConfig;

use crate::StorageError;
use crate::segment_store::{BatchMeta, Segment, SegmentPartition};

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

pub(crate) fn clean(p: &SegmentPartition, config: &TopicConfig, now_ms: i64) -> Result<CleanStats, StorageError> {
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

fn apply_retention(p: &SegmentPartition, config: &TopicConfig, now_ms: i64) -> Result<u64, StorageError> {
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
    let unused = p.unindex(&mut st, &doomed)?;
    st.bytes = remaining;
    st.log_start = st.index.keys().next().copied().unwrap_or(st.next_offset);
    let start = st.log_start;
    st.txns.trim(start);
    p.persist_log_start(start)?;
    drop(st);
    p.delete_files(unused)?;
    tracing::debug!(partition = %crate::PartitionLog::id(p), removed = doomed.len(), log_start = start, "retention");
    Ok(doomed.len() as u64)
}

fn load(p: &SegmentPartition, base: i64, m: &BatchMeta) -> Result<Option<Bytes>, StorageError> {
    let st = p.lock();
    // The batch may have moved or gone since the caller looked.
    match st.index.get(&base) {
        Some(now) if same_place(now, m) => p.load(&st, base, m),
        _ => Ok(None),
    }
}

/// Whether an index entry still describes the batch compaction read. Positions are never
/// reused (a truncation starts a new file), so the place says it; size and epoch guard it.
fn same_place(now: &BatchMeta, then: &BatchMeta) -> bool {
    (now.file, now.pos, now.size, now.epoch) == (then.file, then.pos, then.size, then.epoch)
}

/// What compaction does to one batch.
enum Change {
    /// Every record goes.
    Remove,
    /// Written again with fewer records.
    Rewrite(Bytes),
    /// Moved as it is, out of a mostly dead file.
    Move(Bytes),
}

fn compact(p: &SegmentPartition, config: &TopicConfig, now_ms: i64) -> Result<(u64, u64), StorageError> {
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
        let Some(v) = load(p, *base, m)? else { continue };
        for r in batch::decode_records(&v)? {
            if let Some(k) = r.key {
                latest.insert(k.to_vec(), r.offset);
            }
        }
    }
    // Pass 2: decide what happens to every batch but the head.
    let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
    let mut changes: Vec<(i64, BatchMeta, Change)> = Vec::new();
    let mut removed_records = 0u64;
    for (base, m) in &batches[..batches.len() - 1] {
        if *base >= first_unstable {
            break;
        }
        if m.attributes & batch::CONTROL != 0 {
            continue;
        }
        let Some(v) = load(p, *base, m)? else { continue };
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
        if keep.is_empty() {
            changes.push((*base, *m, Change::Remove));
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
        changes.push((*base, *m, Change::Rewrite(Bytes::from(nb))));
    }
    if changes.is_empty() {
        return Ok((0, 0));
    }
    let rewritten = changes.len() as u64;
    // Closed files that these changes leave more than half dead give up their other batches
    // too, so that the files can go.
    let mut dead: HashMap<u64, u64> = HashMap::new();
    for (_, m, _) in &changes {
        *dead.entry(m.file).or_default() += m.size;
    }
    let sparse: Vec<u64> = {
        let st = p.lock();
        dead.iter()
            .filter(|(no, d)| {
                **no != st.active
                    && st.segments.get(no).is_some_and(|s| (s.live_bytes - (**d).min(s.live_bytes)) * 2 < s.len)
            })
            .map(|(no, _)| *no)
            .collect()
    };
    let changed: std::collections::HashSet<i64> = changes.iter().map(|c| c.0).collect();
    for (base, m) in &batches {
        if sparse.contains(&m.file)
            && !changed.contains(base)
            && let Some(v) = load(p, *base, m)?
        {
            changes.push((*base, *m, Change::Move(v)));
        }
    }
    changes.sort_by_key(|c| c.0);
    apply(p, changes)?;
    Ok((rewritten, removed_records))
}

/// Writes the rewritten and moved batches to a new file, then points the index at them and
/// removes what goes, for every batch still where compaction read it.
fn apply(p: &SegmentPartition, changes: Vec<(i64, BatchMeta, Change)>) -> Result<(), StorageError> {
    let written: Vec<&[u8]> = changes
        .iter()
        .filter_map(|(_, _, c)| match c {
            Change::Rewrite(b) | Change::Move(b) => Some(&b[..]),
            Change::Remove => None,
        })
        .collect();
    // The new file is written and synced before the state lock is taken: appends go on.
    let new_file = if written.is_empty() { None } else { Some(p.write_file(&written)?) };
    let mut guard = p.lock();
    let st = &mut *guard;
    let (mut entries, mut gone) = (Vec::new(), Vec::new());
    let mut positions = new_file.as_ref().map(|(_, pos)| pos.iter()).into_iter().flatten();
    for (base, m, c) in &changes {
        let pos = match c {
            Change::Rewrite(_) | Change::Move(_) => positions.next().copied(),
            Change::Remove => None,
        };
        // A batch truncation or retention removed since it was read stays removed.
        if st.index.get(base).is_none_or(|now| !same_place(now, m)) {
            continue;
        }
        match (c, &new_file, pos) {
            (Change::Rewrite(b) | Change::Move(b), Some((f, _)), Some(pos)) => {
                let mut nm = *m;
                (nm.file, nm.pos, nm.size) = (f.no, pos, b.len() as u64);
                entries.push((*base, nm));
            }
            _ => gone.push(*base),
        }
    }
    if gone.first().is_some_and(|b| st.index.keys().next() == Some(b)) {
        // Compaction never moves the log start: remember it, since it can no longer be read
        // off the first batch after a restart.
        p.persist_log_start(st.log_start)?;
    }
    if !gone.is_empty() {
        p.snapshot_producers(st)?;
    }
    p.index_entries(&entries)?;
    let mut unused = Vec::new();
    match &new_file {
        Some((f, _)) if !entries.is_empty() => {
            st.segments.insert(f.no, Segment { file: f.clone(), len: f.len()?, live: 0, live_bytes: 0 });
        }
        Some((f, _)) => unused.push(f.clone()),
        None => {}
    }
    for (base, nm) in &entries {
        if let Some(old) = st.index.insert(*base, *nm) {
            st.bytes = st.bytes - old.size + nm.size;
            if let Some(s) = st.segments.get_mut(&old.file) {
                s.live -= 1;
                s.live_bytes -= old.size;
            }
        }
        if let Some(s) = st.segments.get_mut(&nm.file) {
            s.live += 1;
            s.live_bytes += nm.size;
        }
    }
    unused.extend(p.unindex(st, &gone)?);
    drop(guard);
    p.delete_files(unused)
}
