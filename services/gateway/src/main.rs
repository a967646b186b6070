//! `sluice-gateway`: the stateless entry point; routes client traffic to partition nodes.

use sluice_gateway::Router;
use sluice_gateway::handlers::{GatewayService, SERVICE_NAMES};
use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-gateway", "Sluice gateway").await?;
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let router = Router::new(meta, settings.gateway.clone());
    if !settings.gateway.kafka_listen.is_empty() {
        let g = &settings.gateway;
        let name = settings.advertised();
        sluice_gateway::start_kafka(router.clone(), &g.kafka_listen, &g.kafka_advertise, &name, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for Kafka clients on {}: {e}", g.kafka_listen))?;
    }
    let service = GatewayService::new(router);
    let (_health, health) = sluice_runtime::health(&SERVICE_NAMES).await;
    let routes =
        service.routes(shutdown.clone()).add_service(sluice_gateway::handlers::sql_server(&settings.advertised()));
    let router = sluice_runtime::add_reflection(
        sluice_runtime::server().add_routes(routes).add_service(health),
        &SERVICE_NAMES,
    )?;
    tracing::info!(%addr, "gateway listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    telemetry.shutdown().await;
    Ok(())
}
