//! Every operator and window kind through the test driver: in memory, controlled time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_streams::{
    JoinWindows, Json, SessionWindows, SlidingWindows, StreamsBuilder, TestDriver, TimeWindows, Windowed,
};

fn values<K, V: Clone>(rs: &[sluice_streams::Record<K, V>]) -> Vec<V> {
    rs.iter().map(|r| r.value.clone()).collect()
}

#[test]
fn stateless_operators() {
    let b = StreamsBuilder::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = b.stream::<String, i64>("in");
    s.filter(|_, v| v % 2 == 0).to("even");
    s.filter_not(|_, v| v % 2 == 0).to("odd");
    s.map(|k, v| (v, k)).to("swapped");
    s.map_values(|_, v| v * 10).to("times10");
    s.flat_map(|k, v| (0..v).map(move |i| (format!("{k}{i}"), i))).to("flat");
    s.flat_map_values(|_, v| vec![v; 2]).to("twice");
    s.select_key(|_, v| format!("k{v}")).to("rekeyed");
    let counter = seen.clone();
    s.peek(move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .to("peeked");
    let counter = seen.clone();
    s.foreach(move |_, _| {
        counter.fetch_add(100, Ordering::SeqCst);
    });
    let predicates: Vec<sluice_streams::dsl::Predicate<String, i64>> =
        vec![Box::new(|_, v| *v < 2), Box::new(|_, v| *v < 3)];
    let branches = s.branch(predicates);
    branches[0].to("small");
    branches[1].to("medium");
    let other = b.stream::<String, i64>("in2");
    s.merge(&other).to("merged");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        d.pipe("in", k.to_string(), i as i64 + 1, 1000 + i as i64).unwrap();
    }
    d.pipe("in2", "z".to_string(), 9i64, 2000).unwrap();
    assert_eq!(values(&d.read::<String, i64>("even").unwrap()), vec![2]);
    assert_eq!(values(&d.read::<String, i64>("odd").unwrap()), vec![1, 3]);
    let swapped = d.read::<i64, String>("swapped").unwrap();
    assert_eq!(
        swapped.iter().map(|r| (r.key, r.value.clone(), r.timestamp)).collect::<Vec<_>>(),
        vec![(1, "a".into(), 1000), (2, "b".into(), 1001), (3, "c".into(), 1002)]
    );
    assert_eq!(values(&d.read::<String, i64>("times10").unwrap()), vec![10, 20, 30]);
    let flat = d.read::<String, i64>("flat").unwrap();
    assert_eq!(flat.iter().map(|r| r.key.clone()).collect::<Vec<_>>(), vec!["a0", "b0", "b1", "c0", "c1", "c2"]);
    assert_eq!(values(&d.read::<String, i64>("twice").unwrap()), vec![1, 1, 2, 2, 3, 3]);
    assert_eq!(d.read::<String, i64>("rekeyed").unwrap()[2].key, "k3");
    assert_eq!(d.read::<String, i64>("peeked").unwrap().len(), 3);
    assert_eq!(seen.load(Ordering::SeqCst), 303, "peek and foreach saw every record");
    assert_eq!(values(&d.read::<String, i64>("small").unwrap()), vec![1], "first matching branch only");
    assert_eq!(values(&d.read::<String, i64>("medium").unwrap()), vec![2]);
    assert_eq!(values(&d.read::<String, i64>("merged").unwrap()), vec![1, 2, 3, 9]);
}

#[test]
fn undecodable_and_keyless_records_are_skipped_and_counted() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in").group_by_key().count("counts").to_stream().to("out");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    d.pipe("in", "a".to_string(), 1i64, 0).unwrap();
    d.pipe("in", "a".to_string(), "not eight bytes".to_string(), 0).unwrap();
    d.pipe("in", None::<String>, 1i64, 0).unwrap();
    assert_eq!(d.read_table::<String, i64>("out").unwrap().into_iter().collect::<Vec<_>>(), vec![("a".into(), 1)]);
    let m = d.metrics();
    assert_eq!((m.processed, m.skipped), (3, 2));
    assert!(d.pipe("nobody-reads-this", 1i64, 1i64, 0).unwrap_err().to_string().contains("nobody-reads-this"));
}

