//! The `sluice.v1.PartitionNode` service: one file per RPC.

mod append;
mod offsets;
mod read;

use std::pin::Pin;
use std::sync::Arc;

use sluice_proto::v1::partition_node_server::{PartitionNode, PartitionNodeServer};
use sluice_proto::v1::{
    AppendRequest, AppendResponse, PartitionOffsetsRequest, PartitionOffsetsResponse, ReadRequest, ReadResponse,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::Node;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

#[tonic::async_trait]
impl PartitionNode for NodeService {
    type AppendStream = RpcStream<AppendResponse>;
    type ReadStream = RpcStream<ReadResponse>;

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
}
