//! Metadata in etcd.
//!
//! Keys (under a configurable prefix, `/sluice` by default):
//! - `{prefix}/nodes/{id}`: a live partition node (JSON [`NodeInfo`]), attached to the node's
//!   lease, so it vanishes when the node stops renewing it.
//! - `{prefix}/gateways/{name}`: a live gateway (JSON [`GatewayInfo`]: its Kafka listener),
//!   under its lease like a node.
//! - `{prefix}/topics/{name}`: a topic and its partition assignments (JSON [`TopicMeta`]),
//!   created and deleted with transactions that compare the key's version.
//! - `{prefix}/partitions/{topic_id}/{partition}`: a partition's leader, leader epoch and
//!   in-sync replicas (JSON [`PartitionState`]), absent until the first election or ISR
//!   change, written only by compare-and-set on its revision and the topic's, deleted with
//!   the topic.
//! - `{prefix}/coordinator`: the active group coordinator (JSON [`crate::CoordinatorInfo`]),
//!   created only when absent, under the holder's lease; its creation revision is the
//!   coordinator epoch.
//! - `{prefix}/producer_ids`: the next producer id not yet reserved (decimal text), moved
//!   forward a block at a time by compare-and-set.
//!
//! A background task loads the prefix once, then follows it with a watch from the next
//! revision; if the watch breaks (etcd restarted, revision compacted) it reloads and watches
//! again. The last good view stays published meanwhile, so the data path keeps working while
//! etcd is away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use sluice_core::SluiceError;
use tokio::sync::watch;

use crate::{
    ClusterView, GatewayInfo, MetaError, MetaStore, NewTopic, NodeInfo, PartitionAssignment, PartitionState,
    TopicLimits, TopicMeta, plan_config, plan_partitions, plan_topic,
};
use sluice_core::topic::ConfigChange;

/// Metadata kept in an etcd cluster.
pub struct EtcdMeta {
    client: Client,
    prefix: String,
    lease_ttl_secs: i64,
    tx: watch::Sender<Arc<ClusterView>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    session: Arc<Mutex<Session>>,
}

impl Drop for EtcdMeta {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// What the watch has seen, before partition states are overlaid on their topics.
#[derive(Default)]
struct Raw {
    topics: BTreeMap<String, TopicMeta>,
    /// topic id -> partition -> (state, revision).
    states: HashMap<u64, BTreeMap<u32, (PartitionState, i64)>>,
}

impl Raw {
    /// Applies one key change to `raw` and the nodes of `view`; returns the topic whose merged
    /// form must be rebuilt, if any.
    fn apply(
        &mut self,
        view: &mut ClusterView,
        prefix: &str,
        key: &[u8],
        value: Option<&[u8]>,
        revision: i64,
    ) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))?;
        if rest == "coordinator" {
            view.coordinator = match value.map(serde_json::from_slice::<crate::CoordinatorInfo>) {
                Some(Ok(c)) => Some(crate::CoordinatorInfo { epoch: revision as u64, ..c }),
                Some(Err(e)) => {
                    tracing::warn!(key, error = %e, "ignoring unreadable coordinator entry");
                    None
                }
                None => None,
            };
            None
        } else if let Some(id) = rest.strip_prefix("nodes/") {
            let id = id.parse::<u64>().ok()?;
            match value.map(serde_json::from_slice::<NodeInfo>) {
                Some(Ok(n)) => {
                    view.nodes.insert(id, n);
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "ignoring unreadable node entry"),
                None => {
                    view.nodes.remove(&id);
                }
            }
            None
        } else if let Some(name) = rest.strip_prefix("gateways/") {
            match value.map(serde_json::from_slice::<GatewayInfo>) {
                Some(Ok(g)) => {
                    view.gateways.insert(name.to_string(), g);
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "ignoring unreadable gateway entry"),
                None => {
                    view.gateways.remove(name);
                }
            }
            None
        } else if let Some(name) = rest.strip_prefix("topics/") {
            match value.map(serde_json::from_slice::<TopicMeta>) {
                Some(Ok(mut t)) => {
                    t.revision = revision;
                    for a in &mut t.partitions {
                        if a.isr.is_empty() {
                            a.isr = a.replicas.clone();
                        }
                    }
                    self.topics.insert(name.to_string(), t);
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "ignoring unreadable topic entry"),
                None => {
                    if let Some(t) = self.topics.remove(name) {
                        self.states.remove(&t.topic_id);
                    }
                }
            }
            Some(name.to_string())
        } else if let Some(path) = rest.strip_prefix("partitions/") {
            let (topic_id, p) = path.split_once('/')?;
            let (topic_id, p) = (topic_id.parse::<u64>().ok()?, p.parse::<u32>().ok()?);
            let states = self.states.entry(topic_id).or_default();
            match value.map(serde_json::from_slice::<PartitionState>) {
                Some(Ok(st)) => {
                    states.insert(p, (st, revision));
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "ignoring unreadable partition state"),
                None => {
                    states.remove(&p);
                }
            }
            self.topics.iter().find(|(_, t)| t.topic_id == topic_id).map(|(n, _)| n.clone())
        } else {
            None
        }
    }

    /// The topic as services see it: its initial assignment with every written state on top.
    fn rebuild(&self, view: &mut ClusterView, name: &str) {
        let Some(t) = self.topics.get(name) else {
            view.topics.remove(name);
            return;
        };
        let mut merged = t.clone();
        for (p, (st, rev)) in self.states.get(&t.topic_id).into_iter().flatten() {
            ClusterView::apply_state(&mut merged, *p, st, *rev);
        }
        view.topics.insert(name.to_string(), Arc::new(merged));
    }
}

