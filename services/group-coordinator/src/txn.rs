//! The transaction coordinator: transactional ids, the producer id and epoch of each, and the
//! transaction each has open, kept in the internal compacted topic `__transaction_state` (one
//! record per transactional id holding its whole state, written before the state takes
//! effect), as Kafka's transaction coordinator does.
//!
//! A transaction goes from `Empty` (or a `Complete*` state) to `Ongoing` when a partition
//! leader adds its first partition (KIP-890: leaders ask before writing, so every partition
//! with records of the transaction is known here) or when offsets are sent in it; the end is
//! decided by writing `PrepareCommit`/`PrepareAbort`, then a marker goes to every partition
//! of the transaction, offsets sent in it are written to the offsets topic (on commit), and
//! `Complete*` is written. Every end moves the producer to its next epoch, which the markers
//! carry: a late copy of a batch of the ended transaction is refused by the partitions as
//! stale, and can never join the next transaction. A coordinator taking over finishes every
//! transaction its predecessor decided; open transactions older than their timeout are
//! aborted.
//!
//! One operation at a time per transactional id (an async lock per id); the last written
//! state of every id is also kept in [`Txns`] for lookups that must not wait (describe,
//! producer id to transactional id, offsets pending in transactions).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_core::SluiceError;
use sluice_core::settings::now_ms;
use sluice_proto::v1::{self, ConsumedRecord, TransactionDescription, TransactionState};
use sluice_router::markers::{MarkerError, MarkerWrite};

use crate::Coordinator;
use crate::assignor::Tp;
use crate::store::{Committed, LazyTopic};

pub use sluice_core::topic::TRANSACTION_STATE_TOPIC;

/// Transaction timeout of a producer that asks for none, as Kafka's default.
pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;
/// Longest transaction timeout accepted (Kafka's transaction.max.timeout.ms).
pub const MAX_TIMEOUT_MS: u32 = 900_000;
/// How long a call waits for its transactional id (another call, markers being written)
/// before answering CONCURRENT_TRANSACTIONS; the work itself goes on.
const CALL_WAIT: Duration = Duration::from_secs(20);
/// How often open transactions are checked against their timeouts.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// An end that would take the epoch past this gives the id a new producer id (epoch 0).
const LAST_EPOCH: i16 = i16::MAX - 1;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl State {
    fn preparing(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    fn proto(self) -> TransactionState {
        match self {
            Self::Empty => TransactionState::Empty,
            Self::Ongoing => TransactionState::Ongoing,
            Self::PrepareCommit => TransactionState::PrepareCommit,
            Self::PrepareAbort => TransactionState::PrepareAbort,
            Self::CompleteCommit => TransactionState::CompleteCommit,
            Self::CompleteAbort => TransactionState::CompleteAbort,
        }
    }
}

/// An offset sent in a transaction: the group's committed offset once it commits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnOffset {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub metadata: String,
    pub generation: u64,
    pub topic_id: u64,
}

/// The state of one transactional id, as written to `__transaction_state`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    /// The producer's epoch; during `Prepare*`, already the next one (the markers' epoch).
    pub epoch: i16,
    /// The identity before the last end moved it on, and how that transaction ended: an
    /// EndTxn repeated with it (its answer was lost) gets the same answer. None after an init
    /// (which fences every older identity).
    pub prev: Option<(i64, i16, bool)>,
    pub timeout_ms: u32,
    pub state: State,
    /// The last transaction was aborted because it outlived its timeout.
    pub timed_out: bool,
    pub partitions: BTreeSet<(String, u32)>,
    pub offsets: Vec<TxnOffset>,
    /// When the open transaction began; 0 when none is open.
    pub start_ms: i64,
    pub update_ms: i64,
    /// The ending transaction keeps the producer's epoch (see `EndTxnRequest.keep_epoch`):
    /// its markers carry the epoch it was written at.
    #[serde(default)]
    pub keeps_epoch: bool,
    /// The producer announces its partitions itself (see
    /// `AddPartitionsToTxnRequest.from_client`); leaders only verify.
    #[serde(default)]
    pub client_adds: bool,
}

impl TxnMeta {
    fn open(&self) -> bool {
        self.state == State::Ongoing || self.state.preparing()
    }

    /// The transaction as it is once something joins it: `Ongoing`, begun now when it was not.
    fn joined(&self, now: i64) -> TxnMeta {
        let mut m = self.clone();
        if m.state != State::Ongoing {
            m.state = State::Ongoing;
            m.start_ms = now;
            m.timed_out = false;
            m.partitions.clear();
            m.offsets.clear();
        }
        m.update_ms = now;
        m
    }

