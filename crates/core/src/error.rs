//! The one error type clients see, with stable numeric codes and the single mapping to gRPC.
//!
//! Codes are grouped by domain and never reused: 1xxx requests and topics, 2xxx records and
//! offsets, 3xxx availability, 4xxx server faults, 5xxx consumer groups, 6xxx transactions. The code travels in the `sluice-code` status
//! metadata and in `v1::Error::sluice_code`.

use sluice_proto::v1;
use tonic::Code;

/// Everything that can go wrong in a request, as the client is told.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SluiceError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("partition {partition} of topic '{topic}' does not exist (the topic has {count} partitions)")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("invalid partition count {count}: {reason}")]
    InvalidPartitions { count: u32, reason: String },
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    #[error("invalid replication factor {factor}: {reason}")]
    InvalidReplicationFactor { factor: u32, reason: String },
    #[error("record batch of {size} bytes is larger than max.message.bytes ({limit} bytes)")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    #[error(
        "offset {offset} is out of range for partition {partition} of '{topic}': valid offsets are {start} to {end}"
    )]
    OffsetOutOfRange { topic: String, partition: u32, offset: i64, start: i64, end: i64 },
    #[error(
        "out-of-order sequence from producer {producer_id} on partition {partition} of '{topic}': expected sequence {expected}, got {got} (an earlier batch is missing)"
    )]
    OutOfOrderSequence { topic: String, partition: u32, producer_id: i64, expected: i32, got: i32 },
    #[error(
        "producer {producer_id} used epoch {epoch} on partition {partition} of '{topic}', older than its current epoch {current}: a newer instance of this producer took over"
    )]
    InvalidProducerEpoch { topic: String, partition: u32, producer_id: i64, epoch: i16, current: i16 },
    #[error(
        "batch with sequence {sequence} from producer {producer_id} on partition {partition} of '{topic}' was already written, too long ago to tell its offsets"
    )]
    DuplicateSequence { topic: String, partition: u32, producer_id: i64, sequence: i32 },
    #[error("node {node} is not the leader of partition {partition} of '{topic}'")]
    NotLeader { topic: String, partition: u32, node: u64 },
    #[error("node unavailable: {0}")]
    NodeUnavailable(String),
    #[error(
        "partition {partition} of '{topic}' has {isr} in-sync replica(s), fewer than min.insync.replicas={min}: acks=all writes are refused until replicas catch up"
    )]
    NotEnoughReplicas { topic: String, partition: u32, isr: u32, min: u32 },
    #[error(
        "partition {partition} of '{topic}' lost in-sync replicas while an acks=all write waited ({isr} left, min.insync.replicas={min}): the records were stored on the leader but may not survive its failure"
    )]
    NotEnoughReplicasAfterAppend { topic: String, partition: u32, isr: u32, min: u32 },
    #[error(
        "partition {partition} of '{topic}' has no live leader (node {node} is not alive); an in-sync replica will be elected"
    )]
    LeaderNotAvailable { topic: String, partition: u32, node: u64 },
    #[error("invalid group id '{name}': {reason}")]
    InvalidGroupId { name: String, reason: String },
    #[error("group '{0}' does not exist")]
    UnknownGroup(String),
    #[error("group '{group}' has {members} active member(s): {action} is refused until they leave")]
    GroupNotEmpty { group: String, members: usize, action: String },
    #[error("member '{member}' is not in group '{group}' (its session expired or it left); rejoin as a new member")]
    UnknownMember { group: String, member: String },
    #[error("{0}")]
    StaleGeneration(String),
    #[error(
        "member '{member}' of group '{group}' was replaced by a newer stream of the same member (same group.instance.id)"
    )]
    FencedInstance { group: String, member: String },
    #[error("no group coordinator is active: {0}")]
    CoordinatorNotAvailable(String),
    #[error("group '{0}' is rebalancing: rejoin it")]
    RebalanceInProgress(String),
    #[error("group '{group}': {reason}")]
    InconsistentGroupProtocol { group: String, reason: String },
    #[error(
        "member '{member}' of group '{group}' sent epoch {epoch}, but its epoch is {current}: it must give up its partitions and join again"
    )]
    FencedMemberEpoch { group: String, member: String, epoch: i32, current: i32 },
    #[error(
        "group.instance.id '{instance}' of group '{group}' is still held by member '{member}', which has not left; a new member cannot take it"
    )]
    UnreleasedInstanceId { group: String, instance: String, member: String },
    #[error("{0}")]
    StaleMemberEpoch(String),
    #[error("assignor '{0}' is not supported (uniform, range, sticky or roundrobin)")]
    UnsupportedAssignor(String),
    #[error("connector '{0}' does not exist")]
    UnknownConnector(String),
    #[error("connector '{0}' already exists")]
    ConnectorExists(String),
    #[error("invalid connector config: {0}")]
    InvalidConnectorConfig(String),
    #[error(
        "producer {producer_id} at epoch {epoch} was fenced: transactional id '{transactional_id}' is now at epoch {current} (a newer producer with this id called init)"
    )]
    ProducerFenced { transactional_id: String, producer_id: i64, epoch: i16, current: i16 },
    #[error("transactional id '{transactional_id}': {reason}")]
    InvalidTxnState { transactional_id: String, reason: String },
    #[error("transactional id '{transactional_id}' is ending a transaction ({state}); try again once it is complete")]
    ConcurrentTransactions { transactional_id: String, state: String },
    #[error("transactional id '{0}' does not exist (no producer called init with it)")]
    UnknownTransactionalId(String),
    #[error("producer id {producer_id} at epoch {epoch} belongs to no transactional id")]
    InvalidProducerIdMapping { producer_id: i64, epoch: i16 },
    #[error(
        "group '{group}' has offsets of partition {partition} of '{topic}' in a transaction not yet ended; try again once it commits or aborts"
    )]
    UnstableOffsetCommit { group: String, topic: String, partition: u32 },
    #[error("transaction markers from coordinator epoch {epoch} refused: coordinator epoch {current} took over")]
    CoordinatorFenced { epoch: u64, current: u64 },
    #[error("metadata store unavailable: {0}")]
    MetadataUnavailable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Codes other services act on.
