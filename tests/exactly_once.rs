//! Exactly-once delivery, against a real etcd and real service processes: the idempotent
//! producer (on by default) writes every record once, in send order, through leader kills;
//! `sluice copy` copies every record once, in order, through kills of itself, of partition
//! leaders and of the active transaction coordinator.
//!
//! Runs print their seed; `SLUICE_TEST_SEED` replays the same choices and `SLUICE_FAULT_SECS`
//! sets how long the fault loops run (12 s by default, longer in `scripts/faults.sh`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::{IsolationLevel, TransactionState};
use sluice_tests::{client, cluster_spec, cluster_with, consume_all, eventually, fault_secs, seed, text};

const ENV: &[(&str, &str)] = &[
    ("SLUICE_REPLICATION__LAG_TIME_MAX_MS", "1500"),
    ("SLUICE_REPLICATION__LEADER_REBALANCE_INTERVAL_MS", "2000"),
    ("SLUICE_REPLICATION__ACK_TIMEOUT_MS", "10000"),
];

const PARTITIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_idempotent_producer_writes_every_record_once_in_order_through_leader_kills() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("idempotent-kills"));
    let (mut c, _dir) = cluster_with(3, ENV).await;
    let client = client(&c).await;
    client.create_topic("idem", PARTITIONS, 3, HashMap::new()).await.unwrap();

    // Small batches and a short linger: many batches of each partition in flight when a
    // leader dies, so retries of written and unwritten batches overlap.
    // A small buffer keeps what is queued when the faults stop (and the test's tail) short.
    let cfg = ProducerConfig {
        batch_bytes: 2048,
        linger: Duration::from_millis(2),
        buffer_bytes: 256 << 10,
        ..ProducerConfig::default()
    };
    assert!(cfg.idempotence, "idempotence is on by default");
    let producer = Arc::new(Producer::new(client.clone(), cfg));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, stop) = (producer.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut pending = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let p = (sent % PARTITIONS as u64) as u32;
                let record = ProducerRecord {
                    topic: "idem".into(),
                    partition: Some(p),
                    value: Some(Bytes::from(format!("{p}:{sent}"))),
                    ..Default::default()
                };
                pending.push((p, sent, producer.send(record).await.expect("queued")));
                sent += 1;
                if sent.is_multiple_of(200) {
                    // Bounded: the producer's queue fills and waits; keep the test's rate sane.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            producer.flush().await;
            let mut acked = Vec::new();
            let mut failed: BTreeMap<String, usize> = BTreeMap::new();
            for (p, n, f) in pending {
                match f.await {
                    Ok(Ok(d)) => acked.push((p, n, d.offset)),
                    Ok(Err(e)) => *failed.entry(e.to_string().chars().take(80).collect()).or_default() += 1,
                    Err(_) => *failed.entry("dropped".into()).or_default() += 1,
                }
            }
            (sent, acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let until = Instant::now() + Duration::from_secs(fault_secs());
    let mut kills = 0;
    while Instant::now() < until {
        let d = client.describe_topic("idem").await.unwrap();
        let victim = d.partitions[rng.random_range(0..PARTITIONS as usize)].leader;
        eprintln!("kill -9 partition node {victim} (leading)");
        c.kill("partition-node", victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..3500))).await;
        c.restart("partition-node", victim).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, acked, failed) = tokio::time::timeout(Duration::from_secs(120), sender).await.unwrap().unwrap();
    eprintln!("{kills} leaders killed; {sent} records sent, {} acknowledged, failed: {failed:?}", acked.len());
    assert!(acked.len() > 2000, "the producer made progress through the failovers");
    assert_eq!(failed, BTreeMap::new(), "a failover is a pause for an idempotent producer, not an error");

    let d = eventually("every replica back in sync", Duration::from_secs(60), || async {
        let d = client.describe_topic("idem").await.ok()?;
        d.partitions.iter().all(|p| p.isr.len() == 3 && p.error.is_none()).then_some(d)
    })
    .await;
    let total: i64 = d.partitions.iter().map(|p| p.high_watermark).sum();
    let records = consume_all(&client, "idem", total as usize).await;
    assert_eq!(records.len() as i64, total);
    // Per partition: each sent number at most once, in send order.
    let mut where_: HashMap<(u32, u64), i64> = HashMap::new();
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut duplicates = 0;
    let mut reordered = 0;
    for r in &records {
        let v = text(&r.value);
        let (p, n) = v.split_once(':').expect("value p:n");
        let (p, n): (u32, u64) = (p.parse().unwrap(), n.parse().unwrap());
        assert_eq!(p, r.partition, "record {v} in the partition it was sent to");
        if where_.insert((p, n), r.offset).is_some() {
            duplicates += 1;
        }
        if last.get(&p).is_some_and(|l| *l >= n) {
            reordered += 1;
        }
        last.insert(p, n);
    }
    assert_eq!(duplicates, 0, "no record is written twice");
    assert_eq!(reordered, 0, "each partition holds its records in send order");
    // Every acknowledged record is there, at the offset it was acknowledged with.
    let mut missing = 0;
    for (p, n, offset) in &acked {
        match where_.get(&(*p, *n)) {
            Some(o) if *offset < 0 || o == offset => {}
            other => {
                missing += 1;
                if missing < 5 {
                    eprintln!("record {p}:{n} acknowledged at {offset}, found at {other:?}");
                }
            }
        }
    }
    assert_eq!(missing, 0, "{missing} of {} acknowledged records lost or moved", acked.len());
}

