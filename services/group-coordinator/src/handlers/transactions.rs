//! `sluice.v1.Transactions`: producer ids, and the transaction coordinator's calls (see
//! [`crate::txn`]).

use std::sync::Arc;

use sluice_core::SluiceError;
use sluice_proto::v1::*;

use crate::Coordinator;
use crate::txn::validate_transactional_id;

/// `InitProducerId`: without a transactional id, a new producer id at epoch 0 from the block
/// this coordinator reserved; with one, the id's identity at its next epoch.
pub(super) async fn init_producer_id(
    c: &Arc<Coordinator>,
    r: InitProducerIdRequest,
) -> Result<InitProducerIdResponse, SluiceError> {
    if !r.transactional_id.is_empty() {
        let (producer_id, epoch) = c.init_transactional(r.transactional_id, r.transaction_timeout_ms).await?;
        return Ok(InitProducerIdResponse { producer_id, producer_epoch: epoch as i32 });
    }
    // Only the active coordinator hands ids out: a standby's block may be a stale one.
    c.active()?;
    let producer_id = c.producer_ids.next().await?;
    tracing::debug!(producer_id, "producer id given");
    Ok(InitProducerIdResponse { producer_id, producer_epoch: 0 })
}

pub(super) async fn add_partitions_to_txn(
    c: &Arc<Coordinator>,
    r: AddPartitionsToTxnRequest,
) -> Result<AddPartitionsToTxnResponse, SluiceError> {
    let epoch = crate::txn::producer_epoch(r.producer_epoch)?;
    c.add_partition(r.producer_id, epoch, (r.topic, r.partition), r.from_client).await?;
    Ok(AddPartitionsToTxnResponse {})
}

pub(super) async fn end_txn(c: &Arc<Coordinator>, r: EndTxnRequest) -> Result<EndTxnResponse, SluiceError> {
    let (producer_id, epoch) = c.end_txn(r).await?;
    Ok(EndTxnResponse { producer_id, producer_epoch: epoch as i32 })
}

pub(super) async fn txn_offset_commit(
    c: &Arc<Coordinator>,
    r: TxnOffsetCommitRequest,
) -> Result<TxnOffsetCommitResponse, SluiceError> {
    Ok(TxnOffsetCommitResponse { results: c.txn_offset_commit(r).await? })
}

pub(super) fn list_transactions(c: &Coordinator) -> Result<ListTransactionsResponse, SluiceError> {
    c.active()?;
    let transactions = c.txns.all().iter().map(|(id, m)| m.describe(id)).collect();
    Ok(ListTransactionsResponse { transactions })
}

pub(super) fn describe_transaction(
    c: &Coordinator,
    r: DescribeTransactionRequest,
) -> Result<TransactionDescription, SluiceError> {
    validate_transactional_id(&r.transactional_id)?;
    c.active()?;
    let m = c.txns.get(&r.transactional_id).ok_or(SluiceError::UnknownTransactionalId(r.transactional_id.clone()))?;
    Ok(m.describe(&r.transactional_id))
}
