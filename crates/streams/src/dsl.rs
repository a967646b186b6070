//! The DSL: [`StreamsBuilder`], [`KStream`], [`KTable`] and grouped and windowed streams, as
//! in Kafka Streams, typed by their key and value.
//!
//! Every operation adds a node to the graph and returns the stream of its output. Keys and
//! values are any `Clone + 'static` type; where they cross a topic or a store they need a
//! [`Codec`]. A step that changes the key (map, select_key, flat_map, group_by) marks the
//! stream so the next stateful step (an aggregation or a join) first goes through a
//! repartition topic, so that all records of a key meet in one task.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::Codec;
use crate::nodes;
use crate::record::{Change, Record, TableOp, Windowed};
use crate::topology::{Factory, Graph, NodeId, SourceDef, StoreKind, StoreSpec, Topology};
use crate::window::{SessionWindows, SlidingWindows, TimeWindows};

/// A predicate of [`KStream::branch`].
pub type Predicate<K, V> = Box<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// When a record happened, from its key, value and timestamp (Kafka's `TimestampExtractor`):
/// windows, joins and stream time go by it. A negative result skips the record (counted as
/// skipped). (A task with several inputs interleaves them by the records' own timestamps,
/// which are known before decoding.)
pub type TimestampExtractor<K, V> = Arc<dyn Fn(&K, &V, i64) -> i64 + Send + Sync>;

/// Turns a source's raw records into typed ones (given the task's context: topic, partition,
/// offset), or says why a record is skipped.
pub type Decoder<K, V> =
    Arc<dyn Fn(&crate::topology::Ctx, crate::topology::RawRecord) -> Result<Record<K, V>, String> + Send + Sync>;

/// The decoder of codecs `K` and `V`, with an optional timestamp extractor.
fn codec_decoder<K: Wire, V: Wire>(extract: Option<TimestampExtractor<K, V>>) -> Decoder<K, V> {
    Arc::new(move |_, r| {
        let key = K::decode_opt_owned(r.key).map_err(|e| format!("key: {e}"))?;
        let value = V::decode_opt_owned(r.value).map_err(|e| format!("value: {e}"))?;
        let timestamp = match &extract {
            None => r.timestamp,
            Some(f) => match f(&key, &value, r.timestamp) {
                t if t < 0 => return Err(format!("the timestamp extractor gave {t}: event times are >= 0")),
                t => t,
            },
        };
        Ok(Record { key, value, timestamp, headers: r.headers })
    })
}

/// Types a stream can carry.
pub trait Data: Clone + 'static {}
impl<T: Clone + 'static> Data for T {}

/// Types a stream can carry and write to topics and stores.
pub trait Wire: Data + Codec {}
impl<T: Data + Codec> Wire for T {}

type Shared = Rc<RefCell<Graph>>;

/// Builds a [`Topology`].
#[derive(Default)]
pub struct StreamsBuilder {
    graph: Shared,
}

