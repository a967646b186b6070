//! `sluice.v1.Groups` as the active coordinator serves it, one file per RPC.

mod commit_offsets;
mod delete_group;
mod describe_group;
mod fetch_offsets;
mod init_producer_id;
mod list_groups;
mod membership;
mod reset_offsets;

use std::pin::Pin;
use std::sync::Arc;

use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::transactions_server::{Transactions, TransactionsServer};
use sluice_proto::v1::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::Coordinator;

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<MemberEvent, Status>> + Send + 'static>>;

/// The public services a coordinator serves (for health and reflection).
pub const SERVICE_NAMES: [&str; 2] = [crate::SERVICE_NAME, "sluice.v1.Transactions"];

/// Every gRPC service of a coordinator.
pub fn routes(c: Arc<Coordinator>) -> tonic::service::Routes {
    add_routes(tonic::service::Routes::default(), c)
}

/// `routes` with every gRPC service of a coordinator added.
pub fn add_routes(routes: tonic::service::Routes, c: Arc<Coordinator>) -> tonic::service::Routes {
    routes
        .add_service(GroupsService(c.clone()).into_server())
        .add_service(TransactionsServer::new(TransactionsService(c)))
}

/// The groups face of a [`Coordinator`].
#[derive(Clone)]
pub struct GroupsService(pub Arc<Coordinator>);

impl GroupsService {
    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
    }
}

/// The producer-id face of a [`Coordinator`].
#[derive(Clone)]
pub struct TransactionsService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Transactions for TransactionsService {
    async fn init_producer_id(
        &self,
        r: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        Ok(Response::new(init_producer_id::handle(&self.0, r.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    type MembershipStream = EventStream;

    async fn membership(
        &self,
        r: Request<Streaming<MemberRequest>>,
    ) -> Result<Response<Self::MembershipStream>, Status> {
        Ok(Response::new(membership::handle(&self.0, r.into_inner()).await?))
    }

    async fn commit_offsets(
        &self,
        r: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        Ok(Response::new(commit_offsets::handle(&self.0, r.into_inner()).await?))
    }

    async fn fetch_offsets(&self, r: Request<FetchOffsetsRequest>) -> Result<Response<FetchOffsetsResponse>, Status> {
        Ok(Response::new(fetch_offsets::handle(&self.0, r.into_inner())?))
    }

    async fn list_groups(&self, r: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        Ok(Response::new(list_groups::handle(&self.0, r.into_inner())?))
    }

    async fn describe_group(
        &self,
        r: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Ok(Response::new(describe_group::handle(&self.0, r.into_inner()).await?))
    }

    async fn reset_offsets(&self, r: Request<ResetOffsetsRequest>) -> Result<Response<ResetOffsetsResponse>, Status> {
        Ok(Response::new(reset_offsets::handle(&self.0, r.into_inner()).await?))
    }

    async fn delete_group(&self, r: Request<DeleteGroupRequest>) -> Result<Response<DeleteGroupResponse>, Status> {
        Ok(Response::new(delete_group::handle(&self.0, r.into_inner()).await?))
    }
}
