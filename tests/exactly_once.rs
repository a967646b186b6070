//! Exactly-once delivery, against a real etcd and real service processes: the idempotent
//! producer (on by default) writes every record once, in send order, through leader kills.
//!
//! Runs print their seed; `SLUICE_TEST_SEED` replays the same choices and `SLUICE_FAULT_SECS`
//! sets how long the fault loops run (12 s by default, longer in `scripts/faults.sh`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_tests::{client, cluster_with, consume_all, eventually, fault_secs, seed, text};

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
