//! The processor graph: what the DSL builds and what every task instantiates.
//!
//! A node is defined once, with a factory; a task calls the factories to get its own
//! processors (and stores), each node made once per task so that two parents (a merge, the
//! two sides of a join) feed the same instance. Values pass between processors typed, by
//! move (cloned only when a node has several children): no encoding between steps.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::rc::Rc;

use bytes::Bytes;

use crate::record::{Headers, Record};
use crate::store::{Backend, Store, StoreError, StoreRef};

pub(crate) type NodeId = usize;

/// A processor taking records of key `K` and value `V`.
pub(crate) trait Process<K, V> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>);
}

/// A task's instance of a node.
pub(crate) type Port<K, V> = Rc<RefCell<dyn Process<K, V>>>;

/// How a node's instance is made in a task.
pub(crate) type Factory<K, V> = std::sync::Arc<dyn Fn(&mut Build) -> Port<K, V> + Send + Sync>;

/// The records sources hand on: key and value as read.
pub type RawRecord = Record<Option<Bytes>, Option<Bytes>>;

/// A node's children, which get each record it forwards.
pub(crate) struct Out<K, V>(Vec<Port<K, V>>);

impl<K: Clone, V: Clone> Out<K, V> {
    pub(crate) fn forward(&self, ctx: &mut Ctx, r: Record<K, V>) {
        if let Some((last, rest)) = self.0.split_last() {
            for p in rest {
                p.borrow_mut().process(ctx, r.clone());
            }
            last.borrow_mut().process(ctx, r);
        }
    }
}

/// A record a task writes: to an output, repartition or changelog topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp: i64,
    pub headers: Headers,
    /// Set for changelog records (the task's partition); otherwise the producer's
    /// partitioner places the record by key.
    pub partition: Option<u32>,
}

/// Counts of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMetrics {
    pub processed: u64,
    /// Records that arrived after their window's grace period.
    pub dropped_late: u64,
    /// Records whose key or value could not be decoded, or that a step could not take (a
    /// null key for an aggregation).
    pub skipped: u64,
}

/// What a processor sees of its task while it processes a record.
pub struct Ctx {
    pub(crate) partition: u32,
    pub(crate) topic: String,
    pub(crate) offset: i64,
    /// The largest event time the task has seen: what windows close by.
    pub(crate) stream_time: i64,
    pub(crate) outputs: Vec<Output>,
    pub(crate) metrics: TaskMetrics,
    /// The first store failure: the task stops and fails with it.
    pub(crate) failure: Option<StoreError>,
    pub(crate) app_id: String,
}

impl Ctx {
    pub(crate) fn new(app_id: &str, partition: u32) -> Self {
        Self {
            partition,
            topic: String::new(),
            offset: -1,
            stream_time: i64::MIN,
            outputs: Vec::new(),
            metrics: TaskMetrics::default(),
            failure: None,
            app_id: app_id.to_string(),
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn offset(&self) -> i64 {
        self.offset
    }
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Keeps the first failure; a processor that fails drops its record.
    pub(crate) fn fail(&mut self, e: StoreError) {
        tracing::error!(error = %e, partition = self.partition, "state store failed");
        self.failure.get_or_insert(e);
    }

    pub(crate) fn skip(&mut self, why: &str) {
        tracing::debug!(topic = %self.topic, offset = self.offset, why, "record skipped");
        self.metrics.skipped += 1;
    }
}

/// What kind of store a node needs.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    KeyValue,
    Window { retention: i64 },
}

#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
    /// Whether writes go to a changelog topic (internal stores of joins are logged too).
    pub logged: bool,
}

/// A node of the graph.
pub(crate) struct NodeDef {
    pub name: String,
    pub children: Vec<NodeId>,
    pub stores: Vec<String>,
    /// The topic a sink writes to, for the description.
    pub sink: Option<String>,
    /// `Factory<K, V>` for the node's input types.
    pub factory: Box<dyn Any + Send + Sync>,
}

/// A source: the topics it reads and the node that decodes them.
#[derive(Clone)]
pub(crate) struct SourceDef {
    pub topics: Vec<String>,
    /// A repartition topic: its name is prefixed with the application id.
    pub internal: bool,
    pub node: NodeId,
    /// The sub-topology: sources joined or merged together are read by the same tasks.
    pub group: usize,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeDef>,
    pub sources: Vec<SourceDef>,
    pub stores: BTreeMap<String, StoreSpec>,
    /// Union-find parents of source groups: joined or merged sources share a root, whose
    /// topics must have as many partitions (checked when an application starts).
    pub groups: Vec<usize>,
    /// Repartition topics (named without the application id), created by the application.
    pub internal_topics: Vec<String>,
    /// What is wrong with the topology (a store named twice, a topic read twice).
    pub problems: Vec<String>,
    counter: usize,
}