async fn load_and_watch(
    client: &mut Client,
    prefix: &str,
    tx: &watch::Sender<Arc<ClusterView>>,
) -> Result<(), MetaError> {
    let resp = client.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix())).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut raw = Raw::default();
    let mut view = ClusterView { loaded: true, revision, ..ClusterView::default() };
    for kv in resp.kvs() {
        raw.apply(&mut view, prefix, kv.key(), Some(kv.value()), kv.mod_revision());
    }
    let names: Vec<String> = raw.topics.keys().cloned().collect();
    for name in names {
        raw.rebuild(&mut view, &name);
    }
    tx.send_replace(Arc::new(view));
    let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = client.watch(format!("{prefix}/"), Some(opts)).await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() {
            tracing::warn!(reason = resp.cancel_reason(), "metadata watch cancelled; reloading");
            return Ok(());
        }
        if resp.events().is_empty() {
            continue;
        }
        let mut next = (**tx.borrow()).clone();
        let mut touched = BTreeSet::new();
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                touched.extend(raw.apply(&mut next, prefix, kv.key(), value, kv.mod_revision()));
                next.revision = next.revision.max(kv.mod_revision());
            }
        }
        if let Some(h) = resp.header() {
            next.revision = next.revision.max(h.revision());
        }
        for name in touched {
            raw.rebuild(&mut next, &name);
        }
        tx.send_replace(Arc::new(next));
    }
    Ok(())
}

/// How often a lease of `ttl` seconds is renewed.
fn renew_period(ttl: i64) -> Duration {
    Duration::from_millis((ttl as u64 * 1000 / 3).max(200))
}

/// Renews `lease` until it is lost (etcd unreachable past the TTL, or revoked), recording each
/// renewal in `session`.
async fn keep_alive(client: &mut Client, lease: i64, session: &Mutex<Session>, period: Duration) {
    match client.lease_keep_alive(lease).await {
        Ok((mut keeper, mut stream)) => loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match stream.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {
                    session.lock().unwrap_or_else(|p| p.into_inner()).renewed_at = Some(sent);
                    tokio::time::sleep(period).await
                }
                _ => break,
            }
        },
        Err(e) => tracing::warn!(error = %e, "lease keep-alive failed"),
    }
}

/// When this process last certainly held its registration.
#[derive(Default)]
struct Session {
    /// When the last successful renewal was sent: the lease lives at least a TTL past it.
    renewed_at: Option<Instant>,
    /// The revision of the latest registration: until the view has seen it, the view may
    /// predate an election that happened while this process was away.
    registered_rev: i64,
}

