//! The partition log (segment files indexed in sled): appends, reads, recovery, retention, compaction, timestamps.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_core::batch::{BatchBuilder, decode_records};
use sluice_core::compression::Compression;
use sluice_core::topic::TopicConfig;
use sluice_storage::{LogStore, MarkerSpec, PartitionId, SegmentStore, StorageError, StoreOptions};

/// Opens the store again after a drop, with default tuning.
async fn reopen(dir: &std::path::Path) -> std::sync::Arc<SegmentStore> {
    reopen_with(dir, StoreOptions::default()).await
}

/// Opens the store again after a drop, tuned by `options`.
async fn reopen_with(dir: &std::path::Path, options: StoreOptions) -> std::sync::Arc<SegmentStore> {
    once_unlocked("reopen", || SegmentStore::open_with(dir, options)).await
}

/// `open`'s result once it no longer fails on sled's lock: a store just dropped may still hold
/// it for a moment (its background threads end after it), so polled with a deadline.
async fn once_unlocked<T, E: std::fmt::Display>(what: &str, mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("could not acquire lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn pid() -> PartitionId {
    PartitionId { topic: "t".into(), topic_id: 7, partition: 0 }
}

fn batch(records: &[(Option<&str>, Option<&str>, i64)], c: Compression) -> Bytes {
    let mut b = BatchBuilder::new(c);
    for (k, v, ts) in records {
        b.push(*ts, k.map(str::as_bytes), v.map(str::as_bytes), &[]);
    }
    b.build().unwrap()
}

fn all_records(log: &dyn sluice_storage::PartitionLog, from: i64) -> Vec<(i64, Option<String>, Option<String>)> {
    let r = log.read(from, usize::MAX).unwrap();
    let mut out = Vec::new();
    let mut rest = r.batches.clone();
    while !rest.is_empty() {
        let h = sluice_core::batch::BatchHeader::parse(&rest).unwrap();
        let b = rest.split_to(h.total_len());
        for rec in decode_records(&b).unwrap() {
            let s = |x: Option<Bytes>| x.map(|v| String::from_utf8(v.to_vec()).unwrap());
            out.push((rec.offset, s(rec.key), s(rec.value)));
        }
    }
    out
}

#[tokio::test]
async fn offsets_are_dense_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        let a =
            log.append(&batch(&[(None, Some("a"), 1), (None, Some("b"), 2)], Compression::None), &cfg, 10, 0).unwrap();
        assert_eq!((a.base_offset, a.last_offset, a.record_count), (0, 1, 2));
        let mut two = batch(&[(None, Some("c"), 3)], Compression::Lz4).to_vec();
        two.extend_from_slice(&batch(&[(None, Some("d"), 4), (None, Some("e"), 5)], Compression::Zstd));
        let b = log.append(&two, &cfg, 10, 0).unwrap();
        assert_eq!((b.base_offset, b.last_offset), (2, 4));
        store.sync().await.unwrap();
    }
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, 5);
    let recs = all_records(&*log, 0);
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(recs[3].2.as_deref(), Some("d"));
    assert_eq!(log.append(&batch(&[(None, Some("f"), 6)], Compression::None), &cfg, 10, 0).unwrap().base_offset, 5);
    assert_eq!(store.list().unwrap(), vec![pid()]);
}

#[tokio::test]
async fn bad_batches_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig { max_message_bytes: 200, ..TopicConfig::default() };
    let good = batch(&[(None, Some("ok"), 1)], Compression::None);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 2] ^= 1;
    let mut mixed = good.to_vec();
    mixed.extend_from_slice(&corrupt);
    assert!(log.append(&corrupt, &cfg, 0, 0).is_err());
    assert!(log.append(&mixed, &cfg, 0, 0).is_err(), "one bad batch refuses the whole request");
    let big = "x".repeat(300);
    assert!(matches!(
        log.append(&batch(&[(None, Some(&big), 1)], Compression::None), &cfg, 0, 0),
        Err(StorageError::Batch(sluice_core::batch::BatchError::TooLarge { limit: 200, .. }))
    ));
    assert!(log.append(&[], &cfg, 0, 0).is_err());
    assert_eq!(log.offsets().log_end_offset, 0);
    assert!(matches!(log.read(5, 100), Err(StorageError::OffsetOutOfRange { offset: 5, start: 0, end: 0 })));
}

#[tokio::test]
async fn retention_by_time_and_size_moves_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig::default();
    for ts in [1_000, 2_000, 3_000, 4_000] {
        log.append(&batch(&[(None, Some("v"), ts), (None, Some("w"), ts)], Compression::None), &cfg, 0, 0).unwrap();
    }
    let timed = TopicConfig { retention_ms: 1_500, ..cfg.clone() };
    assert_eq!(log.clean(&timed, 4_000).unwrap().deleted_batches, 2);
    assert_eq!(log.offsets().log_start_offset, 4);
    assert!(matches!(log.read(1, 10), Err(StorageError::OffsetOutOfRange { start: 4, .. })));
    let one = log.size_bytes() / 2;
    let sized = TopicConfig { retention_ms: -1, retention_bytes: one as i64, ..cfg.clone() };
    assert_eq!(log.clean(&sized, 4_000).unwrap().deleted_batches, 1);
    assert_eq!(log.offsets().log_start_offset, 6);
    let everything = TopicConfig { retention_ms: 0, ..cfg.clone() };
    log.clean(&everything, 100_000).unwrap();
    assert_eq!(log.offsets(), sluice_storage::LogOffsets { log_start_offset: 8, log_end_offset: 8 });
    drop(log);
    drop(store);
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, 8, "an emptied log keeps its next offset across restarts");
    assert_eq!(log.append(&batch(&[(None, Some("n"), 5)], Compression::None), &cfg, 0, 0).unwrap().base_offset, 8);
}

#[tokio::test]
async fn compaction_keeps_the_latest_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig::from_map(&BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("delete.retention.ms".to_string(), "1000".to_string()),
    ]))
    .unwrap();
    log.append(&batch(&[(Some("a"), Some("a1"), 10), (Some("b"), Some("b1"), 10)], Compression::Zstd), &cfg, 0, 0)
        .unwrap();
    log.append(&batch(&[(Some("a"), Some("a2"), 20), (Some("c"), None, 20)], Compression::None), &cfg, 0, 0).unwrap();
    log.append(&batch(&[(Some("b"), Some("b2"), 30)], Compression::None), &cfg, 0, 0).unwrap();
    assert!(matches!(
        log.append(&batch(&[(None, Some("keyless"), 1)], Compression::None), &cfg, 0, 0),
        Err(StorageError::MissingKey)
    ));
    let stats = log.clean(&cfg, 500).unwrap();
    assert_eq!(stats.compacted_records, 2);
    let recs = all_records(&*log, 0);
    assert_eq!(
        recs,
        vec![
            (2, Some("a".into()), Some("a2".into())),
            (3, Some("c".into()), None),
            (4, Some("b".into()), Some("b2".into()))
        ]
    );
    // Once older than delete.retention.ms the tombstone goes too; offsets never move.
    log.clean(&cfg, 5_000).unwrap();
    let recs = all_records(&*log, 0);
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!(log.offsets().log_end_offset, 5);
    // The index written by compaction brings the same log back after a restart.
    let size = log.size_bytes();
    drop(log);
    drop(store);
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(all_records(&*log, 0).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!((log.offsets().log_end_offset, log.size_bytes()), (5, size));
}

