//! Connect runners as separate processes of a cluster (`sluice cluster up` starts them the
//! same way): tasks spread over the runners through the group coordinator, and a runner
//! killed has its tasks moved to another, which resumes where the dead one's last
//! transaction left them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_client::Client;
use sluice_tests::*;

fn append(path: &Path, from: usize, to: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for i in from..to {
        writeln!(f, "{i}").unwrap();
    }
}

/// Which runner runs task 0 of `name`, once it runs.
async fn running_on(client: &Client, name: &str) -> Option<String> {
    let s = client.connector_status(name).await.ok()?;
    let t = s.tasks.first()?;
    (t.state == "RUNNING").then(|| t.runner.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_over_runners_and_move_when_one_dies() {
    let (mut c, dir) = cluster_built(|b| b.nodes(2).runners(2), &[]).await;
    let client = Client::connect(c.gateway()).await.unwrap();
    let name = |id: u64| format!("runner-{}", c.entry("connect-runner", id).expect("runner").addr);
    let (n1, n2) = (name(1), name(2));
    let mut files = HashMap::new();
    for name in ["a", "b"] {
        client.create_topic(name, 1, 1, HashMap::new()).await.unwrap();
        let file = dir.path().join(format!("{name}.txt"));
        append(&file, 0, 50);
        let config = HashMap::from([
            ("name".to_string(), format!("in-{name}")),
            ("connector.class".to_string(), "file-source".to_string()),
            ("file".to_string(), file.display().to_string()),
            ("topic".to_string(), name.to_string()),
            ("value.converter".to_string(), "string".to_string()),
        ]);
        client.create_connector(config, false).await.unwrap();
        files.insert(name, file);
    }
    // One task each: round-robin over the two runners.
    let (on_a, on_b) = eventually("both tasks running on different runners", Duration::from_secs(60), || async {
        let (a, b) = (running_on(&client, "in-a").await?, running_on(&client, "in-b").await?);
        (a != b).then_some((a, b))
    })
    .await;
    assert!([&n1, &n2].contains(&&on_a) && [&n1, &n2].contains(&&on_b), "{on_a} {on_b} not {n1} {n2}");
    // Rebalances are incremental: a new connector's task is dealt without restarting the
    // tasks that stay (each reports when it started).
    let started = |name: &'static str| {
        let client = client.clone();
        async move { client.connector_status(name).await.ok()?.tasks.first().map(|t| (t.runner.clone(), t.updated_ms)) }
    };
    let (a_before, b_before) = (started("in-a").await, started("in-b").await);
    let file_c = dir.path().join("c.txt");
    append(&file_c, 0, 5);
    client.create_topic("c", 1, 1, HashMap::new()).await.unwrap();
    let config = HashMap::from([
        ("name".to_string(), "in-c".to_string()),
        ("connector.class".to_string(), "file-source".to_string()),
        ("file".to_string(), file_c.display().to_string()),
        ("topic".to_string(), "c".to_string()),
        ("value.converter".to_string(), "string".to_string()),
    ]);
    client.create_connector(config, false).await.unwrap();
    eventually("in-c running", Duration::from_secs(60), || running_on(&client, "in-c")).await;
    assert_eq!((started("in-a").await, started("in-b").await), (a_before, b_before), "nothing that stays restarted");
    client.delete_connector("in-c").await.unwrap();
    let lines = |topic: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let got = consume_all(&client, topic, n).await;
            got.into_iter()
                .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).to_string())
                .collect::<Vec<_>>()
        }
    };
    let expect = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(lines("b", 50).await, expect(50));

    // The runner of in-b dies without a word; lines written meanwhile are read by the other,
    // from where the dead one's last transaction left off.
    let (victim, survivor) = if on_b == n1 { (1, n2.clone()) } else { (2, n1.clone()) };
    c.kill("connect-runner", victim);
    append(&files["b"], 50, 80);
    eventually("in-b moved to the surviving runner", Duration::from_secs(60), || async {
        (running_on(&client, "in-b").await? == survivor).then_some(())
    })
    .await;
    eventually("the lines written after the kill", Duration::from_secs(60), || async {
        let end = client.list_offsets("b", vec![0], sluice_proto::v1::OffsetSpec::Latest, 0).await.ok()?;
        (end.first()?.offset >= 80).then_some(())
    })
    .await;
    let cfg = sluice_client::consumer::ConsumerConfig {
        isolation: sluice_proto::v1::IsolationLevel::ReadCommitted,
        ..Default::default()
    };
    let mut reader = sluice_client::consumer::Consumer::assign(
        client.clone(),
        "b",
        &[],
        sluice_client::consumer::StartFrom::Earliest,
        cfg,
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 80 {
        let batch = tokio::time::timeout(Duration::from_secs(10), reader.poll(Duration::from_millis(500)))
            .await
            .expect("read in time")
            .unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).to_string()));
    }
    assert_eq!(got, expect(80), "every line once, in order, across the move");
}

