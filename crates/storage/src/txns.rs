//! Transactions of one partition: which producers have a transaction open here (from the
//! offset of their first transactional batch) and which transactions ended in an abort, as
//! read_committed consumers need them: the first unstable offset (the last stable offset is
//! the smaller of it and the high watermark) and the aborted ranges a fetch overlaps.
//!
//! Like the producer table, it is derived from the index entries (transactional and control
//! bits, and a bit of the index's own, [`ABORT_MARKER`], saying which markers are aborts), so
//! followers, new leaders and restarts have it without reading batches.

use std::collections::{BTreeMap, HashMap};

use sluice_core::batch::{CONTROL, TRANSACTIONAL};

/// Set in an index entry's attributes (never in a stored batch) for an abort marker.
pub const ABORT_MARKER: i16 = 0x4000;

/// An aborted transaction of one producer: its records lie in `first_offset..=last_offset`,
/// the last being the abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// The transactions of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnIndex {
    /// Producer id -> offset of the first batch of its open transaction.
    ongoing: HashMap<i64, i64>,
    /// (last offset, producer id) -> first offset.
    aborted: BTreeMap<(i64, i64), i64>,
}

impl TxnIndex {
    /// Accounts for a batch now in the log at `base..=last`.
    pub fn on_batch(&mut self, base: i64, last: i64, producer_id: i64, attributes: i16) {
        if producer_id < 0 {
            return;
        }
        if attributes & CONTROL != 0 {
            if let Some(first) = self.ongoing.remove(&producer_id)
                && attributes & ABORT_MARKER != 0
            {
                self.aborted.insert((last, producer_id), first);
            }
        } else if attributes & TRANSACTIONAL != 0 {
            self.ongoing.entry(producer_id).or_insert(base);
        }
    }

    /// The first offset of the oldest open transaction; `None` when none is open.
    pub fn first_unstable(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Where `producer_id`'s open transaction starts, if it has one here.
    pub fn open_since(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    /// The aborted transactions with records in `from..to`, by last offset.
    pub fn aborted(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .range((from, i64::MIN)..)
            .filter(|(_, first)| **first < to)
            .map(|((last, pid), first)| AbortedTxn { producer_id: *pid, first_offset: *first, last_offset: *last })
            .collect()
    }

    /// Forgets aborted transactions wholly before `log_start`.
    pub fn trim(&mut self, log_start: i64) {
        self.aborted = self.aborted.split_off(&(log_start, i64::MIN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i16 = TRANSACTIONAL;
    const C: i16 = TRANSACTIONAL | CONTROL;

    #[test]
    fn open_transactions_hold_the_stable_offset_and_aborts_are_indexed() {
        let mut t = TxnIndex::default();
        t.on_batch(0, 4, -1, 0); // plain records
        t.on_batch(5, 9, 1, T);
        t.on_batch(10, 14, 2, T);
        t.on_batch(15, 19, 1, T); // same transaction, later batch
        assert_eq!(t.first_unstable(), Some(5));
        t.on_batch(20, 20, 1, C); // producer 1 commits
        assert_eq!(t.first_unstable(), Some(10));
        t.on_batch(21, 21, 2, C | ABORT_MARKER); // producer 2 aborts
        assert_eq!(t.first_unstable(), None);
        assert_eq!(t.aborted(0, 100), vec![AbortedTxn { producer_id: 2, first_offset: 10, last_offset: 21 }]);
        assert_eq!(t.aborted(22, 100), vec![], "a fetch after it does not see it");
        assert_eq!(t.aborted(0, 10), vec![], "nor one that ends before it");
        assert_eq!(t.aborted(12, 13).len(), 1, "one inside it does");
        // A marker for a producer with nothing open here changes nothing.
        t.on_batch(22, 22, 3, C | ABORT_MARKER);
        assert_eq!(t.aborted(0, 100).len(), 1);
        t.trim(21);
        assert_eq!(t.aborted(0, 100).len(), 1);
        t.trim(22);
        assert!(t.aborted(0, 100).is_empty());
    }
}
