//! Consumer groups end to end: a real etcd, partition nodes, a gateway and two group
//! coordinators, with members as CLI processes (killed with -9) or in-process consumers.
//!
//! Every run also checks, at its end, that no committed offset ever went backwards: the
//! internal `__consumer_offsets` topic is read whole and each key's values compared in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::group::{DeliveryMode, GroupConfig, GroupConsumer};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_group_coordinator::store::{OFFSETS_TOPIC, decode_key, decode_value};
use sluice_proto::v1::member_event::Kind as EventKind;
use sluice_proto::v1::member_request::Kind as RequestKind;
use sluice_proto::v1::*;
use sluice_testkit::Cluster;
use sluice_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type Tp = (String, u32);

/// The runs that start many processes and kill them go one at a time: on a 2-core machine two
/// of them at once starve each other's clusters.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Group timings short enough for tests.
const GROUP_ENV: &[(&str, &str)] = &[("SLUICE_GROUPS__MIN_SESSION_TIMEOUT_MS", "500")];

async fn group_cluster(nodes: u32, coordinators: u32) -> (Cluster, tempfile::TempDir) {
    cluster_spec(nodes, coordinators, GROUP_ENV).await
}

/// The test cluster's id of the coordinator that answered `d`.
fn coordinator_id(c: &Cluster, d: &DescribeGroupResponse) -> u64 {
    c.manifest
        .processes
        .iter()
        .find(|e| e.role == "group-coordinator" && e.addr == d.coordinator)
        .map(|e| e.id)
        .expect("the active coordinator is one of this cluster's")
}

/// A `sluice consume --group` process, its output collected line by line.
struct CliMember {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

fn collect(reader: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(reader).lines();
        while let Ok(Some(l)) = r.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

impl CliMember {
    fn spawn(gateway: &str, topic: &str, group: &str, extra: &[&str]) -> Self {
        let bin = sluice_testkit::binary("sluice").expect("sluice binary");
        let session: &[&str] =
            if extra.contains(&"--session-timeout-ms") { &[] } else { &["--session-timeout-ms", "3000"] };
        let mut child = Command::new(bin)
            .args(["consume", topic, "--group", group, "--format", "%p\\t%o\\t%s\\n"])
            .args(session)
            .args(["--commit-interval-ms", "200"])
            .args(extra)
            .env("SLUICE_GATEWAY", gateway)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice consume");
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        Self { child, out, err }
    }

    fn member_id(&self) -> Option<String> {
        self.err.lock().unwrap().iter().rev().find_map(|l| l.split(" as ").nth(1).map(str::to_string))
    }

    /// What the member says it holds, from its assigned/revoked/lost reports.
    fn held(&self) -> BTreeSet<Tp> {
        let mut held = BTreeSet::new();
        for l in self.err.lock().unwrap().iter() {
            let Some((what, list)) = l.split_once(": ") else { continue };
            let tps = list.split(',').filter_map(|s| {
                let (t, p) = s.rsplit_once('-')?;
                Some((t.to_string(), p.parse::<u32>().ok()?))
            });
            match what {
                "assigned" => held.extend(tps),
                "revoked" | "lost" => {
                    for tp in tps {
                        held.remove(&tp);
                    }
                }
                _ => {}
            }
        }
        held
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// (partition, offset, value) of every record printed.
    fn records(&self) -> Vec<(u32, i64, String)> {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.to_string()))
            })
            .collect()
    }

    async fn kill9(&mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }

    /// SIGTERM: the consumer commits what it printed and leaves.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            sluice_testkit::signal(pid, "TERM");
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "consumer did not stop cleanly: {}", self.stderr());
        // Let the output readers drain the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces `count` records `v{start+i}` with keys spread over the partitions, at about
/// `per_sec`, acks=all; returns every acknowledged value.
async fn produce(client: &Client, topic: &str, start: usize, count: usize, per_sec: usize) -> Vec<String> {
    let p = Producer::new(client.clone(), ProducerConfig { linger: Duration::from_millis(2), ..Default::default() });
    let mut pending = Vec::with_capacity(count);
    let step = (per_sec / 20).max(1);
    for i in start..start + count {
        let v = format!("v{i}");
        let rec = ProducerRecord {
            topic: topic.into(),
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(v.clone())),
            ..Default::default()
        };
        pending.push((v, p.send(rec).await.expect("queue")));
        if (i - start + 1).is_multiple_of(step) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut acked = Vec::new();
    for (v, rx) in pending {
        if matches!(rx.await, Ok(Ok(_))) {
            acked.push(v);
        }
    }
    p.close().await;
    acked
}

/// Waits until the group has committed up to the log end of every partition of `topic`.
async fn wait_caught_up(client: &Client, group: &str, topic: &str, limit: Duration) -> DescribeGroupResponse {
    wait_cli_caught_up(client, group, topic, limit, &[]).await
}

/// [`wait_caught_up`] for groups of CLI members: on a time-out, the group as the
/// coordinator describes it and what every member printed on stderr are shown.
async fn wait_cli_caught_up(
    client: &Client,
    group: &str,
    topic: &str,
    limit: Duration,
    members: &[CliMember],
) -> DescribeGroupResponse {
    let caught_up = within(limit, || async {
        let d = client.describe_group(group).await.ok()?;
        let parts: Vec<&GroupPartition> = d.partitions.iter().filter(|p| p.topic == topic).collect();
        (!parts.is_empty() && parts.iter().all(|p| p.log_end >= 0 && p.committed == p.log_end)).then_some(d)
    })
    .await;
    if let Some(d) = caught_up {
        return d;
    }
    eprintln!("group '{group}' now: {:#?}", client.describe_group(group).await);
    for (i, m) in members.iter().enumerate() {
        eprintln!("--- member {i} stderr:\n{}", m.stderr());
    }
    panic!("timed out after {limit:?} waiting for '{group}' to commit everything");
}

/// Members of the group and what the coordinator says each holds.
fn members(d: &DescribeGroupResponse) -> BTreeMap<String, BTreeSet<Tp>> {
    d.members
        .iter()
        .map(|m| {
            let held = m.assigned.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p))).collect();
            (m.member_id.clone(), held)
        })
        .collect()
}

