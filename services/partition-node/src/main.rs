//! `sluice-partition-node`: stores partition replicas and serves the internal node API.

use sluice_partition_node::handlers::NodeService;
use sluice_runtime::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Service { settings, listener, addr, shutdown, telemetry } =
        Service::start("sluice-partition-node", "Sluice partition node").await?;
    let advertised = if settings.advertise.is_empty() { addr.to_string() } else { settings.advertise.clone() };
    let meta = sluice_runtime::connect_meta(&settings).await?;
    let node = sluice_partition_node::start(&settings, meta, advertised, shutdown.clone()).await?;
    let (_health, health) = sluice_runtime::health(&["sluice.v1.PartitionNode"]).await;
    let router =
        sluice_runtime::add_reflection(sluice_runtime::server().add_service(health), &["sluice.v1.PartitionNode"])?
            .add_service(NodeService::new(node.clone()).into_server());
    tracing::info!(%addr, node_id = node.id, "partition node listening");
    sluice_runtime::serve(router, listener, shutdown).await?;
    // Everything appended, and the index, is made durable before the process ends.
    node.checkpoint().await?;
    tracing::info!("partition node stopped");
    telemetry.shutdown().await;
    Ok(())
}
