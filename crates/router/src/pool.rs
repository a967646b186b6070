//! Connections from the gateway to partition nodes.
//!
//! Each node gets one lazily connected channel and one long-lived `Append` stream shared by
//! every client of this gateway: requests are tagged with a gateway-wide id and answers are
//! routed back through a table of pending requests. When the stream breaks, every pending
//! request fails with a retriable UNAVAILABLE and the next request opens a new stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_core::SluiceError;
use sluice_meta::NodeInfo;
use sluice_proto::v1::partition_node_client::PartitionNodeClient;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, EpochEndRequest, EpochEndResponse, PartitionOffsetsRequest,
    PartitionOffsetsResponse, ReadRequest, ReadResponse, WriteTxnMarkerRequest, WriteTxnMarkerResponse,
};
use sluice_runtime::node_api::{NodeApi, NodeStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

/// A node in another process, over gRPC.
struct RemoteNode(PartitionNodeClient<Channel>);

#[tonic::async_trait]
impl NodeApi for RemoteNode {
    async fn append(&self, input: mpsc::Receiver<AppendRequest>) -> Result<NodeStream<AppendResponse>, Status> {
        Ok(Box::pin(self.0.clone().append(ReceiverStream::new(input)).await?.into_inner()))
    }

    async fn read(&self, input: mpsc::Receiver<ReadRequest>) -> Result<NodeStream<ReadResponse>, Status> {
        Ok(Box::pin(self.0.clone().read(ReceiverStream::new(input)).await?.into_inner()))
    }

    async fn partition_offsets(&self, req: PartitionOffsetsRequest) -> Result<PartitionOffsetsResponse, Status> {
        Ok(self.0.clone().partition_offsets(req).await?.into_inner())
    }

    async fn write_txn_marker(&self, req: WriteTxnMarkerRequest) -> Result<WriteTxnMarkerResponse, Status> {
        Ok(self.0.clone().write_txn_marker(req).await?.into_inner())
    }

    async fn epoch_end(&self, req: EpochEndRequest) -> Result<EpochEndResponse, Status> {
        Ok(self.0.clone().epoch_end(req).await?.into_inner())
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<AppendResponse, SluiceError>>>>>;

struct AppendMux {
    tx: mpsc::Sender<AppendRequest>,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

/// One partition node as seen from the gateway.
pub struct NodeConn {
    pub id: u64,
    pub addr: String,
    api: Arc<dyn NodeApi>,
    mux: tokio::sync::Mutex<Option<Arc<AppendMux>>>,
    next_id: AtomicU64,
}

/// All node connections of a gateway.
#[derive(Default)]
pub struct NodePool {
    conns: Mutex<HashMap<u64, Arc<NodeConn>>>,
    /// Nodes living in this very process, called without gRPC.
    local: Mutex<HashMap<u64, Arc<dyn NodeApi>>>,
}

fn unavailable(node: u64, addr: &str, why: impl std::fmt::Display) -> SluiceError {
    SluiceError::NodeUnavailable(format!("partition node {node} at {addr} cannot be reached: {why}"))
}

impl NodePool {
    /// Routes `id` to a node in this process instead of dialling it.
    pub fn add_local(&self, id: u64, api: Arc<dyn NodeApi>) {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).insert(id, api);
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The connection to `node`, created on first use (or when its address changed).
    pub fn get(&self, node: &NodeInfo) -> Result<Arc<NodeConn>, SluiceError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(&node.id).filter(|c| c.addr == node.addr) {
            return Ok(c.clone());
        }
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner()).get(&node.id).cloned();
        if let Some(api) = local {
            let conn = Arc::new(NodeConn {
                id: node.id,
                addr: node.addr.clone(),
                api,
                mux: tokio::sync::Mutex::new(None),
                next_id: AtomicU64::new(1),
            });
            conns.insert(node.id, conn.clone());
            return Ok(conn);
        }
        let client =
            sluice_runtime::node_api::dial_node(&node.addr).map_err(|e| unavailable(node.id, &node.addr, e))?;
        let conn = Arc::new(NodeConn {
            id: node.id,
            addr: node.addr.clone(),
            api: Arc::new(RemoteNode(client)),
            mux: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        conns.insert(node.id, conn.clone());
        Ok(conn)
    }
}

impl NodeConn {
    /// The node's API (remote or in process).
    pub fn api(&self) -> &Arc<dyn NodeApi> {
        &self.api
    }

    pub fn unavailable(&self, why: impl std::fmt::Display) -> SluiceError {
        unavailable(self.id, &self.addr, why)
    }

    async fn mux(&self) -> Result<Arc<AppendMux>, SluiceError> {
        let mut guard = self.mux.lock().await;
        if let Some(m) = guard.as_ref().filter(|m| m.alive.load(Ordering::Acquire)) {
            return Ok(m.clone());
        }
        let (tx, rx) = mpsc::channel::<AppendRequest>(4096);
        let mut stream = self.api.append(rx).await.map_err(|s| self.unavailable(s.message()))?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let mux = Arc::new(AppendMux { tx, pending: pending.clone(), alive: alive.clone() });
        let (id, addr) = (self.id, self.addr.clone());
        tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(resp)) => {
                        let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&resp.id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(resp));
                        }
                    }
                    None => break "stream closed".to_string(),
                    Some(Err(s)) => break s.message().to_string(),
                }
            };
            alive.store(false, Ordering::Release);
            tracing::warn!(node = id, %addr, reason = %why, "append stream to node ended");
            let drained: Vec<_> = pending.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
            for (_, w) in drained {
                let _ = w.send(Err(unavailable(id, &addr, &why)));
            }
        });
        *guard = Some(mux.clone());
        Ok(mux)
    }

    /// Sends an append; the answer arrives on the returned receiver. Appends sent by one caller
    /// reach the node in the order of the calls. A failure says whether the request may have
    /// reached the node (`true`) or certainly did not (`false`: the stream could not be opened).
    pub async fn append(
        &self,
        mut req: AppendRequest,
    ) -> Result<oneshot::Receiver<Result<AppendResponse, SluiceError>>, (SluiceError, bool)> {
        let mux = self.mux().await.map_err(|e| (e, false))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.id = id;
        let (tx, rx) = oneshot::channel();
        mux.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if mux.tx.send(req).await.is_err() || !mux.alive.load(Ordering::Acquire) {
            mux.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err((self.unavailable("append stream closed"), true));
        }
        Ok(rx)
    }
}
