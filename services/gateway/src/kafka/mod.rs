//! The Kafka wire protocol on a gateway, so that Kafka's own clients (librdkafka, the Java
//! client, kafka-python, kcat) work against Sluice unchanged.
//!
//! The gateways are the brokers a Kafka client sees: metadata lists every live gateway (each
//! registers its Kafka address in the metadata store) and names one the leader of each
//! partition; whichever gateway gets a request routes it to the real leaders through the same
//! data path as gRPC ([`Router`]). Record batches go through as they are: a
//! produced RecordBatch v2 is what the partition node stores, and a fetch returns stored
//! batches untouched.
//!
//! Messages are decoded and encoded with the `kafka-protocol` crate. Requests on one
//! connection are handled concurrently (up to [`MAX_IN_FLIGHT`]) and answered in the order
//! they came, as the protocol requires. A frame longer than [`MAX_FRAME`], a truncated
//! frame, an API key this listener does not serve or a version it does not support (other
//! than ApiVersions, which answers UNSUPPORTED_VERSION with what is supported) closes the
//! connection, as Kafka brokers do.
//!
//! - [`versions`]: ApiVersions and the list of what is served.
//! - [`metadata`], [`produce`], [`fetch`], [`offsets`], [`topics`], [`configs`],
//!   [`coordinator`], [`groups`], [`txn`]: the APIs.

mod configs;
mod consumer;
mod coordinator;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod topics;
mod txn;
mod versions;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_router::Router;
use sluice_runtime::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Largest request frame accepted (Kafka's socket.request.max.bytes).
pub const MAX_FRAME: usize = 100 << 20;
/// Requests of one connection handled at once; the next waits.
pub const MAX_IN_FLIGHT: usize = 32;
/// A gateway's node id as Kafka clients see it, from its advertised Kafka address: the same
/// for as long as the address is, and (31-bit FNV-1a) different between gateways but for a
/// collision no cluster of a few gateways is likely to meet. Also spreads topics in metadata.
pub fn node_id(addr: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in addr.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    ((h & 0x7fff_ffff) as i32).max(1)
}

/// What a Kafka listener needs: the data path, the coordinator, and the address clients are
/// told.
pub struct Kafka {
    pub router: Arc<Router>,
    pub coordinator: sluice_runtime::node_api::CoordinatorLink,
    pub host: String,
    pub port: i32,
    /// This gateway's node id (see [`node_id`]).
    pub node_id: i32,
}

/// Kafka's error codes used here.
pub(crate) mod errors {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const INVALID_REQUEST: i16 = 42;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// The Kafka error code for a Sluice error code (`sluice_core::error`).
pub(crate) fn kafka_error(sluice_code: u32) -> i16 {
    use errors::*;
    match sluice_code {
        1003 | 1004 => UNKNOWN_TOPIC_OR_PARTITION,
        1000 => INVALID_REQUEST,
        1001 => INVALID_TOPIC_EXCEPTION,
        1002 => TOPIC_ALREADY_EXISTS,
        1005 => INVALID_PARTITIONS,
        1006 => INVALID_CONFIG,
        1007 => INVALID_REPLICATION_FACTOR,
        2001 => MESSAGE_TOO_LARGE,
        2002 => CORRUPT_MESSAGE,
        2003 => OFFSET_OUT_OF_RANGE,
        2004 => OUT_OF_ORDER_SEQUENCE_NUMBER,
        2005 => INVALID_PRODUCER_EPOCH,
        2006 => DUPLICATE_SEQUENCE_NUMBER,
        // A node away or a leader changing: the client refreshes metadata and tries again.
        3001..=3003 => NOT_LEADER_OR_FOLLOWER,
        3004 => REQUEST_TIMED_OUT,
        3005 => NOT_ENOUGH_REPLICAS,
        3006 => NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        3007 => LEADER_NOT_AVAILABLE,
        5001 => INVALID_GROUP_ID,
        5002 => GROUP_ID_NOT_FOUND,
        5003 => NON_EMPTY_GROUP,
        5004 => UNKNOWN_MEMBER_ID,
        5005 => ILLEGAL_GENERATION,
        5006 => COORDINATOR_NOT_AVAILABLE,
        5007 => FENCED_INSTANCE_ID,
        5008 => REBALANCE_IN_PROGRESS,
        5009 => INCONSISTENT_GROUP_PROTOCOL,
        5010 => FENCED_MEMBER_EPOCH,
        5011 => UNRELEASED_INSTANCE_ID,
        5012 => STALE_MEMBER_EPOCH,
        5013 => UNSUPPORTED_ASSIGNOR,
        6001 => PRODUCER_FENCED,
        6002 => INVALID_TXN_STATE,
        6003 => CONCURRENT_TRANSACTIONS,
        6004 => TRANSACTIONAL_ID_NOT_FOUND,
        6005 => INVALID_PRODUCER_ID_MAPPING,
        6006 => UNSTABLE_OFFSET_COMMIT,
        // A storage fault of one node: retriable for Kafka clients.
        4001 => KAFKA_STORAGE_ERROR,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka error code of a Sluice failure.
pub(crate) fn error_of(e: &sluice_core::SluiceError) -> i16 {
    kafka_error(e.code())
}

/// How long a call keeps being retried while no coordinator is available (one is starting,
/// or taking over): clients see a short wait rather than an error they may handle badly.
const COORDINATOR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Calls the active coordinator with `call(channel, req)`, each attempt within `timeout`; a
/// failure is its Kafka error code. While no coordinator is available the call is tried
/// again, for [`COORDINATOR_WAIT`] at most: every call sent this way may be repeated (a
/// repeated commit, join or end gets the first one's outcome).
pub(crate) async fn call_coordinator<R, T, Fut>(
    k: &Kafka,
    timeout: std::time::Duration,
    req: R,
    call: impl Fn(tonic::transport::Channel, R) -> Fut,
) -> Result<T, i16>
where
    R: Clone,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + COORDINATOR_WAIT;
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let attempt = match k.coordinator.channel() {
            Err(e) => Err(error_of(&e)),
            Ok(channel) => match tokio::time::timeout(timeout, call(channel, req.clone())).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => {
                    let e = sluice_core::RemoteError::from(sluice_runtime::node_api::coordinator_unreachable(status));
                    Err(kafka_error(e.sluice_code))
                }
                Err(_) => return Err(errors::COORDINATOR_NOT_AVAILABLE),
            },
        };
        match attempt {
            Err(errors::COORDINATOR_NOT_AVAILABLE) if tokio::time::Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Who sent a request: its client id and address, as group descriptions show them.
pub(crate) struct Client {
    pub id: String,
    pub host: String,
}

/// Serves Kafka clients on `listener` until `shutdown`: at most `max_connections` at once
/// (more are closed as they come), each closed after `idle` without a request.
pub async fn serve(
    listener: TcpListener,
    kafka: Arc<Kafka>,
    max_connections: usize,
    idle: std::time::Duration,
    shutdown: Shutdown,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max_connections, "too many Kafka connections; closing the new one");
                        continue;
                    };
                    let span = tracing::info_span!("kafka_connection", %peer);
                    let kafka = kafka.clone();
                    tokio::spawn(async move {
                        connection(socket, peer, kafka, idle).await;
                        drop(slot);
                    }.instrument(span));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Kafka connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.wait() => return,
        }
    }
}

