//! The sled implementation of [`LogStore`]: one sled database per node, one tree per
//! partition, one key per batch (8-byte big-endian base offset). An in-memory index of batch
//! positions, sizes and timestamps is rebuilt from the tree when a partition is opened.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use sluice_core::batch::{self, BatchHeader};
use sluice_core::topic::{TimestampType, TopicConfig};
use tokio::sync::{mpsc, oneshot, watch};

use crate::MarkerSpec;
use crate::cleaner::{self, CleanStats};
use crate::producers::{self, ProducerTable, SeqBatch, Verdict};
use crate::txns::{ABORT_MARKER, AbortedTxn, TxnIndex};
use crate::{AppendInfo, LogOffsets, LogStore, PartitionId, PartitionLog, ReadResult, StorageError};

/// Key (in the index tree) under which a partition remembers its log start offset once
/// retention moved it. Index keys are exactly 8 bytes, so this one cannot collide.
const START_KEY: &[u8] = b"meta:log_start";
/// Key (in the index tree) of the producer snapshot.
const PRODUCERS_KEY: &[u8] = b"meta:producers";
const TREE_PREFIX: &str = "log/";
/// Background flush interval when none is configured.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 500;
/// sled page cache when none is configured.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// sled segment size (a power of two, at most 16 MiB).
const SEGMENT_SIZE: usize = 8 << 20;

/// Position and summary of one stored batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchMeta {
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub size: u64,
    /// The leader epoch stamped in the batch header: where each epoch starts is what a
    /// returning replica compares to find where its log diverged.
    pub epoch: i32,
    /// The batch's producer fields (-1 id when it has none): the producer state is rebuilt
    /// from these without reading the batches.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub attributes: i16,
}

pub(crate) struct LogState {
    pub index: BTreeMap<i64, BatchMeta>,
    pub next_offset: i64,
    pub log_start: i64,
    pub bytes: u64,
    /// Idempotent producers, as of the log end.
    pub producers: ProducerTable,
    /// The last producer snapshot written, and the offset it covers up to: what the index
    /// alone cannot tell once retention or compaction removed batches.
    pub producers_base: Option<(i64, ProducerTable)>,
    /// Whether `producers` changed since the snapshot.
    pub producers_dirty: bool,
    /// Open and aborted transactions.
    pub txns: TxnIndex,
}

impl LogState {
    /// The producer table from the snapshot and the index entries after it.
    fn rebuild_producers(&mut self) {
        let (from, mut t) = match &self.producers_base {
            Some((end, t)) => {
                let from = (*end).min(self.next_offset);
                let mut t = t.clone();
                t.truncate(from);
                (from, t)
            }
            None => (i64::MIN, ProducerTable::default()),
        };
        let now = sluice_core::settings::now_ms();
        for (base, m) in self.index.range(from..) {
            m.record_producer(*base, &mut t, now);
        }
        self.producers = t;
        // Transactions come from the whole log: what retention removed is no longer read.
        let mut txns = TxnIndex::default();
        for (base, m) in &self.index {
            txns.on_batch(*base, m.last_offset, m.producer_id, m.attributes);
        }
        self.txns = txns;
    }
}

/// What [`LogState`] says of the log as a whole, copied out whenever the state lock is
/// released: the answers that async code needs at once (offsets, size, last epoch) never wait
/// for a writer, who holds the state lock across its sled I/O.
#[derive(Debug, Clone, Copy)]
struct Summary {
    offsets: LogOffsets,
    bytes: u64,
    last_epoch: i32,
    first_unstable: i64,
}

impl Summary {
    fn of(st: &LogState) -> Self {
        Self {
            offsets: LogOffsets { log_start_offset: st.log_start, log_end_offset: st.next_offset },
            bytes: st.bytes,
            last_epoch: st.index.values().next_back().map(|m| m.epoch).unwrap_or(-1),
            first_unstable: st.txns.first_unstable().unwrap_or(st.next_offset),
        }
    }
}

/// A sled-backed partition log.
///
/// Lock order: `state` (held across sled I/O by writers, retention and compaction) before
/// `summary` (held only to copy a [`Summary`] in or out, never across I/O).
pub struct SledPartition {
    id: PartitionId,
    pub(crate) tree: sled::Tree,
    index_tree: sled::Tree,
    state: Mutex<LogState>,
    summary: Mutex<Summary>,
    end_tx: watch::Sender<i64>,
}

