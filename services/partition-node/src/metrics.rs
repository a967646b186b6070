//! The partition node's OpenTelemetry gauges, read from the replicas at each export (no-ops
//! unless export is configured). Per partition: log end offset, high watermark and in-sync
//! set size (where this node leads), storage bytes; per node: under-replicated partitions
//! among those it leads.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::ObservableGauge;

use crate::Node;
use crate::replica::Role;

/// Held for the node's lifetime: the gauges' callbacks live as long as these.
pub struct NodeGauges {
    _gauges: Vec<ObservableGauge<i64>>,
}

/// Values with their attributes, as one gauge reads them from the node.
type Points = Vec<(i64, Vec<KeyValue>)>;

fn attrs(topic: &str, partition: u32) -> [KeyValue; 2] {
    [KeyValue::new("topic", topic.to_string()), KeyValue::new("partition", partition as i64)]
}

pub fn register(node: &Arc<Node>) -> NodeGauges {
    let m = sluice_telemetry::meter();
    let gauge = |name: &'static str, unit: &'static str, doc: &'static str, f: fn(&Node, &mut Points)| {
        let weak: Weak<Node> = Arc::downgrade(node);
        m.i64_observable_gauge(name)
            .with_unit(unit)
            .with_description(doc)
            .with_callback(move |obs| {
                let Some(node) = weak.upgrade() else { return };
                let mut points = Vec::new();
                f(&node, &mut points);
                for (v, a) in points {
                    obs.observe(v, &a);
                }
            })
            .build()
    };
    let gauges = vec![
        gauge("sluice.partition.log_end_offset", "{offset}", "Next offset of each replica's log", |n, out| {
            for (_, r) in n.all_replicas() {
                out.push((r.log.offsets().log_end_offset, attrs(&r.pid.topic, r.pid.partition).to_vec()));
            }
        }),
        gauge(
            "sluice.partition.high_watermark",
            "{offset}",
            "High watermark of each partition this node leads",
            |n, out| {
                for (_, r) in n.all_replicas() {
                    if matches!(r.role(), Role::Leader { .. }) {
                        out.push((r.high_watermark(), attrs(&r.pid.topic, r.pid.partition).to_vec()));
                    }
                }
            },
        ),
        gauge(
            "sluice.partition.isr_size",
            "{replica}",
            "In-sync replicas of each partition this node leads",
            |n, out| {
                for (_, r) in n.all_replicas() {
                    if matches!(r.role(), Role::Leader { .. }) {
                        let isr = r.committed().borrow().isr as i64;
                        out.push((isr, attrs(&r.pid.topic, r.pid.partition).to_vec()));
                    }
                }
            },
        ),
        gauge("sluice.partition.storage_bytes", "By", "Bytes each replica's log occupies", |n, out| {
            for (_, r) in n.all_replicas() {
                out.push((r.log.size_bytes() as i64, attrs(&r.pid.topic, r.pid.partition).to_vec()));
            }
        }),
        gauge(
            "sluice.node.under_replicated_partitions",
            "{partition}",
            "Partitions this node leads whose in-sync set is smaller than their replica set",
            |n, out| {
                let view = n.snapshot();
                let mut count = 0;
                for ((topic_id, p), r) in n.all_replicas() {
                    if !matches!(r.role(), Role::Leader { .. }) {
                        continue;
                    }
                    let replicas = view
                        .topics
                        .values()
                        .find(|t| t.topic_id == topic_id)
                        .and_then(|t| t.partitions.get(p as usize))
                        .map_or(0, |a| a.replicas.len());
                    if r.committed().borrow().isr < replicas {
                        count += 1;
                    }
                }
                out.push((count, vec![KeyValue::new("node", n.id as i64)]));
            },
        ),
    ];
    NodeGauges { _gauges: gauges }
}