/// Every record of `topic` below its last stable offset, as JSON (None for a null side).
async fn committed_json(client: &Client, topic: &str) -> Vec<(Option<Value>, Option<Value>)> {
    let cfg = sluice_client::consumer::ConsumerConfig {
        isolation: sluice_proto::v1::IsolationLevel::ReadCommitted,
        ..Default::default()
    };
    let Ok(mut reader) = sluice_client::consumer::Consumer::assign(
        client.clone(),
        topic,
        &[],
        sluice_client::consumer::StartFrom::Earliest,
        cfg,
    )
    .await
    else {
        return Vec::new();
    };
    let json = |b: &Option<bytes::Bytes>| b.as_ref().map(|b| serde_json::from_slice::<Value>(b).expect("JSON"));
    let mut got = Vec::new();
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(10), reader.poll(Duration::from_millis(700)))
            .await
            .expect("read in time")
            .unwrap_or_default();
        if batch.is_empty() {
            return got;
        }
        got.extend(batch.iter().map(|r| (json(&r.key), json(&r.value))));
    }
}

/// PostgreSQL both ways: a table's inserts, updates and deletes streamed by change data
/// capture and by two query modes, one of those topics written into another database by a
/// sink, and the runner of the CDC task killed: every task moves, no event is written twice,
/// and the copied table holds each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sources_and_sink_keep_every_change_once_across_a_runner_kill() {
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int, \
           updated timestamptz NOT NULL DEFAULT clock_timestamp()); \
         ALTER TABLE orders REPLICA IDENTITY FULL; \
         INSERT INTO orders (item, qty) SELECT 'item-' || i, i FROM generate_series(1, 50) i",
    )
    .expect("the table");
    pg.psql("CREATE DATABASE copy").expect("the target database");
    let (mut c, _dir) = cluster_built(|b| b.nodes(2).runners(2), &[]).await;
    let client = Client::connect(c.gateway()).await.unwrap();
    // Two partitions for the query topic the sink reads with two tasks; the others are
    // created by their source.
    client.create_topic("inc.orders", 2, 1, HashMap::new()).await.unwrap();
    let create = |name: &str, pairs: &[(&str, &str)], url: String| {
        let mut config: HashMap<String, String> = [
            ("name", name),
            ("key.converter", "json"),
            ("value.converter", "json"),
            ("key.converter.schemas.enable", "false"),
            ("value.converter.schemas.enable", "false"),
        ]
        .into_iter()
        .chain(pairs.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        config.insert("connection.url".into(), url);
        let client = client.clone();
        async move { client.create_connector(config, false).await.expect("connector created") }
    };
    let source = [("connector.class", "postgres-source"), ("table.whitelist", "orders"), ("poll.interval.ms", "200")];
    let url = pg.url();
    create("pg-cdc", &[&source[..], &[("mode", "cdc"), ("topic.prefix", "cdc.")]].concat(), url.clone()).await;
    let inc = [("mode", "incrementing"), ("incrementing.column.name", "id"), ("topic.prefix", "inc.")];
    create("pg-inc", &[&source[..], &inc].concat(), url.clone()).await;
    let ts = [
        ("mode", "timestamp+incrementing"),
        ("incrementing.column.name", "id"),
        ("timestamp.column.name", "updated"),
        ("topic.prefix", "ts."),
    ];
    create("pg-ts", &[&source[..], &ts].concat(), url.clone()).await;
    let count = |topic: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let got = committed_json(&client, topic).await;
            (got.len() >= n).then_some(got)
        }
    };
    let snapshot = eventually("the snapshot", Duration::from_secs(60), || count("cdc.orders", 50)).await;
    assert!(snapshot.iter().all(|(_, v)| v.as_ref().unwrap()["op"] == "r"), "{snapshot:?}");
    assert_eq!(snapshot[0].0, Some(json!({"id": 1})));
    assert_eq!(snapshot[0].1.as_ref().unwrap()["after"]["item"], "item-1");
    let by_id = eventually("the rows by id", Duration::from_secs(60), || count("inc.orders", 50)).await;
    let ids: Vec<i64> = by_id.iter().map(|(_, v)| v.as_ref().unwrap()["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>(), "in the column's order, each once");
    let by_time = eventually("the rows by time", Duration::from_secs(60), || count("ts.orders", 50)).await;
    assert_eq!(by_time.len(), 50);

    pg.psql(
        "INSERT INTO orders (item, qty) SELECT 'item-' || i, i FROM generate_series(51, 60) i; \
         UPDATE orders SET qty = 1000, updated = clock_timestamp() WHERE id <= 5; \
         DELETE FROM orders WHERE id BETWEEN 6 AND 8",
    )
    .expect("the changes");
    // 10 creates, 5 updates, 3 deletes each with its tombstone.
    let cdc = eventually("the changes captured", Duration::from_secs(60), || count("cdc.orders", 71)).await;
    let ops = |op: &str| cdc.iter().filter(|(_, v)| v.as_ref().is_some_and(|v| v["op"] == op)).count();
    assert_eq!((ops("r"), ops("c"), ops("u"), ops("d"), cdc.len()), (50, 10, 5, 3, 71));
    let update = cdc.iter().find_map(|(_, v)| v.as_ref().filter(|v| v["op"] == "u")).unwrap();
    assert_eq!((&update["before"]["qty"], &update["after"]["qty"]), (&json!(1), &json!(1000)), "{update}");
    assert_eq!(update["source"]["table"], "orders");
    let deleted = cdc.iter().position(|(_, v)| v.as_ref().is_some_and(|v| v["op"] == "d")).unwrap();
    assert_eq!(cdc[deleted].1.as_ref().unwrap()["before"]["item"], "item-6");
    assert_eq!(cdc[deleted + 1], (Some(json!({"id": 6})), None), "a tombstone follows a delete");
    let by_id = eventually("new rows by id", Duration::from_secs(60), || count("inc.orders", 60)).await;
    assert_eq!(by_id.len(), 60);
    // The updated rows come again, in timestamp order.
    let by_time = eventually("new and updated rows by time", Duration::from_secs(60), || count("ts.orders", 65)).await;
    let last: Vec<(i64, i64)> = by_time[60..]
        .iter()
        .map(|(_, v)| (v.as_ref().unwrap()["id"].as_i64().unwrap(), v.as_ref().unwrap()["qty"].as_i64().unwrap()))
        .collect();
    assert_eq!((by_time.len(), last), (65, (1..=5).map(|i| (i, 1000)).collect()));

    // The query topic into another database, two tasks.
    let copy_url = format!("postgresql://sluice@127.0.0.1:{}/copy", pg.port);
    let sink = [
        ("connector.class", "postgres-sink"),
        ("topics", "inc.orders"),
        ("table.name.format", "orders_copy"),
        ("auto.create", "true"),
        ("tasks.max", "2"),
    ];
    create("pg-copy", &sink, copy_url.clone()).await;
    // And the change events, as rows, into a mirror of the table: upserts by key, deletes on
    // the tombstones.
    let mirror = [
        ("connector.class", "postgres-sink"),
        ("topics", "cdc.orders"),
        ("table.name.format", "orders_mirror"),
        ("auto.create", "true"),
        ("insert.mode", "upsert"),
        ("pk.mode", "record_key"),
        ("delete.enabled", "true"),
        ("transforms", "rows"),
        ("transforms.rows.type", "io.debezium.transforms.ExtractNewRecordState"),
        ("transforms.rows.drop.tombstones", "false"),
    ];
    create("pg-mirror", &mirror, copy_url).await;
    let copied = |sql: &str| {
        pg.psql_in("copy", &format!("SELECT {sql} FROM orders_copy")).map(|c| c.replace('\n', " ")).unwrap_or_default()
    };
    let rows = |n: usize| {
        let (copied, want) = (&copied, format!("{n}|{n}"));
        async move { (copied("count(*), count(DISTINCT id)") == want).then_some(()) }
    };
    let copied_in_time = tokio::time::timeout(
        Duration::from_secs(60),
        eventually("the rows copied", Duration::from_secs(90), || rows(60)),
    )
    .await;
    if copied_in_time.is_err() {
        let status = client.connector_status("pg-copy").await;
        panic!("rows copied: {}; the sink: {status:?}", copied("count(*), count(DISTINCT id)"));
    }

    // The runner with the CDC task dies without a word; everything it ran moves.
    let name = |id: u64| format!("runner-{}", c.entry("connect-runner", id).expect("runner").addr);
    let (n1, n2) = (name(1), name(2));
    let on = eventually("the CDC task's runner", Duration::from_secs(10), || running_on(&client, "pg-cdc")).await;
    let (victim, survivor) = if on == n1 { (1, n2) } else { (2, n1) };
    c.kill("connect-runner", victim);
    pg.psql("INSERT INTO orders (item, qty) SELECT 'item-' || i, i FROM generate_series(61, 80) i").expect("more");
    eventually("the CDC task moved", Duration::from_secs(60), || async {
        (running_on(&client, "pg-cdc").await? == survivor).then_some(())
    })
    .await;
    let cdc = eventually("the rows after the kill captured", Duration::from_secs(60), || count("cdc.orders", 91)).await;
    let created: Vec<&Value> = cdc.iter().filter_map(|(_, v)| v.as_ref().filter(|v| v["op"] == "c")).collect();
    let ids: std::collections::BTreeSet<i64> = created.iter().map(|v| v["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!((created.len(), ids.len(), cdc.len()), (30, 30, 91), "each change once");
    eventually("every row copied once", Duration::from_secs(60), || rows(80)).await;
    let state = "SELECT string_agg(id || ':' || qty, ',' ORDER BY id) FROM";
    let source_state = pg.psql(&format!("{state} orders")).unwrap();
    eventually("the mirror equal to the table", Duration::from_secs(60), || async {
        (pg.psql_in("copy", &format!("{state} orders_mirror")).as_ref() == Some(&source_state)).then_some(())
    })
    .await;
    // Each id as the incrementing mode first read it (later updates are not its to see).
    assert_eq!(copied("min(id), max(id), sum(qty)"), format!("1|80|{}", (1..=80).sum::<i64>()));
}
