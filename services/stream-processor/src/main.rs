//! `sluice-stream-processor`: runs streaming SQL's persistent queries.

use sluice_runtime::Service;
use sluice_stream_processor::ProcessorConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-stream-processor", "Sluice stream-processor").await?;
    let router = sluice_stream_processor::router().await?;
    tracing::info!(%addr, "stream-processor listening");
    // The gateways it talks to are the ones registered in the metadata store.
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let state_dir = settings.data_dir.join("stream-processor");
    let work = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let Some(gateways) = sluice_runtime::registered_gateways(&meta, &shutdown).await else { return };
            // The advertised address names the instance: a restart at the same address
            // takes its tasks and state back.
            let named = if settings.advertise.is_empty() { addr.to_string() } else { settings.advertise.clone() };
            let instance = format!("sp-{}", named.replace([':', '[', ']', '/'], "_"));
            let cfg = ProcessorConfig {
                gateways,
                instance,
                state_dir,
                guarantee: sluice_streams::Guarantee::ExactlyOnce,
                replication_factor: 3,
            };
            sluice_stream_processor::run(cfg, shutdown).await;
        }
    });
    sluice_runtime::serve(router, listener, shutdown).await?;
    let _ = work.await;
    telemetry.shutdown().await;
    Ok(())
}