impl StreamsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn source<K: Data, V: Data>(&self, topics: Vec<String>, internal: bool, decode: Decoder<K, V>) -> KStream<K, V> {
        let mut g = self.graph.borrow_mut();
        for t in &topics {
            if g.sources.iter().any(|s| s.internal == internal && s.topics.contains(t)) {
                g.problems.push(format!("topic '{t}' is read by two sources: read it once and share the stream"));
            }
        }
        let name = g.name("KSTREAM-SOURCE");
        let group = g.new_group();
        let id = g.nodes.len();
        let factory: Factory<Option<Bytes>, Option<Bytes>> = Arc::new(move |b| {
            let out = b.out::<K, V>(id);
            Rc::new(RefCell::new(nodes::Decode { out, decode: decode.clone() }))
        });
        g.add(name, Box::new(factory), None);
        g.sources.push(SourceDef { topics, internal, node: id, group });
        drop(g);
        KStream::at(&self.graph, id, group, false)
    }

    /// The records of `topic`, decoded with the codecs of `K` and `V`.
    pub fn stream<K: Wire, V: Wire>(&self, topic: &str) -> KStream<K, V> {
        self.source(vec![topic.to_string()], false, codec_decoder(None))
    }

    /// The records of `topic`, their event time given by `extract` (from the key, the value
    /// and the record's timestamp) instead of the record's timestamp.
    pub fn stream_with_timestamps<K: Wire, V: Wire>(
        &self,
        topic: &str,
        extract: impl Fn(&K, &V, i64) -> i64 + Send + Sync + 'static,
    ) -> KStream<K, V> {
        self.source(vec![topic.to_string()], false, codec_decoder(Some(Arc::new(extract))))
    }

    /// The records of several topics as one stream.
    pub fn streams<K: Wire, V: Wire>(&self, topics: &[&str]) -> KStream<K, V> {
        self.source(topics.iter().map(|t| t.to_string()).collect(), false, codec_decoder(None))
    }

    /// `topic` read as a table: the latest value of each key (a null value deletes), kept in
    /// store `store` (whose changelog is the topic itself in Kafka; here a changelog topic).
    pub fn table<K: Wire, V: Wire>(&self, topic: &str, store: &str) -> KTable<K, V> {
        let s: KStream<K, Option<V>> = self.source(vec![topic.to_string()], false, codec_decoder(None));
        s.to_table(store)
    }

    /// [`StreamsBuilder::table`] with the updates' event time given by `extract` (a deletion
    /// has no value: it keeps the record's timestamp).
    pub fn table_with_timestamps<K: Wire, V: Wire>(
        &self,
        topic: &str,
        store: &str,
        extract: impl Fn(&K, &V, i64) -> i64 + Send + Sync + 'static,
    ) -> KTable<K, V> {
        let extract: TimestampExtractor<K, Option<V>> =
            Arc::new(move |k, v, ts| v.as_ref().map_or(ts, |v| extract(k, v, ts)));
        let s: KStream<K, Option<V>> = self.source(vec![topic.to_string()], false, codec_decoder(Some(extract)));
        s.to_table(store)
    }

    /// The records of `topic` decoded by `decode`, for formats known at run time rather
    /// than by type (the decoder sets each record's event time).
    pub fn stream_decoded<K: Data, V: Data>(
        &self,
        topic: &str,
        decode: impl Fn(&crate::topology::Ctx, crate::topology::RawRecord) -> Result<Record<K, V>, String>
        + Send
        + Sync
        + 'static,
    ) -> KStream<K, V> {
        self.source(vec![topic.to_string()], false, Arc::new(decode))
    }

    /// `topic` as a table, its records decoded by `decode` (a `None` value deletes).
    pub fn table_decoded<K: Wire, V: Wire>(
        &self,
        topic: &str,
        store: &str,
        decode: impl Fn(&crate::topology::Ctx, crate::topology::RawRecord) -> Result<Record<K, Option<V>>, String>
        + Send
        + Sync
        + 'static,
    ) -> KTable<K, V> {
        self.stream_decoded(topic, decode).to_table(store)
    }

    pub fn build(self) -> Topology {
        Topology { graph: self.graph.take() }
    }
}

/// A stream of records.
pub struct KStream<K, V> {
    graph: Shared,
    node: NodeId,
    /// The source group (sub-topology) the stream belongs to.
    group: usize,
    /// Whether the key was changed since the records were read (a repartition is due before
    /// a stateful step).
    rekeyed: bool,
    _t: PhantomData<fn(K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        Self { graph: self.graph.clone(), node: self.node, group: self.group, rekeyed: self.rekeyed, _t: PhantomData }
    }
}

/// Adds a node under `parent` taking `(K, V)`, made in each task by `make`.
fn add_node<K: Data, V: Data>(
    graph: &Shared,
    kind: &str,
    parent: NodeId,
    make: impl Fn(&mut crate::topology::Build, NodeId) -> crate::topology::Port<K, V> + Send + Sync + 'static,
) -> NodeId {
    let mut g = graph.borrow_mut();
    let name = g.name(kind);
    let id = g.nodes.len();
    let factory: Factory<K, V> = Arc::new(move |b| make(b, id));
    g.add(name, Box::new(factory), Some(parent))
}

impl<K: Data, V: Data> KStream<K, V> {
    fn at(graph: &Shared, node: NodeId, group: usize, rekeyed: bool) -> Self {
        Self { graph: graph.clone(), node, group, rekeyed, _t: PhantomData }
    }

    /// A stateless step: `f` gets each record and the children's ports.
    fn step<K2: Data, V2: Data>(
        &self,
        kind: &str,
        rekeys: bool,
        f: impl Fn(&mut crate::topology::Ctx, Record<K, V>, &crate::topology::Out<K2, V2>) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(f);
        let id = add_node::<K, V>(&self.graph, kind, self.node, move |b, id| {
            let out = b.out::<K2, V2>(id);
            Rc::new(RefCell::new(nodes::Step { f: f.clone(), out }))
        });
        KStream::at(&self.graph, id, self.group, self.rekeyed || rekeys)
    }

    /// The records for which `p` holds.
    pub fn filter(&self, p: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.step("KSTREAM-FILTER", false, move |ctx, r, out| {
            if p(&r.key, &r.value) {
                out.forward(ctx, r)
            }
        })
    }

