//! `sluice dev`: the whole mesh in one process with embedded metadata, for development and
//! for trying Sluice without etcd.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_gateway::Router;
use sluice_gateway::handlers::GatewayService;
use sluice_group_coordinator::Coordinator;
use sluice_partition_node::handlers::{LocalNode, NodeService};
use sluice_runtime::{Settings, Shutdown};

/// How long a stopping dev waits for its connect runner's tasks to finish and commit.
const RUNNER_STOP: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where data and metadata are kept.
    #[arg(long, default_value = ".sluice/dev", value_name = "DIR")]
    data_dir: PathBuf,
    /// Address of the gateway (all services share it).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: String,
    /// Configuration file (same format as the services'; see config/).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the Kafka wire-protocol listener, for Kafka's own clients; "" for none.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "ADDR")]
    kafka_listen: String,
}

pub async fn run(a: DevArgs) -> anyhow::Result<ExitCode> {
    let mut settings: Settings = sluice_core::settings::load(a.config.as_deref())?;
    let telemetry = sluice_runtime::init_telemetry(&settings, "sluice-dev")?;
    settings.listen = a.listen.clone();
    settings.etcd.endpoints.clear();
    let (listener, addr) = sluice_runtime::bind(&settings.listen).await?;
    settings.data_dir = a.data_dir.clone();
    let meta = sluice_runtime::connect_meta(&settings).await?;
    // A signal stops the connect runner first, so its tasks commit through this process's
    // gateway and coordinator; the servers stop once it is done.
    let signals = Shutdown::new();
    signals.on_signals();
    let shutdown = Shutdown::new();

    let mut node_settings = settings.clone();
    node_settings.data_dir = a.data_dir.join(format!("node-{}", settings.node_id));
    let node = sluice_partition_node::start(&node_settings, meta.clone(), addr.to_string(), shutdown.clone()).await?;
    // One data path for the gateway and the coordinator; it reaches this process's node by
    // calling it, not over loopback gRPC.
    let router = Router::new(meta.clone(), settings.gateway.clone());
    router.pool.add_local(node.id, std::sync::Arc::new(LocalNode(node.clone())));
    let gateway = GatewayService::new(router.clone());
    let kafka = match a.kafka_listen.as_str() {
        "" => None,
        listen => {
            let advertise = &settings.gateway.kafka_advertise;
            match sluice_gateway::start_kafka(router.clone(), listen, advertise, &addr.to_string(), shutdown.clone())
                .await
            {
                Ok(bound) => Some(bound),
                // The gRPC gateway is what dev is for: without the Kafka port it still runs.
                Err(e) => {
                    eprintln!("warning: no Kafka listener on {listen}: {e} (--kafka-listen picks another address)");
                    None
                }
            }
        }
    };
    let coordinator =
        Coordinator::start(settings.groups.clone(), meta.clone(), addr.to_string(), router, shutdown.clone());
    let _gauges = sluice_group_coordinator::metrics::register(
        &coordinator,
        std::time::Duration::from_millis(settings.telemetry.metrics_interval_ms),
    );
    // The partition node is served too (its address is this one), but it is internal: the
    // public port advertises only the client services.
    let served = sluice_gateway::handlers::SERVICE_NAMES;
    let (_health, health) = sluice_runtime::health(
        &[&served[..], &[sluice_connect_runner::SERVICE_NAME, sluice_stream_processor::SERVICE_NAME]].concat(),
    )
    .await;
    let routes = gateway
        .data_routes()
        .add_service(sluice_gateway::handlers::sql_server(&addr.to_string()))
        .add_service(NodeService::new(node.clone()).into_server());
    let routes = sluice_group_coordinator::handlers::add_routes(routes, coordinator);
    let router =
        sluice_runtime::add_reflection(sluice_runtime::server().add_routes(routes).add_service(health), &served)?;
    tracing::info!(%addr, data_dir = %a.data_dir.display(), "sluice dev listening");
    match kafka {
        Some(k) => println!("Sluice dev is ready. Gateway: {addr}  Kafka: {k}"),
        None => println!("Sluice dev is ready. Gateway: {addr}"),
    }
    // One connect runner in process, a client of this gateway like any other.
    let runner = tokio::spawn(sluice_connect_runner::run(addr.to_string(), format!("dev-{addr}"), signals.clone()));
    // One stream processor in process: it runs the SQL persistent queries.
    let processor = sluice_stream_processor::ProcessorConfig {
        gateways: addr.to_string(),
        instance: "dev".into(),
        state_dir: a.data_dir.join("stream-processor"),
        guarantee: sluice_streams::Guarantee::ExactlyOnce,
        replication_factor: 1,
    };
    let sql = tokio::spawn(sluice_stream_processor::run(processor, signals.clone()));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        signals.wait().await;
        if tokio::time::timeout(RUNNER_STOP, sql).await.is_err() {
            tracing::warn!("the stream processor did not stop in {RUNNER_STOP:?}; stopping anyway");
        }
        if tokio::time::timeout(RUNNER_STOP, runner).await.is_err() {
            tracing::warn!("the connect runner did not stop in {RUNNER_STOP:?}; stopping anyway");
        }
        stop.trigger();
    });
    sluice_runtime::serve(router, listener, shutdown).await?;
    // Everything appended, and the index, is made durable before the process ends.
    node.checkpoint().await?;
    telemetry.shutdown().await;
    println!("Sluice dev stopped.");
    Ok(ExitCode::SUCCESS)
}
