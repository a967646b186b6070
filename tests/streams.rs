//! Streams applications on a real cluster (real etcd and service processes), run as the
//! `wordcount` example's processes: exactly-once through kills of the instance and of a
//! partition leader, and a second instance taking over a killed one's tasks from the
//! changelogs. The final counts are compared with a reference computed here, and every
//! word's committed count updates must be 1, 2, ... N exactly: a line processed twice, or
//! lost, shows.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::{IsolationLevel, OffsetSpec};
use sluice_tests::{client, cluster_with, eventually, seed};

const ENV: &[(&str, &str)] = &[
    ("SLUICE_REPLICATION__LAG_TIME_MAX_MS", "1500"),
    ("SLUICE_REPLICATION__LEADER_REBALANCE_INTERVAL_MS", "2000"),
    ("SLUICE_REPLICATION__ACK_TIMEOUT_MS", "10000"),
];

const PARTITIONS: u32 = 3;

/// Seeded lines of 1 to 6 words out of 40.
fn lines(seed: u64, n: usize) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let words = rng.random_range(1..=6);
            (0..words).map(|_| format!("w{}", rng.random_range(0..40))).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn counts_of(lines: &[String]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for l in lines {
        for w in l.split_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

async fn produce(client: &Client, lines: &[String], from: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut futs = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let r = ProducerRecord {
            topic: "lines".into(),
            partition: Some(((from + i) % PARTITIONS as usize) as u32),
            value: Some(Bytes::from(l.clone())),
            ..Default::default()
        };
        futs.push(producer.send(r).await.expect("queued"));
    }
    for f in futs {
        f.await.expect("answered").expect("acknowledged");
    }
    producer.close().await;
}

/// A `wordcount` instance as a process, its log in `log`.
fn start_instance(gateway: &str, app: &str, instance: &str, state: &Path, log: &Path) -> tokio::process::Child {
    let bin = sluice_testkit::bin_dir().join("examples").join("wordcount");
    assert!(bin.is_file(), "{} is missing: cargo build -p sluice-streams --examples", bin.display());
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    tokio::process::Command::new(bin)
        .args(["--gateway", gateway, "--app-id", app, "--input", "lines", "--output", "counts"])
        .args(["--processing-guarantee", "exactly_once", "--instance", instance, "--session-timeout-ms", "6000"])
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "info,sluice_client=warn")
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("wordcount starts")
}

/// The committed count updates of each word, in order, once `total` updates were read
/// (read_committed), and nothing more arrived within a second after.
async fn updates(client: &Client, total: usize, limit: Duration) -> BTreeMap<String, Vec<i64>> {
    let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut c = Consumer::assign(client.clone(), "counts", &[], StartFrom::Earliest, cfg).await.expect("consumer");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while n < total && tokio::time::Instant::now() < deadline {
        for r in c.poll(Duration::from_millis(500)).await.expect("poll") {
            let word = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).to_string();
            let count = i64::from_be_bytes(r.value.as_deref().unwrap_or_default().try_into().expect("8-byte count"));
            out.entry(word).or_default().push(count);
            n += 1;
        }
    }
    let extra = c.poll(Duration::from_secs(1)).await.expect("poll").len();
    assert_eq!((n, extra), (total, 0), "count updates read (then more): {out:?}");
    out
}

/// Every word's updates are 1..=its count, and the counts are the reference.
fn check(updates: &BTreeMap<String, Vec<i64>>, reference: &BTreeMap<String, i64>) {
    for (w, seen) in updates {
        let expected: Vec<i64> = (1..=reference.get(w).copied().unwrap_or(0)).collect();
        assert_eq!(seen, &expected, "word {w}: each line counted once, in order");
    }
    let finals: BTreeMap<String, i64> = updates.iter().map(|(w, u)| (w.clone(), *u.last().unwrap_or(&0))).collect();
    assert_eq!(&finals, reference);
}

/// Waits until the committed offsets of `app` reach `total` records of `lines`.
async fn wait_consumed(client: &Client, app: &str, total: usize, limit: Duration) {
    wait_committed(client, app, "lines", total, limit).await
}

/// Waits until the committed offsets of `app` reach `total` records of `topic`.
async fn wait_committed(client: &Client, app: &str, topic: &str, total: usize, limit: Duration) {
    eventually(&format!("{app} to commit {total} records of {topic}"), limit, || async {
        let offsets = client.fetch_offsets(app, Some(topic)).await.ok()?;
        (offsets.iter().map(|o| o.offset as usize).sum::<usize>() >= total).then_some(())
    })
    .await
}

