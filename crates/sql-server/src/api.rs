//! `sluice.v1.Sql`, served by the gateways: statements checked against the catalog (the
//! command topic replayed) and appended to it; topics created and records written through
//! the gateway's own API; push queries run here as in-memory topologies fed by consumers;
//! pull queries read the table's topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};
use sluice_proto::v1::sql_server::{Sql, SqlServer};
use sluice_proto::v1::*;
use sluice_sql::ast::{Explained, ShowWhat, Statement};
use sluice_sql::engine::Pull;
use sluice_sql::plan::QueryPlan;
use sluice_sql::{Engine, Outcome, Row, SqlError, Value};
use tokio::sync::{Mutex, OnceCell, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::commands::{self, Command};
use crate::status;

/// Replication factor of topics statements create (lowered to the live nodes).
const REPLICATION: u32 = 3;

/// The one mapping of SQL errors to gRPC statuses.
pub fn status(e: &SqlError) -> Status {
    match e {
        SqlError::Parse { .. } | SqlError::Type(_) => Status::invalid_argument(e.to_string()),
        SqlError::NotFound(_) => Status::not_found(e.to_string()),
        SqlError::Exists(_) => Status::already_exists(e.to_string()),
        SqlError::Invalid(_) => Status::failed_precondition(e.to_string()),
    }
}

/// A failure of a call into the cluster: the cluster's own status when it answered one (a
/// bad topic name stays INVALID_ARGUMENT), UNAVAILABLE when it did not answer.
fn remote(e: ClientError) -> Status {
    match e.code() {
        Some(code) => Status::new(code, e.to_string()),
        None => Status::unavailable(format!("the cluster did not answer: {e}")),
    }
}

/// The service; it talks to the cluster as a client of `gateway` (its own gateway).
#[derive(Clone)]
pub struct SqlService {
    gateway: String,
    client: Arc<OnceCell<Client>>,
    /// The catalog as of a point of the command topic (the offset after the last command
    /// applied): each request moves it through what was appended since, instead of
    /// replaying the whole topic.
    catalog: Arc<Mutex<(Engine, i64)>>,
}

impl SqlService {
    pub fn new(gateway: &str) -> Self {
        Self {
            gateway: gateway.to_string(),
            client: Arc::new(OnceCell::new()),
            catalog: Arc::new(Mutex::new((Engine::new(), 0))),
        }
    }

    /// The catalog as the command topic makes it now (every gateway's statements), and the
    /// offset after its last command.
    async fn catalog(&self, client: &Client) -> Result<(Engine, i64), Status> {
        let mut cached = self.catalog.lock().await;
        let (commands, next) = commands::read_from(client, cached.1).await.map_err(remote)?;
        if next < cached.1 {
            // The topic ends before what was applied: it was deleted and made anew.
            let (engine, next) = commands::catalog(client).await.map_err(remote)?;
            *cached = (engine, next);
        } else {
            for (_, c) in commands {
                commands::apply(&mut cached.0, &c);
            }
            cached.1 = next;
        }
        Ok(cached.clone())
    }

    /// Keeps `engine` (the log applied up to `next`) when it is ahead of the cached one.
    async fn remember(&self, engine: Engine, next: i64) {
        let mut cached = self.catalog.lock().await;
        if next > cached.1 {
            *cached = (engine, next);
        }
    }

    pub fn into_server(self) -> SqlServer<Self> {
        SqlServer::new(self)
    }

    async fn client(&self) -> Result<Client, Status> {
        self.client.get_or_try_init(|| Client::connect(&self.gateway)).await.cloned().map_err(remote)
    }

    async fn run(&self, req: ExecuteRequest) -> Result<ExecuteResponse, Status> {
        let parsed = sluice_sql::parse(&req.sql).map_err(|e| status(&e))?;
        let client = self.client().await?;
        let (mut engine, mut next) = self.catalog(&client).await?;
        let mut properties: BTreeMap<String, String> = req.properties.into_iter().collect();
        properties.remove(commands::START_OFFSETS);
        let earliest = properties.get("auto.offset.reset").is_some_and(|v| v.eq_ignore_ascii_case("earliest"));
        let mut results = Vec::new();
        for p in parsed {
            // Checked on a copy: the catalog itself moves only with the log.
            let mut trial = engine.clone();
            let outcome = trial.execute(&p).map_err(|e| status(&e))?;
            let mut result = StatementResult { statement: p.text.clone(), ..Default::default() };
            let mut command = Command { sql: p.text.clone(), properties: properties.clone() };
            match outcome {
                Outcome::Created { name, topic, partitions } => {
                    create_topic(&client, &topic, partitions).await?;
                    commit(&client, &command, &mut engine, &mut next).await?;
                    result.message = format!("{name} created (topic {topic})");
                }
                Outcome::Started { id, topic, partitions } => {
                    create_topic(&client, &topic, partitions).await?;
                    if !earliest {
                        // "latest" is the end of the inputs now, not when a processor gets to
                        // it: records written right after this statement are the query's.
                        let topics: Vec<String> = trial
                            .query(&id)
                            .map(|q| q.plan.sources())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|name| trial.source(name).map(|s| s.topic.clone()))
                            .collect();
                        let ends = commands::end_offsets(&client, &topics).await.map_err(remote)?;
                        let ends = serde_json::to_string(&ends).map_err(|e| Status::internal(e.to_string()))?;
                        command.properties.insert(commands::START_OFFSETS.into(), ends);
                    }
                    let outcomes = commit(&client, &command, &mut engine, &mut next).await?;
                    // The id the processors give it.
                    let id = outcomes
                        .iter()
                        .find_map(|o| match o {
                            Outcome::Started { id, .. } => Some(id.clone()),
                            _ => None,
                        })
                        .unwrap_or(id);
                    result.message = format!("query {id} started, writing to topic {topic}");
                    result.query_id = id;
                }
                Outcome::Insert { topic, key, value, timestamp } => {
                    produce(&client, &topic, key, value, timestamp.unwrap_or(0)).await?;
                    result.message = format!("1 record written to {topic}");
                }
                Outcome::Rows { columns, mut rows } => {
                    with_status(&client, &p.statement, &mut rows).await;
                    result.columns = columns;
                    result.rows = rows
                        .into_iter()
                        .map(|r| SqlRow {
                            cells: r.into_iter().map(|c| serde_json::Value::String(c).to_string()).collect(),
                        })
                        .collect();
                }
                Outcome::Pull(pull) => {
                    result.columns = pull.columns.clone();
                    result.rows = pull_rows(&client, &pull).await?.into_iter().map(row).collect();
                }
                Outcome::Push { .. } => {
                    return Err(Status::failed_precondition(
                        "a push query streams its rows: run it with Query (`sluice sql` does)",
                    ));
                }
                Outcome::Dropped { name, .. } => {
                    // What the log made of it decides (the table may have gone meanwhile).
                    let truth = commit(&client, &command, &mut engine, &mut next).await?;
                    let delete_topic = truth.into_iter().find_map(|o| match o {
                        Outcome::Dropped { delete_topic, .. } => delete_topic,
                        _ => None,
                    });
                    if let Some(t) = &delete_topic {
                        client.delete_topic(t).await.map_err(remote)?;
                    }
                    result.message = match delete_topic {
                        Some(t) => format!("{name} dropped, topic {t} deleted"),
                        None => format!("{name} dropped"),
                    };
                }
                Outcome::Terminated(_) => {
                    let truth = commit(&client, &command, &mut engine, &mut next).await?;
                    let ids: Vec<String> = truth
                        .into_iter()
                        .flat_map(|o| match o {
                            Outcome::Terminated(ids) => ids,
                            _ => Vec::new(),
                        })
                        .collect();
                    // Reports of processors that died meanwhile would stay in the topic.
                    if let Err(e) = status::forget_queries(&client, &ids).await {
                        tracing::warn!(error = %e, "could not take back the terminated queries' status reports");
                    }
                    result.message =
                        format!("terminated: {}", if ids.is_empty() { "nothing".into() } else { ids.join(", ") });
                }
            }
            results.push(result);
        }
        self.remember(engine, next).await;
        Ok(ExecuteResponse { results })
    }
}

