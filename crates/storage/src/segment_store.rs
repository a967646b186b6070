//! The partition logs of a node (ADR 0001, `docs/adr/0001-record-data-layout.md`): batch
//! bytes in append-only segment files, one directory per partition ([`crate::segments`]), and
//! one sled database holding, per partition, the index (base offset -> file, position, size
//! and the batch's summary), the log start, the producer snapshot and the offset up to which
//! the files are known to be synced.
//!
//! Durability. An append writes the batch bytes to the active file, then their index entries
//! to sled; neither is synced then. A sync (acks=all) fdatasyncs the files written since the
//! last one and records in each partition's index the offset they are synced up to: the
//! acknowledged bytes are durable, their index entries not necessarily. Every
//! `flush_interval_ms` a checkpoint does the same, then flushes sled: an index entry becomes
//! durable only after its bytes. A sync flushes sled too when a partition's tree is new (so that
//! a restart does not take its files for a deleted partition's). Opening a partition reconciles
//! the two after a crash: an entry whose bytes are not all in its file, or that lies beyond
//! the synced offset and fails its CRC, is dropped with everything after it; whole batches
//! written after the last entry (synced but not indexed yet, or a process killed between the
//! two writes) are indexed; what follows the last whole batch (a torn write, the unwritten end
//! of a file made ahead) is zeroed or cut. A file is deleted only once the index that no
//! longer refers to it has been flushed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::batch::{self, BatchHeader};
use sluice_core::topic::{TimestampType, TopicConfig};
use tokio::sync::{mpsc, oneshot, watch};

use crate::MarkerSpec;
use crate::cleaner::{self, CleanStats};
use crate::producers::{self, ProducerTable, SeqBatch, Verdict};
use crate::segments::{self, SegFile};
use crate::txns::{ABORT_MARKER, AbortedTxn, TxnIndex};
use crate::{AppendInfo, LogOffsets, LogStore, PartitionId, PartitionLog, ReadResult, StorageError};

/// Key (in the index tree) under which a partition remembers its log start offset once
/// retention moved it. Index keys are exactly 8 bytes, so this one cannot collide.
const START_KEY: &[u8] = b"meta:log_start";
/// Key (in the index tree) of the producer snapshot.
const PRODUCERS_KEY: &[u8] = b"meta:producers";
/// Key (in the index tree) of the offset below which every batch's bytes were synced.
const SYNCED_KEY: &[u8] = b"meta:synced";
/// Trees of the layout before ADR 0001 (one sled value per batch): moved to segment files
/// when their partition is opened.
const OLD_TREE_PREFIX: &str = "log/";
const INDEX_PREFIX: &str = "idx/";
/// Background sync interval when none is configured.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 500;
/// sled page cache when none is configured: it holds the index only.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;
/// sled's own segment size, fixed for the life of a database.
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;
/// Size at which a partition's active file is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes written to an active file that was not made ahead (a new partition's first, the one
/// found at a restart) after which a spare is made, for the file to be left as soon as the
/// spare is ready: a partition written this much is written hard enough for the allocation's
/// waits to show, and one written less never allocates a segment ahead.
const EARLY_SPARE_BYTES: u64 = 4 << 20;

/// How a store is tuned.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
    /// How often what acks=0/1 appends wrote is synced, milliseconds; 0: only acks=all syncs.
    pub flush_interval_ms: u64,
    /// Size at which a segment file is closed and a new one started, bytes.
    pub segment_bytes: u64,
    /// Whether a partition's next segment file is made ahead of time with its blocks
    /// allocated, once its active file is half full or, when that one was not made ahead,
    /// holds 4 MiB ([`segments::make_spare`]).
    pub preallocate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            preallocate: true,
        }
    }
}

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
    /// The segment file holding the batch, and where in it.
    pub file: u64,
    pub pos: u64,
}

/// One segment file and what the index holds in it.
pub(crate) struct Segment {
    pub file: Arc<SegFile>,
    /// Where the next append to it goes.
    pub len: u64,
    /// Batches and bytes of it the index refers to: a file nothing refers to is deleted, and
    /// compaction moves what is left of a mostly dead one.
    pub live: u64,
    pub live_bytes: u64,
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
    /// The segment files, by number.
    pub segments: BTreeMap<u64, Segment>,
    /// The file appends go to.
    pub active: u64,
    /// Whether the active file was made ahead, its blocks allocated (a spare): one that was
    /// not is left for a spare as soon as one is ready.
    pub active_ahead: bool,
    /// The number the next new file gets.
    pub next_file: u64,
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
/// for a writer, who holds the state lock across its I/O.
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

/// What a partition wrote since the last sync.
#[derive(Default)]
struct Pending {
    files: Vec<Arc<SegFile>>,
    /// Files were created in the partition's directory: it is synced too.
    new_files: bool,
    /// The log end after the last write.
    end: i64,
    /// How many times the log was cut below its synced mark: a sync that took its part before
    /// a cut does not record its mark.
    cuts: u64,
    /// The last synced mark recorded: a sync that ends after a later one does not lower it.
    marked: i64,
    /// The partition's index tree was created and sled not flushed since: until it is, a
    /// restart would not know the partition, so the next sync flushes sled.
    new_tree: bool,
    /// The files syncs still running took from the pending list, each under the job that
    /// took it (and the directory's job): a later sync syncs them too. Otherwise it could
    /// record its mark and answer its waiters while an earlier one still syncs the file that
    /// holds the first of the offsets it covers (a file rolled off, written before the later
    /// sync started). A file leaves with the job that took it: one that ended without error
    /// made it durable up to where the later sync needs it.
    syncing: Vec<(u64, Arc<SegFile>)>,
    syncing_dir: Option<u64>,
    /// Jobs taken so far.
    jobs: u64,
}

/// How far a sync goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    /// The bytes of every append (acks=all): the index is rebuilt from the files after a crash.
    Data,
    /// The bytes, then the index (the periodic checkpoint, and before a process stops).
    Checkpoint,
}

/// A partition's part in the store's syncs.
struct PartitionSync {
    index_tree: sled::Tree,
    dir: PathBuf,
    /// The partition was deleted: nothing of it is synced any more.
    removed: AtomicBool,
    /// Whether it is in the store's list of partitions to sync.
    queued: AtomicBool,
    pending: Mutex<Pending>,
}

/// What the store and its partitions share: the database and the partitions written to since
/// the last sync.
struct Shared {
    db: sled::Db,
    dirty: Mutex<Vec<Arc<PartitionSync>>>,
    threads: SyncThreads,
    /// Makes spare files, up to [`SPARE_THREADS`] at a time: a sync never queues behind them,
    /// and the partitions that ask at once (after a restart, at the start of a load) are
    /// served a few at a time.
    spare_maker: SyncThreads,
    /// Failures to make a spare are logged at most once a second (a full disk fails them all).
    spare_failures: Throttle,
    /// Slow appends are logged at most once a second: under a disk stall every append is.
    slow_appends: Throttle,
}

/// At most one `true` per second.
#[derive(Default)]
struct Throttle(Mutex<Option<std::time::Instant>>);

