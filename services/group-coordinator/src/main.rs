//! `sluice-group-coordinator`: consumer groups (membership, assignment, committed offsets) and, later, transactions.

use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { listener, addr, shutdown, telemetry, .. } =
        Service::start("sluice-group-coordinator", "Sluice group-coordinator").await?;
    let router = sluice_group_coordinator::router().await?;
    tracing::info!(%addr, "group-coordinator listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    telemetry.shutdown().await;
    Ok(())
}
