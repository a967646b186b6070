//! One connect runner's membership of the connect cluster and the tasks it runs.
//!
//! Runners are the members of one Kafka classic group, `__connect`, run by the group
//! coordinator (as Kafka Connect's workers are): at every generation the leader (the first
//! member) spreads the tasks of every connector over the members, the same way on every
//! runner (sorted tasks, round-robin over sorted members), and hands each its share through
//! SyncGroup. A runner that dies is removed after its session timeout and the others
//! rebalance; a connector created, deleted or resized makes every runner join again.
//! Rebalancing is eager: a runner stops its tasks before it rejoins, so a task never runs
//! on two runners of one generation (and its transactional id fences an old owner's late
//! writes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::{Client, ClientError};
use sluice_connect::config;
use sluice_connect::store::{self, ConnectorRecord, Connectors};
use sluice_proto::v1::{
    ClassicAssignment, ClassicHeartbeatRequest, ClassicJoinRequest, ClassicLeaveRequest, ClassicLeaver,
    ClassicProtocol, ClassicSyncRequest,
};
use sluice_runtime::Shutdown;
use tokio::sync::watch;

use crate::tasks::{self, TaskId};

/// The runners' group.
pub const GROUP: &str = "__connect";
const PROTOCOL_TYPE: &str = "connect";
const PROTOCOL: &str = "sluice-eager";
const SESSION_TIMEOUT_MS: u32 = 10_000;
const REBALANCE_TIMEOUT_MS: u32 = 30_000;
const HEARTBEAT: Duration = Duration::from_millis(1000);

/// The connectors as `__connect_configs` holds them now.
pub type Configs = Arc<BTreeMap<String, ConnectorRecord>>;

/// What decides the assignment: each connector's task count and restart counter (a restart
/// of every task goes through a rebalance too: its tasks start afresh).
fn layout(c: &Configs) -> BTreeMap<String, (u32, u64)> {
    c.iter()
        .filter_map(|(name, r)| {
            let cfg = config::validate(&r.config).ok()?;
            Some((name.clone(), (cfg.tasks_max, r.restarts)))
        })
        .collect()
}

/// Every task of every connector, sorted.
fn all_tasks(c: &Configs) -> Vec<TaskId> {
    layout(c)
        .into_iter()
        .flat_map(|(name, (n, _))| (0..n).map(move |t| TaskId { connector: name.clone(), task: t }))
        .collect()
}

/// The leader's split: task i to member i mod n, members sorted by id.
fn assign(members: &[String], tasks: &[TaskId]) -> BTreeMap<String, Vec<TaskId>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let mut out: BTreeMap<String, Vec<TaskId>> = sorted.iter().map(|m| ((*m).clone(), Vec::new())).collect();
    for (i, t) in tasks.iter().enumerate() {
        if let Some(list) = out.get_mut(sorted[i % sorted.len()]) {
            list.push(t.clone());
        }
    }
    out
}