impl Graph {
    pub fn name(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{:010}", self.counter - 1)
    }

    pub fn add(&mut self, name: String, factory: Box<dyn Any + Send + Sync>, parent: Option<NodeId>) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(NodeDef { name, children: Vec::new(), stores: Vec::new(), sink: None, factory });
        if let Some(p) = parent {
            self.nodes[p].children.push(id);
        }
        id
    }

    pub fn new_group(&mut self) -> usize {
        self.groups.push(self.groups.len());
        self.groups.len() - 1
    }

    pub fn root(&self, mut g: usize) -> usize {
        while self.groups[g] != g {
            g = self.groups[g];
        }
        g
    }

    pub fn union(&mut self, a: usize, b: usize) -> usize {
        let (ra, rb) = (self.root(a), self.root(b));
        self.groups[rb] = ra;
        ra
    }
}

/// A task's view while its processors are made: nodes made so far and its stores.
pub(crate) struct Build<'a> {
    graph: &'a Graph,
    made: HashMap<NodeId, Box<dyn Any>>,
    pub stores: BTreeMap<String, StoreRef>,
    open: &'a dyn Fn(&StoreSpec) -> Box<dyn Backend>,
}

impl<'a> Build<'a> {
    pub fn new(graph: &'a Graph, open: &'a dyn Fn(&StoreSpec) -> Box<dyn Backend>) -> Self {
        Self { graph, made: HashMap::new(), stores: BTreeMap::new(), open }
    }

    /// The task's instance of node `id`, which takes `(K, V)`.
    pub fn port<K: 'static, V: 'static>(&mut self, id: NodeId) -> Port<K, V> {
        if let Some(p) = self.made.get(&id).and_then(|p| p.downcast_ref::<Port<K, V>>()) {
            return p.clone();
        }
        // The DSL links a node only to children taking its output types.
        let factory = self.graph.nodes[id]
            .factory
            .downcast_ref::<Factory<K, V>>()
            .unwrap_or_else(|| panic!("node {} takes other types", self.graph.nodes[id].name))
            .clone();
        let p = factory(self);
        self.made.insert(id, Box::new(p.clone()));
        p
    }

    /// The instances of the children of `id`, which take `(K, V)`.
    pub fn out<K: 'static, V: 'static>(&mut self, id: NodeId) -> Out<K, V> {
        let children = self.graph.nodes[id].children.clone();
        Out(children.into_iter().map(|c| self.port::<K, V>(c)).collect())
    }

    /// The task's store `name`, opened on first use.
    pub fn store(&mut self, name: &str) -> StoreRef {
        if let Some(s) = self.stores.get(name) {
            return s.clone();
        }
        let spec = self.graph.stores.get(name).cloned().unwrap_or_else(|| StoreSpec {
            name: name.to_string(),
            kind: StoreKind::KeyValue,
            logged: true,
        });
        let s = Rc::new(RefCell::new(Store::new(name, (self.open)(&spec), spec.logged)));
        self.stores.insert(name.to_string(), s.clone());
        s
    }
}

/// A built topology: what `describe` prints and what tasks are made from.
pub struct Topology {
    pub(crate) graph: Graph,
}

/// A sub-topology: the source topics its tasks read (co-partitioned) and its nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct SubTopology {
    pub id: usize,
    pub topics: Vec<String>,
}

impl Topology {
    /// Refuses a topology Kafka Streams would refuse at build time, naming each problem.
    pub fn validate(&self) -> Result<(), crate::StreamsError> {
        match self.graph.problems.is_empty() {
            true => Ok(()),
            false => Err(crate::StreamsError::Config(self.graph.problems.join("; "))),
        }
    }

    /// The sub-topology holding each node.
    fn sub_topology_of_nodes(&self) -> HashMap<NodeId, usize> {
        let mut out = HashMap::new();
        for (sub, sources) in self.source_groups().iter().enumerate() {
            let mut stack: Vec<NodeId> = sources.iter().map(|s| s.node).collect();
            while let Some(id) = stack.pop() {
                if out.insert(id, sub).is_none() {
                    stack.extend(self.graph.nodes[id].children.iter().copied());
                }
            }
        }
        out
    }