/// The state lock, held; publishes the [`Summary`] when released.
pub(crate) struct StateGuard<'a> {
    st: MutexGuard<'a, LogState>,
    summary: &'a Mutex<Summary>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = LogState;
    fn deref(&self) -> &LogState {
        &self.st
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut LogState {
        &mut self.st
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Summary::of(&self.st);
    }
}

/// Many partitions in one sled database, with a group-commit flusher.
pub struct SledStore {
    db: sled::Db,
    open: Mutex<HashMap<PartitionId, Arc<SledPartition>>>,
    flush_tx: mpsc::UnboundedSender<FlushWaiter>,
}

/// Each partition has a second, small tree: base offset -> (last offset, max timestamp, size,
/// leader epoch, producer id, producer epoch, base sequence, attributes), so that opening a
/// partition reads these 44-byte entries instead of every batch. Keeping them out of the
/// batch tree keeps its leaves holding batches only. Entries written before the producer
/// fields existed are 28 bytes and read as batches without a producer.
const INDEX_PREFIX: &str = "idx/";
const META_LEN: usize = 44;
const OLD_META_LEN: usize = 28;

pub(crate) fn encode_meta(m: &BatchMeta) -> [u8; META_LEN] {
    let mut v = [0u8; META_LEN];
    v[..8].copy_from_slice(&m.last_offset.to_be_bytes());
    v[8..16].copy_from_slice(&m.max_timestamp.to_be_bytes());
    v[16..24].copy_from_slice(&m.size.to_be_bytes());
    v[24..28].copy_from_slice(&m.epoch.to_be_bytes());
    v[28..36].copy_from_slice(&m.producer_id.to_be_bytes());
    v[36..38].copy_from_slice(&m.producer_epoch.to_be_bytes());
    v[38..42].copy_from_slice(&m.base_sequence.to_be_bytes());
    v[42..44].copy_from_slice(&m.attributes.to_be_bytes());
    v
}

impl BatchMeta {
    fn of(h: &BatchHeader, size: usize) -> Self {
        Self {
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            size: size as u64,
            epoch: h.partition_leader_epoch,
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            attributes: h.attributes,
        }
    }

    /// The meta of a stored batch, marking abort markers for the transaction index.
    fn of_stored(h: &BatchHeader, bytes: &[u8]) -> Self {
        let mut m = Self::of(h, bytes.len());
        if h.is_control() && batch::marker_of(&Bytes::copy_from_slice(bytes)) == Some(batch::Marker::Abort) {
            m.attributes |= ABORT_MARKER;
        }
        m
    }

    /// Adds the batch at `base`, written at `now_ms` (this node's clock), to `t` when it has a
    /// producer.
    fn record_producer(&self, base: i64, t: &mut ProducerTable, now_ms: i64) {
        if self.producer_id >= 0 && self.attributes & batch::CONTROL != 0 {
            t.note_epoch(self.producer_id, self.producer_epoch, now_ms);
        } else if self.producer_id >= 0 {
            let last_seq = batch::add_sequence(self.base_sequence, (self.last_offset - base) as i32);
            let b =
                SeqBatch { first_seq: self.base_sequence, last_seq, base_offset: base, last_offset: self.last_offset };
            t.record(self.producer_id, self.producer_epoch, b, now_ms);
        }
    }
}

