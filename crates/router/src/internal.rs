//! Internal compacted topics a service keeps its state in (`__consumer_offsets`,
//! `__transaction_state`, Connect's configs, offsets and status), written and read back
//! through the data path, in process: one writer per partition so that the records of a key
//! keep their order, and a whole-topic read at start-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::SluiceError;
use sluice_proto::v1::{
    self, Acks, ConsumedRecord, CreateTopicRequest, DescribeTopicRequest, FetchPartition, FetchStart, ListNodesRequest,
    OffsetSpec, PartitionOffset, ProduceRequest, Record,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{Router, fetch};

/// Pause between two tries of a write that failed with a retriable error.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long one write keeps trying through leader changes and retriable failures.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Credit of the fetch that reads the topic back (and each node's window).
const LOAD_CREDIT: u64 = 8 << 20;

/// Whether the writer still holds the role it writes for (checked between write retries).
pub type RoleCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// An internal compacted topic the coordinator keeps its state in (`__consumer_offsets`,
/// `__transaction_state`), written and read back through the data path, in process.
pub struct InternalTopic {
    router: Arc<Router>,
    name: &'static str,
    partitions: u32,
    holds_role: RoleCheck,
    /// One writer at a time per partition: records of one key keep the order in which they
    /// were written, retries included (a later write never lands before an earlier one).
    writers: Vec<tokio::sync::Mutex<()>>,
}

impl InternalTopic {
    /// Creates the topic when it is missing (`partitions`, replication factor up to
    /// `replication_factor` within the live nodes, compacted).
    pub async fn open(
        router: Arc<Router>,
        name: &'static str,
        partitions: u32,
        replication_factor: u32,
        holds_role: RoleCheck,
    ) -> Result<Self, SluiceError> {
        Self::open_with(router, name, partitions, replication_factor, holds_role, true)
            .await?
            .ok_or_else(|| SluiceError::Internal(format!("the '{name}' topic was not created")))
    }

    /// [`InternalTopic::open`], or None when the topic does not exist and `create` is false.
    pub async fn open_with(
        router: Arc<Router>,
        name: &'static str,
        partitions: u32,
        replication_factor: u32,
        holds_role: RoleCheck,
        create: bool,
    ) -> Result<Option<Self>, SluiceError> {
        let describe = || router.describe_topic(DescribeTopicRequest { name: name.to_string() });
        let partitions = match describe().await {
            Ok(d) => d.topic.map_or(0, |t| t.partitions.len() as u32),
            Err(SluiceError::UnknownTopic(_)) if !create => return Ok(None),
            Err(SluiceError::UnknownTopic(_)) => {
                let live = router.list_nodes(ListNodesRequest {}).nodes.iter().filter(|n| n.alive).count() as u32;
                let req = CreateTopicRequest {
                    name: name.to_string(),
                    partitions,
                    replication_factor: replication_factor.min(live).max(1),
                    config: [("cleanup.policy".to_string(), "compact".to_string())].into(),
                };
                match router.create_topic(req).await {
                    Ok(d) => d.topic.map_or(0, |t| t.partitions.len() as u32),
                    Err(SluiceError::TopicExists(_)) => {
                        describe().await?.topic.map_or(0, |t| t.partitions.len() as u32)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if partitions == 0 {
            return Err(SluiceError::Internal(format!("the '{name}' topic has no partitions")));
        }
        let writers = (0..partitions).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Some(Self { router, name, partitions, holds_role, writers }))
    }

    /// The data path it goes through.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The partition the records of `owner` (a group, a transactional id) go to.
    fn partition_of(&self, owner: &str) -> u32 {
        sluice_core::partitioner::partition_for_key(owner.as_bytes(), self.partitions)
    }

    /// One acks=all produce of `records` to `owner`'s partition, tried again on retriable
    /// failures until [`WRITE_TIMEOUT`] (writing a key twice is harmless: the last value wins).
    pub async fn put(
        &self,
        owner: &str,
        records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    ) -> Result<(), SluiceError> {
        let partition = self.partition_of(owner);
        let records: Vec<Record> = records
            .map(|(key, value)| Record { key: Some(key), value, partition: Some(partition), ..Record::default() })
            .collect();
        // The deadline covers the wait for the partition's writer too.
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let name = self.name;
        let _order = tokio::time::timeout_at(deadline, self.writers[partition as usize].lock())
            .await
            .map_err(|_| SluiceError::Timeout(format!("the '{name}' topic was busy for {WRITE_TIMEOUT:?}")))?;
        let mut id = 0;
        loop {
            id += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let req = ProduceRequest {
                id,
                topic: name.to_string(),
                acks: Acks::All as i32,
                records: records.clone(),
                timeout_ms: left.as_millis().clamp(1, u32::MAX as u128) as u32,
                ..ProduceRequest::default()
            };
            let resp = self.router.produce(req).await?;
            let failed = resp.error.or_else(|| resp.partitions.into_iter().find_map(|p| p.error));
            let Some(e) = failed else { return Ok(()) };
            // A coordinator that lost its role stops: a late write could land after its
            // successor's write of the same key.
            if !e.retriable || tokio::time::Instant::now() + RETRY_PAUSE >= deadline || !(self.holds_role)() {
                return Err(relayed(name, &e));
            }
            tracing::debug!(topic = name, owner, reason = %e.message, "internal topic write failed; trying again");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Reads the whole topic up to its high watermark, handing each record to `apply` in
    /// offset order per partition.
    pub async fn load(&self, mut apply: impl FnMut(ConsumedRecord)) -> Result<(), SluiceError> {
        let name = self.name;
        let ends = list_offsets(&self.router, name, vec![], OffsetSpec::Latest, 0).await?;
        let mut wanted: BTreeMap<u32, i64> = BTreeMap::new();
        for e in ends {
            if let Some(err) = e.error {
                return Err(SluiceError::NodeUnavailable(err.message));
            }
            if e.offset > 0 {
                wanted.insert(e.partition, e.offset);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let start = FetchStart {
            topic: name.to_string(),
            partitions: wanted.keys().map(|p| FetchPartition { partition: *p, offset: -2 }).collect(),
            max_bytes: LOAD_CREDIT,
            plain_records: true,
            isolation_level: sluice_proto::v1::IsolationLevel::ReadUncommitted as i32,
        };
        let (credit, credits) = mpsc::unbounded_channel::<u64>();
        let mut stream = fetch::serve(self.router.clone(), start, UnboundedReceiverStream::new(credits)).await?;
        let mut positions: BTreeMap<u32, i64> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while wanted.iter().any(|(p, end)| positions.get(p).copied().unwrap_or(0) < *end) {
            let resp = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(SluiceError::Timeout(format!("reading the '{name}' topic took more than 60 s"))),
                Ok(None) => return Err(SluiceError::NodeUnavailable(format!("the '{name}' topic read ended early"))),
                Ok(Some(Err(s))) => return Err(SluiceError::NodeUnavailable(s.message().to_string())),
                Ok(Some(Ok(r))) => r,
            };
            if let Some(e) = resp.error {
                return Err(relayed(name, &e));
            }
            let _ = credit.send(resp.charged_bytes);
            positions.insert(resp.partition, resp.next_offset);
            for r in resp.records {
                apply(r);
            }
        }
        Ok(())
    }
}

/// An internal topic created on its first write: a cluster that never needs it (no
/// transactions) never pays for its partitions.
pub struct LazyTopic {
    router: Arc<Router>,
    name: &'static str,
    partitions: u32,
    replication_factor: u32,
    holds_role: RoleCheck,
    cell: tokio::sync::OnceCell<InternalTopic>,
}

impl LazyTopic {
    /// Opens the topic when it exists (a coordinator taking over reads it).
    pub async fn open(
        router: Arc<Router>,
        name: &'static str,
        partitions: u32,
        replication_factor: u32,
        holds_role: RoleCheck,
    ) -> Result<Self, SluiceError> {
        let cell = tokio::sync::OnceCell::new();
        let existing =
            InternalTopic::open_with(router.clone(), name, partitions, replication_factor, holds_role.clone(), false)
                .await?;
        if let Some(t) = existing {
            let _ = cell.set(t);
        }
        Ok(Self { router, name, partitions, replication_factor, holds_role, cell })
    }

    /// The topic when it exists.
    pub fn existing(&self) -> Option<&InternalTopic> {
        self.cell.get()
    }

    /// The topic, created now when it does not exist yet.
    pub async fn get(&self) -> Result<&InternalTopic, SluiceError> {
        self.cell
            .get_or_try_init(|| {
                let (router, role) = (self.router.clone(), self.holds_role.clone());
                InternalTopic::open(router, self.name, self.partitions, self.replication_factor, role)
            })
            .await
    }
}

/// Earliest, latest or by-timestamp offsets of a topic's partitions (all when empty).
pub async fn list_offsets(
    router: &Router,
    topic: &str,
    partitions: Vec<u32>,
    spec: OffsetSpec,
    timestamp_ms: i64,
) -> Result<Vec<PartitionOffset>, SluiceError> {
    router.offsets(topic, partitions, spec, timestamp_ms, sluice_proto::v1::IsolationLevel::ReadUncommitted).await
}

/// A failure a partition node reported, as the writer reports it on.
fn relayed(topic: &str, e: &v1::Error) -> SluiceError {
    let what = format!("the '{topic}' topic: {}", e.message);
    if e.retriable { SluiceError::NodeUnavailable(what) } else { SluiceError::Internal(what) }
}