    /// The records for which `p` does not hold.
    pub fn filter_not(&self, p: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.filter(move |k, v| !p(k, v))
    }

    /// Each record as a new key and value (a new key: repartitioned before a stateful step).
    pub fn map<K2: Data, V2: Data>(&self, f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static) -> KStream<K2, V2> {
        self.step("KSTREAM-MAP", true, move |ctx, r, out| {
            let (k, v) = f(r.key.clone(), r.value.clone());
            out.forward(ctx, r.with(k, v))
        })
    }

    /// Each record's value changed, its key kept.
    pub fn map_values<V2: Data>(&self, f: impl Fn(&K, V) -> V2 + Send + Sync + 'static) -> KStream<K, V2> {
        self.step("KSTREAM-MAPVALUES", false, move |ctx, r, out| {
            let v = f(&r.key, r.value.clone());
            let k = r.key.clone();
            out.forward(ctx, r.with(k, v))
        })
    }

    /// A new key for each record, computed from it.
    pub fn select_key<K2: Data>(&self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KStream<K2, V> {
        self.step("KSTREAM-KEY-SELECT", true, move |ctx, r, out| {
            let k = f(&r.key, &r.value);
            let v = r.value.clone();
            out.forward(ctx, r.with(k, v))
        })
    }

    /// Zero or more records for each record.
    pub fn flat_map<K2: Data, V2: Data, I: IntoIterator<Item = (K2, V2)>>(
        &self,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        self.step("KSTREAM-FLATMAP", true, move |ctx, r, out| {
            for (k, v) in f(r.key.clone(), r.value.clone()) {
                out.forward(ctx, Record { key: k, value: v, timestamp: r.timestamp, headers: r.headers.clone() })
            }
        })
    }

    /// Zero or more values for each record, under its key.
    pub fn flat_map_values<V2: Data, I: IntoIterator<Item = V2>>(
        &self,
        f: impl Fn(&K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        self.step("KSTREAM-FLATMAPVALUES", false, move |ctx, r, out| {
            for v in f(&r.key, r.value.clone()) {
                out.forward(
                    ctx,
                    Record { key: r.key.clone(), value: v, timestamp: r.timestamp, headers: r.headers.clone() },
                )
            }
        })
    }

    /// Calls `f` on each record and passes it on.
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> Self {
        self.step("KSTREAM-PEEK", false, move |ctx, r, out| {
            f(&r.key, &r.value);
            out.forward(ctx, r)
        })
    }

    /// Calls `f` on each record: the end of this branch.
    pub fn foreach(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        let _ = self.step::<K, V>("KSTREAM-FOREACH", false, move |_, r, _| f(&r.key, &r.value));
    }

    /// Splits the stream: a record goes to the first branch whose predicate holds (or to none).
    pub fn branch(&self, predicates: Vec<Predicate<K, V>>) -> Vec<Self> {
        let predicates = Arc::new(predicates);
        (0..predicates.len())
            .map(|i| {
                let ps = predicates.clone();
                self.step("KSTREAM-BRANCHCHILD", false, move |ctx, r, out| {
                    if ps[..i].iter().all(|p| !p(&r.key, &r.value)) && ps[i](&r.key, &r.value) {
                        out.forward(ctx, r)
                    }
                })
            })
            .collect()
    }

    /// The records of both streams as one.
    pub fn merge(&self, other: &Self) -> Self {
        let merged = self.step::<K, V>("KSTREAM-MERGE", false, |ctx, r, out| out.forward(ctx, r));
        self.graph.borrow_mut().nodes[other.node].children.push(merged.node);
        let group = self.graph.borrow_mut().union(self.group, other.group);
        KStream::at(&self.graph, merged.node, group, self.rekeyed || other.rekeyed)
    }

    /// Groups the records by their key, for an aggregation.
    pub fn group_by_key(&self) -> KGroupedStream<K, V>
    where
        K: Wire,
        V: Wire,
    {
        KGroupedStream { stream: self.clone() }
    }

    /// Groups the records by a key computed from each (repartitioned).
    pub fn group_by<K2: Wire>(&self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KGroupedStream<K2, V>
    where
        V: Wire,
    {
        KGroupedStream { stream: self.select_key(f) }
    }
}

impl<K: Wire, V: Wire> KStream<K, V> {
    /// Writes each record to `topic` (partitioned by key, as the producer's partitioner).
    pub fn to(&self, topic: &str) {
        self.sink(topic, false);
    }

    fn sink(&self, topic: &str, internal: bool) {
        let t = topic.to_string();
        let id = add_node::<K, V>(&self.graph, "KSTREAM-SINK", self.node, move |_, _| {
            Rc::new(RefCell::new(nodes::Encode::<K, V> { topic: t.clone(), internal, _t: PhantomData }))
        });
        self.graph.borrow_mut().nodes[id].sink = Some(topic.to_string());
    }

    /// The stream through a topic of the application (`<application id>-<name>-repartition`),
    /// so that each key's records are in one partition of it.
    pub fn repartition(&self) -> Self {
        let name = self.graph.borrow_mut().name("KSTREAM-REPARTITION");
        let topic = format!("{name}-repartition");
        self.sink(&topic, true);
        self.graph.borrow_mut().internal_topics.push(topic.clone());
        let b = StreamsBuilder { graph: self.graph.clone() };
        b.source(vec![topic], true, codec_decoder(None))
    }

    /// The stream as it must be before a stateful step: repartitioned when its key changed.
    fn keyed(&self) -> Self {
        if self.rekeyed { self.repartition() } else { self.clone() }
    }

    /// The stream as a table (Kafka's `toTable`): the latest value of each key, kept in
    /// store `store`; a `None` value deletes. Repartitioned first when the key changed.
    pub fn to_table<V2: Wire>(&self, store: &str) -> KTable<K, V2>
    where
        V: Into<Option<V2>>,
    {
        let s = self.keyed();
        let store = register_store(&self.graph, store, StoreKind::KeyValue);
        let st = store.clone();
        let id = add_node::<K, V>(&s.graph, "KTABLE-SOURCE", s.node, move |b, id| {
            let out = b.out::<K, Change<V2>>(id);
            Rc::new(RefCell::new(nodes::ToTable::<K, V2> { store: b.store(&st), out }))
        });
        self.graph.borrow_mut().nodes[id].stores.push(store.clone());
        KTable { stream: KStream::at(&self.graph, id, s.group, false), store }
    }

    /// Joins each record with the table's current value for its key (inner: records without
    /// one are dropped). The table must be co-partitioned with the stream.
    pub fn join<VT: Wire, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        f: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.table_join(table, move |v, t: Option<&VT>| t.map(|t| f(v, t)))
    }

    /// As [`KStream::join`], keeping records without a table value (`None` given to `f`).
    pub fn left_join<VT: Wire, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        f: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.table_join(table, move |v, t| Some(f(v, t)))
    }

    fn table_join<VT: Wire, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        f: impl Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let s = self.keyed();
        let store = table.store.clone();
        let f = Arc::new(f);
        let id = add_node::<K, V>(&s.graph, "KSTREAM-JOIN", s.node, move |b, id| {
            let out = b.out::<K, VR>(id);
            let f = f.clone();
            Rc::new(RefCell::new(nodes::StreamTableJoin::<K, VT, VR, _> {
                store: b.store(&store),
                f,
                out,
                _t: PhantomData,
            }))
        });
        self.graph.borrow_mut().nodes[id].stores.push(table.store.clone());
        let group = self.graph.borrow_mut().union(s.group, table.stream.group);
        KStream::at(&self.graph, id, group, false)
    }