/// Checks the producer fields of a request's batches against the table. Returns the original
/// offsets when the request is one batch already written; refuses gaps, stale epochs and a
/// written batch beside others.
fn check_producers(
    table: &ProducerTable,
    parts: &[(BatchHeader, std::ops::Range<usize>)],
) -> Result<Option<SeqBatch>, StorageError> {
    let mut scratch: Option<ProducerTable> = None;
    for (i, (h, _)) in parts.iter().enumerate() {
        if !h.has_producer() {
            continue;
        }
        if h.base_sequence < 0 || h.producer_epoch < 0 {
            return Err(batch::BatchError::Malformed(format!(
                "a batch of producer {} needs an epoch and a base sequence of 0 or more (got {} and {})",
                h.producer_id, h.producer_epoch, h.base_sequence
            ))
            .into());
        }
        let t = scratch.as_ref().unwrap_or(table);
        match t.check(h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence()) {
            Ok(Verdict::Duplicate(b)) if parts.len() == 1 => return Ok(Some(b)),
            Ok(Verdict::Duplicate(_)) => {
                return Err(StorageError::DuplicateInRequest { producer_id: h.producer_id, sequence: h.base_sequence });
            }
            Ok(Verdict::Append) if i + 1 < parts.len() => {
                // Later batches of the request are checked as if this one were written; the
                // offsets do not matter for that.
                let first_seq = h.base_sequence;
                let b = SeqBatch { first_seq, last_seq: h.last_sequence(), base_offset: -1, last_offset: -1 };
                scratch.get_or_insert_with(|| table.clone()).record(
                    h.producer_id,
                    h.producer_epoch,
                    b,
                    h.max_timestamp,
                );
            }
            Ok(Verdict::Append) => {}
            Err(e) => return Err(StorageError::Sequence(e)),
        }
    }
    Ok(None)
}