    pub fn describe(&self, id: &str) -> TransactionDescription {
        let groups: BTreeSet<&str> = self.offsets.iter().map(|o| o.group.as_str()).collect();
        TransactionDescription {
            transactional_id: id.to_string(),
            state: self.state.proto() as i32,
            producer_id: self.producer_id,
            producer_epoch: self.epoch as i32,
            transaction_timeout_ms: self.timeout_ms,
            partitions: sluice_core::topic::group_by_topic(&self.partitions),
            start_time_ms: if self.open() { self.start_ms } else { 0 },
            last_update_ms: self.update_ms,
            groups: groups.into_iter().map(str::to_string).collect(),
        }
    }
}

/// The last written state of every transactional id, while this coordinator is active.
#[derive(Default)]
struct Index {
    metas: HashMap<String, TxnMeta>,
    by_pid: HashMap<i64, String>,
}

/// Every transactional id this coordinator serves.
#[derive(Default)]
pub struct Txns {
    index: Mutex<Index>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Partitions leaders asked to add, not yet written: whoever writes next writes them all
    /// (a transaction's first batches reach its partitions' leaders at once).
    adds: Mutex<HashMap<String, Vec<QueuedAdd>>>,
}

/// A partition a leader asked to add: the producer id and epoch its batch carries, and the
/// partition.
type QueuedAdd = (i64, i16, Tp);

