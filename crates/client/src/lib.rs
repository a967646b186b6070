//! The Rust client for Sluice.
//!
//! - [`Client`]: a connection to a gateway, with the admin calls.
//! - [`producer::Producer`]: batching (size and linger), compression, pipelined requests on one
//!   stream, Kafka-compatible key partitioning, retries of transient errors.
//! - [`consumer::Consumer`]: reads assigned partitions from chosen positions over one fetch
//!   stream with flow control, and resumes where it was after a transient failure.
//! - [`group::GroupConsumer`]: a consumer-group member: assignment from the group coordinator,
//!   rebalance callbacks, commits (sync, async, automatic), at-least-once or at-most-once.

pub mod consumer;
pub mod group;
pub mod producer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_core::RemoteError;
use sluice_proto::v1::admin_client::AdminClient;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::connect_client::ConnectClient;
use sluice_proto::v1::groups_client::GroupsClient;
use sluice_proto::v1::sql_client::SqlClient;
use sluice_proto::v1::transactions_client::TransactionsClient;
use sluice_proto::v1::*;
use sluice_telemetry::Propagate;
use tonic::transport::{Channel, Endpoint};

/// A channel whose requests carry the caller's trace context.
pub type Traced = tonic::service::interceptor::InterceptedService<Channel, Propagate>;

/// What a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached at all.
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server refused or failed the request; the message is the server's sentence.
    #[error("{0}")]
    Remote(#[from] RemoteError),
    /// An established stream ended; reconnecting may help.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The caller's input is wrong before anything is sent.
    #[error("{0}")]
    Invalid(String),
    /// Gave up after retrying for the delivery timeout.
    #[error("gave up after {elapsed:?}: {last}")]
    Exhausted { elapsed: Duration, last: String },
    /// The open transaction cannot commit (a record of it failed, or the coordinator aborted
    /// it): abort it, then begin again.
    #[error("the transaction cannot commit: {0}; abort it")]
    MustAbort(String),
}

impl ClientError {
    /// Whether retrying may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Disconnected(_) => true,
            Self::Remote(r) => r.retriable,
            _ => false,
        }
    }

    /// The server's Sluice code (`sluice_core::error::codes`), 0 for other failures.
    pub fn sluice_code(&self) -> u32 {
        match self {
            Self::Remote(r) => r.sluice_code,
            _ => 0,
        }
    }

    /// The gRPC code, when the server gave one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Remote(r) => Some(r.code),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Remote(RemoteError::from(s))
    }
}

/// Where a reader starts from an offset lookup entry without an error: the offset found, or
/// the log end when none was (a timestamp after the last record).
pub fn start_position(o: &PartitionOffset) -> i64 {
    if o.offset >= 0 { o.offset } else { o.log_end_offset }
}

/// How long [`Client::settled_offsets`] waits for partitions without a leader.
pub const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// How long one gateway gets to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connector over several gateways: each connection goes to the first that accepts one,
/// starting after the gateway of the previous connection (which, when a connection is
/// remade, is likely the one that just failed).
fn failover(
    addrs: Vec<String>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>>> + Send,
> + Clone
+ Send
+ 'static {
    let addrs: Arc<[String]> = addrs.into();
    let next = Arc::new(AtomicUsize::new(0));
    tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (addrs, next) = (addrs.clone(), next.clone());
        async move {
            let start = next.load(Ordering::Relaxed);
            let mut failures = Vec::new();
            for i in 0..addrs.len() {
                let k = (start + i) % addrs.len();
                match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&*addrs[k])).await {
                    Ok(Ok(stream)) => {
                        stream.set_nodelay(true)?;
                        next.store(k + 1, Ordering::Relaxed);
                        tracing::debug!(gateway = %addrs[k], "connected");
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Ok(Err(e)) => failures.push(format!("{}: {e}", addrs[k])),
                    Err(_) => failures.push(format!("{}: no answer within {CONNECT_TIMEOUT:?}", addrs[k])),
                }
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("no gateway accepted a connection ({})", failures.join("; ")),
            ))
        }
    })
}

/// A connection to a Sluice gateway.
#[derive(Clone)]
pub struct Client {
    addr: String,
    channel: Channel,
}

