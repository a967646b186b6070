//! The core log end to end: real etcd, real partition nodes, a real gateway.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_core::partitioner::partition_for_key;
use sluice_proto::v1::{Acks, OffsetSpec};
use sluice_tests::*;

fn record(topic: &str, key: Option<String>, value: String) -> ProducerRecord {
    ProducerRecord {
        topic: topic.into(),
        key: key.map(Bytes::from),
        value: Some(Bytes::from(value)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_round_trip_in_order_and_stay_after_being_read() {
    let (c, _dir) = cluster(3).await;
    let client = client(&c).await;
    client.create_topic("orders", 6, 1, HashMap::new()).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig { max_in_flight: 1, ..Default::default() });
    let mut acks = Vec::new();
    for i in 0..3000 {
        let key = format!("user-{}", i % 50);
        acks.push((
            key.clone(),
            producer.send(record("orders", Some(key.clone()), format!("{key}#{i}"))).await.unwrap(),
        ));
    }
    producer.flush().await;
    for (key, a) in acks {
        let d = a.await.unwrap().unwrap();
        assert_eq!(
            d.partition,
            partition_for_key(key.as_bytes(), 6),
            "{key} must land where Kafka's partitioner puts it"
        );
    }

    let first = consume_all(&client, "orders", 3000).await;
    assert_eq!(first.len(), 3000);
    by_partition(&first);
    let mut seen: HashMap<String, (u32, i64)> = HashMap::new();
    for r in &first {
        let (key, v) = (text(&r.key), text(&r.value));
        let seq: i64 = v.rsplit('#').next().unwrap().parse().unwrap();
        if let Some((p, last)) = seen.get(&key) {
            assert_eq!(*p, r.partition, "{key} moved partitions");
            assert!(seq > *last, "{key}: {seq} came after {last}");
        }
        seen.insert(key, (r.partition, seq));
    }
    // A second, independent consumer reads the same records: consuming removes nothing.
    let second = consume_all(&client, "orders", 3000).await;
    let key = |r: &sluice_client::consumer::ConsumerRecord| (r.partition, r.offset, r.value.clone());
    let (mut a, mut b): (Vec<_>, Vec<_>) = (first.iter().map(key).collect(), second.iter().map(key).collect());
    a.sort();
    b.sort();
    assert!(a == b, "a second reader must see the same {} records (it saw {})", a.len(), b.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9_of_a_partition_node() {
    let seed = seed("kill_9");
    let (mut c, _dir) = cluster(3).await;
    let client = client(&c).await;
    client.create_topic("events", 6, 1, HashMap::new()).await.unwrap();
    let victim = 1 + seed % 3;
    let cfg = ProducerConfig {
        acks: Acks::All,
        delivery_timeout: Duration::from_secs(60),
        linger: Duration::from_millis(2),
        ..Default::default()
    };
    let producer = Producer::new(client.clone(), cfg);
    let mut pending = Vec::new();
    for i in 0..6000u32 {
        if i == 2000 {
            c.kill("partition-node", victim);
        }
        if i == 3000 {
            c.restart("partition-node", victim).await.unwrap();
        }
        // Round-robin over partitions so that the victim's partitions take writes throughout.
        let r = ProducerRecord { partition: Some(i % 6), ..record("events", None, format!("v{i}")) };
        pending.push((i, producer.send(r).await.unwrap()));
        if i % 250 == 249 && !(2000..3000).contains(&i) {
            // Let deliveries catch up so the kill lands in the middle of a flowing stream.
            producer.flush().await;
        }
    }
    producer.flush().await;
    let mut acked = HashSet::new();
    for (i, p) in pending {
        if let Ok(Ok(_)) = p.await {
            acked.insert(format!("v{i}"));
        }
    }
    assert!(acked.len() > 3000, "most records must be acknowledged, got {}", acked.len());
    let read = consume_all(&client, "events", acked.len()).await;
    by_partition(&read);
    let values: HashSet<String> = read.iter().map(|r| text(&r.value)).collect();
    let lost: Vec<_> = acked.difference(&values).take(5).collect();
    assert!(lost.is_empty(), "acknowledged records lost after kill -9 of node {victim}: {lost:?}");
    // Offsets continue densely after the restart.
    let d = client.describe_topic("events").await.unwrap();
    let total: i64 = d.partitions.iter().map(|p| p.log_end_offset).sum();
    assert_eq!(total as usize, read.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_records_and_keeps_new_ones() {
    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    let cfg = HashMap::from([("retention.ms".to_string(), "60000".to_string())]);
    client.create_topic("short", 1, 1, cfg).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let old = sluice_core::settings::now_ms() - 3_600_000;
    for i in 0..10 {
        let r = ProducerRecord { timestamp_ms: old + i, ..record("short", None, format!("old{i}")) };
        producer.send(r).await.unwrap();
    }
    producer.flush().await;
    for i in 0..10 {
        producer.send(record("short", None, format!("new{i}"))).await.unwrap();
    }
    producer.flush().await;
    eventually("retention to remove the old batch", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let d = client.describe_topic("short").await.ok()?;
            (d.partitions[0].log_start_offset == 10).then_some(())
        }
    })
    .await;
    let left = consume_all(&client, "short", 10).await;
    assert_eq!(
        left.iter().map(|r| text(&r.value)).collect::<Vec<_>>(),
        (0..10).map(|i| format!("new{i}")).collect::<Vec<_>>()
    );
    assert_eq!(left[0].offset, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    client.create_topic("timed", 1, 1, HashMap::new()).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig { linger: Duration::ZERO, ..Default::default() });
    // Recent enough that the default 7-day retention keeps them.
    let base = sluice_core::settings::now_ms() - 60_000;
    for i in 0..20 {
        let r = ProducerRecord { timestamp_ms: base + i * 1000, ..record("timed", None, format!("t{i}")) };
        producer.send(r).await.unwrap().await.unwrap().unwrap();
    }
    let o = client.list_offsets("timed", vec![0], OffsetSpec::Timestamp, base + 7_500).await.unwrap();
    assert_eq!((o[0].offset, o[0].timestamp_ms), (8, base + 8_000));
    let none = client.list_offsets("timed", vec![0], OffsetSpec::Timestamp, base + 99_000).await.unwrap();
    assert_eq!(none[0].offset, -1);
    assert_eq!(none[0].log_end_offset, 20);
    let mut consumer =
        Consumer::assign(client.clone(), "timed", &[0], StartFrom::Timestamp(base + 15_000), ConsumerConfig::default())
            .await
            .unwrap();
    let recs = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(text(&recs[0].value), "t15");
    let earliest = client.list_offsets("timed", vec![], OffsetSpec::Earliest, 0).await.unwrap();
    assert_eq!(earliest[0].offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_vanishes_from_the_metadata_and_comes_back() {
    let (mut c, _dir) = cluster(2).await;
    let client = client(&c).await;
    assert_eq!(client.list_nodes().await.unwrap().len(), 2);
    c.kill("partition-node", 2);
    eventually("the lease of node 2 to expire", Duration::from_secs(15), || {
        let client = client.clone();
        // Still listed (it holds replicas of the offsets topic), but not alive.
        async move { (client.list_nodes().await.ok()?.iter().filter(|n| n.alive).count() == 1).then_some(()) }
    })
    .await;
    c.restart("partition-node", 2).await.unwrap();
    c.wait_nodes(2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_come_back_as_plain_records_for_other_languages() {
    use sluice_core::compression::Compression;

    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    client.create_topic("packed", 1, 1, HashMap::new()).await.unwrap();
    let mut sent = Vec::new();
    for (i, codec) in
        [Compression::Lz4, Compression::Zstd, Compression::Gzip, Compression::None].into_iter().enumerate()
    {
        let producer = Producer::new(client.clone(), ProducerConfig { compression: codec, ..Default::default() });
        for j in 0..50 {
            let v = format!("{}-{j}-{}", codec.name(), "x".repeat(100));
            let r = ProducerRecord {
                headers: vec![("codec".to_string(), Bytes::from(codec.name()))],
                ..record("packed", Some(format!("k{i}")), v.clone())
            };
            producer.send(r).await.unwrap();
            sent.push(v);
        }
        producer.close().await;
    }
    // The gateway decodes stored batches into plain records when asked, from an offset inside
    // a batch. The reader closes its side after the start: it still gets what its credit
    // (1 MiB by default) covers, then the end of the stream.
    let mut s = fetch_plain(&client, "packed", 0, 10).await.unwrap();
    let mut got = Vec::new();
    while let Some(resp) =
        tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("records in time").unwrap()
    {
        assert!(resp.error.is_none(), "{:?}", resp.error);
        assert!(resp.batches.is_empty(), "plain records replace the batches");
        got.extend(resp.records);
    }
    assert_eq!(got[0].offset, 10);
    assert_eq!(got.iter().map(|r| text(&r.value)).collect::<Vec<_>>(), sent[10..].to_vec());
    assert!(got.iter().all(|r| r.headers.len() == 1 && r.headers[0].key == "codec"));
    assert_eq!(text(&got.last().unwrap().key), "k3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (c, _dir) = cluster(1).await;
    let expected = [
        (
            "gateway",
            vec![
                "sluice.v1.Admin",
                "sluice.v1.Broker",
                "sluice.v1.Connect",
                "sluice.v1.Groups",
                "sluice.v1.Sql",
                "sluice.v1.Transactions",
            ],
        ),
        ("partition-node", vec!["sluice.v1.PartitionNode"]),
        ("group-coordinator", vec!["sluice.v1.Groups", "sluice.v1.Transactions"]),
    ];
    for (role, services) in expected {
        let addr = &c.entry(role, 1).expect("process").addr;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(ch.clone());
        for s in &services {
            let r = health.check(HealthCheckRequest { service: s.to_string() }).await.unwrap();
            assert_eq!(r.get_ref().status, ServingStatus::Serving as i32, "{role} {s}");
        }
        let names = sluice_tests::advertised_services(addr).await;
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{role}: {names:?}");
        // Both reflection versions are there (v1alpha for Python's grpcio-reflection).
        for v in ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"] {
            assert!(names.iter().any(|n| n == v), "{role}: {names:?}");
        }
        // Exactly the Sluice services this process serves are described, so grpcurl can call them.
        let mut sluice: Vec<&str> = names.iter().map(String::as_str).filter(|n| n.starts_with("sluice.v1.")).collect();
        sluice.sort();
        assert_eq!(sluice, services, "{role}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_record_per_key() {
    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    let cfg = HashMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("delete.retention.ms".to_string(), "100".to_string()),
    ]);
    client.create_topic("profiles", 1, 1, cfg).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig { linger: Duration::ZERO, max_in_flight: 1, ..Default::default() },
    );
    // Ten rounds of updates for five keys, one batch each; key 4 ends with a tombstone.
    for round in 0..10 {
        for k in 0..5 {
            let value = if round == 9 && k == 4 { None } else { Some(Bytes::from(format!("user{k}-v{round}"))) };
            let r = ProducerRecord {
                topic: "profiles".into(),
                key: Some(Bytes::from(format!("user{k}"))),
                value,
                ..Default::default()
            };
            producer.send(r).await.unwrap().await.unwrap().unwrap();
        }
    }
    // A keyless record is refused on a compacted topic, with a sentence saying why.
    let keyless = producer.send(record("profiles", None, "x".into())).await.unwrap().await.unwrap();
    let e = keyless.expect_err("keyless record on a compacted topic");
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("every record needs a key"), "{e}");

    let latest = eventually("compaction to keep one record per key", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let recs = consume_all(&client, "profiles", 50).await;
            (recs.len() <= 5).then_some(recs)
        }
    })
    .await;
    let got: Vec<(String, String, i64)> = latest.iter().map(|r| (text(&r.key), text(&r.value), r.offset)).collect();
    // The newest batch (the head) is never compacted, so user4's tombstone is still there;
    // every other key keeps only its last value, at its original offset.
    assert_eq!(
        got,
        vec![
            ("user0".into(), "user0-v9".into(), 45),
            ("user1".into(), "user1-v9".into(), 46),
            ("user2".into(), "user2-v9".into(), 47),
            ("user3".into(), "user3-v9".into(), 48),
            ("user4".into(), String::new(), 49),
        ]
    );
    let d = client.describe_topic("profiles").await.unwrap();
    assert_eq!((d.partitions[0].log_start_offset, d.partitions[0].log_end_offset), (0, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_port_was_taken_starts_again_on_another() {
    // Between picking a free port and the service binding it, another process may take it
    // (this made whole test clusters fail to start now and then): the launcher notices the
    // service exit and starts it on a new port.
    let (mut c, _dir) = cluster(1).await;
    let old = c.entry("gateway", 1).expect("gateway").addr.clone();
    c.kill("gateway", 1);
    let squatter =
        eventually("the old port free", Duration::from_secs(10), || async { std::net::TcpListener::bind(&old).ok() })
            .await;
    c.restart("gateway", 1).await.expect("restarted elsewhere");
    let new = c.entry("gateway", 1).expect("gateway").addr.clone();
    assert_ne!(new, old);
    assert_eq!(c.gateway(), new);
    let client = sluice_client::Client::connect(&new).await.expect("the new gateway answers");
    client.list_topics().await.expect("served");
    drop(squatter);
}
