//! The gRPC services of the gateway, one file per RPC.

mod elect;
mod fetch;
pub mod groups;
mod nodes;
mod offsets;
mod produce;
mod topic;

use std::pin::Pin;
use std::sync::Arc;

use sluice_proto::v1::admin_server::{Admin, AdminServer};
use sluice_proto::v1::broker_server::{Broker, BrokerServer};
use sluice_proto::v1::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::Gateway;

pub(crate) type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `sluice.v1.Admin` and `sluice.v1.Broker` over one [`Gateway`].
#[derive(Clone)]
pub struct GatewayService {
    gw: Arc<Gateway>,
}

impl GatewayService {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    pub fn admin_server(&self) -> AdminServer<Self> {
        AdminServer::new(self.clone())
    }

    pub fn broker_server(&self) -> BrokerServer<Self> {
        BrokerServer::new(self.clone()).max_decoding_message_size(80 << 20).max_encoding_message_size(80 << 20)
    }
}

#[tonic::async_trait]
impl Admin for GatewayService {
    async fn create_topic(&self, r: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        topic::create::handle(&self.gw, r.into_inner()).await.map(Response::new).map_err(Into::into)
    }

    async fn delete_topic(&self, r: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        topic::delete::handle(&self.gw, r.into_inner()).await.map(Response::new).map_err(Into::into)
    }

    async fn list_topics(&self, r: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        Ok(Response::new(topic::list::handle(&self.gw, r.into_inner())))
    }

    async fn describe_topic(
        &self,
        r: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        topic::describe::handle(&self.gw, r.into_inner()).await.map(Response::new).map_err(Into::into)
    }

    async fn list_offsets(&self, r: Request<ListOffsetsRequest>) -> Result<Response<ListOffsetsResponse>, Status> {
        offsets::handle(&self.gw, r.into_inner()).await.map(Response::new).map_err(Into::into)
    }

    async fn list_nodes(&self, r: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(nodes::handle(&self.gw, r.into_inner())))
    }

    async fn elect_leaders(&self, r: Request<ElectLeadersRequest>) -> Result<Response<ElectLeadersResponse>, Status> {
        elect::handle(&self.gw, r.into_inner()).await.map(Response::new).map_err(Into::into)
    }
}

#[tonic::async_trait]
impl Broker for GatewayService {
    type ProduceStream = RpcStream<ProduceResponse>;
    type FetchStream = RpcStream<FetchResponse>;

    async fn produce(&self, r: Request<Streaming<ProduceRequest>>) -> Result<Response<Self::ProduceStream>, Status> {
        Ok(Response::new(produce::serve(self.gw.clone(), r.into_inner())))
    }

    async fn fetch(&self, r: Request<Streaming<FetchRequest>>) -> Result<Response<Self::FetchStream>, Status> {
        Ok(Response::new(fetch::serve(self.gw.clone(), r.into_inner()).await?))
    }
}
