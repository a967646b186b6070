//! Streaming SQL on a real cluster (real etcd, partition nodes, a gateway serving
//! `sluice.v1.Sql`, two stream-processor processes sharing the query's tasks): a CTAS with a
//! tumbling-window count and sum per key over 10,000 records, one processor killed with -9
//! mid-stream and restarted. Pull
//! queries must equal the counts and sums computed here, the table's topic must hold every
//! window's updates exactly once (exactly-once: counts 1, 2, ... N in order), and a push
//! query running the same aggregation must receive every change.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use sluice_client::Client;
use sluice_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::{ExecuteRequest, IsolationLevel, QueryRequest, SqlRow, query_response};
use sluice_tests::{client, cluster_built, eventually, seed};
use tokio_stream::StreamExt;

const RECORDS: usize = 10_000;
const SENSORS: usize = 20;
const MINUTE: i64 = 60_000;

/// (sensor, window start) -> (count, sum)
type Reference = BTreeMap<(String, i64), (i64, i64)>;

fn readings(seed: u64) -> Vec<(String, i64, i64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Ten minutes of readings from an hour ago (recent: retention keeps them), in time order
    // (no late records).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let base = (now - 3_600_000) / MINUTE * MINUTE;
    (0..RECORDS)
        .map(|i| {
            let sensor = format!("s{}", rng.random_range(0..SENSORS));
            let ts = base + (i as i64) * 60;
            (sensor, ts, rng.random_range(0..100))
        })
        .collect()
}

fn reference(rs: &[(String, i64, i64)]) -> Reference {
    let mut out = Reference::new();
    for (s, ts, v) in rs {
        let e = out.entry((s.clone(), ts - ts.rem_euclid(MINUTE))).or_insert((0, 0));
        e.0 += 1;
        e.1 += v;
    }
    out
}

async fn produce(client: &Client, rs: &[(String, i64, i64)]) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut futs = Vec::new();
    for (s, ts, v) in rs {
        let r = ProducerRecord {
            topic: "readings".into(),
            key: Some(Bytes::from(s.clone())),
            value: Some(Bytes::from(format!("{{\"v\": {v}}}"))),
            timestamp_ms: *ts,
            ..Default::default()
        };
        futs.push(producer.send(r).await.expect("queued"));
    }
    for f in futs {
        f.await.expect("answered").expect("acknowledged");
    }
    producer.close().await;
}

async fn execute(client: &Client, sql: &str) -> Vec<sluice_proto::v1::StatementResult> {
    let req = ExecuteRequest {
        sql: sql.into(),
        properties: HashMap::from([("auto.offset.reset".to_string(), "earliest".to_string())]),
    };
    client.sql_api().execute(req).await.unwrap_or_else(|s| panic!("{sql}: {}", s.message())).into_inner().results
}

fn cell(r: &SqlRow, i: usize) -> serde_json::Value {
    serde_json::from_str(&r.cells[i]).expect("a JSON cell")
}

