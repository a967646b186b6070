//! The `sluice` command-line contract, driven from outside as a user or a script would.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sluice_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn sluice(gateway: &str, args: &[&str], stdin: &str) -> Out {
    let bin = sluice_testkit::binary("sluice").expect("sluice binary");
    let mut child = Command::new(bin)
        .args(args)
        .env("SLUICE_GATEWAY", gateway)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sluice finished in time")
        .expect("output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_produce_consume_contract() {
    let (c, _dir) = cluster(2).await;
    let gw = c.gateway().to_string();
    let ok =
        sluice(&gw, &["topic", "create", "clicks", "--partitions", "3", "--config", "retention.ms=3600000"], "").await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let dup = sluice(&gw, &["topic", "create", "clicks", "--partitions", "3"], "").await;
    assert_eq!((dup.code, dup.stderr.trim()), (1, "error: topic 'clicks' already exists"));
    let bad = sluice(&gw, &["topic", "create", "no/slash"], "").await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.starts_with("error: invalid topic name"), "{}", bad.stderr);
    let cfg = sluice(&gw, &["topic", "create", "c2", "--config", "retention.ms"], "").await;
    assert!(cfg.code == 1 && cfg.stderr.contains("is not KEY=VALUE"), "{}", cfg.stderr);

    let list = sluice(&gw, &["topic", "list"], "").await;
    assert!(list.stdout.contains("clicks\tpartitions=3"), "{}", list.stdout);

    let lines: String = (0..300).map(|i| format!("user{}|click-{i}\n", i % 7)).collect();
    let p = sluice(&gw, &["produce", "clicks", "--key-separator", "|", "--print-acks", "--acks", "all"], &lines).await;
    assert_eq!(p.code, 0, "{}", p.stderr);
    let acks: Vec<(u32, i64, String)> = p
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect();
    assert_eq!(acks.len(), 300);
    assert!(p.stderr.contains("produced 300 records"), "{}", p.stderr);

    let cons =
        sluice(&gw, &["consume", "clicks", "--idle-timeout-ms", "1500", "--format", "%p\\t%o\\t%k\\t%s\\n"], "").await;
    assert_eq!(cons.code, 0, "{}", cons.stderr);
    let mut read: Vec<(u32, i64, String)> = cons
        .stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f[3].split('-').count(), 2);
            let key_ok = f[2].starts_with("user");
            assert!(key_ok, "{l}");
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[3].to_string())
        })
        .collect();
    let mut expected = acks.clone();
    read.sort();
    expected.sort();
    assert_eq!(read, expected, "what was acknowledged is exactly what is read back");

    let some =
        sluice(&gw, &["consume", "clicks", "--partition", "0", "--max-messages", "5", "--format", "%o\\n"], "").await;
    assert_eq!(some.stdout.lines().collect::<Vec<_>>(), vec!["0", "1", "2", "3", "4"]);
    let latest = sluice(&gw, &["consume", "clicks", "--from", "latest", "--idle-timeout-ms", "500"], "").await;
    assert_eq!((latest.code, latest.stdout.as_str()), (0, ""));
    let later = sluice(&gw, &["consume", "clicks", "--from", "@99999999999999", "--idle-timeout-ms", "500"], "").await;
    assert_eq!(later.stdout, "");
    let from_offset = sluice(
        &gw,
        &["consume", "clicks", "--partition", "1", "--from", "3", "--max-messages", "1", "--format", "%o"],
        "",
    )
    .await;
    assert_eq!(from_offset.stdout, "3");
    let missing = sluice(&gw, &["consume", "nope", "--idle-timeout-ms", "500"], "").await;
    assert_eq!((missing.code, missing.stderr.trim()), (1, "error: topic 'nope' does not exist"));
    let range =
        sluice(&gw, &["consume", "clicks", "--partition", "0", "--from", "100000", "--idle-timeout-ms", "500"], "")
            .await;
    assert!(range.code == 1 && range.stderr.contains("out of range"), "{}", range.stderr);
    let missing_p = sluice(&gw, &["produce", "nope"], "x\n").await;
    assert_eq!((missing_p.code, missing_p.stderr.trim()), (1, "error: topic 'nope' does not exist"));
    let bad_partition = sluice(&gw, &["produce", "clicks", "--partition", "7", "--print-acks"], "x\n").await;
    assert_eq!(bad_partition.code, 1);
    assert!(bad_partition.stderr.contains("partition 7 of topic 'clicks' does not exist"), "{}", bad_partition.stderr);

    let d = sluice(&gw, &["topic", "describe", "clicks"], "").await;
    assert!(d.stdout.contains("Partitions: 3") && d.stdout.contains("retention.ms=3600000"), "{}", d.stdout);
    let total: i64 = d
        .stdout
        .lines()
        .filter_map(|l| l.split("Latest: ").nth(1))
        .map(|r| r.split('\t').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 300);

    // Config changes apply on the next write; a bad value or a check only changes nothing.
    let alter = sluice(
        &gw,
        &["topic", "alter-config", "clicks", "--set", "max.message.bytes=1024", "--delete", "retention.ms"],
        "",
    )
    .await;
    assert_eq!(alter.code, 0, "{}", alter.stderr);
    assert!(
        alter.stdout.contains("max.message.bytes=1024") && alter.stdout.contains("retention.ms=604800000"),
        "{}",
        alter.stdout
    );
    let big = format!("{}\n", "x".repeat(2000));
    let refused = sluice(&gw, &["produce", "clicks", "--partition", "0"], &big).await;
    assert!(refused.code == 1 && refused.stderr.contains("larger than max.message.bytes (1024"), "{}", refused.stderr);
    let bad = sluice(&gw, &["topic", "alter-config", "clicks", "--set", "retention.ms=soon"], "").await;
    assert!(bad.code == 1 && bad.stderr.contains("retention.ms=soon: not an integer"), "{}", bad.stderr);
    let check =
        sluice(&gw, &["topic", "alter-config", "clicks", "--validate-only", "--set", "max.message.bytes=4096"], "")
            .await;
    assert!(check.code == 0 && check.stdout.contains("would have config: ") && check.stdout.contains("=4096"));
    let nothing = sluice(&gw, &["topic", "alter-config", "clicks"], "").await;
    assert!(nothing.code == 1 && nothing.stderr.contains("nothing to change"), "{}", nothing.stderr);
    let d = sluice(&gw, &["topic", "describe", "clicks"], "").await;
    assert!(d.stdout.contains("max.message.bytes=1024,"), "unchanged by the refused and checked ones: {}", d.stdout);
    let back = sluice(&gw, &["topic", "alter-config", "clicks", "--delete", "max.message.bytes"], "").await;
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert_eq!(sluice(&gw, &["produce", "clicks", "--partition", "0"], &big).await.code, 0);

    assert_eq!(sluice(&gw, &["topic", "delete", "clicks"], "").await.code, 0);
    let gone = sluice(&gw, &["topic", "describe", "clicks"], "").await;
    assert_eq!(gone.code, 1);
    let unreachable = sluice("127.0.0.1:1", &["topic", "list"], "").await;
    assert!(
        unreachable.code == 1 && unreachable.stderr.contains("cannot reach the gateway at 127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_produce_and_txn_commands() {
    let (c, _dir) = cluster(2).await;
    let gw = c.gateway().to_string();
    let created = sluice(&gw, &["topic", "create", "tx", "--partitions", "2"], "").await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let lines: String = (0..5).map(|i| format!("v{i}\n")).collect();
    let p = sluice(&gw, &["produce", "tx", "--transactional-id", "cli-t", "--transaction-records", "2"], &lines).await;
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(p.stderr.contains("produced 5 records") && p.stderr.contains("3 transactions committed"), "{}", p.stderr);

    let cons = sluice(&gw, &["consume", "tx", "--isolation", "read_committed", "--idle-timeout-ms", "1500"], "").await;
    assert_eq!(cons.code, 0, "{}", cons.stderr);
    let mut read: Vec<&str> = cons.stdout.lines().collect();
    read.sort();
    assert_eq!(read, vec!["v0", "v1", "v2", "v3", "v4"], "every committed record, once");

    // The transactional producer is remembered where it wrote, at the epoch its last commit
    // moved it to (sequences start again there), nothing left open.
    let producers = sluice(&gw, &["topic", "producers", "tx"], "").await;
    assert_eq!(producers.code, 0, "{}", producers.stderr);
    let rows: Vec<&str> = producers.stdout.lines().collect();
    assert!(!rows.is_empty(), "{}", producers.stdout);
    assert!(
        rows.iter().all(|r| r.contains("\tLastSequence: -1\t") && r.ends_with("\tTxnStartOffset: -")),
        "{}",
        producers.stdout
    );

    let list = sluice(&gw, &["txn", "list"], "").await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.starts_with("TRANSACTIONAL-ID\tSTATE\t"), "{}", list.stdout);
    assert!(list.stdout.lines().any(|l| l.starts_with("cli-t\tCompleteCommit\t")), "{}", list.stdout);
    let d = sluice(&gw, &["txn", "describe", "cli-t"], "").await;
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(d.stdout.contains("State: CompleteCommit") && d.stdout.contains("Open for: -"), "{}", d.stdout);
    let missing = sluice(&gw, &["txn", "describe", "nope"], "").await;
    assert!(missing.code == 1 && missing.stderr.contains("does not exist"), "{}", missing.stderr);
    // A usage error (clap exits with 2); no stdin, as it exits before reading any.
    let usage = sluice(&gw, &["produce", "tx", "--transaction-records", "2"], "").await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(usage.stderr.contains("--transactional-id"), "{}", usage.stderr);
}

