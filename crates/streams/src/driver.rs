//! The test driver (Kafka's `TopologyTestDriver`): a topology run in memory, one partition
//! per topic, with records piped in and outputs read back, no cluster. Repartition topics
//! are looped back in at once; changelog records can be read like any output.

use std::collections::BTreeMap;

use crate::StreamsError;
use crate::codec::Codec;
use crate::record::Record;
use crate::store::MemoryBackend;
use crate::task::{Task, TaskId};
use crate::topology::{Output, RawRecord, TaskMetrics, Topology};

pub struct TestDriver {
    app_id: String,
    tasks: Vec<Task>,
    /// Everything written, by topic, not yet read.
    outputs: BTreeMap<String, Vec<Output>>,
    /// The next offset of each topic piped into.
    offsets: BTreeMap<String, i64>,
}

impl TestDriver {
    /// Runs `topology` as application `app_id` (which names its internal topics).
    pub fn new(topology: Topology, app_id: &str) -> Result<Self, StreamsError> {
        topology.validate()?;
        let open =
            |_: &crate::topology::StoreSpec| Box::new(MemoryBackend::default()) as Box<dyn crate::store::Backend>;
        let tasks = (0..topology.sub_topologies(app_id).len())
            .map(|sub| Task::new(&topology, app_id, TaskId { sub_topology: sub, partition: 0 }, &open))
            .collect::<Result<_, _>>()?;
        Ok(Self { app_id: app_id.to_string(), tasks, outputs: BTreeMap::new(), offsets: BTreeMap::new() })
    }

    /// Pipes a record into `topic`.
    pub fn pipe<K: Codec, V: Codec>(
        &mut self,
        topic: &str,
        key: K,
        value: V,
        timestamp: i64,
    ) -> Result<(), StreamsError> {
        let record = Record::new(key.encode(), value.encode(), timestamp);
        self.pipe_raw(topic, record)
    }

    /// Pipes a record as bytes (absent key or value: `None`).
    pub fn pipe_raw(&mut self, topic: &str, record: RawRecord) -> Result<(), StreamsError> {
        let mut queue = vec![(topic.to_string(), record)];
        while let Some((topic, record)) = queue.pop() {
            let task = self
                .tasks
                .iter_mut()
                .find(|t| t.topics().contains(&topic))
                .ok_or_else(|| StreamsError::UnknownTopic(topic.clone()))?;
            // Each topic's records get offsets 0, 1, ... in the order piped.
            let next = self.offsets.entry(topic.clone()).or_insert(0);
            let offset = *next;
            *next += 1;
            task.process(&topic, offset, record)?;
            let mut looped = Vec::new();
            for o in task.take_outputs() {
                if o.partition.is_none()
                    && o.topic.starts_with(&format!("{}-", self.app_id))
                    && o.topic.ends_with("-repartition")
                {
                    let r = Record { key: o.key, value: o.value, timestamp: o.timestamp, headers: o.headers };
                    looped.push((o.topic, r));
                } else {
                    self.outputs.entry(o.topic.clone()).or_default().push(o);
                }
            }
            // Repartitioned records are processed in the order written.
            looped.reverse();
            queue.extend(looped);
        }
        Ok(())
    }

    /// The records written to `topic` since the last read, decoded.
    pub fn read<K: Codec, V: Codec>(&mut self, topic: &str) -> Result<Vec<Record<K, V>>, StreamsError> {
        self.outputs
            .remove(topic)
            .unwrap_or_default()
            .into_iter()
            .map(|o| {
                let key = K::decode_opt(o.key.as_deref()).map_err(|e| StreamsError::Codec(topic.to_string(), e))?;
                let value = V::decode_opt(o.value.as_deref()).map_err(|e| StreamsError::Codec(topic.to_string(), e))?;
                Ok(Record { key, value, timestamp: o.timestamp, headers: o.headers })
            })
            .collect()
    }

    /// The latest value of each key written to `topic` since the last read (a table's final
    /// state; a `None` value deletes).
    pub fn read_table<K: Codec + Ord, V: Codec>(&mut self, topic: &str) -> Result<BTreeMap<K, V>, StreamsError> {
        let mut table = BTreeMap::new();
        for r in self.read::<K, Option<V>>(topic)? {
            match r.value {
                Some(v) => table.insert(r.key, v),
                None => table.remove(&r.key),
            };
        }
        Ok(table)
    }

    /// Every entry of key-value store `store`.
    pub fn store<K: Codec, V: Codec>(&self, store: &str) -> Result<Vec<(K, V)>, StreamsError> {
        let s = self
            .tasks
            .iter()
            .find_map(|t| t.store(store))
            .ok_or_else(|| StreamsError::Config(format!("no store '{store}'")))?;
        s.borrow().all::<K, V>().map_err(StreamsError::Store)
    }

    /// Drops everything written and not read (a long-running driver that reads its results
    /// another way, through `foreach`, keeps no changelog or output records).
    pub fn discard_outputs(&mut self) {
        self.outputs.clear();
    }

    /// The largest event time any task has seen.
    pub fn stream_time(&self) -> i64 {
        self.tasks.iter().map(|t| t.stream_time()).max().unwrap_or(i64::MIN)
    }

    /// The tasks' counts, summed.
    pub fn metrics(&self) -> TaskMetrics {
        let mut m = TaskMetrics::default();
        for t in &self.tasks {
            m.processed += t.metrics().processed;
            m.dropped_late += t.metrics().dropped_late;
            m.skipped += t.metrics().skipped;
        }
        m
    }
}
