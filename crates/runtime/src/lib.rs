//! The shared skeleton of every Sluice service binary.
//!
//! - [`Settings`]: one configuration model (defaults in code, TOML file, `SLUICE_*` env, flags).
//! - [`CommonArgs`]: the command-line flags every service takes.
//! - [`connect_meta`]: the metadata store the settings ask for (etcd, or embedded).
//! - [`serve`]: a tonic server with health and reflection, stopped by [`Shutdown`].
//! - [`node_api`]: the partition-node API as a trait, over gRPC or in process.

pub mod node_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_meta::MetaStore;
pub use sluice_telemetry::Telemetry;
use sluice_telemetry::TelemetryConfig;
use tokio::sync::watch;

/// Settings shared by all services; each reads the sections it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address others use to reach this process; empty means `listen`.
    pub advertise: String,
    /// Node identity (partition nodes); must be unique and stable across restarts.
    pub node_id: u64,
    /// Where the service keeps its data.
    pub data_dir: PathBuf,
    pub etcd: EtcdSettings,
    pub gateway: GatewaySettings,
    pub storage: StorageSettings,
    pub replication: ReplicationSettings,
    pub groups: GroupSettings,
    pub telemetry: TelemetrySettings,
}

/// Group-coordinator tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupSettings {
    /// Partitions of the internal `__consumer_offsets` topic, when a coordinator creates it.
    pub offsets_topic_partitions: u32,
    /// Its replication factor (lowered to the live nodes when fewer).
    pub offsets_topic_replication_factor: u32,
    /// Session timeout of members that do not ask for one, milliseconds.
    pub session_timeout_ms: u64,
    /// Shortest and longest session timeout a member may ask for, milliseconds.
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    /// How long a member may take to release revoked partitions when it does not say,
    /// milliseconds.
    pub rebalance_timeout_ms: u64,
    /// How long a Kafka classic group formed from nothing waits for more members before its
    /// first generation, milliseconds (Kafka's group.initial.rebalance.delay.ms).
    pub initial_rebalance_delay_ms: u64,
    /// Session timeout of Kafka consumer-protocol members (KIP-848; the server sets it, as
    /// Kafka's group.consumer.session.timeout.ms), milliseconds.
    pub consumer_session_timeout_ms: u64,
    /// How often those members are told to heartbeat (Kafka's
    /// group.consumer.heartbeat.interval.ms), milliseconds; a rebalance reaches a member at
    /// its next heartbeat.
    pub consumer_heartbeat_interval_ms: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            offsets_topic_partitions: 8,
            offsets_topic_replication_factor: 3,
            session_timeout_ms: 10_000,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            rebalance_timeout_ms: 30_000,
            initial_rebalance_delay_ms: 1_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
        }
    }
}

/// OpenTelemetry export (off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, which wins, as does `OTEL_SERVICE_NAME`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// OTLP/gRPC endpoint receiving traces and metrics, e.g. `http://otel-collector:4317`;
    /// empty turns export off.
    pub otlp_endpoint: String,
    /// How often metrics are exported, milliseconds.
    pub metrics_interval_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { otlp_endpoint: String::new(), metrics_interval_ms: 10_000 }
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EtcdSettings {
    /// Endpoints; empty means embedded metadata (single-node mode only).
    pub endpoints: Vec<String>,
    /// Key prefix for everything Sluice stores.
    pub prefix: String,
    /// Node lease time-to-live, seconds: a node that stops renewing vanishes after this.
    pub lease_ttl_secs: i64,
    /// How long to wait for etcd at start-up, milliseconds.
    pub connect_timeout_ms: u64,
}

/// Gateway tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Most partitions a topic may have.
    pub max_partitions: u32,
    /// Default time a produce waits for the nodes, milliseconds.
    pub request_timeout_ms: u64,
    /// Batch size for plain records the gateway encodes (sticky partitioner), bytes.
    pub batch_bytes: usize,
    /// Address of the Kafka wire-protocol listener (host:port); empty: none.
    pub kafka_listen: String,
    /// Address Kafka clients are told to connect to (host:port); empty: the one bound.
    pub kafka_advertise: String,
    /// Most Kafka client connections open at once; more are closed as they come.
    pub kafka_max_connections: usize,
    /// A Kafka connection that sends nothing for this long is closed, milliseconds (Kafka's
    /// connections.max.idle.ms).
    pub kafka_idle_timeout_ms: u64,
}