async fn start_dev(dir: &Path, addr: &str) -> tokio::process::Child {
    let bin = sluice_testkit::binary("sluice").expect("sluice binary");
    let kafka = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut child = Command::new(bin)
        .args(["dev", "--listen", addr, "--kafka-listen", &kafka, "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice dev");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("dev ready in time")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(first, format!("Sluice dev is ready. Gateway: {addr}  Kafka: {kafka}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_stops_on_sigterm_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut dev = start_dev(dir.path(), &addr).await;
    // The public port advertises the client services, not the internal PartitionNode.
    let services = sluice_tests::advertised_services(&addr).await;
    assert!(services.iter().any(|s| s == "sluice.v1.Broker"), "{services:?}");
    assert!(!services.iter().any(|s| s == "sluice.v1.PartitionNode"), "{services:?}");
    assert_eq!(sluice(&addr, &["topic", "create", "keep", "--partitions", "2"], "").await.code, 0);
    let p = sluice(&addr, &["produce", "keep", "--key-separator", ":"], "a:1\nb:2\nc:3\n").await;
    assert_eq!(p.code, 0, "{}", p.stderr);
    // A consumer group in dev mode: the embedded coordinator commits what was printed.
    let group = ["consume", "keep", "--group", "g", "--idle-timeout-ms", "1500", "--format", "%k=%s\\n"];
    let g = sluice(&addr, &group, "").await;
    assert_eq!((g.code, g.stdout.lines().count()), (0, 3), "{}", g.stderr);
    // It left as it exited (not kept for its session timeout): the group is empty at once.
    let d = sluice(&addr, &["group", "describe", "g"], "").await;
    assert!(d.stdout.contains("State: Empty"), "{}", d.stdout);
    assert!(sluice_testkit::signal(dev.id().unwrap(), "TERM"));
    let status =
        tokio::time::timeout(Duration::from_secs(15), dev.wait()).await.expect("dev stops on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");

    let _dev = start_dev(dir.path(), &addr).await;
    // Leaders are taken up again at a new epoch after a restart: patience, bounded.
    let all = ["consume", "keep", "--max-messages", "3", "--idle-timeout-ms", "30000", "--format", "%k=%s\\n"];
    let c = sluice(&addr, &all, "").await;
    let mut got: Vec<&str> = c.stdout.lines().collect();
    got.sort();
    assert_eq!(got, vec!["a=1", "b=2", "c=3"], "{}", c.stderr);
    // The group's offsets survived the restart: it resumes after what it consumed.
    let p = sluice(&addr, &["produce", "keep", "--key-separator", ":"], "d:4\n").await;
    assert_eq!(p.code, 0, "{}", p.stderr);
    let g = sluice(&addr, &group, "").await;
    assert_eq!((g.code, g.stdout.trim()), (0, "d=4"), "{}", g.stderr);
    let d = sluice(&addr, &["group", "describe", "g"], "").await;
    assert!(d.stdout.lines().filter(|l| l.contains("Lag: 0")).count() == 2, "{}", d.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_writes_its_manifest_and_down_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("c");
    let cdir_s = cdir.display().to_string();
    // Whatever happens below, the processes of this cluster are stopped at the end.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            if let Ok(bin) = sluice_testkit::binary("sluice") {
                let _ = std::process::Command::new(bin).args(["cluster", "down", "--dir", &self.0]).output();
            }
        }
    }
    let _down = Down(cdir_s.clone());
    let up = sluice("", &["cluster", "up", "--nodes", "2", "--dir", &cdir_s], "").await;
    assert_eq!(up.code, 0, "{}", up.stderr);
    let gw = up.stdout.trim().to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cdir.join("cluster.json")).unwrap()).unwrap();
    let procs = manifest["processes"].as_array().unwrap().clone();
    let roles: Vec<&str> = procs.iter().map(|p| p["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        vec![
            "etcd",
            "partition-node",
            "partition-node",
            "gateway",
            "group-coordinator",
            "group-coordinator",
            "connect-runner",
            "stream-processor"
        ]
    );
    for p in &procs {
        for field in ["role", "id", "pid", "addr", "data_dir", "log", "cmd"] {
            assert!(!p[field].is_null(), "{field} missing in {p}");
        }
    }
    assert_eq!(manifest["gateway"].as_str().unwrap(), gw);
    let created = sluice(&gw, &["topic", "create", "x", "--partitions", "4"], "").await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let again = sluice("", &["cluster", "up", "--dir", &cdir_s], "").await;
    assert!(again.code == 1 && again.stderr.contains("already recorded"), "{}", again.stderr);
    let down = sluice("", &["cluster", "down", "--dir", &cdir_s], "").await;
    assert_eq!(down.code, 0, "{}", down.stderr);
    for p in &procs {
        let pid = p["pid"].as_u64().unwrap() as u32;
        assert!(!sluice_testkit::signal(pid, "0"), "process {pid} ({}) still running", p["role"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_commands_validate_store_and_show_connectors() {
    let (c, dir) = cluster(2).await;
    let gw = c.gateway().to_string();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p.display().to_string()
    };
    let plugins = sluice(&gw, &["connect", "plugins"], "").await;
    assert_eq!(plugins.code, 0, "{}", plugins.stderr);
    for class in [
        "org.apache.kafka.connect.file.FileStreamSourceConnector",
        "org.apache.kafka.connect.json.JsonConverter",
        "org.apache.kafka.connect.transforms.RegexRouter",
    ] {
        assert!(plugins.stdout.contains(class), "{class}: {}", plugins.stdout);
    }
    assert!(plugins.stdout.contains("\tfile (string, required)"), "{}", plugins.stdout);

    // Every problem is named by its key; nothing is created.
    let bad = file(
        "bad.json",
        r#"{"name": "in", "connector.class": "file-source", "topic": "lines", "tasks.max": "0", "colour": "red"}"#,
    );
    let v = sluice(&gw, &["connect", "validate", "--config", &bad], "").await;
    assert_eq!(v.code, 1, "{}", v.stdout);
    for key in ["file: is required", "tasks.max: 0 is outside", "colour: unknown key"] {
        assert!(v.stderr.contains(key), "{key}: {}", v.stderr);
    }
    let refused = sluice(&gw, &["connect", "create", "--config", &bad], "").await;
    assert!(refused.code == 1 && refused.stderr.contains("file: is required"), "{}", refused.stderr);
    let transform = file(
        "t.json",
        r#"{"name": "t", "connector.class": "file-sink", "topics": "a", "file": "/tmp/x",
            "transforms": "route", "transforms.route.type": "org.apache.kafka.connect.transforms.RegexRouter"}"#,
    );
    let t = sluice(&gw, &["connect", "create", "--config", &transform], "").await;
    assert!(t.code == 1 && t.stderr.contains("transforms.route.regex"), "{}", t.stderr);

    // Kafka Connect's REST shape and TOML both read.
    let good = file(
        "in.json",
        r#"{"name": "in", "config": {"connector.class": "FileStreamSource", "file": "/tmp/in.txt", "topic": "lines", "tasks.max": 1}}"#,
    );
    let created = sluice(&gw, &["connect", "create", "--config", &good], "").await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert_eq!(created.stdout.trim(), "created source connector 'in' (1 task(s) at most)");
    let toml = file(
        "out.toml",
        "\"connector.class\" = \"file-sink\"\ntopics = \"lines\"\nfile = \"/tmp/out.txt\"\nformat = \"key-value\"\n",
    );
    assert_eq!(sluice(&gw, &["connect", "create", "out", "--config", &toml], "").await.code, 0);
    let again = sluice(&gw, &["connect", "create", "--config", &good], "").await;
    assert!(again.code == 1 && again.stderr.contains("connector 'in' already exists"), "{}", again.stderr);
    assert_eq!(sluice(&gw, &["connect", "create", "--replace", "--config", &good], "").await.code, 0);

    let list = sluice(&gw, &["connect", "list"], "").await;
    assert_eq!(
        list.stdout, "in\tsource\tFileStreamSource\tRUNNING\nout\tsink\tfile-sink\tRUNNING\n",
        "{}",
        list.stderr
    );
    assert_eq!(sluice(&gw, &["connect", "pause", "out"], "").await.code, 0);
    let list = sluice(&gw, &["connect", "list"], "").await;
    assert!(list.stdout.contains("out\tsink\tfile-sink\tPAUSED"), "{}", list.stdout);
    assert_eq!(sluice(&gw, &["connect", "resume", "out"], "").await.code, 0);
    let status = sluice(&gw, &["connect", "status", "in"], "").await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.starts_with("Connector: in\tType: source\n"), "{}", status.stdout);
    assert!(status.stdout.contains("\ttask 0\t"), "{}", status.stdout);
    let no_task = sluice(&gw, &["connect", "restart", "in", "--task", "3"], "").await;
    assert!(no_task.code == 1 && no_task.stderr.contains("there is no task 3"), "{}", no_task.stderr);
    assert_eq!(sluice(&gw, &["connect", "restart", "in"], "").await.code, 0);
    assert_eq!(sluice(&gw, &["connect", "delete", "in"], "").await.code, 0);
    let gone = sluice(&gw, &["connect", "status", "in"], "").await;
    assert_eq!((gone.code, gone.stderr.trim()), (1, "error: connector 'in' does not exist"));
    // Connect's topics are internal: they cannot be deleted.
    let keep = sluice(&gw, &["topic", "delete", "__connect_configs"], "").await;
    assert_eq!(keep.code, 1, "{}", keep.stdout);
}