/// A stored batch that no longer parses or checks out.
fn damaged(id: &PartitionId, offset: i64, e: batch::BatchError) -> StorageError {
    StorageError::Damaged { partition: id.to_string(), offset, reason: e.to_string() }
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

fn decode_meta(v: &[u8]) -> Option<BatchMeta> {
    if v.len() != META_LEN && v.len() != OLD_META_LEN {
        return None;
    }
    let mut m = BatchMeta {
        last_offset: be_i64(&v[..8]),
        max_timestamp: be_i64(&v[8..16]),
        size: be_i64(&v[16..24]) as u64,
        epoch: i32::from_be_bytes([v[24], v[25], v[26], v[27]]),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        attributes: 0,
    };
    if v.len() == META_LEN {
        m.producer_id = be_i64(&v[28..36]);
        m.producer_epoch = i16::from_be_bytes([v[36], v[37]]);
        m.base_sequence = i32::from_be_bytes([v[38], v[39], v[40], v[41]]);
        m.attributes = i16::from_be_bytes([v[42], v[43]]);
    }
    Some(m)
}

/// Reads the index and reconciles it with the batches. Writes go batch first, index second,
/// and removals batch first too, so after a crash the index can only lack entries for the
/// newest batches (indexed here from the batches themselves) or keep entries for batches that
/// retention removed at the front (dropped here).
fn load_index(
    data: &sled::Tree,
    idx: &sled::Tree,
    id: &PartitionId,
) -> Result<(BTreeMap<i64, BatchMeta>, Option<i64>), StorageError> {
    let mut index = BTreeMap::new();
    for kv in idx.iter() {
        let (k, v) = kv?;
        if let (8, Some(m)) = (k.len(), decode_meta(&v)) {
            index.insert(be_i64(&k), m);
        }
    }
    let first = data.iter().keys().next().transpose()?.filter(|k| k.len() == 8).map(|k| be_i64(&k));
    let stale: Vec<i64> = index.keys().copied().take_while(|b| first.is_none_or(|f| *b < f)).collect();
    if !stale.is_empty() {
        let mut b = sled::Batch::default();
        for base in &stale {
            index.remove(base);
            b.remove(&base.to_be_bytes());
        }
        idx.apply_batch(b)?;
    }
    let from = index.values().next_back().map(|m| m.last_offset + 1).unwrap_or(0).max(0);
    let mut repair = sled::Batch::default();
    let mut repaired = 0;
    for kv in data.range(from.to_be_bytes()..) {
        let (k, v) = kv?;
        if k.len() != 8 {
            continue;
        }
        let base = be_i64(&k);
        let h = BatchHeader::parse(&v).map_err(|e| damaged(id, base, e))?;
        let m = BatchMeta::of_stored(&h, &v);
        repair.insert(&base.to_be_bytes(), &encode_meta(&m)[..]);
        index.insert(base, m);
        repaired += 1;
    }
    if repaired > 0 {
        tracing::info!(partition = %id, batches = repaired, "indexed batches missing from the index");
        idx.apply_batch(repair)?;
    }
    let log_start = idx.get(START_KEY)?.filter(|v| v.len() == 8).map(|v| be_i64(&v));
    Ok((index, log_start))
}

type FlushWaiter = (oneshot::Sender<Result<(), String>>, sled::Db);

fn tree_name(id: &PartitionId) -> String {
    format!("{TREE_PREFIX}{}/{}/{}", id.topic_id, id.topic, id.partition)
}

fn index_tree_name(id: &PartitionId) -> String {
    format!("{INDEX_PREFIX}{}/{}/{}", id.topic_id, id.topic, id.partition)
}

fn parse_tree_name(name: &[u8]) -> Option<PartitionId> {
    let s = std::str::from_utf8(name).ok()?.strip_prefix(TREE_PREFIX)?;
    let (id, rest) = s.split_once('/')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some(PartitionId { topic: topic.to_string(), topic_id: id.parse().ok()?, partition: partition.parse().ok()? })
}

impl SledStore {
    /// Opens (or creates) the store under `dir`. Must be called inside a tokio runtime: the
    /// group-commit flusher runs as a task.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StorageError> {
        Self::open_with(dir, DEFAULT_CACHE_BYTES, DEFAULT_FLUSH_INTERVAL_MS)
    }

    /// Like [`SledStore::open`], with sled's page cache set to `cache_bytes` and its background
    /// flush every `flush_interval_ms` (0 turns it off: only acks=all flushes).
    pub fn open_with(dir: &Path, cache_bytes: u64, flush_interval_ms: u64) -> Result<Arc<Self>, StorageError> {
        // sled writes any value above a quarter of a segment to a file of its own (a "blob"):
        // with the default 512 KiB segments every batch would cost a file creation. 8 MiB
        // segments keep batches up to 2 MiB inline in the log.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms((flush_interval_ms > 0).then_some(flush_interval_ms))
            .open()?;
        let (flush_tx, mut flush_rx) = mpsc::unbounded_channel::<FlushWaiter>();
        tokio::spawn(async move {
            // Group commit: every waiter queued while a flush runs is served by the next one.
            // The task holds the database only during a flush, so dropping the store closes it.
            while let Some((first, db)) = flush_rx.recv().await {
                let mut waiters = vec![first];
                while let Ok((w, _)) = flush_rx.try_recv() {
                    waiters.push(w);
                }
                let res = db.flush_async().await.map(|_| ()).map_err(|e| e.to_string());
                drop(db);
                for w in waiters {
                    let _ = w.send(res.clone());
                }
            }
        });
        Ok(Arc::new(Self { db, open: Mutex::new(HashMap::new()), flush_tx }))
    }

    fn open_sled(&self, id: &PartitionId) -> Result<Arc<SledPartition>, StorageError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = open.get(id) {
            return Ok(p.clone());
        }
        let tree = self.db.open_tree(tree_name(id))?;
        let index_tree = self.db.open_tree(index_tree_name(id))?;
        let (index, log_start) = load_index(&tree, &index_tree, id)?;
        let producers_base = match index_tree.get(PRODUCERS_KEY)? {
            Some(v) => {
                let snap = producers::decode(&v);
                if snap.is_none() {
                    // Rebuilt from the index instead: only producers whose batches retention
                    // already removed are forgotten (they may start again at any sequence).
                    tracing::warn!(partition = %id, "producer snapshot is damaged; rebuilding it from the log");
                }
                snap
            }
            None => None,
        };
        let bytes = index.values().map(|m| m.size).sum();
        let end = index.values().next_back().map(|m| m.last_offset + 1).unwrap_or(0);
        let next_offset = end.max(log_start.unwrap_or(0));
        // Retention and compaction record the log start whenever the first batch no longer
        // tells it; otherwise it is the first batch.
        let log_start = log_start.unwrap_or_else(|| index.keys().next().copied().unwrap_or(next_offset));
        let (end_tx, _) = watch::channel(next_offset);
        tracing::debug!(partition = %id, next_offset, log_start, batches = index.len(), "opened partition");
        let mut state = LogState {
            index,
            next_offset,
            log_start,
            bytes,
            producers: ProducerTable::default(),
            producers_base,
            producers_dirty: false,
            txns: TxnIndex::default(),
        };
        state.rebuild_producers();
        // What the index told beyond the snapshot is in no snapshot yet: the first retention
        // pass that removes batches writes one.
        state.producers_dirty = state.producers_base.as_ref().is_none_or(|(_, t)| *t != state.producers);
        let p = Arc::new(SledPartition {
            id: id.clone(),
            tree,
            index_tree,
            summary: Mutex::new(Summary::of(&state)),
            state: Mutex::new(state),
            end_tx,
        });
        open.insert(id.clone(), p.clone());
        Ok(p)
    }
}

