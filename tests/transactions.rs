//! Transactions against a real etcd and real service processes: commit and abort across
//! partitions and topics, offsets in transactions, zombie fencing, a hung transaction aborted
//! at its timeout, and the KIP-890 case of a late retry from an ended transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{GroupMetadata, Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};
use sluice_proto::v1::{EndTxnRequest, IsolationLevel, TransactionState};
use sluice_tests::{client, cluster, eventually, text};
use tonic::Code;

/// Every value of `topic` (all partitions, from the start) a reader at `isolation` gets
/// within `wait` of quiet, sorted per partition by offset.
async fn values(client: &Client, topic: &str, isolation: IsolationLevel, wait: Duration) -> Vec<String> {
    let cfg = ConsumerConfig { isolation, ..ConsumerConfig::default() };
    let mut c = Consumer::assign(client.clone(), topic, &[], StartFrom::Earliest, cfg).await.expect("assign");
    let mut out = Vec::new();
    loop {
        let got = c.poll(wait).await.expect("poll");
        if got.is_empty() {
            break;
        }
        out.extend(got.iter().map(|r| text(&r.value)));
    }
    out.sort();
    out
}

fn record(topic: &str, partition: u32, value: &str) -> ProducerRecord {
    ProducerRecord {
        topic: topic.into(),
        partition: Some(partition),
        value: Some(Bytes::from(value.to_string())),
        ..Default::default()
    }
}

