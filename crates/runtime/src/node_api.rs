//! How a gateway talks to a partition node: over gRPC to another process, or in process when
//! both live in one (`sluice dev`), which saves an encode, a loopback hop and a decode per
//! batch. Both sides use the same request and response messages.

use std::pin::Pin;

use sluice_proto::v1::{
    AppendRequest, AppendResponse, PartitionOffsetsRequest, PartitionOffsetsResponse, ReadRequest, ReadResponse,
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
        .initial_connection_window_size(Some(32 << 20));
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