/// Reads `__consumer_offsets` whole and checks that, per key, committed offsets never
/// decrease (for the groups given; resets move them on purpose).
async fn assert_commits_never_go_back(client: &Client, groups: &[&str]) -> usize {
    let mut c = Consumer::assign(client.clone(), OFFSETS_TOPIC, &[], StartFrom::Earliest, ConsumerConfig::default())
        .await
        .expect("read the offsets topic");
    let mut last: BTreeMap<(String, Tp), i64> = BTreeMap::new();
    let mut seen = 0;
    loop {
        let recs = c.poll(Duration::from_secs(2)).await.expect("poll offsets");
        if recs.is_empty() {
            break;
        }
        for r in recs {
            let Some((group, tp)) = r.key.as_deref().and_then(decode_key) else { continue };
            if !groups.contains(&group.as_str()) {
                continue;
            }
            let Some(v) = r.value.as_deref().and_then(decode_value) else { continue };
            seen += 1;
            let key = (group, tp);
            if let Some(prev) = last.get(&key) {
                assert!(v.offset >= *prev, "committed offset of {key:?} went back from {prev} to {}", v.offset);
            }
            last.insert(key, v.offset);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_a_newcomer_moves_only_what_it_must() {
    let (c, _dir) = group_cluster(3, 1).await;
    let client = client(&c).await;
    client.create_topic("shared", 6, 3, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let mut m: Vec<CliMember> = (0..3).map(|_| CliMember::spawn(&gw, "shared", "g-share", &[])).collect();
    let stable = |n: usize| {
        let client = client.clone();
        async move {
            eventually("a stable group", Duration::from_secs(30), || async {
                let d = client.describe_group("g-share").await.ok()?;
                (d.state == "Stable" && d.members.len() == n).then_some(d)
            })
            .await
        }
    };
    let d = stable(3).await;
    let before = members(&d);
    let mut owners: BTreeMap<Tp, &String> = BTreeMap::new();
    for (id, held) in &before {
        assert_eq!(held.len(), 2, "{before:?}");
        for tp in held {
            assert!(owners.insert(tp.clone(), id).is_none(), "{tp:?} owned twice: {before:?}");
        }
    }
    assert_eq!(owners.len(), 6);
    // The consumers report what the coordinator says they hold.
    eventually("consumers to report their assignment", Duration::from_secs(10), || async {
        m.iter().all(|x| x.member_id().is_some_and(|id| before.get(&id) == Some(&x.held()))).then_some(())
    })
    .await;

    m.push(CliMember::spawn(&gw, "shared", "g-share", &[]));
    let d = stable(4).await;
    let after = members(&d);
    let newcomer = m[3].member_id().expect("fourth member joined");
    let moved: usize = before.iter().map(|(id, held)| held.difference(&after[id]).count()).sum();
    // Sticky: 6 partitions over 4 members is 2,2,1,1, so exactly one partition changes owner,
    // and only to the newcomer.
    assert_eq!(moved, 1, "before {before:?} after {after:?}");
    assert_eq!(after[&newcomer].len(), 1);
    for (id, held) in &before {
        assert!(after[id].is_subset(held), "{id} gained a partition it did not need: {after:?}");
    }
    // The CLI's own view of the group matches.
    let out = tokio::process::Command::new(sluice_testkit::binary("sluice").unwrap())
        .args(["group", "describe", "g-share"])
        .env("SLUICE_GATEWAY", &gw)
        .output()
        .await
        .expect("group describe");
    let text = String::from_utf8_lossy(&out.stdout);
    for x in &m {
        let id = x.member_id().unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("Member: {id}\t"))).expect("member listed");
        let listed: BTreeSet<Tp> = line
            .split("Assigned: ")
            .nth(1)
            .and_then(|s| s.split('\t').next())
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.rsplit_once('-').and_then(|(t, p)| Some((t.to_string(), p.parse().ok()?))))
            .collect();
        let reported = eventually("the member's report", Duration::from_secs(10), || async {
            let h = x.held();
            (h == listed).then_some(h)
        })
        .await;
        assert_eq!(reported, after[&id]);
    }
    for x in &mut m {
        x.stop().await;
    }
    assert_commits_never_go_back(&client, &["g-share"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_replaced_and_at_least_once_misses_nothing() {
    let _heavy = HEAVY.lock().await;
    let seed = seed("at_least_once");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, _dir) = group_cluster(3, 2).await;
    let client = client(&c).await;
    client.create_topic("alo", 6, 3, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let mut m: Vec<CliMember> = (0..3).map(|_| CliMember::spawn(&gw, "alo", "g-alo", &[])).collect();
    eventually("three members", Duration::from_secs(30), || async {
        client.describe_group("g-alo").await.ok().filter(|d| d.members.len() == 3 && d.state == "Stable")
    })
    .await;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, "alo", 0, 6000, 1000).await })
    };
    tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
    let victim = rng.random_range(0..3);
    let victim_id = m[victim].member_id().expect("member id");
    m[victim].kill9().await;
    let killed_at = tokio::time::Instant::now();
    // Its partitions go to the others within the session timeout (3 s) and a little.
    let d = eventually("the killed member's partitions to move", Duration::from_secs(15), || async {
        let d = client.describe_group("g-alo").await.ok()?;
        let held: usize = members(&d).values().map(|s| s.len()).sum();
        (d.members.len() == 2 && held == 6 && !members(&d).contains_key(&victim_id)).then_some(d)
    })
    .await;
    let took = killed_at.elapsed();
    eprintln!("partitions moved {took:?} after the kill; {:?}", members(&d));
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // A member that stops answering (SIGSTOP: its connection stays open) is removed after
    // its session timeout; woken up, it finds its partitions lost and rejoins.
    let frozen = (victim + 1) % 3;
    let frozen_id = m[frozen].member_id().expect("member id");
    let pid = m[frozen].child.id().expect("pid");
    assert!(sluice_testkit::signal(pid, "STOP"));
    let stopped_at = tokio::time::Instant::now();
    eventually("the frozen member to be removed", Duration::from_secs(15), || async {
        let d = client.describe_group("g-alo").await.ok()?;
        (!members(&d).contains_key(&frozen_id)).then_some(())
    })
    .await;
    let took = stopped_at.elapsed();
    eprintln!("frozen member removed {took:?} after SIGSTOP (session timeout 3 s)");
    assert!(took >= Duration::from_millis(2500), "removed before its session timeout: {took:?}");
    assert!(sluice_testkit::signal(pid, "CONT"));
    eventually("the woken member to report its loss and rejoin", Duration::from_secs(15), || async {
        let e = m[frozen].stderr();
        (e.contains("lost: ") && e.matches("joined group").count() >= 2).then_some(())
    })
    .await;
    // A replacement joins later.
    m.push(CliMember::spawn(&gw, "alo", "g-alo", &[]));
    let acked = producer.await.expect("producer");
    assert!(acked.len() >= 5900, "only {} of 6000 acknowledged", acked.len());
    wait_cli_caught_up(&client, "g-alo", "alo", Duration::from_secs(60), &m).await;
    for (i, x) in m.iter_mut().enumerate() {
        if i != victim {
            x.stop().await;
        }
    }
    let processed: BTreeSet<String> = m.iter().flat_map(|x| x.records().into_iter().map(|r| r.2)).collect();
    let missed: Vec<&String> = acked.iter().filter(|v| !processed.contains(*v)).collect();
    assert!(
        missed.is_empty(),
        "{} acknowledged records never processed, e.g. {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
    let total: usize = m.iter().map(|x| x.records().len()).sum();
    eprintln!("{} acknowledged, {total} processed ({} re-deliveries)", acked.len(), total - processed.len());
    assert!(assert_commits_never_go_back(&client, &["g-alo"]).await > 0);
}

/// Members killed with -9 and replaced, again and again, while a producer runs (as an
/// operator would check it from outside): every acknowledged record is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_killed_again_and_again_under_load_miss_nothing() {
    let _heavy = HEAVY.lock().await;
    let seed = seed("churn");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, _dir) = group_cluster(3, 2).await;
    let client = client(&c).await;
    client.create_topic("churn", 6, 3, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let mut live: Vec<CliMember> = (0..3).map(|_| CliMember::spawn(&gw, "churn", "g-churn", &[])).collect();
    let mut dead: Vec<CliMember> = Vec::new();
    let secs = fault_secs();
    let rate = 500;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, "churn", 0, secs as usize * rate, rate).await })
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
        let i = rng.random_range(0..live.len());
        let mut victim = live.swap_remove(i);
        victim.kill9().await;
        dead.push(victim);
        kills += 1;
        live.push(CliMember::spawn(&gw, "churn", "g-churn", &[]));
    }
    let acked = producer.await.expect("producer");
    wait_cli_caught_up(&client, "g-churn", "churn", Duration::from_secs(60), &live).await;
    // The group as described is the group the live consumers report.
    let d = eventually("a stable group of the live members", Duration::from_secs(20), || async {
        let d = client.describe_group("g-churn").await.ok()?;
        // Every live member must have joined: one just spawned may not have a member id yet,
        // and a stable group of the others is not the state asked for.
        let reported: BTreeMap<String, BTreeSet<Tp>> =
            live.iter().map(|x| Some((x.member_id()?, x.held()))).collect::<Option<_>>()?;
        (d.state == "Stable" && members(&d) == reported).then_some(d)
    })
    .await;
    assert_eq!(d.members.len(), 3);
    for x in &mut live {
        x.stop().await;
    }
    let processed: BTreeSet<String> =
        live.iter().chain(dead.iter()).flat_map(|x| x.records().into_iter().map(|r| r.2)).collect();
    let missed = acked.iter().filter(|v| !processed.contains(*v)).count();
    eprintln!("{kills} members killed; {} records acknowledged, {missed} never processed", acked.len());
    assert_eq!(missed, 0);
    assert!(assert_commits_never_go_back(&client, &["g-churn"]).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_never_processes_a_record_twice() {
    let _heavy = HEAVY.lock().await;
    let seed = seed("at_most_once");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, _dir) = group_cluster(3, 1).await;
    let client = client(&c).await;
    client.create_topic("amo", 4, 3, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let amo = ["--delivery", "at-most-once"];
    let mut m: Vec<CliMember> = (0..2).map(|_| CliMember::spawn(&gw, "amo", "g-amo", &amo)).collect();
    eventually("two members", Duration::from_secs(30), || async {
        client.describe_group("g-amo").await.ok().filter(|d| d.members.len() == 2 && d.state == "Stable")
    })
    .await;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, "amo", 0, 4000, 1000).await })
    };
    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
    m[0].kill9().await;
    m.push(CliMember::spawn(&gw, "amo", "g-amo", &amo));
    let acked = producer.await.expect("producer");
    wait_cli_caught_up(&client, "g-amo", "amo", Duration::from_secs(60), &m).await;
    for x in m.iter_mut().skip(1) {
        x.stop().await;
    }
    let mut seen: BTreeMap<(u32, i64), usize> = BTreeMap::new();
    for r in m.iter().flat_map(|x| x.records()) {
        *seen.entry((r.0, r.1)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    // Only what the killed member had taken and not printed may be missing.
    eprintln!("{} acknowledged, {} processed once", acked.len(), seen.len());
    assert!(seen.len() + 2000 >= acked.len(), "too much lost: {} of {}", seen.len(), acked.len());
    assert!(assert_commits_never_go_back(&client, &["g-amo"]).await > 0);
}

/// A consumer running in this process, polling in the background; what it processed and
/// the errors it saw are kept.
struct Running {
    seen: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn run_member(mut g: GroupConsumer) -> Running {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let (s, e) = (seen.clone(), errors.clone());
    let task = tokio::spawn(async move {
        while !*stopped.borrow() {
            tokio::select! {
                r = g.poll(Duration::from_millis(300)) => match r {
                    Ok(recs) => s.lock().unwrap().extend(recs.iter().map(|r| text(&r.value))),
                    Err(err) => {
                        e.lock().unwrap().push(err.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = stopped.changed() => {}
            }
        }
        let _ = g.close().await;
    });
    Running { seen, errors, stop, task }
}

/// Stops in-process members (each leaves its group) and returns every value they processed.
async fn stop_all(running: Vec<Running>) -> BTreeSet<String> {
    for r in &running {
        let _ = r.stop.send(true);
    }
    let mut seen = BTreeSet::new();
    for r in running {
        let _ = tokio::time::timeout(Duration::from_secs(20), r.task).await;
        seen.extend(r.seen.lock().unwrap().iter().cloned());
        eprintln!("member errors: {:?}", r.errors.lock().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_coordinator_takes_over_with_offsets_intact() {
    let _heavy = HEAVY.lock().await;
    let (c, _dir) = group_cluster(3, 2).await;
    let client = client(&c).await;
    client.create_topic("fo", 4, 3, Default::default()).await.expect("topic");
    let cfg = GroupConfig {
        session_timeout: Duration::from_secs(6),
        auto_commit_interval: Some(Duration::from_millis(200)),
        ..GroupConfig::new("g-fo")
    };
    let running: Vec<Running> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(run_member(GroupConsumer::subscribe(client.clone(), &["fo"], cfg.clone()).await.expect("join")));
        }
        v
    };
    let mut acked = produce(&client, "fo", 0, 2000, 2000).await;
    let before = wait_caught_up(&client, "g-fo", "fo", Duration::from_secs(30)).await;
    let committed = |d: &DescribeGroupResponse| -> BTreeMap<u32, i64> {
        d.partitions.iter().map(|p| (p.partition, p.committed)).collect()
    };
    let active = coordinator_id(&c, &before);
    let mut c = c;
    c.kill("group-coordinator", active);
    let after = eventually("the standby to take over", Duration::from_secs(30), || async {
        client.describe_group("g-fo").await.ok().filter(|d| d.coordinator != before.coordinator)
    })
    .await;
    assert!(
        after.coordinator_epoch > before.coordinator_epoch,
        "{} <= {}",
        after.coordinator_epoch,
        before.coordinator_epoch
    );
    assert_eq!(committed(&after), committed(&before), "committed offsets changed across the failover");
    // The new coordinator knew who held what: the members reattach under their ids and keep
    // their partitions; nothing moved.
    eventually("the members to reattach with their partitions", Duration::from_secs(20), || async {
        let d = client.describe_group("g-fo").await.ok()?;
        (d.members.iter().all(|m| m.connected) && members(&d) == members(&before)).then_some(())
    })
    .await;
    // Members carry on: new records are consumed and committed.
    acked.extend(produce(&client, "fo", 2000, 1000, 2000).await);
    let d = wait_caught_up(&client, "g-fo", "fo", Duration::from_secs(40)).await;
    assert_eq!(d.members.len(), 2, "{d:?}");
    // The first coordinator comes back as a standby; the active one is stopped cleanly
    // (SIGTERM): it hands the role over, and the group carries on there unchanged.
    c.restart("group-coordinator", active).await.expect("restart the coordinator");
    let standby = c.entry("group-coordinator", active).expect("entry").addr.clone();
    let second = coordinator_id(&c, &d);
    assert!(c.signal("group-coordinator", second, "TERM"));
    let third = eventually("the restarted coordinator to take over", Duration::from_secs(30), || async {
        let x = client.describe_group("g-fo").await.ok()?;
        (x.coordinator == standby && x.members.iter().all(|m| m.connected)).then_some(x)
    })
    .await;
    assert!(third.coordinator_epoch > d.coordinator_epoch);
    assert_eq!(members(&third), members(&d), "partitions moved on a clean hand-over");
    assert_eq!(committed(&third), committed(&d));
    acked.extend(produce(&client, "fo", 3000, 500, 2000).await);
    wait_caught_up(&client, "g-fo", "fo", Duration::from_secs(40)).await;
    let seen = stop_all(running).await;
    let missed = acked.iter().filter(|v| !seen.contains(*v)).count();
    assert_eq!(missed, 0, "{missed} acknowledged records not consumed");
    assert!(assert_commits_never_go_back(&client, &["g-fo"]).await > 0);
}

/// Commits cut off by a coordinator dying under an at-most-once member: the records of a
/// failed commit were never handed out, so they are read again once a coordinator answers.
/// Nothing is processed twice, and, as the member itself never crashed, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_rides_through_a_coordinator_failover_without_loss() {
    let _heavy = HEAVY.lock().await;
    let seed = seed("amo_failover");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut c, _dir) = group_cluster(1, 2).await;
    let client = client(&c).await;
    client.create_topic("amof", 3, 1, Default::default()).await.expect("topic");
    let cfg = GroupConfig {
        delivery: DeliveryMode::AtMostOnce,
        session_timeout: Duration::from_secs(10),
        ..GroupConfig::new("g-amof")
    };
    let member = run_member(GroupConsumer::subscribe(client.clone(), &["amof"], cfg).await.expect("join"));
    eventually("the member's assignment", Duration::from_secs(20), || async {
        let d = client.describe_group("g-amof").await.ok()?;
        (d.state == "Stable" && members(&d).values().map(|s| s.len()).sum::<usize>() == 3).then_some(())
    })
    .await;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, "amof", 0, 4000, 1000).await })
    };
    // Commits go out with every poll while records flow: the kill cuts some off.
    tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
    let before = client.describe_group("g-amof").await.expect("describe");
    let active = coordinator_id(&c, &before);
    c.kill("group-coordinator", active);
    let acked = producer.await.expect("producer");
    wait_caught_up(&client, "g-amof", "amof", Duration::from_secs(60)).await;
    let _ = member.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), member.task).await;
    let seen = member.seen.lock().unwrap().clone();
    let errors = member.errors.lock().unwrap().clone();
    eprintln!("{} acknowledged, {} processed; errors seen by the member: {errors:?}", acked.len(), seen.len());
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for v in &seen {
        *counts.entry(v).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let missed: Vec<&String> = acked.iter().filter(|v| !counts.contains_key(v)).take(5).collect();
    assert!(missed.is_empty(), "acknowledged records never processed, e.g. {missed:?}");
    assert!(assert_commits_never_go_back(&client, &["g-amof"]).await > 0);
}

