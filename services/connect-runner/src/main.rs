//! `sluice-connect-runner`: runs connector tasks as a member of the connect cluster.

use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-connect-runner", "Sluice connect-runner").await?;
    let router = sluice_connect_runner::router().await?;
    tracing::info!(%addr, "connect-runner listening");
    // The gateways this runner talks to are the ones registered in the metadata store.
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let work = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let Some(gateways) = sluice_runtime::registered_gateways(&meta, &shutdown).await else { return };
            sluice_connect_runner::run(gateways, format!("runner-{addr}"), shutdown).await;
        }
    });
    sluice_runtime::serve(router, listener, shutdown).await?;
    let _ = work.await;
    telemetry.shutdown().await;
    Ok(())
}