impl Throttle {
    fn due(&self) -> bool {
        let mut last = lock(&self.0);
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// A task for a sync thread.
type SyncTask = Box<dyn FnOnce() + Send>;

/// The threads that sync partitions beside the one a sync runs on, kept for the store's life:
/// under light load syncs are small and frequent, and starting a thread for each cost more CPU
/// than the syncs did. A thread is added when none is idle, up to [`SYNC_THREADS`]; past that
/// the partitions' syncs wait for one another.
struct SyncThreads {
    tx: Mutex<std::sync::mpsc::Sender<SyncTask>>,
    rx: Arc<Mutex<std::sync::mpsc::Receiver<SyncTask>>>,
    idle: Arc<AtomicUsize>,
    started: AtomicUsize,
    /// Most threads kept, and their name.
    cap: usize,
    name: &'static str,
}

/// Most sync threads a store keeps.
const SYNC_THREADS: usize = 32;
/// Most threads making spare files a store keeps.
const SPARE_THREADS: usize = 4;

impl SyncThreads {
    fn new(name: &'static str, cap: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self {
            tx: Mutex::new(tx),
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::default(),
            started: AtomicUsize::new(0),
            cap,
            name,
        }
    }

    /// Runs `task` on an idle thread, or a new one. Every thread goes back to taking tasks
    /// after each, so a task sent always runs, whatever the idle count says.
    fn run(&self, task: SyncTask) {
        let reserved = self.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        let grow = !reserved
            && self
                .started
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.cap).then_some(n + 1))
                .is_ok();
        if grow {
            let (rx, idle) = (self.rx.clone(), self.idle.clone());
            let spawned = std::thread::Builder::new().name(self.name.into()).spawn(move || {
                loop {
                    // Held while waiting for a task, not while running it. Ends with the store.
                    let next = lock(&rx).recv();
                    let Ok(task) = next else { return };
                    // A panicking sync is reported to its waiter (its result channel drops);
                    // the thread goes on, so the pool never runs out of threads.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() {
                        tracing::error!("a sync task panicked");
                    }
                    idle.fetch_add(1, Ordering::AcqRel);
                }
            });
            if let Err(e) = spawned {
                self.started.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(error = %e, "cannot start a sync thread: syncing on the caller's");
                task();
                return;
            }
        }
        // Fails only once every receiver is gone, which `self.rx` prevents.
        let _ = lock(&self.tx).send(task);
    }
}

impl Shared {
    /// Syncs the files written since the last sync and records how far each partition is
    /// synced; then flushes the index for a checkpoint or when a partition's tree is new.
    fn sync_all(&self, kind: SyncKind) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let mut first_error = None;
        let mut flush_index = kind == SyncKind::Checkpoint;
        let mut jobs = Vec::with_capacity(dirty.len());
        for ps in dirty {
            if ps.removed.load(Ordering::Acquire) {
                continue;
            }
            ps.queued.store(false, Ordering::Release);
            let job = {
                let mut p = lock(&ps.pending);
                p.jobs += 1;
                let seq = p.jobs;
                // Its own files are listed under it until it ends; those of jobs still
                // running it syncs too, and leaves under theirs.
                let own = std::mem::take(&mut p.files);
                let mut files = own.clone();
                for (_, f) in &p.syncing {
                    if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                        files.push(f.clone());
                    }
                }
                p.syncing.extend(own.into_iter().map(|f| (seq, f)));
                let own_dir = std::mem::take(&mut p.new_files);
                let new_files = own_dir || p.syncing_dir.is_some();
                if own_dir {
                    p.syncing_dir = Some(seq);
                }
                let (end, cuts, new_tree) = (p.end, p.cuts, std::mem::take(&mut p.new_tree));
                drop(p);
                Job { ps, seq, files, new_files, end, new_tree, cuts }
            };
            flush_index |= job.new_tree;
            jobs.push(job);
        }
        // The partitions' files are synced side by side: the device takes the writes of all
        // of them at once, and their journal commits are shared.
        let jobs: Vec<Arc<Job>> = jobs.into_iter().map(Arc::new).collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for (i, j) in jobs.iter().enumerate().skip(1) {
            let (j, done) = (j.clone(), done_tx.clone());
            self.threads.run(Box::new(move || {
                let _ = done.send((i, j.run()));
            }));
        }
        drop(done_tx);
        let mut results: Vec<Result<(), StorageError>> = Vec::with_capacity(jobs.len());
        if let Some(first) = jobs.first() {
            results.push(first.run());
        }
        results.resize_with(jobs.len(), || Err(StorageError::Task("a sync thread stopped".into())));
        // Ends once every task sent its result or was dropped (a panicking one).
        for (i, r) in done_rx {
            results[i] = r;
        }
        let requeue = |ps: &Arc<PartitionSync>| {
            if !ps.queued.swap(true, Ordering::AcqRel) {
                lock(&self.dirty).push(ps.clone());
            }
        };
        for (job, res) in jobs.iter().zip(results) {
            if let Err(e) = res {
                // Its files are back in the partition's pending list (Job::run): the next
                // sync tries them again.
                requeue(&job.ps);
                first_error.get_or_insert(e);
            }
        }
        let files_done = started.elapsed();
        let flushed = if flush_index { self.db.flush().map(|_| ()) } else { Ok(()) };
        if let Err(e) = flushed {
            // A new partition's tree is still to be made durable: by the next sync.
            for job in jobs.iter().filter(|j| j.new_tree) {
                lock(&job.ps.pending).new_tree = true;
                requeue(&job.ps);
            }
            return Err(e.into());
        }
        tracing::trace!(?kind, files = ?files_done, index = ?started.elapsed() - files_done, "synced");
        first_error.map_or(Ok(()), Err)
    }
}

/// One partition's part of a sync: what it wrote since the last one.
struct Job {
    ps: Arc<PartitionSync>,
    /// Its number among the partition's jobs.
    seq: u64,
    files: Vec<Arc<SegFile>>,
    new_files: bool,
    end: i64,
    new_tree: bool,
    /// The partition's cuts when the job was taken.
    cuts: u64,
}