pub mod codes {
    pub const OFFSET_OUT_OF_RANGE: u32 = 2003;
    /// A producer's batch does not follow its previous one (an earlier batch is missing).
    pub const OUT_OF_ORDER_SEQUENCE: u32 = 2004;
    /// A producer's epoch is older than the partition's: a newer instance took over.
    pub const INVALID_PRODUCER_EPOCH: u32 = 2005;
    /// A producer's batch was already written, too long ago to answer with its offsets.
    pub const DUPLICATE_SEQUENCE: u32 = 2006;
    pub const NOT_LEADER: u32 = 3001;
    pub const NODE_UNAVAILABLE: u32 = 3002;
    pub const NOT_ENOUGH_REPLICAS: u32 = 3005;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: u32 = 3006;
    pub const LEADER_NOT_AVAILABLE: u32 = 3007;
    pub const UNKNOWN_MEMBER: u32 = 5004;
    pub const STALE_GENERATION: u32 = 5005;
    pub const COORDINATOR_NOT_AVAILABLE: u32 = 5006;
    /// A static member's stream was taken over by a newer one with the same instance id.
    pub const FENCED_INSTANCE: u32 = 5007;
    /// A classic group is between generations: the member must rejoin.
    pub const REBALANCE_IN_PROGRESS: u32 = 5008;
    pub const INCONSISTENT_GROUP_PROTOCOL: u32 = 5009;
    /// A Kafka consumer-protocol member's epoch is not the one it was given: it rejoins.
    pub const FENCED_MEMBER_EPOCH: u32 = 5010;
    pub const UNRELEASED_INSTANCE_ID: u32 = 5011;
    /// A consumer-protocol member's commit under an epoch that no longer covers the partition.
    pub const STALE_MEMBER_EPOCH: u32 = 5012;
    pub const UNSUPPORTED_ASSIGNOR: u32 = 5013;
    /// A newer producer with the same transactional id took over: this one must stop.
    pub const PRODUCER_FENCED: u32 = 6001;
    /// The operation does not fit the transaction's state (the transaction must be aborted).
    pub const INVALID_TXN_STATE: u32 = 6002;
    /// The previous transaction of the id is still ending (retriable).
    pub const CONCURRENT_TRANSACTIONS: u32 = 6003;
    pub const UNKNOWN_TRANSACTIONAL_ID: u32 = 6004;
    pub const INVALID_PRODUCER_ID_MAPPING: u32 = 6005;
    /// Offsets of the partition are pending in a transaction (retriable).
    pub const UNSTABLE_OFFSET_COMMIT: u32 = 6006;
    pub const COORDINATOR_FENCED: u32 = 6007;
}