/// SHOW QUERIES and EXPLAIN of a query with what the processors report of them (the
/// catalog alone knows a query is meant to run, not whether it does). When the reports
/// cannot be read, the status says so and the rest of the answer stands.
async fn with_status(client: &Client, statement: &Statement, rows: &mut [Vec<String>]) {
    let id = match statement {
        Statement::Show { what: ShowWhat::Queries, .. } => None,
        Statement::Explain(Explained::Query(id)) => Some(id),
        _ => return,
    };
    let reports = status::read(client).await.map_err(|e| format!("UNKNOWN ({} cannot be read: {e})", status::TOPIC));
    let status_of = |id: &str| -> (String, String) {
        match &reports {
            Ok(reports) => {
                let r = reports.get(id).map_or(&[][..], Vec::as_slice);
                (status::summary(r), status::details(r))
            }
            Err(unknown) => (unknown.clone(), String::new()),
        }
    };
    for row in rows.iter_mut() {
        match (id, row.as_mut_slice()) {
            (None, [query, state, ..]) => *state = status_of(query).0,
            (Some(id), [field, value]) if field == "Status" => {
                let (summary, details) = status_of(id);
                *value = format!("{summary}\n{details}");
            }
            _ => {}
        }
    }
}

/// Appends a statement and moves `engine` (which reflects the log up to `next`) through the
/// log to it: what the statement did there is the truth, since another gateway's statement
/// may have landed first.
async fn commit(
    client: &Client,
    command: &Command,
    engine: &mut Engine,
    next: &mut i64,
) -> Result<Vec<Outcome>, Status> {
    let offset = commands::append(client, command).await.map_err(remote)?;
    let (moved, outcome) = commands::advance(client, engine, *next, offset).await.map_err(|e| {
        Status::unknown(format!(
            "the statement was appended (command {offset}) but the log could not be read back ({e}): \
             SHOW or DESCRIBE tells what it did"
        ))
    })?;
    *next = moved;
    match outcome {
        Some(Ok(outcomes)) => Ok(outcomes),
        Some(Err(e)) => {
            Err(Status::aborted(format!("another statement changed the catalog first, and this one now fails: {e}")))
        }
        None => Err(Status::internal(format!("command {offset} was appended but not read back"))),
    }
}

