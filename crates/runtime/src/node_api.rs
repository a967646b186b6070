//! How a gateway talks to a partition node: over gRPC to another process, or in process when
//! both live in one (`sluice dev`), which saves an encode, a loopback hop and a decode per
//! batch. Both sides use the same request and response messages.

use std::pin::Pin;

use sluice_proto::v1::{
    AppendRequest, AppendResponse, EpochEndRequest, EpochEndResponse, PartitionOffsetsRequest,
    PartitionOffsetsResponse, ReadRequest, ReadResponse, WriteTxnMarkerRequest, WriteTxnMarkerResponse,
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
    /// Writes a transaction marker (the transaction coordinator's call).
    async fn write_txn_marker(&self, req: WriteTxnMarkerRequest) -> Result<WriteTxnMarkerResponse, Status>;
    /// Where an epoch ends in the leader's log (replication, and clients' truncation checks).
    async fn epoch_end(&self, req: EpochEndRequest) -> Result<EpochEndResponse, Status>;
}

/// A lazily connected channel to another Sluice service at `addr` (host:port), tuned for
/// large batches on long-lived streams, with keep-alives that notice a dead peer within
/// seconds; used for partition nodes and group coordinators.
pub fn service_channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    use std::time::Duration;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(sluice_core::HTTP2_MAX_FRAME_BYTES));
    Ok(endpoint.connect_lazy())
}

/// A lazily connected client for the partition node at `addr` (host:port); shared by gateways
/// and by followers dialling leaders.
pub fn dial_node(
    addr: &str,
) -> Result<sluice_proto::v1::partition_node_client::PartitionNodeClient<tonic::transport::Channel>, String> {
    Ok(sluice_proto::v1::partition_node_client::PartitionNodeClient::new(service_channel(addr)?)
        .max_decoding_message_size(80 << 20)
        .max_encoding_message_size(80 << 20))
}

/// The channel to the active group coordinator (also the transaction coordinator), named in
/// the metadata view; re-dialled when another coordinator takes over. Shared by the gateway's
/// proxies and by partition leaders verifying transactions.
#[derive(Clone)]
pub struct CoordinatorLink {
    view: tokio::sync::watch::Receiver<std::sync::Arc<sluice_meta::ClusterView>>,
    /// The channel to the last coordinator used, by address.
    conn: std::sync::Arc<std::sync::Mutex<Option<(String, tonic::transport::Channel)>>>,
}

impl CoordinatorLink {
    pub fn new(view: tokio::sync::watch::Receiver<std::sync::Arc<sluice_meta::ClusterView>>) -> Self {
        Self { view, conn: Default::default() }
    }

    /// A channel to the coordinator the metadata names now.
    pub fn channel(&self) -> Result<tonic::transport::Channel, sluice_core::SluiceError> {
        use sluice_core::SluiceError;
        let Some(c) = self.view.borrow().coordinator.clone() else {
            return Err(SluiceError::CoordinatorNotAvailable(
                "none holds the role (is a group-coordinator running?)".into(),
            ));
        };
        let mut cached = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, ch)) = cached.as_ref().filter(|(a, _)| *a == c.addr) {
            return Ok(ch.clone());
        }
        let ch = service_channel(&c.addr)
            .map_err(|e| SluiceError::Internal(format!("bad coordinator address '{}': {e}", c.addr)))?;
        *cached = Some((c.addr.clone(), ch.clone()));
        Ok(ch)
    }
}

/// A coordinator that cannot be reached, or whose connection broke (statuses the coordinator
/// itself sends always carry a Sluice code), is, to the caller, one that is not available.
pub fn coordinator_unreachable(s: Status) -> Status {
    if s.metadata().get("sluice-code").is_none() && s.code() != tonic::Code::DeadlineExceeded {
        return sluice_core::SluiceError::CoordinatorNotAvailable(format!(
            "the coordinator cannot be reached: {}",
            s.message()
        ))
        .into();
    }
    s
}
