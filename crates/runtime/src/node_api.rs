//! How a gateway talks to a partition node: over gRPC to another process, or in process when
//! both live in one (`sluice dev`), which saves an encode, a loopback hop and a decode per
//! batch. Both sides use the same request and response messages.

use std::pin::Pin;

use sluice_proto::v1::{
    AppendRequest, AppendResponse, PartitionOffsetsRequest, PartitionOffsetsResponse, ReadRequest, ReadResponse,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// A stream of answers from a node.
pub type NodeStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The partition-node API as the gateway uses it.
#[tonic::async_trait]
pub trait NodeApi: Send + Sync {
    /// Opens an append stream fed by `input`.
    async fn append(&self, input: mpsc::Receiver<AppendRequest>) -> Result<NodeStream<AppendResponse>, Status>;
    /// Opens a read stream fed by `input` (a `ReadStart`, then credit).
    async fn read(&self, input: mpsc::Receiver<ReadRequest>) -> Result<NodeStream<ReadResponse>, Status>;
    async fn partition_offsets(&self, req: PartitionOffsetsRequest) -> Result<PartitionOffsetsResponse, Status>;
}
