//! Partition logs.
//!
//! A partition is a sequence of Kafka RecordBatch v2 stored as received, indexed by base
//! offset (never a key per record). [`LogStore`] and [`PartitionLog`] are the traits the
//! partition node programs against; [`segment_store`] implements them with the batch bytes in
//! append-only segment files ([`segments`]) and their index in sled (ADR 0001), with durable
//! group commit ([`LogStore::sync`]), retention and compaction ([`cleaner`]).
//!
//! Async code never calls the traits directly: it holds an [`AsyncStore`] and [`AsyncLog`]s,
//! whose async methods run every call that may touch the disk on tokio's blocking pool, and
//! whose synchronous methods answer from memory without waiting for a writer's I/O. The rule
//! "no file or sled call on an async worker" is kept by these types, not by habit.

pub mod cleaner;
pub mod producers;
pub mod segment_store;
mod segments;
pub mod txns;

use std::sync::Arc;

use bytes::Bytes;
use sluice_core::topic::TopicConfig;

pub use segment_store::{SegmentStore, StoreOptions};

/// A transaction marker to append (see [`PartitionLog::append_marker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerSpec {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: sluice_core::batch::Marker,
    pub coordinator_epoch: i32,
    /// The producer keeps its epoch across transactions (a Kafka client before transaction
    /// version 2): the marker carries the epoch its transaction was written at, and ends the
    /// transaction open at that epoch. Otherwise the marker's epoch is the producer's next
    /// one, and a marker at an epoch already reached is a retry.
    pub keeps_epoch: bool,
}

impl MarkerSpec {
    /// A marker that moves the producer to `producer_epoch`.
    pub fn new(
        producer_id: i64,
        producer_epoch: i16,
        marker: sluice_core::batch::Marker,
        coordinator_epoch: i32,
    ) -> Self {
        Self { producer_id, producer_epoch, marker, coordinator_epoch, keeps_epoch: false }
    }
}

/// Identifies a partition's log. The topic id separates a deleted topic from a new one with
/// the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub topic_id: u64,
    pub partition: u32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Storage failures. Every variant names what failed; none exposes a panic.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Batch(#[from] sluice_core::batch::BatchError),
    #[error("offset {offset} is out of range: valid offsets are {start} to {end}")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("replicated batch starts at offset {got}, the log ends at {expected}")]
    NotContiguous { expected: i64, got: i64 },
    #[error("compacted topics need a key on every record")]
    MissingKey,
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("sync to disk failed: {0}")]
    Sync(String),
    #[error("stored batch at offset {offset} of {partition} is damaged: {reason}")]
    Damaged { partition: String, offset: i64, reason: String },
    #[error("storage task failed: {0}")]
    Task(String),
    /// A producer's batch was refused by its sequence or epoch; nothing was written.
    #[error("producer sequence check failed: {0:?}")]
    Sequence(producers::SeqError),
    /// A request holds a batch already written beside others: answering it would need two
    /// offset ranges. Producers send one batch per partition per request.
    #[error("a request mixes a batch already written (producer {producer_id}, sequence {sequence}) with other batches")]
    DuplicateInRequest { producer_id: i64, sequence: i32 },
    /// Control batches (transaction markers) are written by the transaction coordinator only.
    #[error("control batches (transaction markers) cannot be produced; they are written by the coordinator")]
    ControlBatch,
    /// A transactional batch of a producer with no transaction open on the partition at its
    /// epoch: the transaction coordinator must add the partition first (KIP-890), then the
    /// append is made again as verified.
    #[error(
        "producer {producer_id} at epoch {epoch} has no transaction open on this partition: the transaction coordinator has not added it"
    )]
    NotInTransaction { producer_id: i64, epoch: i16 },
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub record_count: u32,
    /// The append time when the topic stamps records itself, -1 otherwise.
    pub log_append_time: i64,
    /// The batch was already written (a producer's retry): these are its original offsets and
    /// nothing was appended.
    pub duplicate: bool,
}

