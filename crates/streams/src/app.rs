//! Running a topology against a Sluice cluster (Kafka's `KafkaStreams`).
//!
//! The instances of an application are the members of one classic group named after the
//! application id, as Kafka Streams' are. At each generation the leader splits the tasks (a
//! sub-topology and a partition of its topics) over the instances with the cooperative,
//! sticky assignment Connect's runners use: a task stays where it runs while that instance
//! is within its fair share, and a task that moves is first given up (its owner commits and
//! closes it) before the next generation hands it on. So starting a second instance moves
//! half the tasks to it, and stopping one moves them back.
//!
//! A task's stores live in sled (`state_dir`), one tree per store and task, and every write
//! goes to the store's compacted changelog topic. A task that opens restores its stores from
//! the changelog: from the offset a clean close wrote down (a checkpoint), or, without one
//! (a crash), from the start into emptied trees.
//!
//! Processing runs on one thread of the instance (its tasks' processors are single-threaded).
//! Every `commit_interval` the outputs of every task, their changelog records and the input
//! offsets they reach are committed: with `exactly_once`, in one transaction of the
//! instance's transactional producer (`<application id>-<instance>`) whose offsets are
//! fenced by the group generation (KIP-447), so a zombie's work is aborted; new owners read
//! the committed offsets stable (waiting for a pending transaction) and the changelogs and
//! repartition topics read_committed. With `at_least_once`, outputs are flushed and then the
//! offsets committed: a crash reprocesses what followed the last commit.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord};
use sluice_client::producer::{DeliveryFuture, GroupMetadata, Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};
use sluice_proto::v1::{
    ClassicHeartbeatRequest, ClassicJoinRequest, ClassicLeaveRequest, ClassicLeaver, ClassicProtocol,
    ClassicSyncRequest, CommittedOffset, IsolationLevel, OffsetSpec,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::StreamsError;
use crate::codec::Codec;
use crate::record::Record;
use crate::store::{Backend, Entries};
use crate::task::{Task, TaskId};
use crate::topology::{Output, StoreSpec, TaskMetrics, Topology};

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs flushed, then offsets committed: a crash reprocesses records (faster).
    AtLeastOnce,
    /// Outputs, changelog writes and offsets in one transaction per commit.
    ExactlyOnce,
}

/// An application instance's settings.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// [application.id] The group, the prefix of internal topics and of transactional ids.
    pub application_id: String,
    /// Gateway addresses, comma-separated.
    pub gateway: String,
    pub guarantee: Guarantee,
    /// [commit.interval.ms]
    pub commit_interval: Duration,
    /// [state.dir] Where the stores' sled database goes (a directory per application).
    pub state_dir: PathBuf,
    /// This instance's name: its member name, transactional id suffix and state directory.
    /// Restarting an instance under the same name fences what it left running and finds its
    /// stores again. Empty (the default): the host name, or `<host>-2`, `<host>-3`, ... the
    /// first whose state directory no other process holds, so instances started on one
    /// machine get distinct names and a restarted one gets its old name back.
    pub instance: String,
    /// [replication.factor] Of the internal topics (lowered to the live nodes).
    pub replication_factor: u32,
    /// [session.timeout.ms] How long the group waits for a silent instance.
    pub session_timeout: Duration,
    /// [max.task.idle.ms] How long a task with several inputs waits for one that has no
    /// records buffered before it processes the others' (records are taken in timestamp
    /// order across a task's inputs while all have some).
    pub max_task_idle: Duration,
    /// [auto.offset.reset] Where an input partition without a committed offset is read
    /// from: the start (Kafka Streams' default) or the end. Repartition topics are always
    /// read from the start.
    pub offset_reset: OffsetReset,
    /// Where an input partition without a committed offset starts, when it is listed here
    /// (before `offset_reset` applies): a position the application was told to start from,
    /// e.g. the end of its inputs when it was declared rather than when it first ran. A
    /// position below the partition's log start reads from the log start; a partition of a
    /// listed topic that is not listed (added since) reads from its log start.
    pub initial_offsets: BTreeMap<(String, u32), i64>,
}

/// `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl StreamsConfig {
    pub fn new(application_id: &str, gateway: &str) -> Self {
        Self {
            application_id: application_id.to_string(),
            gateway: gateway.to_string(),
            guarantee: Guarantee::AtLeastOnce,
            commit_interval: Duration::from_millis(100),
            state_dir: std::env::temp_dir().join("sluice-streams"),
            instance: String::new(),
            replication_factor: 3,
            session_timeout: Duration::from_secs(10),
            max_task_idle: Duration::from_millis(200),
            offset_reset: OffsetReset::Earliest,
            initial_offsets: BTreeMap::new(),
        }
    }
}

