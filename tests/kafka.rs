//! The Kafka wire protocol, driven by real Kafka clients against the Kafka listener of a
//! `sluice dev` process: kcat and confluent-kafka (librdkafka), kafka-python, and Kafka's own
//! Java client (clients/java). Each reads what Sluice's own client wrote or the other way
//! round; groups rebalance, transactions commit and abort, bad frames close the connection.
//! scripts/ensure-deps.sh installs the clients.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::Client;
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_tests::{consume_all, eventually, text};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// A `sluice dev` process with its gRPC and Kafka addresses.
struct Dev {
    child: Child,
    grpc: String,
    kafka: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn dev() -> Dev {
    dev_with(&[]).await
}

/// [`dev`] with extra environment (`SLUICE_*` settings).
async fn dev_with(env: &[(&str, &str)]) -> Dev {
    let dir = tempfile::tempdir().expect("temp dir");
    let grpc = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let kafka = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let data = dir.path().join("data");
    let child = Command::new(sluice_testkit::binary("sluice").expect("sluice binary"))
        .args(["dev", "--listen", &grpc, "--kafka-listen", &kafka, "--data-dir"])
        .arg(&data)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice dev");
    let d = Dev { child, grpc, kafka, _dir: dir };
    eventually("sluice dev to serve", Duration::from_secs(30), || async {
        let c = Client::connect(&d.grpc).await.ok()?;
        c.list_topics().await.ok()
    })
    .await;
    d
}

/// Runs kcat with `args` against `broker`, feeding `stdin`; its stdout, or a panic with its
/// stderr.
async fn kcat(broker: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("kcat")
        .args(["-b", broker])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kcat (scripts/ensure-deps.sh installs it)");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("kcat stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kcat finished in time")
        .expect("kcat output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kcat {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_lists_produces_and_consumes_through_the_kafka_listener() {
    let d = dev().await;
    let client = Client::connect(&d.grpc).await.unwrap();
    client.create_topic("kt", 3, 1, HashMap::new()).await.unwrap();

    let listing = kcat(&d.kafka, &["-L", "-t", "kt"], "").await;
    assert!(listing.contains("topic \"kt\" with 3 partitions"), "{listing}");
    // The gateway is the broker, its node id a hash of its address.
    let node = sluice_gateway::kafka::node_id(&d.kafka);
    assert!(listing.contains(&format!("broker {node} at {}", d.kafka)), "{listing}");

    // Keys go where the Java client's partitioner (murmur2) puts them.
    let input: String = (0..30).map(|i| format!("key-{i}:value-{i}\n")).collect();
    kcat(&d.kafka, &["-P", "-t", "kt", "-K:", "-X", "topic.partitioner=murmur2_random"], &input).await;
    let records = consume_all(&client, "kt", 30).await;
    assert_eq!(records.len(), 30);
    for r in &records {
        let key = r.key.clone().expect("keyed");
        let value = text(&r.value);
        assert_eq!(value.replace("value", "key").as_bytes(), &key[..], "key and value of one line");
        assert_eq!(r.partition, sluice_core::partitioner::partition_for_key(&key, 3), "{value}");
    }

    // An idempotent librdkafka producer: its producer id comes from Sluice's coordinator.
    let input: String = (0..10).map(|i| format!("idem-{i}\n")).collect();
    kcat(&d.kafka, &["-P", "-t", "kt", "-p", "2", "-X", "enable.idempotence=true"], &input).await;
    let all = consume_all(&client, "kt", 40).await;
    let idem: Vec<String> =
        all.iter().filter(|r| r.partition == 2).map(|r| text(&r.value)).filter(|v| v.starts_with("idem-")).collect();
    assert_eq!(idem, (0..10).map(|i| format!("idem-{i}")).collect::<Vec<_>>(), "once each, in order");

    // What Sluice's client wrote, headers and timestamps included, read by kcat.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    // Recent timestamps, each its own (retention would delete old ones).
    let ts0 = sluice_core::settings::now_ms() - 10_000;
    let mut futs = Vec::new();
    for i in 0..5 {
        let r = ProducerRecord {
            topic: "kt".into(),
            partition: Some(1),
            key: Some(Bytes::from(format!("g{i}"))),
            value: Some(Bytes::from(format!("grpc-{i}"))),
            headers: vec![("h".into(), Bytes::from(format!("x{i}")))],
            timestamp_ms: ts0 + i,
        };
        futs.push(producer.send(r).await.unwrap());
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let before: usize = records.iter().filter(|r| r.partition == 1).count();
    let out =
        kcat(&d.kafka, &["-C", "-t", "kt", "-p", "1", "-o", "beginning", "-e", "-f", "%o|%k|%s|%T|%h\n"], "").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), before + 5, "{out}");
    for (i, line) in lines[before..].iter().enumerate() {
        let o = before + i;
        assert_eq!(*line, format!("{o}|g{i}|grpc-{i}|{}|h=x{i}", ts0 + i as i64), "{out}");
    }
    // With a per-partition fetch limit smaller than any chunk: each fetch brings one chunk
    // per partition, and the reader still gets everything, in order.
    let small = kcat(
        &d.kafka,
        &[
            "-C",
            "-t",
            "kt",
            "-p",
            "1",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s|%T|%h\n",
            "-X",
            "fetch.message.max.bytes=64",
        ],
        "",
    )
    .await;
    assert_eq!(small, out, "the same records through small fetches");
    // From an offset.
    let out = kcat(&d.kafka, &["-C", "-t", "kt", "-p", "1", "-o", &before.to_string(), "-e", "-f", "%s\n"], "").await;
    assert_eq!(out.lines().collect::<Vec<_>>(), (0..5).map(|i| format!("grpc-{i}")).collect::<Vec<_>>());

    // Partitions added over gRPC reach Kafka clients: metadata, then produce and read.
    let grown = client.create_partitions("kt", 5).await.unwrap();
    assert_eq!(grown.partitions.len(), 5);
    let e = client.create_partitions("kt", 4).await.unwrap_err();
    assert!(e.to_string().contains("can only be added"), "{e}");
    let listing = kcat(&d.kafka, &["-L", "-t", "kt"], "").await;
    assert!(listing.contains("topic \"kt\" with 5 partitions"), "{listing}");
    kcat(&d.kafka, &["-P", "-t", "kt", "-p", "4"], "new-partition\n").await;
    let out = kcat(&d.kafka, &["-C", "-t", "kt", "-p", "4", "-o", "beginning", "-e", "-f", "%s\n"], "").await;
    assert_eq!(out.trim(), "new-partition");

    // As a group member: everything once, offsets committed on the way out, so that the next
    // member of the group starts where it stopped.
    let group = || {
        kcat(&d.kafka, &["-G", "kcat-group", "kt", "-e", "-X", "auto.offset.reset=earliest", "-f", "%p|%o|%s\n"], "")
    };
    let first: Vec<String> = group().await.lines().map(str::to_string).collect();
    assert_eq!(first.len(), 46, "{first:?}");
    let described = client.describe_group("kcat-group").await.unwrap();
    let committed: i64 = described.partitions.iter().map(|p| p.committed.max(0)).sum();
    assert_eq!(committed, 46, "{described:?}");
    kcat(&d.kafka, &["-P", "-t", "kt", "-p", "0"], "after\n").await;
    let again = group().await;
    assert_eq!(again.trim(), format!("0|{}|after", first.iter().filter(|l| l.starts_with("0|")).count()));
}

/// Runs `clients/python/{script}` with `args` in the project's venv (scripts/ensure-deps.sh
/// makes it), within `limit`; the one JSON line it prints.
async fn python(script: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".tools/venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/ensure-deps.sh", python.display());
    let run = Command::new(&python)
        .arg(script)
        .args(args)
        .current_dir(root.join("clients/python"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} ran past {limit:?}"))
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// Sends `bytes` on a fresh connection, ends its side, and reads what comes back until the
/// listener closes the connection (which it must do within 5 s).
async fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    s.shutdown().await.expect("end our side");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the listener closes the connection")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_the_listener_carries_on() {
    let d = dev().await;
    // ApiVersions at a version not served: UNSUPPORTED_VERSION (35), answered at version 0.
    let mut v99 = vec![0, 0, 0, 11];
    v99.extend_from_slice(&[0, 18, 0, 99, 0, 0, 0, 7, 0xff, 0xff, 0]);
    let mut s = tokio::net::TcpStream::connect(&d.kafka).await.unwrap();
    s.write_all(&v99).await.unwrap();
    let mut head = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_exact(&mut s, &mut head))
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(&head[4..8], &7i32.to_be_bytes(), "its correlation id");
    assert_eq!(&head[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    drop(s);
    // FindCoordinator v1 for group "g": this gateway (its node id and Kafka port).
    let mut fc = vec![0, 0, 0, 14];
    fc.extend_from_slice(&[0, 10, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0, 1, b'g', 0]);
    let mut s = tokio::net::TcpStream::connect(&d.kafka).await.unwrap();
    s.write_all(&fc).await.unwrap();
    let port: i32 = d.kafka.rsplit_once(':').unwrap().1.parse().unwrap();
    let host = b"127.0.0.1";
    let mut answer = vec![0u8; 4 + 4 + 4 + 2 + 2 + 4 + 2 + host.len() + 4];
    tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_exact(&mut s, &mut answer))
        .await
        .expect("answered in time")
        .expect("an answer");
    let mut expected = Vec::new();
    expected.extend_from_slice(&((answer.len() - 4) as i32).to_be_bytes());
    expected.extend_from_slice(&9i32.to_be_bytes()); // correlation id
    expected.extend_from_slice(&0i32.to_be_bytes()); // throttle time
    expected.extend_from_slice(&0i16.to_be_bytes()); // no error
    expected.extend_from_slice(&(-1i16).to_be_bytes()); // no error message
    expected.extend_from_slice(&sluice_gateway::kafka::node_id(&d.kafka).to_be_bytes());
    expected.extend_from_slice(&(host.len() as i16).to_be_bytes());
    expected.extend_from_slice(host);
    expected.extend_from_slice(&port.to_be_bytes());
    assert_eq!(answer, expected, "FindCoordinator v1");
    drop(s);
    // An unknown API key, a frame larger than the limit, a negative length, garbage cut short:
    // the connection is closed, nothing is answered.
    assert!(raw(&d.kafka, &[0, 0, 0, 8, 3, 231, 0, 0, 0, 0, 0, 1]).await.is_empty(), "unknown api key");
    assert!(raw(&d.kafka, &[0x0c, 0, 0, 0, 1, 2, 3]).await.is_empty(), "200 MiB frame");
    assert!(raw(&d.kafka, &[0xff, 0xff, 0xff, 0xff]).await.is_empty(), "negative length");
    assert!(raw(&d.kafka, &[0, 0, 0, 40, 0, 3, 0, 12, 1, 2]).await.is_empty(), "truncated");
    assert!(raw(&d.kafka, &[0, 0, 0, 9, 0, 3, 0, 12, 0, 0, 0, 1, 9]).await.is_empty(), "undecodable metadata");
    // Element counts of billions in tiny frames: refused as undecodable, nothing allocated
    // for them (the decoder once reserved room for the count it read, and the failed
    // allocation aborted the gateway).
    let huge_array = [0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 2, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff];
    assert!(raw(&d.kafka, &huge_array).await.is_empty(), "metadata v1 naming 2^31-1 topics");
    let huge_compact = [0, 0, 0, 16, 0, 3, 0, 9, 0, 0, 0, 3, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(raw(&d.kafka, &huge_compact).await.is_empty(), "metadata v9 naming 2^32-2 topics");
    // Still serving.
    let listing = kcat(&d.kafka, &["-L"], "").await;
    assert!(listing.contains(" 1 brokers:"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_and_idle_ones_are_closed() {
    use tokio::io::AsyncReadExt;
    let d =
        dev_with(&[("SLUICE_GATEWAY__KAFKA_MAX_CONNECTIONS", "2"), ("SLUICE_GATEWAY__KAFKA_IDLE_TIMEOUT_MS", "1500")])
            .await;
    let open = || tokio::net::TcpStream::connect(&d.kafka);
    let (mut a, _b) = (open().await.unwrap(), open().await.unwrap());
    // A third is closed at once: it reads the end of the stream.
    let mut c = open().await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "the connection over the limit is closed: {n:?}");
    // The first two sit idle, then are closed too.
    let started = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), a.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(1000), "not before its idle timeout");
    // Their slots are free again: a client gets served.
    let listing = kcat(&d.kafka, &["-L"], "").await;
    assert!(listing.contains(" 1 brokers:"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_admin_and_an_idempotent_lz4_producer_from_python() {
    let d = dev().await;
    let done = python("kafka_check.py", &[&d.kafka], Duration::from_secs(90)).await;
    assert_eq!(done["again"], "TOPIC_ALREADY_EXISTS", "{done}");
    assert_eq!(done["py-admin"], "deleted", "{done}");
    assert_eq!(done["retention.ms"], "604800000", "the default: {done}");
    assert_eq!(done["cleanup.policy"], "delete", "{done}");
    assert_eq!(done["brokers"], 1, "{done}");

    let client = Client::connect(&d.grpc).await.unwrap();
    let names: Vec<String> = client.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"py".to_string()) && !names.contains(&"py-admin".to_string()), "{names:?}");
    let records = consume_all(&client, "py", 200).await;
    assert_eq!(records.len(), 200);
    let mut last: HashMap<u32, i64> = HashMap::new();
    for r in &records {
        let key = r.key.clone().expect("keyed");
        let i: i64 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
        assert_eq!(text(&r.value), format!("v{i}-{}", "x".repeat(300)));
        assert_eq!(r.headers, vec![("n".to_string(), Bytes::from(i.to_string()))]);
        assert_eq!(r.partition, sluice_core::partitioner::partition_for_key(&key, 4), "k{i}");
        assert!(last.get(&r.partition).is_none_or(|l| *l < i), "partition {} in send order", r.partition);
        last.insert(r.partition, i);
    }
    // Pipelined single-record requests on one connection keep their send order.
    assert_eq!(done["pipelined"], 300, "{done}");
    let ordered: Vec<String> = consume_all(&client, "py-order", 300).await.iter().map(|r| text(&r.value)).collect();
    assert_eq!(ordered, (0..300).map(|i| format!("o{i}")).collect::<Vec<_>>());
    // Stored as the client compressed it.
    let mut s = client
        .broker()
        .fetch(tokio_stream::iter([sluice_proto::v1::FetchRequest {
            kind: Some(sluice_proto::v1::fetch_request::Kind::Start(sluice_proto::v1::FetchStart {
                topic: "py".into(),
                partitions: vec![sluice_proto::v1::FetchPartition { partition: records[0].partition, offset: 0 }],
                ..Default::default()
            })),
        }]))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
    let h = sluice_core::batch::BatchHeader::parse(&resp.batches).expect("a stored batch");
    assert_eq!(h.attributes & 0x07, 3, "lz4, as produced");
    assert!(h.has_producer(), "an idempotent producer's batch");

    // Snappy both ways: librdkafka's raw blocks read by Sluice's client, and Sluice's
    // (the Java client's framing) read by librdkafka.
    assert_eq!(done["snappy"], 100, "{done}");
    // The topic grew to 3 partitions (CreatePartitions); a shrink was refused.
    assert_eq!(done["grown"], 3, "{done}");
    assert_eq!(done["shrink"], "INVALID_PARTITIONS", "{done}");
    let snappy = consume_all(&client, "py-snappy", 101).await;
    let (grown, snappy): (Vec<_>, Vec<_>) = snappy.into_iter().partition(|r| r.partition == 2);
    assert_eq!(grown.iter().map(|r| text(&r.value)).collect::<Vec<_>>(), vec!["in-new-partition"]);
    let values: Vec<String> = snappy.iter().map(|r| text(&r.value)).collect();
    assert_eq!(values, (0..100).map(|i| format!("snappy-{i}-{}", "y".repeat(200))).collect::<Vec<_>>());
    let cfg = ProducerConfig { compression: sluice_core::compression::Compression::Snappy, ..Default::default() };
    let producer = Producer::new(client.clone(), cfg);
    let now = sluice_core::settings::now_ms();
    let mut futs = Vec::new();
    for i in 0..5 {
        let value = Bytes::from(format!("from-grpc-{i}-{}", "z".repeat(100)));
        let r = ProducerRecord {
            topic: "py-snappy".into(),
            partition: Some(0),
            value: Some(value),
            timestamp_ms: now,
            ..Default::default()
        };
        futs.push(producer.send(r).await.unwrap());
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let out = kcat(&d.kafka, &["-C", "-t", "py-snappy", "-p", "0", "-o", "100", "-e", "-f", "%s\n"], "").await;
    let expected: Vec<String> = (0..5).map(|i| format!("from-grpc-{i}-{}", "z".repeat(100))).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_group_of_two_splits_partitions_and_rebalances_when_one_leaves() {
    // Consumer-protocol members heartbeat every half second, so rebalances take that long.
    let d = dev_with(&[("SLUICE_GROUPS__CONSUMER_HEARTBEAT_INTERVAL_MS", "500")]).await;
    // Eager (range) and incremental (cooperative-sticky) rebalancing: the coordinator runs the
    // same join and sync phases, the clients differ in what they give up. Then KIP-848's
    // consumer protocol: the coordinator assigns, as it does for Sluice's stream members.
    for strategy in ["range", "cooperative-sticky", "consumer"] {
        let done = python("kafka_group_check.py", &[&d.kafka, strategy], Duration::from_secs(90)).await;
        assert_eq!(done["seen"], 400, "every record once: {done}");
        assert!(done["by_b"].as_u64().is_some_and(|n| n > 0), "the second member consumed: {done}");
        assert_eq!(done["members_before"], 2, "{done}");
        let protocol = if strategy == "consumer" { "sticky" } else { strategy };
        assert_eq!(done["protocol"], protocol, "{done}");
        assert_eq!(done["committed"], 400, "{done}");
        // A record is read twice only when the commit covering it was refused (the group was
        // rebalancing) as its partition moved: Kafka's at-least-once.
        assert!(done["twice"] == 0 || done["lost_commits"].as_u64() > Some(0), "{done}");
    }
    // The groups were deleted once empty.
    let client = Client::connect(&d.grpc).await.unwrap();
    let left: Vec<String> = client.list_groups().await.unwrap().into_iter().map(|g| g.group_id).collect();
    assert!(!left.iter().any(|g| g.starts_with("pyg-")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consume_transform_produce_transaction_is_read_back_committed() {
    let d = dev().await;
    let done = python("kafka_txn_check.py", &[&d.kafka], Duration::from_secs(90)).await;
    let mut expected: Vec<String> = (0..100).map(|i| format!("V{i}")).collect();
    expected.sort();
    assert_eq!(done["committed_view"], serde_json::json!(expected), "read_committed: every record once, none aborted");
    assert_eq!(done["aborted_seen_uncommitted"], 5, "{done}");
    assert_eq!(done["group_offsets"], 100, "offsets committed with the transactions: {done}");
    assert!(done["transactions"].as_u64().is_some_and(|n| n >= 10), "{done}");
    // Read over gRPC too: the aborted records are stored, and filtered for read_committed.
    let client = Client::connect(&d.grpc).await.unwrap();
    let txn = client.describe_transaction("tx-py").await.unwrap();
    assert_eq!(txn.state, sluice_proto::v1::TransactionState::CompleteCommit as i32, "{txn:?}");
    assert_eq!(txn.producer_epoch, 0, "a Kafka client keeps its epoch: {txn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_produces_and_consumes_in_a_group() {
    let d = dev().await;
    let done = python("kafka_python_check.py", &[&d.kafka], Duration::from_secs(90)).await;
    let mut first: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
    first.sort();
    assert_eq!(done["first"], serde_json::json!(first), "{done}");
    let second: Vec<String> = (50..60).map(|i| format!("v{i}")).collect();
    assert_eq!(done["second"], serde_json::json!(second), "the second member starts at the commit: {done}");
    assert_eq!(done["groups"], serde_json::json!([["kp-group", "classic"]]), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_produces_consumes_in_a_group_and_runs_transactions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/java");
    let lib = root.join("target/lib");
    assert!(lib.exists(), "{} is missing: run scripts/ensure-deps.sh", lib.display());
    let d = dev_with(&[("SLUICE_GROUPS__CONSUMER_HEARTBEAT_INTERVAL_MS", "500")]).await;
    let run = Command::new("java")
        .args(["-cp", "target/classes:target/lib/*", "io.sluice.KafkaCheck", &d.kafka])
        .current_dir(&root)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("in time").expect("java runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(done["topics"], true, "{done}");
    assert_eq!(done["group_consumed"], 100, "{done}");
    assert_eq!(done["group_committed"], 100, "{done}");
    assert_eq!(done["tx_group_committed"], 100, "{done}");
    // IncrementalAlterConfigs: set, append to a list, a bad value refused, delete.
    assert_eq!(done["altered_retention"], "3600000", "{done}");
    assert_eq!(done["altered_policy"], "compact,delete", "{done}");
    assert_eq!(done["bad_config"], "InvalidConfigurationException", "{done}");
    assert_eq!(done["restored_policy"], "delete", "{done}");
    // DescribeProducers: the one idempotent producer, on every partition it wrote to, no
    // transaction open.
    assert_eq!(done["producers"], serde_json::json!([3]), "{done}");
    assert_eq!(done["producer_open_txn"], false, "{done}");
    // OffsetForLeaderEpoch: a position inside the log validates and reads; one past the end
    // is reported as truncated back to the end.
    assert_eq!(done["record_epoch"], 1, "{done}");
    assert!(done["validated_read"].as_i64().unwrap_or(0) > 0, "{done}");
    assert_eq!(done["truncation_from_end"], "0", "{done}");
    // The consumer protocol (KIP-848): two members split the partitions, the one left takes
    // them all; every record read, once unless its commit was refused as it moved.
    assert_eq!(done["cp_split"], true, "{done}");
    assert_eq!(done["cp_members"], 2, "{done}");
    assert_eq!(done["cp_seen"], 150, "{done}");
    assert!(done["cp_by_b"].as_u64().is_some_and(|n| n > 0), "{done}");
    assert_eq!(done["cp_a_partitions"], 3, "{done}");
    assert_eq!(done["cp_committed"], 150, "{done}");
    assert_eq!(done["cp_twice"], 0, "commits happen after every poll, before anything moves: {done}");
    let mut expected: Vec<String> = (0..100).map(|i| format!("V{i}")).collect();
    expected.sort();
    assert_eq!(done["committed_view"], serde_json::json!(expected), "read_committed: once each, nothing aborted");
    // The Java client's partitioner and Sluice's agree, and what it wrote reads the same over
    // gRPC: keys, values, headers, offsets in send order per partition.
    let client = Client::connect(&d.grpc).await.unwrap();
    let records = consume_all(&client, "java-in", 100).await;
    let mut last: HashMap<u32, i64> = HashMap::new();
    for r in &records {
        let key = r.key.clone().expect("keyed");
        let k = text(&Some(key.clone()));
        let i: i64 = k[1..].parse().unwrap();
        assert_eq!(done["partition_of"][&k], r.partition, "{k}");
        assert_eq!(r.partition, sluice_core::partitioner::partition_for_key(&key, 3), "{k}");
        assert_eq!(text(&r.value), format!("v{i}"));
        assert_eq!(r.headers, vec![("n".to_string(), Bytes::from(i.to_string()))]);
        assert!(last.get(&r.partition).is_none_or(|l| *l < i), "partition {} in send order", r.partition);
        last.insert(r.partition, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_clients_ride_through_a_gateway_killed_under_them() {
    let (mut cluster, _dir) = sluice_tests::cluster_gateways(3, 1, 2, &[]).await;
    let brokers = cluster.kafka_brokers();
    assert_eq!(brokers.split(',').count(), 2, "{brokers}");
    // Both gateways are brokers in metadata, leading partitions between them.
    let listing = kcat(&brokers, &["-L"], "").await;
    assert!(listing.contains(" 2 brokers:"), "{listing}");
    let run = tokio::spawn({
        let brokers = brokers.clone();
        async move { python("kafka_failover_check.py", &[&brokers, "classic"], Duration::from_secs(150)).await }
    });
    // A few seconds into the stream, one gateway dies without a word.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.kill("gateway", 1);
    let done = run.await.expect("the check ran");
    assert_eq!(done["delivered"], 3000, "every record delivered: {done}");
    assert_eq!(done["left"], 0, "{done}");
    assert_eq!(done["seen"], 3000, "every record read: {done}");
    // The survivor lists itself alone once the dead one's registration expires.
    let survivor = cluster.kafka_brokers().split(',').nth(1).expect("gateway 2").to_string();
    let listing = eventually("the dead gateway to leave metadata", Duration::from_secs(20), || async {
        let l = kcat(&survivor, &["-L"], "").await;
        l.contains(" 1 brokers:").then_some(l)
    })
    .await;
    assert!(listing.contains(&survivor), "{listing}");
    // Partitions added in etcd are opened by the partition nodes and served.
    let client = Client::connect(&cluster.gateways()).await.unwrap();
    let grown = client.create_partitions("fo", 6).await.unwrap();
    assert_eq!(grown.partitions.len(), 6);
    kcat(&survivor, &["-P", "-t", "fo", "-p", "5"], "grown\n").await;
    let out = kcat(&survivor, &["-C", "-t", "fo", "-p", "5", "-o", "beginning", "-e", "-f", "%s\n"], "").await;
    assert_eq!(out.trim(), "grown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_member_rides_through_a_coordinator_failover() {
    let env = [("SLUICE_GROUPS__CONSUMER_HEARTBEAT_INTERVAL_MS", "500")];
    let (mut cluster, _dir) = sluice_tests::cluster_gateways(3, 2, 1, &env).await;
    let brokers = cluster.kafka_brokers();
    let run = tokio::spawn({
        let brokers = brokers.clone();
        async move { python("kafka_failover_check.py", &[&brokers, "consumer"], Duration::from_secs(150)).await }
    });
    // A few seconds into the stream, the active coordinator dies; the standby restores the
    // member from the group's snapshot and the member heartbeats on.
    let client = Client::connect(&cluster.gateways()).await.unwrap();
    let before = eventually("the member in its group", Duration::from_secs(30), || async {
        client.describe_group("fo-group").await.ok().filter(|d| d.members.len() == 1)
    })
    .await;
    assert_eq!(before.members[0].kind, "consumer", "{before:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let active = cluster
        .manifest
        .processes
        .iter()
        .find(|e| e.role == "group-coordinator" && e.addr == before.coordinator)
        .map(|e| e.id)
        .expect("the active coordinator is one of the cluster's");
    cluster.kill("group-coordinator", active);
    let done = run.await.expect("the check ran");
    assert_eq!(done["delivered"], 3000, "every record delivered: {done}");
    assert_eq!(done["seen"], 3000, "every record read: {done}");
    let after = client.describe_group("fo-group").await.unwrap();
    assert_ne!(after.coordinator, before.coordinator, "the standby took over");
}

/// What a Kafka client before transaction version 2 does, over gRPC against `sluice dev`:
/// it announces its partition (AddPartitionsToTxn from a gateway), writes, and ends its
/// transaction keeping its epoch. A batch of that transaction arriving after the end is
/// refused: it can neither open a transaction of its own nor join the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_of_a_client_that_keeps_its_epoch_is_refused_after_the_end() {
    use sluice_proto::v1::{AddPartitionsToTxnRequest, EndTxnRequest, TransactionState};
    let d = dev().await;
    let client = Client::connect(&d.grpc).await.unwrap();
    client.create_topic("keep", 1, 1, HashMap::new()).await.unwrap();
    // The coordinator becomes active a moment after the gateway serves.
    let (pid, epoch) = eventually("an active coordinator", Duration::from_secs(20), || async {
        client.init_transactional_id("keep-t", Duration::from_secs(30)).await.ok()
    })
    .await;
    let batch = |seq: i32, v: &str| sluice_tests::txn_batch(pid, epoch, seq, v);
    let produce = |data: Bytes| sluice_tests::produce_raw(&client, "keep", 0, data);
    let add = AddPartitionsToTxnRequest {
        producer_id: pid,
        producer_epoch: epoch.into(),
        topic: "keep".into(),
        partition: 0,
        from_client: true,
    };
    client.transactions().add_partitions_to_txn(add).await.expect("announced");
    assert_eq!(produce(batch(0, "in-txn")).await, None, "written in the transaction");
    let end = EndTxnRequest {
        transactional_id: "keep-t".into(),
        producer_id: pid,
        producer_epoch: epoch.into(),
        commit: false,
        keep_epoch: true,
    };
    let next = client.transactions().end_txn(end).await.unwrap().into_inner();
    assert_eq!((next.producer_id, next.producer_epoch), (pid, i32::from(epoch)), "the epoch is kept");
    let late = produce(batch(1, "late")).await.expect("a late batch of the ended transaction is refused");
    assert_eq!(late.sluice_code, 6002, "INVALID_TXN_STATE: {}", late.message);
    let t = client.describe_transaction("keep-t").await.unwrap();
    assert_eq!(t.state, TransactionState::CompleteAbort as i32, "nothing reopened it: {t:?}");
}