impl EtcdMeta {
    /// Connects to etcd and starts following the metadata. Returns once the first full view is
    /// loaded, or fails after `timeout`.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        lease_ttl_secs: i64,
        timeout: Duration,
    ) -> Result<Arc<Self>, MetaError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time) and
            // closes the connection, taking the watch and the lease renewal with it.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(opts))).await.map_err(|_| {
            SluiceError::MetadataUnavailable(format!(
                "could not reach etcd at {} within {timeout:?}",
                endpoints.join(",")
            ))
        })??;
        let (tx, mut rx) = watch::channel(Arc::new(ClusterView::default()));
        let prefix = prefix.trim_end_matches('/').to_string();
        let me = Arc::new(Self {
            client: client.clone(),
            prefix: prefix.clone(),
            lease_ttl_secs,
            tx: tx.clone(),
            tasks: Default::default(),
            session: Default::default(),
        });
        let mut watch_client = client;
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = load_and_watch(&mut watch_client, &prefix, &tx).await {
                    tracing::warn!(error = %e, "metadata watch failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        me.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        tokio::time::timeout(timeout, rx.wait_for(|v| v.loaded))
            .await
            .map_err(|_| {
                SluiceError::MetadataUnavailable(format!("could not load metadata from etcd within {timeout:?}"))
            })?
            .map_err(|_| SluiceError::Internal("metadata watcher stopped".into()))?;
        Ok(me)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// Registers under a new lease; records the session as held from before the grant.
    async fn put_with_lease(
        client: &mut Client,
        key: &str,
        value: &[u8],
        ttl: i64,
        session: &Mutex<Session>,
    ) -> Result<i64, MetaError> {
        let t0 = Instant::now();
        let lease = client.lease_grant(ttl, None).await?.id();
        let put = client.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
        let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
        s.renewed_at = Some(t0);
        s.registered_rev = put.header().map(|h| h.revision()).unwrap_or(0);
        Ok(lease)
    }

    /// Puts `key` under a lease this process keeps renewing, and puts it again under a new
    /// lease whenever that one is lost: the entry lives exactly as long as the process does.
    async fn register(&self, key: String, value: Vec<u8>) -> Result<(), MetaError> {
        let ttl = self.lease_ttl_secs.max(1);
        let mut client = self.client.clone();
        let session = self.session.clone();
        let mut lease = Self::put_with_lease(&mut client, &key, &value, ttl, &session).await?;
        let task = tokio::spawn(async move {
            let period = renew_period(ttl);
            loop {
                // Renew until the lease is lost (etcd unreachable past the TTL, or revoked),
                // then register again under a new lease.
                keep_alive(&mut client, lease, &session, period).await;
                loop {
                    match Self::put_with_lease(&mut client, &key, &value, ttl, &session).await {
                        Ok(l) => {
                            tracing::info!(key, "registered again under a new lease");
                            lease = l;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "registration failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        });
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(())
    }

    /// Waits until the local view satisfies `pred`, so that a caller reads its own writes.
    async fn await_view(&self, pred: impl Fn(&ClusterView) -> bool) {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| pred(v))).await;
    }

    /// Writes topic `name` as `plan` makes it from the current view. The topic may change
    /// meanwhile (a leader elected): the write compares its revision and is planned again
    /// from the newer view. `what` names the change in the timeout error.
    async fn rewrite_topic(
        &self,
        name: &str,
        what: &str,
        plan: impl Fn(&ClusterView, &TopicMeta) -> Result<TopicMeta, SluiceError>,
    ) -> Result<TopicMeta, MetaError> {
        let key = self.key("topics", name);
        for _ in 0..10 {
            let view = self.tx.borrow().clone();
            let topic = view.topics.get(name).ok_or_else(|| SluiceError::UnknownTopic(name.to_string()))?;
            let next = plan(&view, topic)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, topic.revision)])
                .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&next)?, None)]);
            let resp = self.client.clone().txn(txn).await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                self.await_view(|v| v.revision >= rev).await;
                return Ok(next);
            }
            let seen = topic.revision;
            self.await_view(|v| v.topics.get(name).is_none_or(|t| t.revision != seen)).await;
        }
        Err(MetaError::Request(SluiceError::Timeout(format!("topic '{name}' kept changing while {what}"))))
    }
}

#[async_trait::async_trait]
impl MetaStore for EtcdMeta {
    async fn register_node(&self, node: NodeInfo) -> Result<(), MetaError> {
        let id = node.id;
        self.register(self.key("nodes", &id.to_string()), serde_json::to_vec(&node)?).await?;
        self.await_view(|v| v.nodes.contains_key(&id)).await;
        Ok(())
    }

    async fn register_gateway(&self, gateway: GatewayInfo) -> Result<(), MetaError> {
        let name = gateway.name.clone();
        self.register(self.key("gateways", &name), serde_json::to_vec(&gateway)?).await?;
        self.await_view(|v| v.gateways.contains_key(&name)).await;
        Ok(())
    }

    async fn create_topic(&self, topic: NewTopic, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        let view = self.tx.borrow().clone();
        let t = plan_topic(&view, &topic, limits, rand::random())?;
        let key = self.key("topics", &t.name);
        let txn = Txn::new().when([Compare::version(key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key.as_str(),
            serde_json::to_vec(&t)?,
            None,
        )]);
        if !self.client.clone().txn(txn).await?.succeeded() {
            return Err(SluiceError::TopicExists(t.name).into());
        }
        let (name, id) = (t.name.clone(), t.topic_id);
        self.await_view(|v| v.topics.get(&name).is_some_and(|x| x.topic_id == id)).await;
        Ok(t)
    }