/// The gateway the members go through is killed with -9 and restarted, then stopped cleanly
/// and started again: each time the coordinator sees their streams break (not end), keeps
/// them for their session timeout, and they re-attach under their ids to what they held. No
/// rebalance, nothing revoked, nothing missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_moves_no_partition() {
    let _heavy = HEAVY.lock().await;
    let (mut c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("gwr", 4, 1, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let session = ["--session-timeout-ms", "10000"];
    let mut m: Vec<CliMember> = (0..2).map(|_| CliMember::spawn(&gw, "gwr", "g-gwr", &session)).collect();
    let before = eventually("two members holding the 4 partitions", Duration::from_secs(30), || async {
        let d = client.describe_group("g-gwr").await.ok()?;
        let held: usize = members(&d).values().map(|s| s.len()).sum();
        (d.state == "Stable" && d.members.len() == 2 && held == 4).then_some(d)
    })
    .await;
    let mut acked = produce(&client, "gwr", 0, 1000, 2000).await;
    wait_cli_caught_up(&client, "g-gwr", "gwr", Duration::from_secs(30), &m).await;
    let reported: Vec<usize> = m.iter().map(|x| x.err.lock().unwrap().len()).collect();
    c.restart("gateway", 1).await.expect("restart the gateway");
    let after = within(Duration::from_secs(20), || async {
        let d = client.describe_group("g-gwr").await.ok()?;
        (d.members.len() == 2 && d.members.iter().all(|m| m.connected)).then_some(d)
    })
    .await;
    let Some(after) = after else {
        eprintln!("group now: {:#?}", client.describe_group("g-gwr").await);
        for x in &m {
            eprintln!("--- member stderr:\n{}", x.stderr());
        }
        panic!("the members did not re-attach within 20 s of the gateway's restart");
    };
    assert_eq!(members(&after), members(&before), "partitions moved across a gateway restart");
    assert_eq!(after.generation, before.generation, "a gateway restart caused a rebalance");
    acked.extend(produce(&client, "gwr", 1000, 1000, 2000).await);
    wait_cli_caught_up(&client, "g-gwr", "gwr", Duration::from_secs(30), &m).await;
    // A clean stop resets the members' streams on purpose: the same outcome.
    let stopped = tokio::time::Instant::now();
    assert!(c.stop("gateway", 1, Duration::from_secs(15)).await, "the gateway did not stop on SIGTERM");
    eprintln!("gateway stopped cleanly in {:?}", stopped.elapsed());
    c.restart("gateway", 1).await.expect("start the gateway again");
    let again = within(Duration::from_secs(20), || async {
        let d = client.describe_group("g-gwr").await.ok()?;
        (d.members.len() == 2 && d.members.iter().all(|m| m.connected)).then_some(d)
    })
    .await
    .expect("the members to re-attach after a clean gateway stop");
    assert_eq!(members(&again), members(&before), "partitions moved across a clean gateway stop");
    assert_eq!(again.generation, before.generation, "a clean gateway stop caused a rebalance");
    acked.extend(produce(&client, "gwr", 2000, 1000, 2000).await);
    wait_cli_caught_up(&client, "g-gwr", "gwr", Duration::from_secs(30), &m).await;
    // (Checked before stopping them: the first to leave hands its partitions to the other.)
    for (x, from) in m.iter().zip(reported) {
        let since: Vec<String> = x.err.lock().unwrap()[from..].to_vec();
        assert!(
            !since.iter().any(|l| ["assigned: ", "revoked: ", "lost: "].iter().any(|k| l.starts_with(k))),
            "a member's partitions changed after the restart: {since:?}"
        );
    }
    for x in &mut m {
        x.stop().await;
    }
    let processed: BTreeSet<String> = m.iter().flat_map(|x| x.records().into_iter().map(|r| r.2)).collect();
    let missed = acked.iter().filter(|v| !processed.contains(*v)).count();
    assert_eq!(missed, 0, "{missed} of {} acknowledged records never processed", acked.len());
}

/// Clients given two gateways (`a,b`, like Kafka's bootstrap.servers): the one they use is
/// killed with -9 and stays dead. Producer and group members carry on through the other; the
/// members re-attach there under their ids with the same partitions (no rebalance), and every
/// acknowledged record is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_another_gateway_when_theirs_dies() {
    let _heavy = HEAVY.lock().await;
    let (mut c, _dir) = cluster_gateways(1, 1, 2, GROUP_ENV).await;
    let both = c.gateways();
    assert_eq!(both.split(',').count(), 2, "{both}");
    let client = Client::connect(&both).await.expect("gateways reachable");
    client.create_topic("gwf", 4, 1, Default::default()).await.expect("topic");
    let cfg = GroupConfig {
        session_timeout: Duration::from_secs(10),
        auto_commit_interval: Some(Duration::from_millis(200)),
        ..GroupConfig::new("g-gwf")
    };
    let mut running = Vec::new();
    for _ in 0..2 {
        let member_client = Client::connect(&both).await.expect("gateways reachable");
        running.push(run_member(GroupConsumer::subscribe(member_client, &["gwf"], cfg.clone()).await.expect("join")));
    }
    let before = eventually("two members holding the 4 partitions", Duration::from_secs(30), || async {
        let d = client.describe_group("g-gwf").await.ok()?;
        let held: usize = members(&d).values().map(|s| s.len()).sum();
        (d.state == "Stable" && d.members.len() == 2 && held == 4).then_some(d)
    })
    .await;
    let producer = {
        let client = client.clone();
        tokio::spawn(async move { produce(&client, "gwf", 0, 3000, 1000).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Every client connected to the first gateway of the list.
    c.kill("gateway", 1);
    let acked = producer.await.expect("producer");
    assert!(acked.len() >= 2900, "only {} of 3000 acknowledged through the failover", acked.len());
    let after = wait_caught_up(&client, "g-gwf", "gwf", Duration::from_secs(40)).await;
    assert!(after.members.iter().all(|m| m.connected), "{after:?}");
    assert_eq!(members(&after), members(&before), "partitions moved when a gateway died");
    assert_eq!(after.generation, before.generation, "a gateway's death caused a rebalance");
    let seen = stop_all(running).await;
    let missed = acked.iter().filter(|v| !seen.contains(*v)).count();
    assert_eq!(missed, 0, "{missed} of {} acknowledged records not consumed", acked.len());
}

/// Polls a group member until it returned `n` records (or 20 s passed); their values.
async fn poll_values(g: &mut GroupConsumer, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n && tokio::time::Instant::now() < deadline {
        if let Ok(recs) = g.poll(Duration::from_millis(300)).await {
            got.extend(recs.iter().map(|r| text(&r.value)));
        }
    }
    got
}

/// A deleted topic's committed offsets go with it: re-created under the same name, the topic
/// is read by the group from its start, not from where the old one was, also when the
/// coordinator restarted in between and read the old offsets back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_read_from_its_start() {
    let (mut c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("rc", 2, 1, Default::default()).await.expect("topic");
    produce(&client, "rc", 0, 20, 1000).await;
    let cfg = GroupConfig { auto_commit_interval: Some(Duration::from_millis(200)), ..GroupConfig::new("g-rc") };
    let mut g = GroupConsumer::subscribe(client.clone(), &["rc"], cfg.clone()).await.expect("join");
    assert_eq!(poll_values(&mut g, 20).await.len(), 20);
    g.close().await.expect("close");
    let d = client.describe_group("g-rc").await.expect("describe");
    assert_eq!(d.partitions.iter().map(|p| p.committed).sum::<i64>(), 20, "{d:?}");
    client.delete_topic("rc").await.expect("delete");
    eventually("the deleted topic's offsets to go", Duration::from_secs(10), || async {
        match client.describe_group("g-rc").await {
            // Nothing left of the group: no members, no offsets.
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Some(()),
            Ok(d) => d.partitions.iter().all(|p| p.topic != "rc").then_some(()),
            Err(_) => None,
        }
    })
    .await;
    // A commit for a topic that does not exist is refused.
    let req = CommitOffsetsRequest {
        group_id: "g-rc".into(),
        offsets: vec![CommittedOffset { topic: "rc".into(), partition: 0, offset: 3, ..Default::default() }],
        ..Default::default()
    };
    let r = client.groups().commit_offsets(req).await.expect("answered").into_inner();
    let e = r.results[0].error.as_ref().expect("refused");
    assert_eq!(e.code, tonic::Code::NotFound as i32, "{}", e.message);
    assert!(e.message.contains("'rc'"), "{}", e.message);
    c.restart("group-coordinator", 1).await.expect("restart the coordinator");
    client.create_topic("rc", 2, 1, Default::default()).await.expect("topic again");
    // So is one for a partition the topic does not have.
    let req = CommitOffsetsRequest {
        group_id: "g-rc".into(),
        offsets: vec![CommittedOffset { topic: "rc".into(), partition: 9, offset: 0, ..Default::default() }],
        ..Default::default()
    };
    // (Once the restarted coordinator sees the re-created topic: before, the topic is unknown.)
    let e = eventually("the partition to be named missing", Duration::from_secs(20), || async {
        let r = client.groups().commit_offsets(req.clone()).await.ok()?.into_inner();
        r.results.first()?.error.clone().filter(|e| e.message.contains("partition 9"))
    })
    .await;
    assert_eq!(e.code, tonic::Code::NotFound as i32, "{}", e.message);
    assert!(e.message.contains("has 2 partitions"), "{}", e.message);
    let fresh = produce(&client, "rc", 100, 5, 1000).await;
    let mut g = GroupConsumer::subscribe(client.clone(), &["rc"], cfg).await.expect("join again");
    let mut got = poll_values(&mut g, 5).await;
    got.sort();
    let mut want = fresh.clone();
    want.sort();
    assert_eq!(got, want, "the re-created topic was not read from its start");
    g.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let (c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("st", 4, 1, Default::default()).await.expect("topic");
    let gw = c.gateway().to_string();
    let session = ["--session-timeout-ms", "8000"];
    let mut a = CliMember::spawn(&gw, "st", "g-st", &[&["--instance-id", "a"][..], &session].concat());
    let mut b = CliMember::spawn(&gw, "st", "g-st", &[&["--instance-id", "b"][..], &session].concat());
    let d = eventually("two members", Duration::from_secs(30), || async {
        client.describe_group("g-st").await.ok().filter(|d| d.members.len() == 2 && d.state == "Stable")
    })
    .await;
    let held_a = eventually("a's assignment", Duration::from_secs(10), || async {
        let h = a.held();
        (h.len() == 2).then_some(h)
    })
    .await;
    let b_lines = b.err.lock().unwrap().len();
    a.kill9().await;
    let mut a2 = CliMember::spawn(&gw, "st", "g-st", &[&["--instance-id", "a"][..], &session].concat());
    let back = eventually("the restarted member's assignment", Duration::from_secs(10), || async {
        let h = a2.held();
        (!h.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(back, held_a);
    let d2 = client.describe_group("g-st").await.expect("describe");
    assert_eq!(d2.generation, d.generation, "a rebalance happened");
    let since: Vec<String> = b.err.lock().unwrap()[b_lines..].to_vec();
    assert!(since.is_empty(), "the other member saw changes: {since:?}");
    a2.stop().await;
    b.stop().await;
    assert_commits_never_go_back(&client, &["g-st"]).await;
}

async fn open_member(
    client: &Client,
    join: JoinGroup,
) -> (tokio::sync::mpsc::UnboundedSender<MemberRequest>, tonic::Streaming<MemberEvent>, String) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(MemberRequest { kind: Some(RequestKind::Join(join)) }).unwrap();
    let mut s = client
        .groups()
        .membership(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("membership")
        .into_inner();
    let Some(MemberEvent { kind: Some(EventKind::Joined(j)) }) = s.message().await.expect("joined") else {
        panic!("expected Joined")
    };
    (tx, s, j.member_id)
}

async fn next_assignment(s: &mut tonic::Streaming<MemberEvent>) -> Assignment {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("an event in time");
        if let Some(MemberEvent { kind: Some(EventKind::Assignment(a)) }) = ev.expect("stream") {
            return a;
        }
    }
}

async fn commit_on(
    tx: &tokio::sync::mpsc::UnboundedSender<MemberRequest>,
    s: &mut tonic::Streaming<MemberEvent>,
    generation: u64,
    partition: u32,
) -> Option<Error> {
    let req = CommitOffsetsRequest {
        id: 7,
        generation,
        offsets: vec![CommittedOffset { topic: "fence".into(), partition, offset: 1, ..Default::default() }],
        ..Default::default()
    };
    tx.send(MemberRequest { kind: Some(RequestKind::Commit(req)) }).unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("commit answered");
        if let Some(MemberEvent { kind: Some(EventKind::Commit(r)) }) = ev.expect("stream") {
            return r.error.or_else(|| r.results[0].error.clone());
        }
    }
}

fn held_of(a: &Assignment) -> Vec<u32> {
    a.partitions.iter().flat_map(|t| t.partitions.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_fenced_by_generation_and_membership() {
    let (c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("fence", 2, 1, Default::default()).await.expect("topic");
    let join = |member_id: &str| JoinGroup {
        group_id: "g-fence".into(),
        member_id: member_id.into(),
        topics: vec!["fence".into()],
        session_timeout_ms: 1000,
        ..Default::default()
    };
    let (tx_a, mut a, id_a) = open_member(&client, join("")).await;
    let first = next_assignment(&mut a).await;
    assert_eq!(held_of(&first), vec![0, 1]);
    let beat = |tx: tokio::sync::mpsc::UnboundedSender<MemberRequest>| {
        tokio::spawn(async move {
            while tx.send(MemberRequest { kind: Some(RequestKind::Heartbeat(Heartbeat {})) }).is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let beat_a = beat(tx_a.clone());
    tx_a.send(MemberRequest { kind: Some(RequestKind::Ack(AssignmentAck { generation: first.generation })) }).unwrap();
    let (tx_b, mut b, id_b) = open_member(&client, join("")).await;
    let beat_b = beat(tx_b.clone());
    let second = next_assignment(&mut a).await;
    assert_eq!(held_of(&second).len(), 1);
    let moving = if held_of(&second) == vec![0] { 1 } else { 0 };
    // Still held until released: the old owner may commit it under the new generation.
    assert_eq!(commit_on(&tx_a, &mut a, second.generation, moving).await, None);
    tx_a.send(MemberRequest { kind: Some(RequestKind::Ack(AssignmentAck { generation: second.generation })) }).unwrap();
    let mut got = next_assignment(&mut b).await;
    while held_of(&got).is_empty() {
        got = next_assignment(&mut b).await;
    }
    assert_eq!(held_of(&got), vec![moving]);
    // Released: the old owner's commit for it is refused.
    let e = commit_on(&tx_a, &mut a, second.generation, moving).await.expect("refused");
    assert_eq!((e.code, e.sluice_code), (tonic::Code::FailedPrecondition as i32, 5005), "{}", e.message);
    // The new owner, with a generation from before the handover: refused.
    let e = commit_on(&tx_b, &mut b, first.generation, moving).await.expect("refused");
    assert_eq!(e.sluice_code, 5005, "{}", e.message);
    assert_eq!(commit_on(&tx_b, &mut b, got.generation, moving).await, None);
    // Commits outside membership are refused while the group has members.
    let req = CommitOffsetsRequest {
        group_id: "g-fence".into(),
        offsets: vec![CommittedOffset { topic: "fence".into(), partition: 0, offset: 1, ..Default::default() }],
        ..Default::default()
    };
    let e = client.groups().commit_offsets(req).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    // A member that goes silent (its stream open, no heartbeat) is removed after its session
    // timeout: its stream ends with UNKNOWN_MEMBER, and its id cannot rejoin.
    beat_a.abort();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the silent member's stream ended");
    let status = end.expect_err("ended with an error");
    assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.message());
    assert!(status.message().contains(&id_a), "{}", status.message());
    drop(tx_a);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(MemberRequest { kind: Some(RequestKind::Join(join(&id_a))) }).unwrap();
    let rejoin = client.groups().membership(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await;
    let e = rejoin.map(|_| ()).expect_err("an expired member id is refused");
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    // A member that closes its stream leaves at once.
    beat_b.abort();
    drop(tx_b);
    drop(b);
    eventually("b to leave after closing its stream", Duration::from_secs(5), || async {
        let d = client.describe_group("g-fence").await.ok()?;
        (!d.members.iter().any(|m| m.member_id == id_b)).then_some(())
    })
    .await;
    assert!(assert_commits_never_go_back(&client, &["g-fence"]).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_clear_errors() {
    let (c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    let gw = c.gateway().to_string();
    let code = |r: Result<DescribeGroupResponse, sluice_client::ClientError>| r.expect_err("refused").code();
    assert_eq!(code(client.describe_group("nope").await), Some(tonic::Code::NotFound));
    assert_eq!(code(client.describe_group("").await), Some(tonic::Code::InvalidArgument));
    assert_eq!(code(client.describe_group(&"g".repeat(300)).await), Some(tonic::Code::InvalidArgument));
    let bad_join = |j: JoinGroup| {
        let client = client.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tx.send(MemberRequest { kind: Some(RequestKind::Join(j)) }).unwrap();
            let r = client.groups().membership(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await;
            r.map(|_| ()).expect_err("refused")
        }
    };
    let base = JoinGroup { group_id: "g".into(), topics: vec!["t".into()], ..Default::default() };
    let e = bad_join(JoinGroup { group_id: String::new(), ..base.clone() }).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("invalid group id"), "{}", e.message());
    let e = bad_join(JoinGroup { assignor: "fastest".into(), ..base.clone() }).await;
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("unknown assignor"), "{}", e.message());
    let e = bad_join(JoinGroup { session_timeout_ms: 10, ..base.clone() }).await;
    assert!(e.message().contains("session timeout"), "{}", e.message());
    let e = bad_join(JoinGroup { topics: vec![], ..base.clone() }).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // A subscription to a missing topic waits, and gets the topic once it exists.
    // A long session: a loaded machine's pauses must not expire these members (leaving is
    // immediate whatever the timeout).
    let long = ["--session-timeout-ms", "30000"];
    let mut late = CliMember::spawn(&gw, "later", "g-late", &long);
    eventually("the member to join", Duration::from_secs(20), || async { late.member_id() }).await;
    assert!(late.held().is_empty());
    client.create_topic("later", 2, 1, Default::default()).await.expect("topic");
    produce(&client, "later", 0, 10, 1000).await;
    eventually("the new topic to be assigned and read", Duration::from_secs(20), || async {
        (late.held().len() == 2 && late.records().len() == 10).then_some(())
    })
    .await;

    // reset-offsets and delete are refused while the group has members.
    let sluice = |args: Vec<&str>| {
        let gw = gw.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let out = tokio::process::Command::new(sluice_testkit::binary("sluice").unwrap())
                .args(&args)
                .env("SLUICE_GATEWAY", gw)
                .output()
                .await
                .expect("run sluice");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, _, err) = sluice(vec!["group", "reset-offsets", "g-late", "--topic", "later", "--to-earliest"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has 1 active member(s)"), "{err}");
    let (code, _, err) = sluice(vec!["group", "delete", "g-late"]).await;
    assert!(code == Some(1) && err.contains("active member"), "{err}");
    wait_caught_up(&client, "g-late", "later", Duration::from_secs(20)).await;
    late.stop().await;
    eventually("the group to empty", Duration::from_secs(10), || async {
        client.describe_group("g-late").await.ok().filter(|d| d.members.is_empty())
    })
    .await;
    // Offsets beyond the log end are refused; within it they move.
    let (code, _, err) =
        sluice(vec!["group", "reset-offsets", "g-late", "--topic", "later", "--to-offset", "1000"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("out of range"), "{err}");
    let (code, out, err) = sluice(vec!["group", "reset-offsets", "g-late", "--topic", "later", "--to-earliest"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().filter(|l| l.ends_with("Committed: 0")).count(), 2, "{out}");
    // Re-read from the start after the reset.
    let mut again = CliMember::spawn(&gw, "later", "g-late", &long);
    eventually("the records again", Duration::from_secs(20), || async { (again.records().len() == 10).then_some(()) })
        .await;
    wait_caught_up(&client, "g-late", "later", Duration::from_secs(20)).await;
    again.stop().await;
    eventually("the group to empty", Duration::from_secs(10), || async {
        client.describe_group("g-late").await.ok().filter(|d| d.members.is_empty())
    })
    .await;
    let (code, out, _) = sluice(vec!["group", "list"]).await;
    assert!(code == Some(0) && out.contains("Group: g-late\tState: Empty"), "{out}");
    let (code, _, err) = sluice(vec!["group", "delete", "g-late"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = sluice(vec!["group", "describe", "g-late"]).await;
    assert!(code == Some(1) && err.contains("group 'g-late' does not exist"), "{err}");
}

/// The client's example programs, run as a user would: records produced while they run are
/// printed, committed, and Ctrl-C makes them commit and leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_mode_examples_consume_and_commit() {
    let (c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("ex", 2, 1, Default::default()).await.expect("topic");
    // Each example's group is new and starts from the earliest offset: it sees what the
    // earlier runs produced too.
    for (round, (example, group)) in
        [("at_least_once", "g-ex-alo"), ("at_most_once", "g-ex-amo")].into_iter().enumerate()
    {
        let expected = 50 * (round + 1);
        let bin = sluice_testkit::bin_dir().join("examples").join(example);
        assert!(bin.is_file(), "{} is missing: build with cargo build --examples", bin.display());
        let mut child = Command::new(&bin)
            .args([c.gateway(), "ex", group])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the example");
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        eventually("the example to join", Duration::from_secs(20), || async {
            err.lock().unwrap().iter().any(|l| l.starts_with("member ")).then_some(())
        })
        .await;
        produce(&client, "ex", round * 50, 50, 1000).await;
        let printed = eventually("the example to print every record", Duration::from_secs(20), || async {
            let n = out.lock().unwrap().len();
            (n >= expected).then_some(n)
        })
        .await;
        assert_eq!(printed, expected, "{example}: {:?}", out.lock().unwrap());
        sluice_testkit::signal(child.id().expect("pid"), "INT");
        let status =
            tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exited").expect("status");
        assert!(status.success(), "{example}: {:?}", err.lock().unwrap());
        wait_caught_up(&client, group, "ex", Duration::from_secs(10)).await;
        // Its stream closed with the process; the leave reaches the coordinator through the
        // gateway a moment later.
        let left = within(Duration::from_secs(5), || async {
            client.describe_group(group).await.ok().filter(|d| d.members.is_empty())
        })
        .await;
        assert!(left.is_some(), "{example} did not leave: {:?}", client.describe_group(group).await);
    }
}

/// Partitions added to a topic reach a group's members: the coordinator reassigns on the
/// metadata change, and records of the new partitions are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_topic_are_assigned_to_the_group() {
    let (c, _dir) = group_cluster(1, 1).await;
    let client = client(&c).await;
    client.create_topic("grow", 2, 1, Default::default()).await.expect("topic");
    let mut g = GroupConsumer::subscribe(client.clone(), &["grow"], GroupConfig::new("g-grow")).await.expect("join");
    produce(&client, "grow", 0, 10, 1000).await;
    assert_eq!(poll_values(&mut g, 10).await.len(), 10);
    client.create_partitions("grow", 4).await.expect("partitions added");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let r = ProducerRecord {
        topic: "grow".into(),
        partition: Some(3),
        value: Some(Bytes::from_static(b"in-partition-3")),
        timestamp_ms: sluice_core::settings::now_ms(),
        ..Default::default()
    };
    producer.send(r).await.expect("queued").await.expect("sent").expect("written");
    assert_eq!(poll_values(&mut g, 1).await, vec!["in-partition-3".to_string()]);
    assert_eq!(g.assignment().len(), 4, "the member holds the new partitions too");
    g.close().await.expect("close");
}

/// A member starting at "latest" on a partition whose only replica is down: the lookup of
/// where it ends answers an error entry. The member reads its other partitions meanwhile,
/// and takes that one at its end once it can be told: it never starts it at 0 (which
/// replayed it whole) nor stops reading everything while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_member_waits_for_a_leaderless_partition_instead_of_replaying_it() {
    let _heavy = HEAVY.lock().await;
    let (mut c, _dir) = group_cluster(3, 1).await;
    let client = client(&c).await;
    client.create_topic("lateness", 3, 1, HashMap::new()).await.unwrap();
    let cfg =
        ProducerConfig { linger: Duration::ZERO, delivery_timeout: Duration::from_secs(60), ..Default::default() };
    let producer = Producer::new(client.clone(), cfg);
    let send = |p: u32, v: String| {
        let r = ProducerRecord {
            topic: "lateness".into(),
            partition: Some(p),
            value: Some(Bytes::from(v)),
            ..Default::default()
        };
        let producer = &producer;
        async move { producer.send(r).await.unwrap().await.unwrap().unwrap() }
    };
    for p in 0..3u32 {
        for i in 0..10 {
            send(p, format!("old-{p}-{i}")).await;
        }
    }
    let d = client.describe_topic("lateness").await.unwrap();
    let leader = d.partitions.iter().find(|p| p.partition == 0).map(|p| p.leader).unwrap();
    let down: BTreeSet<u32> = d.partitions.iter().filter(|p| p.leader == leader).map(|p| p.partition).collect();
    let up: Vec<u32> = (0..3).filter(|p| !down.contains(p)).collect();
    c.kill("partition-node", leader);
    let cfg = GroupConfig {
        auto_offset_reset: StartFrom::Latest,
        session_timeout: Duration::from_secs(10),
        ..GroupConfig::new("g-late")
    };
    let mut member = GroupConsumer::subscribe(client.clone(), &["lateness"], cfg).await.expect("join");
    let mut got = Vec::new();
    // The partitions whose node is up are taken (at their end) and read while the others wait.
    poll_until(&mut member, &mut got, |m, _| m.positions().len() == up.len()).await;
    assert_eq!(member.positions().keys().map(|tp| tp.1).collect::<Vec<_>>(), up, "read so far: {got:?}");
    for p in &up {
        send(*p, format!("mid-{p}")).await;
    }
    poll_until(&mut member, &mut got, |_, got| got.len() >= up.len()).await;
    assert_eq!(got, up.iter().map(|p| format!("mid-{p}")).collect::<Vec<_>>(), "read while partition 0 had no leader");
    c.restart("partition-node", leader).await.unwrap();
    // The others are taken once their end is known: 10, where they end.
    poll_until(&mut member, &mut got, |m, _| m.positions().len() == 3).await;
    let positions: BTreeMap<u32, i64> = member.positions().into_iter().map(|(tp, o)| (tp.1, o)).collect();
    let expected: BTreeMap<u32, i64> = (0..3).map(|p| (p, if down.contains(&p) { 10 } else { 11 })).collect();
    assert_eq!(positions, expected, "read so far: {got:?}");
    for p in 0..3u32 {
        send(p, format!("new-{p}")).await;
    }
    poll_until(&mut member, &mut got, |_, got| got.len() >= up.len() + 3).await;
    got.sort();
    let mut want: Vec<String> =
        (0..3).map(|p| format!("new-{p}")).chain(up.iter().map(|p| format!("mid-{p}"))).collect();
    want.sort();
    assert_eq!(got, want, "the member starts at the end of every partition");
    member.close().await.unwrap();
}

/// Polls `member`, gathering the values read into `got`, until `done` or 30 s.
async fn poll_until(
    member: &mut GroupConsumer,
    got: &mut Vec<String>,
    done: impl Fn(&GroupConsumer, &[String]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(member, got) && tokio::time::Instant::now() < deadline {
        if let Ok(r) = member.poll(Duration::from_millis(200)).await {
            got.extend(r.iter().map(|r| text(&r.value)));
        }
    }
}