/// Waits until `topic` holds at least `n` records (its partitions' end offsets).
async fn wait_written(client: &Client, topic: &str, n: i64, limit: Duration) {
    eventually(&format!("{n} records in {topic}"), limit, || async {
        let ends = client.list_offsets(topic, (0..PARTITIONS).collect(), OffsetSpec::Latest, 0).await.ok()?;
        (ends.iter().map(|o| o.offset.max(o.log_end_offset)).sum::<i64>() >= n).then_some(())
    })
    .await
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wordcount_counts_each_line_once_through_kills_of_its_instance_and_a_leader() {
    let s = seed("streams-wordcount");
    let (mut c, dir) = cluster_with(3, ENV).await;
    let client = client(&c).await;
    for t in ["lines", "counts"] {
        client.create_topic(t, PARTITIONS, 3, HashMap::new()).await.unwrap();
    }
    let input = lines(s, 3000);
    let reference = counts_of(&input);
    let total_words: usize = reference.values().map(|n| *n as usize).sum();
    let (state, log) = (dir.path().join("state"), dir.path().join("wc.log"));

    produce(&client, &input[..1000], 0).await;
    let mut wc = start_instance(c.gateway(), "wc", "wc-1", &state, &log);
    // Counted and committed, store and changelog included, before the kill.
    wait_written(&client, "wc-word-counts-changelog", 300, Duration::from_secs(60)).await;
    eprintln!("kill -9 the instance");
    wc.start_kill().unwrap();
    let _ = wc.wait().await;
    produce(&client, &input[1000..2000], 1000).await;
    let mut wc = start_instance(c.gateway(), "wc", "wc-1", &state, &log);
    wait_consumed(&client, "wc", 1500, Duration::from_secs(90)).await;
    let d = client.describe_topic("counts").await.unwrap();
    let victim = d.partitions[0].leader;
    eprintln!("kill -9 partition node {victim} (leading counts-0)");
    c.kill("partition-node", victim);
    produce(&client, &input[2000..], 2000).await;
    c.restart("partition-node", victim).await.unwrap();
    wait_consumed(&client, "wc", 3000, Duration::from_secs(120)).await;

    let seen = updates(&client, total_words, Duration::from_secs(60)).await;
    check(&seen, &reference);
    // A clean stop: commits, checkpoints its stores and leaves.
    assert!(sluice_testkit::signal(wc.id().unwrap(), "TERM"));
    let status = tokio::time::timeout(Duration::from_secs(30), wc.wait()).await.expect("stops").unwrap();
    assert!(status.success(), "{}", log_of(&log));
    let text = log_of(&log);
    assert!(text.contains("store restored"), "the restarted instance rebuilt its store from the changelog:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_takes_half_the_tasks_and_all_of_a_killed_ones_from_the_changelog() {
    let s = seed("streams-two-instances");
    let (c, dir) = cluster_with(3, ENV).await;
    let client = client(&c).await;
    for t in ["lines", "counts"] {
        client.create_topic(t, PARTITIONS, 3, HashMap::new()).await.unwrap();
    }
    let input = lines(s, 2000);
    let reference = counts_of(&input);
    let total_words: usize = reference.values().map(|n| *n as usize).sum();
    let state = dir.path().join("state");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));

    // a alone first, with every task; then b joins: a gives up half of them, which b gets
    // in the next generation.
    let mut a = start_instance(c.gateway(), "wc2", "a", &state, &log_a);
    produce(&client, &input[..500], 0).await;
    wait_consumed(&client, "wc2", 500, Duration::from_secs(60)).await;
    let mut b = start_instance(c.gateway(), "wc2", "b", &state, &log_b);
    eventually("b to run tasks", Duration::from_secs(60), || async {
        log_of(&log_b).contains("tasks=[TaskId").then_some(())
    })
    .await;
    produce(&client, &input[500..1000], 500).await;
    // Every word of the first half counted and committed (output and changelogs) by both.
    let first_half: i64 = counts_of(&input[..1000]).values().sum();
    wait_written(&client, "counts", first_half, Duration::from_secs(60)).await;
    eprintln!("kill -9 instance b");
    b.start_kill().unwrap();
    let _ = b.wait().await;
    produce(&client, &input[1000..], 1000).await;
    wait_consumed(&client, "wc2", 2000, Duration::from_secs(120)).await;
    let seen = updates(&client, total_words, Duration::from_secs(60)).await;
    check(&seen, &reference);
    assert!(log_of(&log_a).contains("store restored"), "a restored b's stores: {}", log_of(&log_a));
    assert!(sluice_testkit::signal(a.id().unwrap(), "TERM"));
    let status = tokio::time::timeout(Duration::from_secs(30), a.wait()).await.expect("stops").unwrap();
    assert!(status.success(), "{}", log_of(&log_a));
}

