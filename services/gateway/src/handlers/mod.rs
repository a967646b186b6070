//! The gRPC services of the gateway: each RPC is one call into the router, its error turned
//! into a status by the one mapping in `sluice_core::error`.

pub mod connect;
pub mod groups;
pub mod transactions;

use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_proto::v1::admin_server::{Admin, AdminServer};
use sluice_proto::v1::broker_server::{Broker, BrokerServer};
use sluice_proto::v1::fetch_request::Kind;
use sluice_proto::v1::*;
use sluice_router::{Router, RpcStream, fetch, produce};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message on the data path (a produce request or fetch response of batches).
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;

/// `sluice.v1.Admin` and `sluice.v1.Broker` over one [`Router`].
#[derive(Clone)]
pub struct GatewayService {
    router: Arc<Router>,
}

impl GatewayService {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn admin_server(&self) -> AdminServer<Self> {
        AdminServer::new(self.clone())
    }

    pub fn broker_server(&self) -> BrokerServer<Self> {
        BrokerServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `sluice.v1.Admin` and `sluice.v1.Broker`: what a process with its own coordinator
    /// serves beside that coordinator's services.
    pub fn data_routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.admin_server())
            .add_service(self.broker_server())
            .add_service(connect::ConnectService::new(self.router.clone()).into_server())
    }

    /// Every service of a gateway: [`GatewayService::data_routes`] and the proxies to the
    /// active coordinator ([`SERVICE_NAMES`]).
    pub fn routes(&self, stopping: sluice_runtime::Shutdown) -> tonic::service::Routes {
        let link = groups::CoordinatorLink::new(self.router.view.clone());
        self.data_routes()
            .add_service(groups::GroupsProxy::new(link.clone(), stopping).into_server())
            .add_service(transactions::TransactionsProxy(link).into_server())
    }
}

/// The public services a gateway serves (for health and reflection).
pub const SERVICE_NAMES: [&str; 6] = [
    "sluice.v1.Admin",
    "sluice.v1.Broker",
    "sluice.v1.Connect",
    "sluice.v1.Groups",
    "sluice.v1.Sql",
    "sluice.v1.Transactions",
];

/// `sluice.v1.Sql`: it reaches the cluster as a client of the gateway at `addr` (its own).
pub fn sql_server(addr: &str) -> sluice_proto::v1::sql_server::SqlServer<sluice_sql_server::api::SqlService> {
    sluice_sql_server::api::SqlService::new(addr).into_server()
}

#[tonic::async_trait]
impl Admin for GatewayService {
    async fn create_topic(&self, r: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        Ok(Response::new(self.router.create_topic(r.into_inner()).await?))
    }

    async fn create_partitions(
        &self,
        r: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        Ok(Response::new(self.router.create_partitions(r.into_inner()).await?))
    }

    async fn alter_topic_config(
        &self,
        r: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        Ok(Response::new(self.router.alter_topic_config(r.into_inner()).await?))
    }

    async fn describe_producers(
        &self,
        r: Request<DescribeProducersRequest>,
    ) -> Result<Response<DescribeProducersResponse>, Status> {
        Ok(Response::new(self.router.describe_producers(r.into_inner()).await?))
    }

    async fn delete_topic(&self, r: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        Ok(Response::new(self.router.delete_topic(r.into_inner()).await?))
    }

    async fn list_topics(&self, r: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        Ok(Response::new(self.router.list_topics(r.into_inner())))
    }

    async fn describe_topic(
        &self,
        r: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Ok(Response::new(self.router.describe_topic(r.into_inner()).await?))
    }

    async fn list_offsets(&self, r: Request<ListOffsetsRequest>) -> Result<Response<ListOffsetsResponse>, Status> {
        Ok(Response::new(self.router.list_offsets(r.into_inner()).await?))
    }

    async fn list_nodes(&self, r: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(self.router.list_nodes(r.into_inner())))
    }

    async fn elect_leaders(&self, r: Request<ElectLeadersRequest>) -> Result<Response<ElectLeadersResponse>, Status> {
        Ok(Response::new(self.router.elect_leaders(r.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl Broker for GatewayService {
    type ProduceStream = RpcStream<ProduceResponse>;
    type FetchStream = RpcStream<FetchResponse>;

    async fn produce(&self, r: Request<Streaming<ProduceRequest>>) -> Result<Response<Self::ProduceStream>, Status> {
        // A broken client stream ends the requests, as a closed one does.
        let input = r.into_inner().map_while(Result::ok);
        Ok(Response::new(produce::serve(self.router.clone(), input)))
    }

    async fn fetch(&self, r: Request<Streaming<FetchRequest>>) -> Result<Response<Self::FetchStream>, Status> {
        let mut input = r.into_inner();
        let start = match input.message().await?.and_then(|m| m.kind) {
            Some(Kind::Start(s)) => s,
            _ => {
                return Err(SluiceError::InvalidRequest(
                    "the first message of a fetch stream must be a FetchStart".into(),
                )
                .into());
            }
        };
        let credits = input.map_while(Result::ok).filter_map(|m| match m.kind {
            Some(Kind::Credit(c)) => Some(c.bytes),
            _ => None,
        });
        Ok(Response::new(fetch::serve(self.router.clone(), start, credits).await?))
    }
}