    /// Joins records of both streams with the same key whose times are at most `windows`
    /// apart (inner: a record without a match yields nothing).
    pub fn join_windowed<VO: Wire, VR: Data>(
        &self,
        other: &KStream<K, VO>,
        windows: JoinWindows,
        f: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.stream_join(other, windows, nodes::JoinKind::Inner, move |a, b| Some(f(a?, b?)))
    }

    /// As [`KStream::join_windowed`], and a record of this stream without a match within its
    /// window is emitted with `None` once the window closes.
    pub fn left_join_windowed<VO: Wire, VR: Data>(
        &self,
        other: &KStream<K, VO>,
        windows: JoinWindows,
        f: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.stream_join(other, windows, nodes::JoinKind::Left, move |a, b| Some(f(a?, b)))
    }

    /// As [`KStream::join_windowed`], and a record of either stream without a match is
    /// emitted with `None` for the other side once its window closes.
    pub fn outer_join_windowed<VO: Wire, VR: Data>(
        &self,
        other: &KStream<K, VO>,
        windows: JoinWindows,
        f: impl Fn(Option<&V>, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.stream_join(other, windows, nodes::JoinKind::Outer, move |a, b| Some(f(a, b)))
    }

    fn stream_join<VO: Wire, VR: Data>(
        &self,
        other: &KStream<K, VO>,
        windows: JoinWindows,
        kind: nodes::JoinKind,
        f: impl Fn(Option<&V>, Option<&VO>) -> Option<VR> + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        // Both sides meet in one join processor per task, each record tagged with its side.
        let this: KStream<K, nodes::Side<V, VO>> = self.keyed().step("KSTREAM-JOINTHIS", false, |ctx, r, out| {
            let (k, v) = (r.key.clone(), nodes::Side::This(r.value.clone()));
            out.forward(ctx, r.with(k, v))
        });
        let that: KStream<K, nodes::Side<V, VO>> = other.keyed().step("KSTREAM-JOINOTHER", false, |ctx, r, out| {
            let (k, v) = (r.key.clone(), nodes::Side::Other(r.value.clone()));
            out.forward(ctx, r.with(k, v))
        });
        let both = this.merge(&that);
        let name = self.graph.borrow_mut().name("KSTREAM-JOIN");
        // A record is kept until no record of the other side can join it any more (and a
        // left/outer join has emitted it unmatched, one tick after its close).
        let retention = windows.before + windows.after + windows.grace + 1;
        let spec = StoreKind::Window { retention };
        let (ls, rs) = (
            register_store(&self.graph, &format!("{name}-this-store"), spec.clone()),
            register_store(&self.graph, &format!("{name}-other-store"), spec),
        );
        let (ls2, rs2, f) = (ls.clone(), rs.clone(), Arc::new(f));
        let id = add_node::<K, nodes::Side<V, VO>>(&self.graph, "KSTREAM-JOIN", both.node, move |b, id| {
            let out = b.out::<K, VR>(id);
            Rc::new(RefCell::new(nodes::StreamStreamJoin::new(
                crate::store::WindowStore::new(b.store(&ls2), retention),
                crate::store::WindowStore::new(b.store(&rs2), retention),
                windows,
                kind,
                f.clone(),
                out,
            )))
        });
        self.graph.borrow_mut().nodes[id].stores.extend([ls, rs]);
        KStream::at(&self.graph, id, both.group, false)
    }
}

/// Registers a store and returns its name; a name given twice is a problem of the topology.
fn register_store(graph: &Shared, name: &str, kind: StoreKind) -> String {
    let mut g = graph.borrow_mut();
    let spec = StoreSpec { name: name.to_string(), kind, logged: true };
    if g.stores.insert(name.to_string(), spec).is_some() {
        g.problems.push(format!("store '{name}' is named twice: each aggregation or table needs its own store"));
    }
    name.to_string()
}

/// How far apart two records may be to join: `before` (the other record earlier) and `after`
/// (later), with a grace period for late records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinWindows {
    pub before: i64,
    pub after: i64,
    pub grace: i64,
}