impl Txns {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().clone()
    }

    fn queue_add(&self, id: &str, add: QueuedAdd) {
        self.adds.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().push(add);
    }

    /// The partitions queued for `id` by the producer identity given.
    fn take_adds(&self, id: &str, producer_id: i64, epoch: i16) -> Vec<Tp> {
        let queued = self.adds.lock().unwrap_or_else(|p| p.into_inner()).remove(id).unwrap_or_default();
        queued.into_iter().filter(|(p, e, _)| (*p, *e) == (producer_id, epoch)).map(|(_, _, tp)| tp).collect()
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.lock().metas.get(id).cloned()
    }

    fn id_of(&self, producer_id: i64) -> Option<String> {
        self.lock().by_pid.get(&producer_id).cloned()
    }

    fn remember(&self, id: &str, m: TxnMeta) {
        let mut ix = self.lock();
        if let Some(old) = ix.metas.get(id).map(|o| o.producer_id).filter(|p| *p != m.producer_id) {
            ix.by_pid.remove(&old);
        }
        ix.by_pid.insert(m.producer_id, id.to_string());
        ix.metas.insert(id.to_string(), m);
    }

    /// Replaces everything (a coordinator taking over).
    pub fn load(&self, metas: HashMap<String, TxnMeta>) {
        let mut ix = self.lock();
        ix.by_pid = metas.iter().map(|(id, m)| (m.producer_id, id.clone())).collect();
        ix.metas = metas;
    }

    pub fn clear(&self) {
        *self.lock() = Index::default();
        self.adds.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Every transactional id with its state, by id.
    pub fn all(&self) -> BTreeMap<String, TxnMeta> {
        self.lock().metas.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// A partition of `group` (in `topic` and `partitions`, or any when empty) with offsets
    /// in a transaction not yet ended, if there is one.
    pub fn pending_offset(&self, group: &str, topic: &str, partitions: &[u32]) -> Option<Tp> {
        let ix = self.lock();
        ix.metas
            .values()
            .filter(|m| m.open())
            .flat_map(|m| m.offsets.iter())
            .filter(|o| o.group == group && (topic.is_empty() || o.topic == topic))
            .find(|o| partitions.is_empty() || partitions.contains(&o.partition))
            .map(|o| (o.topic.clone(), o.partition))
    }

    /// Open transactions whose timeout passed at `now`.
    fn expired(&self, now: i64) -> Vec<String> {
        let ix = self.lock();
        ix.metas
            .iter()
            .filter(|(_, m)| m.state == State::Ongoing && m.start_ms + m.timeout_ms as i64 <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Transactions decided but not finished (a predecessor's).
    fn preparing(&self) -> Vec<String> {
        self.lock().metas.iter().filter(|(_, m)| m.state.preparing()).map(|(id, _)| id.clone()).collect()
    }
}

/// Folds one record of `__transaction_state` into what was loaded so far.
pub fn apply(loaded: &mut HashMap<String, TxnMeta>, r: ConsumedRecord) {
    let Some(id) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string) else {
        tracing::warn!(partition = r.partition, offset = r.offset, "skipping an unreadable transactional id");
        return;
    };
    match r.value.as_deref().map(serde_json::from_slice::<TxnMeta>) {
        Some(Ok(m)) => {
            loaded.insert(id, m);
        }
        Some(Err(e)) => tracing::warn!(%id, error = %e, "skipping an unreadable transaction state"),
        None => {
            loaded.remove(&id);
        }
    }
}

/// Checks a transactional id: not empty, at most 255 bytes, no control characters.
pub fn validate_transactional_id(id: &str) -> Result<(), SluiceError> {
    crate::validate_id(id).map_err(|reason| {
        SluiceError::InvalidRequest(format!(
            "invalid transactional id '{}': {reason}",
            id.chars().take(60).collect::<String>()
        ))
    })
}

/// A producer epoch from the wire: 0 to 32767.
pub(crate) fn producer_epoch(epoch: i32) -> Result<i16, SluiceError> {
    i16::try_from(epoch)
        .ok()
        .filter(|e| *e >= 0)
        .ok_or_else(|| SluiceError::InvalidRequest(format!("producer epoch {epoch} is out of range (0 to 32767)")))
}

/// What a producer's identity is to a transactional id's state.
fn check_identity(id: &str, m: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), SluiceError> {
    if (producer_id, epoch) == (m.producer_id, m.epoch) {
        return Ok(());
    }
    if m.prev.is_some_and(|(p, e, _)| (p, e) == (producer_id, epoch)) && m.timed_out {
        return Err(SluiceError::InvalidTxnState {
            transactional_id: id.to_string(),
            reason: format!(
                "the transaction was aborted by the coordinator after its timeout of {} ms; abort it and begin again",
                m.timeout_ms
            ),
        });
    }
    Err(SluiceError::ProducerFenced { transactional_id: id.to_string(), producer_id, epoch, current: m.epoch })
}

/// The next identity after `m`'s: the next epoch, or a new producer id once epochs run out.
async fn next_epoch(c: &Coordinator, m: &mut TxnMeta) -> Result<(), SluiceError> {
    if m.epoch >= LAST_EPOCH {
        m.producer_id = c.producer_ids.next().await?;
        m.epoch = 0;
    } else {
        m.epoch += 1;
    }
    Ok(())
}

impl Coordinator {
    /// Runs `f` alone for transactional id `id` (after every earlier call for it), in a task
    /// of its own. The caller gets what `f` returns, or what it sent earlier through its
    /// [`Reply`] (it may go on working after answering, still alone); when no answer comes
    /// within [`CALL_WAIT`] the caller gets CONCURRENT_TRANSACTIONS (retriable) and the work
    /// goes on.
    async fn serialized<R, F, Fut>(self: &Arc<Self>, id: &str, f: F) -> Result<R, SluiceError>
    where
        R: Send + 'static,
        F: FnOnce(Arc<Self>, Reply<R>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, SluiceError>> + Send,
    {
        let lock = self.txns.lock_of(id);
        let me = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = Reply(Arc::new(Mutex::new(Some(tx))));
        tokio::spawn(async move {
            let _alone = lock.lock_owned().await;
            let r = f(me, reply.clone()).await;
            reply.send(r);
        });
        match tokio::time::timeout(CALL_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SluiceError::Internal("transaction task ended without an answer".into())),
            Err(_) => Err(SluiceError::ConcurrentTransactions {
                transactional_id: id.to_string(),
                state: "its previous operation is still running".into(),
            }),
        }
    }

    /// `id`'s state, with a decided transaction finished first (caller holds the id's lock):
    /// nothing may join or end a transaction before the previous one's markers are out.
    async fn settled(self: &Arc<Self>, id: &str) -> Result<Option<TxnMeta>, SluiceError> {
        self.txn_active()?;
        match self.txns.get(id) {
            Some(m) if m.state.preparing() => Ok(Some(self.finish(id, m, None).await?)),
            other => Ok(other),
        }
    }

    /// Writes `m` as `id`'s state, durably, then serves it.
    async fn write_txn(&self, topic: &LazyTopic, id: &str, m: TxnMeta) -> Result<TxnMeta, SluiceError> {
        let value = serde_json::to_vec(&m).map_err(|e| SluiceError::Internal(format!("transaction state: {e}")))?;
        topic
            .get()
            .await?
            .put(id, std::iter::once((Bytes::copy_from_slice(id.as_bytes()), Some(Bytes::from(value)))))
            .await?;
        self.txns.remember(id, m.clone());
        Ok(m)
    }

    /// `InitProducerId` with a transactional id: the id's producer id at its next epoch
    /// (fencing every older producer of the id), a new one for an id never seen. A
    /// transaction left open is aborted first, one left decided is finished.
    pub(crate) async fn init_transactional(
        self: &Arc<Self>,
        id: String,
        timeout_ms: u32,
    ) -> Result<(i64, i16), SluiceError> {
        validate_transactional_id(&id)?;
        let timeout_ms = if timeout_ms == 0 { DEFAULT_TIMEOUT_MS } else { timeout_ms };
        if timeout_ms > MAX_TIMEOUT_MS {
            return Err(SluiceError::InvalidRequest(format!(
                "transaction timeout {timeout_ms} ms is longer than the maximum {MAX_TIMEOUT_MS} ms"
            )));
        }
        self.txn_active()?;
        let key = id.clone();
        self.serialized(&key, move |c, _| async move {
            let (_, topic) = c.txn_active()?;
            let now = now_ms();
            // An open transaction is aborted first: its markers carry the next epoch, which
            // the new producer gets (its old producer never learnt it). Otherwise the epoch
            // moves on here, also after finishing a decided transaction, whose producer may
            // have been told that transaction's next epoch already.
            let (mut m, ended) = match c.txns.get(&id) {
                None => {
                    let producer_id = c.producer_ids.next().await?;
                    let m = TxnMeta {
                        producer_id,
                        epoch: 0,
                        prev: None,
                        timeout_ms,
                        state: State::Empty,
                        timed_out: false,
                        partitions: BTreeSet::new(),
                        offsets: Vec::new(),
                        start_ms: 0,
                        update_ms: now,
                        keeps_epoch: false,
                        client_adds: false,
                    };
                    let m = c.write_txn(&topic, &id, m).await?;
                    tracing::info!(transactional_id = %id, producer_id, "transactional id registered");
                    return Ok((m.producer_id, m.epoch));
                }
                Some(m) if m.state.preparing() => (c.finish(&id, m, None).await?, false),
                Some(m) if m.state == State::Ongoing => {
                    tracing::info!(transactional_id = %id, "a new producer took over; aborting the open transaction");
                    (c.end(&id, m, false, false, false, None).await?, true)
                }
                Some(m) => (m, false),
            };
            if !ended {
                next_epoch(&c, &mut m).await?;
            }
            m.prev = None;
            m.timeout_ms = timeout_ms;
            m.timed_out = false;
            // Whichever kind of client the new producer is, it says so with its first add.
            m.client_adds = false;
            m.update_ms = now_ms();
            let m = c.write_txn(&topic, &id, m).await?;
            tracing::info!(transactional_id = %id, producer_id = m.producer_id, epoch = m.epoch, "transactional producer initialised");
            Ok((m.producer_id, m.epoch))
        })
        .await
    }

    /// A partition leader asks to add a partition to the producer's transaction before
    /// writing its first transactional batch there; or (`from_client`) a Kafka client
    /// announces it, after which leaders' calls for the id only verify.
    pub(crate) async fn add_partition(
        self: &Arc<Self>,
        producer_id: i64,
        epoch: i16,
        tp: Tp,
        from_client: bool,
    ) -> Result<(), SluiceError> {
        self.txn_active()?;
        let id = self.txns.id_of(producer_id).ok_or(SluiceError::InvalidProducerIdMapping { producer_id, epoch })?;
        let key = id.clone();
        self.txns.queue_add(&id, (producer_id, epoch, tp.clone()));
        self.serialized(&key, move |c, _| async move {
            let (_, topic) = c.txn_active()?;
            let m = c.settled(&id).await?;
            let m = m.filter(|m| m.producer_id == producer_id || m.prev.is_some_and(|p| p.0 == producer_id));
            let m = m.ok_or(SluiceError::InvalidProducerIdMapping { producer_id, epoch })?;
            check_identity(&id, &m, producer_id, epoch)?;
            if m.state == State::Ongoing && m.partitions.contains(&tp) && (m.client_adds || !from_client) {
                // Written with an earlier caller's partitions.
                return Ok(());
            }
            if m.client_adds && !from_client {
                return Err(SluiceError::InvalidTxnState {
                    transactional_id: id.clone(),
                    reason: format!(
                        "partition {} of '{}' is not in the ongoing transaction (its producer announces its partitions): a batch of an ended transaction?",
                        tp.1, tp.0
                    ),
                });
            }
            let mut m = m.joined(now_ms());
            m.client_adds |= from_client;
            m.partitions.extend(c.txns.take_adds(&id, producer_id, epoch));
            m.partitions.insert(tp);
            tracing::debug!(transactional_id = %id, partitions = m.partitions.len(), "partitions added to the transaction");
            c.write_txn(&topic, &id, m).await.map(|_| ())
        })
        .await
    }

    /// `EndTxn`: commits or aborts; answers the producer's next identity.
    pub(crate) async fn end_txn(self: &Arc<Self>, req: v1::EndTxnRequest) -> Result<(i64, i16), SluiceError> {
        let id = req.transactional_id;
        validate_transactional_id(&id)?;
        let epoch = producer_epoch(req.producer_epoch)?;
        self.txn_active()?;
        if self.txns.get(&id).is_none() {
            // Before taking a lock for it: ids nobody registered take no memory.
            return Err(SluiceError::UnknownTransactionalId(id));
        }
        let key = id.clone();
        self.serialized(&key, move |c, reply| async move {
            let mut m = c.settled(&id).await?.ok_or_else(|| SluiceError::UnknownTransactionalId(id.clone()))?;
            let commit = req.commit;
            // A producer keeping its epoch ends each transaction under the same identity: a
            // repeated end is told apart by nothing being open.
            let open = m.state == State::Ongoing;
            if req.keep_epoch && !open && (req.producer_id, epoch) == (m.producer_id, m.epoch) {
                return match m.prev {
                    Some((p, e, committed)) if (p, e) == (m.producer_id, m.epoch) && committed != commit => {
                        Err(SluiceError::InvalidTxnState {
                            transactional_id: id.clone(),
                            reason: format!(
                                "the transaction already {}",
                                if committed { "committed" } else { "aborted" }
                            ),
                        })
                    }
                    _ => Ok((m.producer_id, m.epoch)),
                };
            }
            if (req.producer_id, epoch) == (m.producer_id, m.epoch) {
                m.keeps_epoch = req.keep_epoch;
                let done = c.end(&id, m, commit, true, false, Some(&reply)).await?;
                return Ok((done.producer_id, done.epoch));
            }
            let Some((_, _, committed)) = m.prev.filter(|(p, e, _)| (*p, *e) == (req.producer_id, epoch)) else {
                check_identity(&id, &m, req.producer_id, epoch)?;
                return Err(SluiceError::InvalidTxnState {
                    transactional_id: id.clone(),
                    reason: format!("epoch {epoch} is newer than the coordinator's {}", m.epoch),
                });
            };
            // A producer keeping its epoch cannot take the one a timeout moved it to: it is
            // told it was fenced, so that it starts over (as Kafka tells such clients).
            if req.keep_epoch && m.timed_out {
                return Err(SluiceError::ProducerFenced {
                    transactional_id: id.clone(),
                    producer_id: req.producer_id,
                    epoch,
                    current: m.epoch,
                });
            }
            // A repeated end (its answer was lost), or one after the coordinator aborted.
            if committed == commit {
                return Ok((m.producer_id, m.epoch));
            }
            let reason = if m.timed_out {
                format!(
                    "cannot commit: the coordinator aborted the transaction after its timeout of {} ms",
                    m.timeout_ms
                )
            } else if committed {
                "the transaction already committed".to_string()
            } else {
                "cannot commit: the transaction already aborted".to_string()
            };
            Err(SluiceError::InvalidTxnState { transactional_id: id.clone(), reason })
        })
        .await
    }

    /// Ends `m`'s transaction (caller holds the id's lock): decided, markers written, offsets
    /// committed, completed. `keep_prev`: the producer may repeat its end with its old
    /// identity (false when a new producer takes over, fencing the old one). `timed_out`: the
    /// coordinator aborts it after its timeout.
    async fn end(
        self: &Arc<Self>,
        id: &str,
        m: TxnMeta,
        commit: bool,
        keep_prev: bool,
        timed_out: bool,
        early: Option<&Reply<(i64, i16)>>,
    ) -> Result<TxnMeta, SluiceError> {
        let (_, topic) = self.txn_active()?;
        let mut p = m.clone();
        // Only a producer's own end keeps its epoch; a timeout or a new producer fences it.
        p.keeps_epoch = m.keeps_epoch && keep_prev && !timed_out;
        p.prev = keep_prev.then_some((m.producer_id, m.epoch, commit));
        p.update_ms = now_ms();
        p.timed_out = timed_out;
        if m.state != State::Ongoing {
            // Nothing open: only the epoch moves on, so that no late batch of this (empty)
            // transaction can open one.
            next_epoch(self, &mut p).await?;
            p.state = if commit { State::CompleteCommit } else { State::CompleteAbort };
            return self.write_txn(&topic, id, p).await;
        }
        // The markers carry the next epoch; epochs run out one end later, at completion.
        if !p.keeps_epoch {
            p.epoch = m.epoch + 1;
        }
        p.state = if commit { State::PrepareCommit } else { State::PrepareAbort };
        let p = self.write_txn(&topic, id, p).await?;
        tracing::debug!(transactional_id = %id, commit, partitions = p.partitions.len(), "transaction decided");
        self.finish(id, p, early).await
    }

    /// Finishes a decided transaction (caller holds the id's lock): a marker on every
    /// partition, offsets written on commit, then `Complete*`. Once the markers and offsets
    /// are written the outcome is settled (a successor finishing it again writes nothing new):
    /// `early` is answered then, before `Complete*` is written.
    async fn finish(
        self: &Arc<Self>,
        id: &str,
        p: TxnMeta,
        early: Option<&Reply<(i64, i16)>>,
    ) -> Result<TxnMeta, SluiceError> {
        let (coordinator_epoch, topic) = self.txn_active()?;
        let commit = p.state == State::PrepareCommit;
        let writes = p.partitions.iter().map(|(t, partition)| {
            let m = MarkerWrite {
                topic: t.clone(),
                partition: *partition,
                producer_id: p.producer_id,
                producer_epoch: p.epoch,
                commit,
                coordinator_epoch,
                keeps_epoch: p.keeps_epoch,
            };
            async move { (self.router.write_txn_marker(&m, || self.holds_epoch(coordinator_epoch)).await, m) }
        });
        for (r, m) in futures_util::future::join_all(writes).await {
            match r {
                Ok(_) | Err(MarkerError::Gone) => {}
                Err(MarkerError::Refused(e)) => {
                    return Err(SluiceError::Internal(format!(
                        "transaction '{id}': marker refused by partition {} of '{}': {}",
                        m.partition, m.topic, e.message
                    )));
                }
                Err(MarkerError::Stopped(why)) => {
                    return Err(SluiceError::CoordinatorNotAvailable(format!(
                        "lost the coordinator role while ending transaction '{id}' ({why})"
                    )));
                }
            }
        }
        if commit {
            self.commit_txn_offsets(&p).await?;
        }
        let mut done = p.clone();
        done.state = if commit { State::CompleteCommit } else { State::CompleteAbort };
        done.partitions.clear();
        done.offsets.clear();
        done.start_ms = 0;
        done.update_ms = now_ms();
        if done.epoch > LAST_EPOCH {
            // Not answered early: a successor finishing it would choose another id.
            done.producer_id = self.producer_ids.next().await?;
            done.epoch = 0;
        } else if let Some(reply) = early {
            // Served as complete from now on: nothing of it is pending any more.
            self.txns.remember(id, done.clone());
            reply.send(Ok((done.producer_id, done.epoch)));
        }
        let done = self.write_txn(&topic, id, done).await?;
        tracing::debug!(transactional_id = %id, commit, "transaction complete");
        Ok(done)
    }

    /// Writes the offsets sent in a committing transaction as the groups' committed offsets.
    async fn commit_txn_offsets(self: &Arc<Self>, p: &TxnMeta) -> Result<(), SluiceError> {
        let (epoch, store) = self.active()?;
        let mut by_group: BTreeMap<&str, Vec<(Tp, Option<Committed>)>> = BTreeMap::new();
        let now = now_ms();
        for o in &p.offsets {
            let c = Committed {
                offset: o.offset,
                metadata: o.metadata.clone(),
                commit_time_ms: now,
                generation: o.generation,
                epoch,
                topic_id: o.topic_id,
            };
            by_group.entry(o.group.as_str()).or_default().push(((o.topic.clone(), o.partition), Some(c)));
        }
        for (group, changes) in by_group {
            store.write(group, &changes).await?;
            self.remember(group, changes);
        }
        Ok(())
    }

    /// `TxnOffsetCommit`: offsets that become the group's when the transaction commits.
    pub(crate) async fn txn_offset_commit(
        self: &Arc<Self>,
        req: v1::TxnOffsetCommitRequest,
    ) -> Result<Vec<v1::PartitionCommitResult>, SluiceError> {
        let id = req.transactional_id.clone();
        validate_transactional_id(&id)?;
        crate::validate_group_id(&req.group_id)?;
        let epoch = producer_epoch(req.producer_epoch)?;
        self.txn_active()?;
        if self.txns.get(&id).is_none() {
            // Before taking a lock for it: ids nobody registered take no memory.
            return Err(SluiceError::UnknownTransactionalId(id));
        }
        let key = id.clone();
        self.serialized(&key, move |c, _| async move {
            let (_, topic) = c.txn_active()?;
            let m = c.settled(&id).await?.ok_or_else(|| SluiceError::UnknownTransactionalId(id.clone()))?;
            check_identity(&id, &m, req.producer_id, epoch)?;
            let mut results = Vec::with_capacity(req.offsets.len());
            let mut accepted = Vec::new();
            for o in &req.offsets {
                let check = c.check_offset(&req.group_id, &req.member_id, req.generation, o);
                results.push(v1::PartitionCommitResult {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    error: check.as_ref().err().map(SluiceError::to_proto),
                });
                if let Ok(topic_id) = check {
                    accepted.push(TxnOffset {
                        group: req.group_id.clone(),
                        topic: o.topic.clone(),
                        partition: o.partition,
                        offset: o.offset,
                        metadata: o.metadata.clone(),
                        generation: req.generation,
                        topic_id,
                    });
                }
            }
            if accepted.is_empty() {
                return Ok(results);
            }
            let mut m = m.joined(now_ms());
            for o in accepted {
                m.offsets.retain(|x| (&x.group, &x.topic, x.partition) != (&o.group, &o.topic, o.partition));
                m.offsets.push(o);
            }
            c.write_txn(&topic, &id, m).await?;
            Ok(results)
        })
        .await
    }

    /// Checks one offset sent in a transaction; its topic's id when it is fine.
    fn check_offset(
        &self,
        group: &str,
        member: &str,
        generation: u64,
        o: &v1::CommittedOffset,
    ) -> Result<u64, SluiceError> {
        let topic = self.view.borrow().topics.get(&o.topic).map(|t| (t.topic_id, t.partitions.len() as u32));
        let Some((topic_id, count)) = topic else { return Err(SluiceError::UnknownTopic(o.topic.clone())) };
        if o.partition >= count {
            return Err(SluiceError::UnknownPartition { topic: o.topic.clone(), partition: o.partition, count });
        }
        if o.offset < 0 {
            return Err(SluiceError::InvalidRequest(format!("offset {} is negative", o.offset)));
        }
        if o.metadata.len() > crate::store::MAX_METADATA {
            return Err(SluiceError::InvalidRequest(format!(
                "metadata of {} bytes is longer than {}",
                o.metadata.len(),
                crate::store::MAX_METADATA
            )));
        }
        if !member.is_empty() {
            // Fenced like a member's own commit (KIP-447): a member that lost the partition
            // in a rebalance cannot commit it in a transaction either.
            let tp = (o.topic.clone(), o.partition);
            self.groups.read(group, |g| g.check_commit(member, generation, &tp)).unwrap_or_else(|| {
                Err(SluiceError::UnknownMember { group: group.to_string(), member: member.to_string() })
            })?;
        }
        Ok(topic_id)
    }

    /// Whether this coordinator is still the active one of `epoch`.
    fn holds_epoch(&self, epoch: u64) -> bool {
        self.active().is_ok_and(|(e, _)| e == epoch)
    }

    /// Until the role of `epoch` is lost, twice a second: finishes decided transactions
    /// (a predecessor's, or one whose finishing failed: a leader or the offsets topic away),
    /// and aborts open transactions whose timeout passed. One task at a time per id.
    pub(crate) async fn run_transactions(self: Arc<Self>, epoch: u64) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        loop {
            tick.tick().await;
            if !self.holds_epoch(epoch) {
                return;
            }
            while let Ok(id) = done_rx.try_recv() {
                busy.remove(&id);
            }
            let due = self.txns.preparing().into_iter().chain(self.txns.expired(now_ms()));
            for id in due {
                if !busy.insert(id.clone()) {
                    continue;
                }
                let (c, done) = (self.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let key = id.clone();
                    let r = c
                        .serialized(&key, move |c, _| async move {
                            match c.settled(&id).await? {
                                Some(m) if m.state == State::Ongoing && m.start_ms + m.timeout_ms as i64 <= now_ms() => {
                                    tracing::info!(transactional_id = %id, timeout_ms = m.timeout_ms, "transaction timed out; aborting it");
                                    c.end(&id, m, false, true, true, None).await.map(|_| ())
                                }
                                _ => Ok(()),
                            }
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(transactional_id = %key, error = %e, "transaction not finished or aborted yet; trying again");
                    }
                    let _ = done.send(key);
                });
            }
        }
    }
}

/// The answer of a [`Coordinator::serialized`] call, sent at most once.
pub(crate) struct Reply<R>(Arc<Mutex<Option<Answer<R>>>>);

type Answer<R> = tokio::sync::oneshot::Sender<Result<R, SluiceError>>;

impl<R> Clone for Reply<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<R> Reply<R> {
    fn send(&self, r: Result<R, SluiceError>) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(r);
        }
    }
}

