//! A running application's OpenTelemetry instruments (no-ops unless export is configured):
//! records processed, dropped as late and skipped per task, changelog records restored per
//! store, and the tasks running. An application's input lag is its group's
//! (`sluice.group.lag` of the group named after the application id).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};

pub(crate) struct StreamsMetrics {
    pub processed: Counter<u64>,
    pub dropped_late: Counter<u64>,
    pub skipped: Counter<u64>,
    pub restored: Counter<u64>,
    pub tasks: UpDownCounter<i64>,
}

pub(crate) fn metrics() -> &'static StreamsMetrics {
    static M: OnceLock<StreamsMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = sluice_telemetry::meter();
        StreamsMetrics {
            processed: m.u64_counter("sluice.streams.records").with_description("Records a task processed").build(),
            dropped_late: m
                .u64_counter("sluice.streams.dropped_late")
                .with_description("Records that arrived after their window's grace period")
                .build(),
            skipped: m
                .u64_counter("sluice.streams.skipped")
                .with_description("Records a task could not decode or use (a null key for an aggregation)")
                .build(),
            restored: m
                .u64_counter("sluice.streams.restored")
                .with_description("Changelog records applied to a store while its task opened")
                .build(),
            tasks: m.i64_up_down_counter("sluice.streams.tasks").with_description("Tasks this instance runs").build(),
        }
    })
}

/// The attributes of one task's figures.
pub(crate) fn task(app: &str, task: &crate::task::TaskId) -> [KeyValue; 2] {
    [KeyValue::new("application", app.to_string()), KeyValue::new("task", task.to_string())]
}