async fn create_topic(client: &Client, topic: &str, partitions: u32) -> Result<(), Status> {
    client.create_topic_if_missing(topic, partitions, REPLICATION, HashMap::new()).await.map_err(remote)
}

async fn produce(
    client: &Client,
    topic: &str,
    key: Option<Bytes>,
    value: Option<Bytes>,
    ts: i64,
) -> Result<(), Status> {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let record =
        ProducerRecord { topic: topic.to_string(), partition: None, key, value, headers: Vec::new(), timestamp_ms: ts };
    let delivery = producer.send(record).await.map_err(remote)?;
    producer.flush().await;
    delivery.await.map_err(|_| Status::unavailable("the record was not written"))?.map_err(remote)?;
    Ok(())
}

fn row(values: Vec<Value>) -> SqlRow {
    SqlRow { cells: values.iter().map(|v| sluice_sql::format::to_json(v).to_string()).collect() }
}

/// The table's current rows: its topic read to its end (read_committed), the last record of
/// each key kept, deletions applied.
async fn pull_rows(client: &Client, pull: &Pull) -> Result<Vec<Vec<Value>>, Status> {
    let topic = &pull.table.topic;
    // A partition whose end is unknown (its leader is moving) would be read as empty: the
    // rows would be partial, so the query fails once that outlasts the wait, to be asked again.
    let ends =
        client.settled_offsets(topic, vec![], OffsetSpec::Latest, 0).await.map_err(|e| match e.is_retriable() {
            true => Status::unavailable(format!("{topic} cannot be read now ({e}): ask again")),
            false => remote(e),
        })?;
    let ends: BTreeMap<u32, i64> = ends.into_iter().filter(|o| o.offset > 0).map(|o| (o.partition, o.offset)).collect();
    let mut latest: BTreeMap<Vec<u8>, Option<Bytes>> = BTreeMap::new();
    if !ends.is_empty() {
        let parts: Vec<u32> = ends.keys().copied().collect();
        let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
        let mut consumer =
            Consumer::assign(client.clone(), topic, &parts, StartFrom::Earliest, cfg).await.map_err(remote)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let behind = |c: &Consumer| ends.iter().any(|(p, e)| c.positions().get(p).copied().unwrap_or(0) < *e);
        while behind(&consumer) {
            if tokio::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!("reading {topic} took more than 60 s")));
            }
            let batch = consumer.poll(Duration::from_millis(200)).await.map_err(remote)?;
            if batch.is_empty() && consumer.positions().iter().all(|(p, pos)| ends.get(p).is_none_or(|e| pos >= e)) {
                break;
            }
            for r in batch {
                latest.insert(r.key.as_deref().unwrap_or_default().to_vec(), r.value);
            }
        }
    }
    let mut rows = Vec::new();
    for (k, v) in latest {
        let Some(v) = v else { continue };
        match pull.table.decode_row(Some(&k), &v) {
            Ok(r) => rows.push(r),
            Err(e) => tracing::debug!(error = %e, "a record of the table's topic could not be read; skipped"),
        }
    }
    Ok(pull.select(rows))
}