/// Loads `__transaction_state` whole (nothing when it was never created).
pub async fn load(topic: &LazyTopic) -> Result<HashMap<String, TxnMeta>, SluiceError> {
    let mut loaded = HashMap::new();
    if let Some(t) = topic.existing() {
        t.load(|r| apply(&mut loaded, r)).await?;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: State) -> TxnMeta {
        TxnMeta {
            producer_id: 7,
            epoch: 3,
            prev: Some((7, 2, true)),
            timeout_ms: 1000,
            state,
            timed_out: false,
            partitions: [("t".to_string(), 1)].into(),
            offsets: vec![],
            start_ms: 10,
            update_ms: 20,
            keeps_epoch: false,
            client_adds: false,
        }
    }

    #[test]
    fn states_round_trip_and_identities_are_checked() {
        let m = meta(State::Ongoing);
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<TxnMeta>(&json).unwrap(), m);
        assert!(check_identity("x", &m, 7, 3).is_ok());
        let fenced = check_identity("x", &m, 7, 2).unwrap_err();
        assert!(matches!(fenced, SluiceError::ProducerFenced { current: 3, .. }), "{fenced:?}");
        let timed_out = TxnMeta { timed_out: true, ..m.clone() };
        assert!(matches!(check_identity("x", &timed_out, 7, 2), Err(SluiceError::InvalidTxnState { .. })));
        assert!(matches!(check_identity("x", &timed_out, 7, 1), Err(SluiceError::ProducerFenced { .. })));
    }

    #[test]
    fn joining_begins_a_transaction_once() {
        let done = meta(State::CompleteCommit);
        let j = done.joined(50);
        assert_eq!((j.state, j.start_ms, j.partitions.len()), (State::Ongoing, 50, 0));
        let again = j.joined(60);
        assert_eq!((again.start_ms, again.update_ms), (50, 60), "an open transaction keeps its start");
    }

    #[test]
    fn pending_offsets_are_those_of_open_transactions() {
        let txns = Txns::default();
        let o = TxnOffset {
            group: "g".into(),
            topic: "t".into(),
            partition: 2,
            offset: 5,
            metadata: String::new(),
            generation: 1,
            topic_id: 9,
        };
        txns.remember("a", TxnMeta { offsets: vec![o.clone()], ..meta(State::Ongoing) });
        assert_eq!(txns.pending_offset("g", "", &[]), Some(("t".to_string(), 2)));
        assert_eq!(txns.pending_offset("g", "t", &[2, 3]), Some(("t".to_string(), 2)));
        assert_eq!(txns.pending_offset("g", "t", &[3]), None, "another partition is stable");
        assert_eq!(txns.pending_offset("g", "other", &[]), None);
        assert_eq!(txns.pending_offset("h", "", &[]), None);
        txns.remember("a", TxnMeta { offsets: vec![o], ..meta(State::CompleteCommit) });
        assert_eq!(txns.pending_offset("g", "", &[]), None, "an ended transaction has none pending");
        assert_eq!(txns.id_of(7).as_deref(), Some("a"));
        assert_eq!(txns.expired(i64::MAX), Vec::<String>::new());
        txns.remember("b", TxnMeta { producer_id: 8, ..meta(State::Ongoing) });
        assert_eq!(txns.expired(1010), vec!["b".to_string()]);
        assert_eq!(txns.expired(1009), Vec::<String>::new());
    }
}