#[tokio::test]
async fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig::default();
    log.append(&batch(&[(None, Some("a"), 100), (None, Some("b"), 200)], Compression::None), &cfg, 0, 0).unwrap();
    log.append(&batch(&[(None, Some("c"), 300), (None, Some("d"), 400)], Compression::Lz4), &cfg, 0, 0).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 100)));
    assert_eq!(log.offset_for_timestamp(150).unwrap(), Some((1, 200)));
    assert_eq!(log.offset_for_timestamp(300).unwrap(), Some((2, 300)));
    assert_eq!(log.offset_for_timestamp(401).unwrap(), None);
}

#[tokio::test]
async fn concurrent_syncs_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig::default();
    let mut tasks = Vec::new();
    for i in 0..32 {
        log.append(&batch(&[(None, Some("v"), i)], Compression::None), &cfg, 0, 0).unwrap();
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.sync().await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(log.offsets().log_end_offset, 32);
}

#[tokio::test]
async fn replica_copies_truncates_by_epoch_and_resets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let store = SegmentStore::open(dir.path()).unwrap();
    let leader = store.open(&pid()).unwrap();
    let follower = store.open(&PartitionId { partition: 1, ..pid() }).unwrap();
    // Epoch 1: offsets 0-2; epoch 3: offsets 3-4.
    leader.append(&batch(&[(None, Some("a"), 1), (None, Some("b"), 1)], Compression::None), &cfg, 0, 1).unwrap();
    leader.append(&batch(&[(None, Some("c"), 1)], Compression::None), &cfg, 0, 1).unwrap();
    leader.append(&batch(&[(None, Some("d"), 1), (None, Some("e"), 1)], Compression::Lz4), &cfg, 0, 3).unwrap();
    assert_eq!(leader.last_epoch(), 3);
    assert_eq!(leader.epoch_end(1), (1, 3));
    assert_eq!(leader.epoch_end(2), (1, 3), "an epoch without batches ends where the next begins");
    assert_eq!(leader.epoch_end(3), (3, 5));
    assert_eq!(leader.epoch_end(9), (3, 5));
    assert_eq!(leader.epoch_end(0), (-1, 0));

    // The follower copies bytes as they are, and only at its log end.
    let copy = leader.read(0, usize::MAX).unwrap().batches;
    assert_eq!(follower.append_replica(&copy).unwrap(), 5);
    assert_eq!(follower.read(0, usize::MAX).unwrap().batches, copy, "replica bytes identical to the leader's");
    assert!(matches!(follower.append_replica(&copy), Err(StorageError::NotContiguous { expected: 5, got: 0 })));
    assert_eq!(follower.epoch_end(3), (3, 5));

    // A divergent tail written at epoch 3 on the follower is cut at the batch boundary.
    follower.append(&batch(&[(None, Some("x"), 1)], Compression::None), &cfg, 0, 3).unwrap();
    assert_eq!(follower.truncate(4).unwrap(), 3, "the batch holding offset 4 starts at 3 and goes whole");
    assert_eq!(all_records(&*follower, 0).iter().map(|r| r.2.clone().unwrap()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(follower.truncate(10).unwrap(), 3, "truncating past the end changes nothing");

    // Reads can stop below a limit (the high watermark).
    let r = leader.read_to(0, usize::MAX, 3).unwrap();
    assert_eq!(r.next_offset, 3);

    follower.reset(42).unwrap();
    let o = follower.offsets();
    assert_eq!((o.log_start_offset, o.log_end_offset), (42, 42));
    drop((leader, follower, store));
    let store = reopen(dir.path()).await;
    let follower = store.open(&PartitionId { partition: 1, ..pid() }).unwrap();
    assert_eq!(follower.offsets().log_start_offset, 42, "a reset survives a restart");
    let leader = store.open(&pid()).unwrap();
    assert_eq!(leader.epoch_end(1), (1, 3), "epochs survive a restart through the index");
}

/// A batch of `n` records from producer `id` at `epoch`, starting at sequence `seq`.
fn idem(id: i64, epoch: i16, seq: i32, n: usize, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).producer(id, epoch, seq);
    for i in 0..n {
        b.push(ts, None, Some(format!("{id}-{}", seq as usize + i).as_bytes()), &[]);
    }
    b.build().unwrap()
}

