//! `sluice-gateway`: the stateless entry point; routes client traffic to partition nodes.

use clap::Parser;
use sluice_gateway::Gateway;
use sluice_gateway::handlers::GatewayService;
use sluice_runtime::{CommonArgs, Shutdown};

#[derive(Parser)]
#[command(version, about = "Sluice gateway")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_core::settings::init_tracing();
    let settings = Args::parse().common.settings()?;
    let (listener, addr) = sluice_runtime::bind(&settings.listen).await?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let service = GatewayService::new(Gateway::new(meta, settings.gateway.clone()));
    let (_health, health) = sluice_runtime::health(&["sluice.v1.Admin", "sluice.v1.Broker"]).await;
    let router = sluice_runtime::server()
        .add_service(health)
        .add_service(sluice_runtime::reflection()?)
        .add_service(service.admin_server())
        .add_service(service.broker_server());
    tracing::info!(%addr, "gateway listening");
    sluice_runtime::serve(router, listener, shutdown).await
}