async fn send_all(p: &Producer, records: &[(&str, u32, &str)]) -> Vec<Result<i64, ClientError>> {
    let mut futs = Vec::new();
    for (t, part, v) in records {
        futs.push(p.send(record(t, *part, v)).await.expect("queued"));
    }
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await.expect("answered").map(|d| d.offset));
    }
    out
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_commit_abort_carry_offsets_and_fence_zombies() {
    let (_c, _dir) = cluster(3).await;
    let client = client(&_c).await;
    client.create_topic("ta", 2, 3, HashMap::new()).await.unwrap();
    client.create_topic("tb", 1, 3, HashMap::new()).await.unwrap();
    let cfg = ProducerConfig { linger: Duration::from_millis(1), ..ProducerConfig::default() };
    let p1 = Producer::transactional(client.clone(), "t1", cfg.clone()).await.expect("init");

    // Misuse is refused before anything is sent.
    let outside = send_all(&p1, &[("ta", 0, "outside")]).await;
    let e = outside[0].as_ref().expect_err("send outside a transaction");
    assert!(e.to_string().contains("begin_transaction"), "{e}");
    let e = p1.commit_transaction().await.expect_err("commit without begin");
    assert!(e.to_string().contains("commit without begin"), "{e}");

    // Commit, abort, commit, across two topics and three partitions.
    p1.begin_transaction().await.unwrap();
    assert!(p1.begin_transaction().await.is_err(), "one transaction at a time");
    let sent = send_all(&p1, &[("ta", 0, "c1-a0"), ("ta", 1, "c1-a1"), ("tb", 0, "c1-b0")]).await;
    assert!(sent.iter().all(|r| r.is_ok()), "{sent:?}");
    p1.commit_transaction().await.expect("commit");
    p1.begin_transaction().await.unwrap();
    send_all(&p1, &[("ta", 0, "x1-a0"), ("tb", 0, "x1-b0")]).await;
    p1.abort_transaction().await.expect("abort");
    p1.begin_transaction().await.unwrap();
    send_all(&p1, &[("ta", 1, "c2-a1")]).await;
    p1.commit_transaction().await.expect("commit");
    let quiet = Duration::from_millis(800);
    assert_eq!(values(&client, "ta", IsolationLevel::ReadCommitted, quiet).await, sorted(&["c1-a0", "c1-a1", "c2-a1"]));
    assert_eq!(values(&client, "tb", IsolationLevel::ReadCommitted, quiet).await, sorted(&["c1-b0"]));
    assert_eq!(
        values(&client, "tb", IsolationLevel::ReadUncommitted, quiet).await,
        sorted(&["c1-b0", "x1-b0"]),
        "a read_uncommitted reader sees the aborted record (and never a marker)"
    );
    let d = client.describe_transaction("t1").await.unwrap();
    assert_eq!((d.state, d.start_time_ms), (TransactionState::CompleteCommit as i32, 0));

    // Offsets in a transaction: pending (unstable) until it ends, dropped by an abort.
    let group = GroupMetadata { group_id: "tg".into(), ..GroupMetadata::default() };
    let offsets = |o: i64| BTreeMap::from([(("ta".to_string(), 0u32), o)]);
    p1.begin_transaction().await.unwrap();
    p1.send_offsets_to_transaction(&offsets(5), &group).await.expect("offsets in the transaction");
    let e = client.fetch_offsets_with("tg", None, true).await.expect_err("unstable while pending");
    assert_eq!((e.sluice_code(), e.is_retriable()), (6006, true), "{e}");
    assert!(client.fetch_offsets("tg", None).await.unwrap().is_empty(), "not committed yet");
    assert!(client.fetch_stable_offsets("tg", "ta", vec![1]).await.is_ok(), "another partition is stable");
    let e = client.fetch_stable_offsets("tg", "ta", vec![0, 1]).await.expect_err("partition 0 is not");
    assert_eq!(e.sluice_code(), 6006, "{e}");
    p1.abort_transaction().await.unwrap();
    assert!(client.fetch_offsets_with("tg", None, true).await.unwrap().is_empty(), "dropped by the abort");
    p1.begin_transaction().await.unwrap();
    send_all(&p1, &[("tb", 0, "c3-b0")]).await;
    p1.send_offsets_to_transaction(&offsets(7), &group).await.unwrap();
    p1.commit_transaction().await.unwrap();
    let committed = client.fetch_offsets_with("tg", None, true).await.unwrap();
    assert_eq!(committed.iter().map(|o| (o.topic.as_str(), o.partition, o.offset)).collect::<Vec<_>>(), [("ta", 0, 7)]);

    // Zombie fencing: a second producer with the same id aborts the first one's open
    // transaction and fences it.
    p1.begin_transaction().await.unwrap();
    let zombie = send_all(&p1, &[("ta", 0, "zombie-a0")]).await;
    assert!(zombie[0].is_ok(), "{zombie:?}");
    let p2 = Producer::transactional(client.clone(), "t1", cfg.clone()).await.expect("second producer");
    let e = p1.commit_transaction().await.expect_err("the older producer cannot commit");
    assert_eq!(e.sluice_code(), 6001, "{e}");
    assert!(e.to_string().contains("fenced"), "{e}");
    let e = p1.begin_transaction().await.expect_err("a fenced producer stays fenced");
    assert_eq!(e.sluice_code(), 6001, "{e}");
    p2.begin_transaction().await.unwrap();
    send_all(&p2, &[("ta", 0, "c4-a0")]).await;
    p2.commit_transaction().await.unwrap();
    let committed = values(&client, "ta", IsolationLevel::ReadCommitted, quiet).await;
    assert_eq!(committed, sorted(&["c1-a0", "c1-a1", "c2-a1", "c4-a0"]), "the zombie's record was aborted");

    // Unknown ids.
    let e = client.describe_transaction("nope").await.expect_err("unknown id");
    assert_eq!((e.code(), e.sluice_code()), (Some(Code::NotFound), 6004), "{e}");
    let listed = client.list_transactions().await.unwrap();
    assert_eq!(listed.iter().map(|t| t.transactional_id.as_str()).collect::<Vec<_>>(), ["t1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_transaction_is_aborted_at_its_timeout_and_a_late_retry_never_joins_the_next() {
    let (_c, _dir) = cluster(3).await;
    let client = client(&_c).await;
    client.create_topic("hung", 1, 3, HashMap::new()).await.unwrap();
    let cfg = ProducerConfig {
        linger: Duration::from_millis(1),
        transaction_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    };

    // A transaction left open holds the last stable offset, until its timeout aborts it.
    let hung = Producer::transactional(client.clone(), "hung-t", cfg.clone()).await.unwrap();
    hung.begin_transaction().await.unwrap();
    send_all(&hung, &[("hung", 0, "hung-1")]).await[0].as_ref().expect("written");
    let plain = Producer::new(client.clone(), ProducerConfig::default());
    send_all(&plain, &[("hung", 0, "after")]).await[0].as_ref().expect("written");
    let d = client.describe_topic("hung").await.unwrap();
    assert_eq!((d.partitions[0].high_watermark, d.partitions[0].last_stable_offset), (2, 0));
    let cfg_rc = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut reader = Consumer::assign(client.clone(), "hung", &[], StartFrom::Earliest, cfg_rc).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = reader.poll(Duration::from_millis(500)).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reader never moved past the hung transaction");
    };
    assert_eq!(got.iter().map(|r| text(&r.value)).collect::<Vec<_>>(), ["after"]);
    // Complete once every marker is written (the reader may see them before).
    eventually("the timed-out transaction complete", Duration::from_secs(10), || async {
        let d = client.describe_transaction("hung-t").await.ok()?;
        (d.state == TransactionState::CompleteAbort as i32).then_some(())
    })
    .await;
    // The producer learns it at its commit, aborts, and goes on.
    let e = hung.commit_transaction().await.expect_err("aborted by the coordinator");
    assert!(matches!(e, ClientError::MustAbort(_)), "{e:?}");
    assert!(e.to_string().contains("timeout"), "{e}");
    hung.abort_transaction().await.expect("abort after a timeout");
    hung.begin_transaction().await.unwrap();
    send_all(&hung, &[("hung", 0, "later")]).await[0].as_ref().expect("written");
    hung.commit_transaction().await.expect("the next transaction commits");

    // KIP-890: a batch of transaction N arriving late (a retry) while N+1 is open is refused:
    // N's end moved the producer to its next epoch, which N's markers carry.
    let (pid, epoch) = client.init_transactional_id("raw-t", Duration::from_secs(30)).await.unwrap();
    let batch = |epoch: i16, seq: i32, v: &str| sluice_tests::txn_batch(pid, epoch, seq, v);
    let produce = |data: Bytes| sluice_tests::produce_raw(&client, "hung", 0, data);
    assert_eq!(produce(batch(epoch, 0, "n-1")).await, None, "transaction N's first batch");
    let late = batch(epoch, 1, "n-late");
    let end = EndTxnRequest {
        transactional_id: "raw-t".into(),
        producer_id: pid,
        producer_epoch: epoch as i32,
        commit: true,
        keep_epoch: false,
    };
    let next = client.transactions().end_txn(end.clone()).await.unwrap().into_inner();
    assert_eq!((next.producer_id, next.producer_epoch), (pid, epoch as i32 + 1));
    let again = client.transactions().end_txn(end).await.expect("a repeated end").into_inner();
    assert_eq!(again, next, "a repeated end gets the same answer");
    assert_eq!(produce(batch(epoch + 1, 0, "n1-1")).await, None, "transaction N+1 opens");
    let refused = produce(late).await.expect("the late batch is refused");
    assert_eq!(refused.sluice_code, 2005, "{}", refused.message);
    let end = EndTxnRequest {
        transactional_id: "raw-t".into(),
        producer_id: pid,
        producer_epoch: epoch as i32 + 1,
        commit: true,
        keep_epoch: false,
    };
    client.transactions().end_txn(end).await.unwrap();
    let committed = values(&client, "hung", IsolationLevel::ReadCommitted, Duration::from_millis(800)).await;
    assert_eq!(committed, sorted(&["after", "later", "n-1", "n1-1"]));
}
