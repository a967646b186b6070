//! FindCoordinator: this gateway, for groups and transactional ids alike (it forwards to the
//! active coordinator, as for gRPC); COORDINATOR_NOT_AVAILABLE while none is active.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Kafka, errors};

pub(super) fn handle(k: &Kafka, r: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let active = k.router.snapshot().coordinator.is_some();
    let (code, node, host, port) = if active {
        (errors::NONE, k.node_id, StrBytes::from_string(k.host.clone()), k.port)
    } else {
        (errors::COORDINATOR_NOT_AVAILABLE, -1, StrBytes::new(), -1)
    };
    // Versions up to 3 ask for one key and answer in top-level fields; 4 and later ask for a
    // list and answer in `coordinators` (the encoder refuses the other fields).
    if version < 4 {
        return FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_error_message(None)
            .with_node_id(BrokerId(node))
            .with_host(host)
            .with_port(port);
    }
    let coordinators = r
        .coordinator_keys
        .into_iter()
        .map(|key| {
            Coordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(node))
                .with_host(host.clone())
                .with_port(port)
                .with_error_code(code)
                .with_error_message(None)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
