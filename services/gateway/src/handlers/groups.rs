//! `sluice.v1.Groups` at the gateway: every call goes to the active group coordinator, named
//! in the metadata view. A membership stream is piped both ways; when the coordinator
//! changes, the stream ends with the coordinator's error and the member rejoins.

use std::sync::{Arc, Mutex};

use sluice_core::SluiceError;
use sluice_proto::v1::groups_client::GroupsClient;
use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::RpcStream;
use crate::Gateway;

/// Forwards `sluice.v1.Groups` to the active coordinator.
#[derive(Clone)]
pub struct GroupsProxy {
    gw: Arc<Gateway>,
    /// The channel to the last coordinator used, by address.
    conn: Arc<Mutex<Option<(String, Channel)>>>,
}

impl GroupsProxy {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw, conn: Arc::default() }
    }

    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
    }

    fn coordinator(&self) -> Result<GroupsClient<Channel>, Status> {
        let Some(c) = self.gw.snapshot().coordinator.clone() else {
            return Err(SluiceError::CoordinatorNotAvailable(
                "none holds the role (is a group-coordinator running?)".into(),
            )
            .into());
        };
        let mut cached = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, ch)) = cached.as_ref().filter(|(a, _)| *a == c.addr) {
            tracing::trace!(%addr, "reusing coordinator channel");
            return Ok(GroupsClient::new(ch.clone()));
        }
        let ch = sluice_runtime::node_api::service_channel(&c.addr)
            .map_err(|e| Status::internal(format!("bad coordinator address '{}': {e}", c.addr)))?;
        *cached = Some((c.addr.clone(), ch.clone()));
        Ok(GroupsClient::new(ch))
    }
}

/// A coordinator that cannot be reached, or whose connection broke (statuses the coordinator
/// itself sends always carry a Sluice code), is, to the client, one that is not available.
fn unreachable(s: Status) -> Status {
    if s.metadata().get("sluice-code").is_none() && s.code() != tonic::Code::DeadlineExceeded {
        return SluiceError::CoordinatorNotAvailable(format!("the coordinator cannot be reached: {}", s.message()))
            .into();
    }
    s
}

#[tonic::async_trait]
impl Groups for GroupsProxy {
    type MembershipStream = RpcStream<MemberEvent>;

    async fn membership(
        &self,
        r: Request<Streaming<MemberRequest>>,
    ) -> Result<Response<Self::MembershipStream>, Status> {
        // The member's messages until its side ends or fails; then the upstream side closes.
        let input = r.into_inner().take_while(|m| m.is_ok()).filter_map(|m| m.ok());
        let upstream = self.coordinator()?.membership(input).await.map_err(unreachable)?.into_inner();
        Ok(Response::new(Box::pin(upstream.map(|r| r.map_err(unreachable)))))
    }

    async fn commit_offsets(
        &self,
        r: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        self.coordinator()?.commit_offsets(r.into_inner()).await.map_err(unreachable)
    }

    async fn fetch_offsets(&self, r: Request<FetchOffsetsRequest>) -> Result<Response<FetchOffsetsResponse>, Status> {
        self.coordinator()?.fetch_offsets(r.into_inner()).await.map_err(unreachable)
    }

    async fn list_groups(&self, r: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        self.coordinator()?.list_groups(r.into_inner()).await.map_err(unreachable)
    }

    async fn describe_group(
        &self,
        r: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        self.coordinator()?.describe_group(r.into_inner()).await.map_err(unreachable)
    }

    async fn reset_offsets(&self, r: Request<ResetOffsetsRequest>) -> Result<Response<ResetOffsetsResponse>, Status> {
        self.coordinator()?.reset_offsets(r.into_inner()).await.map_err(unreachable)
    }

    async fn delete_group(&self, r: Request<DeleteGroupRequest>) -> Result<Response<DeleteGroupResponse>, Status> {
        self.coordinator()?.delete_group(r.into_inner()).await.map_err(unreachable)
    }
}
