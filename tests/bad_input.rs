//! Bad input gets a precise status and a sentence naming the problem, and never hurts the
//! service or its data.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::batch::BatchBuilder;
use sluice_core::compression::Compression;
use sluice_proto::v1::*;
use sluice_tests::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn produce_one(client: &sluice_client::Client, req: ProduceRequest) -> ProduceResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req).await.unwrap();
    let mut s = client.broker().produce(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(20), s.message()).await.expect("answer in time").unwrap().unwrap()
}

fn plain(value: &[u8]) -> Record {
    Record {
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: vec![],
        timestamp_ms: 0,
        partition: Some(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_refuses_bad_requests_with_precise_codes() {
    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    let create = |name: &str, partitions: u32, config: &[(&str, &str)]| {
        let client = client.clone();
        let name = name.to_string();
        let config: HashMap<String, String> = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        async move {
            client.create_topic(&name, partitions, 1, config).await.map(|_| ()).map_err(|e| (e.code(), e.to_string()))
        }
    };
    let long = "x".repeat(250);
    for bad in ["", ".", "..", "a b", "a/b", "ünïcode", long.as_str()] {
        let (code, msg) = create(bad, 1, &[]).await.unwrap_err();
        assert_eq!(code, Some(Code::InvalidArgument), "{bad:?}: {msg}");
        assert!(msg.contains("invalid topic name"), "{msg}");
    }
    assert!(create(&"x".repeat(249), 1, &[]).await.is_ok());
    create("t", 2, &[]).await.unwrap();
    let (code, msg) = create("t", 2, &[]).await.unwrap_err();
    assert_eq!((code, msg.as_str()), (Some(Code::AlreadyExists), "topic 't' already exists"));
    let (code, msg) = create("zero", 0, &[]).await.unwrap_err();
    assert_eq!(code, Some(Code::InvalidArgument), "{msg}");
    let (code, msg) = create("huge", 100_000, &[]).await.unwrap_err();
    assert!(code == Some(Code::InvalidArgument) && msg.contains("maximum is 4096"), "{msg}");
    let (code, msg) = create("cfg", 1, &[("retention.mss", "1")]).await.unwrap_err();
    assert!(code == Some(Code::InvalidArgument) && msg.contains("unknown config key 'retention.mss'"), "{msg}");
    let (code, msg) = create("cfg", 1, &[("retention.ms", "soon")]).await.unwrap_err();
    assert!(code == Some(Code::InvalidArgument) && msg.contains("retention.ms=soon"), "{msg}");
    let e = client.create_topic("rf", 1, 3, HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("replication factor 3"), "{e}");
    let e = client.describe_topic("missing").await.unwrap_err();
    assert_eq!((e.code(), e.to_string()), (Some(Code::NotFound), "topic 'missing' does not exist".to_string()));
    let e = client.delete_topic("missing").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    // Nothing of the above left a trace.
    let names: Vec<String> =
        client.list_topics().await.unwrap().into_iter().map(|t| t.name).filter(|n| !n.starts_with("__")).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The internal offsets topic cannot be deleted.
    let e = client.delete_topic("__consumer_offsets").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("internal topic"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_refuse_bad_records_and_offsets() {
    let (c, _dir) = cluster(1).await;
    let client = client(&c).await;
    let cfg = HashMap::from([("max.message.bytes".to_string(), "2048".to_string())]);
    client.create_topic("small", 2, 1, cfg).await.unwrap();
    let base = ProduceRequest { id: 1, topic: "small".into(), acks: Acks::All as i32, ..Default::default() };

    let ok = produce_one(&client, ProduceRequest { records: vec![plain(b"fine")], ..base.clone() }).await;
    assert!(ok.error.is_none() && ok.partitions[0].error.is_none(), "{ok:?}");

    // A too-large record fails its partition; the answer lists every record routed there
    // (the one before it, it, the one after it), so the client knows all three failed.
    let records = vec![plain(b"before"), plain(&[7u8; 4000]), plain(b"after")];
    let big = produce_one(&client, ProduceRequest { records, ..base.clone() }).await;
    let e = big.partitions[0].error.clone().expect("too large");
    assert_eq!(Code::from_i32(e.code), Code::InvalidArgument);
    assert!(e.message.contains("max.message.bytes (2048 bytes)"), "{}", e.message);
    assert_eq!(big.partitions[0].record_indexes, vec![0, 1, 2]);
    assert_eq!(big.partitions[0].record_count, 3);

    let unknown =
        produce_one(&client, ProduceRequest { topic: "nope".into(), records: vec![plain(b"x")], ..base.clone() }).await;
    assert_eq!(Code::from_i32(unknown.error.expect("unknown topic").code), Code::NotFound);

    let bad_partition = Record { partition: Some(9), ..plain(b"x") };
    let r = produce_one(&client, ProduceRequest { records: vec![bad_partition], ..base.clone() }).await;
    let e = r.partitions[0].error.clone().expect("unknown partition");
    assert_eq!(Code::from_i32(e.code), Code::NotFound);
    assert!(e.message.contains("partition 9 of topic 'small' does not exist"), "{}", e.message);

    let mut b = BatchBuilder::new(Compression::None);
    b.push(1, None, Some(b"payload"), &[]);
    let mut corrupt = b.build().unwrap().to_vec();
    let n = corrupt.len();
    corrupt[n - 3] ^= 0x55;
    let batches = vec![PartitionBatches { partition: 1, data: Bytes::from(corrupt) }];
    let r = produce_one(&client, ProduceRequest { batches, ..base.clone() }).await;
    let e = r.partitions[0].error.clone().expect("corrupt batch");
    assert_eq!(Code::from_i32(e.code), Code::InvalidArgument);
    assert!(e.message.contains("CRC"), "{}", e.message);
    let garbage = vec![PartitionBatches {
        partition: 1,
        data: Bytes::from_static(b"not a batch at all, just bytes......................................"),
    }];
    let r = produce_one(&client, ProduceRequest { batches: garbage, ..base.clone() }).await;
    assert_eq!(Code::from_i32(r.partitions[0].error.clone().expect("garbage").code), Code::InvalidArgument);
    let empty = produce_one(&client, base.clone()).await;
    assert_eq!(Code::from_i32(empty.error.expect("empty request").code), Code::InvalidArgument);

    // Idempotent batches: a sequence gap (a producer unknown to the partition starts at 0)
    // and a stale epoch are refused with FAILED_PRECONDITION and their codes; nothing written.
    // Timestamped now: retention (7 days, checked every 200 ms here) would delete an older one.
    let now = sluice_core::settings::now_ms();
    let idem = |pid: i64, epoch: i16, seq: i32| {
        let mut b = BatchBuilder::new(Compression::None).producer(pid, epoch, seq);
        b.push(now, None, Some(b"idem"), &[]);
        vec![PartitionBatches { partition: 1, data: b.build().unwrap() }]
    };
    let (pid, _) =
        eventually("a producer id", Duration::from_secs(20), || async { client.init_producer_id().await.ok() }).await;
    let gap = produce_one(&client, ProduceRequest { batches: idem(pid, 0, 3), ..base.clone() }).await;
    let e = gap.partitions[0].error.clone().expect("gap refused");
    assert_eq!((Code::from_i32(e.code), e.sluice_code, e.retriable), (Code::FailedPrecondition, 2004, false));
    assert!(e.message.contains("expected sequence 0, got 3"), "{}", e.message);
    let first = produce_one(&client, ProduceRequest { batches: idem(pid, 1, 0), ..base.clone() }).await;
    assert!(first.partitions[0].error.is_none(), "{first:?}");
    let again = produce_one(&client, ProduceRequest { batches: idem(pid, 1, 0), ..base.clone() }).await;
    assert_eq!(again.partitions[0].base_offset, first.partitions[0].base_offset, "a retry gets the same offset");
    let stale = produce_one(&client, ProduceRequest { batches: idem(pid, 0, 1), ..base.clone() }).await;
    let e = stale.partitions[0].error.clone().expect("stale epoch refused");
    assert_eq!((Code::from_i32(e.code), e.sluice_code), (Code::FailedPrecondition, 2005));
    assert!(e.message.contains("older than its current epoch 1"), "{}", e.message);
    // A transactional batch of a producer id no transactional id owns, and a forged marker.
    let mut t = BatchBuilder::new(Compression::None).producer(pid, 1, 1).flags(sluice_core::batch::TRANSACTIONAL);
    t.push(now, None, Some(b"txn"), &[]);
    let batches = vec![PartitionBatches { partition: 1, data: t.build().unwrap() }];
    let r = produce_one(&client, ProduceRequest { batches, ..base.clone() }).await;
    let e = r.partitions[0].error.clone().expect("transactional batch refused");
    assert_eq!((Code::from_i32(e.code), e.sluice_code), (Code::FailedPrecondition, 6005));
    assert!(e.message.contains("belongs to no transactional id"), "{}", e.message);
    let marker = sluice_core::batch::marker_batch(pid, 1, sluice_core::batch::Marker::Commit, 0, 1).unwrap();
    let batches = vec![PartitionBatches { partition: 1, data: marker }];
    let r = produce_one(&client, ProduceRequest { batches, ..base.clone() }).await;
    let e = r.partitions[0].error.clone().expect("marker refused");
    assert_eq!(Code::from_i32(e.code), Code::InvalidArgument);

    // Fetch: out of range names the valid range; unknown partition is NOT_FOUND.
    let mut s = fetch_plain(&client, "small", 0, 50).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
    let e = resp.error.expect("out of range");
    assert_eq!(Code::from_i32(e.code), Code::OutOfRange);
    assert!(e.message.contains("valid offsets are 0 to 1"), "{}", e.message);
    let status = fetch_plain(&client, "small", 5, 0).await.expect_err("unknown partition");
    assert_eq!(status.code(), Code::NotFound);

    // The service is still up and nothing bad was stored: only "fine" and one "idem".
    let recs = consume_all(&client, "small", 2).await;
    let mut values: Vec<String> = recs.iter().map(|r| text(&r.value)).collect();
    values.sort();
    assert_eq!(values, vec!["fine", "idem"]);
    let d = client.describe_topic("small").await.unwrap();
    assert_eq!(d.partitions.iter().map(|p| p.log_end_offset).sum::<i64>(), 2);
    // No transaction is open: the last stable offset is the high watermark.
    assert!(d.partitions.iter().all(|p| p.last_stable_offset == p.high_watermark), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_answers_unavailable_and_retriable() {
    let (mut c, _dir) = cluster(2).await;
    let client = client(&c).await;
    let t = client.create_topic("spread", 2, 1, HashMap::new()).await.unwrap();
    let down = t.partitions[0].leader;
    c.kill("partition-node", down);
    let req = ProduceRequest {
        id: 7,
        topic: "spread".into(),
        acks: Acks::All as i32,
        records: vec![plain(b"x")],
        timeout_ms: 5_000,
        ..Default::default()
    };
    let r = produce_one(&client, req.clone()).await;
    let e = r.partitions[0].error.clone().expect("node down");
    assert_eq!(Code::from_i32(e.code), Code::Unavailable, "{}", e.message);
    assert!(e.retriable);
    let d = client.describe_topic("spread").await.unwrap();
    let e = d.partitions[0].error.clone().expect("describe reports the dead leader");
    assert_eq!(Code::from_i32(e.code), Code::Unavailable);

    // A request for the dead leader stays in flight until its timeout: a second request
    // under the same id is refused, once the first got its one answer, by ending the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let slow = ProduceRequest { id: 9, timeout_ms: 2_000, ..req.clone() };
    tx.send(slow.clone()).await.unwrap();
    tx.send(slow).await.unwrap();
    let mut s = client.broker().produce(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), s.message()).await.expect("in time").unwrap().unwrap();
    assert_eq!(first.id, 9);
    assert!(first.partitions[0].error.is_some(), "{first:?}");
    let refused = tokio::time::timeout(Duration::from_secs(20), s.message()).await.expect("in time").unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("id 9 is already in flight"), "{}", refused.message());
    assert_eq!(refused.metadata().get("sluice-code").and_then(|v| v.to_str().ok()), Some("1000"));
    drop(tx);

    // An unknown compression value is refused as a whole, before anything is sent.
    let bad = ProduceRequest { id: 10, compression: 42, ..req.clone() };
    let r = produce_one(&client, bad).await;
    let e = r.error.expect("unknown codec");
    assert_eq!(Code::from_i32(e.code), Code::InvalidArgument);
    assert!(e.message.contains("unknown compression value 42"), "{}", e.message);
}