impl SluiceError {
    /// Stable numeric code; pinned by a test.
    pub fn code(&self) -> u32 {
        match self {
            Self::InvalidRequest(_) => 1000,
            Self::InvalidTopicName { .. } => 1001,
            Self::TopicExists(_) => 1002,
            Self::UnknownTopic(_) => 1003,
            Self::UnknownPartition { .. } => 1004,
            Self::InvalidPartitions { .. } => 1005,
            Self::InvalidConfig(_) => 1006,
            Self::InvalidReplicationFactor { .. } => 1007,
            Self::RecordTooLarge { .. } => 2001,
            Self::CorruptBatch(_) => 2002,
            Self::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
            Self::OutOfOrderSequence { .. } => codes::OUT_OF_ORDER_SEQUENCE,
            Self::InvalidProducerEpoch { .. } => codes::INVALID_PRODUCER_EPOCH,
            Self::DuplicateSequence { .. } => codes::DUPLICATE_SEQUENCE,
            Self::NotLeader { .. } => codes::NOT_LEADER,
            Self::NodeUnavailable(_) => codes::NODE_UNAVAILABLE,
            Self::MetadataUnavailable(_) => 3003,
            Self::Timeout(_) => 3004,
            Self::NotEnoughReplicas { .. } => codes::NOT_ENOUGH_REPLICAS,
            Self::NotEnoughReplicasAfterAppend { .. } => codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            Self::LeaderNotAvailable { .. } => codes::LEADER_NOT_AVAILABLE,
            Self::InvalidGroupId { .. } => 5001,
            Self::UnknownGroup(_) => 5002,
            Self::GroupNotEmpty { .. } => 5003,
            Self::UnknownMember { .. } => codes::UNKNOWN_MEMBER,
            Self::StaleGeneration(_) => codes::STALE_GENERATION,
            Self::CoordinatorNotAvailable(_) => codes::COORDINATOR_NOT_AVAILABLE,
            Self::FencedInstance { .. } => codes::FENCED_INSTANCE,
            Self::RebalanceInProgress(_) => codes::REBALANCE_IN_PROGRESS,
            Self::InconsistentGroupProtocol { .. } => codes::INCONSISTENT_GROUP_PROTOCOL,
            Self::FencedMemberEpoch { .. } => codes::FENCED_MEMBER_EPOCH,
            Self::UnreleasedInstanceId { .. } => codes::UNRELEASED_INSTANCE_ID,
            Self::StaleMemberEpoch(_) => codes::STALE_MEMBER_EPOCH,
            Self::UnsupportedAssignor(_) => codes::UNSUPPORTED_ASSIGNOR,
            Self::UnknownConnector(_) => 7001,
            Self::ConnectorExists(_) => 7002,
            Self::InvalidConnectorConfig(_) => 7003,
            Self::ProducerFenced { .. } => codes::PRODUCER_FENCED,
            Self::InvalidTxnState { .. } => codes::INVALID_TXN_STATE,
            Self::ConcurrentTransactions { .. } => codes::CONCURRENT_TRANSACTIONS,
            Self::UnknownTransactionalId(_) => codes::UNKNOWN_TRANSACTIONAL_ID,
            Self::InvalidProducerIdMapping { .. } => codes::INVALID_PRODUCER_ID_MAPPING,
            Self::UnstableOffsetCommit { .. } => codes::UNSTABLE_OFFSET_COMMIT,
            Self::CoordinatorFenced { .. } => codes::COORDINATOR_FENCED,
            Self::Storage(_) => 4001,
            Self::Internal(_) => 4002,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidRequest(_)
            | Self::InvalidTopicName { .. }
            | Self::InvalidPartitions { .. }
            | Self::InvalidConfig(_)
            | Self::InvalidConnectorConfig(_)
            | Self::InvalidReplicationFactor { .. }
            | Self::RecordTooLarge { .. }
            | Self::CorruptBatch(_)
            | Self::InvalidGroupId { .. }
            | Self::UnsupportedAssignor(_) => Code::InvalidArgument,
            Self::UnknownGroup(_) | Self::UnknownMember { .. } | Self::FencedInstance { .. } => Code::NotFound,
            Self::GroupNotEmpty { .. }
            | Self::StaleGeneration(_)
            | Self::OutOfOrderSequence { .. }
            | Self::InvalidProducerEpoch { .. }
            | Self::ProducerFenced { .. }
            | Self::InvalidTxnState { .. }
            | Self::InvalidProducerIdMapping { .. }
            | Self::InconsistentGroupProtocol { .. }
            | Self::FencedMemberEpoch { .. }
            | Self::UnreleasedInstanceId { .. }
            | Self::StaleMemberEpoch(_)
            | Self::CoordinatorFenced { .. } => Code::FailedPrecondition,
            Self::UnknownTransactionalId(_) => Code::NotFound,
            Self::ConcurrentTransactions { .. } | Self::RebalanceInProgress(_) => Code::Aborted,
            Self::DuplicateSequence { .. } => Code::AlreadyExists,
            Self::TopicExists(_) | Self::ConnectorExists(_) => Code::AlreadyExists,
            Self::UnknownConnector(_) => Code::NotFound,
            Self::UnknownTopic(_) | Self::UnknownPartition { .. } => Code::NotFound,
            Self::OffsetOutOfRange { .. } => Code::OutOfRange,
            Self::NotLeader { .. }
            | Self::NodeUnavailable(_)
            | Self::MetadataUnavailable(_)
            | Self::NotEnoughReplicas { .. }
            | Self::NotEnoughReplicasAfterAppend { .. }
            | Self::LeaderNotAvailable { .. }
            | Self::CoordinatorNotAvailable(_)
            | Self::UnstableOffsetCommit { .. } => Code::Unavailable,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Storage(_) | Self::Internal(_) => Code::Internal,
        }
    }