/// Batches read from a log.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches, back to back; the first may start before the offset asked for.
    pub batches: Bytes,
    /// The offset after the last batch returned.
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// Offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// One partition's log.
pub trait PartitionLog: Send + Sync {
    fn id(&self) -> &PartitionId;
    /// Validates (size, CRC, records) and appends back-to-back batches as the leader of
    /// `leader_epoch`: assigns offsets and stamps the epoch in every batch. Transactional
    /// batches are accepted when their producer has a transaction open here at their epoch,
    /// or when `verified` names that producer and epoch (the transaction coordinator has just
    /// added the partition); otherwise [`StorageError::NotInTransaction`].
    fn append_verified(
        &self,
        batches: &[u8],
        config: &TopicConfig,
        now_ms: i64,
        leader_epoch: i32,
        verified: Option<(i64, i16)>,
    ) -> Result<AppendInfo, StorageError>;
    /// [`PartitionLog::append_verified`] with nothing verified.
    fn append(
        &self,
        batches: &[u8],
        config: &TopicConfig,
        now_ms: i64,
        leader_epoch: i32,
    ) -> Result<AppendInfo, StorageError> {
        self.append_verified(batches, config, now_ms, leader_epoch, None)
    }
    /// Appends batches copied from the leader as they are (offsets and epochs already set); the
    /// first must start at the log end. Returns the new log end.
    fn append_replica(&self, batches: &[u8]) -> Result<i64, StorageError>;
    /// Removes everything at or after `offset` (a batch holding it goes whole); returns the new
    /// log end.
    fn truncate(&self, offset: i64) -> Result<i64, StorageError>;
    /// Empties the log and starts it again at `offset` (a replica too far behind the leader's
    /// retention).
    fn reset(&self, offset: i64) -> Result<(), StorageError>;
    /// The epoch of the last batch, -1 for an empty log.
    fn last_epoch(&self) -> i32;
    /// The largest epoch at or below `epoch` in this log and the offset where it ends (the
    /// start of the next epoch, or the log end); `(-1, log start)` when there is none.
    fn epoch_end(&self, epoch: i32) -> (i32, i64);
    /// Reads whole batches from the one holding `offset`, up to about `max_bytes` (at least one
    /// batch when any is there), none reaching `max_offset` or beyond. `offset == log end`
    /// returns nothing.
    fn read_to(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<ReadResult, StorageError>;
    /// [`PartitionLog::read_to`] up to the log end.
    fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.read_to(offset, max_bytes, i64::MAX)
    }
    fn offsets(&self) -> LogOffsets;
    /// The first record at or after `timestamp_ms`: its offset and timestamp.
    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError>;
    /// Watches the log end offset (for long-polling readers).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<i64>;
    /// Bytes the log occupies.
    fn size_bytes(&self) -> u64;
    /// Applies time and size retention and compaction; returns the batches removed or rewritten.
    fn clean(&self, config: &TopicConfig, now_ms: i64) -> Result<cleaner::CleanStats, StorageError>;
    /// Appends a transaction marker for `producer_id` as the leader of `leader_epoch`: it ends
    /// the producer's open transaction here (an abort is then listed by
    /// [`PartitionLog::aborted_transactions`]), and `producer_epoch`, newer than the
    /// transaction's, fences the producer's older batches (also when nothing is open: a
    /// verified batch may still be on its way). When the producer is already at that epoch
    /// or later here (a retry), nothing is written and the answer is the log end, marked
    /// `duplicate` (unless `keeps_epoch` and a transaction of the producer is open here at
    /// that epoch: see [`MarkerSpec::keeps_epoch`]).
    fn append_marker(&self, marker: &MarkerSpec, now_ms: i64, leader_epoch: i32) -> Result<AppendInfo, StorageError>;
    /// The first offset of the oldest open transaction, or the log end when none is open:
    /// read_committed consumers read below the smaller of it and the high watermark.
    fn first_unstable_offset(&self) -> i64;
    /// The aborted transactions with records in `from..to`.
    fn aborted_transactions(&self, from: i64, to: i64) -> Vec<txns::AbortedTxn>;
    /// The producers this partition remembers (idempotence and transactions), by id.
    fn producers(&self) -> Vec<producers::ProducerInfo>;
}

