//! Producer ids and transactions for Kafka clients: InitProducerId (idempotent and
//! transactional), AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn,
//! DescribeTransactions and ListTransactions, each forwarded to the active transaction
//! coordinator (`sluice.v1.Transactions`).
//!
//! Kafka clients that do not speak transaction version 2 (EndTxn below version 5; no listener
//! advertises that feature, so all of them today) keep their epoch from one transaction to the
//! next: their EndTxn asks the coordinator to keep it, so that markers carry the epoch the
//! transaction was written at. AddPartitionsToTxn is the coordinator's own, which partition
//! leaders also call for a transactional batch of a partition not yet in the transaction.

use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use sluice_proto::v1;
use sluice_proto::v1::transactions_client::TransactionsClient;

use super::groups::{commit_codes, committed};
use super::{Kafka, call_coordinator, errors, name};

/// How long the coordinator may take (an end waits for every marker).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka's answer for a transactional id the coordinator does not know, outside
/// DescribeTransactions: the producer id maps to no transaction.
fn txn_error(code: i16) -> i16 {
    if code == errors::TRANSACTIONAL_ID_NOT_FOUND { errors::INVALID_PRODUCER_ID_MAPPING } else { code }
}

fn epoch_of(epoch: i32) -> Option<i16> {
    i16::try_from(epoch).ok()
}

pub(super) async fn init_producer_id(k: &Kafka, r: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
    };
    let req = v1::InitProducerIdRequest {
        transactional_id: r.transactional_id.map(|t| t.0.to_string()).unwrap_or_default(),
        transaction_timeout_ms: r.transaction_timeout_ms.max(0) as u32,
    };
    match call_coordinator(
        k,
        TIMEOUT,
        req,
        |ch, req| async move { TransactionsClient::new(ch).init_producer_id(req).await },
    )
    .await
    {
        Ok(resp) => match epoch_of(resp.producer_epoch) {
            Some(epoch) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(resp.producer_id))
                .with_producer_epoch(epoch),
            None => refused(errors::UNKNOWN_SERVER_ERROR),
        },
        Err(code) => refused(code),
    }
}