    /// Whether the same request may succeed when retried.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            Self::NotLeader { .. }
                | Self::NodeUnavailable(_)
                | Self::MetadataUnavailable(_)
                | Self::Timeout(_)
                | Self::NotEnoughReplicas { .. }
                | Self::NotEnoughReplicasAfterAppend { .. }
                | Self::LeaderNotAvailable { .. }
                | Self::CoordinatorNotAvailable(_)
                | Self::ConcurrentTransactions { .. }
                | Self::UnstableOffsetCommit { .. }
        )
    }

    /// What a client is told. Server faults (storage, internal) are not described to
    /// clients, whose requests did nothing wrong and who could do nothing with the detail:
    /// they get a generic sentence with an id, and the detail goes to this server's log under
    /// the same id.
    pub fn client_message(&self) -> String {
        match self {
            Self::Storage(_) | Self::Internal(_) => {
                let id = fault_id();
                tracing::error!(error_id = %id, error = %self, "server fault reported to a client");
                let what = if matches!(self, Self::Storage(_)) { "storage error" } else { "internal error" };
                format!("{what} on the server (error id {id}; the server log has the detail under that id)")
            }
            _ => self.to_string(),
        }
    }

    /// The wire form used inside responses (per partition, per request).
    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.grpc_code() as i32,
            message: self.client_message(),
            retriable: self.retriable(),
            sluice_code: self.code(),
        }
    }
}

