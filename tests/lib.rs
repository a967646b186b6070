//! Helpers for the end-to-end tests: clusters with test-friendly timings, consuming
//! everything from a topic, seeded randomness and deadlines.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use sluice_testkit::Cluster;

/// A cluster of `nodes` partition nodes with short leases and frequent cleaning.
pub async fn cluster(nodes: u32) -> (Cluster, tempfile::TempDir) {
    cluster_with(nodes, &[]).await
}

/// [`cluster`] with extra environment for every service.
pub async fn cluster_with(nodes: u32, extra_env: &[(&str, &str)]) -> (Cluster, tempfile::TempDir) {
    cluster_spec(nodes, 1, extra_env).await
}

/// [`cluster_with`] and `coordinators` group coordinators.
pub async fn cluster_spec(nodes: u32, coordinators: u32, extra_env: &[(&str, &str)]) -> (Cluster, tempfile::TempDir) {
    cluster_gateways(nodes, coordinators, 1, extra_env).await
}

/// [`cluster_spec`] with `gateways` gateways.
pub async fn cluster_gateways(
    nodes: u32,
    coordinators: u32,
    gateways: u32,
    extra_env: &[(&str, &str)],
) -> (Cluster, tempfile::TempDir) {
    cluster_built(|b| b.nodes(nodes).coordinators(coordinators).gateways(gateways), extra_env).await
}

/// A cluster of real processes as `shape` makes the builder (nodes, coordinators, gateways,
/// connect runners), with the tests' short intervals and `extra_env`.
pub async fn cluster_built(
    shape: impl FnOnce(sluice_testkit::ClusterBuilder) -> sluice_testkit::ClusterBuilder,
    extra_env: &[(&str, &str)],
) -> (Cluster, tempfile::TempDir) {
    // SLUICE_KEEP_TEST_DIRS=1 keeps data and logs for a post-mortem.
    let keep = std::env::var_os("SLUICE_KEEP_TEST_DIRS").is_some();
    let dir = tempfile::Builder::new().prefix("sluice-test-").disable_cleanup(keep).tempdir().expect("temp dir");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    let mut b = shape(Cluster::builder())
        .env("SLUICE_ETCD__LEASE_TTL_SECS", "2")
        .env("SLUICE_STORAGE__RETENTION_CHECK_INTERVAL_MS", "200")
        .env("RUST_LOG", "info");
    for (k, v) in extra_env {
        b = b.env(k, v);
    }
    match b.start(dir.path().join("cluster")).await {
        Ok(c) => (c, dir),
        Err(e) => {
            // Keep the logs the error points at.
            let kept = dir.keep();
            panic!("cluster did not start: {e} (logs kept in {})", kept.display())
        }
    }
}

pub async fn client(c: &Cluster) -> Client {
    Client::connect(c.gateway()).await.expect("gateway reachable")
}

/// The seed for this test's randomness: `SLUICE_TEST_SEED` or a fresh one, printed so that a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("SLUICE_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{test}: seed {s} (replay with SLUICE_TEST_SEED={s})");
    s
}