type QueryStream = ReceiverStream<Result<QueryResponse, Status>>;

#[tonic::async_trait]
impl Sql for SqlService {
    async fn execute(&self, r: Request<ExecuteRequest>) -> Result<Response<ExecuteResponse>, Status> {
        Ok(Response::new(self.run(r.into_inner()).await?))
    }

    type QueryStream = QueryStream;

    async fn query(&self, r: Request<QueryRequest>) -> Result<Response<QueryStream>, Status> {
        let req = r.into_inner();
        let mut parsed = sluice_sql::parse(&req.sql).map_err(|e| status(&e))?;
        if parsed.len() != 1 {
            return Err(Status::invalid_argument("Query runs one SELECT"));
        }
        let sluice_sql::ast::Statement::Select(q) = parsed.remove(0).statement else {
            return Err(Status::invalid_argument("Query runs a SELECT; other statements go to Execute"));
        };
        let client = self.client().await?;
        let (engine, _) = self.catalog(&client).await?;
        let (tx, rx) = mpsc::channel(256);
        match engine.select(&q).map_err(|e| status(&e))? {
            Outcome::Pull(pull) => {
                let rows = pull_rows(&client, &pull).await?;
                let header = QueryHeader { columns: pull.columns.clone(), types: Vec::new() };
                let _ = tx.send(Ok(QueryResponse { kind: Some(query_response::Kind::Header(header)) })).await;
                tokio::spawn(async move {
                    for r in rows {
                        if tx.send(Ok(QueryResponse { kind: Some(query_response::Kind::Row(row(r))) })).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Outcome::Push { plan, emit_final } => {
                // A topology the in-memory run refuses (a source read twice) fails here, saying why.
                {
                    let b = sluice_streams::StreamsBuilder::new();
                    plan.build(&b, emit_final).foreach(|_, _| {});
                    sluice_streams::TestDriver::new(b.build(), "push")
                        .map_err(|e| Status::failed_precondition(format!("this query cannot run: {e}")))?;
                }
                let latest =
                    req.properties.get("auto.offset.reset").is_none_or(|v| !v.eq_ignore_ascii_case("earliest"));
                let out = plan.output();
                let header = QueryHeader {
                    columns: out.columns.iter().map(|c| c.name.clone()).collect(),
                    types: out.columns.iter().map(|c| c.ty.to_string()).collect(),
                };
                let _ = tx.send(Ok(QueryResponse { kind: Some(query_response::Kind::Header(header)) })).await;
                tokio::spawn(push(client, engine, plan, emit_final, latest, tx));
            }
            _ => return Err(Status::invalid_argument("not a query")),
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs a push query until its client goes or its LIMIT: consumers of its sources feed an
/// in-memory topology on a thread of its own; each result row goes to the client.
async fn push(
    client: Client,
    engine: Engine,
    plan: QueryPlan,
    emit_final: bool,
    latest: bool,
    tx: mpsc::Sender<Result<QueryResponse, Status>>,
) {
    let topics: Vec<String> = plan.sources().iter().filter_map(|s| engine.source(s)).map(|s| s.topic.clone()).collect();
    let (records_tx, mut records_rx) = mpsc::channel::<(String, sluice_streams::topology::RawRecord)>(1024);
    // Bounded: a slow client slows the query down instead of piling rows up here.
    let (rows_tx, mut rows_rx) = mpsc::channel::<(Row, Option<Row>)>(1024);
    let runner_plan = plan.clone();
    let runner = std::thread::spawn(move || {
        let b = sluice_streams::StreamsBuilder::new();
        let rows = rows_tx.clone();
        runner_plan.build(&b, emit_final).foreach(move |k, v| {
            let _ = rows.blocking_send((k.clone(), v.clone()));
        });
        let mut driver = match sluice_streams::TestDriver::new(b.build(), "push") {
            Ok(d) => d,
            Err(e) => return tracing::warn!(error = %e, "push query could not start"),
        };
        while let Some((topic, r)) = records_rx.blocking_recv() {
            if let Err(e) = driver.pipe_raw(&topic, r) {
                tracing::debug!(error = %e, "push query record failed");
            }
            // Rows left through foreach; changelog records of its stores are not needed.
            driver.discard_outputs();
        }
    });
    let mut readers = Vec::new();
    for t in topics {
        let (client, records, topic, errors) = (client.clone(), records_tx.clone(), t.clone(), tx.clone());
        let from = if latest { StartFrom::Latest } else { StartFrom::Earliest };
        readers.push(tokio::spawn(async move {
            let mut c = match Consumer::assign(client, &topic, &[], from, ConsumerConfig::default()).await {
                Ok(c) => c,
                Err(e) => {
                    // The client hears why its query ends.
                    let _ = errors.send(Err(Status::unavailable(format!("cannot read {topic}: {e}")))).await;
                    return;
                }
            };
            loop {
                let Ok(batch) = c.poll(Duration::from_millis(500)).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                for r in batch {
                    let raw = sluice_streams::topology::RawRecord {
                        key: r.key,
                        value: r.value,
                        timestamp: r.timestamp_ms,
                        headers: r.headers,
                    };
                    if records.send((topic.clone(), raw)).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(records_tx);
    let limit = plan.limit();
    let mut sent = 0u64;
    loop {
        tokio::select! {
            r = rows_rx.recv() => {
                let Some((k, v)) = r else { break };
                let mut values = k.0;
                match v {
                    Some(v) => values.extend(v.0),
                    // A deletion (HAVING, a table's row gone): the key with null values.
                    None => values.resize(plan.output().columns.len(), Value::Null),
                }
                if tx.send(Ok(QueryResponse { kind: Some(query_response::Kind::Row(row(values))) })).await.is_err() {
                    break;
                }
                sent += 1;
                if limit.is_some_and(|l| sent >= l) {
                    break;
                }
            }
            _ = tx.closed() => break,
        }
    }
    for r in readers {
        r.abort();
    }
    drop(rows_rx);
    let _ = tokio::task::spawn_blocking(move || runner.join()).await;
}
