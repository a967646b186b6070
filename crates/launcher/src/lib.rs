//! Local clusters of real processes on loopback: an etcd process, partition nodes, gateways
//! and group coordinators as separate processes on free ports, each with its own data dir and
//! log file.
//!
//! `sluice cluster up` and the end-to-end tests (through `sluice-testkit`) use the same
//! [`Cluster`]: the CLI leaves the processes running and records them in `cluster.json`;
//! tests keep the handle and everything is stopped when it is dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Why a cluster could not be started or managed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(
        "etcd is not installed: install Debian's etcd-server package (apt-get install -y etcd-server) or put etcd on PATH"
    )]
    EtcdMissing,
    #[error(
        "the {0} binary was not found next to this program ({1}); build the workspace first: cargo build --workspace --bins"
    )]
    BinaryMissing(String, String),
    #[error("{what} did not become healthy within {secs} s; see its log {log}")]
    NotHealthy { what: String, secs: u64, log: String },
    #[error("{what} exited while starting; see its log {log}")]
    Exited { what: String, log: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("cluster file {0}: {1}")]
    Manifest(String, String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LauncherError {
    let what = what.into();
    move |e| LauncherError::Io(what, e)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Where the Sluice binaries are: `SLUICE_BIN_DIR`, else beside the running program (a test
/// binary in `target/*/deps` looks one level up).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir }
}

/// The path of a Sluice binary, checked to exist.
pub fn binary(name: &str) -> Result<PathBuf, LauncherError> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LauncherError::BinaryMissing(name.to_string(), bin_dir().display().to_string()))
    }
}

/// The etcd binary from PATH (or Debian's location).
pub fn etcd_binary() -> Result<PathBuf, LauncherError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or(LauncherError::EtcdMissing)
}

/// One process of a cluster, as written to `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessEntry {
    /// etcd, partition-node, gateway or group-coordinator.
    pub role: String,
    pub id: u64,
    pub pid: u32,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The argv that starts the process again with the same identity and data.
    pub cmd: Vec<String>,
    /// A gateway's Kafka listener (host:port); empty for other processes.
    #[serde(default)]
    pub kafka: String,
}

/// The `cluster.json` file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub gateway: String,
    pub etcd: String,
    pub processes: Vec<ProcessEntry>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub dir: PathBuf,
    pub nodes: u32,
    pub coordinators: u32,
    pub gateways: u32,
    /// Connect runners (they find the gateways in etcd).
    pub runners: u32,
    /// Stream processors (streaming SQL's persistent queries; they find the gateways in etcd).
    pub processors: u32,
    /// Extra environment for the Sluice services (e.g. short retention intervals in tests).
    pub env: Vec<(String, String)>,
    pub health_timeout: Duration,
    /// False starts etcd alone (for tests of the metadata store itself).
    pub services: bool,
}

impl ClusterSpec {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            nodes: 3,
            coordinators: 1,
            gateways: 1,
            runners: 1,
            processors: 1,
            env: Vec::new(),
            health_timeout: Duration::from_secs(60),
            services: true,
        }
    }
}

/// What [`Cluster::builder`] starts: `Cluster::builder().nodes(3).coordinators(2).gateways(2)`,
/// then [`ClusterBuilder::start`] for real processes with real etcd. (The test kit adds an
/// in-process mode to the same builder.)
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub nodes: u32,
    pub coordinators: u32,
    pub gateways: u32,
    /// None by default: tests that need connect runners ask for them.
    pub runners: u32,
    /// None by default: tests that need stream processors ask for them.
    pub processors: u32,
    pub env: Vec<(String, String)>,
}

impl ClusterBuilder {
    pub fn nodes(mut self, n: u32) -> Self {
        self.nodes = n;
        self
    }

    pub fn coordinators(mut self, n: u32) -> Self {
        self.coordinators = n;
        self
    }

    pub fn gateways(mut self, n: u32) -> Self {
        self.gateways = n;
        self
    }

    pub fn runners(mut self, n: u32) -> Self {
        self.runners = n;
        self
    }