/// What a request gets.
enum Reply {
    /// A response frame, length prefix included.
    Frame(Bytes),
    /// Nothing (a produce with acks=0).
    Nothing,
    /// The connection is closed (a request that cannot be answered).
    Close,
}

/// A request being served; aborted when dropped unanswered (its connection went away), so
/// that nothing keeps working for a client that is gone.
struct InFlight(tokio::task::JoinHandle<Reply>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One client connection: frames are read and handed to tasks; their replies are written in
/// request order.
async fn connection(socket: TcpStream, peer: std::net::SocketAddr, kafka: Arc<Kafka>, idle: std::time::Duration) {
    let _ = socket.set_nodelay(true);
    let (mut rd, mut wr) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<InFlight>(MAX_IN_FLIGHT);
    let ordered = Arc::new(tokio::sync::Mutex::new(produce::Ordered::new(kafka.router.settings.batch_bytes)));
    let writer = tokio::spawn(async move {
        while let Some(mut task) = rx.recv().await {
            match (&mut task.0).await {
                Ok(Reply::Frame(frame)) => {
                    if wr.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                Ok(Reply::Nothing) => {}
                Ok(Reply::Close) | Err(_) => return,
            }
        }
    });
    loop {
        let mut len = [0u8; 4];
        match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // The client is gone (Kafka brokers close on end of stream too): nothing more is
            // answered, and what it asked is no longer worked on.
            Ok(Err(_)) => return abort(tx, writer).await,
            Err(_) => {
                tracing::debug!(?idle, "idle Kafka connection closed");
                break;
            }
        }
        let len = i32::from_be_bytes(len);
        // The header alone (api key, version, correlation id) is 8 bytes.
        if len < 8 || len as usize > MAX_FRAME {
            tracing::warn!(len, "Kafka frame of a size that cannot be a request; closing the connection");
            return abort(tx, writer).await;
        }
        // Memory follows the bytes that actually arrive, not the length a client claims.
        let len = len as usize;
        let mut body = BytesMut::with_capacity(len.min(64 << 10));
        while body.len() < len {
            body.reserve((len - body.len()).min(1 << 20));
            let want = (len - body.len()) as u64;
            // A frame started must keep coming: one stalled half-way holds no slot for ever.
            match tokio::time::timeout(idle, (&mut rd).take(want).read_buf(&mut body)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tracing::debug!("Kafka connection closed or stalled in the middle of a frame");
                    return abort(tx, writer).await;
                }
            }
        }
        let body = body.freeze();
        // A produce takes the connection's turn here, in arrival order; it gives it back once
        // its batches are on their way (see produce::handle).
        let turn = match i16::from_be_bytes([body[0], body[1]]) {
            0 => Some(ordered.clone().lock_owned().await),
            _ => None,
        };
        let task = InFlight(tokio::spawn(handle(kafka.clone(), body, turn, peer).in_current_span()));
        if tx.send(task).await.is_err() {
            break;
        }
    }
    finish(tx, writer).await;
}