pub(super) async fn add_partitions(k: &Kafka, r: AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse {
    let view = k.router.snapshot();
    // Every partition must exist before any is added: otherwise the others are not tried,
    // as in Kafka.
    let known = |t: &str, p: i32| view.topics.get(t).is_some_and(|m| p >= 0 && (p as usize) < m.partitions.len());
    let all_known = r.v3_and_below_topics.iter().all(|t| t.partitions.iter().all(|p| known(&t.name.0, *p)));
    let (producer_id, epoch) = (r.v3_and_below_producer_id.0, r.v3_and_below_producer_epoch);
    let mut calls = Vec::new();
    if all_known {
        for t in &r.v3_and_below_topics {
            for p in &t.partitions {
                let req = v1::AddPartitionsToTxnRequest {
                    producer_id,
                    producer_epoch: i32::from(epoch),
                    topic: t.name.0.to_string(),
                    partition: *p as u32,
                    from_client: true,
                };
                calls.push(call_coordinator(k, TIMEOUT, req, |ch, req| async move {
                    TransactionsClient::new(ch).add_partitions_to_txn(req).await
                }));
            }
        }
    }
    let mut outcomes = futures_util::future::join_all(calls).await.into_iter();
    let results = r
        .v3_and_below_topics
        .into_iter()
        .map(|t| {
            let topic = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if !all_known {
                        if known(&topic, *p) {
                            errors::OPERATION_NOT_ATTEMPTED
                        } else {
                            errors::UNKNOWN_TOPIC_OR_PARTITION
                        }
                    } else {
                        match outcomes.next() {
                            Some(Ok(_)) => errors::NONE,
                            Some(Err(code)) => txn_error(code),
                            None => errors::UNKNOWN_SERVER_ERROR,
                        }
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(t.name).with_results_by_partition(partitions)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

/// AddOffsetsToTxn: in Sluice a transaction's offsets travel in TxnOffsetCommit alone, so this
/// only checks that the producer is the id's current one.
pub(super) async fn add_offsets(k: &Kafka, r: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let code = match describe_one(k, r.transactional_id.0.to_string()).await {
        Ok(d) if d.producer_id != r.producer_id.0 => errors::INVALID_PRODUCER_ID_MAPPING,
        Ok(d) if d.producer_epoch > i32::from(r.producer_epoch) => errors::PRODUCER_FENCED,
        Ok(d) if d.producer_epoch != i32::from(r.producer_epoch) => errors::INVALID_PRODUCER_EPOCH,
        Ok(_) => errors::NONE,
        Err(code) => txn_error(code),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

async fn describe_one(k: &Kafka, transactional_id: String) -> Result<v1::TransactionDescription, i16> {
    let req = v1::DescribeTransactionRequest { transactional_id };
    call_coordinator(
        k,
        TIMEOUT,
        req,
        |ch, req| async move { TransactionsClient::new(ch).describe_transaction(req).await },
    )
    .await
}

pub(super) async fn txn_offset_commit(
    k: &Kafka,
    r: kafka_protocol::messages::TxnOffsetCommitRequest,
) -> kafka_protocol::messages::TxnOffsetCommitResponse {
    let offsets = r
        .topics
        .iter()
        .flat_map(|t| {
            let valid = t.partitions.iter().filter(|p| p.partition_index >= 0);
            valid.map(|p| committed(&t.name.0, p.partition_index, p.committed_offset, p.committed_metadata.as_ref()))
        })
        .collect();
    let member_id = r.member_id.to_string();
    let req = v1::TxnOffsetCommitRequest {
        transactional_id: r.transactional_id.0.to_string(),
        producer_id: r.producer_id.0,
        producer_epoch: i32::from(r.producer_epoch),
        group_id: r.group_id.0.to_string(),
        // Members fence their commits by generation (KIP-447); version 2 and older name none.
        generation: if member_id.is_empty() { 0 } else { r.generation_id.max(0) as u64 },
        member_id,
        offsets,
    };
    let answer =
        call_coordinator(
            k,
            TIMEOUT,
            req,
            |ch, req| async move { TransactionsClient::new(ch).txn_offset_commit(req).await },
        )
        .await
        .map(|resp| resp.results);
    let indexes = r.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.partition_index));
    let mut codes = commit_codes(indexes, &answer, txn_error).into_iter();
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(codes.next().unwrap_or(errors::UNKNOWN_SERVER_ERROR))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    kafka_protocol::messages::TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(super) async fn end(k: &Kafka, r: EndTxnRequest, version: i16) -> EndTxnResponse {
    let req = v1::EndTxnRequest {
        transactional_id: r.transactional_id.0.to_string(),
        producer_id: r.producer_id.0,
        producer_epoch: i32::from(r.producer_epoch),
        commit: r.committed,
        // Version 5 is transaction version 2: the client takes the epoch the answer gives.
        keep_epoch: version < 5,
    };
    let failed = |code: i16| {
        EndTxnResponse::default()
            .with_error_code(txn_error(code))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    match call_coordinator(k, TIMEOUT, req, |ch, req| async move { TransactionsClient::new(ch).end_txn(req).await })
        .await
    {
        Ok(next) => match epoch_of(next.producer_epoch) {
            Some(epoch) if version >= 5 => {
                EndTxnResponse::default().with_producer_id(ProducerId(next.producer_id)).with_producer_epoch(epoch)
            }
            Some(_) => EndTxnResponse::default(),
            None => failed(errors::UNKNOWN_SERVER_ERROR),
        },
        Err(code) => failed(code),
    }
}

/// Kafka's name for a transaction state.
fn state_name(state: i32) -> &'static str {
    match v1::TransactionState::try_from(state).unwrap_or(v1::TransactionState::Unspecified) {
        v1::TransactionState::Ongoing => "Ongoing",
        v1::TransactionState::PrepareCommit => "PrepareCommit",
        v1::TransactionState::PrepareAbort => "PrepareAbort",
        v1::TransactionState::CompleteCommit => "CompleteCommit",
        v1::TransactionState::CompleteAbort => "CompleteAbort",
        v1::TransactionState::Empty | v1::TransactionState::Unspecified => "Empty",
    }
}

pub(super) async fn describe(k: &Kafka, r: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(r.transactional_ids.len());
    for id in r.transactional_ids {
        let state = match describe_one(k, id.0.to_string()).await {
            Ok(d) => TransactionState::default()
                .with_transaction_state(StrBytes::from_static_str(state_name(d.state)))
                .with_transaction_timeout_ms(d.transaction_timeout_ms.min(i32::MAX as u32) as i32)
                .with_transaction_start_time_ms(if d.start_time_ms > 0 { d.start_time_ms } else { -1 })
                .with_producer_id(ProducerId(d.producer_id))
                .with_producer_epoch(epoch_of(d.producer_epoch).unwrap_or(-1))
                .with_topics(
                    d.partitions
                        .iter()
                        .map(|t| {
                            TopicData::default()
                                .with_topic(name(&t.topic))
                                .with_partitions(t.partitions.iter().map(|p| *p as i32).collect())
                        })
                        .collect(),
                ),
            Err(code) => TransactionState::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1),
        };
        states.push(state.with_transactional_id(id));
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub(super) async fn list(k: &Kafka, r: ListTransactionsRequest) -> ListTransactionsResponse {
    let req = v1::ListTransactionsRequest {};
    let all = match call_coordinator(k, TIMEOUT, req, |ch, req| async move {
        TransactionsClient::new(ch).list_transactions(req).await
    })
    .await
    {
        Ok(all) => all,
        Err(code) => return ListTransactionsResponse::default().with_error_code(code),
    };
    const STATES: [&str; 6] = ["Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort"];
    let unknown: Vec<StrBytes> = r.state_filters.iter().filter(|s| !STATES.contains(&s.as_str())).cloned().collect();
    let now = sluice_core::settings::now_ms();
    let listed = all
        .transactions
        .into_iter()
        .filter(|t| r.state_filters.is_empty() || r.state_filters.iter().any(|s| s.as_str() == state_name(t.state)))
        .filter(|t| r.producer_id_filters.is_empty() || r.producer_id_filters.iter().any(|p| p.0 == t.producer_id))
        // Version 1: only transactions running longer than this (ms); -1 means all.
        .filter(|t| r.duration_filter < 0 || (t.start_time_ms > 0 && now - t.start_time_ms > r.duration_filter))
        .map(|t| {
            ListedTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(t.transactional_id)))
                .with_producer_id(ProducerId(t.producer_id))
                .with_transaction_state(StrBytes::from_static_str(state_name(t.state)))
        })
        .collect();
    ListTransactionsResponse::default().with_unknown_state_filters(unknown).with_transaction_states(listed)
}