/// Produces keyed records (a `None` value is a tombstone) and waits for every ack.
async fn produce_keyed(addr: &str, topic: &str, records: Vec<(String, Option<String>)>) {
    use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
    let client = sluice_client::Client::connect(addr).await.unwrap();
    let p = Producer::new(client, ProducerConfig::default());
    let mut acks = Vec::new();
    for (k, v) in records {
        let r = ProducerRecord {
            topic: topic.into(),
            key: Some(k.into_bytes().into()),
            value: v.map(|v| v.into_bytes().into()),
            ..Default::default()
        };
        acks.push(p.send(r).await.unwrap());
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    p.close().await;
}

/// Writes connector `name`'s config (JSON) into `dir` and creates it with the CLI; the
/// file's path.
async fn create_connector(addr: &str, dir: &Path, name: &str, json: &str) -> String {
    let path = dir.join(format!("{name}.json")).display().to_string();
    std::fs::write(&path, json).unwrap();
    let created = sluice(addr, &["connect", "create", "--config", &path], "").await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    path
}

/// Lines of a file (none when it does not exist yet).
fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_connectors_copy_a_file_through_a_topic_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    let write_lines = |from: usize, to: usize| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&input).unwrap();
        for i in from..to {
            writeln!(f, "line-{i}").unwrap();
        }
    };
    let expect = |n: usize| (0..n).map(|i| format!("line-{i}")).collect::<Vec<_>>();
    write_lines(0, 100);
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut dev = start_dev(&data, &addr).await;
    assert_eq!(sluice(&addr, &["topic", "create", "lines"], "").await.code, 0);
    let config = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let strings = r#""key.converter": "string", "value.converter": "string""#;
    let source = config(
        "source.json",
        format!(
            r#"{{"name": "in", "connector.class": "file-source", "file": "{}", "topic": "lines", {strings}}}"#,
            input.display()
        ),
    );
    let sink = config(
        "sink.json",
        format!(
            r#"{{"name": "out", "connector.class": "file-sink", "file": "{}", "topics": "lines", {strings}}}"#,
            output.display()
        ),
    );
    for c in [&source, &sink] {
        let created = sluice(&addr, &["connect", "create", "--config", c], "").await;
        assert_eq!(created.code, 0, "{}", created.stderr);
    }
    let copied = |n: usize| {
        let output = output.clone();
        async move { (lines_of(&output).len() >= n).then_some(()) }
    };
    eventually("the first 100 lines copied", Duration::from_secs(60), || copied(100)).await;
    assert_eq!(lines_of(&output), expect(100));
    let status = sluice(&addr, &["connect", "status", "in"], "").await;
    assert!(status.stdout.contains("\ttask 0\tRUNNING\trunner: dev-"), "{}", status.stdout);

    // Paused, the source leaves new lines alone; resumed, it takes them.
    assert_eq!(sluice(&addr, &["connect", "pause", "in"], "").await.code, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_lines(100, 120);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lines_of(&output).len(), 100, "nothing read while paused");
    assert_eq!(sluice(&addr, &["connect", "resume", "in"], "").await.code, 0);
    eventually("the lines written while paused", Duration::from_secs(30), || copied(120)).await;

    // Stopped, written to, started again: the source resumes after the last line it wrote.
    assert!(sluice_testkit::signal(dev.id().unwrap(), "TERM"));
    let stopped = tokio::time::timeout(Duration::from_secs(30), dev.wait()).await.expect("dev stops").unwrap();
    assert!(stopped.success(), "{stopped:?}");
    write_lines(120, 150);
    let _dev = start_dev(&data, &addr).await;
    eventually("the lines written while stopped", Duration::from_secs(60), || copied(150)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines_of(&output), expect(150), "every line once, in order");
    let topic =
        sluice(&addr, &["consume", "lines", "--isolation", "read_committed", "--idle-timeout-ms", "2000"], "").await;
    assert_eq!(topic.stdout.lines().collect::<Vec<_>>(), expect(150), "the topic holds each line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_topic_or_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let _dev = start_dev(&dir.path().join("data"), &addr).await;
    assert_eq!(sluice(&addr, &["topic", "create", "events"], "").await.code, 0);
    let p = sluice(&addr, &["produce", "events", "--key-separator", "|"], "k1|{\"a\":1}\nk2|not json\nk3|{\"a\":2}\n")
        .await;
    assert_eq!(p.code, 0, "{}", p.stderr);
    let (tolerant, strict) = (dir.path().join("tolerant.txt"), dir.path().join("strict.txt"));
    let sink = |name: &str, file: &Path, extra: &str| {
        let p = dir.path().join(format!("{name}.json"));
        let text = format!(
            r#"{{"name": "{name}", "connector.class": "file-sink", "topics": "events", "file": "{}",
                "key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "false"{extra}}}"#,
            file.display()
        );
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let dlq = r#", "errors.tolerance": "all", "errors.deadletterqueue.topic.name": "events-dlq",
        "errors.deadletterqueue.context.headers.enable": "true", "errors.log.enable": "true""#;
    for c in [sink("tolerant", &tolerant, dlq), sink("strict", &strict, "")] {
        let created = sluice(&addr, &["connect", "create", "--config", &c], "").await;
        assert_eq!(created.code, 0, "{}", created.stderr);
    }
    eventually("the good records written", Duration::from_secs(60), || {
        let tolerant = tolerant.clone();
        async move { (lines_of(&tolerant).len() >= 2).then_some(()) }
    })
    .await;
    assert_eq!(lines_of(&tolerant), vec![r#"{"a":1}"#, r#"{"a":2}"#]);
    let client = sluice_client::Client::connect(&addr).await.unwrap();
    let dead = consume_all(&client, "events-dlq", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"not json"[..]), "as it was read");
    let header =
        |k: &str| dead[0].headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).to_string());
    assert_eq!(header("__connect.errors.stage").as_deref(), Some("VALUE_CONVERTER"));
    assert_eq!(header("__connect.errors.offset").as_deref(), Some("1"));
    assert_eq!(header("__connect.errors.connector.name").as_deref(), Some("tolerant"));
    // Without tolerance the task stops at the poison record, saying which one, and writes
    // nothing past it.
    let failed = eventually("the strict sink to fail", Duration::from_secs(60), || {
        let addr = addr.clone();
        async move {
            let s = sluice(&addr, &["connect", "status", "strict"], "").await;
            s.stdout.contains("\ttask 0\tFAILED").then_some(s.stdout)
        }
    })
    .await;
    assert!(failed.contains("record at offset 1 of partition 0 of 'events'"), "{failed}");
    assert!(lines_of(&strict).len() <= 1, "{:?}", lines_of(&strict));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_writes_rows_exactly_once_across_a_crash() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut dev = start_dev(&data, &addr).await;
    assert_eq!(sluice(&addr, &["topic", "create", "users", "--partitions", "2"], "").await.code, 0);
    let send = |records: Vec<(String, Option<String>)>| {
        let addr = addr.clone();
        async move { produce_keyed(&addr, "users", records).await }
    };
    let row = |i: usize| (format!("k{i}"), Some(format!(r#"{{"id": "k{i}", "n": {i}}}"#)));
    send((0..200).map(row).collect()).await;
    let connector = |name: &str, extra: &str| {
        let p = dir.path().join(format!("{name}.json"));
        let text = format!(
            r#"{{"name": "{name}", "connector.class": "postgres-sink", "topics": "users", "connection.url": "{}",
                "key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "false",
                "auto.create": "true", "auto.evolve": "true"{extra}}}"#,
            pg.url()
        );
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let upsert = connector(
        "users-table",
        r#", "table.name.format": "users", "insert.mode": "upsert", "pk.mode": "record_key", "pk.fields": "id",
            "delete.enabled": "true""#,
    );
    let log = connector("users-log", r#", "table.name.format": "users_log""#);
    for c in [&upsert, &log] {
        let created = sluice(&addr, &["connect", "create", "--config", c], "").await;
        assert_eq!(created.code, 0, "{}", created.stderr);
    }
    let count = |table: &str| pg.psql(&format!("SELECT count(*) FROM {table}")).and_then(|c| c.parse::<usize>().ok());
    let settled = |table: &'static str, n: usize| {
        let count = &count;
        async move { (count(table) == Some(n)).then_some(()) }
    };
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        eventually("200 rows in each table", Duration::from_secs(60), || async {
            (count("users") == Some(200) && count("users_log") == Some(200)).then_some(())
        }),
    )
    .await;
    if first.is_err() {
        let s1 = sluice(&addr, &["connect", "status", "users-table"], "").await;
        let s2 = sluice(&addr, &["connect", "status", "users-log"], "").await;
        panic!("rows {:?} {:?}: {} {}", count("users"), count("users_log"), s1.stdout, s2.stdout);
    }
    // An update with a new field (the column is added), and a tombstone (the row goes; the
    // insert-only table skips it).
    send(vec![("k1".into(), Some(r#"{"id": "k1", "n": 1000, "extra": "x"}"#.into())), ("k2".into(), None)]).await;
    eventually("the update and the delete", Duration::from_secs(30), || settled("users", 199)).await;
    eventually("the update logged", Duration::from_secs(30), || settled("users_log", 201)).await;
    assert_eq!(pg.psql("SELECT n, extra FROM users WHERE id = 'k1'").as_deref(), Some("1000|x"));
    assert_eq!(pg.psql("SELECT count(*) FROM users WHERE id = 'k2'").as_deref(), Some("0"));

    // The runner dies mid-stream (kill -9 of the whole dev process) and comes back: every row
    // once, as the offsets are committed with the rows.
    let more = tokio::spawn(send((202..502).map(row).collect()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.start_kill().unwrap();
    let _ = dev.wait().await;
    let _ = more.await;
    let _dev = start_dev(&data, &addr).await;
    // Whatever the crash interrupted is sent again (the producer's acks were lost with it).
    send((202..502).map(row).collect()).await;
    eventually("the rows written around the crash", Duration::from_secs(90), || async {
        (count("users") == Some(499)).then_some(())
    })
    .await;
    let records = sluice(&addr, &["topic", "describe", "users"], "").await;
    let total: usize = records
        .stdout
        .lines()
        .filter_map(|l| l.split("Latest: ").nth(1))
        .map(|r| r.split('\t').next().unwrap().parse::<usize>().unwrap())
        .sum();
    let offsets = || {
        pg.psql("SELECT sum(next_offset) FROM __sluice_connect_offsets WHERE connector = 'users-log'")
            .and_then(|c| c.parse::<usize>().ok())
    };
    eventually("the log table's offsets at the end of the topic", Duration::from_secs(60), || {
        let at = offsets();
        async move { (at == Some(total)).then_some(()) }
    })
    .await;
    // One row per record that has a value: nothing twice, nothing lost.
    assert_eq!(count("users_log"), Some(total - 1), "{}", records.stdout);
}

/// A real OpenSearch node: documents indexed by key, a tombstone deleting one, an update
/// replacing one, a document the mapping refuses sent to the dead-letter topic with the
/// reason; and the whole topic written again from its start leaves the index as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_sink_indexes_by_key_deletes_and_dead_letters_refused_documents() {
    let search = OpenSearch::start();
    // n is a number: a document where it is not is refused by the mapping.
    let (status, _) = search.http("PUT", "/docs", r#"{"mappings": {"properties": {"n": {"type": "long"}}}}"#);
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let _dev = start_dev(&dir.path().join("data"), &addr).await;
    assert_eq!(sluice(&addr, &["topic", "create", "Docs", "--partitions", "2"], "").await.code, 0);
    let doc = |i: usize| (format!("k{i}"), Some(format!(r#"{{"n": {i}, "name": "doc {i}"}}"#)));
    produce_keyed(&addr, "Docs", (0..100).map(doc).collect()).await;
    produce_keyed(
        &addr,
        "Docs",
        vec![
            ("k5".into(), None),
            ("bad".into(), Some(r#"{"n": "not a number"}"#.into())),
            ("k1".into(), Some(r#"{"n": 1000, "name": "updated"}"#.into())),
        ],
    )
    .await;
    let config = format!(
        r#"{{"name": "search", "connector.class": "opensearch-sink", "topics": "Docs", "connection.url": "{}",
            "key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "false",
            "errors.tolerance": "all", "errors.deadletterqueue.topic.name": "docs-dlq",
            "errors.deadletterqueue.context.headers.enable": "true", "tasks.max": "2"}}"#,
        search.url()
    );
    let config = create_connector(&addr, dir.path(), "search", &config).await;
    let count = || {
        search.http("POST", "/docs/_refresh", "");
        search.http("GET", "/docs/_count", "").1["count"].as_u64()
    };
    let indexed = |n: u64| {
        let count = &count;
        async move { (count() == Some(n)).then_some(()) }
    };
    // 100 documents, k5 deleted, the refused one not there.
    eventually("99 documents", Duration::from_secs(60), || indexed(99)).await;
    let (status, k1) = search.http("GET", "/docs/_doc/k1", "");
    assert_eq!((status, &k1["_source"]["n"]), (200, &serde_json::json!(1000)), "{k1}");
    assert_eq!(search.http("GET", "/docs/_doc/k5", "").0, 404);
    let dlq = sluice(
        &addr,
        &["consume", "docs-dlq", "--max-messages", "1", "--idle-timeout-ms", "20000", "--format", "%k %s\\n"],
        "",
    )
    .await;
    assert_eq!(dlq.stdout.trim(), r#"bad {"n": "not a number"}"#, "{}", dlq.stderr);
    let status = sluice(&addr, &["connect", "status", "search"], "").await;
    assert!(status.stdout.contains("task 1\tRUNNING"), "a refused document stops nothing: {}", status.stdout);

    // Everything again from the start: the same ids, the same index.
    assert_eq!(sluice(&addr, &["connect", "delete", "search"], "").await.code, 0);
    let group = ["group", "reset-offsets", "connect-search", "--topic", "Docs", "--to-earliest"];
    eventually("the sink's group to empty and rewind", Duration::from_secs(30), || async {
        (sluice(&addr, &group, "").await.code == 0).then_some(())
    })
    .await;
    let created = sluice(&addr, &["connect", "create", "--config", &config], "").await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    eventually("the topic read again", Duration::from_secs(60), || async {
        let d = sluice(&addr, &["group", "describe", "connect-search"], "").await;
        (d.stdout.matches("Lag: 0").count() == 2 && d.stdout.contains("Member:")).then_some(())
    })
    .await;
    assert_eq!(count(), Some(99));
    assert_eq!(search.http("GET", "/docs/_doc/k1", "").1["_source"]["n"], 1000);
}

/// Where a Parquet sink test writes: a local directory or a bucket of a real S3-compatible store.
enum Lake {
    Dir(std::path::PathBuf),
    S3(S3Proxy),
}

impl Lake {
    /// The connector keys naming this store.
    fn keys(&self) -> String {
        match self {
            Lake::Dir(d) => format!(r#""store.url": "{}""#, d.display()),
            Lake::S3(s3) => format!(
                r#""store.url": "s3://{}/warehouse", "s3.endpoint": "{}", "aws.access.key.id": "{}",
                   "aws.secret.access.key": "{}""#,
                S3Proxy::BUCKET,
                s3.endpoint(),
                S3Proxy::ACCESS_KEY,
                S3Proxy::SECRET_KEY
            ),
        }
    }

    /// The Parquet files written, read back by pyarrow: each file's name and row count, every
    /// row, and the columns' types. A bucket's objects are read where S3Proxy's filesystem
    /// backend keeps them (pyarrow's S3 client sends checksum headers S3Proxy 2.6 refuses).
    fn files(&self) -> serde_json::Value {
        let script = r#"
import glob, json, os, sys
import pyarrow.parquet as pq
out = {"files": [], "rows": [], "types": {}}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "**", "*.parquet"), recursive=True)):
    t = pq.read_table(f)
    out["files"].append({"name": os.path.basename(f), "rows": t.num_rows})
    out["types"] = {c.name: str(c.type) for c in t.schema}
    for r in t.to_pylist():
        r["at"] = None if r["at"] is None else r["at"].isoformat()
        out["rows"].append(r)
print(json.dumps(out))
"#;
        let dir = match self {
            Lake::Dir(d) => d.clone(),
            Lake::S3(s3) => s3.bucket_dir().join("warehouse"),
        };
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
        let out = std::process::Command::new(python).args(["-c", script]).arg(dir).output().expect("pyarrow runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON from the script")
    }
}

/// Parquet files written by the sink to a directory, read back by pyarrow with their rows and
/// types; the files of each partition cover its offsets once, in order, across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_writes_each_record_once_in_typed_files() {
    let dir = tempfile::tempdir().unwrap();
    parquet_sink_round(dir.path(), Lake::Dir(dir.path().join("lake"))).await;
}

/// The same into a bucket of a real S3-compatible store (S3Proxy, SigV4), through the same
/// restart; a connector with a wrong secret key fails its task, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_writes_to_an_s3_compatible_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, addr, lake) = parquet_sink_round(dir.path(), Lake::S3(S3Proxy::start())).await;
    let Lake::S3(s3) = &*lake else { unreachable!("an S3 lake") };
    // Signed with the wrong secret: the store refuses every request and the task says so.
    let config = format!(
        r#"{{"name": "forged", "connector.class": "parquet-sink", "topics": "events",
            "store.url": "s3://{}/forged", "s3.endpoint": "{}", "aws.access.key.id": "{}",
            "aws.secret.access.key": "not-the-secret", "flush.size": "10",
            "key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "true"}}"#,
        S3Proxy::BUCKET,
        s3.endpoint(),
        S3Proxy::ACCESS_KEY
    );
    create_connector(&addr, dir.path(), "forged", &config).await;
    let failed = eventually("the forged connector's task to fail", Duration::from_secs(60), || {
        let addr = addr.clone();
        async move {
            let s = sluice(&addr, &["connect", "status", "forged"], "").await;
            s.stdout.contains("\ttask 0\tFAILED").then_some(s.stdout)
        }
    })
    .await;
    assert!(failed.contains("403") || failed.contains("SignatureDoesNotMatch"), "{failed}");
}

/// Writes 250 then 50 more records through a parquet-sink into `lake` across a restart of
/// `sluice dev` and checks the files; returns the running dev, its address and the lake.
async fn parquet_sink_round(dir: &Path, lake: Lake) -> (tokio::process::Child, String, std::sync::Arc<Lake>) {
    let data = dir.join("data");
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let mut dev = start_dev(&data, &addr).await;
    assert_eq!(sluice(&addr, &["topic", "create", "events", "--partitions", "2"], "").await.code, 0);
    let schema = r#"{"type": "struct", "optional": false, "fields": [
        {"field": "id", "type": "int32", "optional": false}, {"field": "name", "type": "string", "optional": true},
        {"field": "score", "type": "float64", "optional": true}, {"field": "ok", "type": "boolean", "optional": true},
        {"field": "at", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "optional": true}]}"#;
    let event = |i: usize| {
        let payload = format!(
            r#"{{"id": {i}, "name": "e{i}", "score": {}, "ok": {}, "at": {}}}"#,
            i as f64 / 2.0,
            i.is_multiple_of(2),
            1_700_000_000_000u64 + i as u64
        );
        (format!("k{i}"), Some(format!(r#"{{"schema": {schema}, "payload": {payload}}}"#)))
    };
    produce_keyed(&addr, "events", (0..250).map(event).collect()).await;
    let config = format!(
        r#"{{"name": "lake", "connector.class": "parquet-sink", "topics": "events", {},
            "flush.size": "100", "rotate.interval.ms": "1000", "tasks.max": "2",
            "key.converter": "string", "value.converter": "json", "value.converter.schemas.enable": "true"}}"#,
        lake.keys()
    );
    create_connector(&addr, dir, "lake", &config).await;
    let lake = std::sync::Arc::new(lake);
    let rows = |n: usize| {
        let lake = lake.clone();
        async move {
            let files = tokio::task::spawn_blocking(move || lake.files()).await.expect("pyarrow reads");
            (files["rows"].as_array()?.len() >= n).then_some(files)
        }
    };
    let files = eventually("250 rows in Parquet files", Duration::from_secs(60), || rows(250)).await;
    let types = &files["types"];
    assert_eq!(
        (&types["id"], &types["name"], &types["score"], &types["ok"], &types["at"]),
        (
            &serde_json::json!("int32"),
            &serde_json::json!("string"),
            &serde_json::json!("double"),
            &serde_json::json!("bool"),
            &serde_json::json!("timestamp[ms, tz=UTC]")
        )
    );
    let row = files["rows"].as_array().unwrap().iter().find(|r| r["id"] == 7).unwrap().clone();
    assert_eq!(
        row,
        serde_json::json!({"id": 7, "name": "e7", "score": 3.5, "ok": false, "at": "2023-11-14T22:13:20.007000+00:00"})
    );

    // Stopped and started again, with more records meanwhile: each record once.
    assert!(sluice_testkit::signal(dev.id().unwrap(), "TERM"));
    assert!(tokio::time::timeout(Duration::from_secs(30), dev.wait()).await.expect("dev stops").unwrap().success());
    let dev = start_dev(&data, &addr).await;
    produce_keyed(&addr, "events", (250..300).map(event).collect()).await;
    let files = eventually("300 rows in Parquet files", Duration::from_secs(60), || rows(300)).await;
    let mut ids: Vec<i64> = files["rows"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (0..300).collect::<Vec<i64>>(), "every record once");
    // Each partition's files cover its offsets from 0, in order, without overlap.
    let mut ranges: std::collections::BTreeMap<u32, Vec<(i64, i64, u64)>> = Default::default();
    for f in files["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap().trim_end_matches(".parquet");
        let parts: Vec<&str> = name.split('+').collect();
        assert_eq!(parts.len(), 4, "{name}");
        let range = (parts[2].parse().unwrap(), parts[3].parse().unwrap(), f["rows"].as_u64().unwrap());
        ranges.entry(parts[1].parse().unwrap()).or_default().push(range);
    }
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    for (p, mut files) in ranges {
        files.sort();
        let mut next = 0;
        for (first, last, n) in files {
            assert_eq!(first, next, "partition {p}: files follow each other");
            assert!(n as i64 == last - first + 1 && n <= 100, "partition {p}: {first}..{last} holds {n} rows");
            next = last + 1;
        }
    }
    (dev, addr, lake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_statements_from_flags_files_and_the_shell() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let _dev = start_dev(&dir.path().join("dev"), &addr).await;
    let earliest = ["sql", "-p", "auto.offset.reset=earliest"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        earliest.iter().copied().chain(extra.iter().copied()).collect()
    };
    let ddl = sluice(
        &addr,
        &["sql", "-e", "CREATE STREAM orders (id INT KEY, region STRING, amount DOUBLE) WITH (kafka_topic='orders', value_format='JSON', partitions=2); INSERT INTO orders VALUES (0, 'eu', 100.0);"],
        "",
    )
    .await;
    assert_eq!(ddl.code, 0, "{}", ddl.stderr);
    assert!(ddl.stdout.contains("ORDERS created (topic orders)"), "{}", ddl.stdout);
    // auto.offset.reset is latest by default: the query reads what is written after the
    // statement, whenever its processor gets to it (the record above is not counted, the
    // three written right after it are).
    let ctas = sluice(
        &addr,
        &[
            "sql",
            "-e",
            "CREATE TABLE by_region AS SELECT region, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY region;",
        ],
        "",
    )
    .await;
    assert_eq!(ctas.code, 0, "{}", ctas.stderr);
    assert!(ctas.stdout.contains("query CTAS_BY_REGION_1 started"), "{}", ctas.stdout);
    let file = dir.path().join("inserts.sql");
    std::fs::write(
        &file,
        "INSERT INTO orders (id, region, amount) VALUES (1, 'eu', 2.5);\nINSERT INTO orders (id, region, amount)\n  VALUES (2, 'eu', 1.5);\nINSERT INTO orders VALUES (3, 'us', 4.0);\n",
    )
    .expect("write sql file");
    let f = file.display().to_string();
    let inserted = sluice(&addr, &["sql", "-f", &f], "").await;
    assert_eq!(
        (inserted.code, inserted.stdout.matches("1 record written to orders").count()),
        (0, 3),
        "{}",
        inserted.stderr
    );

    // Pull queries as a table, JSON lines and CSV, once the query has counted the three.
    let table = eventually("the table has both regions", Duration::from_secs(30), || async {
        let out = sluice(&addr, &["sql", "-e", "SELECT * FROM by_region;"], "").await;
        // Both totals 4.0: all three inserts counted.
        (out.code == 0 && out.stdout.contains("(2 rows)") && out.stdout.matches("4.0").count() == 2)
            .then_some(out.stdout)
    })
    .await;
    assert!(table.contains("REGION | N | TOTAL"), "{table}");
    let json =
        sluice(&addr, &["sql", "-o", "json", "-e", "SELECT region, n FROM by_region WHERE region = 'eu';"], "").await;
    assert_eq!(json.stdout.trim(), r#"{"N":2,"REGION":"eu"}"#, "{}", json.stderr);
    let csv =
        sluice(&addr, &["sql", "-o", "csv", "-e", "SELECT region, total FROM by_region WHERE region = 'us';"], "")
            .await;
    assert_eq!(csv.stdout, "REGION,TOTAL\nus,4.0\n", "{}", csv.stderr);

    // A push query from the start, ended by its LIMIT.
    let push = sluice(
        &addr,
        &with(&["-o", "csv", "-e", "SELECT id, amount * 2 AS twice FROM orders EMIT CHANGES LIMIT 4;"]),
        "",
    )
    .await;
    assert_eq!(push.code, 0, "{}", push.stderr);
    let mut rows: Vec<&str> = push.stdout.lines().skip(1).collect();
    rows.sort();
    assert_eq!(rows, vec!["0,200.0", "1,5.0", "2,3.0", "3,8.0"], "{}", push.stdout);

    // Errors: a sentence on stderr and exit code 1.
    let bad = sluice(&addr, &["sql", "-e", "SELEC 1;"], "").await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("line 1, column 1: expected a statement"), "{}", bad.stderr);
    let missing = sluice(&addr, &["sql", "-e", "SELECT * FROM nowhere;"], "").await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("stream or table NOWHERE does not exist"), "{}", missing.stderr);

    // The shell reads statements (over several lines) from its input too.
    let shell = sluice(&addr, &["sql"], "SHOW\n  STREAMS;\nDESCRIBE orders;\n").await;
    assert_eq!(shell.code, 0, "{}", shell.stderr);
    assert!(shell.stdout.contains("ORDERS | orders"), "{}", shell.stdout);
    assert!(shell.stdout.contains("ID     | INTEGER (key)"), "{}", shell.stdout);
}