/// Opens the instance's state directory, choosing the instance's name when none was given:
/// sled locks its directory, so a name whose directory is open elsewhere is taken.
fn open_state(config: &mut StreamsConfig) -> Result<sled::Db, StreamsError> {
    let open = |name: &str| {
        let dir = config.state_dir.join(&config.application_id).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("state.dir {}: {e}", dir.display()))?;
        sled::open(&dir).map_err(|e| format!("state.dir {}: {e}", dir.display()))
    };
    if !config.instance.is_empty() {
        return open(&config.instance).map_err(StreamsError::Config);
    }
    let host = hostname();
    let mut last = String::new();
    for n in 1..=64 {
        let name = if n == 1 { host.clone() } else { format!("{host}-{n}") };
        match open(&name) {
            Ok(db) => {
                config.instance = name;
                return Ok(db);
            }
            // Only a held lock moves on to the next name; anything else is the directory's
            // own problem and would repeat.
            Err(e) if e.contains("could not acquire lock") => last = e,
            Err(e) => return Err(StreamsError::Config(e)),
        }
    }
    Err(StreamsError::Config(format!("64 instances of this application already run here ({last}): name this one")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}

/// What an instance reports about itself.
#[derive(Debug, Clone, Default)]
pub struct InstanceState {
    /// The tasks it runs.
    pub tasks: Vec<TaskId>,
    pub generation: u64,
    /// Per task: processed, dropped late and skipped records.
    pub metrics: BTreeMap<TaskId, TaskMetrics>,
    /// Changelog records applied while opening tasks, in total.
    pub restored: u64,
    /// Commits done.
    pub commits: u64,
    /// Why the instance stopped, when it did on its own.
    pub failed: Option<String>,
}

enum Command {
    /// Every entry of store `name` across the instance's tasks.
    All(String, oneshot::Sender<Entries>),
}

/// A running application instance.
pub struct StreamsApp {
    commands: mpsc::Sender<Command>,
    state: Arc<Mutex<InstanceState>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StreamsApp {
    /// Starts an instance of `topology`: creates the internal topics, joins the application's
    /// group and processes the tasks it is given until [`StreamsApp::close`].
    pub fn start(topology: Topology, mut config: StreamsConfig) -> Result<Self, StreamsError> {
        topology.validate()?;
        let db = open_state(&mut config)?;
        tracing::info!(instance = %config.instance, "streams instance starting");
        let (commands, rx) = mpsc::channel(16);
        let (stop, stopped) = watch::channel(false);
        let state = Arc::new(Mutex::new(InstanceState::default()));
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("streams-{}", config.application_id))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return set_failed(&st, format!("no runtime: {e}")),
                };
                let local = tokio::task::LocalSet::new();
                let instance = Instance::new(topology, config, db, st.clone(), stopped.clone());
                // A processor that panics (a user's function) stops the instance, saying so.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    local.block_on(&rt, instance.run(rx, stopped))
                }));
                match run {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "streams instance stopped");
                        set_failed(&st, e.to_string());
                    }
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        set_failed(&st, format!("a processor panicked: {why}"));
                    }
                }
            })
            .map_err(|e| StreamsError::Config(format!("no processing thread: {e}")))?;
        Ok(Self { commands, state, stop, thread: Some(thread) })
    }

    /// What the instance runs and has done so far.
    pub fn state(&self) -> InstanceState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Interactive query: every entry of key-value store `store` held by this instance's
    /// tasks, decoded.
    pub async fn all<K: Codec, V: Codec>(&self, store: &str) -> Result<Vec<(K, V)>, StreamsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::All(store.to_string(), tx))
            .await
            .map_err(|_| StreamsError::Config("the instance has stopped".into()))?;
        let entries = rx.await.map_err(|_| StreamsError::Config("the instance has stopped".into()))?;
        entries
            .into_iter()
            .map(|(k, v)| {
                let key = K::decode(&k).map_err(|e| StreamsError::Codec(store.to_string(), e))?;
                let value = V::decode(&v).map_err(|e| StreamsError::Codec(store.to_string(), e))?;
                Ok((key, value))
            })
            .collect()
    }

    /// Commits, closes the tasks cleanly (their stores checkpointed) and leaves the group.
    pub fn close(self) {
        drop(self);
    }
}

/// Dropping an instance closes it as [`StreamsApp::close`] does.
impl Drop for StreamsApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_failed(state: &Mutex<InstanceState>, why: String) {
    if let Ok(mut s) = state.lock() {
        s.failed = Some(why);
    }
}

