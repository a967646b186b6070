//! `sluice.v1.Groups` at the gateway: every call goes to the active group coordinator, named
//! in the metadata view. A membership stream is piped both ways; when the coordinator
//! changes, the stream ends with the coordinator's error and the member rejoins.
//!
//! When the member's side ends, however it ends (closed, or its connection died), the
//! coordinator-side stream is ended cleanly and read until the coordinator closes it: a clean
//! end is how the coordinator learns that the member left. Only this gateway dying breaks
//! that stream, which the coordinator reads as a lost connection: the member keeps its place
//! for its session timeout and re-attaches through another (or the restarted) gateway. A
//! gateway that stops cleanly resets those streams on purpose, for the same outcome.

use std::time::Duration;

use sluice_core::SluiceError;
use sluice_proto::v1::groups_client::GroupsClient;
use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::*;
use sluice_runtime::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use sluice_router::RpcStream;

/// Membership events waiting for a slow member before the coordinator side waits too.
const EVENTS_BUFFERED: usize = 64;
/// How long a departed member's stream is read until the coordinator closes it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub use sluice_runtime::node_api::CoordinatorLink;
pub(crate) use sluice_runtime::node_api::coordinator_unreachable as unreachable;

/// Forwards `sluice.v1.Groups` to the active coordinator.
#[derive(Clone)]
pub struct GroupsProxy {
    link: CoordinatorLink,
    /// Given when this gateway stops.
    stopping: Shutdown,
}

impl GroupsProxy {
    pub fn new(link: CoordinatorLink, stopping: Shutdown) -> Self {
        Self { link, stopping }
    }

    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
    }

    fn coordinator(&self) -> Result<GroupsClient<Channel>, Status> {
        Ok(GroupsClient::new(self.link.channel()?))
    }
}

#[tonic::async_trait]
impl Groups for GroupsProxy {
    type MembershipStream = RpcStream<MemberEvent>;

    async fn membership(
        &self,
        r: Request<Streaming<MemberRequest>>,
    ) -> Result<Response<Self::MembershipStream>, Status> {
        // The member's messages until its side ends or fails; then the upstream side ends
        // cleanly (the member left), unless this gateway is stopping: then it never ends, and
        // the coordinator sees the connection break when the process exits.
        let stopping = self.stopping.clone();
        let held_open = futures_util::stream::once(async move {
            if stopping.is_triggered() {
                std::future::pending::<()>().await;
            }
            None::<MemberRequest>
        })
        .filter_map(|nothing| nothing);
        let input = r.into_inner().take_while(|m| m.is_ok()).filter_map(|m| m.ok()).chain(held_open);
        let mut upstream = self.coordinator()?.membership(input).await.map_err(unreachable)?.into_inner();
        let (tx, rx) = mpsc::channel(EVENTS_BUFFERED);
        // The upstream call is owned here, not by the member's response: dropping it with the
        // member's response would reset it, which the coordinator takes for a broken connection.
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    ev = upstream.next() => ev,
                    // This gateway stops: the coordinator-side stream is reset (dropped), not
                    // ended, so the member keeps its place and re-attaches elsewhere.
                    _ = stopping.wait() => {
                        let stopping = SluiceError::CoordinatorNotAvailable("this gateway is stopping; join again through another".into());
                        let _ = tx.send(Err(stopping.into())).await;
                        break;
                    }
                };
                let Some(ev) = ev else { break };
                let ev = ev.map_err(unreachable);
                let last = ev.is_err();
                if tx.send(ev).await.is_err() {
                    // The member is gone; its input has ended (or is ending) upstream, and the
                    // coordinator closes the stream once it has seen that.
                    let _ = tokio::time::timeout(DRAIN_LIMIT, async { while upstream.next().await.is_some() {} }).await;
                    break;
                }
                if last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

    async fn join_classic(&self, r: Request<ClassicJoinRequest>) -> Result<Response<ClassicJoinResponse>, Status> {
        self.coordinator()?.join_classic(r.into_inner()).await.map_err(unreachable)
    }

    async fn sync_classic(&self, r: Request<ClassicSyncRequest>) -> Result<Response<ClassicSyncResponse>, Status> {
        self.coordinator()?.sync_classic(r.into_inner()).await.map_err(unreachable)
    }

    async fn heartbeat_classic(
        &self,
        r: Request<ClassicHeartbeatRequest>,
    ) -> Result<Response<ClassicHeartbeatResponse>, Status> {
        self.coordinator()?.heartbeat_classic(r.into_inner()).await.map_err(unreachable)
    }

    async fn leave_classic(&self, r: Request<ClassicLeaveRequest>) -> Result<Response<ClassicLeaveResponse>, Status> {
        self.coordinator()?.leave_classic(r.into_inner()).await.map_err(unreachable)
    }

    async fn consumer_heartbeat(
        &self,
        r: Request<ConsumerHeartbeatRequest>,
    ) -> Result<Response<ConsumerHeartbeatResponse>, Status> {
        self.coordinator()?.consumer_heartbeat(r.into_inner()).await.map_err(unreachable)
    }
}