/// A short id naming one server fault in a client's error and in the server log.
fn fault_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:x}-{:x}-{n}", std::process::id(), now.as_millis() as u64 & 0xffff_ffff)
}

/// The only mapping from errors to gRPC statuses: the status code, the client's sentence, and
/// the stable code in the `sluice-code` metadata.
impl From<SluiceError> for tonic::Status {
    fn from(e: SluiceError) -> Self {
        let mut status = tonic::Status::new(e.grpc_code(), e.client_message());
        status.metadata_mut().insert("sluice-code", e.code().into());
        status
    }
}

/// An error as received over the wire, from a status or a per-partition error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct RemoteError {
    pub code: Code,
    pub message: String,
    pub retriable: bool,
    pub sluice_code: u32,
}

impl From<&v1::Error> for RemoteError {
    fn from(e: &v1::Error) -> Self {
        Self {
            code: Code::from_i32(e.code),
            message: e.message.clone(),
            retriable: e.retriable,
            sluice_code: e.sluice_code,
        }
    }
}

impl From<tonic::Status> for RemoteError {
    fn from(s: tonic::Status) -> Self {
        let sluice_code =
            s.metadata().get("sluice-code").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        // Statuses Sluice sends carry a sluice-code; one without it, Unknown or Cancelled, is
        // the transport's: a connection that broke mid-call (a gateway restarting).
        let broken = sluice_code == 0 && matches!(s.code(), Code::Unknown | Code::Cancelled);
        let retriable = broken
            || matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted);
        let message = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() };
        Self { code: s.code(), message, retriable, sluice_code }
    }
}

impl From<SluiceError> for v1::Error {
    fn from(e: SluiceError) -> Self {
        e.to_proto()
    }
}

impl From<RemoteError> for v1::Error {
    fn from(e: RemoteError) -> Self {
        v1::Error { code: e.code as i32, message: e.message, retriable: e.retriable, sluice_code: e.sluice_code }
    }
}