    pub fn processors(mut self, n: u32) -> Self {
        self.processors = n;
        self
    }

    /// A setting for every service, as `SLUICE_*` environment (e.g.
    /// `("SLUICE_ETCD__LEASE_TTL_SECS", "2")`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts etcd and the services as processes under `dir`, owned by the handle.
    pub async fn start(self, dir: impl Into<PathBuf>) -> Result<Cluster, LauncherError> {
        let mut spec = ClusterSpec::new(dir);
        spec.nodes = self.nodes;
        spec.coordinators = self.coordinators;
        spec.gateways = self.gateways;
        spec.runners = self.runners;
        spec.processors = self.processors;
        spec.env = self.env;
        Cluster::start(spec, true).await
    }
}

/// A running cluster. Dropping a handle that owns its processes kills them.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub manifest: Manifest,
    children: BTreeMap<(String, u64), Child>,
    owned: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            for c in self.children.values_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn spawn(entry: &mut ProcessEntry, env: &[(String, String)]) -> Result<Child, LauncherError> {
    std::fs::create_dir_all(&entry.data_dir).map_err(io(format!("creating {}", entry.data_dir.display())))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&entry.log)
        .map_err(io(format!("opening {}", entry.log.display())))?;
    let log2 = log.try_clone().map_err(io("log file"))?;
    let mut cmd = Command::new(&entry.cmd[0]);
    cmd.args(&entry.cmd[1..]).stdin(Stdio::null()).stdout(log).stderr(log2);
    for (k, v) in env {
        cmd.env(k, v);
    }
    #[cfg(unix)]
    {
        // Own process group: a Ctrl-C aimed at the CLI that started the cluster spares it.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(io(format!("starting {}", entry.cmd[0])))?;
    entry.pid = child.id();
    Ok(child)
}

/// Whether a service's log says it could not listen because its address was in use.
fn address_taken(e: &ProcessEntry) -> bool {
    // Rust says "Address already in use", Go (etcd) "address already in use".
    std::fs::read_to_string(&e.log).is_ok_and(|l| l.to_ascii_lowercase().contains("address already in use"))
}

/// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn etcd_healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &match addr.parse() {
            Ok(a) => a,
            Err(_) => return false,
        },
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

async fn grpc_serving(addr: &str) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else { return false };
    let Ok(ch) = ep.connect_timeout(Duration::from_millis(500)).connect().await else { return false };
    let mut client = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.check(req)).await,
        Ok(Ok(r)) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

async fn live_nodes(gateway: &str) -> usize {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{gateway}")) else { return 0 };
    let Ok(ch) = ep.connect_timeout(Duration::from_millis(500)).connect().await else { return 0 };
    let mut c = sluice_proto::v1::admin_client::AdminClient::new(ch);
    match tokio::time::timeout(Duration::from_secs(2), c.list_nodes(sluice_proto::v1::ListNodesRequest {})).await {
        Ok(Ok(r)) => r.into_inner().nodes.len(),
        _ => 0,
    }
}

