//! One connect runner's membership of the connect cluster and the tasks it runs.
//!
//! Runners are the members of one Kafka classic group, `__connect`, run by the group
//! coordinator (as Kafka Connect's workers are): at every generation the leader (the first
//! member) spreads the tasks of every connector over the members and hands each its share
//! through SyncGroup. A runner that dies is removed after its session timeout and the others
//! rebalance; a connector created, deleted or resized makes every runner join again.
//!
//! Rebalancing is incremental and cooperative, as Kafka Connect's (KIP-415): each runner
//! joins with the tasks it runs, and keeps running them through the rebalance. The leader
//! leaves every task where it runs while that runner's share stays within the fair share
//! (tasks / runners, rounded up), and deals the tasks nobody runs to the least loaded runners.
//! A task that must move is first taken from its runner alone (assigned to nobody for a
//! generation); that runner stops it and joins again at once, and the next generation gives
//! it to its new runner. So a task never runs on two runners (and its transactional id fences
//! a late write of an old owner anyway), and adding a connector or a runner restarts nothing
//! that stays.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::{Client, ClientError};
use sluice_connect::config;
use sluice_connect::store::{self, ConnectorRecord, Connectors};
use sluice_proto::v1::{
    ClassicHeartbeatRequest, ClassicJoinRequest, ClassicLeaveRequest, ClassicLeaver, ClassicProtocol,
    ClassicSyncRequest,
};
use sluice_runtime::Shutdown;
use tokio::sync::watch;

use crate::tasks::{self, TaskId};

/// The runners' group.
pub const GROUP: &str = "__connect";
const PROTOCOL_TYPE: &str = "connect";
const PROTOCOL: &str = "sluice-cooperative";
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

/// What a runner joins with: its name and the tasks it runs.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Joining {
    runner: String,
    owned: Vec<TaskId>,
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
    // Kept across generations: tasks that stay on this runner run on through rebalances.
    let mut running = tasks::Running::new(client.clone(), id.clone());
    while !shutdown.is_triggered() {
        // A cluster without connectors has no group: runners join once there is work.
        if configs.borrow().is_empty() {
            running.stop_all().await;
            leave(&client, &mut member_id).await;
            let mut idle = configs.clone();
            tokio::select! {
                _ = idle.wait_for(|c| !c.is_empty()) => {}
                _ = shutdown.wait() => break,
            }
            continue;
        }
        let outcome = generation(&client, &id, &mut member_id, configs.clone(), &shutdown, &mut running).await;
        if let Err(e) = outcome {
            // Out of the group (or unsure of it): its tasks may be dealt to others already.
            running.stop_all().await;
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
    running.stop_all().await;
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
    let joining = Joining { runner: id.to_string(), owned: running.ids() };
    let join = ClassicJoinRequest {
        group_id: GROUP.into(),
        member_id: member_id.clone(),
        instance_id: String::new(),
        client_id: id.to_string(),
        client_host: String::new(),
        session_timeout_ms: SESSION_TIMEOUT_MS,
        rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
        protocol_type: PROTOCOL_TYPE.into(),
        protocols: vec![ClassicProtocol {
            name: PROTOCOL.into(),
            metadata: serde_json::to_vec(&joining).unwrap_or_default().into(),
        }],
    };
    let joined = client.groups().join_classic(join).await?.into_inner();
    *member_id = joined.member_id.clone();
    // The layout the assignment is made from: the leader's view; a runner whose own view
    // differs joins again once it has caught up.
    let snapshot = configs.borrow_and_update().clone();
    let assignments = if joined.leader == joined.member_id {
        sluice_client::group::cooperative_assignments(
            &joined.members,
            &all_tasks(&snapshot),
            |meta| serde_json::from_slice::<Joining>(meta).unwrap_or_default().owned,
            |share| serde_json::to_vec(share).unwrap_or_default(),
        )
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
    let before = running.ids();
    running.apply(&mine, &snapshot).await;
    if before.iter().any(|t| !mine.contains(t)) {
        // Tasks were taken from this runner to go elsewhere: now stopped, it joins again so
        // that the next generation hands them on.
        return Ok(());
    }
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
                if let Err(e) = client.groups().heartbeat_classic(hb).await {
                    let e = ClientError::from(e);
                    // Another member joined or left: join again, tasks running meanwhile.
                    if e.sluice_code() == sluice_core::error::codes::REBALANCE_IN_PROGRESS {
                        return Ok(());
                    }
                    return Err(e);
                }
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

    fn t(c: &str, n: u32) -> TaskId {
        TaskId { connector: c.into(), task: n }
    }

    #[test]
    fn new_tasks_go_to_the_least_loaded_and_running_ones_stay() {
        let tasks = vec![t("a", 0), t("a", 1), t("b", 0)];
        let owned = BTreeMap::from([("r2".to_string(), vec![]), ("r1".to_string(), vec![])]);
        let split = sluice_client::group::cooperative_assign(&owned, &tasks);
        assert_eq!(split["r1"], vec![t("a", 0), t("b", 0)]);
        assert_eq!(split["r2"], vec![t("a", 1)]);
        // A new connector: what runs stays, the new task goes to the lighter runner.
        let more = vec![t("a", 0), t("a", 1), t("b", 0), t("c", 0)];
        let split = sluice_client::group::cooperative_assign(&split, &more);
        assert_eq!(split["r1"], vec![t("a", 0), t("b", 0)]);
        assert_eq!(split["r2"], vec![t("a", 1), t("c", 0)]);
    }

    #[test]
    fn a_newcomer_gets_tasks_only_after_their_runner_gave_them_up() {
        let tasks = vec![t("a", 0), t("a", 1), t("a", 2), t("a", 3)];
        let owned = BTreeMap::from([("r1".to_string(), tasks.clone()), ("r3".to_string(), vec![])]);
        // Over its share: two tasks are taken from r1 and given to nobody yet.
        let first = sluice_client::group::cooperative_assign(&owned, &tasks);
        assert_eq!(first["r1"], vec![t("a", 0), t("a", 1)]);
        assert!(first["r3"].is_empty());
        // r1 stopped them and joined again: now they go to r3.
        let second = sluice_client::group::cooperative_assign(&first, &tasks);
        assert_eq!(second["r1"], vec![t("a", 0), t("a", 1)]);
        assert_eq!(second["r3"], vec![t("a", 2), t("a", 3)]);
    }

    #[test]
    fn tasks_of_a_runner_gone_are_dealt_at_once_and_deleted_ones_dropped() {
        let tasks = vec![t("a", 0), t("b", 0), t("b", 1)];
        let owned = BTreeMap::from([("r1".to_string(), vec![t("a", 0), t("z", 0)])]);
        let split = sluice_client::group::cooperative_assign(&owned, &tasks);
        assert_eq!(split["r1"], vec![t("a", 0), t("b", 0), t("b", 1)]);
    }
}