/// Partition-node storage tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    /// How often retention and compaction run, milliseconds.
    pub retention_check_interval_ms: u64,
    /// sled page cache (it holds the partitions' indexes), bytes.
    pub cache_bytes: u64,
    /// How often what acks=0/1 appends wrote is synced to disk (segment files, then the
    /// index), milliseconds; 0: only acks=all syncs. A machine crash loses at most this much
    /// acks=1 data (a process crash loses none: the bytes are in the files); acks=all is always
    /// synced before it is acknowledged.
    pub flush_interval_ms: u64,
    /// Size at which a partition's segment file is closed and a new one started, bytes.
    /// Retention deletes a file once none of its batches is left.
    pub segment_bytes: u64,
    /// Make a partition's next segment file ahead of time, its blocks allocated, once the
    /// active one is half full: appends then never wait for the filesystem to allocate blocks
    /// (on ext4 they waited behind writeback, tens of milliseconds at full load). A partition
    /// that has written 4 MiB keeps up to 1.5 segments allocated past its data, idle or not.
    pub preallocate: bool,
}

/// Partition-node replication tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationSettings {
    /// A follower behind the leader's log end for longer than this leaves the in-sync set
    /// (Kafka's replica.lag.time.max.ms), milliseconds.
    pub lag_time_max_ms: u64,
    /// How often a leader hands leadership back to the preferred replica when that one is
    /// in sync and caught up, milliseconds; 0 turns automatic rebalancing off.
    pub leader_rebalance_interval_ms: u64,
    /// Longest an acks=all append waits for the in-sync replicas, milliseconds.
    pub ack_timeout_ms: u64,
    /// Bytes a leader may push to a follower ahead of its acknowledgements.
    pub fetch_window_bytes: u64,
    /// How often leadership, in-sync sets and followers are checked besides metadata
    /// changes, milliseconds.
    pub check_interval_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            lag_time_max_ms: 10_000,
            leader_rebalance_interval_ms: 10_000,
            ack_timeout_ms: 30_000,
            fetch_window_bytes: 8 << 20,
            check_interval_ms: 250,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            advertise: String::new(),
            node_id: 1,
            data_dir: PathBuf::from(".sluice/data"),
            etcd: EtcdSettings::default(),
            gateway: GatewaySettings::default(),
            storage: StorageSettings::default(),
            replication: ReplicationSettings::default(),
            groups: GroupSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self { endpoints: Vec::new(), prefix: "/sluice".into(), lease_ttl_secs: 5, connect_timeout_ms: 15_000 }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            max_partitions: 4096,
            request_timeout_ms: 30_000,
            batch_bytes: 256 * 1024,
            kafka_listen: String::new(),
            kafka_advertise: String::new(),
            kafka_max_connections: 10_000,
            kafka_idle_timeout_ms: 600_000,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            retention_check_interval_ms: 30_000,
            cache_bytes: 64 << 20,
            flush_interval_ms: 500,
            segment_bytes: 64 << 20,
            preallocate: true,
        }
    }
}

impl Settings {
    pub fn advertised(&self) -> String {
        if self.advertise.is_empty() { self.listen.clone() } else { self.advertise.clone() }
    }
}

/// Flags every service binary takes; they override the file and the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (see config/*.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:7071.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address advertised to other services (defaults to --listen).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Node id (partition nodes).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// etcd endpoints, comma separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Kafka listener address, e.g. 0.0.0.0:9092 (gateways; none by default).
    #[arg(long, value_name = "ADDR")]
    pub kafka_listen: Option<String>,
    /// Kafka address told to clients (gateways; defaults to the address bound, or the
    /// advertised host when bound to every interface).
    #[arg(long, value_name = "ADDR")]
    pub kafka_advertise: Option<String>,
}

impl CommonArgs {
    /// Defaults, then the file, then `SLUICE_*`, then these flags.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut s: Settings = sluice_core::settings::load(self.config.as_deref())?;
        if let Some(v) = &self.listen {
            s.listen = v.clone();
        }
        if let Some(v) = &self.advertise {
            s.advertise = v.clone();
        }
        if let Some(v) = self.node_id {
            s.node_id = v;
        }
        if let Some(v) = &self.data_dir {
            s.data_dir = v.clone();
        }
        if !self.etcd.is_empty() {
            s.etcd.endpoints = self.etcd.clone();
        }
        if let Some(v) = &self.kafka_listen {
            s.gateway.kafka_listen = v.clone();
        }
        if let Some(v) = &self.kafka_advertise {
            s.gateway.kafka_advertise = v.clone();
        }
        Ok(s)
    }
}

#[derive(clap::Parser)]
#[command(version)]
struct ServiceArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// What a service binary starts from: its settings, a bound listener and the stop signal
/// (triggered by Ctrl-C and SIGTERM).
pub struct Service {
    pub settings: Settings,
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    /// Flush with [`Telemetry::shutdown`] before the process ends.
    pub telemetry: Telemetry,
}

