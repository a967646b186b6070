//! The `sluice.v1.PartitionNode` service: one file per RPC.

mod append;
mod marker;
mod offsets;
mod read;
mod replicate;

use std::pin::Pin;
use std::sync::Arc;

use sluice_proto::v1::partition_node_server::{PartitionNode, PartitionNodeServer};
use sluice_proto::v1::{
    AppendRequest, AppendResponse, EpochEndRequest, EpochEndResponse, PartitionOffsetsRequest,
    PartitionOffsetsResponse, ReadRequest, ReadResponse, ReplicaRequest, ReplicaResponse, WriteTxnMarkerRequest,
    WriteTxnMarkerResponse,
};
use sluice_runtime::node_api::{NodeApi, NodeStream};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Node;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the handlers read requests from: a gRPC stream, or a channel in process.
pub(crate) trait Input<T>: Stream<Item = Result<T, Status>> + Send + Unpin + 'static {}
impl<T, S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static> Input<T> for S {}

/// The gRPC face of a [`Node`].
pub struct NodeService {
    node: Arc<Node>,
}

impl NodeService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    pub fn into_server(self) -> PartitionNodeServer<Self> {
        PartitionNodeServer::new(self).max_decoding_message_size(80 << 20).max_encoding_message_size(80 << 20)
    }
}

/// The node called in process by a gateway in the same process (`sluice dev`).
pub struct LocalNode(pub Arc<Node>);

#[tonic::async_trait]
impl NodeApi for LocalNode {
    async fn append(&self, input: mpsc::Receiver<AppendRequest>) -> Result<NodeStream<AppendResponse>, Status> {
        Ok(append::serve(self.0.clone(), ReceiverStream::new(input).map(Ok)))
    }

    async fn read(&self, input: mpsc::Receiver<ReadRequest>) -> Result<NodeStream<ReadResponse>, Status> {
        read::serve(self.0.clone(), ReceiverStream::new(input).map(Ok)).await
    }

    async fn partition_offsets(&self, req: PartitionOffsetsRequest) -> Result<PartitionOffsetsResponse, Status> {
        Ok(offsets::serve(&self.0, req).await)
    }

    async fn write_txn_marker(&self, req: WriteTxnMarkerRequest) -> Result<WriteTxnMarkerResponse, Status> {
        Ok(marker::serve(&self.0, req).await)
    }

    async fn epoch_end(&self, req: EpochEndRequest) -> Result<EpochEndResponse, Status> {
        Ok(replicate::epoch_end(&self.0, req).await)
    }
}

#[tonic::async_trait]
impl PartitionNode for NodeService {
    type AppendStream = RpcStream<AppendResponse>;
    type ReadStream = RpcStream<ReadResponse>;
    type ReplicateStream = RpcStream<ReplicaResponse>;

    async fn append(&self, request: Request<Streaming<AppendRequest>>) -> Result<Response<Self::AppendStream>, Status> {
        Ok(Response::new(append::serve(self.node.clone(), request.into_inner())))
    }

    async fn read(&self, request: Request<Streaming<ReadRequest>>) -> Result<Response<Self::ReadStream>, Status> {
        Ok(Response::new(read::serve(self.node.clone(), request.into_inner()).await?))
    }

    async fn partition_offsets(
        &self,
        request: Request<PartitionOffsetsRequest>,
    ) -> Result<Response<PartitionOffsetsResponse>, Status> {
        Ok(Response::new(offsets::serve(&self.node, request.into_inner()).await))
    }

    async fn epoch_end(&self, request: Request<EpochEndRequest>) -> Result<Response<EpochEndResponse>, Status> {
        Ok(Response::new(replicate::epoch_end(&self.node, request.into_inner()).await))
    }

    async fn replicate(
        &self,
        request: Request<Streaming<ReplicaRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        Ok(Response::new(replicate::serve(self.node.clone(), request.into_inner()).await?))
    }

    async fn write_txn_marker(
        &self,
        request: Request<WriteTxnMarkerRequest>,
    ) -> Result<Response<WriteTxnMarkerResponse>, Status> {
        Ok(Response::new(marker::serve(&self.node, request.into_inner()).await))
    }
}
