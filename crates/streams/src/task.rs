//! A task: one sub-topology's processors and stores for one partition of its topics.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::StreamsError;
use crate::store::{Backend, StoreRef};
use crate::topology::{Build, Ctx, Output, Port, RawRecord, StoreSpec, TaskMetrics, Topology};

/// Which task: a sub-topology and a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub sub_topology: usize,
    pub partition: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.sub_topology, self.partition)
    }
}

pub struct Task {
    pub id: TaskId,
    sources: HashMap<String, Port<Option<Bytes>, Option<Bytes>>>,
    stores: BTreeMap<String, StoreRef>,
    changelogs: BTreeMap<String, String>,
    ctx: Ctx,
}

impl Task {
    /// Makes the processors and opens the stores of task `id` of `topology`.
    pub fn new(
        topology: &Topology,
        app_id: &str,
        id: TaskId,
        open: &dyn Fn(&StoreSpec) -> Box<dyn Backend>,
    ) -> Result<Self, StreamsError> {
        let groups = topology.source_groups();
        let sources = groups
            .get(id.sub_topology)
            .ok_or_else(|| StreamsError::Config(format!("no sub-topology {}", id.sub_topology)))?;
        let mut build = Build::new(&topology.graph, open);
        let mut ports = HashMap::new();
        for s in sources {
            let port = build.port::<Option<Bytes>, Option<Bytes>>(s.node);
            for t in &s.topics {
                let name = if s.internal { format!("{app_id}-{t}") } else { t.clone() };
                ports.insert(name, port.clone());
            }
        }
        let stores = build.stores;
        let changelogs = topology.changelog_topics(app_id);
        Ok(Self { id, sources: ports, stores, changelogs, ctx: Ctx::new(app_id, id.partition) })
    }

    /// The topics this task reads.
    pub fn topics(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Processes one record read at `offset` of `topic`.
    pub fn process(&mut self, topic: &str, offset: i64, record: RawRecord) -> Result<(), StreamsError> {
        let port = self.sources.get(topic).ok_or_else(|| StreamsError::UnknownTopic(topic.to_string()))?.clone();
        self.ctx.topic.clear();
        self.ctx.topic.push_str(topic);
        self.ctx.offset = offset;
        self.ctx.metrics.processed += 1;
        port.borrow_mut().process(&mut self.ctx, record);
        match self.ctx.failure.take() {
            Some(e) => Err(StreamsError::Store(e)),
            None => Ok(()),
        }
    }

    /// What the task wrote since the last call: output and repartition records in the order
    /// produced, then each store's changelog records.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        let mut out = std::mem::take(&mut self.ctx.outputs);
        for (name, store) in &self.stores {
            let Some(topic) = self.changelogs.get(name) else { continue };
            for (key, value) in store.borrow_mut().take_changelog() {
                out.push(Output {
                    topic: topic.clone(),
                    key: Some(Bytes::from(key)),
                    value: value.map(Bytes::from),
                    timestamp: self.ctx.stream_time.max(0),
                    headers: Vec::new(),
                    partition: Some(self.id.partition),
                });
            }
        }
        out
    }

    /// Applies a changelog record of store `store` (restoring before processing).
    pub fn restore(&mut self, store: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError> {
        let s = self
            .stores
            .get(store)
            .ok_or_else(|| StreamsError::Config(format!("no store '{store}' in task {}", self.id)))?;
        s.borrow_mut().restore(key, value).map_err(StreamsError::Store)
    }

    /// Makes the stores' writes durable (before a commit).
    pub fn flush(&mut self) -> Result<(), StreamsError> {
        for s in self.stores.values() {
            s.borrow_mut().flush().map_err(StreamsError::Store)?;
        }
        Ok(())
    }

    pub fn store(&self, name: &str) -> Option<StoreRef> {
        self.stores.get(name).cloned()
    }

    /// The changelog topic of each of this task's stores.
    pub fn changelogs(&self) -> &BTreeMap<String, String> {
        &self.changelogs
    }

    pub fn metrics(&self) -> &TaskMetrics {
        &self.ctx.metrics
    }

    pub fn stream_time(&self) -> i64 {
        self.ctx.stream_time
    }
}
