//! The coordinator's OpenTelemetry gauges (no-ops unless export is configured): per group,
//! topic and partition the consumer lag (high watermark minus committed offset); per group
//! the member count. Lag needs the partitions' high watermarks, so it is refreshed in the
//! background at the metrics interval, and only while exporting.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::ObservableGauge;

use crate::Coordinator;

type Points = Vec<(i64, Vec<KeyValue>)>;

/// Held for the coordinator's lifetime: the gauges' callbacks live as long as these.
pub struct GroupGauges {
    _gauges: Vec<ObservableGauge<i64>>,
}

/// Registers the gauges and starts refreshing lag every `interval`.
pub fn register(c: &Arc<Coordinator>, interval: Duration) -> GroupGauges {
    let m = sluice_telemetry::meter();
    let lag: Arc<Mutex<Points>> = Arc::default();
    let members = {
        let weak: Weak<Coordinator> = Arc::downgrade(c);
        m.i64_observable_gauge("sluice.group.members")
            .with_unit("{member}")
            .with_description("Members of each consumer group")
            .with_callback(move |obs| {
                let Some(c) = weak.upgrade() else { return };
                for cell in c.groups.cells() {
                    let slot = cell.lock();
                    obs.observe(slot.group.member_count() as i64, &[KeyValue::new("group", slot.group.id.clone())]);
                }
            })
            .build()
    };
    let lag_gauge = {
        let lag = lag.clone();
        m.i64_observable_gauge("sluice.group.lag")
            .with_unit("{record}")
            .with_description("Records between each group's committed offset and the partition's high watermark")
            .with_callback(move |obs| {
                for (v, a) in lag.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    obs.observe(*v, a);
                }
            })
            .build()
    };
    let weak = Arc::downgrade(c);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            let Some(c) = weak.upgrade() else { return };
            if !sluice_telemetry::exporting() || c.active().is_err() {
                continue;
            }
            let ids = c.groups.ids();
            let mut points = Points::new();
            for id in ids {
                let Ok((mut d, topics)) = c.describe(&id) else { continue };
                c.add_lag(&mut d, topics).await;
                for p in d.partitions.iter().filter(|p| p.lag >= 0) {
                    let attrs = vec![
                        KeyValue::new("group", id.clone()),
                        KeyValue::new("topic", p.topic.clone()),
                        KeyValue::new("partition", p.partition as i64),
                    ];
                    points.push((p.lag, attrs));
                }
            }
            *lag.lock().unwrap_or_else(|p| p.into_inner()) = points;
        }
    });
    GroupGauges { _gauges: vec![members, lag_gauge] }
}