/// The pull query's rows as (sensor, window start) -> (count, sum).
async fn pull_all(client: &Client) -> Reference {
    let rows = execute(client, "SELECT sensor, WINDOWSTART, n, total FROM per_minute;").await.remove(0).rows;
    rows.iter()
        .map(|r| {
            let key = (cell(r, 0).as_str().unwrap_or_default().to_string(), cell(r, 1).as_i64().unwrap_or(-1));
            (key, (cell(r, 2).as_i64().unwrap_or(-1), cell(r, 3).as_i64().unwrap_or(-1)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_aggregation_is_exact_through_a_processor_kill() {
    let rs = readings(seed("sql"));
    let want = reference(&rs);
    let (mut c, _dir) = cluster_built(|b| b.nodes(3).processors(2), &[]).await;
    let client = client(&c).await;

    // Errors are clear before anything runs.
    let bad = ExecuteRequest { sql: "CREATE TABLE x AS SELECT nope FROM nowhere;".into(), ..Default::default() };
    let e = client.sql_api().execute(bad).await.expect_err("unknown source");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("NOWHERE does not exist"), "{}", e.message());

    let r = execute(
        &client,
        "CREATE STREAM readings (sensor STRING KEY, v BIGINT) WITH (kafka_topic='readings', value_format='JSON', partitions=3);
         CREATE TABLE per_minute AS SELECT sensor, COUNT(*) AS n, SUM(v) AS total FROM readings
           WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY sensor EMIT CHANGES;",
    )
    .await;
    let query = r[1].query_id.clone();
    assert!(query.starts_with("CTAS_PER_MINUTE_"), "{r:?}");
    let shown = execute(&client, "SHOW QUERIES;").await.remove(0);
    assert_eq!(shown.rows.len(), 1, "{shown:?}");

    // A push query computing the same aggregation in the gateway: every change arrives.
    let push = QueryRequest {
        sql: format!(
            "SELECT sensor, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS total FROM readings \
             WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY sensor EMIT CHANGES LIMIT {RECORDS};"
        ),
        properties: HashMap::from([("auto.offset.reset".to_string(), "earliest".to_string())]),
    };
    let mut stream = client.sql_api().query(push).await.expect("push query").into_inner();
    let pushed = tokio::spawn(async move {
        let mut changes = 0;
        let mut last = Reference::new();
        while let Some(m) = stream.next().await {
            if let Some(query_response::Kind::Row(r)) = m.expect("push row").kind {
                let key = (cell(&r, 0).as_str().unwrap_or_default().to_string(), cell(&r, 1).as_i64().unwrap_or(-1));
                last.insert(key, (cell(&r, 3).as_i64().unwrap_or(-1), cell(&r, 4).as_i64().unwrap_or(-1)));
                changes += 1;
            }
        }
        (changes, last)
    });

    // Records arrive in 40 slices while the processor runs; it dies with -9 once it has
    // written results (mid-stream), and comes back while records still arrive.
    let feeder = {
        let (client, rs) = (client.clone(), rs.clone());
        tokio::spawn(async move {
            for slice in rs.chunks(RECORDS / 40) {
                produce(&client, slice).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    eventually("the query writes results", Duration::from_secs(60), || async {
        let ends = client.list_offsets("PER_MINUTE", vec![], sluice_proto::v1::OffsetSpec::Latest, 0).await.ok()?;
        (ends.iter().map(|o| o.offset).sum::<i64>() > 500).then_some(())
    })
    .await;
    // Both processors run the query: its group has a member from each.
    let group = format!("_sluice_sql_{query}");
    eventually("both processors share the query", Duration::from_secs(60), || async {
        let g = client.describe_group(&group).await.ok()?;
        (g.members.len() == 2).then_some(())
    })
    .await;
    // ... and say so: SHOW QUERIES counts the processors running it.
    let status = || async {
        let shown = execute(&client, "SHOW QUERIES;").await.remove(0);
        shown.rows.first().map(|r| cell(r, 1).as_str().unwrap_or_default().to_string())
    };
    eventually("SHOW QUERIES says two processors run it", Duration::from_secs(30), || async {
        (status().await.as_deref() == Some("RUNNING:2")).then_some(())
    })
    .await;
    c.kill("stream-processor", 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart("stream-processor", 1).await.expect("processor restarted");
    feeder.await.expect("every record produced");
    // The restarted processor reports under its old name: still two, each with its tasks.
    let explained =
        eventually("EXPLAIN lists both processors and the query's 3 tasks", Duration::from_secs(60), || async {
            let rows = execute(&client, &format!("EXPLAIN {query};")).await.remove(0).rows;
            let st = rows
                .iter()
                .find(|r| cell(r, 0) == "Status")
                .map(|r| cell(r, 1).as_str().unwrap_or_default().to_string())?;
            let tasks: usize = st
                .lines()
                .skip(1)
                .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" tasks")?.parse::<usize>().ok())
                .sum();
            (st.starts_with("RUNNING:2\n") && tasks == 3).then_some(st)
        })
        .await;
    assert_eq!(explained.matches(": RUNNING, ").count(), 2, "{explained}");

    let got = eventually("pull queries give the reference counts and sums", Duration::from_secs(120), || async {
        let got = pull_all(&client).await;
        (got == want).then_some(got)
    })
    .await;
    assert_eq!(got.len(), want.len());
    // A pull query by key.
    let (one, _) = want.keys().next().expect("a window").clone();
    let rows = execute(&client, &format!("SELECT n FROM per_minute WHERE sensor = '{one}';")).await.remove(0).rows;
    let n: i64 = rows.iter().map(|r| cell(r, 0).as_i64().unwrap_or(0)).sum();
    assert_eq!(n, want.iter().filter(|((s, _), _)| *s == one).map(|(_, (n, _))| n).sum::<i64>());

    // Exactly once: each window's committed updates count 1, 2, ... N.
    let cfg = ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() };
    let mut consumer =
        Consumer::assign(client.clone(), "PER_MINUTE", &[], StartFrom::Earliest, cfg).await.expect("consumer");
    let mut updates: BTreeMap<Vec<u8>, Vec<i64>> = BTreeMap::new();
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read < RECORDS && tokio::time::Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            let v: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).expect("JSON value");
            updates
                .entry(r.key.as_deref().unwrap_or_default().to_vec())
                .or_default()
                .push(v["N"].as_i64().unwrap_or(-1));
            read += 1;
        }
    }
    assert_eq!(read, RECORDS, "one update per record, no more, no less");
    for (k, seen) in &updates {
        let expected: Vec<i64> = (1..=seen.len() as i64).collect();
        assert_eq!(seen, &expected, "window {k:?}: every record counted once, in order");
    }
    assert_eq!(updates.len(), want.len());

    let (changes, last) =
        tokio::time::timeout(Duration::from_secs(60), pushed).await.expect("push ends").expect("push");
    assert_eq!(changes, RECORDS, "the push query received every change");
    assert_eq!(last, want, "the push query's last values are the reference");

    let t = execute(&client, &format!("TERMINATE {query};")).await.remove(0);
    assert!(t.message.contains(&query), "{t:?}");
    assert!(execute(&client, "SHOW QUERIES;").await.remove(0).rows.is_empty());
    // Its status reports are taken back (by the gateway too: none outlives the query).
    let left = sluice_sql_server::status::read(&client).await.expect("status reports");
    assert!(!left.contains_key(&query), "{left:?}");
}
