//! The connect-runner service: runs the tasks of Connect's connectors (see
//! `sluice_connect`), as a member of the connect cluster ([`worker`]). Runners are clients of
//! the gateways: configs come from `__connect_configs`, records go through the gateways'
//! Broker and Groups services, and tasks report to `__connect_status`.

mod http;
pub mod metrics;
mod opensearch;
mod parquet;
mod pgsource;
mod postgres;
mod s3;
mod source;
pub mod tasks;
pub mod worker;

use sluice_runtime::Shutdown;

/// The health-service name this service reports under.
pub const SERVICE_NAME: &str = "sluice.v1.ConnectRunner";

/// Builds the server for this service: health and reflection.
pub async fn router() -> anyhow::Result<tonic::transport::server::Router> {
    let (_reporter, health) = sluice_runtime::health(&[SERVICE_NAME]).await;
    sluice_runtime::add_reflection(sluice_runtime::server().add_service(health), &[])
}

/// Runs a runner named `id` against the gateways at `gateways` (comma-separated) until
/// `shutdown`, connecting again while none answers.
pub async fn run(gateways: String, id: String, shutdown: Shutdown) {
    let Some(client) = sluice_client::Client::connect_retrying(&gateways, shutdown.wait()).await else { return };
    worker::run(client, id, shutdown).await;
}