fn seq_error(r: Result<sluice_storage::AppendInfo, StorageError>) -> sluice_storage::producers::SeqError {
    match r {
        Err(StorageError::Sequence(e)) => e,
        other => panic!("expected a sequence error, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotent_batches_are_written_once_and_in_order_across_restarts() {
    use sluice_storage::producers::SeqError;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        let a = log.append(&idem(9, 0, 0, 3, 1), &cfg, 0, 1).unwrap();
        assert_eq!((a.base_offset, a.last_offset, a.duplicate), (0, 2, false));
        log.append(&batch(&[(None, Some("plain"), 1)], Compression::None), &cfg, 0, 1).unwrap();
        let b = log.append(&idem(9, 0, 3, 2, 1), &cfg, 0, 1).unwrap();
        assert_eq!((b.base_offset, b.last_offset), (4, 5));
        // A retry of an earlier batch is answered with its offsets; nothing is written.
        let again = log.append(&idem(9, 0, 0, 3, 1), &cfg, 0, 1).unwrap();
        assert_eq!((again.base_offset, again.last_offset, again.record_count, again.duplicate), (0, 2, 3, true));
        assert_eq!(log.offsets().log_end_offset, 6);
        // A gap and a stale epoch are refused, nothing written.
        assert_eq!(
            seq_error(log.append(&idem(9, 0, 7, 1, 1), &cfg, 0, 1)),
            SeqError::OutOfOrder { producer_id: 9, expected: 5, got: 7 }
        );
        // A request mixing a written batch with a new one is refused whole.
        let mut mixed = idem(9, 0, 3, 2, 1).to_vec();
        mixed.extend_from_slice(&idem(9, 0, 5, 1, 1));
        assert!(matches!(log.append(&mixed, &cfg, 0, 1), Err(StorageError::DuplicateInRequest { .. })));
        // Two new batches of one producer in one request are checked in order.
        let mut two = idem(9, 0, 5, 1, 1).to_vec();
        two.extend_from_slice(&idem(9, 0, 6, 1, 1));
        assert_eq!(log.append(&two, &cfg, 0, 1).unwrap().last_offset, 7);
        // A new epoch starts at sequence 0 and fences the old one.
        assert!(matches!(seq_error(log.append(&idem(9, 1, 3, 1, 1), &cfg, 0, 1)), SeqError::OutOfOrder { .. }));
        log.append(&idem(9, 1, 0, 1, 1), &cfg, 0, 1).unwrap();
        assert_eq!(
            seq_error(log.append(&idem(9, 0, 7, 1, 1), &cfg, 0, 1)),
            SeqError::StaleEpoch { producer_id: 9, epoch: 0, current: 1 }
        );
        assert_eq!(log.offsets().log_end_offset, 9);
        store.sync().await.unwrap();
    }
    // The state is rebuilt from the log: the same answers after a restart.
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    let again = log.append(&idem(9, 1, 0, 1, 1), &cfg, 0, 2).unwrap();
    assert_eq!((again.base_offset, again.duplicate), (8, true));
    assert!(matches!(seq_error(log.append(&idem(9, 0, 7, 1, 1), &cfg, 0, 2)), SeqError::StaleEpoch { .. }));
    assert!(matches!(seq_error(log.append(&idem(9, 1, 5, 1, 1), &cfg, 0, 2)), SeqError::OutOfOrder { .. }));
    assert_eq!(log.append(&idem(9, 1, 1, 1, 1), &cfg, 0, 2).unwrap().base_offset, 9);
}

#[tokio::test]
async fn producer_state_outlives_retention_and_follows_replication_and_truncation() {
    use sluice_storage::producers::SeqError;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let now = 10_000_000;
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        log.append(&idem(1, 0, 0, 2, now), &cfg, 0, 1).unwrap();
        log.append(&idem(2, 0, 0, 2, now), &cfg, 0, 1).unwrap();
        log.append(&batch(&[(None, Some("later"), now + 10)], Compression::None), &cfg, 0, 1).unwrap();
        // Retention removes both producers' batches; the snapshot keeps their state.
        let timed = TopicConfig { retention_ms: 5, ..cfg.clone() };
        assert_eq!(log.clean(&timed, now + 10).unwrap().deleted_batches, 2);
        assert_eq!(log.offsets().log_start_offset, 4);
        store.sync().await.unwrap();
    }
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert!(matches!(
        seq_error(log.append(&idem(1, 0, 5, 1, now), &cfg, 0, 1)),
        SeqError::OutOfOrder { expected: 2, .. }
    ));
    assert!(log.append(&idem(1, 0, 0, 2, now), &cfg, 0, 1).unwrap().duplicate);

    // A follower's copy carries the producer state; truncating the copy takes it back.
    let follower = store.open(&PartitionId { topic: "t".into(), topic_id: 7, partition: 1 }).unwrap();
    let leader = store.open(&PartitionId { topic: "t".into(), topic_id: 7, partition: 2 }).unwrap();
    leader.append(&idem(3, 0, 0, 1, now), &cfg, 0, 1).unwrap();
    leader.append(&idem(3, 0, 1, 1, now), &cfg, 0, 1).unwrap();
    follower.append_replica(&leader.read(0, usize::MAX).unwrap().batches).unwrap();
    assert!(follower.append(&idem(3, 0, 1, 1, now), &cfg, 0, 2).unwrap().duplicate, "the copy knows batch 1");
    follower.truncate(1).unwrap();
    let b = follower.append(&idem(3, 0, 1, 1, now), &cfg, 0, 2).unwrap();
    assert_eq!((b.base_offset, b.duplicate), (1, false), "the truncated batch is written again");
}

#[tokio::test]
async fn a_truncation_below_the_producer_snapshot_does_not_resurrect_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let now = 10_000_000;
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        log.append(&batch(&[(None, Some("old"), 1_000)], Compression::None), &cfg, 0, 1).unwrap();
        log.append(&idem(1, 0, 0, 2, now), &cfg, 0, 1).unwrap(); // offsets 1-2
        log.append(&idem(1, 0, 2, 1, now), &cfg, 0, 1).unwrap(); // offset 3
        // Retention removes the first batch, writing a snapshot that covers offsets below 4.
        let timed = TopicConfig { retention_ms: 5, ..cfg.clone() };
        assert_eq!(log.clean(&timed, 2_000).unwrap().deleted_batches, 1);
        // A new leader's log diverged at 3: producer 1's last batch goes, others come.
        log.truncate(3).unwrap();
        assert_eq!(log.append(&idem(2, 0, 0, 1, now), &cfg, 0, 2).unwrap().base_offset, 3);
        assert_eq!(log.append(&idem(1, 0, 2, 1, now), &cfg, 0, 2).unwrap().base_offset, 4);
        store.sync().await.unwrap();
    }
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    let r = log.append(&idem(2, 0, 0, 1, now), &cfg, 0, 2).unwrap();
    assert_eq!((r.base_offset, r.duplicate), (3, true), "producer 2's batch is known after the restart");
    let p = log.append(&idem(1, 0, 2, 1, now), &cfg, 0, 2).unwrap();
    assert_eq!((p.base_offset, p.duplicate), (4, true), "producer 1's batch is answered with its new offset");
    assert_eq!(log.offsets().log_end_offset, 5);
}

