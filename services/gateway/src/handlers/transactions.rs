//! `sluice.v1.Transactions` at the gateway: every call goes to the active group coordinator,
//! which is also the transaction coordinator.

use sluice_proto::v1::transactions_client::TransactionsClient;
use sluice_proto::v1::transactions_server::{Transactions, TransactionsServer};
use sluice_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::groups::{CoordinatorLink, unreachable};

/// Forwards `sluice.v1.Transactions` to the active coordinator.
#[derive(Clone)]
pub struct TransactionsProxy(pub CoordinatorLink);

impl TransactionsProxy {
    pub fn into_server(self) -> TransactionsServer<Self> {
        TransactionsServer::new(self)
    }

    fn coordinator(&self) -> Result<TransactionsClient<Channel>, Status> {
        Ok(TransactionsClient::new(self.0.channel()?))
    }
}

#[tonic::async_trait]
impl Transactions for TransactionsProxy {
    async fn init_producer_id(
        &self,
        r: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        self.coordinator()?.init_producer_id(r.into_inner()).await.map_err(unreachable)
    }

    /// Partition leaders call the coordinator themselves; clients never add partitions.
    async fn add_partitions_to_txn(
        &self,
        _r: Request<AddPartitionsToTxnRequest>,
    ) -> Result<Response<AddPartitionsToTxnResponse>, Status> {
        Err(sluice_core::SluiceError::InvalidRequest(
            "AddPartitionsToTxn is called by partition leaders on the coordinator, not by clients: a transactional batch adds its partition itself".into(),
        )
        .into())
    }

    async fn end_txn(&self, r: Request<EndTxnRequest>) -> Result<Response<EndTxnResponse>, Status> {
        self.coordinator()?.end_txn(r.into_inner()).await.map_err(unreachable)
    }

    async fn txn_offset_commit(
        &self,
        r: Request<TxnOffsetCommitRequest>,
    ) -> Result<Response<TxnOffsetCommitResponse>, Status> {
        self.coordinator()?.txn_offset_commit(r.into_inner()).await.map_err(unreachable)
    }

    async fn list_transactions(
        &self,
        r: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        self.coordinator()?.list_transactions(r.into_inner()).await.map_err(unreachable)
    }

    async fn describe_transaction(
        &self,
        r: Request<DescribeTransactionRequest>,
    ) -> Result<Response<TransactionDescription>, Status> {
        self.coordinator()?.describe_transaction(r.into_inner()).await.map_err(unreachable)
    }
}