/// Lets the writer answer what was read, then ends the connection.
async fn finish(tx: mpsc::Sender<InFlight>, writer: tokio::task::JoinHandle<()>) {
    drop(tx);
    let _ = writer.await;
}

/// Ends the connection at once: requests still running are aborted (dropping the writer's
/// queue drops their [`InFlight`] handles).
async fn abort(tx: mpsc::Sender<InFlight>, writer: tokio::task::JoinHandle<()>) {
    drop(tx);
    writer.abort();
    let _ = writer.await;
}

/// Decodes one request, serves it, encodes the answer.
async fn handle(
    kafka: Arc<Kafka>,
    mut body: Bytes,
    turn: Option<tokio::sync::OwnedMutexGuard<produce::Ordered>>,
    peer: std::net::SocketAddr,
) -> Reply {
    let api_key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let Ok(key) = ApiKey::try_from(api_key) else {
        tracing::warn!(api_key, "unknown Kafka API key; closing the connection");
        return Reply::Close;
    };
    let header = match RequestHeader::decode(&mut body, key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(?key, version, error = %e, "undecodable Kafka request header; closing the connection");
            return Reply::Close;
        }
    };
    let correlation_id = header.correlation_id;
    let Some(range) = versions::supported(key) else {
        tracing::warn!(?key, "Kafka API not served here; closing the connection");
        return Reply::Close;
    };
    if !(range.0..=range.1).contains(&version) {
        if key == ApiKey::ApiVersions {
            // Answered at version 0, so that the client learns what to use (KIP-511).
            return frame(key, 0, correlation_id, &versions::unsupported());
        }
        tracing::warn!(?key, version, "unsupported Kafka API version; closing the connection");
        return Reply::Close;
    }
    let span = tracing::debug_span!("kafka", ?key, version, correlation_id);
    async move {
        // Each arm: the body decoded at its version, served, answered at the same version.
        let req = Call { key, version, correlation_id };
        let k = &kafka;
        let client =
            Client { id: header.client_id.map(|c| c.to_string()).unwrap_or_default(), host: format!("/{}", peer.ip()) };
        let client = &client;
        match key {
            ApiKey::ApiVersions => req.answer(&mut body, |r| async move { versions::handle(r) }).await,
            ApiKey::Metadata => req.answer(&mut body, |r| async move { metadata::handle(k, r) }).await,
            ApiKey::Produce => match (decode::<kafka_protocol::messages::ProduceRequest>(&mut body, version), turn) {
                // acks=0: no answer at all, as Kafka does.
                (Some(r), Some(turn)) if r.acks == 0 => {
                    produce::handle(k, r, turn).await;
                    Reply::Nothing
                }
                (Some(r), Some(turn)) => frame(key, version, correlation_id, &produce::handle(k, r, turn).await),
                _ => Reply::Close,
            },
            ApiKey::Fetch => req.answer(&mut body, |r| fetch::handle(k, r)).await,
            ApiKey::ListOffsets => req.answer(&mut body, |r| offsets::handle(k, r)).await,
            ApiKey::OffsetForLeaderEpoch => req.answer(&mut body, |r| offsets::epoch_end(k, r)).await,
            ApiKey::DescribeProducers => req.answer(&mut body, |r| offsets::describe_producers(k, r)).await,
            ApiKey::FindCoordinator => {
                req.answer(&mut body, |r| async move { coordinator::handle(k, r, version) }).await
            }
            ApiKey::CreateTopics => req.answer(&mut body, |r| topics::create(k, r)).await,
            ApiKey::DeleteTopics => req.answer(&mut body, |r| topics::delete(k, r)).await,
            ApiKey::CreatePartitions => req.answer(&mut body, |r| topics::create_partitions(k, r)).await,
            ApiKey::InitProducerId => req.answer(&mut body, |r| txn::init_producer_id(k, r)).await,
            ApiKey::AddPartitionsToTxn => req.answer(&mut body, |r| txn::add_partitions(k, r)).await,
            ApiKey::AddOffsetsToTxn => req.answer(&mut body, |r| txn::add_offsets(k, r)).await,
            ApiKey::TxnOffsetCommit => req.answer(&mut body, |r| txn::txn_offset_commit(k, r)).await,
            ApiKey::EndTxn => req.answer(&mut body, |r| txn::end(k, r, version)).await,
            ApiKey::DescribeTransactions => req.answer(&mut body, |r| txn::describe(k, r)).await,
            ApiKey::ListTransactions => req.answer(&mut body, |r| txn::list(k, r)).await,
            ApiKey::DescribeConfigs => req.answer(&mut body, |r| async move { configs::describe(k, r) }).await,
            ApiKey::IncrementalAlterConfigs => req.answer(&mut body, |r| configs::alter(k, r)).await,
            ApiKey::DescribeCluster => req.answer(&mut body, |r| async move { configs::cluster(k, r) }).await,
            ApiKey::JoinGroup => req.answer(&mut body, |r| groups::join(k, r, client)).await,
            ApiKey::ConsumerGroupHeartbeat => req.answer(&mut body, |r| consumer::heartbeat(k, r, client)).await,
            ApiKey::SyncGroup => req.answer(&mut body, |r| groups::sync(k, r)).await,
            ApiKey::Heartbeat => req.answer(&mut body, |r| groups::heartbeat(k, r)).await,
            ApiKey::LeaveGroup => req.answer(&mut body, |r| groups::leave(k, r, version)).await,
            ApiKey::OffsetCommit => req.answer(&mut body, |r| groups::commit(k, r)).await,
            ApiKey::OffsetFetch => req.answer(&mut body, |r| groups::fetch(k, r, version)).await,
            ApiKey::ListGroups => req.answer(&mut body, |r| groups::list(k, r)).await,
            ApiKey::DescribeGroups => req.answer(&mut body, |r| groups::describe(k, r, version)).await,
            ApiKey::DeleteGroups => req.answer(&mut body, |r| groups::delete(k, r)).await,
            _ => Reply::Close,
        }
    }
    .instrument(span)
    .await
}