impl LogStore for SledStore {
    fn open(&self, id: &PartitionId) -> Result<Arc<dyn PartitionLog>, StorageError> {
        Ok(self.open_sled(id)?)
    }

    fn remove(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.db.drop_tree(tree_name(id))?;
        self.db.drop_tree(index_tree_name(id))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.db.tree_names().iter().filter_map(|n| parse_tree_name(n)).collect())
    }

    fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.flush_tx.send((tx, self.db.clone())).is_err() {
                self.db.flush_async().await?;
                return Ok(());
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StorageError::Sled(sled::Error::Unsupported(format!("flush failed: {e}")))),
                Err(_) => Err(StorageError::Sled(sled::Error::Unsupported("flusher stopped".into()))),
            }
        })
    }
}

impl SledPartition {
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // loses data (sled holds the truth), so a poisoned lock is still usable.
        StateGuard { st: self.state.lock().unwrap_or_else(|p| p.into_inner()), summary: &self.summary }
    }

    fn summary(&self) -> Summary {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the producer snapshot when the table changed since the last one (the caller
    /// holds the state lock): to be done before batches are removed from the front, whose
    /// producers the index would no longer tell.
    pub(crate) fn snapshot_producers(&self, st: &mut LogState) -> Result<(), StorageError> {
        if !st.producers_dirty {
            return Ok(());
        }
        self.index_tree.insert(PRODUCERS_KEY, producers::encode(st.next_offset, &st.producers))?;
        st.producers_base = Some((st.next_offset, st.producers.clone()));
        st.producers_dirty = false;
        Ok(())
    }

    pub(crate) fn persist_log_start(&self, start: i64) -> Result<(), StorageError> {
        self.index_tree.insert(START_KEY, &start.to_be_bytes())?;
        Ok(())
    }

    /// Stores batches, then their index entries (see [`load_index`] for why in that order).
    pub(crate) fn put_batches(&self, items: Vec<(i64, sled::IVec, BatchMeta)>) -> Result<(), StorageError> {
        if let [(base, v, m)] = items.as_slice() {
            self.tree.insert(base.to_be_bytes(), v.clone())?;
            self.index_tree.insert(base.to_be_bytes(), &encode_meta(m)[..])?;
            return Ok(());
        }
        let (mut data, mut idx) = (sled::Batch::default(), sled::Batch::default());
        for (base, v, m) in items {
            data.insert(&base.to_be_bytes(), v);
            idx.insert(&base.to_be_bytes(), &encode_meta(&m)[..]);
        }
        // The request's batches become visible (and durable) together.
        self.tree.apply_batch(data)?;
        self.index_tree.apply_batch(idx)?;
        Ok(())
    }

    /// Stores batches at the end of the log (the caller holds the state lock) and publishes the
    /// new end.
    fn store_locked(&self, st: &mut LogState, items: Vec<(i64, sled::IVec, BatchMeta)>) -> Result<(), StorageError> {
        let metas: Vec<(i64, BatchMeta)> = items.iter().map(|(b, _, m)| (*b, *m)).collect();
        self.put_batches(items)?;
        for (base, m) in metas {
            st.bytes += m.size;
            st.next_offset = m.last_offset + 1;
            if m.producer_id >= 0 {
                m.record_producer(base, &mut st.producers, sluice_core::settings::now_ms());
                st.producers_dirty = true;
                st.txns.on_batch(base, m.last_offset, m.producer_id, m.attributes);
            }
            st.index.insert(base, m);
        }
        self.end_tx.send_replace(st.next_offset);
        Ok(())
    }

    /// Removes batches, then their index entries.
    pub(crate) fn remove_batches(&self, bases: &[i64]) -> Result<(), StorageError> {
        let (mut data, mut idx) = (sled::Batch::default(), sled::Batch::default());
        for base in bases {
            data.remove(&base.to_be_bytes());
            idx.remove(&base.to_be_bytes());
        }
        self.tree.apply_batch(data)?;
        self.index_tree.apply_batch(idx)?;
        Ok(())
    }
}

impl PartitionLog for SledPartition {
    fn id(&self) -> &PartitionId {
        &self.id
    }

    fn append_verified(
        &self,
        batches: &[u8],
        config: &TopicConfig,
        now_ms: i64,
        leader_epoch: i32,
        verified: Option<(i64, i16)>,
    ) -> Result<AppendInfo, StorageError> {
        // Everything that can refuse the request happens before the lock and before any write:
        // a request is stored whole or not at all.
        let parts = batch::split_batches(batches)?;
        if parts.is_empty() {
            return Err(batch::BatchError::Malformed("no record batch in the request".into()).into());
        }
        for (h, range) in &parts {
            if h.is_control() {
                return Err(StorageError::ControlBatch);
            }
            if h.is_transactional() && !h.has_producer() {
                return Err(batch::BatchError::Malformed("a transactional batch needs a producer id".into()).into());
            }
            batch::verify_batch(&batches[range.clone()], config.max_message_bytes)?;
            if config.cleanup_policy.compact {
                let b = Bytes::copy_from_slice(&batches[range.clone()]);
                if batch::decode_records(&b)?.iter().any(|r| r.key.is_none()) {
                    return Err(StorageError::MissingKey);
                }
            }
        }
        let log_append = config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut st = self.lock();
        if let Some(dup) = check_producers(&st.producers, &parts)? {
            let count = (dup.last_offset - dup.base_offset + 1) as u32;
            // The original's append time, which its index entry keeps as its max timestamp.
            let log_append_time = st
                .index
                .get(&dup.base_offset)
                .filter(|m| m.attributes & batch::TIMESTAMP_TYPE_LOG_APPEND != 0)
                .map_or(-1, |m| m.max_timestamp);
            return Ok(AppendInfo {
                base_offset: dup.base_offset,
                last_offset: dup.last_offset,
                record_count: count,
                log_append_time,
                duplicate: true,
            });
        }
        for (h, _) in parts.iter().filter(|(h, _)| h.is_transactional()) {
            let id = (h.producer_id, h.producer_epoch);
            let open_here =
                st.txns.open_since(id.0).is_some() && st.producers.get(id.0).is_some_and(|e| e.epoch == id.1);
            if !open_here && verified != Some(id) {
                return Err(StorageError::NotInTransaction { producer_id: id.0, epoch: id.1 });
            }
        }
        let base_offset = st.next_offset;
        let mut count = 0u32;
        let mut items = Vec::with_capacity(parts.len());
        for (h, range) in &parts {
            // One copy, straight into sled's own buffer type.
            let mut v = sled::IVec::from(&batches[range.clone()]);
            let v_mut: &mut [u8] = v.as_mut();
            let base = st.next_offset + count as i64;
            batch::set_base_offset(v_mut, base);
            batch::set_partition_leader_epoch(v_mut, leader_epoch);
            if log_append {
                batch::set_log_append_time(v_mut, now_ms);
            }
            let meta = BatchMeta {
                last_offset: base + h.last_offset_delta as i64,
                max_timestamp: if log_append { now_ms } else { h.max_timestamp },
                size: v.len() as u64,
                epoch: leader_epoch,
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                base_sequence: h.base_sequence,
                attributes: if log_append { h.attributes | batch::TIMESTAMP_TYPE_LOG_APPEND } else { h.attributes },
            };
            items.push((base, v, meta));
            count += h.record_count as u32;
        }
        self.store_locked(&mut st, items)?;
        drop(st);
        let end = base_offset + count as i64;
        Ok(AppendInfo {
            base_offset,
            last_offset: end - 1,
            record_count: count,
            log_append_time: if log_append { now_ms } else { -1 },
            duplicate: false,
        })
    }

    fn append_replica(&self, batches: &[u8]) -> Result<i64, StorageError> {
        let parts = batch::split_batches(batches)?;
        let mut st = self.lock();
        let mut expected = st.next_offset;
        let mut items = Vec::with_capacity(parts.len());
        for (h, range) in &parts {
            // The leader validated the records (and compaction may have left gaps in offset
            // deltas that a fresh batch could not have); the CRC still guards the copy.
            batch::check_crc(&batches[range.clone()], h)?;
            if h.base_offset != expected {
                return Err(StorageError::NotContiguous { expected, got: h.base_offset });
            }
            expected = h.last_offset() + 1;
            let bytes = &batches[range.clone()];
            items.push((h.base_offset, sled::IVec::from(bytes), BatchMeta::of_stored(h, bytes)));
        }
        if !items.is_empty() {
            self.store_locked(&mut st, items)?;
        }
        Ok(st.next_offset)
    }

    fn truncate(&self, offset: i64) -> Result<i64, StorageError> {
        let mut st = self.lock();
        if offset >= st.next_offset {
            return Ok(st.next_offset);
        }
        // A batch is kept whole or not at all: one that straddles `offset` goes too.
        let cut = st.index.range(..=offset).next_back().filter(|(_, m)| m.last_offset >= offset).map(|(b, _)| *b);
        let from = cut.unwrap_or(offset);
        let doomed: Vec<i64> = st.index.range(from..).map(|(b, _)| *b).collect();
        self.remove_batches(&doomed)?;
        for b in &doomed {
            if let Some(m) = st.index.remove(b) {
                st.bytes -= m.size;
            }
        }
        st.next_offset = from.max(st.log_start);
        let end = st.next_offset;
        if from < st.log_start {
            st.log_start = end;
        }
        st.rebuild_producers();
        if st.producers_base.as_ref().is_some_and(|(covered, _)| *covered > end) {
            // The snapshot covers batches that are gone: a rebuild from it would remember
            // them and skip the index entries written over them. It covers the new end now.
            self.index_tree.insert(PRODUCERS_KEY, producers::encode(end, &st.producers))?;
            st.producers_base = Some((end, st.producers.clone()));
            st.producers_dirty = false;
        }
        drop(st);
        self.end_tx.send_replace(end);
        tracing::info!(partition = %self.id, end, removed = doomed.len(), "truncated");
        Ok(end)
    }

    fn reset(&self, offset: i64) -> Result<(), StorageError> {
        let mut st = self.lock();
        let doomed: Vec<i64> = st.index.keys().copied().collect();
        self.remove_batches(&doomed)?;
        self.persist_log_start(offset)?;
        st.index.clear();
        st.bytes = 0;
        st.log_start = offset;
        st.next_offset = offset;
        // What the leader's log holds after `offset` comes with its batches; producers that
        // only wrote before it are forgotten, as after their expiry.
        self.index_tree.remove(PRODUCERS_KEY)?;
        st.producers_base = None;
        st.rebuild_producers();
        drop(st);
        self.end_tx.send_replace(offset);
        tracing::info!(partition = %self.id, offset, "log reset to a new start");
        Ok(())
    }

    fn last_epoch(&self) -> i32 {
        self.summary().last_epoch
    }

    fn epoch_end(&self, epoch: i32) -> (i32, i64) {
        let st = self.lock();
        // Walk back over the batches of later epochs: the first batch at or below `epoch`
        // tells which epoch it is, and the batch after it where that epoch ended.
        let mut end = st.next_offset;
        for (base, m) in st.index.iter().rev() {
            if m.epoch <= epoch {
                return (m.epoch, end);
            }
            end = *base;
        }
        (-1, st.log_start)
    }

    fn read_to(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<ReadResult, StorageError> {
        let (keys, start, end) = {
            let st = self.lock();
            if offset < st.log_start || offset > st.next_offset {
                return Err(StorageError::OffsetOutOfRange { offset, start: st.log_start, end: st.next_offset });
            }
            // The batch holding `offset` is the last one whose base is at or below it (unless
            // compaction emptied the tail of that batch, in which case it ends before offset).
            let first = st.index.range(..=offset).next_back().filter(|(_, m)| m.last_offset >= offset).map(|(b, _)| *b);
            let from = first.unwrap_or(offset);
            let mut keys = Vec::new();
            let mut total = 0u64;
            for (base, m) in st.index.range(from..) {
                if m.last_offset >= max_offset || (total > 0 && total + m.size > max_bytes as u64) {
                    break;
                }
                total += m.size;
                keys.push((*base, m.last_offset, m.size));
            }
            (keys, st.log_start, st.next_offset)
        };
        let total: u64 = keys.iter().map(|k| k.2).sum();
        let mut out = BytesMut::with_capacity(total as usize);
        let mut next = offset;
        for (base, last, _) in keys {
            // Retention or compaction may have removed the batch since the index was read.
            let Some(v) = self.tree.get(base.to_be_bytes())? else { continue };
            let h = BatchHeader::parse(&v).map_err(|e| damaged(&self.id, base, e))?;
            batch::check_crc(&v, &h).map_err(|e| damaged(&self.id, base, e))?;
            out.extend_from_slice(&v);
            next = last + 1;
        }
        Ok(ReadResult {
            batches: out.freeze(),
            next_offset: next.max(offset),
            log_start_offset: start,
            log_end_offset: end,
        })
    }

    fn offsets(&self) -> LogOffsets {
        self.summary().offsets
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let candidate = {
            let st = self.lock();
            st.index.iter().find(|(_, m)| m.max_timestamp >= timestamp_ms).map(|(b, _)| *b)
        };
        let Some(base) = candidate else { return Ok(None) };
        let Some(v) = self.tree.get(base.to_be_bytes())? else { return Ok(None) };
        let records = batch::decode_records(&Bytes::from(v.to_vec()))?;
        Ok(records.iter().find(|r| r.timestamp >= timestamp_ms).map(|r| (r.offset, r.timestamp)))
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.end_tx.subscribe()
    }

    fn size_bytes(&self) -> u64 {
        self.summary().bytes
    }

    fn clean(&self, config: &TopicConfig, now_ms: i64) -> Result<CleanStats, StorageError> {
        cleaner::clean(self, config, now_ms)
    }

    fn append_marker(&self, spec: &MarkerSpec, now_ms: i64, leader_epoch: i32) -> Result<AppendInfo, StorageError> {
        let MarkerSpec { producer_id, producer_epoch, marker, coordinator_epoch, keeps_epoch } = *spec;
        let data = batch::marker_batch(producer_id, producer_epoch, marker, coordinator_epoch, now_ms)?;
        let h = BatchHeader::parse(&data)?;
        let mut st = self.lock();
        // Written whenever it moves the producer's epoch here, also with nothing open: a
        // batch the coordinator verified just before it ended the transaction may still be
        // on its way, and must find its epoch fenced rather than open a transaction nothing
        // would end. A marker at an epoch already reached is a retry: nothing is written;
        // unless the producer keeps its epoch and its transaction at that epoch is open here.
        let ends_open = keeps_epoch && st.txns.open_since(producer_id).is_some();
        let reached = st.producers.get(producer_id).map(|e| e.epoch);
        if reached.is_some_and(|e| e > producer_epoch || (e == producer_epoch && !ends_open)) {
            let end = st.next_offset;
            return Ok(AppendInfo {
                base_offset: end,
                last_offset: end - 1,
                record_count: 0,
                log_append_time: -1,
                duplicate: true,
            });
        }
        let base = st.next_offset;
        let mut v = sled::IVec::from(&data[..]);
        batch::set_base_offset(v.as_mut(), base);
        batch::set_partition_leader_epoch(v.as_mut(), leader_epoch);
        let mut meta = BatchMeta::of(&h, v.len());
        meta.last_offset = base;
        meta.epoch = leader_epoch;
        if marker == batch::Marker::Abort {
            meta.attributes |= ABORT_MARKER;
        }
        self.store_locked(&mut st, vec![(base, v, meta)])?;
        Ok(AppendInfo { base_offset: base, last_offset: base, record_count: 1, log_append_time: -1, duplicate: false })
    }

    fn first_unstable_offset(&self) -> i64 {
        self.summary().first_unstable
    }

    fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.lock().txns.aborted(from, to)
    }

    fn producers(&self) -> Vec<producers::ProducerInfo> {
        let st = self.lock();
        st.producers.describe(|id| st.txns.open_since(id))
    }
}
