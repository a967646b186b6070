//! The connect runner's OpenTelemetry instruments (no-ops unless export is configured):
//! records in and out and failed records per connector and task, and the tasks running.
//! A sink's lag is its consumer group's (`sluice.group.lag` of group `connect-<name>`).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};

pub struct ConnectMetrics {
    /// Records read from the source or the topics (`direction` in) and written to the topics
    /// or the target (`direction` out).
    pub records: Counter<u64>,
    /// Records that failed conversion or a transform, by `stage`.
    pub errors: Counter<u64>,
    /// Tasks running on this runner.
    pub tasks: UpDownCounter<i64>,
}

pub fn metrics() -> &'static ConnectMetrics {
    static M: OnceLock<ConnectMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = sluice_telemetry::meter();
        ConnectMetrics {
            records: m
                .u64_counter("sluice.connect.records")
                .with_description("Records a connector's tasks moved")
                .build(),
            errors: m
                .u64_counter("sluice.connect.errors")
                .with_description("Records a connector's tasks could not convert or transform")
                .build(),
            tasks: m.i64_up_down_counter("sluice.connect.tasks").with_description("Connector tasks running").build(),
        }
    })
}

/// The attributes of one task's figures.
pub fn task(connector: &str, task: u32) -> Vec<KeyValue> {
    vec![KeyValue::new("connector", connector.to_string()), KeyValue::new("task", i64::from(task))]
}

/// `task` with one more attribute.
pub fn with(mut attrs: Vec<KeyValue>, key: &'static str, value: &'static str) -> Vec<KeyValue> {
    attrs.push(KeyValue::new(key, value));
    attrs
}