#[test]
fn aggregations_by_key_and_by_a_new_key_through_a_repartition_topic() {
    let b = StreamsBuilder::new();
    let s = b.stream::<String, i64>("in");
    s.group_by_key().count("count").to_stream().to("count");
    s.group_by_key().reduce("sum", |a, b| a + b).to_stream().to("sum");
    s.group_by_key()
        .aggregate("list", Vec::<u8>::new, |_, v, mut agg| {
            agg.push(*v as u8);
            agg
        })
        .to_stream()
        .to("list");
    // By parity: the key changes, so the records go through a repartition topic.
    s.group_by(|_, v| if v % 2 == 0 { "even".to_string() } else { "odd".to_string() })
        .count("parity")
        .to_stream()
        .to("parity");
    let topology = b.build();
    let internal = topology.internal_topics("app");
    assert!(
        internal.iter().any(|t| t.starts_with("app-KSTREAM-REPARTITION") && t.ends_with("-repartition")),
        "{internal:?}"
    );
    assert!(internal.contains(&"app-count-changelog".to_string()), "{internal:?}");
    assert_eq!(topology.sub_topologies("app").len(), 2, "the repartition topic starts a sub-topology");
    let mut d = TestDriver::new(topology, "app").unwrap();
    for (k, v) in [("a", 1), ("b", 2), ("a", 3), ("a", 4)] {
        d.pipe("in", k.to_string(), v as i64, 0).unwrap();
    }
    let count = d.read::<String, i64>("count").unwrap();
    assert_eq!(
        count.iter().map(|r| (r.key.as_str(), r.value)).collect::<Vec<_>>(),
        vec![("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    );
    let sum = d.read_table::<String, i64>("sum").unwrap();
    assert_eq!((sum["a"], sum["b"]), (8, 2));
    assert_eq!(d.read_table::<String, Vec<u8>>("list").unwrap()["a"], vec![1, 3, 4]);
    let parity = d.read_table::<String, i64>("parity").unwrap();
    assert_eq!((parity["even"], parity["odd"]), (2, 2));
    assert_eq!(d.store::<String, i64>("count").unwrap(), vec![("a".into(), 3), ("b".into(), 1)]);
    // Every store write went to its changelog, with the task's partition.
    let log = d.read::<String, i64>("app-count-changelog").unwrap();
    assert_eq!(log.len(), 4);
}

#[test]
fn tumbling_windows_take_out_of_order_records_within_grace_and_drop_later_ones() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by(TimeWindows::of(10).grace(5))
        .count("w")
        .to_stream()
        .to("out");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for t in [1, 4, 12, 9, 15, 3, 30, 21] {
        d.pipe("in", "k".to_string(), 1i64, t).unwrap();
    }
    // 9 arrives after 12 (stream time 12): window [0,10) closes at 10+5=15, so it counts; 3
    // arrives at stream time 15: [0,10) is closed, dropped. 21 at stream time 30: [20,30)
    // closed at 35, counts.
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    let last: std::collections::BTreeMap<i64, i64> = out.iter().map(|r| (r.key.start, r.value.unwrap())).collect();
    assert_eq!(last.into_iter().collect::<Vec<_>>(), vec![(0, 3), (10, 2), (20, 1), (30, 1)]);
    assert_eq!(out[0].key, Windowed { key: "k".to_string(), start: 0, end: 10 });
    assert_eq!(d.metrics().dropped_late, 1);
}

#[test]
fn hopping_windows_count_a_record_in_each_window_holding_it() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by(TimeWindows::of(10).advance_by(5).grace(100))
        .count("w")
        .to_stream()
        .to("out");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for t in [1, 6, 12] {
        d.pipe("in", "k".to_string(), 1i64, t).unwrap();
    }
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    let last: std::collections::BTreeMap<(i64, i64), i64> =
        out.iter().map(|r| ((r.key.start, r.key.end), r.value.unwrap())).collect();
    assert_eq!(last.into_iter().collect::<Vec<_>>(), vec![((0, 10), 2), ((5, 15), 2), ((10, 20), 1)]);
}

#[test]
fn emit_final_gives_one_result_per_window_when_it_closes() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by(TimeWindows::of(10).grace(2))
        .emit_final()
        .reduce("w", |a, b| a + b)
        .to_stream()
        .to("out");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    d.pipe("in", "a".to_string(), 1i64, 1).unwrap();
    d.pipe("in", "b".to_string(), 10i64, 2).unwrap();
    d.pipe("in", "a".to_string(), 2i64, 9).unwrap();
    d.pipe("in", "a".to_string(), 4i64, 11).unwrap();
    assert!(d.read::<Windowed<String>, Option<i64>>("out").unwrap().is_empty(), "nothing before [0,10) closes at 12");
    d.pipe("in", "a".to_string(), 100i64, 8).unwrap(); // within grace
    d.pipe("in", "b".to_string(), 1i64, 12).unwrap(); // closes [0,10)
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    assert_eq!(
        out.iter().map(|r| (r.key.key.as_str(), r.key.start, r.value.unwrap())).collect::<Vec<_>>(),
        vec![("a", 0, 103), ("b", 0, 10)]
    );
    d.pipe("in", "a".to_string(), 7i64, 3).unwrap(); // late: dropped
    d.pipe("in", "a".to_string(), 1i64, 40).unwrap();
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    assert_eq!(
        out.iter().map(|r| (r.key.key.as_str(), r.key.start, r.value.unwrap())).collect::<Vec<_>>(),
        vec![("a", 10, 4), ("b", 10, 1)]
    );
    assert_eq!(d.metrics().dropped_late, 1);
}

