//! A processor instance: follows the command topic, keeps the catalog, and runs every
//! persistent query as a Sluice Streams application (`_sluice_sql_<query id>`). All
//! instances run every query; each query's tasks spread over them through its group, so
//! starting another instance shares the work and stopping one hands its tasks back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_runtime::Shutdown;
use sluice_sql::{Engine, Outcome};
use sluice_streams::{Guarantee, OffsetReset, StreamsApp, StreamsConfig};

use sluice_sql_server::commands;
use sluice_sql_server::status::Reporter;

/// How an instance runs its queries.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Gateway addresses, comma-separated.
    pub gateways: String,
    /// This instance's name: its member name in every query's group. Keep it across
    /// restarts, so a restarted instance takes its tasks (and its state) back.
    pub instance: String,
    /// Where the queries' state stores live.
    pub state_dir: PathBuf,
    pub guarantee: Guarantee,
    /// Replication factor of the queries' internal topics (lowered to the live nodes).
    pub replication_factor: u32,
}

/// The Streams application id of query `id`.
pub fn application_id(id: &str) -> String {
    format!("_sluice_sql_{id}")
}

/// Runs until `shutdown`: replays the command topic to its end, starts the queries still
/// running then (a query terminated later in the log never starts), and follows it.
pub async fn run(client: Client, cfg: ProcessorConfig, shutdown: Shutdown) {
    let mut apps: BTreeMap<String, StreamsApp> = BTreeMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    // Queries that could not start here, and why.
    let mut unstarted: BTreeMap<String, String> = BTreeMap::new();
    let mut reporter: Option<Reporter> = None;
    // Catch up.
    let ((mut engine, started), next) = loop {
        match catch_up(&client).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::info!(error = %e, "the command topic is not readable yet");
                wait(&shutdown, Duration::from_secs(1)).await;
                if shutdown.is_triggered() {
                    return;
                }
            }
        }
    };
    let running: Vec<(String, BTreeMap<String, String>)> =
        engine.queries().map(|q| (q.id.clone(), started.get(&q.id).cloned().unwrap_or_default())).collect();
    for (id, props) in running {
        start(&engine, &id, &props, &cfg, &mut apps, &mut unstarted);
    }
    let mut consumer = None;
    while !shutdown.is_triggered() {
        let c = match consumer.as_mut() {
            Some(c) => c,
            None => match Consumer::assign(
                client.clone(),
                commands::TOPIC,
                &[0],
                StartFrom::Offset(next),
                ConsumerConfig::default(),
            )
            .await
            {
                Ok(c) => consumer.insert(c),
                Err(e) => {
                    tracing::info!(error = %e, "cannot read the command topic yet");
                    wait(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let batch = tokio::select! {
            b = c.poll(Duration::from_millis(500)) => b,
            _ = shutdown.wait() => break,
        };
        let records = match batch {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command topic failed; trying again");
                wait(&shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        for r in records {
            let Some(cmd) = commands::decode(r.value.as_deref()) else { continue };
            for outcome in commands::apply(&mut engine, &cmd) {
                match outcome {
                    Outcome::Started { id, .. } => {
                        start(&engine, &id, &cmd.properties, &cfg, &mut apps, &mut unstarted)
                    }
                    Outcome::Terminated(ids) => {
                        for id in ids {
                            failed.remove(&id);
                            unstarted.remove(&id);
                            if let Some(r) = reporter.as_mut()
                                && let Err(e) = r.forget(&id).await
                            {
                                tracing::warn!(query = %id, error = %e, "could not take back the query's status");
                            }
                            if let Some(app) = apps.remove(&id) {
                                tracing::info!(query = %id, "query terminated");
                                // Closing commits and leaves the group: off the async threads.
                                let _ = tokio::task::spawn_blocking(move || app.close()).await;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // A query whose application failed (a store failure) is logged once, and reported in
        // its status.
        let mut states = Vec::new();
        for (id, app) in &apps {
            let state = app.state();
            if let Some(why) = &state.failed
                && failed.insert(id.clone())
            {
                tracing::error!(query = %id, error = %why, "query failed");
            }
            let processed = state.metrics.values().map(|m| m.processed).sum();
            states.push((id.clone(), state.failed, state.tasks.len(), processed));
        }
        for (id, why) in &unstarted {
            states.push((id.clone(), Some(format!("could not start: {why}")), 0, 0));
        }
        if reporter.is_none() {
            match Reporter::new(&client, &cfg.instance).await {
                Ok(r) => reporter = Some(r),
                Err(e) => tracing::info!(error = %e, "cannot report the queries' status yet"),
            }
        }
        if let Some(r) = reporter.as_mut() {
            for (id, error, tasks, processed) in states {
                if let Err(e) = r.report(&id, error, tasks, processed).await {
                    tracing::warn!(query = %id, error = %e, "could not report the query's status");
                    break;
                }
            }
        }
    }
    // Stopping cleanly: this processor no longer runs anything.
    if let Some(r) = reporter.as_mut() {
        for id in r.queries() {
            if let Err(e) = r.forget(&id).await {
                tracing::info!(query = %id, error = %e, "could not take back the query's status");
                break;
            }
        }
    }
    let all: Vec<StreamsApp> = std::mem::take(&mut apps).into_values().collect();
    let _ = tokio::task::spawn_blocking(move || drop(all)).await;
}

/// The catalog as the command topic makes it now, the properties each running query was
/// started with, and the offset to follow from.
type CaughtUp = ((Engine, BTreeMap<String, BTreeMap<String, String>>), i64);

async fn catch_up(client: &Client) -> Result<CaughtUp, sluice_client::ClientError> {
    commands::ensure_topic(client).await?;
    let mut engine = Engine::new();
    let mut props = BTreeMap::new();
    let (commands, next) = commands::read_all(client).await?;
    for (_, cmd) in commands {
        for outcome in commands::apply(&mut engine, &cmd) {
            match outcome {
                Outcome::Started { id, .. } => {
                    props.insert(id, cmd.properties.clone());
                }
                Outcome::Terminated(ids) => {
                    for id in ids {
                        props.remove(&id);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(((engine, props), next))
}

fn start(
    engine: &Engine,
    id: &str,
    props: &BTreeMap<String, String>,
    cfg: &ProcessorConfig,
    apps: &mut BTreeMap<String, StreamsApp>,
    unstarted: &mut BTreeMap<String, String>,
) {
    let Some(q) = engine.query(id) else { return };
    let Some(sink) = engine.source(&q.sink) else { return };
    let mut sc = StreamsConfig::new(&application_id(id), &cfg.gateways);
    sc.guarantee = cfg.guarantee;
    sc.state_dir = cfg.state_dir.clone();
    sc.instance = cfg.instance.clone();
    sc.replication_factor = cfg.replication_factor;
    sc.offset_reset = match props.get("auto.offset.reset").map(|s| s.to_ascii_lowercase()) {
        Some(s) if s == "earliest" => OffsetReset::Earliest,
        _ => OffsetReset::Latest,
    };
    sc.initial_offsets = commands::start_offsets(props);
    match StreamsApp::start(q.topology(sink), sc) {
        Ok(app) => {
            tracing::info!(query = %id, sink = %q.sink, "query started");
            apps.insert(id.to_string(), app);
        }
        Err(e) => {
            tracing::error!(query = %id, error = %e, "query could not start");
            unstarted.insert(id.to_string(), e.to_string());
        }
    }
}

async fn wait(shutdown: &Shutdown, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait() => {}
    }
}
