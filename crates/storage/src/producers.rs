//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! sequence ranges and offsets of its last [`REMEMBERED_BATCHES`] batches.
//!
//! The leader checks every batch that carries a producer id against this table under the
//! log's state lock, so the check and the append are one step: the next sequence is
//! appended, a batch already written is answered with its original offsets, anything else is
//! refused. The table is derived from the log (every index entry records the producer
//! fields of its batch), so a follower keeps it up to date by appending and a new leader has
//! it as soon as it has the batches. What retention or compaction removes from the log is
//! kept in a snapshot ([`encode`]/[`decode`]) written before the removal.

use std::collections::{HashMap, VecDeque};

use sluice_core::batch::add_sequence;

/// Batches remembered per producer: as many as a producer may have in flight per partition.
pub const REMEMBERED_BATCHES: usize = 5;

/// A producer id that has not written to the partition for this long (by this node's clock) is
/// forgotten (Kafka's `producer.id.expiration.ms` default); it is checked at every cleaning
/// pass. Should it come back, its next batch is refused and it starts over under a new id.
pub const PRODUCER_EXPIRATION_MS: i64 = 24 * 3600 * 1000;

/// One batch of a producer: its sequence range and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What the partition knows of one producer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<SeqBatch>,
    /// When it last wrote here, by this node's clock (at a rebuild from the index: the time of
    /// the rebuild), for expiration. Not the records' timestamps: a copy of old data keeps
    /// its old timestamps while it is being written.
    pub last_timestamp: i64,
}

/// One producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last sequence number written here, -1 when only its epoch is known (a marker).
    pub last_sequence: i32,
    /// When it last wrote here, by the node's clock (see [`ProducerEntry::last_timestamp`]).
    pub last_timestamp: i64,
    /// The first offset of its open transaction here, if one is.
    pub txn_start_offset: Option<i64>,
}

/// The outcome of checking a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New and in order: append it.
    Append,
    /// Already written: answer with these offsets, write nothing.
    Duplicate(SeqBatch),
}

/// Why a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqError {
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    StaleEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// Written before the remembered batches: the offsets are no longer known.
    OldDuplicate {
        producer_id: i64,
        sequence: i32,
    },
}

/// The producers of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    map: HashMap<i64, ProducerEntry>,
}

/// Whether `seq` comes at or before `last` in sequence space (which wraps), looking back at
/// most half the space.
fn seq_at_or_before(seq: i32, last: i32) -> bool {
    let behind = (last as i64 - seq as i64).rem_euclid(i32::MAX as i64 + 1);
    behind < (i32::MAX as i64 + 1) / 2
}

impl ProducerTable {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }

    /// Every producer, by id; `open_since` tells where a producer's open transaction starts.
    pub fn describe(&self, open_since: impl Fn(i64) -> Option<i64>) -> Vec<ProducerInfo> {
        let mut out: Vec<ProducerInfo> = self
            .map
            .iter()
            .map(|(id, e)| ProducerInfo {
                producer_id: *id,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: e.last_timestamp,
                txn_start_offset: open_since(*id),
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Checks a batch of `producer_id` at `epoch` holding sequences `first_seq..=last_seq`.
    pub fn check(&self, producer_id: i64, epoch: i16, first_seq: i32, last_seq: i32) -> Result<Verdict, SeqError> {
        // A producer this partition knows nothing of (new, or forgotten) starts at sequence 0.
        // Accepting any sequence, as Kafka does, would let a batch overtake an earlier one of
        // the same producer that a failover left unwritten, and the earlier one then pass for
        // a duplicate. A producer that was forgotten is refused and starts over under a new id.
        let Some(e) = self.map.get(&producer_id) else {
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SeqError::OutOfOrder { producer_id, expected: 0, got: first_seq })
            };
        };
        if epoch < e.epoch {
            return Err(SeqError::StaleEpoch { producer_id, epoch, current: e.epoch });
        }
        if epoch > e.epoch {
            // A new epoch starts its sequences at 0.
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SeqError::OutOfOrder { producer_id, expected: 0, got: first_seq })
            };
        }
        let Some(last) = e.batches.back() else {
            // Everything it wrote was truncated away: as unknown.
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SeqError::OutOfOrder { producer_id, expected: 0, got: first_seq })
            };
        };
        if let Some(b) = e.batches.iter().find(|b| b.first_seq == first_seq && b.last_seq == last_seq) {
            return Ok(Verdict::Duplicate(*b));
        }
        let expected = add_sequence(last.last_seq, 1);
        if first_seq == expected {
            return Ok(Verdict::Append);
        }
        let oldest = e.batches.front().map(|b| b.first_seq).unwrap_or(expected);
        if seq_at_or_before(first_seq, last.last_seq) && !seq_at_or_before(oldest, first_seq) {
            // Behind everything remembered: written long ago.
            return Err(SeqError::OldDuplicate { producer_id, sequence: first_seq });
        }
        Err(SeqError::OutOfOrder { producer_id, expected, got: first_seq })
    }

    /// Records a batch that is now in the log.
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: SeqBatch, timestamp: i64) {
        let e = self.map.entry(producer_id).or_default();
        if epoch != e.epoch {
            e.batches.clear();
            e.epoch = epoch;
        }
        e.batches.push_back(batch);
        while e.batches.len() > REMEMBERED_BATCHES {
            e.batches.pop_front();
        }
        e.last_timestamp = e.last_timestamp.max(timestamp);
    }

    /// Records that the producer's epoch is now `epoch` (a transaction marker at that epoch):
    /// its older batches no longer count as duplicates of the new epoch's.
    pub fn note_epoch(&mut self, producer_id: i64, epoch: i16, timestamp: i64) {
        let e = self.map.entry(producer_id).or_default();
        if epoch > e.epoch {
            e.epoch = epoch;
            e.batches.clear();
        }
        e.last_timestamp = e.last_timestamp.max(timestamp);
    }

    /// Forgets producers that have not written for [`PRODUCER_EXPIRATION_MS`], except those
    /// `keep` names; returns how many.
    pub fn expire(&mut self, now_ms: i64, keep: impl Fn(i64) -> bool) -> usize {
        let horizon = now_ms.saturating_sub(PRODUCER_EXPIRATION_MS);
        let before = self.map.len();
        self.map.retain(|id, e| e.last_timestamp >= horizon || keep(*id));
        before - self.map.len()
    }

    /// Drops what lies at or after `offset` (a truncated tail); producers left with no batch
    /// keep their epoch.
    pub fn truncate(&mut self, offset: i64) {
        for e in self.map.values_mut() {
            e.batches.retain(|b| b.last_offset < offset);
        }
    }
}

