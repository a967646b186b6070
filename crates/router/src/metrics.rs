//! The gateway's OpenTelemetry instruments (no-ops unless export is configured). Every
//! record-level figure carries the topic as the `topic` attribute.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

pub struct GatewayMetrics {
    /// Produce requests handled.
    pub produce_requests: Counter<u64>,
    /// Records appended through this gateway (acknowledged or not).
    pub produce_records: Counter<u64>,
    /// Record batch bytes sent to partition nodes.
    pub produce_bytes: Counter<u64>,
    /// From a produce request's arrival to its answer.
    pub produce_duration: Histogram<f64>,
    /// Fetch streams opened by consumers.
    pub fetch_requests: Counter<u64>,
    /// Records served to consumers (counted from batch headers, so whole batches).
    pub fetch_records: Counter<u64>,
    /// Record batch bytes served to consumers.
    pub fetch_bytes: Counter<u64>,
    /// Fetch responses with data served to consumers.
    pub fetch_responses: Counter<u64>,
    /// Open client streams, by `kind` (produce, fetch).
    pub active_streams: UpDownCounter<i64>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let m = sluice_telemetry::meter();
        Self {
            produce_requests: m.u64_counter("sluice.produce.requests").with_description("Produce requests").build(),
            produce_records: m.u64_counter("sluice.produce.records").with_description("Records produced").build(),
            produce_bytes: m
                .u64_counter("sluice.produce.bytes")
                .with_unit("By")
                .with_description("Record batch bytes produced")
                .build(),
            produce_duration: m
                .f64_histogram("sluice.produce.duration")
                .with_unit("ms")
                .with_description("Produce request latency, arrival to answer")
                .with_boundaries(vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0])
                .build(),
            fetch_requests: m.u64_counter("sluice.fetch.requests").with_description("Fetch streams opened").build(),
            fetch_records: m
                .u64_counter("sluice.fetch.records")
                .with_description("Records served to consumers")
                .build(),
            fetch_bytes: m
                .u64_counter("sluice.fetch.bytes")
                .with_unit("By")
                .with_description("Record batch bytes served to consumers")
                .build(),
            fetch_responses: m
                .u64_counter("sluice.fetch.responses")
                .with_description("Fetch responses with records served to consumers")
                .build(),
            active_streams: m
                .i64_up_down_counter("sluice.gateway.active_streams")
                .with_description("Open client streams")
                .build(),
        }
    }
}

pub fn topic(name: &str) -> [KeyValue; 1] {
    [KeyValue::new("topic", name.to_string())]
}

/// Counts a client stream as open until dropped.
pub struct StreamGuard {
    counter: UpDownCounter<i64>,
    kind: &'static str,
}

impl StreamGuard {
    pub fn open(counter: &UpDownCounter<i64>, kind: &'static str) -> Self {
        counter.add(1, &[KeyValue::new("kind", kind)]);
        Self { counter: counter.clone(), kind }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.counter.add(-1, &[KeyValue::new("kind", self.kind)]);
    }
}
