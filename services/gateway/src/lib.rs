//! The gateway: the stateless entry point of a Sluice cluster.
//!
//! A thin tonic layer over the data path in `sluice_router`: it serves `sluice.v1.Admin` and
//! `sluice.v1.Broker` from a [`Router`], and forwards `sluice.v1.Groups` and
//! `sluice.v1.Transactions` to the active group coordinator. Any number of gateways can run
//! side by side.
//!
//! - [`handlers`]: the gRPC services; [`handlers::groups`] and [`handlers::transactions`]: the
//!   coordinator proxies.
//! - [`kafka`]: the Kafka wire protocol, on its own port.

pub mod handlers;
pub mod kafka;

use std::net::SocketAddr;
use std::sync::Arc;

pub use sluice_router::Router;

/// Starts the Kafka listener on `listen` (host:port), telling clients `advertise` (empty: the
/// address bound); returns the address bound.
pub async fn start_kafka(
    router: Arc<Router>,
    listen: &str,
    advertise: &str,
    shutdown: sluice_runtime::Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let (host, port) = match advertise.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h.to_string(), p.parse().unwrap_or(bound.port() as i32)),
        _ => (bound.ip().to_string(), bound.port() as i32),
    };
    tracing::info!(%bound, %host, port, "Kafka listener up");
    let coordinator = sluice_runtime::node_api::CoordinatorLink::new(router.view.clone());
    tokio::spawn(kafka::serve(listener, Arc::new(kafka::Kafka { router, coordinator, host, port }), shutdown));
    Ok(bound)
}