#[test]
fn session_windows_merge_sessions_a_record_bridges() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by_session(SessionWindows::with_inactivity_gap(5).grace(100))
        .count("s")
        .to_stream()
        .to("all");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for t in [0, 3, 20, 14, 9] {
        d.pipe("in", "u".to_string(), 1i64, t).unwrap();
    }
    // 0 and 3 form [0,3]; 20 alone; 14 is 6 before 20: alone; 9 is 5 before 14 and 6 after
    // 3: it joins [14] only.
    let table = d.read_table::<Windowed<String>, i64>("all").unwrap();
    let sessions: Vec<(i64, i64, i64)> = table.iter().map(|(k, v)| (k.start, k.end, *v)).collect();
    assert_eq!(sessions, vec![(0, 3, 2), (9, 14, 2), (20, 20, 1)]);
    // 6 is within the gap of both [0,3] and [9,14]: one session [0,14] of 5 records, the two
    // it replaces deleted.
    d.pipe("in", "u".to_string(), 1i64, 6).unwrap();
    let out = d.read::<Windowed<String>, Option<i64>>("all").unwrap();
    let changes: Vec<(i64, i64, Option<i64>)> = out.iter().map(|r| (r.key.start, r.key.end, r.value)).collect();
    assert_eq!(changes, vec![(0, 3, None), (9, 14, None), (0, 14, Some(5))]);
}

#[test]
fn final_sessions_are_emitted_once_closed_and_late_records_dropped() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by_session(SessionWindows::with_inactivity_gap(5))
        .emit_final()
        .count("f")
        .to_stream()
        .to("final");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for t in [0, 3, 7] {
        d.pipe("in", "u".to_string(), 1i64, t).unwrap();
    }
    assert!(d.read::<Windowed<String>, Option<i64>>("final").unwrap().is_empty(), "[0,7] may still grow");
    d.pipe("in", "u".to_string(), 1i64, 13).unwrap(); // 6 after 7: a new session; [0,7] closed at 12
    d.pipe("in", "u".to_string(), 1i64, 30).unwrap(); // closes [13,13]
    d.pipe("in", "u".to_string(), 1i64, 2).unwrap(); // late: dropped
    let fin = d.read::<Windowed<String>, Option<i64>>("final").unwrap();
    let fin: Vec<(i64, i64, Option<i64>)> = fin.iter().map(|r| (r.key.start, r.key.end, r.value)).collect();
    assert_eq!(fin, vec![(0, 7, Some(3)), (13, 13, Some(1))]);
    assert_eq!(d.metrics().dropped_late, 1);
}

