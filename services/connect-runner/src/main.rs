//! `sluice-connect-runner`: source and sink connectors.

use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { listener, addr, shutdown, telemetry, .. } =
        Service::start("sluice-connect-runner", "Sluice connect-runner").await?;
    let router = sluice_connect_runner::router().await?;
    tracing::info!(%addr, "connect-runner listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    telemetry.shutdown().await;
    Ok(())
}
