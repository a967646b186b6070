//! The in-process cluster (`Cluster::builder()...in_process()`): every service in this test's
//! process over embedded metadata with leases the test controls. Replication, leader failover
//! and coordinator failover in a few seconds, with no process to start.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::{Acks, CommittedOffset};
use sluice_testkit::{Cluster, InProcessExt};
use sluice_tests::{consume_all, eventually, text};

async fn produce(client: &Client, topic: &str, from: usize, n: usize) {
    let p = Producer::new(
        client.clone(),
        ProducerConfig { acks: Acks::All, linger: Duration::from_millis(2), ..Default::default() },
    );
    let mut acks = Vec::new();
    for i in from..from + n {
        let r = ProducerRecord {
            topic: topic.into(),
            key: Some(Bytes::from(format!("k{}", i % 7))),
            value: Some(Bytes::from(format!("v{i}"))),
            ..Default::default()
        };
        acks.push(p.send(r).await.expect("queued"));
    }
    for a in acks {
        a.await.expect("answered").expect("acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_lease_expires_is_replaced_and_nothing_acknowledged_is_lost() {
    let c = Cluster::builder().nodes(3).coordinators(2).gateways(2).in_process().start().await.expect("cluster");
    let client = Client::connect(&c.gateways()).await.expect("gateway");
    client.create_topic("ip", 2, 3, HashMap::new()).await.expect("topic");
    produce(&client, "ip", 0, 300).await;
    // A consumer reading live through the failover, on one fetch stream.
    let mut live = Consumer::assign(client.clone(), "ip", &[], StartFrom::Earliest, ConsumerConfig::default())
        .await
        .expect("assign");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 300 {
        for r in live.poll(Duration::from_millis(500)).await.expect("poll") {
            seen.insert(text(&r.value));
        }
    }

    let d = client.describe_topic("ip").await.unwrap();
    let (leader, epoch) = (d.partitions[0].leader, d.partitions[0].leader_epoch);
    c.expire_node(leader);
    let d = eventually("a new leader", Duration::from_secs(10), || async {
        let d = client.describe_topic("ip").await.ok()?;
        (d.partitions[0].leader != leader && d.partitions[0].error.is_none()).then_some(d)
    })
    .await;
    assert!(d.partitions[0].leader_epoch > epoch);
    // The old leader still runs but cannot prove its lease: it acknowledges nothing.
    produce(&client, "ip", 300, 300).await;
    let got = consume_all(&client, "ip", 600).await;
    let mut values: Vec<String> = got.iter().map(|r| text(&r.value)).collect();
    values.sort();
    let mut want: Vec<String> = (0..600).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(values, want, "every acknowledged record, once");
    // The live stream followed the partition to its new leader (read from the leader the
    // metadata names now, not the one it named when the stream opened).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 600 && tokio::time::Instant::now() < deadline {
        for r in live.poll(Duration::from_millis(500)).await.expect("poll") {
            seen.insert(text(&r.value));
        }
    }
    assert_eq!(seen.len(), 600, "the live consumer saw every record");

    // Back with its lease, it follows and rejoins the in-sync set.
    c.revive_node(leader);
    eventually("the returning node back in sync", Duration::from_secs(20), || async {
        let d = client.describe_topic("ip").await.ok()?;
        d.partitions.iter().all(|p| p.isr.len() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_coordinator_takes_over_when_the_active_ones_lease_expires() {
    let c = Cluster::builder().nodes(3).coordinators(2).in_process().start().await.expect("cluster");
    let client = Client::connect(c.gateway()).await.expect("gateway");
    client.create_topic("offs", 3, 3, HashMap::new()).await.expect("topic");
    produce(&client, "offs", 0, 30).await;
    let committed: Vec<CommittedOffset> = (0..3)
        .map(|p| CommittedOffset { topic: "offs".into(), partition: p, offset: 5 + p as i64, ..Default::default() })
        .collect();
    eventually("a commit", Duration::from_secs(10), || async {
        client.commit_offsets("ipg", committed.clone()).await.ok()
    })
    .await;
    let before = c.view().coordinator.clone().expect("a coordinator");
    let expired = c.expire_active_coordinator().expect("an active coordinator");
    assert_eq!(expired, before.addr);
    let after = eventually("another coordinator", Duration::from_secs(10), || async {
        c.view().coordinator.clone().filter(|a| a.addr != before.addr)
    })
    .await;
    assert!(after.epoch > before.epoch);
    let got = eventually("the offsets, from the new coordinator", Duration::from_secs(10), || async {
        client.fetch_offsets("ipg", Some("offs")).await.ok().filter(|o| o.len() == 3)
    })
    .await;
    let mut got: Vec<(u32, i64)> = got.iter().map(|o| (o.partition, o.offset)).collect();
    got.sort();
    assert_eq!(got, vec![(0, 5), (1, 6), (2, 7)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_tailing_an_in_process_node_under_load_keeps_up() {
    // In process, the node reads its credit only between sends: the fetch's credit must never
    // wait for room behind the node's data (it once did, and both stopped for good).
    // One coordinator: it gives the (idempotent) producer its id.
    let c = Cluster::builder().nodes(1).coordinators(1).in_process().start().await.expect("cluster");
    let client = Client::connect(c.gateway()).await.expect("gateway");
    client.create_topic("tail", 1, 1, HashMap::new()).await.expect("topic");
    let cfg = ConsumerConfig { max_buffer_bytes: 64 << 10, ..ConsumerConfig::default() };
    // The new partition's leader may not have taken up its leadership yet.
    let mut tail = eventually("the partition served", Duration::from_secs(10), || async {
        Consumer::assign(client.clone(), "tail", &[], StartFrom::Earliest, cfg.clone()).await.ok()
    })
    .await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for round in 0..100 {
                produce(&client, "tail", round * 30, 30).await;
            }
        })
    };
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen < 3000 {
        assert!(tokio::time::Instant::now() < deadline, "stalled after {seen} of 3000 records");
        seen += tail.poll(Duration::from_millis(200)).await.expect("poll").len();
    }
    writer.await.expect("writer");
    assert_eq!(seen, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_producers_batches_held_by_a_leader_change_land_in_order() {
    use sluice_proto::v1::{PartitionBatches, ProduceRequest};
    use tokio_stream::StreamExt;
    let c = Cluster::builder().nodes(1).coordinators(1).in_process().start().await.expect("cluster");
    let client = Client::connect(c.gateway()).await.expect("gateway");
    client.create_topic("ord", 1, 1, HashMap::new()).await.expect("topic");
    let (pid, epoch) =
        eventually("a producer id", Duration::from_secs(10), || async { client.init_producer_id().await.ok() }).await;
    let batch = |seq: i32| {
        let mut b = sluice_core::batch::BatchBuilder::new(sluice_core::compression::Compression::None)
            .producer(pid, epoch, seq);
        b.push(1, None, Some(format!("r{seq}").as_bytes()), &[]);
        b.build().unwrap()
    };
    // The partition's only replica loses its lease: every batch below is certainly not
    // written and waits in the router for a leader, then all are sent again at once.
    eventually("the partition served", Duration::from_secs(10), || async {
        let d = client.describe_topic("ord").await.ok()?;
        d.partitions[0].error.is_none().then_some(())
    })
    .await;
    c.expire_node(1);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut answers =
        client.broker().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for seq in 0..8 {
        let req = ProduceRequest {
            id: seq as u64,
            topic: "ord".into(),
            batches: vec![PartitionBatches { partition: 0, data: batch(seq) }],
            timeout_ms: 20_000,
            ..Default::default()
        };
        tx.send(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.revive_node(1);
    let mut offsets = std::collections::BTreeMap::new();
    while offsets.len() < 8 {
        let r = tokio::time::timeout(Duration::from_secs(30), answers.next()).await.expect("answer").unwrap().unwrap();
        let p = &r.partitions[0];
        assert!(p.error.is_none(), "request {}: {:?}", r.id, p.error);
        offsets.insert(r.id, p.base_offset);
    }
    // Each batch written once, in sequence order.
    assert_eq!(offsets.values().copied().collect::<Vec<_>>(), (0..8).collect::<Vec<i64>>());
    let got = consume_all(&client, "ord", 8).await;
    assert_eq!(
        got.iter().map(|r| text(&r.value)).collect::<Vec<_>>(),
        (0..8).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_refused_for_itself_does_not_block_the_idempotent_producers_later_ones() {
    let c = Cluster::builder().nodes(1).coordinators(1).in_process().start().await.expect("cluster");
    let client = Client::connect(c.gateway()).await.expect("gateway");
    let cfg = HashMap::from([("max.message.bytes".to_string(), "2048".to_string())]);
    client.create_topic("mixed", 1, 1, cfg).await.expect("topic");
    // One record per batch: the too-large one is refused by the leader, after the batch
    // before it and ahead of the ones after it, which must not stay stuck behind the gap.
    let cfg = ProducerConfig { batch_bytes: 1, linger: Duration::from_millis(1), ..ProducerConfig::default() };
    let p = Producer::new(client.clone(), cfg);
    let values: Vec<Vec<u8>> =
        vec![b"a".to_vec(), vec![b'x'; 5000], b"b".to_vec(), b"c".to_vec(), vec![b'y'; 5000], b"d".to_vec()];
    let mut acks = Vec::new();
    for v in &values {
        let r = ProducerRecord { topic: "mixed".into(), value: Some(Bytes::from(v.clone())), ..Default::default() };
        acks.push(p.send(r).await.expect("queued"));
    }
    let mut outcomes = Vec::new();
    for a in acks {
        outcomes
            .push(tokio::time::timeout(Duration::from_secs(30), a).await.expect("answered in time").expect("answer"));
    }
    let ok: Vec<bool> = outcomes.iter().map(|o| o.is_ok()).collect();
    assert_eq!(ok, vec![true, false, true, true, false, true], "{outcomes:?}");
    let got = consume_all(&client, "mixed", 4).await;
    assert_eq!(got.iter().map(|r| text(&r.value)).collect::<Vec<_>>(), vec!["a", "b", "c", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_committed_readers_stop_at_open_transactions_and_never_see_aborted_records() {
    use sluice_core::batch::{BatchBuilder, Marker, TRANSACTIONAL};
    use sluice_core::compression::Compression;
    use sluice_proto::v1::fetch_request::Kind;
    use sluice_proto::v1::{FetchRequest, FetchStart, IsolationLevel, PartitionRef};
    let c = Cluster::builder().nodes(1).coordinators(1).in_process().start().await.expect("cluster");
    let client = Client::connect(c.gateway()).await.expect("gateway");
    client.create_topic("rc", 1, 1, HashMap::new()).await.expect("topic");
    produce(&client, "rc", 0, 1).await; // v0, once the partition is served
    // Written straight into the leader's log (as the coordinator verified them), to control
    // exactly where the open transactions lie.
    let node = c.node(1).expect("node").clone();
    let r = PartitionRef { topic: "rc".into(), partition: 0, ..Default::default() };
    let served = node.leader(&r, None).expect("leader");
    let txn = |pid: i64, v: &str| {
        let mut b = BatchBuilder::new(Compression::None).producer(pid, 0, 0).flags(TRANSACTIONAL);
        b.push(sluice_core::settings::now_ms(), None, Some(v.as_bytes()), &[]);
        b.build().unwrap()
    };
    let (a, b) = (txn(5, "committed"), txn(6, "aborted"));
    let cfg = sluice_core::topic::TopicConfig::default();
    let epoch = served.epoch as i32;
    served
        .log()
        .with_log(move |log| {
            log.append_verified(&a, &cfg, 0, epoch, Some((5, 0))).unwrap();
            log.append_verified(&b, &cfg, 0, epoch, Some((6, 0))).unwrap();
        })
        .await
        .unwrap();
    produce(&client, "rc", 1, 1).await; // v1, after both: the high watermark moves past them
    let d = client.describe_topic("rc").await.unwrap();
    assert_eq!((d.partitions[0].high_watermark, d.partitions[0].last_stable_offset), (4, 1));
    let latest = |level: IsolationLevel| {
        let client = client.clone();
        async move {
            let req = sluice_proto::v1::ListOffsetsRequest {
                topic: "rc".into(),
                isolation_level: level as i32,
                ..Default::default()
            };
            client.admin().list_offsets(req).await.unwrap().into_inner().offsets[0].offset
        }
    };
    assert_eq!((latest(IsolationLevel::ReadUncommitted).await, latest(IsolationLevel::ReadCommitted).await), (4, 1));

    let committed = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut rc = Consumer::assign(client.clone(), "rc", &[], StartFrom::Earliest, committed).await.expect("assign");
    let first: Vec<String> =
        rc.poll(Duration::from_millis(500)).await.unwrap().iter().map(|r| text(&r.value)).collect();
    assert_eq!(first, vec!["v0"], "nothing at or after the open transactions' start");

    served
        .log()
        .with_log(move |log| {
            log.append_marker(&sluice_storage::MarkerSpec::new(5, 1, Marker::Commit, 0), 0, epoch).unwrap();
            log.append_marker(&sluice_storage::MarkerSpec::new(6, 1, Marker::Abort, 0), 0, epoch).unwrap();
        })
        .await
        .unwrap();
    produce(&client, "rc", 2, 1).await; // v2
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let got = rc.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!got.is_empty(), "read_committed reader moved on: {rest:?}");
        rest.extend(got.iter().map(|r| text(&r.value)));
    }
    assert_eq!(rest, vec!["committed", "v1", "v2"]);
    let d = client.describe_topic("rc").await.unwrap();
    assert_eq!(d.partitions[0].last_stable_offset, d.partitions[0].high_watermark);

    // read_uncommitted sees the aborted record too; nobody ever sees a marker.
    let all: Vec<String> = consume_all(&client, "rc", 5).await.iter().map(|r| text(&r.value)).collect();
    assert_eq!(all, vec!["v0", "committed", "aborted", "v1", "v2"]);
    // The plain-records fetch (other languages) filters on the server.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let start = FetchStart {
        topic: "rc".into(),
        plain_records: true,
        isolation_level: IsolationLevel::ReadCommitted as i32,
        ..Default::default()
    };
    tx.send(FetchRequest { kind: Some(Kind::Start(start)) }).await.unwrap();
    drop(tx);
    let mut s = client.broker().fetch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut plain = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_secs(5), tokio_stream::StreamExt::next(&mut s)).await
    {
        plain.extend(
            m.records.iter().map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()),
        );
    }
    assert_eq!(plain, vec!["v0", "committed", "v1", "v2"]);
}