impl JoinWindows {
    /// Records at most `ms` apart either way, no grace.
    pub fn of(ms: i64) -> Self {
        Self { before: ms, after: ms, grace: 0 }
    }
    pub fn grace(self, ms: i64) -> Self {
        Self { grace: ms, ..self }
    }
}

/// A stream grouped by key, for aggregations.
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
}

impl<K: Wire, V: Wire> KGroupedStream<K, V> {
    /// The number of records of each key, in store `store`.
    pub fn count(&self, store: &str) -> KTable<K, i64> {
        self.aggregate(store, || 0i64, |_, _, n| n + 1)
    }

    /// Each key's records combined with `f` (the first record is the first value).
    pub fn reduce(&self, store: &str, f: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<K, V> {
        let f = Arc::new(f);
        self.aggregate_with(store, move |_, v, agg: Option<V>| match agg {
            Some(a) => f(a, v.clone()),
            None => v.clone(),
        })
    }

    /// Each key's records folded from `init()` with `f(key, value, aggregate)`.
    pub fn aggregate<VA: Wire>(
        &self,
        store: &str,
        init: impl Fn() -> VA + Send + Sync + 'static,
        f: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
    ) -> KTable<K, VA> {
        self.aggregate_with(store, move |k, v, agg: Option<VA>| f(k, v, agg.unwrap_or_else(&init)))
    }

    fn aggregate_with<VA: Wire>(
        &self,
        store: &str,
        f: impl Fn(&K, &V, Option<VA>) -> VA + Send + Sync + 'static,
    ) -> KTable<K, VA> {
        let s = self.stream.keyed();
        let store = register_store(&s.graph, store, StoreKind::KeyValue);
        let (st, f) = (store.clone(), Arc::new(f));
        let id = add_node::<K, V>(&s.graph, "KSTREAM-AGGREGATE", s.node, move |b, id| {
            let out = b.out::<K, Change<VA>>(id);
            Rc::new(RefCell::new(nodes::Aggregate { store: b.store(&st), f: f.clone(), out }))
        });
        s.graph.borrow_mut().nodes[id].stores.push(store.clone());
        KTable { stream: KStream::at(&s.graph, id, s.group, false), store }
    }

    /// Groups further by time windows (tumbling or hopping).
    pub fn windowed_by(&self, windows: TimeWindows) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream { stream: self.stream.clone(), windows, emit_final: false }
    }