/// A node's set of partition logs.
pub trait LogStore: Send + Sync {
    /// Opens (creating when new) a partition's log, recovering its offsets.
    fn open(&self, id: &PartitionId) -> Result<Arc<dyn PartitionLog>, StorageError>;
    /// Deletes a partition's log and its data.
    fn remove(&self, id: &PartitionId) -> Result<(), StorageError>;
    /// Every partition with data on this node.
    fn list(&self) -> Result<Vec<PartitionId>, StorageError>;
    /// Makes every append done so far durable. Concurrent callers share one flush.
    fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>>;
    /// Makes every append and everything a restart reads durable (before a process stops, so
    /// that the next start has nothing to rebuild). A store whose sync already does that need
    /// not override it.
    fn checkpoint(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>> {
        self.sync()
    }
}

/// Runs blocking storage work on tokio's blocking pool.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Task(e.to_string()))
}

/// A partition log for async code: what may touch the disk is async and runs on the blocking
/// pool; what is answered from memory is synchronous and never waits for a writer's I/O.
#[derive(Clone)]
pub struct AsyncLog(Arc<dyn PartitionLog>);

impl AsyncLog {
    pub fn id(&self) -> &PartitionId {
        self.0.id()
    }

    pub fn offsets(&self) -> LogOffsets {
        self.0.offsets()
    }

    /// The epoch of the last batch, -1 for an empty log.
    pub fn last_epoch(&self) -> i32 {
        self.0.last_epoch()
    }

    pub fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }

    /// Watches the log end offset.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.0.subscribe()
    }

    /// See [`PartitionLog::read_to`].
    pub async fn read_to(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<ReadResult, StorageError> {
        let log = self.0.clone();
        blocking(move || log.read_to(offset, max_bytes, max_offset)).await?
    }

    /// See [`PartitionLog::offset_for_timestamp`].
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let log = self.0.clone();
        blocking(move || log.offset_for_timestamp(timestamp_ms)).await?
    }

    /// See [`PartitionLog::epoch_end`].
    pub async fn epoch_end(&self, epoch: i32) -> Result<(i32, i64), StorageError> {
        let log = self.0.clone();
        blocking(move || log.epoch_end(epoch)).await
    }

    /// See [`PartitionLog::producers`].
    pub fn producers(&self) -> Vec<producers::ProducerInfo> {
        self.0.producers()
    }

    /// See [`PartitionLog::first_unstable_offset`].
    pub fn first_unstable_offset(&self) -> i64 {
        self.0.first_unstable_offset()
    }

    /// See [`PartitionLog::aborted_transactions`].
    pub async fn aborted_transactions(&self, from: i64, to: i64) -> Result<Vec<txns::AbortedTxn>, StorageError> {
        let log = self.0.clone();
        blocking(move || log.aborted_transactions(from, to)).await
    }

    /// See [`PartitionLog::clean`].
    pub async fn clean(&self, config: TopicConfig, now_ms: i64) -> Result<cleaner::CleanStats, StorageError> {
        let log = self.0.clone();
        blocking(move || log.clean(&config, now_ms)).await?
    }

    /// Runs `f` on the blocking pool with the log itself: for writes that must happen under a
    /// lock the caller takes there (a replica's role), so that the lock is never waited for on
    /// an async worker.
    pub async fn with_log<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn PartitionLog) -> R + Send + 'static,
    ) -> Result<R, StorageError> {
        let log = self.0.clone();
        blocking(move || f(&*log)).await
    }
}

/// A node's partition logs for async code (see [`AsyncLog`]).
#[derive(Clone)]
pub struct AsyncStore(Arc<dyn LogStore>);

impl AsyncStore {
    pub fn new(store: Arc<dyn LogStore>) -> Self {
        Self(store)
    }

    /// Opens (creating when new) a partition's log, loading its index.
    pub async fn open(&self, id: &PartitionId) -> Result<AsyncLog, StorageError> {
        let (store, id) = (self.0.clone(), id.clone());
        Ok(AsyncLog(blocking(move || store.open(&id)).await??))
    }

    /// Deletes a partition's log and its data.
    pub async fn remove(&self, id: &PartitionId) -> Result<(), StorageError> {
        let (store, id) = (self.0.clone(), id.clone());
        blocking(move || store.remove(&id)).await?
    }

    /// Every partition with data on this node.
    pub async fn list(&self) -> Result<Vec<PartitionId>, StorageError> {
        let store = self.0.clone();
        blocking(move || store.list()).await?
    }

    /// Makes every append done so far durable; concurrent callers share one flush.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.0.sync().await
    }

    /// Makes everything durable, the index included (see [`LogStore::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        self.0.checkpoint().await
    }
}