#[test]
fn stream_table_joins_see_the_table_as_of_each_record() {
    let b = StreamsBuilder::new();
    let customers = b.table::<String, String>("customers", "customers-store");
    let orders = b.stream::<String, i64>("orders");
    orders.join(&customers, |amount, name| format!("{name}:{amount}")).to("joined");
    orders.left_join(&customers, |amount, name| format!("{}:{amount}", name.map_or("?", String::as_str))).to("left");
    let topology = b.build();
    assert_eq!(topology.sub_topologies("app").len(), 1, "joined topics are read by the same tasks");
    let mut d = TestDriver::new(topology, "app").unwrap();
    d.pipe("orders", "c1".to_string(), 5i64, 0).unwrap();
    d.pipe("customers", "c1".to_string(), Some("ann".to_string()), 1).unwrap();
    d.pipe("orders", "c1".to_string(), 6i64, 2).unwrap();
    d.pipe("customers", "c1".to_string(), None::<String>, 3).unwrap();
    d.pipe("orders", "c1".to_string(), 7i64, 4).unwrap();
    assert_eq!(values(&d.read::<String, String>("joined").unwrap()), vec!["ann:6"]);
    assert_eq!(values(&d.read::<String, String>("left").unwrap()), vec!["?:5", "ann:6", "?:7"]);
}

#[test]
fn stream_stream_joins_at_window_edges() {
    let b = StreamsBuilder::new();
    let clicks = b.stream::<String, String>("clicks");
    let views = b.stream::<String, String>("views");
    // Records at most 10 apart join; a record is taken until 30 after its window ends.
    let w = JoinWindows::of(10).grace(30);
    clicks.join_windowed(&views, w, |c, v| format!("{c}+{v}")).to("inner");
    clicks.left_join_windowed(&views, w, |c, v| format!("{c}+{}", v.map_or("-", String::as_str))).to("left");
    clicks
        .outer_join_windowed(&views, w, |c, v| {
            format!("{}+{}", c.map_or("-", String::as_str), v.map_or("-", String::as_str))
        })
        .to("outer");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    let s = |x: &str| x.to_string();
    d.pipe("views", s("k"), s("v0"), 100).unwrap();
    d.pipe("clicks", s("k"), s("c1"), 110).unwrap(); // exactly 10 after: joins
    d.pipe("clicks", s("k"), s("c2"), 111).unwrap(); // 11 after: no join
    d.pipe("views", s("k"), s("v1"), 121).unwrap(); // 10 after c2: joins c2 (and not c1: 11)
    d.pipe("clicks", s("other"), s("c3"), 125).unwrap();
    d.pipe("clicks", s("k"), s("late"), 90).unwrap(); // out of order, within grace: joins v0 (10 after)
    d.pipe("views", s("x"), s("tick"), 200).unwrap(); // closes every window above
    let mut inner = values(&d.read::<String, String>("inner").unwrap());
    inner.sort();
    assert_eq!(inner, vec!["c1+v0", "c2+v1", "late+v0"]);
    let mut left = values(&d.read::<String, String>("left").unwrap());
    left.sort();
    assert_eq!(left, vec!["c1+v0", "c2+v1", "c3+-", "late+v0"]);
    let mut outer = values(&d.read::<String, String>("outer").unwrap());
    outer.sort();
    assert_eq!(outer, vec!["c1+v0", "c2+v1", "c3+-", "late+v0"], "v0 and v1 joined; tick's window is open");
    d.pipe("clicks", s("k"), s("too-late"), 150).unwrap(); // its window closed at 190: dropped
    assert!(d.metrics().dropped_late >= 1);
}