/// Follows `__connect_configs` from its start, publishing the connectors after each change.
async fn follow(client: Client, tx: watch::Sender<Configs>, shutdown: Shutdown) {
    let mut connectors = Connectors::default();
    let mut consumer = None;
    while !shutdown.is_triggered() {
        let c = match consumer.as_mut() {
            Some(c) => c,
            None => match Consumer::assign(
                client.clone(),
                store::CONNECT_CONFIGS_TOPIC,
                &[],
                StartFrom::Earliest,
                ConsumerConfig::default(),
            )
            .await
            {
                Ok(c) => consumer.insert(c),
                Err(e) => {
                    // Not created yet: no connector was ever made.
                    tracing::debug!(error = %e, "connector configs not readable yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match c.poll(Duration::from_millis(500)).await {
            Ok(records) if records.is_empty() => {}
            Ok(records) => {
                for r in records {
                    connectors.apply(r.key.as_deref(), r.value.as_deref());
                }
                let _ = tx.send(Arc::new(connectors.0.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading connector configs failed; reading them again");
                consumer = None;
                connectors = Connectors::default();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs a connect runner named `id` until `shutdown`.
pub async fn run(client: Client, id: String, shutdown: Shutdown) {
    let (tx, configs) = watch::channel::<Configs>(Arc::default());
    tokio::spawn(follow(client.clone(), tx, shutdown.clone()));
    let mut member_id = String::new();
    while !shutdown.is_triggered() {
        // A cluster without connectors has no group: runners join once there is work.
        if configs.borrow().is_empty() {
            leave(&client, &mut member_id).await;
            let mut idle = configs.clone();
            tokio::select! {
                _ = idle.wait_for(|c| !c.is_empty()) => {}
                _ = shutdown.wait() => break,
            }
            continue;
        }
        let mut running = tasks::Running::new(client.clone(), id.clone());
        let outcome = generation(&client, &id, &mut member_id, configs.clone(), &shutdown, &mut running).await;
        running.stop_all().await;
        if let Err(e) = outcome {
            tracing::info!(error = %e, "connect group left or refused; joining again");
            if e.sluice_code() == sluice_core::error::codes::UNKNOWN_MEMBER {
                member_id.clear();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    leave(&client, &mut member_id).await;
}

/// Leaves the runners' group, if in it.
async fn leave(client: &Client, member_id: &mut String) {
    if member_id.is_empty() {
        return;
    }
    let req = ClassicLeaveRequest {
        group_id: GROUP.into(),
        members: vec![ClassicLeaver { member_id: std::mem::take(member_id), instance_id: String::new() }],
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), client.groups().leave_classic(req)).await;
}

/// One generation: join, sync, run the share until the group rebalances, the layout of
/// connectors changes, or shutdown.
async fn generation(
    client: &Client,
    id: &str,
    member_id: &mut String,
    mut configs: watch::Receiver<Configs>,
    shutdown: &Shutdown,
    running: &mut tasks::Running,
) -> Result<(), ClientError> {
    let join = ClassicJoinRequest {
        group_id: GROUP.into(),
        member_id: member_id.clone(),
        instance_id: String::new(),
        client_id: id.to_string(),
        client_host: String::new(),
        session_timeout_ms: SESSION_TIMEOUT_MS,
        rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
        protocol_type: PROTOCOL_TYPE.into(),
        protocols: vec![ClassicProtocol { name: PROTOCOL.into(), metadata: id.as_bytes().to_vec().into() }],
    };
    let joined = client.groups().join_classic(join).await?.into_inner();
    *member_id = joined.member_id.clone();
    // The layout the assignment is made from: the leader's view; a runner whose own view
    // differs joins again once it has caught up.
    let snapshot = configs.borrow_and_update().clone();
    let assignments = if joined.leader == joined.member_id {
        let members: Vec<String> = joined.members.iter().map(|m| m.member_id.clone()).collect();
        assign(&members, &all_tasks(&snapshot))
            .into_iter()
            .map(|(m, tasks)| ClassicAssignment {
                member_id: m,
                assignment: serde_json::to_vec(&tasks).unwrap_or_default().into(),
            })
            .collect()
    } else {
        vec![]
    };
    let sync = ClassicSyncRequest {
        group_id: GROUP.into(),
        member_id: member_id.clone(),
        instance_id: String::new(),
        generation: joined.generation,
        protocol_type: PROTOCOL_TYPE.into(),
        protocol: PROTOCOL.into(),
        assignments,
    };
    let synced = client.groups().sync_classic(sync).await?.into_inner();
    let mine: Vec<TaskId> = serde_json::from_slice(&synced.assignment).unwrap_or_default();
    tracing::info!(generation = joined.generation, tasks = mine.len(), "connect tasks assigned");
    let layout_now = layout(&snapshot);
    running.apply(&mine, &snapshot).await;
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = beat.tick() => {
                let hb = ClassicHeartbeatRequest {
                    group_id: GROUP.into(),
                    member_id: member_id.clone(),
                    instance_id: String::new(),
                    generation: joined.generation,
                };
                client.groups().heartbeat_classic(hb).await?;
            }
            changed = configs.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = configs.borrow_and_update().clone();
                if layout(&now) != layout_now || now.is_empty() {
                    // Someone must rebalance: joining again starts it for everyone.
                    return Ok(());
                }
                running.apply(&mine, &now).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_spread_round_robin_over_sorted_members() {
        let t = |c: &str, n: u32| TaskId { connector: c.into(), task: n };
        let tasks = vec![t("a", 0), t("a", 1), t("b", 0)];
        let split = assign(&["r2".into(), "r1".into()], &tasks);
        assert_eq!(split["r1"], vec![t("a", 0), t("b", 0)]);
        assert_eq!(split["r2"], vec![t("a", 1)]);
    }
}