/// A sled tree as a store backend.
struct SledBackend(sled::Tree);

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| e.to_string())
    }
    fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) => self.0.insert(key, v).map(|_| ()),
            None => self.0.remove(key).map(|_| ()),
        }
        .map_err(|e| e.to_string())
    }
    fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Entries, String> {
        let iter = match to {
            Some(t) => self.0.range(from..t),
            None => self.0.range(from..),
        };
        iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(|e| e.to_string())).collect()
    }
    fn flush(&mut self) -> Result<(), String> {
        self.0.flush().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Heartbeats sent while tasks open.
struct Beating {
    task: tokio::task::JoinHandle<()>,
    rebalance: Arc<std::sync::atomic::AtomicBool>,
}

impl Beating {
    /// Stops; answers whether a rebalance was asked for.
    fn stop(self) -> bool {
        self.task.abort();
        self.rebalance.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What an instance joins the group with: its name and the tasks it runs.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Joining {
    instance: String,
    owned: Vec<(usize, u32)>,
}

const PROTOCOL_TYPE: &str = "streams";
const PROTOCOL: &str = "sluice-streams";
const HEARTBEAT: Duration = Duration::from_millis(1000);

/// The processing thread's state.
struct Instance {
    topology: Rc<Topology>,
    cfg: StreamsConfig,
    db: sled::Db,
    state: Arc<Mutex<InstanceState>>,
    tasks: BTreeMap<TaskId, Task>,
    /// The next offset of each input partition, as processed.
    positions: BTreeMap<(String, u32), i64>,
    /// Positions processed since the last commit.
    dirty: bool,
    member_id: String,
    generation: u64,
    /// Input readers of the current assignment, and its number.
    readers: Vec<tokio::task::JoinHandle<()>>,
    epoch: u64,
    /// The task of each input partition.
    routes: HashMap<String, HashMap<u32, TaskId>>,
    /// How far in each changelog partition the stores are (restored, then written).
    changelog_at: HashMap<(String, u32), i64>,
    /// Each task's counts as last exported.
    reported: HashMap<TaskId, TaskMetrics>,
    /// Set when the instance must stop (waits check it).
    stop: watch::Receiver<bool>,
    /// Each task's records read and not yet processed, per input.
    pending: BTreeMap<TaskId, Pending>,
}

/// A task's records waiting to be processed: a queue per input (its topics, at its partition)
/// with the next offset to process, taken in timestamp order.
#[derive(Default)]
struct Pending {
    inputs: BTreeMap<String, Input>,
    /// Since when an input has had nothing buffered while another had records.
    idle_since: Option<Instant>,
}

#[derive(Default)]
struct Input {
    queue: std::collections::VecDeque<ConsumerRecord>,
    next: i64,
}

impl Instance {
    fn new(
        topology: Topology,
        cfg: StreamsConfig,
        db: sled::Db,
        state: Arc<Mutex<InstanceState>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            topology: Rc::new(topology),
            cfg,
            db,
            state,
            tasks: BTreeMap::new(),
            positions: BTreeMap::new(),
            dirty: false,
            member_id: String::new(),
            generation: 0,
            readers: Vec::new(),
            epoch: 0,
            routes: HashMap::new(),
            changelog_at: HashMap::new(),
            reported: HashMap::new(),
            stop,
            pending: BTreeMap::new(),
        }
    }

    fn app(&self) -> &str {
        &self.cfg.application_id
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), StreamsError> {
        let client = loop {
            match Client::connect(&self.cfg.gateway).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::info!(error = %e, "no gateway answers yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
        };
        let counts = self.prepare_topics(&client).await?;
        let producer = match self.cfg.guarantee {
            Guarantee::ExactlyOnce => {
                let id = format!("{}-{}", self.app(), self.cfg.instance);
                // Kafka Streams' 10 s: a dead instance's open transaction holds its tasks' new
                // owners (they read offsets stable) until it is aborted.
                let cfg = ProducerConfig {
                    linger: Duration::from_millis(5),
                    transaction_timeout: Duration::from_secs(10),
                    ..ProducerConfig::default()
                };
                Producer::transactional(client.clone(), &id, cfg).await.map_err(remote)?
            }
            Guarantee::AtLeastOnce => Producer::new(client.clone(), ProducerConfig::default()),
        };
        let (records_tx, mut records) = mpsc::channel::<(u64, Vec<ConsumerRecord>)>(64);
        // A dropped `StreamsApp` stops the instance as `close` does.
        let stopping = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
        while !stopping(&stop) {
            let joined = match self.join(&client, &counts).await {
                Ok(j) => j,
                Err(e) => {
                    // The tasks stay open, unprocessed: everything they did is committed, and
                    // the next generation most likely gives them back.
                    tracing::info!(error = %e, "joining the application's group failed; trying again");
                    if e.sluice_code() == sluice_core::error::codes::UNKNOWN_MEMBER {
                        self.member_id.clear();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Opening tasks (restores) may take long: the membership is kept alive meanwhile,
            // and a rebalance asked for meanwhile is answered right after.
            let beating = self.heartbeat_in_background(&client);
            let applied = self.apply(&client, joined, &records_tx, &stop, &beating.rebalance).await;
            let rebalance = beating.stop();
            match applied {
                Ok(gave_up) if gave_up || rebalance => {
                    // Tasks given up go to their new owners in the next generation: join again.
                    continue;
                }
                Ok(_) => {}
                Err(e @ StreamsError::Store(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "opening the tasks failed; joining again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            let outcome = self.process(&client, &producer, &mut records, &mut commands, &mut stop).await;
            match outcome {
                Ok(()) => {}
                // A store that cannot be read or written, or a record its codec refuses, fails
                // the same way every time: stop rather than rebalance the group for ever.
                Err(e @ StreamsError::Store(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "processing interrupted; the tasks are reopened from their changelogs");
                    self.drop_tasks("a commit failed");
                    if matches!(&e, StreamsError::Client(c) if c.sluice_code() == sluice_core::error::codes::PRODUCER_FENCED)
                    {
                        return Err(e);
                    }
                }
            }
        }
        // A clean close: commit, checkpoint the stores, leave.
        if self.dirty
            && let Err(e) = self.commit(&client, &producer).await
        {
            tracing::warn!(error = %e, "the last commit failed");
            self.drop_tasks("the last commit failed");
        }
        self.close_tasks(self.tasks.keys().copied().collect());
        self.stop_readers();
        producer.close().await;
        if !self.member_id.is_empty() {
            let req = ClassicLeaveRequest {
                group_id: self.app().to_string(),
                members: vec![ClassicLeaver {
                    member_id: self.member_id.clone(),
                    instance_id: self.cfg.instance.clone(),
                }],
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), client.groups().leave_classic(req)).await;
        }
        Ok(())
    }

    /// Checks co-partitioning and creates the repartition and changelog topics; answers each
    /// sub-topology's partition count.
    async fn prepare_topics(&self, client: &Client) -> Result<Vec<u32>, StreamsError> {
        let app = self.app().to_string();
        let subs = self.topology.sub_topologies(&app);
        let writers = self.topology.repartition_writers(&app);
        let repartition = |t: &str| writers.iter().any(|(r, _)| r == t);
        // The input topics' partition counts: topics read together must agree.
        let mut counts: Vec<Option<(u32, String)>> = vec![None; subs.len()];
        for (i, sub) in subs.iter().enumerate() {
            for t in sub.topics.iter().filter(|t| !repartition(t)) {
                let got = client.describe_topic(t).await.map_err(remote)?.partitions.len() as u32;
                match &counts[i] {
                    Some((n, first)) if *n != got => {
                        return Err(StreamsError::Config(format!(
                            "topics '{first}' ({n} partitions) and '{t}' ({got}) are joined and must have as many partitions"
                        )));
                    }
                    Some(_) => {}
                    None => counts[i] = Some((got, t.clone())),
                }
            }
        }
        // A sub-topology reading only repartition topics gets the count of the one writing
        // them (Kafka's rule); one that joins them with input topics, the inputs' count.
        for _ in 0..=subs.len() {
            for (i, sub) in subs.iter().enumerate() {
                if counts[i].is_some() {
                    continue;
                }
                let from_writer = sub.topics.iter().find_map(|t| {
                    let writer = writers.iter().find(|(r, _)| r == t)?.1?;
                    counts.get(writer)?.clone()
                });
                counts[i] = from_writer;
            }
        }
        let counts: Vec<u32> = counts.into_iter().map(|c| c.map_or(1, |(n, _)| n)).collect();
        for (topic, _) in &writers {
            let reader = subs.iter().position(|s| s.topics.contains(topic)).unwrap_or(0);
            let want = counts.get(reader).copied().unwrap_or(1);
            client
                .create_topic_if_missing(topic, want, self.cfg.replication_factor, HashMap::new())
                .await
                .map_err(remote)?;
            let got = client.describe_topic(topic).await.map_err(remote)?.partitions.len() as u32;
            if got != want {
                return Err(StreamsError::Config(format!(
                    "repartition topic '{topic}' has {got} partitions where the topology needs {want}: delete it (the application's state with it) or keep the input topics' partition counts"
                )));
            }
        }
        let compact = HashMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        for (store, topic) in self.topology.changelog_topics(&app) {
            let sub = self.topology.sub_topology_of_store(&store).unwrap_or(0);
            let partitions = counts.get(sub).copied().unwrap_or(1);
            client
                .create_topic_if_missing(&topic, partitions, self.cfg.replication_factor, compact.clone())
                .await
                .map_err(remote)?;
        }
        Ok(counts)
    }

    /// Joins the group (the leader assigns) and answers this instance's tasks.
    async fn join(&mut self, client: &Client, counts: &[u32]) -> Result<Vec<TaskId>, ClientError> {
        let owned = self.tasks.keys().map(|t| (t.sub_topology, t.partition)).collect();
        let joining = Joining { instance: self.cfg.instance.clone(), owned };
        let join = ClassicJoinRequest {
            group_id: self.app().to_string(),
            member_id: self.member_id.clone(),
            // Static membership: an instance restarted under its name takes its tasks back at
            // once instead of waiting for its old self's session to expire.
            instance_id: self.cfg.instance.clone(),
            client_id: self.cfg.instance.clone(),
            client_host: String::new(),
            session_timeout_ms: self.cfg.session_timeout.as_millis() as u32,
            rebalance_timeout_ms: 30_000,
            protocol_type: PROTOCOL_TYPE.into(),
            protocols: vec![ClassicProtocol {
                name: PROTOCOL.into(),
                metadata: serde_json::to_vec(&joining).unwrap_or_default().into(),
            }],
        };
        let joined = client.groups().join_classic(join).await?.into_inner();
        self.member_id = joined.member_id.clone();
        let assignments = if joined.leader == joined.member_id {
            let all: Vec<(usize, u32)> =
                counts.iter().enumerate().flat_map(|(sub, n)| (0..*n).map(move |p| (sub, p))).collect();
            sluice_client::group::cooperative_assignments(
                &joined.members,
                &all,
                |meta| serde_json::from_slice::<Joining>(meta).unwrap_or_default().owned,
                |share| serde_json::to_vec(share).unwrap_or_default(),
            )
        } else {
            vec![]
        };
        let sync = ClassicSyncRequest {
            group_id: self.app().to_string(),
            member_id: self.member_id.clone(),
            instance_id: self.cfg.instance.clone(),
            generation: joined.generation,
            protocol_type: PROTOCOL_TYPE.into(),
            protocol: PROTOCOL.into(),
            assignments,
        };
        let synced = client.groups().sync_classic(sync).await?.into_inner();
        self.generation = joined.generation;
        let mine: Vec<(usize, u32)> = serde_json::from_slice(&synced.assignment).unwrap_or_default();
        Ok(mine.into_iter().map(|(s, p)| TaskId { sub_topology: s, partition: p }).collect())
    }

    /// Closes the tasks given up and opens the new ones, then reads their inputs; answers
    /// whether tasks were given up.
    async fn apply(
        &mut self,
        client: &Client,
        mine: Vec<TaskId>,
        records: &mpsc::Sender<(u64, Vec<ConsumerRecord>)>,
        stop: &watch::Receiver<bool>,
        rebalance: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, StreamsError> {
        let gone: Vec<TaskId> = self.tasks.keys().filter(|t| !mine.contains(t)).copied().collect();
        let gave_up = !gone.is_empty();
        self.close_tasks(gone);
        for id in mine.iter().filter(|t| !self.tasks.contains_key(t)).copied().collect::<Vec<_>>() {
            let task = self.open_task(client, id, stop, rebalance).await?;
            self.tasks.insert(id, task);
            crate::metrics::metrics().tasks.add(1, &crate::metrics::task(&self.cfg.application_id, &id));
        }
        tracing::info!(generation = self.generation, tasks = ?mine, "streams tasks assigned");
        if let Ok(mut s) = self.state.lock() {
            s.tasks = mine.clone();
            s.generation = self.generation;
        }
        self.start_readers(client, records).await?;
        Ok(gave_up)
    }

    /// Heartbeats for the current generation until stopped; tells whether the group asked
    /// for a rebalance meanwhile.
    fn heartbeat_in_background(&self, client: &Client) -> Beating {
        let (client, flag) = (client.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let hb = ClassicHeartbeatRequest {
            group_id: self.app().to_string(),
            member_id: self.member_id.clone(),
            instance_id: self.cfg.instance.clone(),
            generation: self.generation,
        };
        let seen = flag.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                // A rebalance, or a membership gone: answer it as soon as the tasks are open
                // (restores stop early for it).
                if client.groups().heartbeat_classic(hb.clone()).await.is_err() {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Beating { task, rebalance: flag }
    }

    /// Opens a task: once no transaction holds its input offsets, its stores are restored
    /// from their changelogs to their ends.
    async fn open_task(
        &mut self,
        client: &Client,
        id: TaskId,
        stop: &watch::Receiver<bool>,
        rebalance: &std::sync::atomic::AtomicBool,
    ) -> Result<Task, StreamsError> {
        let app = self.app().to_string();
        let db = self.db.clone();
        let open = move |spec: &StoreSpec| -> Box<dyn Backend> {
            let name = format!("{}-{}", spec.name, id);
            match db.open_tree(name.as_bytes()) {
                Ok(t) => Box::new(SledBackend(t)),
                Err(e) => {
                    tracing::error!(error = %e, store = %spec.name, "store unreadable; kept in memory");
                    Box::new(crate::store::MemoryBackend::default())
                }
            }
        };
        let task = Task::new(&self.topology, &app, id, &open)?;
        // A previous owner's transaction still being decided would add to the changelogs.
        for topic in task.topics() {
            self.committed(client, &topic, vec![id.partition]).await?;
        }
        let checkpoints = self.db.open_tree("checkpoints").map_err(sled_error)?;
        let mut restored = 0u64;
        for (store, topic) in task.changelogs().clone() {
            let Some(handle) = task.store(&store) else { continue };
            let key = format!("{store}-{id}");
            let end = end_offset(client, &topic, id.partition).await?;
            // A checkpoint is written at a clean close only: without one the tree may hold
            // writes that never committed, so it is emptied and rebuilt. One past the end (a
            // changelog deleted and created again) is as good as none. It is removed once the
            // store is restored (replaying from it again after an interruption is harmless).
            let checkpoint = checkpoints
                .get(key.as_bytes())
                .map_err(sled_error)?
                .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
                .filter(|c| *c <= end);
            let from = match checkpoint {
                Some(c) => c,
                None => {
                    self.db.open_tree(key.as_bytes()).and_then(|t| t.clear()).map_err(sled_error)?;
                    0
                }
            };
            // Records below the log start are gone (deleted records): nothing to restore there.
            let from = from.max(start_offset(client, &topic, id.partition).await?);
            let (mut at, mut end) = (from, end);
            let mut n = 0u64;
            if from < end {
                let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
                let mut c = Consumer::at(client.clone(), &topic, BTreeMap::from([(id.partition, from)]), cfg);
                // To the end as it was: every record of a decided transaction below it, markers
                // included (positions move past them), so nothing committed is left out.
                while at < end {
                    if *stop.borrow() || stop.has_changed().is_err() {
                        return Err(StreamsError::Config("stopping".into()));
                    }
                    if rebalance.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(StreamsError::Config("the group rebalances; restoring goes on after it".into()));
                    }
                    let batch = c.poll(Duration::from_millis(500)).await.map_err(remote)?;
                    if batch.is_empty() {
                        // A log cut below the end (an unclean election) ends lower.
                        end = end.min(end_offset(client, &topic, id.partition).await?);
                    }
                    for r in batch {
                        if let Some(k) = r.key.as_deref() {
                            handle.borrow_mut().restore(k, r.value.as_deref()).map_err(StreamsError::Store)?;
                            n += 1;
                        }
                    }
                    at = c.positions().get(&id.partition).copied().unwrap_or(at);
                }
                tracing::info!(task = %id, store = %store, from, end, "store restored");
                let attrs = [KeyValue::new("application", app.clone()), KeyValue::new("store", store.clone())];
                crate::metrics::metrics().restored.add(n, &attrs);
                restored += n;
            }
            // From here on the tree takes writes that may not commit.
            checkpoints.remove(key.as_bytes()).map_err(sled_error)?;
            let _ = checkpoints.flush();
            self.changelog_at.insert((topic.clone(), id.partition), at.max(end));
        }
        if let Ok(mut s) = self.state.lock() {
            s.restored += restored;
        }
        Ok(task)
    }

    /// The committed offsets of `partitions` of `topic`, once no transaction holds them (or
    /// an error when the instance is stopping).
    async fn committed(
        &self,
        client: &Client,
        topic: &str,
        partitions: Vec<u32>,
    ) -> Result<Vec<CommittedOffset>, StreamsError> {
        loop {
            match client.fetch_stable_offsets(self.app(), topic, partitions.clone()).await {
                Ok(c) => return Ok(c),
                // A transaction holding these offsets is still being decided.
                Err(e) if e.is_retriable() => {
                    if *self.stop.borrow() || self.stop.has_changed().is_err() {
                        return Err(remote(e));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(remote(e)),
            }
        }
    }

    /// Closes tasks cleanly: stores flushed and checkpointed at the changelog offsets this
    /// instance knows its stores reflect (restored to, then written by its commits).
    fn close_tasks(&mut self, ids: Vec<TaskId>) {
        self.sync_positions();
        let checkpoints = self.db.open_tree("checkpoints").ok();
        for id in ids {
            let Some(mut task) = self.tasks.remove(&id) else { continue };
            self.pending.remove(&id);
            crate::metrics::metrics().tasks.add(-1, &crate::metrics::task(&self.cfg.application_id, &id));
            self.reported.remove(&id);
            let topics = task.topics();
            self.positions.retain(|(t, p), _| !(topics.contains(t) && *p == id.partition));
            let (Some(checkpoints), Ok(())) = (&checkpoints, task.flush()) else { continue };
            for (store, topic) in task.changelogs().clone() {
                if let Some(at) = self.changelog_at.remove(&(topic, id.partition)) {
                    let _ = checkpoints.insert(format!("{store}-{id}").as_bytes(), &at.to_be_bytes());
                }
            }
            let _ = checkpoints.flush();
        }
    }

    /// Drops every task without a checkpoint (their stores are rebuilt when reopened).
    fn drop_tasks(&mut self, why: &str) {
        if !self.tasks.is_empty() {
            tracing::info!(why, tasks = self.tasks.len(), "tasks dropped");
        }
        for id in self.tasks.keys() {
            crate::metrics::metrics().tasks.add(-1, &crate::metrics::task(&self.cfg.application_id, id));
        }
        self.tasks.clear();
        self.pending.clear();
        self.reported.clear();
        self.positions.clear();
        self.changelog_at.clear();
        self.dirty = false;
        self.stop_readers();
    }

    fn stop_readers(&mut self) {
        for r in self.readers.drain(..) {
            r.abort();
        }
    }

    /// Whether `topic` is one of the application's repartition topics.
    fn internal(&self, topic: &str) -> bool {
        topic.starts_with(&format!("{}-", self.app())) && topic.ends_with("-repartition")
    }

    /// Reads every input partition of the tasks from its committed offset (or where
    /// `initial_offsets`, then `offset_reset`, say).
    async fn start_readers(
        &mut self,
        client: &Client,
        records: &mpsc::Sender<(u64, Vec<ConsumerRecord>)>,
    ) -> Result<(), StreamsError> {
        self.stop_readers();
        // What was queued and not processed is read again from the processed positions.
        self.sync_positions();
        self.pending.clear();
        self.routes.clear();
        for (id, task) in &self.tasks {
            for t in task.topics() {
                self.routes.entry(t).or_default().insert(id.partition, *id);
            }
        }
        // Batches a stopped reader queued are told apart and dropped.
        self.epoch += 1;
        let epoch = self.epoch;
        let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (id, task) in &self.tasks {
            for t in task.topics() {
                by_topic.entry(t).or_default().push(id.partition);
            }
        }
        for (topic, partitions) in by_topic {
            let mut positions = BTreeMap::new();
            let committed = self.committed(client, &topic, partitions.clone()).await?;
            for p in partitions {
                let at = match self.positions.get(&(topic.clone(), p)) {
                    Some(o) => *o,
                    None => match committed.iter().find(|c| c.partition == p) {
                        Some(c) => c.offset,
                        None => match self.cfg.initial_offsets.get(&(topic.clone(), p)) {
                            Some(o) => (*o).max(start_offset(client, &topic, p).await?),
                            // A partition added to a listed topic after the start positions
                            // were taken: all of it is new.
                            None if self.cfg.initial_offsets.keys().any(|(t, _)| *t == topic) => {
                                start_offset(client, &topic, p).await?
                            }
                            None if self.cfg.offset_reset == OffsetReset::Latest && !self.internal(&topic) => {
                                end_offset(client, &topic, p).await?
                            }
                            None => start_offset(client, &topic, p).await?,
                        },
                    },
                };
                self.positions.insert((topic.clone(), p), at);
                positions.insert(p, at);
                if let Some(id) = self.routes.get(&topic).and_then(|r| r.get(&p)) {
                    let pending = self.pending.entry(*id).or_default();
                    pending.inputs.insert(topic.clone(), Input { queue: Default::default(), next: at });
                }
            }
            let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
            let mut consumer = Consumer::at(client.clone(), &topic, positions, cfg);
            let tx = records.clone();
            self.readers.push(tokio::spawn(async move {
                loop {
                    match consumer.poll(Duration::from_millis(500)).await {
                        Ok(batch) if batch.is_empty() => {}
                        Ok(batch) => {
                            if tx.send((epoch, batch)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, topic = consumer.topic(), "reading input failed; trying again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }));
        }
        Ok(())
    }

    /// Processes records until the group rebalances, a commit fails or the instance stops.
    async fn process(
        &mut self,
        client: &Client,
        producer: &Producer,
        records: &mut mpsc::Receiver<(u64, Vec<ConsumerRecord>)>,
        commands: &mut mpsc::Receiver<Command>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamsError> {
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut commit = tokio::time::interval(self.cfg.commit_interval);
        // Tasks waiting for an idle input go on once `max_task_idle` passed.
        let mut idle = tokio::time::interval(Duration::from_millis(50));
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                batch = records.recv() => {
                    let Some((epoch, batch)) = batch else { return Ok(()) };
                    if epoch == self.epoch {
                        self.handle(batch)?;
                    }
                }
                Some(cmd) = commands.recv() => self.answer(cmd),
                _ = idle.tick() => self.drain()?,
                _ = commit.tick() => {
                    if self.dirty {
                        self.commit(client, producer).await?;
                    }
                }
                _ = beat.tick() => {
                    if started.elapsed() < HEARTBEAT {
                        continue;
                    }
                    let hb = ClassicHeartbeatRequest {
                        group_id: self.app().to_string(),
                        member_id: self.member_id.clone(),
                        instance_id: self.cfg.instance.clone(),
                        generation: self.generation,
                    };
                    if let Err(e) = client.groups().heartbeat_classic(hb).await {
                        let e = ClientError::from(e);
                        // Whatever the group says (a rebalance, an unknown member after a
                        // coordinator failover or an expired session, a failed call): commit
                        // what was done, then join again with the tasks kept. A commit the
                        // group refuses (a stale generation) drops them instead.
                        tracing::info!(error = %e, "heartbeat refused; joining again");
                        if self.dirty {
                            self.commit(client, producer).await?;
                        }
                        if e.sluice_code() == sluice_core::error::codes::UNKNOWN_MEMBER {
                            self.member_id.clear();
                        }
                        return Ok(());
                    }
                }
            }
        }
    }

    fn answer(&self, cmd: Command) {
        match cmd {
            Command::All(store, reply) => {
                let mut out = Entries::new();
                for t in self.tasks.values() {
                    if let Some(s) = t.store(&store)
                        && let Ok(entries) = s.borrow().range_raw(&[], None)
                    {
                        // The empty key holds a windowed processor's stream time, not an entry.
                        out.extend(entries.into_iter().filter(|(k, _)| !k.is_empty()));
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    /// Queues a batch of one topic's records for their tasks, then processes what can be.
    fn handle(&mut self, batch: Vec<ConsumerRecord>) -> Result<(), StreamsError> {
        let Some(first) = batch.first() else { return Ok(()) };
        let topic = first.topic.to_string();
        let Some(routes) = self.routes.get(&topic) else { return Ok(()) };
        for r in batch {
            // Records of partitions no longer held (a reader stopped late) are dropped.
            let Some(input) =
                routes.get(&r.partition).and_then(|id| self.pending.get_mut(id)).and_then(|p| p.inputs.get_mut(&topic))
            else {
                continue;
            };
            // Offsets have gaps (markers, compaction): compare with the last one queued.
            if r.offset > input.queue.back().map_or(input.next - 1, |q| q.offset) {
                input.queue.push_back(r);
            }
        }
        self.drain()
    }

    /// Processes the queued records: per task, the earliest (by timestamp) of its inputs'
    /// heads while every input has some; when one has none, after `max_task_idle` (it may
    /// hold earlier records still being fetched), the others' anyway.
    fn drain(&mut self) -> Result<(), StreamsError> {
        let now = Instant::now();
        let Self { pending, tasks, cfg, dirty, .. } = self;
        for (id, p) in pending.iter_mut() {
            let Some(task) = tasks.get_mut(id) else { continue };
            loop {
                if p.inputs.len() > 1 && p.inputs.values().any(|i| i.queue.is_empty()) {
                    let since = *p.idle_since.get_or_insert(now);
                    if now.duration_since(since) < cfg.max_task_idle {
                        break;
                    }
                } else {
                    p.idle_since = None;
                }
                let head = p
                    .inputs
                    .iter_mut()
                    .filter(|(_, i)| !i.queue.is_empty())
                    .min_by_key(|(_, i)| i.queue.front().map_or(i64::MAX, |r| r.timestamp_ms));
                let Some((topic, input)) = head else { break };
                let Some(r) = input.queue.pop_front() else { break };
                let span = r.process_span(topic);
                let _entered = span.enter();
                let record = Record { key: r.key, value: r.value, timestamp: r.timestamp_ms, headers: r.headers };
                task.process(topic, r.offset, record)?;
                input.next = r.offset + 1;
                *dirty = true;
            }
        }
        if let Ok(mut s) = self.state.lock() {
            s.metrics = self.tasks.iter().map(|(id, t)| (*id, t.metrics().clone())).collect();
        }
        Ok(())
    }

    /// Copies how far each input was processed into `positions` (what commits and readers
    /// go by).
    fn sync_positions(&mut self) {
        for (id, p) in &self.pending {
            for (topic, input) in &p.inputs {
                if let Some(at) = self.positions.get_mut(&(topic.clone(), id.partition)) {
                    *at = input.next;
                }
            }
        }
    }

    /// Writes every task's outputs and commits the positions reached; a failed transaction is
    /// aborted (the caller reopens the tasks from what committed).
    async fn commit(&mut self, client: &Client, producer: &Producer) -> Result<(), StreamsError> {
        let outcome = self.try_commit(client, producer).await;
        if outcome.is_err() && self.cfg.guarantee == Guarantee::ExactlyOnce {
            let _ = producer.abort_transaction().await;
        }
        outcome
    }

    async fn try_commit(&mut self, client: &Client, producer: &Producer) -> Result<(), StreamsError> {
        self.sync_positions();
        let outputs: Vec<Output> = self.tasks.values_mut().flat_map(|t| t.take_outputs()).collect();
        let offsets: BTreeMap<(String, u32), i64> = self.positions.clone();
        let eos = self.cfg.guarantee == Guarantee::ExactlyOnce;
        if eos {
            producer.begin_transaction().await.map_err(remote)?;
        }
        let mut deliveries = Vec::with_capacity(outputs.len());
        // Changelog records' deliveries: their offsets say how far the stores are.
        let mut logged = Vec::new();
        for o in outputs {
            let changelog = o.partition.map(|_| o.topic.clone());
            let record = ProducerRecord {
                topic: o.topic,
                partition: o.partition,
                key: o.key,
                value: o.value,
                headers: o.headers,
                timestamp_ms: o.timestamp.max(0),
            };
            let delivery = producer.send(record).await.map_err(remote)?;
            match changelog {
                Some(topic) => logged.push((topic, delivery)),
                None => deliveries.push(delivery),
            }
        }
        if eos {
            let group = GroupMetadata {
                group_id: self.app().to_string(),
                member_id: self.member_id.clone(),
                generation: self.generation,
            };
            producer.send_offsets_to_transaction(&offsets, &group).await.map_err(remote)?;
            drop(deliveries);
            producer.commit_transaction().await.map_err(remote)?;
        } else {
            for d in deliveries {
                d.await.map_err(|_| StreamsError::Config("the producer stopped".into()))?.map_err(remote)?;
            }
            self.note_changelog(std::mem::take(&mut logged)).await?;
            let req = sluice_client::group::commit_request(self.app(), &self.member_id, self.generation, &offsets);
            let resp = client.groups().commit_offsets(req).await.map_err(|s| remote(s.into()))?.into_inner();
            if let Some(e) = resp.results.iter().find_map(|r| r.error.as_ref()) {
                return Err(remote(sluice_core::RemoteError::from(e).into()));
            }
        }
        // Committed: the changelog records are written (a no-op for at-least-once, done above).
        self.note_changelog(logged).await?;
        self.dirty = false;
        self.report();
        if let Ok(mut s) = self.state.lock() {
            s.commits += 1;
        }
        Ok(())
    }

    /// Adds what each task did since the last report to the exported counters.
    fn report(&mut self) {
        let m = crate::metrics::metrics();
        for (id, task) in &self.tasks {
            let now = task.metrics();
            let before = self.reported.entry(*id).or_default();
            let attrs = crate::metrics::task(&self.cfg.application_id, id);
            m.processed.add(now.processed - before.processed.min(now.processed), &attrs);
            m.dropped_late.add(now.dropped_late - before.dropped_late.min(now.dropped_late), &attrs);
            m.skipped.add(now.skipped - before.skipped.min(now.skipped), &attrs);
            *before = now.clone();
        }
    }

    /// Waits for changelog records and notes how far each changelog partition now is.
    async fn note_changelog(&mut self, logged: Vec<(String, DeliveryFuture)>) -> Result<(), StreamsError> {
        for (topic, d) in logged {
            let delivery = d.await.map_err(|_| StreamsError::Config("the producer stopped".into()))?.map_err(remote)?;
            let at = self.changelog_at.entry((topic, delivery.partition)).or_insert(0);
            *at = (*at).max(delivery.offset + 1);
        }
        Ok(())
    }
}

fn remote(e: ClientError) -> StreamsError {
    StreamsError::Client(Box::new(e))
}

fn sled_error(e: sled::Error) -> StreamsError {
    StreamsError::Config(format!("state store database: {e}"))
}

/// Where a partition starts or ends (waiting out a partition without a leader yet, as
/// [`Client::settled_offsets`] does).
async fn list(client: &Client, topic: &str, partition: u32, spec: OffsetSpec) -> Result<i64, StreamsError> {
    let offsets = client.settled_offsets(topic, vec![partition], spec, 0).await.map_err(remote)?;
    Ok(offsets.first().map_or(0, sluice_client::start_position))
}

async fn end_offset(client: &Client, topic: &str, partition: u32) -> Result<i64, StreamsError> {
    list(client, topic, partition, OffsetSpec::Latest).await
}

async fn start_offset(client: &Client, topic: &str, partition: u32) -> Result<i64, StreamsError> {
    list(client, topic, partition, OffsetSpec::Earliest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_instances_on_one_machine_get_distinct_names_and_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StreamsConfig::new("app", "127.0.0.1:1");
        cfg.state_dir = dir.path().to_path_buf();
        let (mut a, mut b) = (cfg.clone(), cfg.clone());
        let da = open_state(&mut a).unwrap();
        let db = open_state(&mut b).unwrap();
        let host = hostname();
        assert_eq!(a.instance, host);
        assert_eq!(b.instance, format!("{host}-2"));
        drop(da);
        // The first instance restarted: its name (and its stores) again.
        let mut again = cfg.clone();
        let _d = open_state(&mut again).unwrap();
        assert_eq!(again.instance, host);
        drop(db);
        let mut named = cfg;
        named.instance = "x".into();
        open_state(&mut named).unwrap();
        assert_eq!(named.instance, "x");
    }
}
