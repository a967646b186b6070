//! The stream-processor service: runs streaming SQL's persistent queries ([`processor`]).
//! It replays the command topic (`sluice_sql_server::commands`) into a `sluice_sql::Engine`,
//! as the gateways answering `sluice.v1.Sql` do: the catalog of streams, tables and queries
//! is the same everywhere.

pub mod processor;

use sluice_runtime::Shutdown;

pub use processor::ProcessorConfig;

/// The health-service name this service reports under.
pub const SERVICE_NAME: &str = "sluice.v1.StreamProcessor";

/// Builds the server for this service: health and reflection.
pub async fn router() -> anyhow::Result<tonic::transport::server::Router> {
    let (_reporter, health) = sluice_runtime::health(&[SERVICE_NAME]).await;
    sluice_runtime::add_reflection(sluice_runtime::server().add_service(health), &[])
}

/// Runs a processor until `shutdown`, connecting again while no gateway answers.
pub async fn run(cfg: ProcessorConfig, shutdown: Shutdown) {
    let Some(client) = sluice_client::Client::connect_retrying(&cfg.gateways, shutdown.wait()).await else { return };
    processor::run(client, cfg, shutdown).await;
}
