//! `sluice-gateway`: the stateless entry point; routes client traffic to partition nodes.

use sluice_gateway::Router;
use sluice_gateway::handlers::GatewayService;
use sluice_gateway::handlers::groups::GroupsProxy;
use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-gateway", "Sluice gateway").await?;
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let service = GatewayService::new(Router::new(meta, settings.gateway.clone()));
    let groups = GroupsProxy::new(service.router().clone(), shutdown.clone());
    let served = ["sluice.v1.Admin", "sluice.v1.Broker", "sluice.v1.Groups"];
    let (_health, health) = sluice_runtime::health(&served).await;
    let router = sluice_runtime::add_reflection(sluice_runtime::server().add_service(health), &served)?
        .add_service(service.admin_server())
        .add_service(service.broker_server())
        .add_service(groups.into_server());
    tracing::info!(%addr, "gateway listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    telemetry.shutdown().await;
    Ok(())
}
