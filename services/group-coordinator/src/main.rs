//! `sluice-group-coordinator`: consumer groups (membership, assignment, committed offsets).

use std::time::Duration;

use sluice_group_coordinator::handlers::{self, SERVICE_NAMES};
use sluice_group_coordinator::{Coordinator, metrics};
use sluice_router::Router;
use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-group-coordinator", "Sluice group-coordinator").await?;
    let meta = sluice_runtime::connect_meta(&settings).await?;
    // The offsets topic is read and written through the data path in process: the same
    // routing, re-sends and leader changes as a gateway's, with no gateway in between.
    let router = Router::new(meta.clone(), settings.gateway.clone());
    let coordinator =
        Coordinator::start(settings.groups.clone(), meta, settings.advertised(), router, shutdown.clone());
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
    let (_health, health) = sluice_runtime::health(&SERVICE_NAMES).await;
    let router = sluice_runtime::add_reflection(
        sluice_runtime::server().add_routes(handlers::routes(coordinator)).add_service(health),
        &SERVICE_NAMES,
    )?;
    tracing::info!(%addr, "group-coordinator listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    let _ = resigner.await;
    telemetry.shutdown().await;
    Ok(())
}