/// Encodes a snapshot of `table` covering the log before `end`.
pub fn encode(end: i64, table: &ProducerTable) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + table.map.len() * (19 + REMEMBERED_BATCHES * 24));
    v.extend_from_slice(&end.to_be_bytes());
    v.extend_from_slice(&(table.map.len() as u32).to_be_bytes());
    let mut ids: Vec<_> = table.map.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let e = &table.map[&id];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&e.epoch.to_be_bytes());
        v.extend_from_slice(&e.last_timestamp.to_be_bytes());
        v.push(e.batches.len() as u8);
        for b in &e.batches {
            v.extend_from_slice(&b.first_seq.to_be_bytes());
            v.extend_from_slice(&b.last_seq.to_be_bytes());
            v.extend_from_slice(&b.base_offset.to_be_bytes());
            v.extend_from_slice(&b.last_offset.to_be_bytes());
        }
    }
    v
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

/// Decodes a snapshot: the offset it covers up to and the table; `None` when damaged.
pub fn decode(v: &[u8]) -> Option<(i64, ProducerTable)> {
    let mut r = Reader(v);
    let end = i64::from_be_bytes(r.take()?);
    let n = u32::from_be_bytes(r.take()?) as usize;
    // Each entry takes at least 19 bytes: a count beyond that is damage, not a reason to
    // allocate.
    if n > r.0.len() / 19 {
        return None;
    }
    let mut table = ProducerTable { map: HashMap::with_capacity(n) };
    for _ in 0..n {
        let id = i64::from_be_bytes(r.take()?);
        let epoch = i16::from_be_bytes(r.take()?);
        let last_timestamp = i64::from_be_bytes(r.take()?);
        let count = r.take::<1>()?[0] as usize;
        if count > REMEMBERED_BATCHES {
            return None;
        }
        let mut batches = VecDeque::with_capacity(count);
        for _ in 0..count {
            batches.push_back(SeqBatch {
                first_seq: i32::from_be_bytes(r.take()?),
                last_seq: i32::from_be_bytes(r.take()?),
                base_offset: i64::from_be_bytes(r.take()?),
                last_offset: i64::from_be_bytes(r.take()?),
            });
        }
        table.map.insert(id, ProducerEntry { epoch, batches, last_timestamp });
    }
    r.0.is_empty().then_some((end, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: i32, last: i32, base: i64) -> SeqBatch {
        SeqBatch { first_seq: first, last_seq: last, base_offset: base, last_offset: base + (last - first) as i64 }
    }

    #[test]
    fn describes_each_producer_with_its_last_sequence_and_open_transaction() {
        let mut t = ProducerTable::default();
        t.record(9, 2, batch(0, 4, 10), 5);
        t.record(9, 2, batch(5, 7, 15), 6);
        t.record(3, 0, batch(0, 0, 20), 7);
        t.note_epoch(4, 1, 8);
        let open = |id: i64| (id == 9).then_some(10);
        let info = t.describe(open);
        let ids: Vec<(i64, i16, i32, Option<i64>)> =
            info.iter().map(|p| (p.producer_id, p.epoch, p.last_sequence, p.txn_start_offset)).collect();
        assert_eq!(ids, vec![(3, 0, 0, None), (4, 1, -1, None), (9, 2, 7, Some(10))]);
        assert_eq!(info[2].last_timestamp, 6);
    }

    #[test]
    fn accepts_each_sequence_once_and_in_order() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(7, 0, 0, 9), Ok(Verdict::Append));
        t.record(7, 0, batch(0, 9, 100), 1);
        assert_eq!(t.check(7, 0, 10, 19), Ok(Verdict::Append));
        t.record(7, 0, batch(10, 19, 110), 1);
        // A retry of either batch gets its original offsets.
        assert_eq!(t.check(7, 0, 0, 9), Ok(Verdict::Duplicate(batch(0, 9, 100))));
        assert_eq!(t.check(7, 0, 10, 19), Ok(Verdict::Duplicate(batch(10, 19, 110))));
        // A gap is refused.
        assert_eq!(t.check(7, 0, 25, 30), Err(SeqError::OutOfOrder { producer_id: 7, expected: 20, got: 25 }));
        // Other producers are independent; an unknown one starts at 0.
        assert_eq!(t.check(8, 0, 0, 41), Ok(Verdict::Append));
        assert_eq!(t.check(8, 0, 41, 41), Err(SeqError::OutOfOrder { producer_id: 8, expected: 0, got: 41 }));
    }

    #[test]
    fn epochs_fence_older_instances_and_restart_sequences() {
        let mut t = ProducerTable::default();
        t.record(7, 2, batch(0, 4, 0), 1);
        assert_eq!(t.check(7, 1, 5, 5), Err(SeqError::StaleEpoch { producer_id: 7, epoch: 1, current: 2 }));
        assert_eq!(t.check(7, 3, 5, 5), Err(SeqError::OutOfOrder { producer_id: 7, expected: 0, got: 5 }));
        assert_eq!(t.check(7, 3, 0, 0), Ok(Verdict::Append));
        t.record(7, 3, batch(0, 0, 5), 1);
        assert_eq!(t.get(7).map(|e| (e.epoch, e.batches.len())), Some((3, 1)));
    }

    #[test]
    fn remembers_five_batches_and_knows_older_ones_are_duplicates() {
        let mut t = ProducerTable::default();
        for i in 0..8 {
            t.record(1, 0, batch(i * 10, i * 10 + 9, i as i64 * 10), 1);
        }
        assert_eq!(t.get(1).map(|e| e.batches.len()), Some(REMEMBERED_BATCHES));
        assert_eq!(t.check(1, 0, 30, 39), Ok(Verdict::Duplicate(batch(30, 39, 30))));
        assert_eq!(t.check(1, 0, 0, 9), Err(SeqError::OldDuplicate { producer_id: 1, sequence: 0 }));
        assert_eq!(t.check(1, 0, 80, 89), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_around() {
        let mut t = ProducerTable::default();
        t.record(1, 0, batch(i32::MAX - 1, i32::MAX, 0), 1);
        assert_eq!(t.check(1, 0, 0, 3), Ok(Verdict::Append));
        assert!(matches!(t.check(1, 0, 1, 3), Err(SeqError::OutOfOrder { expected: 0, .. })));
    }

    #[test]
    fn truncation_and_expiry() {
        let mut t = ProducerTable::default();
        t.record(1, 0, batch(0, 9, 0), 1_000);
        t.record(1, 0, batch(10, 19, 10), 1_000);
        t.record(2, 0, batch(0, 0, 20), 5_000_000_000);
        t.truncate(10);
        assert_eq!(t.check(1, 0, 10, 19), Ok(Verdict::Append), "the truncated batch may come again");
        assert_eq!(t.expire(5_000_000_000, |id| id == 1), 0, "kept: a transaction of it is open");
        assert_eq!(t.expire(5_000_000_000, |_| false), 1);
        assert!(t.get(1).is_none(), "idle for longer than the expiration");
        assert!(t.get(2).is_some(), "recent");
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let mut t = ProducerTable::default();
        t.record(1, 3, batch(0, 9, 0), 11);
        t.record(1, 3, batch(10, 19, 10), 12);
        t.record(-5, 0, batch(0, 0, 20), 13);
        let v = encode(21, &t);
        assert_eq!(decode(&v), Some((21, t)));
        assert_eq!(decode(&v[..v.len() - 1]), None);
        assert_eq!(decode(&[0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255]), None);
        assert_eq!(decode(&encode(0, &ProducerTable::default())), Some((0, ProducerTable::default())));
    }
}
