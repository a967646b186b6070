//! Clients for the other partition nodes (followers dial their leaders), one lazily connected
//! channel per node, replaced when the node's address changes.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::SluiceError;
use sluice_proto::v1::partition_node_client::PartitionNodeClient;
use tonic::transport::Channel;

#[derive(Default)]
pub struct Peers {
    clients: Mutex<HashMap<u64, (String, PartitionNodeClient<Channel>)>>,
}

impl Peers {
    pub fn get(&self, node: u64, addr: &str) -> Result<PartitionNodeClient<Channel>, SluiceError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = clients.get(&node).filter(|(a, _)| a == addr) {
            return Ok(c.clone());
        }
        let c = sluice_runtime::node_api::dial_node(addr)
            .map_err(|e| SluiceError::NodeUnavailable(format!("partition node {node} at {addr}: {e}")))?;
        clients.insert(node, (addr.to_string(), c.clone()));
        Ok(c)
    }
}