    /// Groups further by sliding windows.
    pub fn windowed_by_sliding(&self, windows: SlidingWindows) -> SlidingWindowedKStream<K, V> {
        SlidingWindowedKStream { stream: self.stream.clone(), windows, emit_final: false }
    }

    /// Groups further by sessions of activity.
    pub fn windowed_by_session(&self, windows: SessionWindows) -> SessionWindowedKStream<K, V> {
        SessionWindowedKStream { stream: self.stream.clone(), windows, emit_final: false }
    }
}

/// count, reduce and aggregate of a windowed stream, over its `aggregate_with`.
macro_rules! windowed_aggregations {
    () => {
        pub fn count(&self, store: &str) -> KTable<Windowed<K>, i64> {
            self.aggregate_with(store, |_, _, n: Option<i64>| n.unwrap_or(0) + 1)
        }

        pub fn reduce(&self, store: &str, f: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<Windowed<K>, V> {
            self.aggregate_with(store, move |_, v, agg: Option<V>| match agg {
                Some(a) => f(a, v.clone()),
                None => v.clone(),
            })
        }

        pub fn aggregate<VA: Wire>(
            &self,
            store: &str,
            init: impl Fn() -> VA + Send + Sync + 'static,
            f: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        ) -> KTable<Windowed<K>, VA> {
            self.aggregate_with(store, move |k, v, agg: Option<VA>| f(k, v, agg.unwrap_or_else(&init)))
        }
    };
}

/// A grouped stream in time windows (tumbling or hopping).
pub struct TimeWindowedKStream<K, V> {
    stream: KStream<K, V>,
    windows: TimeWindows,
    emit_final: bool,
}

impl<K: Wire, V: Wire> TimeWindowedKStream<K, V> {
    /// Emits each window's result once, when the window closes (after its grace period),
    /// instead of every update: Kafka's `EmitStrategy.onWindowClose` / `suppress`.
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    windowed_aggregations!();

    fn aggregate_with<VA: Wire>(
        &self,
        store: &str,
        f: impl Fn(&K, &V, Option<VA>) -> VA + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, VA> {
        let s = self.stream.keyed();
        let retention = self.windows.size + self.windows.grace;
        let store = register_store(&s.graph, store, StoreKind::Window { retention });
        let (st, f, windows, emit_final) = (store.clone(), Arc::new(f), self.windows, self.emit_final);
        let id = add_node::<K, V>(&s.graph, "KSTREAM-WINDOWED-AGGREGATE", s.node, move |b, id| {
            let out = b.out::<Windowed<K>, Change<VA>>(id);
            Rc::new(RefCell::new(nodes::WindowAggregate::new(
                crate::store::WindowStore::new(b.store(&st), retention),
                windows,
                emit_final,
                f.clone(),
                out,
            )))
        });
        s.graph.borrow_mut().nodes[id].stores.push(store.clone());
        KTable { stream: KStream::at(&s.graph, id, s.group, false), store }
    }
}

/// A grouped stream in sliding windows.
pub struct SlidingWindowedKStream<K, V> {
    stream: KStream<K, V>,
    windows: SlidingWindows,
    emit_final: bool,
}

impl<K: Wire, V: Wire> SlidingWindowedKStream<K, V> {
    /// Emits each window's result once, when it closes (its end plus grace passed).
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    windowed_aggregations!();

    fn aggregate_with<VA: Wire>(
        &self,
        store: &str,
        f: impl Fn(&K, &V, Option<VA>) -> VA + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, VA> {
        let s = self.stream.keyed();
        let w = self.windows;
        // Records and results are kept until no window holding them can change.
        let retention = w.difference + w.grace + 1;
        let results = register_store(&s.graph, store, StoreKind::Window { retention });
        let records = register_store(&s.graph, &format!("{store}-records"), StoreKind::Window { retention });
        let (rs, ds, f, emit_final) = (results.clone(), records.clone(), Arc::new(f), self.emit_final);
        let id = add_node::<K, V>(&s.graph, "KSTREAM-SLIDING-WINDOWED-AGGREGATE", s.node, move |b, id| {
            let out = b.out::<Windowed<K>, Change<VA>>(id);
            Rc::new(RefCell::new(nodes::SlidingAggregate {
                records: crate::store::WindowStore::new(b.store(&ds), retention),
                results: crate::store::WindowStore::new(b.store(&rs), retention),
                difference: w.difference,
                grace: w.grace,
                emit_final,
                f: f.clone(),
                out,
                observed: i64::MIN,
                pending: Default::default(),
                opened: false,
                _t: PhantomData,
            }))
        });
        s.graph.borrow_mut().nodes[id].stores.extend([results.clone(), records]);
        KTable { stream: KStream::at(&s.graph, id, s.group, false), store: results }
    }
}

/// A grouped stream in session windows.
pub struct SessionWindowedKStream<K, V> {
    stream: KStream<K, V>,
    windows: SessionWindows,
    emit_final: bool,
}

impl<K: Wire, V: Wire> SessionWindowedKStream<K, V> {
    /// Emits each session once, when it can no longer grow or merge (its end plus the
    /// inactivity gap and grace passed).
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    pub fn count(&self, store: &str) -> KTable<Windowed<K>, i64> {
        self.aggregate(store, || 0i64, |_, _, n| n + 1, |_, a, b| a + b)
    }

    /// Sessions folded from `init()` with `f`; two sessions that a record bridges are
    /// combined with `merge`.
    pub fn aggregate<VA: Wire>(
        &self,
        store: &str,
        init: impl Fn() -> VA + Send + Sync + 'static,
        f: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        merge: impl Fn(&K, VA, VA) -> VA + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, VA> {
        let s = self.stream.keyed();
        // One past the close: a session ending exactly `gap + grace` before stream time can
        // still merge, and is emitted before it is dropped.
        let retention = self.windows.gap + self.windows.grace + 1;
        let store = register_store(&s.graph, store, StoreKind::Window { retention });
        let (st, windows, emit_final) = (store.clone(), self.windows, self.emit_final);
        let (init, f, merge) = (Arc::new(init), Arc::new(f), Arc::new(merge));
        let id = add_node::<K, V>(&s.graph, "KSTREAM-SESSION-WINDOWED-AGGREGATE", s.node, move |b, id| {
            let out = b.out::<Windowed<K>, Change<VA>>(id);
            Rc::new(RefCell::new(nodes::SessionAggregate {
                store: crate::store::WindowStore::new(b.store(&st), retention),
                windows,
                emit_final,
                init: init.clone(),
                f: f.clone(),
                merge: merge.clone(),
                out,
                pending: Default::default(),
                restored: false,
                observed: i64::MIN,
            }))
        });
        s.graph.borrow_mut().nodes[id].stores.push(store.clone());
        KTable { stream: KStream::at(&s.graph, id, s.group, false), store }
    }
}

/// A table grouped by a new key ([`KTable::group_by`]), for aggregations with retractions.
pub struct KGroupedTable<K, V> {
    stream: KGroupedStream<K, TableOp<V>>,
}

impl<K: Wire, V: Wire> KGroupedTable<K, V> {
    /// The number of rows in each group.
    pub fn count(&self, store: &str) -> KTable<K, i64> {
        self.aggregate(store, || 0i64, |_, _, n| n + 1, |_, _, n| n - 1)
    }

    /// Each group's rows folded from `init()`: `add` for a row entering the group,
    /// `subtract` for one leaving it (its old value).
    pub fn aggregate<VA: Wire>(
        &self,
        store: &str,
        init: impl Fn() -> VA + Send + Sync + 'static,
        add: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
        subtract: impl Fn(&K, &V, VA) -> VA + Send + Sync + 'static,
    ) -> KTable<K, VA> {
        self.stream.aggregate(store, init, move |k, op: &TableOp<V>, agg| match op {
            TableOp::Add(v) => add(k, v, agg),
            TableOp::Sub(v) => subtract(k, v, agg),
            TableOp::Replace(old, new) => add(k, new, subtract(k, old, agg)),
        })
    }
}

/// A table: the latest value of each key, with its changes as a stream.
pub struct KTable<K, V> {
    /// The node emitting the table's changes.
    stream: KStream<K, Change<V>>,
    /// The store holding the table (what interactive queries read).
    pub(crate) store: String,
}

impl<K, V> Clone for KTable<K, V> {
    fn clone(&self) -> Self {
        Self { stream: self.stream.clone(), store: self.store.clone() }
    }
}

impl<K: Wire, V: Wire> KTable<K, V> {
    /// The name of the store holding the table.
    pub fn store_name(&self) -> &str {
        &self.store
    }

    /// The table's changes as a stream: each update's new value, `None` for a deletion.
    pub fn to_stream(&self) -> KStream<K, Option<V>> {
        self.stream.map_values(|_, c: Change<V>| c.new)
    }

    /// Groups the table's rows by a new key (`f` gives each row's key and value in its
    /// group), for aggregations that follow updates and deletions: a row that changes or
    /// leaves is subtracted from its old group before it is added to its new one. The
    /// groups go through a repartition topic.
    pub fn group_by<K2: Wire, V2: Wire>(
        &self,
        f: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KGroupedTable<K2, V2> {
        let ops: KStream<K2, TableOp<V2>> = self.stream.step("KTABLE-SELECT", true, move |ctx, r, out| {
            let Change { new, old } = r.value.clone();
            let old = old.map(|o| f(&r.key, &o));
            let new = new.map(|n| f(&r.key, &n));
            match (old, new) {
                // Within one group: one replacement, so the group's result changes once.
                (Some((ko, vo)), Some((kn, vn))) if ko.encode() == kn.encode() => {
                    out.forward(ctx, r.with(kn, TableOp::Replace(vo, vn)))
                }
                (old, new) => {
                    if let Some((k, v)) = old {
                        out.forward(ctx, r.clone().with(k, TableOp::Sub(v)));
                    }
                    if let Some((k, v)) = new {
                        out.forward(ctx, r.with(k, TableOp::Add(v)));
                    }
                }
            }
        });
        KGroupedTable { stream: ops.group_by_key() }
    }

    /// The rows for which `p` holds (a row that stops matching is deleted downstream).
    pub fn filter(&self, store: &str, p: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KTable<K, V> {
        self.map_values(store, move |k, v: V| if p(k, &v) { Some(v) } else { None })
    }

    /// Each row's value changed (`None` drops the row), in a table of its own (store `store`).
    pub fn map_values<V2: Wire>(
        &self,
        store: &str,
        f: impl Fn(&K, V) -> Option<V2> + Send + Sync + 'static,
    ) -> KTable<K, V2> {
        let mapped: KStream<K, Option<V2>> = self.stream.map_values(move |k, c: Change<V>| c.new.and_then(|v| f(k, v)));
        mapped.to_table(store)
    }

    /// Joins the two tables on their key: a row while both have one (inner).
    pub fn join<VO: Wire, VR: Wire>(
        &self,
        other: &KTable<K, VO>,
        store: &str,
        f: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR> {
        self.table_table(other, store, move |a, b| Some(f(a?, b?)))
    }

    /// A row while this table has one; `None` for the other side when it has none.
    pub fn left_join<VO: Wire, VR: Wire>(
        &self,
        other: &KTable<K, VO>,
        store: &str,
        f: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR> {
        self.table_table(other, store, move |a, b| Some(f(a?, b)))
    }

    /// A row while either table has one.
    pub fn outer_join<VO: Wire, VR: Wire>(
        &self,
        other: &KTable<K, VO>,
        store: &str,
        f: impl Fn(Option<&V>, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR> {
        self.table_table(other, store, move |a, b| if a.is_none() && b.is_none() { None } else { Some(f(a, b)) })
    }

    fn table_table<VO: Wire, VR: Wire>(
        &self,
        other: &KTable<K, VO>,
        store: &str,
        f: impl Fn(Option<&V>, Option<&VO>) -> Option<VR> + Send + Sync + 'static,
    ) -> KTable<K, VR> {
        let f = Arc::new(f);
        let (this_store, other_store) = (self.store.clone(), other.store.clone());
        // Each side's change looks the other side up in its store and emits the joined row.
        let (f1, os) = (f.clone(), other_store.clone());
        let left: KStream<K, Option<VR>> = self.stream.step_stateful("KTABLE-JOINTHIS", os, move |store, _, r| {
            let theirs: Option<VO> = store.get(&r.key).ok().flatten();
            f1(r.value.new.as_ref(), theirs.as_ref())
        });
        let (f2, ts) = (f.clone(), this_store.clone());
        let right: KStream<K, Option<VR>> = other.stream.step_stateful("KTABLE-JOINOTHER", ts, move |store, _, r| {
            let mine: Option<V> = store.get(&r.key).ok().flatten();
            f2(mine.as_ref(), r.value.new.as_ref())
        });
        let merged = left.merge(&right);
        merged.to_table(store)
    }
}

impl<K: Wire, V: Data> KStream<K, V> {
    /// A step reading store `store` of the task: `f(store, ctx, record)` gives the output value.
    fn step_stateful<V2: Data>(
        &self,
        kind: &str,
        store: String,
        f: impl Fn(&crate::store::Store, &crate::topology::Ctx, &Record<K, V>) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(f);
        let st = store.clone();
        let id = add_node::<K, V>(&self.graph, kind, self.node, move |b, id| {
            let out = b.out::<K, V2>(id);
            Rc::new(RefCell::new(nodes::Lookup { store: b.store(&st), f: f.clone(), out }))
        });
        self.graph.borrow_mut().nodes[id].stores.push(store);
        KStream::at(&self.graph, id, self.group, false)
    }
}