/// One request's identity, for its answer.
struct Call {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
}

impl Call {
    /// Decodes the body, serves it with `serve`, and frames the answer.
    async fn answer<Req, Resp, Fut>(&self, body: &mut Bytes, serve: impl FnOnce(Req) -> Fut) -> Reply
    where
        Req: Decodable,
        Resp: Encodable,
        Fut: std::future::Future<Output = Resp>,
    {
        match decode(body, self.version) {
            Some(r) => frame(self.key, self.version, self.correlation_id, &serve(r).await),
            None => Reply::Close,
        }
    }
}

/// A request body, or None (logged) when it does not decode.
fn decode<R: Decodable>(body: &mut Bytes, version: i16) -> Option<R> {
    match R::decode(body, version) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(version, error = %e, "undecodable Kafka request; closing the connection");
            None
        }
    }
}

/// A response frame: length, header, body.
fn frame<R: Encodable>(key: ApiKey, version: i16, correlation_id: i32, response: &R) -> Reply {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let encoded =
        header.encode(&mut buf, key.response_header_version(version)).and_then(|()| response.encode(&mut buf, version));
    if let Err(e) = encoded {
        tracing::error!(?key, version, error = %e, "Kafka response could not be encoded; closing the connection");
        return Reply::Close;
    }
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Reply::Frame(buf.freeze())
}

/// A topic name as Kafka messages carry it.
pub(crate) fn name(s: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(StrBytes::from_string(s.to_string()))
}

/// A Sluice topic id as a Kafka topic id.
pub(crate) fn topic_uuid(id: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0, id)
}
