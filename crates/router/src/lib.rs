//! The data path of a Sluice cluster, as a library: what the gateway does, usable in process by
//! any service that reads or writes topics (the group coordinator's offsets topic today; the
//! transaction coordinator, connect runner, stream processor and Kafka listener next).
//!
//! A [`Router`] follows the metadata view (through a watch, never polled), resolves topics and
//! partitions to their leaders ([`route`]), keeps one connection per partition node
//! ([`pool::NodePool`]; nodes living in the same process are called directly), and offers:
//! - produce ([`produce`]): plain records partitioned and encoded, ready batches forwarded
//!   untouched, records a leader change left unwritten sent again to the new leader;
//! - fetch ([`fetch`]): one stream fanned out to one read stream per leader node, under one
//!   credit budget for the whole stream, following leader changes;
//! - the admin operations ([`topic`], [`offsets`], [`nodes`], [`elect`]).
//!
//! Nothing here speaks to clients: the gateway binary is a thin tonic layer over this crate.
//! Failures are [`SluiceError`]s, turned into gRPC statuses in one place
//! (`sluice_core::error`).

pub mod elect;
pub mod fetch;
pub mod internal;
pub mod markers;
pub mod metrics;
pub mod nodes;
pub mod offsets;
pub mod pool;
pub mod produce;
pub mod route;
pub mod topic;

use std::pin::Pin;
use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_meta::{ClusterView, MetaStore, TopicLimits};
use sluice_proto::v1::*;
use sluice_runtime::GatewaySettings;
use tokio::sync::watch;
use tokio_stream::Stream;

/// A stream of answers, as tonic serves them.
pub type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// The data path of one process: routing state, node connections and instruments.
pub struct Router {
    pub meta: Arc<dyn MetaStore>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub pool: pool::NodePool,
    pub settings: GatewaySettings,
    pub metrics: metrics::GatewayMetrics,
}

impl Router {
    pub fn new(meta: Arc<dyn MetaStore>, settings: GatewaySettings) -> Arc<Self> {
        let view = meta.view();
        Arc::new(Self { meta, view, pool: pool::NodePool::default(), settings, metrics: Default::default() })
    }

    pub fn limits(&self) -> TopicLimits {
        TopicLimits { max_partitions: self.settings.max_partitions }
    }

    /// The current metadata view.
    pub fn snapshot(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub async fn create_topic(&self, req: CreateTopicRequest) -> Result<CreateTopicResponse, SluiceError> {
        topic::create::handle(self, req).await
    }

    pub async fn create_partitions(
        &self,
        req: CreatePartitionsRequest,
    ) -> Result<CreatePartitionsResponse, SluiceError> {
        topic::partitions::handle(self, req).await
    }

    pub async fn alter_topic_config(
        &self,
        req: AlterTopicConfigRequest,
    ) -> Result<AlterTopicConfigResponse, SluiceError> {
        topic::config::handle(self, req).await
    }

    pub async fn delete_topic(&self, req: DeleteTopicRequest) -> Result<DeleteTopicResponse, SluiceError> {
        topic::delete::handle(self, req).await
    }

    pub fn list_topics(&self, req: ListTopicsRequest) -> ListTopicsResponse {
        topic::list::handle(self, req)
    }

    pub async fn describe_topic(&self, req: DescribeTopicRequest) -> Result<DescribeTopicResponse, SluiceError> {
        topic::describe::handle(self, req).await
    }

    pub async fn list_offsets(&self, req: ListOffsetsRequest) -> Result<ListOffsetsResponse, SluiceError> {
        offsets::handle(self, req).await
    }

    /// The offsets `spec` designates (at `timestamp_ms` for a timestamp query) of
    /// `partitions` of `topic` (all when empty), as a reader at `isolation` sees the end.
    pub async fn offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: OffsetSpec,
        timestamp_ms: i64,
        isolation: IsolationLevel,
    ) -> Result<Vec<PartitionOffset>, SluiceError> {
        let req = ListOffsetsRequest {
            topic: topic.to_string(),
            partitions,
            spec: spec as i32,
            timestamp_ms,
            isolation_level: isolation as i32,
        };
        Ok(self.list_offsets(req).await?.offsets)
    }

    pub async fn describe_producers(
        &self,
        req: DescribeProducersRequest,
    ) -> Result<DescribeProducersResponse, SluiceError> {
        offsets::describe_producers(self, req).await
    }

    pub fn list_nodes(&self, req: ListNodesRequest) -> ListNodesResponse {
        nodes::handle(self, req)
    }

    pub async fn elect_leaders(&self, req: ElectLeadersRequest) -> Result<ElectLeadersResponse, SluiceError> {
        elect::handle(self, req).await
    }

    /// Produces one request and waits for its answer (per-partition outcomes inside it).
    /// Requests that must keep their order relative to each other go through
    /// [`produce::serve`] instead.
    pub async fn produce(self: &Arc<Self>, req: ProduceRequest) -> Result<ProduceResponse, SluiceError> {
        let mut sticky = sluice_core::partitioner::StickyPartitioner::new(self.settings.batch_bytes, rand::random());
        Ok(produce::dispatch(self, req, &mut sticky, &Arc::default()).await?.await)
    }
}