impl Cluster {
    /// A cluster of 3 partition nodes, 1 coordinator and 1 gateway, to adjust.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { nodes: 3, coordinators: 1, gateways: 1, runners: 0, processors: 0, env: Vec::new() }
    }

    /// Starts etcd and the services, waits until all are healthy and the gateway sees every
    /// node, and writes `DIR/cluster.json`.
    pub async fn start(spec: ClusterSpec, owned: bool) -> Result<Self, LauncherError> {
        std::fs::create_dir_all(&spec.dir).map_err(io(format!("creating {}", spec.dir.display())))?;
        let dir = std::fs::canonicalize(&spec.dir).map_err(io(format!("resolving {}", spec.dir.display())))?;
        let mut c = Cluster {
            spec: ClusterSpec { dir: dir.clone(), ..spec },
            manifest: Manifest::default(),
            children: BTreeMap::new(),
            owned,
        };

        let etcd = etcd_binary()?;
        // etcd's ports are in every service's command: when one is taken between choosing it
        // and etcd binding it, etcd starts again on new ones before any service starts.
        let mut attempts = 0;
        let client_url = loop {
            let (client_port, peer_port) = (free_port(), free_port());
            let etcd_addr = format!("127.0.0.1:{client_port}");
            let client_url = format!("http://{etcd_addr}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let etcd_dir = dir.join("etcd");
            let cmd = vec![
                etcd.display().to_string(),
                "--name".into(),
                "sluice".into(),
                "--data-dir".into(),
                etcd_dir.display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                format!("sluice={peer_url}"),
            ];
            c.add(
                ProcessEntry {
                    role: "etcd".into(),
                    id: 1,
                    pid: 0,
                    addr: etcd_addr.clone(),
                    data_dir: etcd_dir,
                    log: dir.join("etcd.log"),
                    cmd,
                    kafka: String::new(),
                },
                &[],
            )?;
            match c.wait_healthy("etcd", 1).await {
                Ok(()) => break client_url,
                Err(e) => {
                    let taken = c.entry("etcd", 1).is_some_and(address_taken);
                    if !taken || attempts == 5 {
                        return Err(e);
                    }
                    attempts += 1;
                    tracing::info!(attempts, "etcd's address was taken; starting it again on other ports");
                    c.children.remove(&("etcd".to_string(), 1));
                    c.manifest.processes.retain(|p| p.role != "etcd");
                    let _ = std::fs::remove_dir_all(dir.join("etcd"));
                }
            }
        };
        c.manifest.etcd = client_url.clone();
        if !c.spec.services {
            c.write_manifest()?;
            return Ok(c);
        }

        let env = c.spec.env.clone();
        let service = |role: &str, bin: &str, id: u64| -> Result<ProcessEntry, LauncherError> {
            let addr = format!("127.0.0.1:{}", free_port());
            let data_dir = dir.join(format!("{role}-{id}"));
            let cmd = vec![
                binary(bin)?.display().to_string(),
                "--listen".into(),
                addr.clone(),
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--etcd".into(),
                client_url.clone(),
            ];
            let mut cmd = cmd;
            // Every gateway serves Kafka clients too, on a port of its own.
            let kafka = if role == "gateway" { format!("127.0.0.1:{}", free_port()) } else { String::new() };
            if !kafka.is_empty() {
                cmd.extend(["--kafka-listen".to_string(), kafka.clone()]);
            }
            Ok(ProcessEntry {
                role: role.into(),
                id,
                pid: 0,
                addr,
                data_dir,
                log: dir.join(format!("{role}-{id}.log")),
                cmd,
                kafka,
            })
        };
        for id in 1..=c.spec.nodes as u64 {
            c.add(service("partition-node", "sluice-partition-node", id)?, &env)?;
        }
        for id in 1..=c.spec.gateways.max(1) as u64 {
            c.add(service("gateway", "sluice-gateway", id)?, &env)?;
        }
        for id in 1..=c.spec.coordinators as u64 {
            c.add(service("group-coordinator", "sluice-group-coordinator", id)?, &env)?;
        }
        for id in 1..=c.spec.runners as u64 {
            c.add(service("connect-runner", "sluice-connect-runner", id)?, &env)?;
        }
        for id in 1..=c.spec.processors as u64 {
            c.add(service("stream-processor", "sluice-stream-processor", id)?, &env)?;
        }
        let entries: Vec<_> =
            c.manifest.processes.iter().filter(|e| e.role != "etcd").map(|e| (e.role.clone(), e.id)).collect();
        for (role, id) in &entries {
            c.wait_healthy(role, *id).await?;
        }
        // A service that lost its port to another process after that process answered for
        // it has exited by now: started again on a new port.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let dead: Vec<_> = entries.iter().filter(|(r, i)| c.exited(r, *i)).cloned().collect();
            if dead.is_empty() {
                break;
            }
            for (role, id) in &dead {
                c.wait_healthy(role, *id).await?;
            }
        }
        c.manifest.gateway = c.entry("gateway", 1).map(|e| e.addr.clone()).unwrap_or_default();
        c.wait_nodes(c.spec.nodes as usize).await?;
        if c.spec.coordinators > 0 {
            c.wait_coordinator().await?;
        }
        c.write_manifest()?;
        Ok(c)
    }

    /// Waits until a group coordinator is active behind the gateway (it has loaded the
    /// committed offsets and answers group calls).
    pub async fn wait_coordinator(&self) -> Result<(), LauncherError> {
        let deadline = Instant::now() + self.spec.health_timeout;
        loop {
            if let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.gateway()))
                && let Ok(ch) = ep.connect_timeout(Duration::from_millis(500)).connect().await
            {
                let mut c = sluice_proto::v1::groups_client::GroupsClient::new(ch);
                let req = sluice_proto::v1::ListGroupsRequest {};
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), c.list_groups(req)).await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(LauncherError::NotHealthy {
                    what: "an active group coordinator".into(),
                    secs: self.spec.health_timeout.as_secs(),
                    log: self.entry("group-coordinator", 1).map(|e| e.log.display().to_string()).unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn add(&mut self, mut e: ProcessEntry, env: &[(String, String)]) -> Result<(), LauncherError> {
        let child = spawn(&mut e, env)?;
        self.children.insert((e.role.clone(), e.id), child);
        self.manifest.processes.push(e);
        Ok(())
    }

    pub fn entry(&self, role: &str, id: u64) -> Option<&ProcessEntry> {
        self.manifest.processes.iter().find(|e| e.role == role && e.id == id)
    }

    /// The first gateway's address.
    pub fn gateway(&self) -> &str {
        &self.manifest.gateway
    }

    /// Every gateway's Kafka listener, comma-separated (Kafka clients' bootstrap.servers).
    pub fn kafka_brokers(&self) -> String {
        let all: Vec<&str> = self
            .manifest
            .processes
            .iter()
            .filter(|e| e.role == "gateway" && !e.kafka.is_empty())
            .map(|e| e.kafka.as_str())
            .collect();
        all.join(",")
    }

    /// Every gateway's address, comma-separated (what clients take for failover).
    pub fn gateways(&self) -> String {
        let all: Vec<&str> =
            self.manifest.processes.iter().filter(|e| e.role == "gateway").map(|e| e.addr.as_str()).collect();
        all.join(",")
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.spec.dir.join("cluster.json")
    }

    pub fn write_manifest(&self) -> Result<(), LauncherError> {
        let path = self.manifest_path();
        let json = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| LauncherError::Manifest(path.display().to_string(), e.to_string()))?;
        std::fs::write(&path, json).map_err(io(format!("writing {}", path.display())))
    }

    /// Waits until a process answers health checks. The process must be alive too: between
    /// [`free_port`] and the service's own bind another process may take the port (and, if it
    /// is a Sluice service of another cluster, answer the health check in its place); a
    /// service that exited because its address was taken is started again on a new port.
    pub async fn wait_healthy(&mut self, role: &str, id: u64) -> Result<(), LauncherError> {
        let deadline = Instant::now() + self.spec.health_timeout;
        let mut rebinds = 0;
        loop {
            let Some(e) = self.entry(role, id).cloned() else { return Ok(()) };
            if self.exited(role, id) {
                if rebinds < 5 && role != "etcd" && address_taken(&e) {
                    rebinds += 1;
                    self.rebind(role, id)?;
                    continue;
                }
                return Err(LauncherError::Exited { what: format!("{role} {id}"), log: e.log.display().to_string() });
            }
            let ok = if role == "etcd" { etcd_healthy(&e.addr) } else { grpc_serving(&e.addr).await };
            if ok && !self.exited(role, id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LauncherError::NotHealthy {
                    what: format!("{role} {id}"),
                    secs: self.spec.health_timeout.as_secs(),
                    log: e.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether a process of this cluster has ended.
    fn exited(&mut self, role: &str, id: u64) -> bool {
        self.children.get_mut(&(role.to_string(), id)).is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Starts a service again on a new free port.
    fn rebind(&mut self, role: &str, id: u64) -> Result<(), LauncherError> {
        let env = self.spec.env.clone();
        let Some(pos) = self.manifest.processes.iter().position(|e| e.role == role && e.id == id) else {
            return Ok(());
        };
        let mut e = self.manifest.processes[pos].clone();
        let addr = format!("127.0.0.1:{}", free_port());
        if let Some(i) = e.cmd.iter().position(|a| a == "--listen") {
            e.cmd[i + 1] = addr.clone();
        }
        tracing::info!(role, id, from = %e.addr, to = %addr, "address taken meanwhile; starting again on another port");
        e.addr = addr;
        // Either port may have been the one taken: the Kafka listener moves too.
        if let Some(i) = e.cmd.iter().position(|a| a == "--kafka-listen") {
            e.kafka = format!("127.0.0.1:{}", free_port());
            e.cmd[i + 1] = e.kafka.clone();
        }
        let child = spawn(&mut e, &env)?;
        self.children.insert((role.to_string(), id), child);
        if role == "gateway" && id == 1 {
            self.manifest.gateway = e.addr.clone();
        }
        self.manifest.processes[pos] = e;
        Ok(())
    }

    /// Waits until the gateway sees `n` live partition nodes.
    pub async fn wait_nodes(&self, n: usize) -> Result<(), LauncherError> {
        let deadline = Instant::now() + self.spec.health_timeout;
        while live_nodes(self.gateway()).await != n {
            if Instant::now() >= deadline {
                return Err(LauncherError::NotHealthy {
                    what: format!("a gateway view of {n} partition nodes"),
                    secs: self.spec.health_timeout.as_secs(),
                    log: self.entry("gateway", 1).map(|e| e.log.display().to_string()).unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// `kill -9` a process.
    pub fn kill(&mut self, role: &str, id: u64) {
        if let Some(mut c) = self.children.remove(&(role.to_string(), id)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a process cleanly (SIGTERM) and waits up to `limit` for it to exit; returns
    /// whether it did (if not, it is killed with -9).
    pub async fn stop(&mut self, role: &str, id: u64, limit: Duration) -> bool {
        let Some(mut c) = self.children.remove(&(role.to_string(), id)) else { return false };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends a signal to a process without forgetting it (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, role: &str, id: u64, sig: &str) -> bool {
        self.entry(role, id).is_some_and(|e| signal(e.pid, sig))
    }

    /// Starts a killed process again with the same identity, data and address.
    pub async fn restart(&mut self, role: &str, id: u64) -> Result<(), LauncherError> {
        self.kill(role, id);
        let env = if role == "etcd" { Vec::new() } else { self.spec.env.clone() };
        let Some(pos) = self.manifest.processes.iter().position(|e| e.role == role && e.id == id) else {
            return Ok(());
        };
        let mut e = self.manifest.processes[pos].clone();
        let child = spawn(&mut e, &env)?;
        self.children.insert((role.to_string(), id), child);
        self.manifest.processes[pos] = e;
        self.write_manifest()?;
        self.wait_healthy(role, id).await
    }

    /// Reads `DIR/cluster.json`.
    pub fn load(dir: &Path) -> Result<Manifest, LauncherError> {
        let path = dir.join("cluster.json");
        let bytes = std::fs::read(&path).map_err(io(format!("reading {} (is a cluster up there?)", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| LauncherError::Manifest(path.display().to_string(), e.to_string()))
    }

    /// Stops every process recorded in `DIR/cluster.json`: SIGTERM, then SIGKILL after 10 s.
    /// Returns how many were running.
    pub async fn down(dir: &Path) -> Result<usize, LauncherError> {
        let m = Self::load(dir)?;
        let mut running = 0;
        // Services first, etcd last, so nodes deregister cleanly.
        for e in m.processes.iter().rev() {
            if signal(e.pid, "0") && signal(e.pid, "TERM") {
                running += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.processes.iter().any(|e| signal(e.pid, "0")) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for e in &m.processes {
            if signal(e.pid, "0") {
                signal(e.pid, "KILL");
            }
        }
        let _ = std::fs::remove_file(dir.join("cluster.json"));
        Ok(running)
    }
}