impl Job {
    /// Syncs the partition's files, then records the mark (unless a truncation lowered it
    /// meanwhile, or a sync that started later already recorded a higher one).
    fn run(&self) -> Result<(), StorageError> {
        let synced = self.sync();
        let mut p = lock(&self.ps.pending);
        p.syncing.retain(|(seq, _)| *seq != self.seq);
        if p.syncing_dir == Some(self.seq) {
            p.syncing_dir = None;
        }
        if synced.is_err() {
            // Back in the pending list under the same lock that took them off the syncing
            // one, so no job taken meanwhile can miss them and record a mark past them.
            for f in &self.files {
                if !p.files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    p.files.push(f.clone());
                }
            }
            p.new_files |= self.new_files;
            p.new_tree |= self.new_tree;
        }
        synced?;
        if p.cuts == self.cuts && self.end > p.marked {
            self.ps.index_tree.insert(SYNCED_KEY, &self.end.to_be_bytes())?;
            p.marked = self.end;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        for f in &self.files {
            f.sync()?;
        }
        if self.new_files {
            segments::sync_dir(&self.ps.dir)?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What these mutexes guard stays consistent across a panic (lists and counters whose
    // truth is on disk), so a poisoned one is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A partition log in segment files indexed in sled.
///
/// Lock order: `state` (held across file and sled I/O by writers, retention and compaction)
/// before `summary` (held only to copy a [`Summary`] in or out, never across I/O).
pub struct SegmentPartition {
    id: PartitionId,
    dir: PathBuf,
    index_tree: sled::Tree,
    shared: Arc<Shared>,
    sync: Arc<PartitionSync>,
    segment_bytes: u64,
    /// The next active file, made ahead (None: `StoreOptions::preallocate` is off).
    spare: Option<Arc<Mutex<SpareState>>>,
    state: Mutex<LogState>,
    summary: Mutex<Summary>,
    end_tx: watch::Sender<i64>,
}

/// Where a partition's spare file is. At most one is being made at a time: a file being made is
/// never renamed under its maker, and the maker never opens a file that holds data.
enum SpareState {
    /// None asked for since the last roll.
    Idle,
    /// Being made on a spare thread.
    Making,
    Ready(segments::Spare),
    /// The last attempt failed or the filesystem cannot allocate ahead: asked again after the
    /// next roll, not at every append.
    Failed,
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

/// Many partitions: their files under one directory, their indexes in one sled database,
/// with a group-commit syncer.
pub struct SegmentStore {
    root: PathBuf,
    shared: Arc<Shared>,
    options: StoreOptions,
    open: Mutex<HashMap<PartitionId, Arc<SegmentPartition>>>,
    flush_tx: mpsc::UnboundedSender<SyncRequest>,
}

/// Each partition's index tree maps the 8-byte big-endian base offset of every batch to
/// (last offset, max timestamp, size, leader epoch, producer id, producer epoch, base
/// sequence, attributes, file, position): opening a partition reads these entries, never the
/// batches. Other keys (`meta:...`) are longer.
const META_LEN: usize = 60;

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
    v[44..52].copy_from_slice(&m.file.to_be_bytes());
    v[52..60].copy_from_slice(&m.pos.to_be_bytes());
    v
}

fn decode_meta(v: &[u8]) -> Option<BatchMeta> {
    if v.len() != META_LEN {
        return None;
    }
    Some(BatchMeta {
        last_offset: be_i64(&v[..8]),
        max_timestamp: be_i64(&v[8..16]),
        size: be_i64(&v[16..24]) as u64,
        epoch: i32::from_be_bytes([v[24], v[25], v[26], v[27]]),
        producer_id: be_i64(&v[28..36]),
        producer_epoch: i16::from_be_bytes([v[36], v[37]]),
        base_sequence: i32::from_be_bytes([v[38], v[39], v[40], v[41]]),
        attributes: i16::from_be_bytes([v[42], v[43]]),
        file: be_i64(&v[44..52]) as u64,
        pos: be_i64(&v[52..60]) as u64,
    })
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
            file: 0,
            pos: 0,
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

fn old_tree_name(id: &PartitionId) -> String {
    format!("{OLD_TREE_PREFIX}{}/{}/{}", id.topic_id, id.topic, id.partition)
}

fn index_tree_name(id: &PartitionId) -> String {
    format!("{INDEX_PREFIX}{}/{}/{}", id.topic_id, id.topic, id.partition)
}

fn parse_tree_name(name: &[u8]) -> Option<PartitionId> {
    let s = std::str::from_utf8(name).ok()?.strip_prefix(INDEX_PREFIX)?;
    let (id, rest) = s.split_once('/')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some(PartitionId { topic: topic.to_string(), topic_id: id.parse().ok()?, partition: partition.parse().ok()? })
}

/// Moves a partition stored in the layout before ADR 0001 (one sled value per batch, in a
/// tree of its own) into segment files. Redone whole if interrupted: the old tree goes only
/// once the files are synced and the new index flushed.
fn migrate(
    db: &sled::Db,
    idx: &sled::Tree,
    dir: &Path,
    id: &PartitionId,
    segment_bytes: u64,
) -> Result<(), StorageError> {
    let old = db.open_tree(old_tree_name(id))?;
    segments::remove_dir(dir)?;
    let mut no = 0;
    let mut file = segments::create(dir, no, true)?;
    let (mut pos, mut moved, mut next) = (0u64, 0u64, 0i64);
    let mut entries = sled::Batch::default();
    for k in idx.iter().keys() {
        let k = k?;
        if k.len() == 8 {
            entries.remove(k);
        }
    }
    for kv in old.iter() {
        let (k, v) = kv?;
        if k.len() != 8 {
            continue;
        }
        let base = be_i64(&k);
        let h = BatchHeader::parse(&v).map_err(|e| damaged(id, base, e))?;
        if pos > 0 && pos + v.len() as u64 > segment_bytes {
            file.sync()?;
            no += 1;
            file = segments::create(dir, no, true)?;
            pos = 0;
        }
        file.append(&[&v[..]], pos)?;
        let mut m = BatchMeta::of_stored(&h, &v);
        (m.file, m.pos) = (no, pos);
        pos += v.len() as u64;
        moved += 1;
        next = h.next_offset();
        entries.insert(&k, &encode_meta(&m)[..]);
    }
    file.sync()?;
    idx.apply_batch(entries)?;
    idx.insert(SYNCED_KEY, &next.to_be_bytes())?;
    db.flush()?;
    db.drop_tree(old_tree_name(id))?;
    db.flush()?;
    tracing::info!(partition = %id, batches = moved, "moved the partition's batches from sled values to segment files");
    Ok(())
}

impl SegmentStore {
    /// Opens (or creates) the store under `root` with default tuning. Must be called inside a
    /// tokio runtime: the group-commit syncer runs as a task.
    pub fn open(root: &Path) -> Result<Arc<Self>, StorageError> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens (or creates) the store under `root`: the index in `root/sled`, the files in
    /// `root/segments/<topic id>/<topic>/<partition>/`.
    pub fn open_with(root: &Path, options: StoreOptions) -> Result<Arc<Self>, StorageError> {
        // The index is flushed by the syncer only, after the files it refers to. sled refuses
        // to open a database with another segment size than it was created with: the size the
        // layout before ADR 0001 used stays, so that those databases open and migrate.
        let db = sled::Config::new()
            .path(root.join("sled"))
            .cache_capacity(options.cache_bytes)
            .segment_size(SLED_SEGMENT_BYTES)
            .flush_every_ms(None)
            .open()?;
        let shared = Arc::new(Shared {
            db,
            dirty: Mutex::new(Vec::new()),
            threads: SyncThreads::new("sluice-sync", SYNC_THREADS),
            spare_maker: SyncThreads::new("sluice-spare", SPARE_THREADS),
            spare_failures: Throttle::default(),
            slow_appends: Throttle::default(),
        });
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        tokio::spawn(syncer(Arc::downgrade(&shared), flush_rx, options.flush_interval_ms));
        let store =
            Arc::new(Self { root: root.to_path_buf(), shared, options, open: Mutex::new(HashMap::new()), flush_tx });
        store.remove_orphan_dirs()?;
        Ok(store)
    }

    /// Whether `id`'s next segment file is made ahead and ready for its next roll (for tests:
    /// the spare's file exists before it is ready).
    #[doc(hidden)]
    pub fn spare_ready(&self, id: &PartitionId) -> bool {
        let open = lock(&self.open);
        open.get(id).is_some_and(|p| p.spare_ready())
    }

    fn partition_dir(&self, id: &PartitionId) -> PathBuf {
        self.root.join("segments").join(id.topic_id.to_string()).join(&id.topic).join(id.partition.to_string())
    }

    /// Directories of partitions the index no longer has (removed while the process died).
    fn remove_orphan_dirs(&self) -> Result<(), StorageError> {
        let known: std::collections::HashSet<PathBuf> = self.list()?.iter().map(|id| self.partition_dir(id)).collect();
        let base = self.root.join("segments");
        let subdirs = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .map(|it| it.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default()
        };
        for topic_id in subdirs(&base) {
            for topic in subdirs(&topic_id) {
                for p in subdirs(&topic) {
                    if !known.contains(&p) {
                        tracing::info!(dir = %p.display(), "removing the files of a deleted partition");
                        segments::remove_dir(&p)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn open_partition(&self, id: &PartitionId) -> Result<Arc<SegmentPartition>, StorageError> {
        let mut open = lock(&self.open);
        if let Some(p) = open.get(id) {
            return Ok(p.clone());
        }
        let db = &self.shared.db;
        // Not flushed here: a new partition becomes leader without waiting for a flush; its
        // tree is durable with the first sync (at most `flush_interval_ms` later).
        let new_tree = !db.tree_names().iter().any(|n| n == index_tree_name(id).as_bytes());
        let index_tree = db.open_tree(index_tree_name(id))?;
        let dir = self.partition_dir(id);
        if db.tree_names().iter().any(|n| n == old_tree_name(id).as_bytes()) {
            migrate(db, &index_tree, &dir, id, self.options.segment_bytes)?;
        }
        let recovered = recover(db, &index_tree, &dir, id, self.options.segment_bytes.max(1))?;
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
        let Recovered { index, log_start, segments, active, next_file, new_file } = recovered;
        let bytes = index.values().map(|m| m.size).sum();
        let end = index.values().next_back().map(|m| m.last_offset + 1).unwrap_or(0);
        let next_offset = end.max(log_start.unwrap_or(0));
        // Retention and compaction record the log start whenever the first batch no longer
        // tells it; otherwise it is the first batch.
        let log_start = log_start.unwrap_or_else(|| index.keys().next().copied().unwrap_or(next_offset));
        let (end_tx, _) = watch::channel(next_offset);
        tracing::debug!(partition = %id, next_offset, log_start, batches = index.len(), files = segments.len(), "opened partition");
        // An active file made ahead (its allocation covers a whole segment) is not left early.
        let active_ahead = match segments.get(&active) {
            Some(seg) => seg.file.allocated()? >= self.options.segment_bytes.max(1),
            None => false,
        };
        let mut state = LogState {
            index,
            next_offset,
            log_start,
            bytes,
            producers: ProducerTable::default(),
            producers_base,
            producers_dirty: false,
            txns: TxnIndex::default(),
            segments,
            active,
            active_ahead,
            next_file,
        };
        state.rebuild_producers();
        // What the index told beyond the snapshot is in no snapshot yet: the first retention
        // pass that removes batches writes one.
        state.producers_dirty = state.producers_base.as_ref().is_none_or(|(_, t)| *t != state.producers);
        let sync = Arc::new(PartitionSync {
            index_tree: index_tree.clone(),
            dir: dir.clone(),
            removed: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            pending: Mutex::new(Pending {
                new_files: new_file,
                end: next_offset,
                new_tree,
                marked: i64::MIN,
                ..Pending::default()
            }),
        });
        let p = Arc::new(SegmentPartition {
            id: id.clone(),
            dir,
            index_tree,
            shared: self.shared.clone(),
            sync,
            segment_bytes: self.options.segment_bytes.max(1),
            spare: self.options.preallocate.then(|| Arc::new(Mutex::new(SpareState::Idle))),
            summary: Mutex::new(Summary::of(&state)),
            state: Mutex::new(state),
            end_tx,
        });
        open.insert(id.clone(), p.clone());
        Ok(p)
    }
}

/// A request to the syncer: how far to sync, and where to answer.
type SyncRequest = (SyncKind, oneshot::Sender<Result<(), String>>);

/// An append slower than this is logged with where its time went (the file's roll, the write
/// into the page cache, the index), at most once a second per store.
const SLOW_APPEND: Duration = Duration::from_millis(50);

/// Syncs that may run at once. A sync that starts while another runs covers the appends made
/// since that one started, without waiting for it to end: the device always has writes to do,
/// and a waiter waits for about one sync, not one and a half. Concurrent syncs are safe: each
/// fdatasync covers every byte written before it was called, whoever else syncs the file, and
/// a sync also syncs the files of a partition's syncs still running ([`Pending::syncing`]), and
/// waiters are answered in the order the syncs started ([`SyncOrder`]).
const SYNCS_AT_ONCE: usize = 2;

/// Syncs for waiters (acks=all), sharing one sync among all who asked while the others ran,
/// and checkpoints every `interval_ms` (when not 0): a sync that finds the last checkpoint that
/// old checkpoints, whether a waiter or the timer started it. Holds the store only while
/// syncing, so that dropping the store closes the database.
async fn syncer(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<SyncRequest>, interval_ms: u64) {
    let interval = Duration::from_millis(interval_ms.max(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut running = tokio::task::JoinSet::new();
    let mut order = SyncOrder::default();
    let mut waiters: Vec<SyncRequest> = Vec::new();
    let mut checkpoint_due = false;
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            w = rx.recv(), if open => match w {
                Some(w) => waiters.push(w),
                None => open = false,
            },
            _ = tick.tick(), if interval_ms > 0 => checkpoint_due = true,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (task, res) = match done {
                    Ok((task, res)) => (task, res),
                    Err(e) => (e.id(), Err(e.to_string())),
                };
                if let Err(e) = &res {
                    tracing::error!(error = %e, "sync to disk failed");
                }
                for (res, answered) in order.ended(task, res) {
                    for (_, w) in answered {
                        let _ = w.send(res.clone());
                    }
                }
            }
        }
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        if (waiters.is_empty() && !(checkpoint_due && open)) || running.len() >= SYNCS_AT_ONCE {
            continue;
        }
        let mut kind = SyncKind::Data;
        if checkpoint_due
            || waiters.iter().any(|(k, _)| *k == SyncKind::Checkpoint)
            || (interval_ms > 0 && last_checkpoint.elapsed() >= interval)
        {
            kind = SyncKind::Checkpoint;
            checkpoint_due = false;
            last_checkpoint = tokio::time::Instant::now();
        }
        let Some(shared) = shared.upgrade() else { break };
        let answered = std::mem::take(&mut waiters);
        let handle = running.spawn(async move {
            tokio::task::spawn_blocking(move || shared.sync_all(kind))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        });
        order.started(handle.id(), answered);
    }
}

/// Answers the syncs' waiters in the order the syncs started. A waiter's append can be taken by
/// a sync that started before the waiter asked (it joins the next one): a later sync finds
/// nothing of it to do and must not answer before the earlier one has made it durable, nor
/// answer success if that one failed.
#[derive(Default)]
struct SyncOrder {
    next: u64,
    /// Syncs running, by task.
    running: HashMap<tokio::task::Id, Started>,
    /// Syncs ended and not answered yet (an earlier one still runs), by number.
    ended: BTreeMap<u64, (Result<(), String>, Started)>,
    /// The syncs that failed, while a sync that was running when they ended is not answered.
    failed: Vec<u64>,
}

/// A sync, as [`SyncOrder`] knows it.
struct Started {
    n: u64,
    waiters: Vec<SyncRequest>,
    /// The syncs running when it started.
    before: Vec<u64>,
}

impl SyncOrder {
    fn started(&mut self, task: tokio::task::Id, waiters: Vec<SyncRequest>) {
        let before = self.running.values().map(|r| r.n).collect();
        self.running.insert(task, Started { n: self.next, waiters, before });
        self.next += 1;
    }

    /// Records that a sync ended; returns the waiters that can be answered now, in order, with
    /// their answer.
    fn ended(&mut self, task: tokio::task::Id, res: Result<(), String>) -> Vec<(Result<(), String>, Vec<SyncRequest>)> {
        if let Some(sync) = self.running.remove(&task) {
            if res.is_err() {
                self.failed.push(sync.n);
            }
            self.ended.insert(sync.n, (res, sync));
        }
        let oldest_running = self.running.values().map(|r| r.n).min();
        let mut out = Vec::new();
        while let Some(entry) = self.ended.first_entry() {
            if oldest_running.is_some_and(|r| r < *entry.key()) {
                break;
            }
            let (res, sync) = entry.remove();
            let res = match res {
                Ok(()) if sync.before.iter().any(|b| self.failed.contains(b)) => {
                    Err("an earlier sync that held these writes failed".to_string())
                }
                res => res,
            };
            out.push((res, sync.waiters));
        }
        // A failure matters only to the syncs that were running when it ended (none that
        // starts later depends on it: the failed job put its files back for them).
        let keep: std::collections::HashSet<u64> = self
            .running
            .values()
            .chain(self.ended.values().map(|e| &e.1))
            .flat_map(|r| r.before.iter().copied())
            .collect();
        self.failed.retain(|f| keep.contains(f));
        out
    }
}

/// A partition's index and files as found on disk, reconciled.
struct Recovered {
    index: BTreeMap<i64, BatchMeta>,
    log_start: Option<i64>,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    next_file: u64,
    /// The active file was just created: the next sync makes its name durable.
    new_file: bool,
}

/// Reads a partition's index and files and makes them agree (see the module doc): entries
/// whose bytes are missing or, beyond the synced offset, damaged go with everything after
/// them; whole batches after the last entry are indexed; what follows them is cut, or zeroed
/// in a file made ahead (`segment_bytes` allocated: it keeps its length and blocks); files
/// nothing refers to are deleted, files rolled off are cut to their data.
fn recover(
    db: &sled::Db,
    idx: &sled::Tree,
    dir: &Path,
    id: &PartitionId,
    segment_bytes: u64,
) -> Result<Recovered, StorageError> {
    let mut index = BTreeMap::new();
    for kv in idx.iter() {
        let (k, v) = kv?;
        if let (8, Some(m)) = (k.len(), decode_meta(&v)) {
            index.insert(be_i64(&k), m);
        }
    }
    let log_start = idx.get(START_KEY)?.filter(|v| v.len() == 8).map(|v| be_i64(&v));
    let synced = idx.get(SYNCED_KEY)?.filter(|v| v.len() == 8).map_or(i64::MIN, |v| be_i64(&v));
    let mut files = segments::open_all(dir)?;
    // Entries below the synced mark are only checked against their file's length, which says
    // nothing in a file longer than its data (made ahead): there the last such entry's header
    // is read, and if it is not there, every entry of the file is checked as if unsynced.
    let mut last_synced: BTreeMap<u64, (i64, &BatchMeta)> = BTreeMap::new();
    for (base, m) in index.range(..synced) {
        last_synced.insert(m.file, (*base, m));
    }
    let mut doubtful = std::collections::HashSet::new();
    for (no, (base, m)) in last_synced {
        let Some((f, len)) = files.get(&no).filter(|(_, len)| m.pos + m.size < *len) else { continue };
        let there = segments::header_at(f, m.pos, *len)?;
        if !there.is_some_and(|h| h.base_offset == base && h.total_len() as u64 == m.size) {
            tracing::warn!(partition = %id, file = no, offset = base, "a synced batch is not where the index says: checking the whole file");
            doubtful.insert(no);
        }
    }
    let mut cut = None;
    for (base, m) in &index {
        let ok = match files.get(&m.file) {
            Some((f, len)) if m.pos.checked_add(m.size).is_some_and(|end| end <= *len) => {
                (*base < synced && !doubtful.contains(&m.file))
                    || segments::batch_at(f, m.pos, *len)?
                        .is_some_and(|b| b.header.base_offset == *base && b.bytes.len() as u64 == m.size)
            }
            _ => false,
        };
        if !ok {
            cut = Some(*base);
            break;
        }
    }
    let mut changes = sled::Batch::default();
    let mut changed = false;
    if let Some(cut) = cut {
        let doomed: Vec<i64> = index.range(cut..).map(|(b, _)| *b).collect();
        tracing::warn!(partition = %id, from = cut, batches = doomed.len(), "index entries whose bytes are not on disk dropped");
        for b in doomed {
            index.remove(&b);
            changes.remove(&b.to_be_bytes());
        }
        changed = true;
    }
    // The file the last batch is in takes the appends; whole batches after it (and in newer
    // files that nothing refers to, when it was full) are what the index had not recorded.
    let last = index.iter().next_back().map(|(_, m)| (m.file, m.pos + m.size, m.last_offset + 1));
    let mut active = match last {
        Some((file, ..)) => file,
        None => files.keys().next().copied().unwrap_or(0),
    };
    let mut from = last.map_or(0, |l| l.1);
    let mut next = last.map_or(log_start.unwrap_or(0), |l| l.2);
    let referenced: std::collections::HashSet<u64> = index.values().map(|m| m.file).collect();
    let mut indexed = 0;
    loop {
        // Where the whole batches of `active` end, when something else follows them.
        let mut tail = None;
        if let Some((f, len)) = files.get_mut(&active) {
            let start = next;
            let end = segments::scan(f, from, *len, start, |b| {
                let mut m = BatchMeta::of_stored(&b.header, &b.bytes);
                (m.file, m.pos) = (active, b.pos);
                changes.insert(&b.header.base_offset.to_be_bytes(), &encode_meta(&m)[..]);
                index.insert(b.header.base_offset, m);
                next = b.header.next_offset();
                indexed += 1;
                changed = true;
            })?;
            if end < *len {
                tail = Some(end);
            }
        }
        // A newer file no entry refers to continues the log when its first batch does (the
        // active one was full); others (a compaction's output the index never pointed to)
        // are passed over.
        let mut continuation = None;
        for (no, (f, len)) in files.range(active + 1..) {
            if referenced.contains(no) {
                continue;
            }
            if segments::batch_at(f, 0, *len)?.is_some_and(|b| b.header.base_offset == next) {
                continuation = Some(*no);
                break;
            }
        }
        if let (Some(end), Some((f, len))) = (tail, files.get_mut(&active)) {
            // Zeros are the end of a file made ahead (or blocks a crash left unwritten);
            // anything else is a torn write. Either way what follows is not the log's.
            if segments::zeros_at(f, end, *len)? {
                tracing::debug!(partition = %id, file = active, at = end, "cut the unwritten end of a file made ahead");
            } else {
                tracing::warn!(partition = %id, file = active, at = end, bytes = *len - end, "cut a torn tail");
            }
            if continuation.is_none() && f.allocated()? >= segment_bytes {
                // Appends go on here, into blocks that stay allocated.
                if f.written_past(end, *len)? {
                    f.zero_from(end, *len)?;
                }
            } else {
                f.set_len(end)?;
            }
            *len = end;
        }
        let Some(newer) = continuation else { break };
        (active, from) = (newer, 0);
    }
    if indexed > 0 {
        tracing::info!(partition = %id, batches = indexed, "indexed batches missing from the index");
    }
    idx.apply_batch(changes)?;
    // Where each file's indexed data ends.
    let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
    for m in index.values() {
        let end = ends.entry(m.file).or_default();
        *end = (*end).max(m.pos + m.size);
    }
    let mut segs = BTreeMap::new();
    for (no, (f, mut len)) in files {
        let data_end = ends.get(&no).copied();
        if data_end.is_none() && no != active {
            f.delete()?;
            changed = true;
            continue;
        }
        if let Some(end) = data_end.filter(|e| no != active && *e < len) {
            // A file rolled off before a crash, its preallocated end not cut yet.
            f.shrink_to(end)?;
            len = end;
        }
        segs.insert(no, Segment { file: f, len, live: 0, live_bytes: 0 });
    }
    let mut new_file = false;
    if let std::collections::btree_map::Entry::Vacant(e) = segs.entry(active) {
        // Its name is made durable by the first sync (the partition is new or empty).
        e.insert(Segment { file: segments::create(dir, active, false)?, len: 0, live: 0, live_bytes: 0 });
        new_file = true;
    }
    for m in index.values() {
        if let Some(s) = segs.get_mut(&m.file) {
            s.live += 1;
            s.live_bytes += m.size;
        }
    }
    // What was found past the synced mark survived in the page cache only: it is synced now,
    // with the index's repairs, before anything is appended after it.
    let end = index.values().next_back().map(|m| m.last_offset + 1);
    if let Some(end) = end.filter(|e| *e > synced) {
        let unsynced: std::collections::BTreeSet<u64> = index.range(synced..).map(|(_, m)| m.file).collect();
        for s in unsynced.iter().filter_map(|no| segs.get(no)) {
            s.file.sync()?;
        }
        segments::sync_dir(dir)?;
        idx.insert(SYNCED_KEY, &end.to_be_bytes())?;
        changed = true;
    }
    if changed {
        // The repairs are durable before anything is appended after them.
        db.flush()?;
    }
    let next_file = segs.keys().next_back().map_or(0, |n| n + 1);
    Ok(Recovered { index, log_start, segments: segs, active, next_file, new_file })
}

impl LogStore for SegmentStore {
    fn open(&self, id: &PartitionId) -> Result<Arc<dyn PartitionLog>, StorageError> {
        Ok(self.open_partition(id)?)
    }

    fn remove(&self, id: &PartitionId) -> Result<(), StorageError> {
        if let Some(p) = lock(&self.open).remove(id) {
            p.sync.removed.store(true, Ordering::Release);
        }
        self.shared.db.drop_tree(index_tree_name(id))?;
        self.shared.db.drop_tree(old_tree_name(id))?;
        self.shared.db.flush()?;
        segments::remove_dir(&self.partition_dir(id))
    }

    fn list(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.shared.db.tree_names().iter().filter_map(|n| parse_tree_name(n)).collect())
    }

    fn sync(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>> {
        Box::pin(self.sync_kind(SyncKind::Data))
    }

    fn checkpoint(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + '_>> {
        Box::pin(self.sync_kind(SyncKind::Checkpoint))
    }
}

impl SegmentStore {
    async fn sync_kind(&self, kind: SyncKind) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        if self.flush_tx.send((kind, tx)).is_err() {
            let shared = self.shared.clone();
            return tokio::task::spawn_blocking(move || shared.sync_all(kind))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))?;
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Sync(e)),
            Err(_) => Err(StorageError::Sync("the syncer stopped".into())),
        }
    }
}

impl SegmentPartition {
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        StateGuard { st: lock(&self.state), summary: &self.summary }
    }

    fn summary(&self) -> Summary {
        *lock(&self.summary)
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

    /// The bytes of a batch the index refers to.
    pub(crate) fn load(&self, st: &LogState, base: i64, m: &BatchMeta) -> Result<Option<Bytes>, StorageError> {
        let Some(seg) = st.segments.get(&m.file) else { return Ok(None) };
        let mut buf = vec![0u8; m.size as usize];
        if !seg.file.read_at(&mut buf, m.pos)? {
            return Ok(None);
        }
        let h = BatchHeader::parse(&buf).map_err(|e| damaged(&self.id, base, e))?;
        if h.base_offset != base || h.total_len() != buf.len() {
            let why = format!(
                "the index says {} bytes at offset {base}, the file holds a batch of {} at {}",
                buf.len(),
                h.total_len(),
                h.base_offset
            );
            return Err(damaged(&self.id, base, batch::BatchError::Malformed(why)));
        }
        batch::check_crc(&buf, &h).map_err(|e| damaged(&self.id, base, e))?;
        Ok(Some(Bytes::from(buf)))
    }

    /// Records that `file` was written, for the next sync.
    fn mark_written(&self, file: &Arc<SegFile>, end: i64) {
        {
            let mut p = lock(&self.sync.pending);
            if !p.files.iter().any(|f| f.no == file.no) {
                p.files.push(file.clone());
            }
            p.end = end;
        }
        if !self.sync.queued.swap(true, Ordering::AcqRel) {
            lock(&self.shared.dirty).push(self.sync.clone());
        }
    }

    /// The active file, after starting a new one when `need` more bytes would take it past
    /// the segment size, or when it was not made ahead, holds [`EARLY_SPARE_BYTES`] and a
    /// spare is ready.
    fn active_for(&self, st: &mut LogState, need: u64) -> Result<u64, StorageError> {
        let active = st.segments.get(&st.active);
        let full = active.is_none_or(|s| s.len > 0 && s.len + need > self.segment_bytes);
        let spare_waits =
            || !st.active_ahead && active.is_some_and(|s| s.len >= EARLY_SPARE_BYTES) && self.spare_ready();
        if full || spare_waits() {
            self.start_file(st)?;
        }
        Ok(st.active)
    }

    /// Starts a new active file: the spare when one is ready, else a new empty one. Syncing the
    /// directory here would stall appends behind the journal commit it forces; the next sync
    /// does it, before it counts on the file.
    fn start_file(&self, st: &mut LogState) -> Result<(), StorageError> {
        if let Some(old) = st.segments.get(&st.active).filter(|_| st.active_ahead) {
            // The file made ahead is cut to its data, off the appends' path (a truncation
            // takes the locks writeback holds).
            let (file, len, id) = (old.file.clone(), old.len, self.id.clone());
            let shared = Arc::downgrade(&self.shared);
            self.shared.spare_maker.run(Box::new(move || {
                // Only while the store is open: one opened again on the same files (after this
                // one was dropped) may have made this file active again. Holding the store
                // holds sled's lock, so none can be opened during the cut.
                let Some(_open) = shared.upgrade() else { return };
                if let Err(e) = file.shrink_to(len) {
                    tracing::warn!(partition = %id, error = %e, "cannot cut a segment file to its data");
                }
            }));
        }
        let no = st.next_file;
        let adopted = self.take_spare().and_then(|spare| {
            segments::adopt_spare(&self.dir, spare, no)
                .inspect_err(|e| tracing::warn!(partition = %self.id, error = %e, "cannot use the spare segment file"))
                .ok()
        });
        st.active_ahead = adopted.is_some();
        let file = match adopted {
            Some(file) => file,
            None => segments::create(&self.dir, no, false)?,
        };
        lock(&self.sync.pending).new_files = true;
        st.segments.insert(no, Segment { file, len: 0, live: 0, live_bytes: 0 });
        st.next_file += 1;
        st.active = no;
        Ok(())
    }

    fn spare_ready(&self) -> bool {
        self.spare.as_ref().is_some_and(|slot| matches!(*lock(slot), SpareState::Ready(_)))
    }

    /// The spare file if it is ready; after a roll a new one may be asked for (one being made
    /// is left to finish: the next roll takes it).
    fn take_spare(&self) -> Option<segments::Spare> {
        let mut state = lock(self.spare.as_ref()?);
        match std::mem::replace(&mut *state, SpareState::Idle) {
            SpareState::Ready(spare) => Some(spare),
            SpareState::Making => {
                *state = SpareState::Making;
                None
            }
            SpareState::Idle | SpareState::Failed => None,
        }
    }

    /// Has the next active file made on a spare thread, unless one was asked for since the
    /// last roll.
    fn ask_spare(&self, slot: &Arc<Mutex<SpareState>>) {
        {
            let mut state = lock(slot);
            if !matches!(*state, SpareState::Idle) {
                return;
            }
            *state = SpareState::Making;
        }
        let (slot, ps, bytes, id) = (slot.clone(), self.sync.clone(), self.segment_bytes, self.id.clone());
        let shared = Arc::downgrade(&self.shared);
        self.shared.spare_maker.run(Box::new(move || {
            // A partition removed meanwhile gets none (its directory is going).
            let made = if ps.removed.load(Ordering::Acquire) { Ok(None) } else { segments::make_spare(&ps.dir, bytes) };
            let mut state = lock(&slot);
            *state = match made {
                Ok(Some(spare)) => SpareState::Ready(spare),
                Ok(None) => SpareState::Failed,
                Err(e) => {
                    if shared.upgrade().is_some_and(|s| s.spare_failures.due()) {
                        tracing::warn!(partition = %id, error = %e, "cannot make the next segment file ahead");
                    }
                    SpareState::Failed
                }
            };
        }));
    }

    /// Writes a new file holding `batches` (in offset order), synced; returns it and each
    /// batch's position. Used by compaction, without the state lock but for a moment.
    pub(crate) fn write_file(&self, batches: &[&[u8]]) -> Result<(Arc<SegFile>, Vec<u64>), StorageError> {
        let no = {
            let mut st = self.lock();
            st.next_file += 1;
            st.next_file - 1
        };
        let file = segments::create(&self.dir, no, true)?;
        let total: usize = batches.iter().map(|b| b.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(batches.len());
        for b in batches {
            positions.push(buf.len() as u64);
            buf.extend_from_slice(b);
        }
        file.append(&[&buf[..]], 0)?;
        file.sync()?;
        Ok((file, positions))
    }

    /// Removes index entries (the caller holds the state lock and updates the rest of the
    /// state); returns the files nothing refers to any more, to delete once the index is
    /// flushed ([`SegmentPartition::delete_files`]).
    pub(crate) fn unindex(&self, st: &mut LogState, bases: &[i64]) -> Result<Vec<Arc<SegFile>>, StorageError> {
        let mut b = sled::Batch::default();
        for base in bases {
            b.remove(&base.to_be_bytes());
        }
        self.index_tree.apply_batch(b)?;
        for base in bases {
            if let Some(m) = st.index.remove(base) {
                st.bytes -= m.size;
                if let Some(s) = st.segments.get_mut(&m.file) {
                    s.live -= 1;
                    s.live_bytes -= m.size;
                }
            }
        }
        Ok(self.unused_files(st))
    }

    /// Takes the files nothing refers to (but the active one) out of the state.
    pub(crate) fn unused_files(&self, st: &mut LogState) -> Vec<Arc<SegFile>> {
        let unused: Vec<u64> =
            st.segments.iter().filter(|(no, s)| s.live == 0 && **no != st.active).map(|(no, _)| *no).collect();
        unused.iter().filter_map(|no| st.segments.remove(no)).map(|s| s.file).collect()
    }

    /// Writes index entries (and flushes nothing).
    pub(crate) fn index_entries(&self, entries: &[(i64, BatchMeta)]) -> Result<(), StorageError> {
        if let [(base, m)] = entries {
            self.index_tree.insert(base.to_be_bytes(), &encode_meta(m)[..])?;
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (base, m) in entries {
            b.insert(&base.to_be_bytes(), &encode_meta(m)[..]);
        }
        self.index_tree.apply_batch(b)?;
        Ok(())
    }

    /// Deletes files once the index no longer referring to them is durable.
    pub(crate) fn delete_files(&self, files: Vec<Arc<SegFile>>) -> Result<(), StorageError> {
        if files.is_empty() {
            return Ok(());
        }
        self.shared.db.flush()?;
        for f in &files {
            f.delete()?;
        }
        segments::sync_dir(&self.dir)
    }

    /// Appends `bufs` (whole stamped batches, back to back, described by `items` in order) to
    /// the active file, then indexes them (the caller holds the state lock), and publishes the
    /// new end. Nothing is indexed if the write fails, and the next write goes where it went.
    fn store_locked(
        &self,
        st: &mut LogState,
        bufs: &[&[u8]],
        mut items: Vec<(i64, BatchMeta)>,
    ) -> Result<(), StorageError> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let t0 = std::time::Instant::now();
        let no = self.active_for(st, total)?;
        let seg = st.segments.get(&no).ok_or_else(|| StorageError::Task(format!("segment file {no} is not open")))?;
        let (file, at) = (seg.file.clone(), seg.len);
        let t1 = std::time::Instant::now();
        file.append(bufs, at)?;
        let t2 = std::time::Instant::now();
        let mut pos = at;
        for (_, m) in items.iter_mut() {
            (m.file, m.pos) = (no, pos);
            pos += m.size;
        }
        if let Err(e) = self.index_entries(&items) {
            // Not indexed, so not in the log: a recovery must not find the bytes either.
            file.discard_from(at);
            return Err(e);
        }
        let t3 = std::time::Instant::now();
        if t3 - t0 > SLOW_APPEND && self.shared.slow_appends.due() {
            tracing::warn!(
                partition = %self.id,
                bytes = total,
                file = ?(t1 - t0),
                write = ?(t2 - t1),
                index = ?(t3 - t2),
                "slow append"
            );
        }
        if let Some(seg) = st.segments.get_mut(&no) {
            seg.len = at + total;
            seg.live += items.len() as u64;
            seg.live_bytes += total;
        }
        let written = at + total;
        let due = written * 2 >= self.segment_bytes || (!st.active_ahead && written >= EARLY_SPARE_BYTES);
        if let Some(slot) = self.spare.as_ref().filter(|_| due) {
            self.ask_spare(slot);
        }
        for (base, m) in items {
            st.bytes += m.size;
            st.next_offset = m.last_offset + 1;
            if m.producer_id >= 0 {
                m.record_producer(base, &mut st.producers, sluice_core::settings::now_ms());
                st.producers_dirty = true;
                st.txns.on_batch(base, m.last_offset, m.producer_id, m.attributes);
            }
            st.index.insert(base, m);
        }
        self.mark_written(&file, st.next_offset);
        self.end_tx.send_replace(st.next_offset);
        Ok(())
    }

    /// Lowers the synced offset to `end` when the log was cut below it: later appends there
    /// are not synced yet.
    fn lower_synced(&self, end: i64) -> Result<(), StorageError> {
        // Under the pending lock, which a sync holds while it records its mark: a sync that
        // started before the cut cannot raise the mark again past it.
        let mut p = lock(&self.sync.pending);
        let synced = self.index_tree.get(SYNCED_KEY)?.filter(|v| v.len() == 8).map(|v| be_i64(&v));
        if synced.is_some_and(|s| s > end) {
            self.index_tree.insert(SYNCED_KEY, &end.to_be_bytes())?;
        }
        p.end = p.end.min(end);
        p.marked = p.marked.min(end);
        p.cuts += 1;
        Ok(())
    }
}

/// A request's batch, stamped with its offset and epoch: its header alone, or all of it when
/// a CRC'd field changed.
enum Stamped {
    Head([u8; batch::HEADER_LEN]),
    Whole(Vec<u8>),
}

impl Stamped {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Stamped::Head(h) => h,
            Stamped::Whole(v) => v,
        }
    }
}

/// A batch to read: where the index said it was when the read started.
struct Piece {
    base: i64,
    meta: BatchMeta,
    file: Arc<SegFile>,
}

impl SegmentPartition {
    /// Reads batches, one positioned read per run of batches that sit back to back in one
    /// file. Stops early, without error, where a batch is no longer what the index said (a
    /// truncation cut or rewrote it since): the reader asks again from there. Returns the
    /// bytes and the offset after the last batch read.
    fn read_pieces(&self, pieces: &[Piece]) -> Result<(Bytes, Option<i64>), StorageError> {
        let total: u64 = pieces.iter().map(|p| p.meta.size).sum();
        let mut out = BytesMut::zeroed(total as usize);
        let (mut filled, mut next, mut i) = (0usize, None, 0);
        'runs: while i < pieces.len() {
            let first = &pieces[i];
            let (mut j, mut run) = (i + 1, first.meta.size);
            while j < pieces.len() && pieces[j].file.no == first.file.no && pieces[j].meta.pos == first.meta.pos + run {
                run += pieces[j].meta.size;
                j += 1;
            }
            let dst = &mut out[filled..filled + run as usize];
            if !first.file.read_at(dst, first.meta.pos)? {
                break;
            }
            let mut at = 0usize;
            for p in &pieces[i..j] {
                let b = &dst[at..at + p.meta.size as usize];
                let h = BatchHeader::parse(b).map_err(|e| damaged(&self.id, p.base, e))?;
                if h.base_offset != p.base || h.total_len() != b.len() {
                    break 'runs;
                }
                batch::check_crc(b, &h).map_err(|e| damaged(&self.id, p.base, e))?;
                at += b.len();
                filled += b.len();
                next = Some(p.meta.last_offset + 1);
            }
            i = j;
        }
        out.truncate(filled);
        Ok((out.freeze(), next))
    }
}

impl PartitionLog for SegmentPartition {
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
        // The offset and epoch sit before the CRC'd part of the header: only the header is
        // copied to stamp them, and written beside the request's own bytes. A log-append-time
        // topic changes a CRC'd field, so its batches are copied whole.
        let mut stamped = Vec::with_capacity(parts.len());
        for (h, range) in &parts {
            let base = st.next_offset + count as i64;
            let mut s = if log_append {
                Stamped::Whole(batches[range.clone()].to_vec())
            } else {
                let mut head = [0u8; batch::HEADER_LEN];
                head.copy_from_slice(&batches[range.start..range.start + batch::HEADER_LEN]);
                Stamped::Head(head)
            };
            let v_mut = s.bytes_mut();
            batch::set_base_offset(v_mut, base);
            batch::set_partition_leader_epoch(v_mut, leader_epoch);
            if log_append {
                batch::set_log_append_time(v_mut, now_ms);
            }
            stamped.push(s);
            let meta = BatchMeta {
                last_offset: base + h.last_offset_delta as i64,
                max_timestamp: if log_append { now_ms } else { h.max_timestamp },
                size: range.len() as u64,
                epoch: leader_epoch,
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                base_sequence: h.base_sequence,
                attributes: if log_append { h.attributes | batch::TIMESTAMP_TYPE_LOG_APPEND } else { h.attributes },
                file: 0,
                pos: 0,
            };
            items.push((base, meta));
            count += h.record_count as u32;
        }
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() * 2);
        for ((_, range), s) in parts.iter().zip(&stamped) {
            match s {
                Stamped::Head(head) => {
                    bufs.push(head);
                    bufs.push(&batches[range.start + batch::HEADER_LEN..range.end]);
                }
                Stamped::Whole(v) => bufs.push(v),
            }
        }
        self.store_locked(&mut st, &bufs, items)?;
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
            items.push((h.base_offset, BatchMeta::of_stored(h, &batches[range.clone()])));
        }
        if !items.is_empty() {
            // Written as received: the leader's bytes, back to back.
            let end = parts.last().map_or(0, |(_, r)| r.end);
            self.store_locked(&mut st, &[&batches[..end]], items)?;
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
        let last_file = st.index.range(..from).next_back().map(|(_, m)| m.file);
        let mut unused = self.unindex(&mut st, &doomed)?;
        // The removed batches' bytes are cut from the file the log now ends in, so that a
        // restart finds nothing after its last batch there.
        if let Some(no) = last_file {
            let keep = st.index.values().filter(|m| m.file == no).map(|m| m.pos + m.size).max().unwrap_or(0);
            if let Some(seg) = st.segments.get_mut(&no) {
                seg.file.set_len(keep)?;
                seg.len = keep;
            }
        }
        // Appends go on in a new file: the positions of removed batches are never reused, so
        // no entry a crash restores, a reader holds or compaction read can point at other
        // bytes than it did.
        self.start_file(&mut st)?;
        unused.extend(self.unused_files(&mut st));
        st.next_offset = from.max(st.log_start);
        let end = st.next_offset;
        if from < st.log_start {
            st.log_start = end;
        }
        self.lower_synced(end)?;
        st.rebuild_producers();
        if st.producers_base.as_ref().is_some_and(|(covered, _)| *covered > end) {
            // The snapshot covers batches that are gone: a rebuild from it would remember
            // them and skip the index entries written over them. It covers the new end now.
            self.index_tree.insert(PRODUCERS_KEY, producers::encode(end, &st.producers))?;
            st.producers_base = Some((end, st.producers.clone()));
            st.producers_dirty = false;
        }
        // Durable before anything is appended after it.
        self.shared.db.flush()?;
        drop(st);
        self.delete_files(unused)?;
        self.end_tx.send_replace(end);
        tracing::info!(partition = %self.id, end, removed = doomed.len(), "truncated");
        Ok(end)
    }

    fn reset(&self, offset: i64) -> Result<(), StorageError> {
        let mut st = self.lock();
        let doomed: Vec<i64> = st.index.keys().copied().collect();
        let mut unused = self.unindex(&mut st, &doomed)?;
        // Everything goes, the active file too: the log starts again in a new one.
        let active = st.active;
        if let Some(old) = st.segments.remove(&active) {
            unused.push(old.file);
        }
        let no = st.next_file;
        st.segments
            .insert(no, Segment { file: segments::create(&self.dir, no, true)?, len: 0, live: 0, live_bytes: 0 });
        st.next_file += 1;
        st.active = no;
        st.active_ahead = false;
        self.persist_log_start(offset)?;
        self.lower_synced(offset)?;
        st.bytes = 0;
        st.log_start = offset;
        st.next_offset = offset;
        // What the leader's log holds after `offset` comes with its batches; producers that
        // only wrote before it are forgotten, as after their expiry.
        self.index_tree.remove(PRODUCERS_KEY)?;
        st.producers_base = None;
        st.rebuild_producers();
        drop(st);
        self.delete_files(unused)?;
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
        let (pieces, start, end) = {
            let st = self.lock();
            if offset < st.log_start || offset > st.next_offset {
                return Err(StorageError::OffsetOutOfRange { offset, start: st.log_start, end: st.next_offset });
            }
            // The batch holding `offset` is the last one whose base is at or below it (unless
            // compaction emptied the tail of that batch, in which case it ends before offset).
            let first = st.index.range(..=offset).next_back().filter(|(_, m)| m.last_offset >= offset).map(|(b, _)| *b);
            let from = first.unwrap_or(offset);
            let mut pieces = Vec::new();
            let mut total = 0u64;
            for (base, m) in st.index.range(from..) {
                if m.last_offset >= max_offset || (total > 0 && total + m.size > max_bytes as u64) {
                    break;
                }
                let Some(seg) = st.segments.get(&m.file) else { break };
                total += m.size;
                pieces.push(Piece { base: *base, meta: *m, file: seg.file.clone() });
            }
            (pieces, st.log_start, st.next_offset)
        };
        let (batches, next) = self.read_pieces(&pieces)?;
        Ok(ReadResult {
            batches,
            next_offset: next.unwrap_or(offset).max(offset),
            log_start_offset: start,
            log_end_offset: end,
        })
    }

    fn offsets(&self) -> LogOffsets {
        self.summary().offsets
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let v = {
            let st = self.lock();
            let Some((base, m)) = st.index.iter().find(|(_, m)| m.max_timestamp >= timestamp_ms) else {
                return Ok(None);
            };
            let (base, m) = (*base, *m);
            self.load(&st, base, &m)?
        };
        let Some(v) = v else { return Ok(None) };
        let records = batch::decode_records(&v)?;
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
        let mut v = data.to_vec();
        batch::set_base_offset(&mut v, base);
        batch::set_partition_leader_epoch(&mut v, leader_epoch);
        let mut meta = BatchMeta::of(&h, v.len());
        meta.last_offset = base;
        meta.epoch = leader_epoch;
        if marker == batch::Marker::Abort {
            meta.attributes |= ABORT_MARKER;
        }
        self.store_locked(&mut st, &[&v[..]], vec![(base, meta)])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter, and where its answer arrives.
    fn waiter() -> (SyncRequest, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        ((SyncKind::Data, tx), rx)
    }

    fn answer(order: &mut SyncOrder, task: tokio::task::Id, res: Result<(), String>) {
        for (res, waiters) in order.ended(task, res) {
            for (_, w) in waiters {
                let _ = w.send(res.clone());
            }
        }
    }

    #[tokio::test]
    async fn a_later_sync_answers_after_the_earlier_one_and_fails_with_it() {
        let ids: Vec<tokio::task::Id> = {
            let a = tokio::spawn(async {});
            let b = tokio::spawn(async {});
            let c = tokio::spawn(async {});
            vec![a.id(), b.id(), c.id()]
        };
        let mut order = SyncOrder::default();
        let (w1, mut r1) = waiter();
        let (w2, mut r2) = waiter();
        order.started(ids[0], vec![w1]);
        order.started(ids[1], vec![w2]);
        // The second ends first: it waits for the first, which held writes it answers for.
        answer(&mut order, ids[1], Ok(()));
        assert!(r2.try_recv().is_err(), "answered before the earlier sync ended");
        answer(&mut order, ids[0], Err("disk".into()));
        assert_eq!(r1.try_recv().unwrap(), Err("disk".to_string()));
        assert!(r2.try_recv().unwrap().is_err(), "a sync that overlapped a failed one answers with its failure");
        // A sync that starts once the failed one ended does not inherit it.
        let (w3, mut r3) = waiter();
        order.started(ids[2], vec![w3]);
        answer(&mut order, ids[2], Ok(()));
        assert_eq!(r3.try_recv().unwrap(), Ok(()));
        assert!(order.failed.is_empty() && order.running.is_empty() && order.ended.is_empty());
    }
}