/// A transactional batch of `n` records from producer `id`.
fn txn_batch(id: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).producer(id, epoch, seq).flags(sluice_core::batch::TRANSACTIONAL);
    for i in 0..n {
        b.push(1, None, Some(format!("t{id}-{i}").as_bytes()), &[]);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn transactions_hold_the_stable_offset_and_aborts_are_remembered_across_restarts() {
    use sluice_core::batch::Marker;
    use sluice_storage::txns::AbortedTxn;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        log.append(&batch(&[(None, Some("plain"), 1)], Compression::None), &cfg, 0, 1).unwrap(); // 0
        // A transaction opens only as verified by the coordinator; later batches of it need not.
        assert!(matches!(
            log.append(&txn_batch(5, 0, 0, 1), &cfg, 0, 1),
            Err(StorageError::NotInTransaction { producer_id: 5, epoch: 0 })
        ));
        log.append_verified(&txn_batch(5, 0, 0, 1), &cfg, 0, 1, Some((5, 0))).unwrap(); // 1
        log.append(&txn_batch(5, 0, 1, 1), &cfg, 0, 1).unwrap(); // 2
        log.append_verified(&txn_batch(6, 0, 0, 2), &cfg, 0, 1, Some((6, 0))).unwrap(); // 3-4
        assert_eq!(log.first_unstable_offset(), 1);
        // Markers carry the producer's next epoch.
        assert_eq!(log.append_marker(&MarkerSpec::new(5, 1, Marker::Commit, 1), 0, 1).unwrap().base_offset, 5);
        assert_eq!(log.first_unstable_offset(), 3, "producer 6's transaction is still open");
        assert_eq!(log.append_marker(&MarkerSpec::new(6, 1, Marker::Abort, 1), 0, 1).unwrap().base_offset, 6);
        assert_eq!(log.first_unstable_offset(), 7);
        let aborted = vec![AbortedTxn { producer_id: 6, first_offset: 3, last_offset: 6 }];
        assert_eq!(log.aborted_transactions(0, 7), aborted);
        // A retried marker writes nothing; the marker's epoch fenced the transaction's epoch.
        let again = log.append_marker(&MarkerSpec::new(6, 1, Marker::Abort, 1), 0, 1).unwrap();
        assert_eq!((again.duplicate, again.record_count, log.offsets().log_end_offset), (true, 0, 7));
        assert!(matches!(
            log.append_verified(&txn_batch(6, 0, 2, 1), &cfg, 0, 1, Some((6, 0))),
            Err(StorageError::Sequence(_))
        ));
        // Producers cannot write markers.
        let forged = sluice_core::batch::marker_batch(5, 1, Marker::Commit, 1, 0).unwrap();
        assert!(matches!(log.append(&forged, &cfg, 0, 1), Err(StorageError::ControlBatch)));
        log.append_verified(&txn_batch(5, 1, 0, 1), &cfg, 0, 1, Some((5, 1))).unwrap(); // 7, the next transaction
        // A late copy of the first transaction's marker does not end the next one.
        assert!(log.append_marker(&MarkerSpec::new(5, 1, Marker::Abort, 1), 0, 1).unwrap().duplicate);
        assert_eq!(log.first_unstable_offset(), 7);
        // A batch verified just before its transaction ended, with nothing of it here yet,
        // finds its epoch fenced by the marker instead of opening a transaction nothing ends.
        let m = log.append_marker(&MarkerSpec::new(9, 1, Marker::Abort, 1), 0, 1).unwrap();
        assert_eq!((m.duplicate, m.base_offset), (false, 8), "written: it moves producer 9's epoch");
        assert!(matches!(
            log.append_verified(&txn_batch(9, 0, 0, 1), &cfg, 0, 1, Some((9, 0))),
            Err(StorageError::Sequence(_))
        ));
        assert_eq!(log.first_unstable_offset(), 7);
        store.sync().await.unwrap();
    }
    // Rebuilt from the index: the same answers.
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.first_unstable_offset(), 7);
    assert_eq!(log.aborted_transactions(0, 100), vec![AbortedTxn { producer_id: 6, first_offset: 3, last_offset: 6 }]);
    // A follower truncated before the abort marker has producer 6's transaction open again.
    log.truncate(6).unwrap();
    assert_eq!(log.first_unstable_offset(), 3);
    assert!(log.aborted_transactions(0, 100).is_empty());
    // A follower copying the leader's marker gets the same state.
    let follower = store.open(&PartitionId { topic: "t".into(), topic_id: 7, partition: 3 }).unwrap();
    let leader = store.open(&PartitionId { topic: "t".into(), topic_id: 7, partition: 4 }).unwrap();
    leader.append_verified(&txn_batch(8, 0, 0, 3), &cfg, 0, 1, Some((8, 0))).unwrap();
    leader.append_marker(&MarkerSpec::new(8, 1, Marker::Abort, 1), 0, 1).unwrap();
    follower.append_replica(&leader.read(0, usize::MAX).unwrap().batches).unwrap();
    assert_eq!(follower.aborted_transactions(0, 10), leader.aborted_transactions(0, 10));
    assert_eq!(follower.first_unstable_offset(), 4);
}

#[tokio::test]
async fn a_producer_keeping_its_epoch_ends_each_transaction_with_a_marker_at_that_epoch() {
    use sluice_core::batch::Marker;
    use sluice_storage::txns::AbortedTxn;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let keeping = |m: Marker| MarkerSpec { keeps_epoch: true, ..MarkerSpec::new(5, 2, m, 1) };
    // A Kafka client before transaction version 2: every transaction at epoch 2.
    log.append_verified(&txn_batch(5, 2, 0, 2), &cfg, 0, 1, Some((5, 2))).unwrap(); // 0-1
    let m = log.append_marker(&keeping(Marker::Commit), 0, 1).unwrap();
    assert_eq!((m.duplicate, m.base_offset), (false, 2));
    assert_eq!(log.first_unstable_offset(), 3);
    // A retry finds nothing open: nothing written.
    assert!(log.append_marker(&keeping(Marker::Commit), 0, 1).unwrap().duplicate);
    // The next transaction, same epoch, its sequence going on; aborted.
    assert!(matches!(
        log.append(&txn_batch(5, 2, 2, 1), &cfg, 0, 1),
        Err(StorageError::NotInTransaction { producer_id: 5, epoch: 2 })
    ));
    log.append_verified(&txn_batch(5, 2, 2, 1), &cfg, 0, 1, Some((5, 2))).unwrap(); // 3
    assert_eq!(log.first_unstable_offset(), 3);
    // A marker of a producer that moves its epoch on would be a retry at this epoch.
    assert!(log.append_marker(&MarkerSpec::new(5, 2, Marker::Abort, 1), 0, 1).unwrap().duplicate);
    assert_eq!(log.append_marker(&keeping(Marker::Abort), 0, 1).unwrap().base_offset, 4);
    assert_eq!(log.aborted_transactions(0, 10), vec![AbortedTxn { producer_id: 5, first_offset: 3, last_offset: 4 }]);
    assert_eq!(log.first_unstable_offset(), 5);
}

#[tokio::test]
async fn a_duplicate_on_a_log_append_time_topic_gets_the_original_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig {
        message_timestamp_type: sluice_core::topic::TimestampType::LogAppendTime,
        ..TopicConfig::default()
    };
    let first = log.append(&idem(4, 0, 0, 2, 1), &cfg, 5_000, 1).unwrap();
    assert_eq!(first.log_append_time, 5_000);
    let again = log.append(&idem(4, 0, 0, 2, 1), &cfg, 9_000, 1).unwrap();
    assert_eq!((again.duplicate, again.base_offset, again.log_append_time), (true, 0, 5_000));
}

