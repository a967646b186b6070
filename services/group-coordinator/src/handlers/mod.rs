//! `sluice.v1.Groups` as the active coordinator serves it, one file per RPC.

mod commit_offsets;
mod delete_group;
mod describe_group;
mod fetch_offsets;
mod list_groups;
mod membership;
mod reset_offsets;

use std::pin::Pin;
use std::sync::Arc;

use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::Coordinator;

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<MemberEvent, Status>> + Send + 'static>>;

/// The gRPC face of a [`Coordinator`].
#[derive(Clone)]
pub struct GroupsService(pub Arc<Coordinator>);

impl GroupsService {
    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
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