/// The library in the test's process, at-least-once: the counts in its store (an interactive
/// query) and on its output topic equal the reference, and a topology with a store named
/// twice is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_in_process_answers_interactive_queries_at_least_once() {
    use sluice_streams::{Guarantee, StreamsApp, StreamsBuilder, StreamsConfig};
    let s = seed("streams-in-process");
    let (c, dir) = cluster_with(3, ENV).await;
    let client = client(&c).await;
    for t in ["lines", "counts"] {
        client.create_topic(t, PARTITIONS, 3, HashMap::new()).await.unwrap();
    }
    let input = lines(s, 1000);
    let reference = counts_of(&input);
    produce(&client, &input, 0).await;
    let topology = || {
        let b = StreamsBuilder::new();
        b.stream::<Option<String>, String>("lines")
            .flat_map_values(|_, line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .select_key(|_, w| w.clone())
            .group_by_key()
            .count("word-counts")
            .to_stream()
            .to("counts");
        b
    };
    let mut cfg = StreamsConfig::new("wc-iq", c.gateway());
    cfg.guarantee = Guarantee::AtLeastOnce;
    cfg.state_dir = dir.path().join("state");
    cfg.instance = "iq".into();
    let bad = topology();
    bad.stream::<String, String>("lines");
    let refused = StreamsApp::start(bad.build(), cfg.clone()).err().expect("refused").to_string();
    assert!(refused.contains("topic 'lines' is read by two sources"), "{refused}");

    let app = StreamsApp::start(topology().build(), cfg).unwrap();
    wait_consumed(&client, "wc-iq", 1000, Duration::from_secs(60)).await;
    // The count tasks commit after the repartition topic is read: wait for the store too.
    let counts = eventually("the store to hold the reference counts", Duration::from_secs(60), || async {
        let got: BTreeMap<String, i64> = app.all::<String, i64>("word-counts").await.ok()?.into_iter().collect();
        (got == reference).then_some(got)
    })
    .await;
    assert_eq!(counts.len(), reference.len());
    let total: usize = reference.values().map(|n| *n as usize).sum();
    check(&updates(&client, total, Duration::from_secs(60)).await, &reference);
    let state = app.state();
    assert!(state.failed.is_none() && state.commits > 0, "{state:?}");
    assert_eq!(state.metrics.values().map(|m| m.processed).sum::<u64>() as usize, 1000 + total);
    tokio::task::spawn_blocking(move || app.close()).await.unwrap();
}

/// A task with two inputs takes their records in timestamp order, and waits up to
/// `max_task_idle` for an input that has nothing yet: orders read before the customers they
/// refer to exist on their topic, but later in event time, all find their customer (an
/// inner stream-table join). With no wait (`max_task_idle` 0) the orders would be joined
/// against an empty table and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_over_a_backlog_takes_both_inputs_in_timestamp_order() {
    use sluice_streams::{StreamsApp, StreamsBuilder, StreamsConfig};
    let (c, dir) = cluster_with(3, ENV).await;
    let client = client(&c).await;
    for t in ["orders", "customers", "enriched"] {
        client.create_topic(t, PARTITIONS, 3, HashMap::new()).await.unwrap();
    }
    let base = sluice_core::settings::now_ms() - 60_000;
    let send = |topic: &'static str, records: Vec<(String, String, i64)>| {
        let client = client.clone();
        async move {
            let producer = Producer::new(client, ProducerConfig::default());
            let mut futs = Vec::new();
            for (k, v, ts) in records {
                let r = ProducerRecord {
                    topic: topic.into(),
                    key: Some(Bytes::from(k)),
                    value: Some(Bytes::from(v)),
                    timestamp_ms: ts,
                    ..Default::default()
                };
                futs.push(producer.send(r).await.expect("queued"));
            }
            for f in futs {
                f.await.expect("answered").expect("acknowledged");
            }
            producer.close().await;
        }
    };
    // The orders first (event times base+1000...); the customers (base) once the application
    // runs and has read the orders.
    send("orders", (0..300).map(|i| (format!("c{}", i % 30), format!("o{i}"), base + 1000 + i as i64)).collect()).await;

    let b = StreamsBuilder::new();
    let customers = b.table::<String, String>("customers", "customers");
    b.stream::<String, String>("orders").join(&customers, |o, name| format!("{o}:{name}")).to("enriched");
    let mut cfg = StreamsConfig::new("enrich", c.gateway());
    cfg.state_dir = dir.path().join("state");
    cfg.instance = "e".into();
    cfg.max_task_idle = Duration::from_secs(2);
    let app = StreamsApp::start(b.build(), cfg).unwrap();
    eventually("the application to run its tasks", Duration::from_secs(60), || async {
        (!app.state().tasks.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send("customers", (0..30).map(|i| (format!("c{i}"), format!("name{i}"), base)).collect()).await;
    wait_committed(&client, "enrich", "orders", 300, Duration::from_secs(60)).await;
    let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut consumer = Consumer::assign(client.clone(), "enriched", &[], StartFrom::Earliest, cfg).await.unwrap();
    let mut joined = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while joined.len() < 300 && tokio::time::Instant::now() < deadline {
        joined.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    assert_eq!(joined.len(), 300, "every order found its customer");
    for r in &joined {
        let (key, value) =
            (String::from_utf8_lossy(r.key.as_deref().unwrap()), String::from_utf8_lossy(r.value.as_deref().unwrap()));
        let i: usize = value.split(':').next().unwrap().trim_start_matches('o').parse().unwrap();
        assert_eq!((key.to_string(), value.to_string()), (format!("c{}", i % 30), format!("o{i}:name{}", i % 30)));
    }
    tokio::task::spawn_blocking(move || app.close()).await.unwrap();
}