#[tokio::test]
async fn compaction_drops_aborted_records_and_leaves_open_transactions_alone() {
    use sluice_core::batch::Marker;
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    let cfg = TopicConfig::from_map(&BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())])).unwrap();
    let keyed = |id: i64, seq: i32, k: &str, v: &str| {
        let mut b = BatchBuilder::new(Compression::None).producer(id, 0, seq).flags(sluice_core::batch::TRANSACTIONAL);
        b.push(1, Some(k.as_bytes()), Some(v.as_bytes()), &[]);
        b.build().unwrap()
    };
    log.append(&batch(&[(Some("k"), Some("committed"), 1)], Compression::None), &cfg, 0, 1).unwrap(); // 0
    log.append_verified(&keyed(5, 0, "k", "aborted"), &cfg, 0, 1, Some((5, 0))).unwrap(); // 1
    log.append_marker(&MarkerSpec::new(5, 1, Marker::Abort, 1), 0, 1).unwrap(); // 2
    log.append_verified(&keyed(6, 0, "j", "open-1"), &cfg, 0, 1, Some((6, 0))).unwrap(); // 3
    log.append(&batch(&[(Some("j"), Some("plain-j"), 1)], Compression::None), &cfg, 0, 1).unwrap(); // 4
    log.append_verified(&keyed(6, 1, "k", "open-2"), &cfg, 0, 1, None).unwrap(); // 5, same open transaction
    log.append(&batch(&[(Some("z"), Some("head"), 1)], Compression::None), &cfg, 0, 1).unwrap(); // 6
    log.clean(&cfg, 0).unwrap();
    // The aborted value neither survives nor hides the committed one; nothing from the first
    // open transaction on is touched (its records may still commit or abort). Markers stay.
    let offsets: Vec<i64> = all_records(&*log, 0).iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![0, 2, 3, 4, 5, 6]);
    // Once it commits, its values count: the older value of "k" goes.
    log.append_marker(&MarkerSpec::new(6, 1, Marker::Commit, 1), 0, 1).unwrap(); // 7
    log.append(&batch(&[(Some("y"), Some("head2"), 1)], Compression::None), &cfg, 0, 1).unwrap(); // 8
    log.clean(&cfg, 0).unwrap();
    let offsets: Vec<i64> = all_records(&*log, 0).iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![2, 4, 5, 6, 7, 8]);
}

fn partition_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join("segments").join("7").join("t").join("0")
}

/// The partition's spare files (made ahead, not segment files yet).
fn spare_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(partition_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spare"))
        .collect()
}

