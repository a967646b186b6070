//! Connect runners as separate processes of a cluster (`sluice cluster up` starts them the
//! same way): tasks spread over the runners through the group coordinator, and a runner
//! killed has its tasks moved to another, which resumes where the dead one's last
//! transaction left them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

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