#[test]
fn table_table_joins_follow_updates_and_deletes() {
    let b = StreamsBuilder::new();
    let left = b.table::<String, i64>("l", "l-store");
    let right = b.table::<String, i64>("r", "r-store");
    left.join(&right, "inner-store", |a, b| a * 100 + b).to_stream().to("inner");
    left.left_join(&right, "left-store", |a, b| a * 100 + b.copied().unwrap_or(0)).to_stream().to("left");
    left.outer_join(&right, "outer-store", |a, b| a.copied().unwrap_or(0) * 100 + b.copied().unwrap_or(0))
        .to_stream()
        .to("outer");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    let k = || "k".to_string();
    d.pipe("r", k(), Some(1i64), 0).unwrap();
    assert!(d.read_table::<String, i64>("inner").unwrap().is_empty());
    assert!(d.read_table::<String, i64>("left").unwrap().is_empty());
    assert_eq!(d.read_table::<String, i64>("outer").unwrap()["k"], 1);
    d.pipe("l", k(), Some(2i64), 1).unwrap();
    assert_eq!(d.read_table::<String, i64>("inner").unwrap()["k"], 201);
    assert_eq!(d.read_table::<String, i64>("left").unwrap()["k"], 201);
    d.pipe("r", k(), None::<i64>, 2).unwrap();
    let inner = d.read::<String, Option<i64>>("inner").unwrap();
    assert_eq!(values(&inner), vec![None], "the inner row is deleted");
    assert_eq!(d.read_table::<String, i64>("left").unwrap()["k"], 200);
    d.pipe("l", k(), None::<i64>, 3).unwrap();
    assert_eq!(values(&d.read::<String, Option<i64>>("outer").unwrap()), vec![Some(201), Some(200), None]);
}

#[test]
fn json_values_and_a_description_of_the_topology() {
    #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
    struct Order {
        customer: String,
        amount: i64,
    }
    let b = StreamsBuilder::new();
    b.stream::<(), Json<Order>>("orders")
        .select_key(|_, o| o.0.customer.clone())
        .group_by_key()
        .aggregate("totals", || 0i64, |_, o, t| t + o.0.amount)
        .to_stream()
        .to("totals");
    let topology = b.build();
    let text = topology.to_string();
    for part in [
        "Sub-topology: 0",
        "Sub-topology: 1",
        "Source: KSTREAM-SOURCE",
        "(topics: [orders])",
        "Processor: KSTREAM-AGGREGATE",
        "(stores: [totals])",
        "Sink: KSTREAM-SINK",
        "(topic: totals)",
        "-repartition",
    ] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
    let mut d = TestDriver::new(topology, "shop").unwrap();
    let order = |c: &str, a| Json(Order { customer: c.into(), amount: a });
    d.pipe("orders", (), order("ann", 5), 0).unwrap();
    d.pipe("orders", (), order("bob", 7), 0).unwrap();
    d.pipe("orders", (), order("ann", 1), 0).unwrap();
    let totals = d.read_table::<String, i64>("totals").unwrap();
    assert_eq!((totals["ann"], totals["bob"]), (6, 7));
}

#[test]
fn a_session_ending_exactly_at_the_gap_still_merges() {
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in")
        .group_by_key()
        .windowed_by_session(SessionWindows::with_inactivity_gap(5))
        .emit_final()
        .count("s")
        .to_stream()
        .to("out");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    d.pipe("in", "a".to_string(), 1i64, 0).unwrap();
    d.pipe("in", "b".to_string(), 1i64, 5).unwrap();
    d.pipe("in", "a".to_string(), 1i64, 5).unwrap();
    d.pipe("in", "b".to_string(), 1i64, 100).unwrap();
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    let a: Vec<(i64, i64, Option<i64>)> =
        out.iter().filter(|r| r.key.key == "a").map(|r| (r.key.start, r.key.end, r.value)).collect();
    assert_eq!(a, vec![(0, 5, Some(2))], "a@0 and a@5 are one session, as in Kafka");
}