/// Waits until the store's spare for [`pid`] is ready for the next roll, and returns its file.
async fn ready_spare(store: &SegmentStore, root: &std::path::Path) -> std::path::PathBuf {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.spare_ready(&pid()) {
        assert!(std::time::Instant::now() < deadline, "no spare made ahead");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut spares = spare_files(root);
    assert_eq!(spares.len(), 1, "{spares:?}");
    spares.pop().unwrap()
}

/// The partition's segment files (not its spare), oldest first.
fn segment_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(partition_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// Bytes of batches in the partition's segment files (a file made ahead is longer).
fn disk_bytes(root: &std::path::Path) -> u64 {
    segment_files(root).iter().map(|f| data_end(f)).sum()
}

fn small_segments(bytes: u64) -> StoreOptions {
    StoreOptions { segment_bytes: bytes, ..StoreOptions::default() }
}

#[tokio::test]
async fn segment_files_roll_at_their_size_and_retention_deletes_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let value = "v".repeat(1000);
    let mut cfg = TopicConfig::default();
    {
        let store = SegmentStore::open_with(dir.path(), small_segments(4096)).unwrap();
        let log = store.open(&pid()).unwrap();
        for i in 0..20i64 {
            log.append(&batch(&[(None, Some(&value), i)], Compression::None), &cfg, 0, 0).unwrap();
        }
        // About 1,070 bytes a batch: three to a 4 KiB file.
        assert_eq!(segment_files(dir.path()).len(), 7, "{:?}", segment_files(dir.path()));
        assert_eq!(disk_bytes(dir.path()), log.size_bytes());
        // Keep about five batches: the files whose batches all went are deleted; the log start
        // moves batch by batch, as before.
        cfg.retention_bytes = 5 * 1100;
        assert_eq!(log.clean(&cfg, 0).unwrap().deleted_batches, 15);
        assert_eq!(log.offsets().log_start_offset, 15);
        assert_eq!(segment_files(dir.path()).len(), 2, "{:?}", segment_files(dir.path()));
        assert_eq!(all_records(&*log, 15).len(), 5);
        store.sync().await.unwrap();
    }
    let store = reopen_with(dir.path(), small_segments(4096)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!((log.offsets().log_start_offset, log.offsets().log_end_offset), (15, 20));
    assert_eq!(all_records(&*log, 15).iter().map(|r| r.0).collect::<Vec<_>>(), vec![15, 16, 17, 18, 19]);
    // Appends go on in the last file, then new ones.
    log.append(&batch(&[(None, Some(&value), 20)], Compression::None), &cfg, 0, 0).unwrap();
    assert_eq!(all_records(&*log, 15).len(), 6);
}

#[tokio::test]
async fn the_next_segment_file_is_made_ahead_with_its_blocks_allocated() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let value = "v".repeat(1000);
    let size = 64 << 10;
    let allocated = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
    let store = SegmentStore::open_with(dir.path(), small_segments(size)).unwrap();
    let log = store.open(&pid()).unwrap();
    let mut n = 0i64;
    let mut append = |log: &dyn sluice_storage::PartitionLog| {
        log.append(&batch(&[(None, Some(&value), n)], Compression::None), &cfg, 0, 0).unwrap();
        n += 1;
    };
    // Below half a file nothing is made ahead; past it the spare appears, a whole segment
    // long, its blocks allocated.
    for _ in 0..20 {
        append(&*log);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(spare_files(dir.path()).is_empty() && !store.spare_ready(&pid()), "no spare before half full");
    for _ in 0..12 {
        append(&*log);
    }
    let spare = ready_spare(&store, dir.path()).await;
    assert!(allocated(&spare) >= size, "{} bytes allocated", allocated(&spare));
    assert_eq!(std::fs::metadata(&spare).unwrap().len(), size);
    let inode = std::fs::metadata(&spare).unwrap().ino();
    // The roll takes it: the new segment file is the spare.
    while segment_files(dir.path()).len() < 2 {
        append(&*log);
    }
    let newest = segment_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&newest).unwrap().ino(), inode);
    assert!(allocated(&newest) >= size);
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), size);
    assert!(spare_files(dir.path()).is_empty());
    let one = log.size_bytes() / n as u64;
    let records = all_records(&*log, 0);
    assert_eq!(records.len() as i64, n);
    assert!(records.iter().enumerate().all(|(i, r)| r.0 == i as i64 && r.2.as_deref() == Some(value.as_str())));
    store.sync().await.unwrap();
    drop(log);
    drop(store);
    // A restart finds the data's end by reading batches up to the zeros (the file keeps its
    // length and blocks), and removes a spare the stopped process left.
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::write(partition_dir(dir.path()).join("1-0.spare"), b"left behind").unwrap();
    let store = reopen_with(dir.path(), small_segments(size)).await;
    let log = store.open(&pid()).unwrap();
    assert!(spare_files(dir.path()).is_empty());
    if zeroes_in_place(dir.path()) {
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), len);
        assert!(allocated(&newest) >= size);
    }
    assert_eq!(log.offsets().log_end_offset, n);
    assert_eq!(log.append(&batch(&[(None, Some("after"), n)], Compression::None), &cfg, 0, 0).unwrap().base_offset, n);
    let records = all_records(&*log, 0);
    assert_eq!(records.len() as i64, n + 1);
    assert_eq!(records.last().unwrap().2.as_deref(), Some("after"));
    // A truncation (a new leader's log ends earlier) goes on in the ready spare.
    let mut m = n + 1;
    while !store.spare_ready(&pid()) {
        log.append(&batch(&[(None, Some(&value), m)], Compression::None), &cfg, 0, 0).unwrap();
        m += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let spare_inode = std::fs::metadata(ready_spare(&store, dir.path()).await).unwrap().ino();
    assert_eq!(log.truncate(n).unwrap(), n);
    let newest = segment_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&newest).unwrap().ino(), spare_inode);
    assert_eq!(log.append(&batch(&[(None, Some("again"), n)], Compression::None), &cfg, 0, 0).unwrap().base_offset, n);
    let records = all_records(&*log, 0);
    assert_eq!(records.len() as i64, n + 1);
    assert_eq!(records.last().unwrap().2.as_deref(), Some("again"));
    // Once appends move on to the next file, one made ahead is cut to its data: whole
    // batches, no room for one more.
    let ahead = segment_files(dir.path()).pop().unwrap();
    let mut m = n + 1;
    while !store.spare_ready(&pid()) {
        log.append(&batch(&[(None, Some(&value), m)], Compression::None), &cfg, 0, 0).unwrap();
        m += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    while segment_files(dir.path()).last() == Some(&ahead) {
        log.append(&batch(&[(None, Some(&value), m)], Compression::None), &cfg, 0, 0).unwrap();
        m += 1;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&ahead).unwrap().len() == size {
        assert!(std::time::Instant::now() < deadline, "the file rolled off was not cut to its data");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let len = std::fs::metadata(&ahead).unwrap().len();
    assert_eq!(len, data_end(&ahead));
    assert!(len + one > size && len <= size, "{len} bytes of {size}");
    assert_eq!(all_records(&*log, 0).len() as i64, m);
    // A crash before that cut leaves the file a whole segment long: the next start cuts it.
    store.sync().await.unwrap();
    drop(log);
    drop(store);
    std::fs::OpenOptions::new().write(true).open(&ahead).unwrap().set_len(size).unwrap();
    let store = reopen_with(dir.path(), small_segments(size)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(std::fs::metadata(&ahead).unwrap().len(), len);
    assert_eq!(all_records(&*log, 0).len() as i64, m);
}

/// Whether the filesystem under `dir` can turn a range of a file into zeros in place
/// (`FALLOC_FL_ZERO_RANGE`; tmpfs cannot, and recovery cuts the file there instead).
fn zeroes_in_place(dir: &std::path::Path) -> bool {
    use nix::fcntl::{FallocateFlags, fallocate};
    let f = tempfile::tempfile_in(dir).unwrap();
    f.set_len(8192).unwrap();
    fallocate(&f, FallocateFlags::FALLOC_FL_ZERO_RANGE, 0, 4096).is_ok()
}

/// Where the whole batches of segment file `path` end (its first header of zeros).
fn data_end(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut pos = 0usize;
    while pos + 12 <= bytes.len() && bytes[pos..pos + 12].iter().any(|b| *b != 0) {
        pos += 12 + i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
    }
    pos.min(bytes.len()) as u64
}

/// Appends records of `value` to a new store of `size`-byte files until appends go to a file
/// made ahead, then `more` records, syncs and closes the store; returns how many.
async fn written_into_a_file_made_ahead(dir: &std::path::Path, size: u64, value: &str, more: usize) -> i64 {
    let cfg = TopicConfig::default();
    let store = SegmentStore::open_with(dir, small_segments(size)).unwrap();
    let log = store.open(&pid()).unwrap();
    let mut n = 0i64;
    let mut append = || {
        log.append(&batch(&[(None, Some(value), n)], Compression::None), &cfg, 0, 0).unwrap();
        n += 1;
    };
    for _ in 0..40 {
        append();
    }
    ready_spare(&store, dir).await;
    while segment_files(dir).len() < 2 {
        append();
    }
    for _ in 0..more {
        append();
    }
    store.sync().await.unwrap();
    n
}

#[tokio::test]
async fn a_restart_zeroes_what_follows_the_data_in_a_file_made_ahead() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let size = 64 << 10;
    let value = "v".repeat(1000);
    let n = written_into_a_file_made_ahead(dir.path(), size, &value, 0).await;
    // Before a crash the kernel wrote a later block of the file and not the one before it:
    // a whole batch lies past zeros. Once appends have filled the zeros it would continue
    // the log (offset `n + 1`, right after the next append), though it never was its.
    let active = segment_files(dir.path()).pop().unwrap();
    let end = data_end(&active);
    let next = batch(&[(None, Some("next"), n)], Compression::None);
    let mut ghost = BatchBuilder::new(Compression::None);
    ghost.push(n + 1, None, Some(b"ghost"), &[]);
    let ghost = ghost.build_at(n + 1, 0).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&active).unwrap();
    file.write_all_at(&ghost, end + next.len() as u64).unwrap();
    // And bytes blocks further on (found by asking the filesystem where data is, not read).
    let far = end + 5 * 4096;
    file.write_all_at(&[0xcd; 100], far).unwrap();
    drop(file);
    {
        let store = reopen_with(dir.path(), small_segments(size)).await;
        let log = store.open(&pid()).unwrap();
        assert_eq!(log.offsets().log_end_offset, n);
        let bytes = std::fs::read(&active).unwrap();
        assert!(bytes.get(far as usize..far as usize + 100).is_none_or(|b| b.iter().all(|b| *b == 0)));
        if zeroes_in_place(dir.path()) {
            assert_eq!(std::fs::metadata(&active).unwrap().len(), size, "the file keeps its length");
        }
        assert_eq!(log.append(&next, &cfg, 0, 0).unwrap().base_offset, n);
    }
    {
        let store = reopen_with(dir.path(), small_segments(size)).await;
        let log = store.open(&pid()).unwrap();
        assert_eq!(log.offsets().log_end_offset, n + 1);
        let records = all_records(&*log, 0);
        assert_eq!(records.len() as i64, n + 1);
        assert_eq!(records.last().unwrap().2.as_deref(), Some("next"));
        store.sync().await.unwrap();
    }
    // Torn bytes right after the data (a write cut short by the crash) are zeroed as well,
    // and appends go on where the data ends.
    let end = data_end(&active);
    std::fs::OpenOptions::new().write(true).open(&active).unwrap().write_all_at(&[0xab; 300], end).unwrap();
    let store = reopen_with(dir.path(), small_segments(size)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, n + 1);
    assert_eq!(data_end(&active), end);
    assert_eq!(
        log.append(&batch(&[(None, Some("last"), n + 1)], Compression::None), &cfg, 0, 0).unwrap().base_offset,
        n + 1
    );
    let records = all_records(&*log, 0);
    assert_eq!(records.len() as i64, n + 2);
    assert_eq!(records.last().unwrap().2.as_deref(), Some("last"));
    // Bytes only blocks past the data: the filesystem is asked where data is.
    store.sync().await.unwrap();
    drop(log);
    drop(store);
    let far = data_end(&active) + 5 * 4096;
    std::fs::OpenOptions::new().write(true).open(&active).unwrap().write_all_at(&[0xcd; 100], far).unwrap();
    let store = reopen_with(dir.path(), small_segments(size)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, n + 2);
    let bytes = std::fs::read(&active).unwrap();
    assert!(bytes.get(far as usize..far as usize + 100).is_none_or(|b| b.iter().all(|b| *b == 0)));
}

