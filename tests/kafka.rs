//! The Kafka wire protocol, driven by a real Kafka client: kcat (librdkafka) against the
//! Kafka listener of a `sluice dev` process, reading what Sluice's own client wrote and the
//! other way round.

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
    let dir = tempfile::tempdir().expect("temp dir");
    let grpc = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let kafka = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let data = dir.path().join("data");
    let child = Command::new(sluice_testkit::binary("sluice").expect("sluice binary"))
        .args(["dev", "--listen", &grpc, "--kafka-listen", &kafka, "--data-dir"])
        .arg(&data)
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
    assert!(listing.contains(&format!("broker 1 at {}", d.kafka)), "{listing}");

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

    // What Sluice's client wrote, headers and timestamps included, read by kcat.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut futs = Vec::new();
    for i in 0..5 {
        let r = ProducerRecord {
            topic: "kt".into(),
            partition: Some(1),
            key: Some(Bytes::from(format!("g{i}"))),
            value: Some(Bytes::from(format!("grpc-{i}"))),
            headers: vec![("h".into(), Bytes::from(format!("x{i}")))],
            timestamp_ms: 1_700_000_000_000 + i,
        };
        futs.push(producer.send(r).await.unwrap());
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let before: usize = records.iter().filter(|r| r.partition == 1).count();
    let out = kcat(&d.kafka, &["-C", "-t", "kt", "-p", "1", "-o", "beginning", "-e", "-f", "%o|%k|%s|%T|%h\n"], "").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), before + 5, "{out}");
    for (i, line) in lines[before..].iter().enumerate() {
        let o = before + i;
        assert_eq!(*line, format!("{o}|g{i}|grpc-{i}|{}|h=x{i}", 1_700_000_000_000 + i as i64), "{out}");
    }
    // From an offset.
    let out = kcat(&d.kafka, &["-C", "-t", "kt", "-p", "1", "-o", &before.to_string(), "-e", "-f", "%s\n"], "").await;
    assert_eq!(out.lines().collect::<Vec<_>>(), (0..5).map(|i| format!("grpc-{i}")).collect::<Vec<_>>());
}