#[test]
fn a_zero_width_join_window_joins_records_of_the_same_time() {
    let b = StreamsBuilder::new();
    let left = b.stream::<String, String>("l");
    let right = b.stream::<String, String>("r");
    left.join_windowed(&right, JoinWindows::of(0), |a, b| format!("{a}{b}")).to("inner");
    left.left_join_windowed(&right, JoinWindows::of(0), |a, b| format!("{a}{}", b.map_or("-", String::as_str)))
        .to("left");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    let s = |x: &str| x.to_string();
    d.pipe("l", s("k"), s("a"), 10).unwrap();
    d.pipe("r", s("k"), s("b"), 10).unwrap();
    d.pipe("l", s("k"), s("c"), 11).unwrap();
    d.pipe("r", s("x"), s("tick"), 20).unwrap();
    assert_eq!(values(&d.read::<String, String>("inner").unwrap()), vec!["ab"]);
    let mut left = values(&d.read::<String, String>("left").unwrap());
    left.sort();
    assert_eq!(left, vec!["ab", "c-"]);
}

#[test]
fn a_store_named_twice_or_a_topic_read_twice_is_refused() {
    let b = StreamsBuilder::new();
    let s = b.stream::<String, i64>("in");
    s.group_by_key().count("same").to_stream().to("a");
    s.group_by_key().reduce("same", |a, b| a + b).to_stream().to("b");
    let err = TestDriver::new(b.build(), "app").err().expect("refused").to_string();
    assert!(err.contains("store 'same' is named twice"), "{err}");
    let b = StreamsBuilder::new();
    b.stream::<String, i64>("in").to("a");
    b.stream::<String, i64>("in").to("b");
    let err = TestDriver::new(b.build(), "app").err().expect("refused").to_string();
    assert!(err.contains("topic 'in' is read by two sources"), "{err}");
}

#[test]
fn sliding_windows_hold_every_distinct_set_of_records_close_enough() {
    let b = StreamsBuilder::new();
    let grouped = b.stream::<String, i64>("in").group_by_key();
    grouped
        .windowed_by_sliding(SlidingWindows::with_time_difference(10).grace(100))
        .reduce("sum", |a, b| a + b)
        .to_stream()
        .to("sums");
    grouped
        .windowed_by_sliding(SlidingWindows::with_time_difference(10).grace(0))
        .emit_final()
        .count("final")
        .to_stream()
        .to("final");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for (t, v) in [(20, 1), (25, 10), (32, 100), (22, 1000)] {
        d.pipe("in", "k".to_string(), v as i64, t).unwrap();
    }
    // Windows ending at each record, and starting right after each record when not empty:
    // [10,20]={20}, [15,25]={20,22,25}, [22,32]={22,25,32}, [12,22]={20,22},
    // [21,31]={22,25}, [23,33]={25,32}, [26,36]={32}.
    let sums = d.read_table::<Windowed<String>, i64>("sums").unwrap();
    let got: Vec<(i64, i64, i64)> = sums.iter().map(|(w, v)| (w.start, w.end, *v)).collect();
    assert_eq!(
        got,
        vec![(10, 20, 1), (12, 22, 1001), (15, 25, 1011), (21, 31, 1010), (22, 32, 1110), (23, 33, 110), (26, 36, 100)]
    );
    // Final counts (no grace): when 22 arrives (stream time 32), [12,22], [15,25] and
    // [21,31] are closed and emitted already ({20,25} for [15,25]); 22 still counts in
    // [22,32] and makes [23,33].
    d.pipe("in", "k".to_string(), 1i64, 100).unwrap();
    let fin = d.read::<Windowed<String>, Option<i64>>("final").unwrap();
    let fin: Vec<(i64, i64, i64)> = fin.iter().map(|r| (r.key.start, r.key.end, r.value.unwrap())).collect();
    assert_eq!(fin, vec![(10, 20, 1), (15, 25, 2), (21, 31, 1), (22, 32, 3), (23, 33, 2), (26, 36, 1)]);
    assert_eq!(d.metrics().dropped_late, 0, "22 is within 10 + 0 of stream time 32: it counts where it can");
}

