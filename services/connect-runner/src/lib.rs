//! The connect-runner service: source and sink connectors.
//!
//! Its gRPC API arrives with its own issue; until then the process joins the mesh, reports
//! health as `sluice.v1.ConnectRunner` and is started by `sluice dev`, `sluice cluster up` and the chart, so
//! deployment and supervision are settled before the logic lands.

/// The health-service name this service reports under.
pub const SERVICE_NAME: &str = "sluice.v1.ConnectRunner";

/// Builds the server for this service: health and reflection.
pub async fn router() -> anyhow::Result<tonic::transport::server::Router> {
    let (_reporter, health) = sluice_runtime::health(&[SERVICE_NAME]).await;
    sluice_runtime::add_reflection(sluice_runtime::server().add_service(health), &[])
}
