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
/// address bound, or the host of `name` when bound to every interface), and registers it
/// under `name` (the gateway's advertised gRPC address) so that every gateway lists it;
/// returns the address bound.
pub async fn start_kafka(
    router: Arc<Router>,
    listen: &str,
    advertise: &str,
    name: &str,
    shutdown: sluice_runtime::Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let (host, port) = match advertise.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h.to_string(), p.parse().unwrap_or(bound.port() as i32)),
        // Bound to every interface: clients are told the host this gateway advertises for
        // gRPC, which other services already reach it by (never 0.0.0.0).
        _ if bound.ip().is_unspecified() => {
            let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
            (host.trim_matches(|c| c == '[' || c == ']').to_string(), bound.port() as i32)
        }
        _ => (bound.ip().to_string(), bound.port() as i32),
    };
    let kafka_addr = format!("{host}:{port}");
    let node_id = kafka::node_id(&kafka_addr);
    tracing::info!(%bound, %kafka_addr, node_id, "Kafka listener up");
    // Other gateways list this one to Kafka clients from the metadata store; until it shows
    // there, this one still lists itself.
    let gateway = sluice_meta::GatewayInfo { name: name.to_string(), kafka: kafka_addr };
    if let Err(e) = router.meta.register_gateway(gateway).await {
        tracing::warn!(error = %e, "could not register the Kafka listener; other gateways will not list it");
    }
    let coordinator = sluice_runtime::node_api::CoordinatorLink::new(router.view.clone());
    let (max_connections, idle) = (
        router.settings.kafka_max_connections,
        std::time::Duration::from_millis(router.settings.kafka_idle_timeout_ms.max(1)),
    );
    let kafka = kafka::Kafka { router, coordinator, host, port, node_id };
    tokio::spawn(kafka::serve(listener, Arc::new(kafka), max_connections, idle, shutdown));
    Ok(bound)
}
