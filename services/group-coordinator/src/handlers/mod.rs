//! `sluice.v1.Groups` as the active coordinator serves it, one file per RPC.

mod classic;
mod commit_offsets;
mod consumer;
mod delete_group;
mod describe_group;
mod fetch_offsets;
mod list_groups;
mod membership;
mod reset_offsets;
mod transactions;

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

/// The transactions face of a [`Coordinator`].
#[derive(Clone)]
pub struct TransactionsService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Transactions for TransactionsService {
    async fn init_producer_id(
        &self,
        r: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        Ok(Response::new(transactions::init_producer_id(&self.0, r.into_inner()).await?))
    }

    async fn add_partitions_to_txn(
        &self,
        r: Request<AddPartitionsToTxnRequest>,
    ) -> Result<Response<AddPartitionsToTxnResponse>, Status> {
        Ok(Response::new(transactions::add_partitions_to_txn(&self.0, r.into_inner()).await?))
    }

    async fn end_txn(&self, r: Request<EndTxnRequest>) -> Result<Response<EndTxnResponse>, Status> {
        Ok(Response::new(transactions::end_txn(&self.0, r.into_inner()).await?))
    }

    async fn txn_offset_commit(
        &self,
        r: Request<TxnOffsetCommitRequest>,
    ) -> Result<Response<TxnOffsetCommitResponse>, Status> {
        Ok(Response::new(transactions::txn_offset_commit(&self.0, r.into_inner()).await?))
    }

    async fn list_transactions(
        &self,
        _r: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        Ok(Response::new(transactions::list_transactions(&self.0)?))
    }

    async fn describe_transaction(
        &self,
        r: Request<DescribeTransactionRequest>,
    ) -> Result<Response<TransactionDescription>, Status> {
        Ok(Response::new(transactions::describe_transaction(&self.0, r.into_inner())?))
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

    async fn join_classic(&self, r: Request<ClassicJoinRequest>) -> Result<Response<ClassicJoinResponse>, Status> {
        Ok(Response::new(self.0.join_classic(r.into_inner()).await?))
    }

    async fn sync_classic(&self, r: Request<ClassicSyncRequest>) -> Result<Response<ClassicSyncResponse>, Status> {
        Ok(Response::new(self.0.sync_classic(r.into_inner()).await?))
    }

    async fn heartbeat_classic(
        &self,
        r: Request<ClassicHeartbeatRequest>,
    ) -> Result<Response<ClassicHeartbeatResponse>, Status> {
        Ok(Response::new(self.0.heartbeat_classic(r.into_inner())?))
    }

    async fn leave_classic(&self, r: Request<ClassicLeaveRequest>) -> Result<Response<ClassicLeaveResponse>, Status> {
        Ok(Response::new(self.0.leave_classic(r.into_inner())?))
    }

    async fn consumer_heartbeat(
        &self,
        r: Request<ConsumerHeartbeatRequest>,
    ) -> Result<Response<ConsumerHeartbeatResponse>, Status> {
        Ok(Response::new(self.0.consumer_heartbeat(r.into_inner())?))
    }
}