impl Client {
    /// Connects to a gateway: `host:port`, or a comma-separated list of them (like Kafka's
    /// `bootstrap.servers`). With a list, the connection goes to the first gateway that
    /// answers, and whenever it breaks the channel reconnects to the next one that answers,
    /// so everything built on this client (producers, consumers, group members) moves to
    /// another gateway when one dies.
    /// [`Client::connect`], tried again every second while no gateway answers, until `stop`
    /// resolves (then `None`): what a long-running service does at start.
    pub async fn connect_retrying(addr: &str, stop: impl std::future::Future<Output = ()>) -> Option<Self> {
        tokio::pin!(stop);
        loop {
            match Self::connect(addr).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::info!(error = %e, "no gateway answers yet");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = &mut stop => return None,
                    }
                }
            }
        }
    }

    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let addrs: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| a.trim_start_matches("http://").to_string())
            .collect();
        let err = |reason: String| ClientError::Connect { addr: addr.to_string(), reason };
        let first = addrs.first().ok_or_else(|| err("no gateway address given".into()))?;
        let url = if first.contains("://") { first.clone() } else { format!("http://{first}") };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| err(e.to_string()))?
            // The failover connector tries each address in turn within this.
            .connect_timeout(CONNECT_TIMEOUT * addrs.len() as u32)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(Some(sluice_core::HTTP2_MAX_FRAME_BYTES));
        let channel = if addrs.len() == 1 {
            endpoint.connect().await
        } else {
            endpoint.connect_with_connector(failover(addrs)).await
        }
        .map_err(|e| err(source_chain(&e)))?;
        Ok(Self { addr: addr.to_string(), channel })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Admin API; every call carries the caller's trace context.
    pub fn admin(&self) -> AdminClient<Traced> {
        AdminClient::with_interceptor(self.channel.clone(), Propagate)
    }

    /// The Broker API; every stream opens with the caller's trace context.
    pub fn broker(&self) -> BrokerClient<Traced> {
        BrokerClient::with_interceptor(self.channel.clone(), Propagate)
            .max_decoding_message_size(80 << 20)
            .max_encoding_message_size(80 << 20)
    }

    /// The Groups API; every call carries the caller's trace context.
    pub fn groups(&self) -> GroupsClient<Traced> {
        GroupsClient::with_interceptor(self.channel.clone(), Propagate)
    }

    /// `sluice.v1.Sql` (streaming SQL).
    pub fn sql_api(&self) -> SqlClient<Traced> {
        SqlClient::with_interceptor(self.channel.clone(), Propagate).max_decoding_message_size(64 << 20)
    }

    /// `sluice.v1.Connect` (connectors).
    pub fn connect_api(&self) -> ConnectClient<Traced> {
        ConnectClient::with_interceptor(self.channel.clone(), Propagate)
    }

    /// Creates a connector from its config (Kafka Connect's keys; `name` names it), or
    /// changes an existing one's config with `replace`.
    pub async fn create_connector(
        &self,
        config: HashMap<String, String>,
        replace: bool,
    ) -> Result<ConnectorInfo, ClientError> {
        Ok(self.connect_api().create_connector(CreateConnectorRequest { config, replace }).await?.into_inner())
    }

    /// Every problem of a connector config, each with its key (empty: valid).
    pub async fn validate_connector(&self, config: HashMap<String, String>) -> Result<Vec<ConfigIssue>, ClientError> {
        let req = ValidateConnectorConfigRequest { config };
        Ok(self.connect_api().validate_connector_config(req).await?.into_inner().issues)
    }

    pub async fn list_connectors(&self) -> Result<Vec<ConnectorInfo>, ClientError> {
        Ok(self.connect_api().list_connectors(ListConnectorsRequest {}).await?.into_inner().connectors)
    }

    pub async fn connector_status(&self, name: &str) -> Result<ConnectorStatusResponse, ClientError> {
        Ok(self.connect_api().connector_status(ConnectorRequest { name: name.to_string() }).await?.into_inner())
    }

    /// Pauses (`pause`) or resumes a connector's tasks.
    pub async fn pause_connector(&self, name: &str, pause: bool) -> Result<ConnectorInfo, ClientError> {
        let req = ConnectorRequest { name: name.to_string() };
        let mut api = self.connect_api();
        let resp = if pause { api.pause_connector(req).await? } else { api.resume_connector(req).await? };
        Ok(resp.into_inner())
    }

    /// Restarts a connector's tasks, or one of them.
    pub async fn restart_connector(&self, name: &str, task: Option<u32>) -> Result<ConnectorInfo, ClientError> {
        let req = RestartConnectorRequest { name: name.to_string(), task };
        Ok(self.connect_api().restart_connector(req).await?.into_inner())
    }

    pub async fn delete_connector(&self, name: &str) -> Result<(), ClientError> {
        self.connect_api().delete_connector(ConnectorRequest { name: name.to_string() }).await?;
        Ok(())
    }

    pub async fn connect_plugins(&self) -> Result<Vec<ConnectPlugin>, ClientError> {
        Ok(self.connect_api().list_connect_plugins(ListConnectPluginsRequest {}).await?.into_inner().plugins)
    }

    /// `sluice.v1.Transactions` (producer ids, transactions).
    pub fn transactions(&self) -> TransactionsClient<Traced> {
        TransactionsClient::with_interceptor(self.channel.clone(), Propagate)
    }

    /// A new producer id and its epoch, for an idempotent producer.
    pub async fn init_producer_id(&self) -> Result<(i64, i16), ClientError> {
        self.init_transactional_id("", Duration::ZERO).await
    }

    /// The producer id of `transactional_id` at its next epoch, which fences every older
    /// producer with that id (its open transaction is aborted first). `timeout`: how long one
    /// of its transactions may stay open (zero: the coordinator's default, 60 s).
    pub async fn init_transactional_id(
        &self,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<(i64, i16), ClientError> {
        let req = InitProducerIdRequest {
            transactional_id: transactional_id.to_string(),
            transaction_timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
        };
        let r = self.transactions().init_producer_id(req).await?.into_inner();
        let epoch = i16::try_from(r.producer_epoch).map_err(|_| {
            ClientError::Invalid(format!("the coordinator gave epoch {} out of range", r.producer_epoch))
        })?;
        Ok((r.producer_id, epoch))
    }

    /// Every transactional id the coordinator knows, with its state.
    pub async fn list_transactions(&self) -> Result<Vec<TransactionDescription>, ClientError> {
        Ok(self.transactions().list_transactions(ListTransactionsRequest {}).await?.into_inner().transactions)
    }

    /// One transactional id's state: producer id and epoch, open transaction, partitions.
    pub async fn describe_transaction(&self, transactional_id: &str) -> Result<TransactionDescription, ClientError> {
        let req = DescribeTransactionRequest { transactional_id: transactional_id.to_string() };
        Ok(self.transactions().describe_transaction(req).await?.into_inner())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        Ok(self.groups().list_groups(ListGroupsRequest {}).await?.into_inner().groups)
    }

    /// Members, assignment, and per partition the committed offset, log end and lag.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        Ok(self.groups().describe_group(DescribeGroupRequest { group_id: group.to_string() }).await?.into_inner())
    }

    /// Moves a group's committed offsets for `topic` (every partition when `partitions` is
    /// empty): to `offset` when given, else to what `spec` designates. Refused while the group
    /// has members.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: Vec<u32>,
        spec: OffsetSpec,
        timestamp_ms: i64,
        offset: Option<i64>,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let req = ResetOffsetsRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            partitions,
            spec: spec as i32,
            timestamp_ms,
            offset,
        };
        Ok(self.groups().reset_offsets(req).await?.into_inner().offsets)
    }

    /// Forgets a group and its committed offsets. Refused while the group has members.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.groups().delete_group(DeleteGroupRequest { group_id: group.to_string() }).await?;
        Ok(())
    }

    /// A group's committed offsets (of `topic`, or of every topic when `None`).
    pub async fn fetch_offsets(&self, group: &str, topic: Option<&str>) -> Result<Vec<CommittedOffset>, ClientError> {
        self.fetch_offsets_with(group, topic, false).await
    }

    /// [`Client::fetch_offsets`]; with `require_stable`, fails with UNSTABLE_OFFSET_COMMIT
    /// (retriable) while offsets of the group are pending in a transaction.
    pub async fn fetch_offsets_with(
        &self,
        group: &str,
        topic: Option<&str>,
        require_stable: bool,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let topic = topic.unwrap_or_default().to_string();
        let req = FetchOffsetsRequest { group_id: group.to_string(), topic, require_stable, partitions: vec![] };
        Ok(self.groups().fetch_offsets(req).await?.into_inner().offsets)
    }

    /// The committed offsets of these partitions of `topic`, failing with
    /// UNSTABLE_OFFSET_COMMIT (retriable) while one of them is pending in a transaction.
    pub async fn fetch_stable_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: Vec<u32>,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let req = FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            require_stable: true,
            partitions,
        };
        Ok(self.groups().fetch_offsets(req).await?.into_inner().offsets)
    }

    /// Commits offsets for a group without members (consumers that assign partitions
    /// themselves); members commit through [`group::GroupConsumer`].
    pub async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<(), ClientError> {
        let req = CommitOffsetsRequest { group_id: group.to_string(), offsets, ..Default::default() };
        let resp = self.groups().commit_offsets(req).await?.into_inner();
        match resp.results.iter().find_map(|r| r.error.as_ref()) {
            Some(e) => Err(RemoteError::from(e).into()),
            None => Ok(()),
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: HashMap<String, String>,
    ) -> Result<TopicDescription, ClientError> {
        let req = CreateTopicRequest { name: name.to_string(), partitions, replication_factor, config };
        let resp = self.admin().create_topic(req).await?.into_inner();
        resp.topic.ok_or_else(|| ClientError::Invalid("the gateway returned no topic".into()))
    }

    /// Creates topic `name` when it is missing, its replication factor lowered to the live
    /// nodes (a topic created meanwhile by another client is fine).
    pub async fn create_topic_if_missing(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: HashMap<String, String>,
    ) -> Result<(), ClientError> {
        if self.describe_topic(name).await.is_ok() {
            return Ok(());
        }
        let live = self.list_nodes().await.map(|n| n.iter().filter(|n| n.alive).count() as u32).unwrap_or(1);
        match self.create_topic(name, partitions, replication_factor.min(live).max(1), config).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Grows `topic` to `count` partitions.
    pub async fn create_partitions(&self, topic: &str, count: u32) -> Result<TopicDescription, ClientError> {
        let req = CreatePartitionsRequest { topic: topic.to_string(), count };
        let resp = self.admin().create_partitions(req).await?.into_inner();
        resp.topic.ok_or_else(|| ClientError::Invalid("the gateway returned no topic".into()))
    }

    /// Applies `changes` to `topic`'s configuration (only checks them with `validate_only`);
    /// answers the topic as it is (or would be) afterwards.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        changes: Vec<ConfigChange>,
        validate_only: bool,
    ) -> Result<TopicDescription, ClientError> {
        let req = AlterTopicConfigRequest { topic: topic.to_string(), changes, validate_only };
        let resp = self.admin().alter_topic_config(req).await?.into_inner();
        resp.topic.ok_or_else(|| ClientError::Invalid("the gateway returned no topic".into()))
    }

    /// The producers each partition's leader remembers (all partitions when `partitions` is
    /// empty).
    pub async fn describe_producers(
        &self,
        topic: &str,
        partitions: Vec<u32>,
    ) -> Result<Vec<PartitionProducers>, ClientError> {
        let req = DescribeProducersRequest { topic: topic.to_string(), partitions };
        Ok(self.admin().describe_producers(req).await?.into_inner().partitions)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.admin().delete_topic(DeleteTopicRequest { name: name.to_string() }).await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        Ok(self.admin().list_topics(ListTopicsRequest {}).await?.into_inner().topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let resp = self.admin().describe_topic(DescribeTopicRequest { name: name.to_string() }).await?.into_inner();
        resp.topic.ok_or_else(|| ClientError::Invalid("the gateway returned no topic".into()))
    }

    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let req = ListOffsetsRequest {
            topic: topic.to_string(),
            partitions,
            spec: spec as i32,
            timestamp_ms,
            ..Default::default()
        };
        Ok(self.admin().list_offsets(req).await?.into_inner().offsets)
    }

    /// The offsets `spec` designates of `partitions` of `topic` (all when empty), each one
    /// known. A partition without a leader (right after its topic is created, during an
    /// election) answers with an error entry whose offsets are -1: such entries are asked
    /// again for up to [`SETTLE_WAIT`], never handed out as positions. A partition still
    /// failing then, or failing for good, fails the call with its error.
    pub async fn settled_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let mut settled: Vec<PartitionOffset> = Vec::new();
        let mut ask = partitions;
        loop {
            let found = self.list_offsets(topic, ask, spec, timestamp_ms).await?;
            let (failed, ok): (Vec<_>, Vec<_>) = found.into_iter().partition(|o| o.error.is_some());
            settled.extend(ok);
            // A partition failing for good decides, whatever others still wait for.
            let worst = failed.iter().filter_map(|o| o.error.as_ref().map(|e| (o.partition, e)));
            let Some((p, e)) = worst.clone().find(|(_, e)| !e.retriable).or_else(|| worst.clone().next()) else {
                settled.sort_by_key(|o| o.partition);
                return Ok(settled);
            };
            let e = RemoteError::from(e);
            if !e.retriable || tokio::time::Instant::now() >= deadline {
                return Err(RemoteError { message: format!("partition {p} of {topic}: {}", e.message), ..e }.into());
            }
            tracing::debug!(topic, error = %e.message, "offsets of partitions without a leader yet: asking again");
            ask = failed.iter().map(|o| o.partition).collect();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeDescription>, ClientError> {
        Ok(self.admin().list_nodes(ListNodesRequest {}).await?.into_inner().nodes)
    }

    /// Moves leadership back to preferred replicas (of `topic`, or of every topic when `None`).
    pub async fn elect_leaders(&self, topic: Option<&str>) -> Result<Vec<ElectionResult>, ClientError> {
        let req = ElectLeadersRequest { topic: topic.unwrap_or_default().to_string() };
        Ok(self.admin().elect_leaders(req).await?.into_inner().results)
    }
}

/// The error and its causes in one line (tonic's transport errors hide the useful part).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