impl From<crate::batch::BatchError> for SluiceError {
    fn from(e: crate::batch::BatchError) -> Self {
        match e {
            crate::batch::BatchError::TooLarge { size, limit } => Self::RecordTooLarge { size, limit },
            other => Self::CorruptBatch(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, with its pinned code and gRPC code. The match has no wildcard: a new
    /// variant does not compile until it is pinned here.
    fn pinned(e: &SluiceError) -> (u32, Code) {
        use SluiceError::*;
        match e {
            InvalidRequest(_) => (1000, Code::InvalidArgument),
            InvalidTopicName { .. } => (1001, Code::InvalidArgument),
            TopicExists(_) => (1002, Code::AlreadyExists),
            UnknownTopic(_) => (1003, Code::NotFound),
            UnknownPartition { .. } => (1004, Code::NotFound),
            InvalidPartitions { .. } => (1005, Code::InvalidArgument),
            InvalidConfig(_) => (1006, Code::InvalidArgument),
            InvalidReplicationFactor { .. } => (1007, Code::InvalidArgument),
            RecordTooLarge { .. } => (2001, Code::InvalidArgument),
            CorruptBatch(_) => (2002, Code::InvalidArgument),
            OffsetOutOfRange { .. } => (2003, Code::OutOfRange),
            OutOfOrderSequence { .. } => (2004, Code::FailedPrecondition),
            InvalidProducerEpoch { .. } => (2005, Code::FailedPrecondition),
            DuplicateSequence { .. } => (2006, Code::AlreadyExists),
            NotLeader { .. } => (3001, Code::Unavailable),
            NodeUnavailable(_) => (3002, Code::Unavailable),
            MetadataUnavailable(_) => (3003, Code::Unavailable),
            Timeout(_) => (3004, Code::DeadlineExceeded),
            NotEnoughReplicas { .. } => (3005, Code::Unavailable),
            NotEnoughReplicasAfterAppend { .. } => (3006, Code::Unavailable),
            LeaderNotAvailable { .. } => (3007, Code::Unavailable),
            Storage(_) => (4001, Code::Internal),
            Internal(_) => (4002, Code::Internal),
            InvalidGroupId { .. } => (5001, Code::InvalidArgument),
            UnknownGroup(_) => (5002, Code::NotFound),
            GroupNotEmpty { .. } => (5003, Code::FailedPrecondition),
            UnknownMember { .. } => (5004, Code::NotFound),
            StaleGeneration(_) => (5005, Code::FailedPrecondition),
            CoordinatorNotAvailable(_) => (5006, Code::Unavailable),
            FencedInstance { .. } => (5007, Code::NotFound),
            RebalanceInProgress(_) => (5008, Code::Aborted),
            InconsistentGroupProtocol { .. } => (5009, Code::FailedPrecondition),
            FencedMemberEpoch { .. } => (5010, Code::FailedPrecondition),
            UnreleasedInstanceId { .. } => (5011, Code::FailedPrecondition),
            StaleMemberEpoch(_) => (5012, Code::FailedPrecondition),
            UnsupportedAssignor(_) => (5013, Code::InvalidArgument),
            UnknownConnector(_) => (7001, Code::NotFound),
            ConnectorExists(_) => (7002, Code::AlreadyExists),
            InvalidConnectorConfig(_) => (7003, Code::InvalidArgument),
            ProducerFenced { .. } => (6001, Code::FailedPrecondition),
            InvalidTxnState { .. } => (6002, Code::FailedPrecondition),
            ConcurrentTransactions { .. } => (6003, Code::Aborted),
            UnknownTransactionalId(_) => (6004, Code::NotFound),
            InvalidProducerIdMapping { .. } => (6005, Code::FailedPrecondition),
            UnstableOffsetCommit { .. } => (6006, Code::Unavailable),
            CoordinatorFenced { .. } => (6007, Code::FailedPrecondition),
        }
    }

    fn one_of_each() -> Vec<SluiceError> {
        use SluiceError::*;
        let s = String::new;
        vec![
            InvalidRequest(s()),
            InvalidTopicName { name: s(), reason: s() },
            TopicExists(s()),
            UnknownTopic(s()),
            UnknownPartition { topic: s(), partition: 0, count: 0 },
            InvalidPartitions { count: 0, reason: s() },
            InvalidConfig(s()),
            InvalidReplicationFactor { factor: 0, reason: s() },
            RecordTooLarge { size: 0, limit: 0 },
            CorruptBatch(s()),
            OffsetOutOfRange { topic: s(), partition: 0, offset: 0, start: 0, end: 0 },
            OutOfOrderSequence { topic: s(), partition: 0, producer_id: 1, expected: 1, got: 3 },
            InvalidProducerEpoch { topic: s(), partition: 0, producer_id: 1, epoch: 0, current: 1 },
            DuplicateSequence { topic: s(), partition: 0, producer_id: 1, sequence: 0 },
            NotLeader { topic: s(), partition: 0, node: 0 },
            NodeUnavailable(s()),
            MetadataUnavailable(s()),
            Timeout(s()),
            NotEnoughReplicas { topic: s(), partition: 0, isr: 1, min: 2 },
            NotEnoughReplicasAfterAppend { topic: s(), partition: 0, isr: 1, min: 2 },
            LeaderNotAvailable { topic: s(), partition: 0, node: 0 },
            Storage(s()),
            Internal(s()),
            InvalidGroupId { name: s(), reason: s() },
            UnknownGroup(s()),
            GroupNotEmpty { group: s(), members: 1, action: s() },
            UnknownMember { group: s(), member: s() },
            StaleGeneration(s()),
            CoordinatorNotAvailable(s()),
            FencedInstance { group: s(), member: s() },
            RebalanceInProgress(s()),
            InconsistentGroupProtocol { group: s(), reason: s() },
            FencedMemberEpoch { group: s(), member: s(), epoch: 1, current: 2 },
            UnreleasedInstanceId { group: s(), instance: s(), member: s() },
            StaleMemberEpoch(s()),
            UnsupportedAssignor(s()),
            UnknownConnector(s()),
            ConnectorExists(s()),
            InvalidConnectorConfig(s()),
            ProducerFenced { transactional_id: s(), producer_id: 1, epoch: 0, current: 1 },
            InvalidTxnState { transactional_id: s(), reason: s() },
            ConcurrentTransactions { transactional_id: s(), state: s() },
            UnknownTransactionalId(s()),
            InvalidProducerIdMapping { producer_id: 1, epoch: 0 },
            UnstableOffsetCommit { group: s(), topic: s(), partition: 0 },
            CoordinatorFenced { epoch: 1, current: 2 },
        ]
    }

    #[test]
    fn every_code_is_pinned_and_travels_in_statuses_and_responses() {
        let all = one_of_each();
        let kinds: std::collections::HashSet<_> = all.iter().map(std::mem::discriminant).collect();
        assert_eq!(kinds.len(), all.len(), "one example per variant");
        let codes: std::collections::HashSet<_> = all.iter().map(SluiceError::code).collect();
        assert_eq!(codes.len(), all.len(), "codes are never shared");
        for e in all {
            let (code, grpc) = pinned(&e);
            assert_eq!((e.code(), e.grpc_code()), (code, grpc), "{e:?}");
            let p = e.to_proto();
            assert_eq!((p.sluice_code, p.code, p.retriable), (code, grpc as i32, e.retriable()), "{e:?}");
            let s = tonic::Status::from(e.clone());
            assert_eq!(s.code(), grpc, "{e:?}");
            assert_eq!(RemoteError::from(s).sluice_code, code, "{e:?}");
        }
    }

    #[test]
    fn server_faults_reach_clients_as_an_id_not_their_detail() {
        for e in [SluiceError::Storage("sled: Io(Os { code: 28 })".into()), SluiceError::Internal("lock".into())] {
            let s = tonic::Status::from(e.clone());
            assert!(!s.message().contains("sled") && !s.message().contains("lock"), "{}", s.message());
            assert!(s.message().contains("error id"), "{}", s.message());
            assert!(!e.to_proto().message.contains("sled"));
        }
        let a = SluiceError::Internal("x".into()).client_message();
        let b = SluiceError::Internal("x".into()).client_message();
        assert_ne!(a, b, "each fault gets its own id");
    }

    #[test]
    fn status_carries_code_and_sentence() {
        let s: tonic::Status = SluiceError::UnknownTopic("x".into()).into();
        assert_eq!(s.message(), "topic 'x' does not exist");
        let r = RemoteError::from(s);
        assert_eq!(r.sluice_code, 1003);
        assert!(!r.retriable);
    }

    #[test]
    fn a_broken_transport_is_retriable_a_refusal_is_not() {
        let broken =
            RemoteError::from(tonic::Status::unknown("h2 protocol error: error reading a body from connection"));
        assert!(broken.retriable);
        assert!(RemoteError::from(tonic::Status::cancelled("operation was canceled")).retriable);
        assert!(!RemoteError::from(tonic::Status::invalid_argument("bad")).retriable);
        let ours: tonic::Status = SluiceError::StaleGeneration("x".into()).into();
        assert!(!RemoteError::from(ours).retriable);
    }
}