#[tokio::test]
async fn a_synced_batch_missing_from_a_file_made_ahead_is_dropped_not_served() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 10;
    let value = "v".repeat(1000);
    let n = written_into_a_file_made_ahead(dir.path(), size, &value, 2).await;
    // The synced mark covers the last batch, but its bytes never reached the disk (the file,
    // made ahead, is long enough for the index to point there): it goes, not served damaged.
    let active = segment_files(dir.path()).pop().unwrap();
    let end = data_end(&active);
    let one = batch(&[(None, Some(&value), 0)], Compression::None).len() as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .write_all_at(&vec![0; one as usize], end - one)
        .unwrap();
    let store = reopen_with(dir.path(), small_segments(size)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, n - 1);
    assert_eq!(all_records(&*log, 0).len() as i64, n - 1);
}

#[tokio::test]
async fn a_new_partition_written_hard_leaves_its_first_file_for_a_spare_early() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let value = "v".repeat(1_000_000);
    // Default 64 MiB files: the first file was not made ahead, so a spare is made once 4 MiB
    // are in it (not at half the size), and the next append goes to the spare.
    let store = SegmentStore::open(dir.path()).unwrap();
    let log = store.open(&pid()).unwrap();
    for i in 0..3i64 {
        log.append(&batch(&[(None, Some(&value), i)], Compression::None), &cfg, 0, 0).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(spare_files(dir.path()).is_empty() && !store.spare_ready(&pid()), "no spare below 4 MiB");
    for i in 3..5i64 {
        log.append(&batch(&[(None, Some(&value), i)], Compression::None), &cfg, 0, 0).unwrap();
    }
    assert!(segment_files(dir.path()).len() == 1);
    let spare = ready_spare(&store, dir.path()).await;
    assert!(std::fs::metadata(&spare).unwrap().blocks() * 512 >= 64 << 20);
    let inode = std::fs::metadata(&spare).unwrap().ino();
    log.append(&batch(&[(None, Some(&value), 5)], Compression::None), &cfg, 0, 0).unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(std::fs::metadata(&files[1]).unwrap().ino(), inode);
    assert!(std::fs::metadata(&files[0]).unwrap().len() < 6 << 20);
    assert_eq!(all_records(&*log, 0).len(), 6);
    // The spare it writes to now was made ahead: below half its size it asks for no other,
    // and after a restart it is still taken for one made ahead (by its allocation).
    for i in 6..11i64 {
        log.append(&batch(&[(None, Some(&value), i)], Compression::None), &cfg, 0, 0).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(spare_files(dir.path()).is_empty() && !store.spare_ready(&pid()));
    store.sync().await.unwrap();
    drop(log);
    drop(store);
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    log.append(&batch(&[(None, Some(&value), 11)], Compression::None), &cfg, 0, 0).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(spare_files(dir.path()).is_empty() && !store.spare_ready(&pid()));
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(all_records(&*log, 0).len(), 12);
}

#[tokio::test]
async fn a_restart_indexes_whole_batches_the_index_missed_and_cuts_torn_or_missing_bytes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        for i in 0..3i64 {
            log.append(&batch(&[(None, Some("a"), i), (None, Some("b"), i)], Compression::None), &cfg, 0, 0).unwrap();
        }
        store.sync().await.unwrap();
    }
    // The process died after writing a batch to the file and before indexing it, and in the
    // middle of writing the next one.
    let file = segment_files(dir.path()).pop().unwrap();
    let mut whole = BatchBuilder::new(Compression::None);
    whole.push(3, None, Some(b"c"), &[]);
    whole.push(3, None, Some(b"d"), &[]);
    let whole = whole.build_at(6, 1).unwrap();
    let torn = batch(&[(None, Some("e"), 4)], Compression::None);
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(&whole).unwrap();
    f.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(f);
    let len_before = std::fs::metadata(&file).unwrap().len();
    {
        let store = reopen(dir.path()).await;
        let log = store.open(&pid()).unwrap();
        assert_eq!(log.offsets().log_end_offset, 8);
        let recs = all_records(&*log, 0);
        assert_eq!(
            recs[6..].iter().map(|r| (r.0, r.2.clone().unwrap())).collect::<Vec<_>>(),
            [(6, "c".to_string()), (7, "d".to_string())]
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len_before - (torn.len() / 2) as u64);
        store.sync().await.unwrap();
    }
    // A machine crash lost the file's tail that the index had already recorded: the entries
    // whose bytes are gone go, and the log ends before them.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(std::fs::metadata(&file).unwrap().len() - 10).unwrap();
    drop(f);
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(log.offsets().log_end_offset, 6);
    assert_eq!(all_records(&*log, 0).len(), 6);
    let info = log.append(&batch(&[(None, Some("f"), 5)], Compression::None), &cfg, 0, 0).unwrap();
    assert_eq!(info.base_offset, 6);
    assert_eq!(all_records(&*log, 6)[0].2.as_deref(), Some("f"));
}

