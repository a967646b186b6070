//! `sluice bench sql`: rows per second through a persistent SQL query, on a running cluster
//! with a stream processor (`sluice dev` has one). RECORDS JSON records (keys out of
//! 10,000) are written to a fresh stream first; the query is then started from the earliest
//! offset and timed from its first committed offsets until they cover every record (and,
//! overall, from the statement, start-up included). Queries:
//! `filter` (a WHERE and a projection with expressions) and `window` (a count and a sum per
//! key in one-minute tumbling windows). Prints one JSON line.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::ExecuteRequest;

use crate::GatewayArg;

#[derive(clap::Args)]
pub struct SqlBenchArgs {
    /// `filter` (WHERE and projection) or `window` (tumbling count and sum per key).
    #[arg(long, default_value = "filter", value_parser = ["filter", "window"])]
    query: String,
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[command(flatten)]
    gw: GatewayArg,
}

async fn execute(client: &sluice_client::Client, sql: &str) -> anyhow::Result<Vec<sluice_proto::v1::StatementResult>> {
    let req = ExecuteRequest {
        sql: sql.into(),
        properties: HashMap::from([("auto.offset.reset".to_string(), "earliest".to_string())]),
    };
    match client.sql_api().execute(req).await {
        Ok(r) => Ok(r.into_inner().results),
        Err(s) => anyhow::bail!("{sql}: {}", s.message()),
    }
}

pub async fn run(a: SqlBenchArgs) -> anyhow::Result<ExitCode> {
    let client = a.gw.connect().await?;
    let id = format!("{}_{}", a.query, std::process::id());
    let stream = format!("BENCH_{id}").to_uppercase();
    execute(
        &client,
        &format!(
            "CREATE STREAM {stream} (k STRING KEY, v BIGINT, name STRING) WITH (kafka_topic='bench-sql-{id}', value_format='JSON', partitions={});",
            a.partitions
        ),
    )
    .await?;
    let producer =
        Producer::new(client.clone(), ProducerConfig { linger: Duration::from_millis(5), ..ProducerConfig::default() });
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64 - 3_600_000;
    let mut pending = Vec::new();
    for i in 0..a.records {
        let r = ProducerRecord {
            topic: format!("bench-sql-{id}"),
            key: Some(Bytes::from(format!("k{}", i % 10_000))),
            value: Some(Bytes::from(format!("{{\"v\": {}, \"name\": \"n{}\"}}", i % 1000, i % 100))),
            // Spread over a few minutes: several windows per key.
            timestamp_ms: base + (i as i64 * 600_000 / a.records.max(1) as i64),
            ..Default::default()
        };
        pending.push(producer.send(r).await?);
        if pending.len() >= 50_000 {
            for f in pending.drain(..) {
                f.await??;
            }
        }
    }
    for f in pending {
        f.await??;
    }
    producer.close().await;
    let sql = match a.query.as_str() {
        "filter" => format!(
            "CREATE STREAM OUT_{id} AS SELECT k, v * 2 AS v2, UCASE(name) AS name FROM {stream} WHERE v % 2 = 0;"
        ),
        _ => format!(
            "CREATE TABLE OUT_{id} AS SELECT k, COUNT(*) AS n, SUM(v) AS total FROM {stream} WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k;"
        ),
    };
    let submitted = Instant::now();
    let query = execute(&client, &sql).await?.pop().map(|r| r.query_id).unwrap_or_default();
    let group = format!("_sluice_sql_{query}");
    let input = format!("bench-sql-{id}");
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut started = None;
    loop {
        let done: i64 = client
            .fetch_offsets(&group, Some(&input))
            .await
            .map(|o| o.iter().map(|o| o.offset.max(0)).sum())
            .unwrap_or(0);
        if done > 0 && started.is_none() {
            started = Some((Instant::now(), done));
        }
        if done as u64 >= a.records {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the query did not finish in an hour");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, first) = started.unwrap_or((Instant::now(), 0));
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let rows = a.records - first as u64;
    let total = submitted.elapsed().as_secs_f64();
    execute(&client, &format!("TERMINATE {query};")).await?;
    println!(
        "{}",
        serde_json::json!({
            "query": a.query,
            "records": a.records,
            "timed_records": rows,
            "seconds": (secs * 100.0).round() / 100.0,
            "rows_per_s": (rows as f64 / secs).round(),
            // From the CREATE ... AS SELECT to the last commit, start-up included.
            "total_seconds": (total * 100.0).round() / 100.0,
            "overall_rows_per_s": (a.records as f64 / total).round(),
            "guarantee": "exactly_once",
        })
    );
    Ok(ExitCode::SUCCESS)
}