#[test]
fn a_timestamp_extractor_gives_event_time_from_the_value() {
    let b = StreamsBuilder::new();
    // The value carries its own event time; the record's timestamp (the append time) is
    // ignored, and a negative event time skips the record.
    b.stream_with_timestamps::<String, i64>("in", |_, v, _| *v)
        .group_by_key()
        .windowed_by(TimeWindows::of(10).grace(0))
        .count("w")
        .to_stream()
        .to("out");
    b.table_with_timestamps::<String, i64>("tin", "t", |_, v, _| *v).to_stream().to("tout");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    for v in [3i64, 12, 5, -1, 25] {
        d.pipe("in", "k".to_string(), v, 1_000_000).unwrap();
    }
    let out = d.read::<Windowed<String>, Option<i64>>("out").unwrap();
    let times: Vec<i64> = out.iter().map(|r| r.timestamp).collect();
    assert_eq!(times, vec![3, 12, 25], "events at their extracted times; 5 late, -1 skipped");
    let starts: Vec<(i64, Option<i64>)> = out.iter().map(|r| (r.key.start, r.value)).collect();
    assert_eq!(starts, vec![(0, Some(1)), (10, Some(1)), (20, Some(1))]);
    assert_eq!(d.metrics().dropped_late, 1);
    assert_eq!(d.metrics().skipped, 1);
    assert_eq!(d.stream_time(), 25);

    d.pipe("tin", "a".to_string(), 7i64, 1_000_000).unwrap();
    d.pipe_raw("tin", sluice_streams::Record::new(Some("a".into()), None, 99)).unwrap();
    let t: Vec<i64> = d.read::<String, Option<i64>>("tout").unwrap().iter().map(|r| r.timestamp).collect();
    assert_eq!(t, vec![7, 99], "an update at its value's time, a deletion at the record's");
}

#[test]
fn grouped_tables_follow_updates_and_deletions() {
    let b = StreamsBuilder::new();
    // Users by region: a user moving region leaves its old group's count and sum.
    let users = b.table::<String, i64>("users", "users");
    users.group_by(|_, region| (*region, ())).count("per-region").to_stream().to("counts");
    users
        .group_by(|_, region| (0i64, *region))
        .aggregate("sum", || 0i64, |_, v, s| s + v, |_, v, s| s - v)
        .to_stream()
        .to("sum");
    let mut d = TestDriver::new(b.build(), "app").unwrap();
    d.pipe("users", "ann".to_string(), 1i64, 1).unwrap();
    d.pipe("users", "bob".to_string(), 1i64, 2).unwrap();
    d.pipe("users", "ann".to_string(), 2i64, 3).unwrap();
    d.pipe_raw("users", sluice_streams::Record::new(Some("bob".into()), None, 4)).unwrap();
    let counts: Vec<(i64, Option<i64>)> =
        d.read::<i64, Option<i64>>("counts").unwrap().into_iter().map(|r| (r.key, r.value)).collect();
    // ann joins 1; bob joins 1; ann leaves 1 (-> 1) and joins 2; bob leaves 1 (-> 0).
    assert_eq!(counts, vec![(1, Some(1)), (1, Some(2)), (1, Some(1)), (2, Some(1)), (1, Some(0))]);
    let sums: Vec<Option<i64>> = d.read::<i64, Option<i64>>("sum").unwrap().into_iter().map(|r| r.value).collect();
    // One group: ann's change within it is a single replacement (one update, no dip to 1).
    assert_eq!(sums, vec![Some(1), Some(2), Some(3), Some(2)]);
}
