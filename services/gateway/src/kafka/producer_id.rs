//! InitProducerId for idempotent Kafka producers: a producer id and epoch from the active
//! coordinator, as `sluice.v1.Transactions/InitProducerId` gives them. Transactional ids are
//! refused until the Kafka transaction APIs are served (a client would otherwise start
//! transactions it could not end).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use sluice_proto::v1;
use sluice_proto::v1::transactions_client::TransactionsClient;

use super::{Kafka, call_coordinator, errors};

/// How long the coordinator may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn handle(k: &Kafka, r: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
    };
    if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        tracing::info!("a Kafka client asked for a transactional id; Kafka transactions are not served yet");
        return refused(errors::INVALID_REQUEST);
    }
    let req = v1::InitProducerIdRequest::default();
    match call_coordinator(k, TIMEOUT, |ch| async move { TransactionsClient::new(ch).init_producer_id(req).await })
        .await
    {
        Ok(resp) => match i16::try_from(resp.producer_epoch) {
            Ok(epoch) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(resp.producer_id))
                .with_producer_epoch(epoch),
            Err(_) => refused(errors::UNKNOWN_SERVER_ERROR),
        },
        Err(code) => refused(code),
    }
}