#[tokio::test]
async fn a_partition_in_the_old_layout_is_moved_to_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Before ADR 0001: one sled value per batch, keyed by base offset, and an index tree.
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .segment_size(sluice_storage::segment_store::SLED_SEGMENT_BYTES)
            .open()
            .unwrap();
        let data = db.open_tree("log/7/t/0").unwrap();
        let idx = db.open_tree("idx/7/t/0").unwrap();
        for i in 0..3i64 {
            let mut b = batch(&[(Some("k"), Some(&format!("v{i}")), i)], Compression::None).to_vec();
            sluice_core::batch::set_base_offset(&mut b, i);
            data.insert(i.to_be_bytes(), b).unwrap();
            idx.insert(i.to_be_bytes(), &[0u8; 28][..]).unwrap();
        }
        db.flush().unwrap();
    }
    for _ in 0..2 {
        let store = reopen(dir.path()).await;
        assert_eq!(store.list().unwrap(), vec![pid()]);
        let log = store.open(&pid()).unwrap();
        assert_eq!(log.offsets().log_end_offset, 3);
        let values: Vec<_> = all_records(&*log, 0).into_iter().map(|r| r.2.unwrap()).collect();
        assert_eq!(values, ["v0", "v1", "v2"]);
        assert_eq!(segment_files(dir.path()).len(), 1);
    }
}

#[tokio::test]
async fn compaction_gives_back_the_space_of_mostly_dead_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::from_map(&BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())])).unwrap();
    let value = "v".repeat(200);
    let expected = {
        let store = SegmentStore::open_with(dir.path(), small_segments(2048)).unwrap();
        let log = store.open(&pid()).unwrap();
        for round in 0..60i64 {
            let key = format!("k{}", round % 3);
            log.append(&batch(&[(Some(&key), Some(&format!("{round}{value}")), round)], Compression::None), &cfg, 0, 0)
                .unwrap();
        }
        let before = disk_bytes(dir.path());
        let stats = log.clean(&cfg, 1_000).unwrap();
        assert_eq!(stats.compacted_records, 57);
        // The last value of each key, at its offset; the head batch is never compacted.
        let recs = all_records(&*log, 0);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![57, 58, 59]);
        let after = disk_bytes(dir.path());
        assert!(after * 4 < before, "compaction kept {after} of {before} bytes on disk");
        // A second pass over a compacted log changes nothing.
        assert_eq!(log.clean(&cfg, 1_000).unwrap().compacted_batches, 0);
        store.sync().await.unwrap();
        recs
    };
    let store = reopen_with(dir.path(), small_segments(2048)).await;
    let log = store.open(&pid()).unwrap();
    assert_eq!(all_records(&*log, 0), expected);
    assert_eq!(log.offsets().log_end_offset, 60);
}

#[tokio::test]
async fn a_truncated_log_goes_on_in_a_new_file_and_reopens_with_the_new_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    {
        let store = SegmentStore::open(dir.path()).unwrap();
        let log = store.open(&pid()).unwrap();
        for v in ["a", "b", "c"] {
            log.append(&batch(&[(None, Some(v), 1)], Compression::None), &cfg, 0, 0).unwrap();
        }
        assert_eq!(log.truncate(1).unwrap(), 1);
        // The removed batches' positions are never written again: a new file takes the appends.
        assert_eq!(segment_files(dir.path()).len(), 2);
        for v in ["x", "y"] {
            log.append(&batch(&[(None, Some(v), 2)], Compression::None), &cfg, 0, 1).unwrap();
        }
        assert_eq!(log.epoch_end(0), (0, 1));
    }
    let store = reopen(dir.path()).await;
    let log = store.open(&pid()).unwrap();
    let values: Vec<_> = all_records(&*log, 0).into_iter().map(|r| (r.0, r.2.unwrap())).collect();
    assert_eq!(values, [(0, "a".to_string()), (1, "x".to_string()), (2, "y".to_string())]);
    assert_eq!((log.last_epoch(), log.epoch_end(0)), (1, (0, 1)));
}

/// What a machine crash leaves of `from`: its files as they are on disk now (sled's unflushed
/// buffers are not there), copied to `to`.
fn crash_image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            crash_image(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Index entries (8-byte keys) the durable part of a store's index holds for [`pid`].
async fn durable_entries(root: &std::path::Path) -> usize {
    let db = once_unlocked("opening the index", || {
        sled::Config::new()
            .path(root.join("sled"))
            .segment_size(sluice_storage::segment_store::SLED_SEGMENT_BYTES)
            .open()
    })
    .await;
    db.open_tree("idx/7/t/0").unwrap().iter().keys().filter(|k| k.as_ref().is_ok_and(|k| k.len() == 8)).count()
}

#[tokio::test]
async fn an_acknowledged_append_survives_a_crash_that_lost_its_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let cfg = TopicConfig::default();
    let value = "v".repeat(1000);
    // No periodic checkpoint: only the syncs below.
    let options = StoreOptions { flush_interval_ms: 0, ..small_segments(4096) };
    let store = SegmentStore::open_with(dir.path(), options).unwrap();
    let log = store.open(&pid()).unwrap();
    log.append(&batch(&[(None, Some(&value), 0)], Compression::None), &cfg, 0, 0).unwrap();
    // The first sync of a new partition makes its tree (and so the partition) durable.
    store.sync().await.unwrap();
    // Then acks=all syncs make the bytes durable, not the index: files roll meanwhile.
    for i in 1..12i64 {
        log.append(&batch(&[(None, Some(&value), i)], Compression::None), &cfg, 0, 0).unwrap();
        store.sync().await.unwrap();
    }
    assert!(segment_files(dir.path()).len() > 2, "the files rolled");
    crash_image(dir.path(), image.path());
    let durable = durable_entries(image.path()).await;
    assert!(durable < 12, "the syncs left index entries unflushed ({durable} of 12 durable)");
    // The restart after the crash finds every acknowledged batch in the files.
    {
        let store = reopen(image.path()).await;
        assert_eq!(store.list().unwrap(), vec![pid()]);
        let log = store.open(&pid()).unwrap();
        assert_eq!(log.offsets().log_end_offset, 12);
        assert_eq!(all_records(&*log, 0).len(), 12);
        assert_eq!(
            log.append(&batch(&[(None, Some("next"), 12)], Compression::None), &cfg, 0, 0).unwrap().base_offset,
            12
        );
    }
    assert_eq!(durable_entries(image.path()).await, 13, "recovery indexed the batches and flushed the index");
    // A checkpoint (before a process stops) flushes the index too.
    store.checkpoint().await.unwrap();
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path());
    assert_eq!(durable_entries(image.path()).await, 12);
}