impl Service {
    /// Reads the flags (`about` is the `--help` headline), file and environment, sets up logs
    /// and OpenTelemetry (`name` is the default `service.name`), and binds the listen address.
    pub async fn start(name: &'static str, about: &'static str) -> anyhow::Result<Self> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = ServiceArgs::command().about(about).get_matches();
        let settings = ServiceArgs::from_arg_matches(&matches)?.common.settings()?;
        let telemetry = init_telemetry(&settings, name)?;
        let (listener, addr) = bind(&settings.listen).await?;
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        Ok(Self { settings, listener, addr, shutdown, telemetry })
    }
}

/// Logs and, when configured, OpenTelemetry export for a process named `name`.
pub fn init_telemetry(settings: &Settings, name: &str) -> anyhow::Result<Telemetry> {
    let cfg = TelemetryConfig {
        instance_id: Some(settings.advertised()),
        ..TelemetryConfig::resolve(&settings.telemetry.otlp_endpoint, name, settings.telemetry.metrics_interval_ms)
    };
    Ok(sluice_telemetry::init(&cfg)?)
}

/// The metadata store the settings ask for: etcd when endpoints are given, else embedded
/// (persisted under the data dir).
/// The gateways registered in the metadata store (comma-separated), once there is one;
/// `None` when `shutdown` comes first. Services that are clients of the gateways (connect
/// runners, stream processors) find them this way.
pub async fn registered_gateways(meta: &Arc<dyn MetaStore>, shutdown: &Shutdown) -> Option<String> {
    let mut view = meta.view();
    tokio::select! {
        v = view.wait_for(|v| !v.gateways.is_empty()) => match v {
            Ok(v) => Some(v.gateways.keys().cloned().collect::<Vec<_>>().join(",")),
            Err(_) => None,
        },
        _ = shutdown.wait() => None,
    }
}

pub async fn connect_meta(s: &Settings) -> anyhow::Result<Arc<dyn MetaStore>> {
    if s.etcd.endpoints.is_empty() {
        std::fs::create_dir_all(&s.data_dir)?;
        let meta = sluice_meta::embedded::EmbeddedMeta::open(Some(s.data_dir.join("meta.json")))?;
        return Ok(meta);
    }
    let meta = sluice_meta::etcd::EtcdMeta::connect(
        &s.etcd.endpoints,
        &s.etcd.prefix,
        s.etcd.lease_ttl_secs,
        Duration::from_millis(s.etcd.connect_timeout_ms),
    )
    .await?;
    Ok(meta)
}

/// A stop signal shared by every task of a process.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal was given.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the signal is given.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Triggers on Ctrl-C or SIGTERM.
    pub fn on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        me.trigger();
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("shutting down");
            me.trigger();
        });
    }
}

/// Binds `listen` (so the caller learns the real port when it asked for port 0).
pub async fn bind(listen: &str) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// Health reporting for the services a process hosts, named as in the proto package
/// (`sluice.v1.Broker`, ...) plus the overall "" service.
pub async fn health(
    names: &[&str],
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for n in names {
        reporter.set_service_status(*n, tonic_health::ServingStatus::Serving).await;
    }
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    (reporter, service)
}

/// Adds gRPC reflection advertising `services` (the public Sluice services this process
/// serves) and the health service, so grpcurl lists and calls exactly what is there. Both
/// protocol versions are served: v1, and v1alpha for clients that only speak that one
/// (Python's grpcio-reflection, older grpcurl).
pub fn add_reflection(
    router: tonic::transport::server::Router,
    services: &[&str],
) -> anyhow::Result<tonic::transport::server::Router> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok(router.add_service(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

/// The server builder with the settings all services use.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        // A span per RPC, continuing the caller's trace when the request carries one.
        .trace_fn(sluice_telemetry::server_span)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(sluice_core::HTTP2_MAX_FRAME_BYTES))
}

/// How long open streams get to finish after the stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `shutdown`. Open streams get a short grace period:
/// long-lived streams (fetch long polls, a gateway's append stream to its own node in dev
/// mode) would otherwise hold the process forever.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // The builder's tcp_nodelay applies only to listeners tonic binds itself: set it on this
    // one, or Nagle's algorithm holds small messages (replication acks, credit, answers)
    // until the peer's delayed ACK, ~40 ms each.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = shutdown.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move { stop.wait().await });
    tokio::select! {
        r = server => r?,
        _ = async { shutdown.wait().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::info!("streams still open after the grace period; stopping anyway");
        }
    }
    Ok(())
}
