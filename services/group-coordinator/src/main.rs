//! `sluice-group-coordinator`: consumer groups (membership, assignment, committed offsets).

use std::time::Duration;

use sluice_gateway::Gateway;
use sluice_gateway::handlers::GatewayService;
use sluice_group_coordinator::service::GroupsService;
use sluice_group_coordinator::{Coordinator, SERVICE_NAME, metrics};
use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-group-coordinator", "Sluice group-coordinator").await?;
    let meta = sluice_runtime::connect_meta(&settings).await?;
    // The offsets topic is read and written through a gateway of its own, on loopback: the
    // same routing, retries and leader changes as any client, and no dependency on where the
    // cluster's gateways run.
    let (gw_listener, gw_addr) = sluice_runtime::bind("127.0.0.1:0").await?;
    let gateway = GatewayService::new(Gateway::new(meta.clone(), settings.gateway.clone()));
    let gw_router = sluice_runtime::server().add_service(gateway.admin_server()).add_service(gateway.broker_server());
    tokio::spawn(sluice_runtime::serve(gw_router, gw_listener, shutdown.clone()));
    let coordinator =
        Coordinator::start(settings.groups.clone(), meta, settings.advertised(), gw_addr.to_string(), shutdown.clone());
    let _gauges = metrics::register(&coordinator, Duration::from_millis(settings.telemetry.metrics_interval_ms));
    // A clean stop hands the role over at once (a standby takes it without waiting for the
    // lease to lapse) and tells members to rejoin there.
    let resigner = {
        let (c, stop) = (coordinator.clone(), shutdown.clone());
        tokio::spawn(async move {
            stop.wait().await;
            c.resign().await;
        })
    };
    let (_health, health) = sluice_runtime::health(&[SERVICE_NAME]).await;
    let router = sluice_runtime::server()
        .add_service(health)
        .add_service(sluice_runtime::reflection(&[SERVICE_NAME])?)
        .add_service(GroupsService(coordinator).into_server());
    tracing::info!(%addr, "group-coordinator listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    let _ = resigner.await;
    telemetry.shutdown().await;
    Ok(())
}