    async fn add_partitions(&self, name: &str, count: u32, limits: TopicLimits) -> Result<TopicMeta, MetaError> {
        self.rewrite_topic(name, "partitions were added", |view, topic| {
            plan_partitions(view, topic, count, limits, rand::random())
        })
        .await
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<TopicMeta, MetaError> {
        self.rewrite_topic(name, "its config was altered", |_, topic| plan_config(topic, changes)).await
    }

    async fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        let key = self.key("topics", name);
        let Some(topic_id) = self.tx.borrow().topics.get(name).map(|t| t.topic_id) else {
            return Err(SluiceError::UnknownTopic(name.to_string()).into());
        };
        let states = format!("{}/partitions/{topic_id}/", self.prefix);
        let txn = Txn::new().when([Compare::version(key.as_str(), CompareOp::Greater, 0)]).and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(states.as_str(), Some(DeleteOptions::new().with_prefix())),
        ]);
        if !self.client.clone().txn(txn).await?.succeeded() {
            return Err(SluiceError::UnknownTopic(name.to_string()).into());
        }
        self.await_view(|v| !v.topics.contains_key(name)).await;
        Ok(())
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.tx.subscribe()
    }

    async fn update_partition(
        &self,
        topic: &TopicMeta,
        partition: u32,
        expected: &PartitionAssignment,
        next: PartitionState,
    ) -> Result<Option<i64>, MetaError> {
        let topic_key = self.key("topics", &topic.name);
        let key = format!("{}/partitions/{}/{partition}", self.prefix, topic.topic_id);
        // A missing key compares as revision 0: the first change of a partition's state.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(topic_key.as_str(), CompareOp::Equal, topic.revision),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, expected.revision),
            ])
            .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&next)?, None)]);
        let resp = self.client.clone().txn(txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.await_view(|v| v.revision >= rev).await;
        Ok(Some(rev))
    }

    fn session_valid(&self) -> bool {
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = Duration::from_secs(self.lease_ttl_secs.max(1) as u64);
        s.renewed_at.is_some_and(|t| t.elapsed() < ttl) && self.tx.borrow().revision >= s.registered_rev
    }

    async fn campaign_coordinator(&self, addr: &str) -> Result<u64, MetaError> {
        let key = format!("{}/coordinator", self.prefix);
        let value = serde_json::to_vec(&crate::CoordinatorInfo { addr: addr.to_string(), epoch: 0 })?;
        let ttl = self.lease_ttl_secs.max(1);
        let mut client = self.client.clone();
        let mut rx = self.tx.subscribe();
        loop {
            // Only a vacant role is worth a transaction; the watch says when it frees up.
            let _ = rx.wait_for(|v| v.coordinator.is_none()).await;
            let t0 = Instant::now();
            let lease = client.lease_grant(ttl, None).await?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.clone(), Some(PutOptions::new().with_lease(lease)))]);
            let resp = client.txn(txn).await?;
            if !resp.succeeded() {
                let _ = client.lease_revoke(lease).await;
                // The view may lag the winner's write: wait for it rather than spin.
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|v| v.coordinator.is_some())).await;
                continue;
            }
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            {
                let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
                s.renewed_at = Some(t0);
                s.registered_rev = rev;
            }
            let session = self.session.clone();
            let mut keeper = client.clone();
            // The role ends with the lease: no re-registration, another process may hold it.
            let task = tokio::spawn(async move { keep_alive(&mut keeper, lease, &session, renew_period(ttl)).await });
            self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
            self.await_view(|v| v.revision >= rev).await;
            return Ok(rev as u64);
        }
    }

    async fn reserve_producer_ids(&self, count: u64) -> Result<std::ops::Range<i64>, MetaError> {
        let key = format!("{}/producer_ids", self.prefix);
        let mut client = self.client.clone();
        loop {
            let resp = client.get(key.as_str(), None).await?;
            let (next, cmp) = match resp.kvs().first() {
                Some(kv) => {
                    let next = kv.value_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| {
                        SluiceError::Internal(format!("metadata key {key} does not hold a producer id"))
                    })?;
                    (next, Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()))
                }
                None => (1, Compare::create_revision(key.as_str(), CompareOp::Equal, 0)),
            };
            let end = next
                .checked_add(count as i64)
                .ok_or_else(|| SluiceError::Internal("producer ids are exhausted".into()))?;
            let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key.as_str(), end.to_string(), None)]);
            if client.txn(txn).await?.succeeded() {
                return Ok(next..end);
            }
        }
    }

    async fn resign_coordinator(&self, epoch: u64) -> Result<(), MetaError> {
        let key = format!("{}/coordinator", self.prefix);
        // Only the holder's own key, created at its epoch, is removed.
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, epoch as i64)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client.clone().txn(txn).await?;
        Ok(())
    }
}