/// How long fault loops run: `SLUICE_FAULT_SECS` (scripts/faults.sh), 12 s by default (CI).
pub fn fault_secs() -> u64 {
    std::env::var("SLUICE_FAULT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

/// Polls `f` until it returns Some, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match within(limit, f).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `f` until it returns Some, or None after `limit` (for callers that explain the
/// failure themselves).
pub async fn within<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every partition of `topic` from the earliest offset until `expected` records have
/// arrived (or nothing arrives for 3 s).
pub async fn consume_all(client: &Client, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut c = Consumer::assign(client.clone(), topic, &[], StartFrom::Earliest, ConsumerConfig::default())
        .await
        .expect("assign");
    let mut out = Vec::new();
    while out.len() < expected {
        let recs = c.poll(Duration::from_secs(3)).await.expect("poll");
        if recs.is_empty() {
            break;
        }
        out.extend(recs);
    }
    out
}

/// Checks that offsets are dense from 0 in every partition and returns records per partition.
pub fn by_partition(records: &[ConsumerRecord]) -> HashMap<u32, Vec<&ConsumerRecord>> {
    let mut m: HashMap<u32, Vec<&ConsumerRecord>> = HashMap::new();
    for r in records {
        m.entry(r.partition).or_default().push(r);
    }
    for (p, rs) in &m {
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(r.offset, i as i64, "partition {p}: offsets must be dense from 0");
        }
    }
    m
}

pub fn text(b: &Option<bytes::Bytes>) -> String {
    b.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// One transactional batch of `value`, as producer `pid` at `epoch` with base sequence `seq`.
pub fn txn_batch(pid: i64, epoch: i16, seq: i32, value: &str) -> bytes::Bytes {
    use sluice_core::batch::{BatchBuilder, TRANSACTIONAL};
    let mut b =
        BatchBuilder::new(sluice_core::compression::Compression::None).producer(pid, epoch, seq).flags(TRANSACTIONAL);
    b.push(sluice_core::settings::now_ms(), None, Some(value.as_bytes()), &[]);
    b.build().expect("a batch")
}

/// Produces `data` (whole batches, as built) to one partition on a fresh produce stream;
/// the partition's error, if any.
pub async fn produce_raw(
    client: &Client,
    topic: &str,
    partition: u32,
    data: bytes::Bytes,
) -> Option<sluice_proto::v1::Error> {
    use sluice_proto::v1::{PartitionBatches, ProduceRequest};
    let req = ProduceRequest {
        topic: topic.into(),
        batches: vec![PartitionBatches { partition, data }],
        timeout_ms: 10_000,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req).await.expect("queue the request");
    let mut s =
        client.broker().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("a stream").into_inner();
    let r = s.message().await.expect("an answer").expect("an answer");
    r.partitions[0].error.clone()
}

/// Opens a plain-records fetch of one partition from `offset` and closes the request side at
/// once (a one-shot reader, as a simple client in another language would be).
pub async fn fetch_plain(
    client: &Client,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<tonic::Streaming<sluice_proto::v1::FetchResponse>, tonic::Status> {
    use sluice_proto::v1::fetch_request::Kind;
    use sluice_proto::v1::{FetchPartition, FetchRequest, FetchStart};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let start = FetchStart {
        topic: topic.into(),
        partitions: vec![FetchPartition { partition, offset }],
        max_bytes: 0,
        plain_records: true,
        isolation_level: sluice_proto::v1::IsolationLevel::ReadUncommitted as i32,
    };
    tx.send(FetchRequest { kind: Some(Kind::Start(start)) }).await.expect("queue the start");
    drop(tx);
    Ok(client.broker().fetch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner())
}

/// The services a process advertises through gRPC reflection (v1).
pub async fn advertised_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{addr}: no service list")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// A PostgreSQL server of its own on a free loopback port (Debian's `postgresql`; initdb
/// and the server run as the `postgres` user when the tests run as root, which PostgreSQL
/// refuses), logical WAL on, trusting its one user `sluice`; stopped when dropped.
pub struct Postgres {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = ["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|d| d.join("initdb").exists())
            .expect("PostgreSQL's server binaries (Debian postgresql): run scripts/ensure-deps.sh");
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        // As root, drop to the postgres user; setpriv execs, so killing the child kills the server.
        let as_postgres = |program: &std::path::Path| -> std::process::Command {
            let root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
            if !root {
                return std::process::Command::new(program);
            }
            let ids = |flag: &str| {
                let o = std::process::Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
                String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().expect("the postgres user")
            };
            let (uid, gid) = (ids("-u"), ids("-g"));
            for p in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
            }
            let mut c = std::process::Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into(), "--".into()])
                .arg(program);
            c
        };
        let init = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "sluice", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(init.success(), "initdb failed");
        let port = sluice_testkit::free_port();
        let child = as_postgres(&bin.join("postgres"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("postgres starts");
        let pg = Self { child, port, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pg.psql("SELECT 1").is_none() {
            assert!(std::time::Instant::now() < deadline, "PostgreSQL did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        pg
    }

    pub fn url(&self) -> String {
        format!("postgresql://sluice@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql; its rows as `|`-separated lines, or None when it failed.
    pub fn psql(&self, sql: &str) -> Option<String> {
        self.psql_in("postgres", sql)
    }

    /// [`Postgres::psql`] in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> Option<String> {
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "sluice", "-d", db, "-At", "-c", sql])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenSearch 2.19 node (tests/opensearch, built by scripts/ensure-deps.sh from Maven
/// Central) on free loopback ports, stopped when dropped.
pub struct OpenSearch {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl OpenSearch {
    pub fn start() -> Self {
        use std::io::BufRead;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("opensearch/target");
        assert!(
            root.join("lib").is_dir() && root.join("classes").is_dir(),
            "{} is missing: run scripts/ensure-deps.sh",
            root.display()
        );
        let classpath = format!("{}:{}/*", root.join("classes").display(), root.join("lib").display());
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, transport) = (sluice_testkit::free_port(), sluice_testkit::free_port());
        let mut child = std::process::Command::new("java")
            .args(["-Xms256m", "-Xmx512m", "-cp", &classpath, "io.sluice.test.OpenSearchNode"])
            .arg(dir.path())
            .args([port.to_string(), transport.to_string()])
            // The node stops when its stdin closes: it never outlives this process.
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("java starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ready = std::io::BufReader::new(out).lines().map_while(Result::ok).any(|l| l == "ready");
            let _ = tx.send(ready);
        });
        let ready = rx.recv_timeout(Duration::from_secs(90)).unwrap_or(false);
        let node = Self { child, port, _dir: dir };
        assert!(ready, "OpenSearch did not start within 90 s (its logs are in its home directory)");
        node
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP request (`Connection: close`): the status and the body as JSON (Null when
    /// it is not JSON).
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to OpenSearch");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("an answer");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for OpenSearch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible object store: S3Proxy 2.6 over its filesystem backend (tests/s3proxy,
/// built by scripts/ensure-deps.sh from Maven Central) on a free loopback port, checking
/// SigV4 signatures against one identity, with the bucket [`S3Proxy::BUCKET`]; stopped when
/// dropped.
pub struct S3Proxy {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl S3Proxy {
    pub const ACCESS_KEY: &'static str = "sluice";
    pub const SECRET_KEY: &'static str = "sluice-secret";
    pub const BUCKET: &'static str = "lake";

    pub fn start() -> Self {
        let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("s3proxy/target/lib");
        assert!(lib.is_dir(), "{} is missing: run scripts/ensure-deps.sh", lib.display());
        let dir = tempfile::tempdir().expect("temp dir");
        let port = sluice_testkit::free_port();
        // The filesystem backend's buckets are the directories of its base directory.
        std::fs::create_dir_all(dir.path().join("data").join(Self::BUCKET)).expect("bucket directory");
        let props = dir.path().join("s3proxy.conf");
        std::fs::write(
            &props,
            format!(
                "s3proxy.endpoint=http://127.0.0.1:{port}\ns3proxy.authorization=aws-v2-or-v4\n\
                 s3proxy.identity={}\ns3proxy.credential={}\njclouds.provider=filesystem\n\
                 jclouds.filesystem.basedir={}\n",
                Self::ACCESS_KEY,
                Self::SECRET_KEY,
                dir.path().join("data").display()
            ),
        )
        .expect("S3Proxy config");
        let child = std::process::Command::new("java")
            .args(["-Xmx256m", "-cp", &format!("{}/*", lib.display()), "org.gaul.s3proxy.Main", "--properties"])
            .arg(&props)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("java starts");
        let proxy = Self { child, port, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "S3Proxy did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding the bucket's objects, one file per object under its key.
    pub fn bucket_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join(Self::BUCKET)
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