    /// Each repartition topic of application `app_id` with the sub-topology that writes it.
    pub fn repartition_writers(&self, app_id: &str) -> Vec<(String, Option<usize>)> {
        let subs = self.sub_topology_of_nodes();
        self.graph
            .internal_topics
            .iter()
            .map(|t| {
                let writer = self.graph.nodes.iter().position(|n| n.sink.as_deref() == Some(t.as_str()));
                (format!("{app_id}-{t}"), writer.and_then(|w| subs.get(&w).copied()))
            })
            .collect()
    }

    /// The sub-topologies in order, with the topic names of application `app_id`: each has a
    /// task per partition of its topics, which must have as many partitions each.
    pub fn sub_topologies(&self, app_id: &str) -> Vec<SubTopology> {
        self.source_groups()
            .into_iter()
            .enumerate()
            .map(|(id, sources)| SubTopology {
                id,
                topics: sources
                    .iter()
                    .flat_map(|s| s.topics.iter().map(|t| if s.internal { format!("{app_id}-{t}") } else { t.clone() }))
                    .collect(),
            })
            .collect()
    }

    /// The sources of each sub-topology.
    pub(crate) fn source_groups(&self) -> Vec<Vec<&SourceDef>> {
        let mut by_root: BTreeMap<usize, Vec<&SourceDef>> = BTreeMap::new();
        for s in &self.graph.sources {
            by_root.entry(self.graph.root(s.group)).or_default().push(s);
        }
        by_root.into_values().collect()
    }

    /// Topics the application creates and owns: repartition and changelog topics.
    pub fn internal_topics(&self, app_id: &str) -> Vec<String> {
        let mut out: Vec<String> = self.graph.internal_topics.iter().map(|t| format!("{app_id}-{t}")).collect();
        out.extend(self.changelog_topics(app_id).into_values());
        out
    }

    /// The repartition topics of application `app_id`.
    pub fn repartition_topics(&self, app_id: &str) -> Vec<String> {
        self.graph.internal_topics.iter().map(|t| format!("{app_id}-{t}")).collect()
    }

    /// The sub-topology whose tasks hold store `store`.
    pub fn sub_topology_of_store(&self, store: &str) -> Option<usize> {
        let subs = self.sub_topology_of_nodes();
        let node = self.graph.nodes.iter().position(|n| n.stores.iter().any(|s| s == store))?;
        subs.get(&node).copied()
    }

    /// Each logged store's changelog topic.
    pub fn changelog_topics(&self, app_id: &str) -> BTreeMap<String, String> {
        self.graph
            .stores
            .values()
            .filter(|s| s.logged)
            .map(|s| (s.name.clone(), format!("{app_id}-{}-changelog", s.name)))
            .collect()
    }

    /// The stores, for interactive queries.
    pub fn stores(&self) -> Vec<StoreSpec> {
        self.graph.stores.values().cloned().collect()
    }
}

impl fmt::Display for Topology {
    /// As Kafka Streams' `TopologyDescription`: sub-topologies, their sources, processors
    /// with their stores, and sinks, each with what follows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Topologies:")?;
        for (id, sources) in self.source_groups().into_iter().enumerate() {
            writeln!(f, "   Sub-topology: {id}")?;
            let mut seen = std::collections::BTreeSet::new();
            let mut stack: Vec<NodeId> = sources.iter().map(|s| s.node).rev().collect();
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let n = &self.graph.nodes[id];
                let next: Vec<&str> = n.children.iter().map(|c| self.graph.nodes[*c].name.as_str()).collect();
                let next = if next.is_empty() { "none".to_string() } else { next.join(", ") };
                if let Some(src) = self.graph.sources.iter().find(|s| s.node == id) {
                    writeln!(f, "    Source: {} (topics: [{}])", n.name, src.topics.join(", "))?;
                } else if let Some(topic) = &n.sink {
                    writeln!(f, "    Sink: {} (topic: {})", n.name, topic)?;
                } else {
                    writeln!(f, "    Processor: {} (stores: [{}])", n.name, n.stores.join(", "))?;
                }
                if n.sink.is_none() {
                    writeln!(f, "      --> {next}")?;
                }
                stack.extend(n.children.iter().rev());
            }
        }
        Ok(())
    }
}