/// A `sluice copy` process.
fn start_copier(gateway: &str, log: &std::path::Path) -> tokio::process::Child {
    let bin = sluice_testkit::binary("sluice").expect("sluice binary");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("copier log");
    tokio::process::Command::new(bin)
        .args(["copy", "src", "dst", "--group", "copier", "--transactional-id", "copier-t"])
        // Small transactions (the copier is nearly always inside one), and a short timeout.
        .args(["--transaction-records", "300", "--transaction-timeout-ms", "3000"])
        .env("SLUICE_GATEWAY", gateway)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice copy")
}

fn header(r: &sluice_client::consumer::ConsumerRecord, name: &str) -> i64 {
    let v = r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    v.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("record at {} lacks header {name}", r.offset))
}

/// Every record of `topic` a reader at `isolation` gets until `expected` or 3 s of quiet;
/// None when reading failed (a leader moving).
async fn try_read(
    client: &sluice_client::Client,
    topic: &str,
    isolation: IsolationLevel,
    expected: usize,
) -> Option<Vec<ConsumerRecord>> {
    let cfg = ConsumerConfig { isolation, ..ConsumerConfig::default() };
    let mut c = Consumer::assign(client.clone(), topic, &[], StartFrom::Earliest, cfg).await.ok()?;
    let mut out = Vec::new();
    while out.len() < expected {
        let got = c.poll(Duration::from_secs(3)).await.ok()?;
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    Some(out)
}

/// [`try_read`], tried again until it succeeds.
async fn read(
    client: &sluice_client::Client,
    topic: &str,
    isolation: IsolationLevel,
    expected: usize,
) -> Vec<ConsumerRecord> {
    eventually("a complete read", Duration::from_secs(60), || try_read(client, topic, isolation, expected)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sluice_copy_copies_every_record_exactly_once_through_kills_of_copier_leaders_and_coordinator() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed("copy-kills"));
    let (mut c, dir) = cluster_spec(3, 2, ENV).await;
    let client = client(&c).await;
    client.create_topic("src", PARTITIONS, 3, HashMap::new()).await.unwrap();
    client.create_topic("dst", PARTITIONS, 3, HashMap::new()).await.unwrap();

    // A backlog, so that the copier is always inside a transaction when it is killed; more
    // records keep coming during the faults.
    let producer = Arc::new(Producer::new(client.clone(), ProducerConfig::default()));
    let mut next = 0u64;
    // Recent timestamps (retention would delete older records), each its own.
    let base_ts = sluice_core::settings::now_ms() - 3_600_000;
    let send = move |producer: Arc<Producer>, from: u64, n: u64| async move {
        let mut futs = Vec::new();
        for i in from..from + n {
            let p = (i % PARTITIONS as u64) as u32;
            let r = ProducerRecord {
                topic: "src".into(),
                partition: Some(p),
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![("h".into(), Bytes::from_static(b"x"))],
                timestamp_ms: base_ts + i as i64,
            };
            futs.push(producer.send(r).await.expect("queued"));
        }
        for f in futs {
            f.await.expect("answered").expect("acknowledged");
        }
    };
    send(producer.clone(), next, 20_000).await;
    next += 20_000;

    let log = dir.path().join("copier.log");
    let mut copier = start_copier(c.gateway(), &log);
    // A copier paused inside a transaction (its records written) is a zombie: the coordinator
    // aborts its transaction at the timeout, and once resumed it aborts too and copies again.
    let ongoing = || async {
        let d = client.describe_transaction("copier-t").await.ok()?;
        (d.state == TransactionState::Ongoing as i32 && !d.partitions.is_empty()).then_some(d.producer_epoch)
    };
    let pid = copier.id().expect("copier pid");
    let mut paused = false;
    for _ in 0..50 {
        let Some(epoch) = sluice_tests::within(Duration::from_secs(20), ongoing).await else {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let state = client.describe_transaction("copier-t").await;
            panic!("the copier opened no transaction in 20 s; it is {state:?}; its log ends:\n{}", tail.join("\n"));
        };
        assert!(sluice_testkit::signal(pid, "STOP"), "pause the copier");
        // Paused inside that transaction, unless its commit was already on the way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if ongoing().await == Some(epoch) {
            paused = true;
            break;
        }
        assert!(sluice_testkit::signal(pid, "CONT"), "resume the copier");
    }
    assert!(paused, "never paused the copier inside a transaction");
    eventually("the paused copier's transaction aborted at its timeout", Duration::from_secs(20), || async {
        let d = client.describe_transaction("copier-t").await.ok()?;
        (d.state == TransactionState::CompleteAbort as i32).then_some(())
    })
    .await;
    assert!(sluice_testkit::signal(pid, "CONT"), "resume the copier");
    let until = Instant::now() + Duration::from_secs(fault_secs());
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    // Every kind of fault at least once, in a seeded order, then at random.
    let mut first = [0, 1, 2, 3];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.random_range(0..=i));
    }
    let mut round = 0;
    while Instant::now() < until || round < first.len() {
        let what = first.get(round).copied().unwrap_or_else(|| rng.random_range(0..4));
        round += 1;
        match what {
            0 => {
                eprintln!("kill -9 the copier");
                copier.start_kill().expect("kill the copier");
                let _ = copier.wait().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..1000))).await;
                copier = start_copier(c.gateway(), &log);
                *faults.entry("copier").or_default() += 1;
            }
            1 | 2 => {
                let topic = if what == 1 { "src" } else { "dst" };
                let d = client.describe_topic(topic).await.unwrap();
                let victim = d.partitions[rng.random_range(0..PARTITIONS as usize)].leader;
                eprintln!("kill -9 partition node {victim} (leading a partition of {topic})");
                c.kill("partition-node", victim);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
                c.restart("partition-node", victim).await.unwrap();
                *faults.entry(topic).or_default() += 1;
            }
            _ => {
                let Ok(d) = client.describe_group("copier").await else { continue };
                let Some(active) = c
                    .manifest
                    .processes
                    .iter()
                    .find(|e| e.role == "group-coordinator" && e.addr == d.coordinator)
                    .map(|e| e.id)
                else {
                    continue;
                };
                eprintln!("kill -9 the active coordinator ({})", d.coordinator);
                c.kill("group-coordinator", active);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
                c.restart("group-coordinator", active).await.unwrap();
                *faults.entry("coordinator").or_default() += 1;
            }
        }
        send(producer.clone(), next, 500).await;
        next += 500;
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    }
    let total = next as usize;
    eprintln!("faults: {faults:?}; {total} source records");

    // The copier catches up: a read_committed reader of DST ends up with every source record.
    let committed = eventually("the copy to complete", Duration::from_secs(120), || async {
        let d = client.describe_topic("dst").await.ok()?;
        let lso: i64 = d.partitions.iter().map(|p| p.last_stable_offset).sum();
        // Markers take offsets too: read once the stable part can hold every record.
        if lso < total as i64 {
            return None;
        }
        let got = try_read(&client, "dst", IsolationLevel::ReadCommitted, total).await?;
        (got.len() >= total).then_some(got)
    })
    .await;
    copier.start_kill().expect("stop the copier");
    let _ = copier.wait().await;

    // Each source record exactly once, with its key, value, headers and timestamp, in source
    // order per source partition (one DST partition per source partition).
    let mut seen: HashMap<(i64, i64), i64> = HashMap::new();
    let mut last: HashMap<i64, i64> = HashMap::new();
    for r in &committed {
        let (sp, so) = (header(r, "sluice.source.partition"), header(r, "sluice.source.offset"));
        assert_eq!(sp, r.partition as i64, "source partition {sp} copied into partition {}", r.partition);
        assert!(seen.insert((sp, so), r.offset).is_none(), "source {sp}:{so} copied twice");
        assert!(last.get(&sp).is_none_or(|l| *l < so), "source partition {sp} out of order at {so}");
        last.insert(sp, so);
        let i: u64 = text(&r.value).trim_start_matches('v').parse().expect("value v<i>");
        assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(r.timestamp_ms, base_ts + i as i64, "the source timestamp is kept");
        assert!(r.headers.iter().any(|(k, v)| k == "h" && &v[..] == b"x"), "the source headers are kept");
    }
    assert_eq!(seen.len(), total, "every source record copied");
    let sources = read(&client, "src", IsolationLevel::ReadUncommitted, total).await;
    for s in &sources {
        assert!(seen.contains_key(&(s.partition as i64, s.offset)), "source {}:{} missing", s.partition, s.offset);
    }
    // Transactions were aborted on the way (the paused copier's, killed copiers' open ones):
    // a read_uncommitted reader sees their records too, a read_committed one never did.
    let d = client.describe_topic("dst").await.unwrap();
    let hw: i64 = d.partitions.iter().map(|p| p.high_watermark).sum();
    let everything = read(&client, "dst", IsolationLevel::ReadUncommitted, hw as usize).await;
    eprintln!("{} committed records, {} read uncommitted (aborted ones included)", committed.len(), everything.len());
    assert!(
        everything.len() > committed.len(),
        "no aborted transaction was seen: the faults did not hit the copier mid-transaction"
    );
}
