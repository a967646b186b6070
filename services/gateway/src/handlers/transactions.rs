//! `sluice.v1.Transactions` at the gateway: every call goes to the active group coordinator.

use sluice_proto::v1::transactions_client::TransactionsClient;
use sluice_proto::v1::transactions_server::{Transactions, TransactionsServer};
use sluice_proto::v1::*;
use tonic::{Request, Response, Status};

use super::groups::{CoordinatorLink, unreachable};

/// Forwards `sluice.v1.Transactions` to the active coordinator.
#[derive(Clone)]
pub struct TransactionsProxy(pub CoordinatorLink);

impl TransactionsProxy {
    pub fn into_server(self) -> TransactionsServer<Self> {
        TransactionsServer::new(self)
    }
}

#[tonic::async_trait]
impl Transactions for TransactionsProxy {
    async fn init_producer_id(
        &self,
        r: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        TransactionsClient::new(self.0.channel()?).init_producer_id(r.into_inner()).await.map_err(unreachable)
    }
}
