//! Streams throughput on a running cluster (scripts/bench-streams.sh runs it): RECORDS
//! records (keys out of 10,000, 100-byte values) are written to a fresh input topic first,
//! then an application is timed from its first task assignment until its committed offsets
//! cover them all, through a stateless map (`--mode map`) or a count per key (`--mode
//! count`), at-least-once or exactly-once. Prints one JSON line.
//!
//! cargo run --release -p sluice-streams --example throughput -- --gateway ADDR --mode count --records 1000000 --processing-guarantee exactly_once

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sluice_client::Client;
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_streams::{Guarantee, StreamsApp, StreamsBuilder, StreamsConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "SLUICE_GATEWAY", default_value = "127.0.0.1:7070")]
    gateway: String,
    #[arg(long, default_value = "map", value_parser = ["map", "count"])]
    mode: String,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[arg(long, default_value = "at_least_once", value_parser = ["exactly_once", "at_least_once"])]
    processing_guarantee: String,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let client = Client::connect(&a.gateway).await?;
    let run_id = format!("{}-{}-{}", a.mode, a.processing_guarantee, std::process::id());
    let (input, output) = (format!("bench-in-{run_id}"), format!("bench-out-{run_id}"));
    for t in [&input, &output] {
        client.create_topic(t, a.partitions, 1, HashMap::new()).await?;
    }
    let producer =
        Producer::new(client.clone(), ProducerConfig { linger: Duration::from_millis(5), ..ProducerConfig::default() });
    let value = Bytes::from(vec![b'x'; 100]);
    let mut pending = Vec::new();
    for i in 0..a.records {
        let r = ProducerRecord {
            topic: input.clone(),
            key: Some(Bytes::from(format!("k{}", i % 10_000))),
            value: Some(value.clone()),
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

    let b = StreamsBuilder::new();
    let s = b.stream::<String, Bytes>(&input);
    match a.mode.as_str() {
        "map" => s.map_values(|_, v| v.len() as i64).to(&output),
        _ => s.group_by_key().count("bench-counts").to_stream().to(&output),
    }
    let app_id = format!("bench-{run_id}");
    let mut cfg = StreamsConfig::new(&app_id, &a.gateway);
    cfg.guarantee =
        if a.processing_guarantee == "exactly_once" { Guarantee::ExactlyOnce } else { Guarantee::AtLeastOnce };
    cfg.replication_factor = 1;
    cfg.state_dir = std::env::temp_dir().join(format!("sluice-bench-{run_id}"));
    let app = StreamsApp::start(b.build(), cfg)?;
    let started = loop {
        if !app.state().tasks.is_empty() {
            break Instant::now();
        }
        if let Some(why) = app.state().failed {
            anyhow::bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        let done: i64 = client.fetch_offsets(&app_id, Some(&input)).await?.iter().map(|o| o.offset).sum();
        if done as u64 >= a.records {
            break;
        }
        if let Some(why) = app.state().failed {
            anyhow::bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let commits = app.state().commits;
    let dir = std::env::temp_dir().join(format!("sluice-bench-{run_id}"));
    tokio::task::spawn_blocking(move || app.close()).await?;
    let _ = std::fs::remove_dir_all(dir);
    println!(
        "{{\"mode\": \"{}\", \"guarantee\": \"{}\", \"records\": {}, \"seconds\": {:.2}, \"records_per_s\": {:.0}, \"commits\": {}}}",
        a.mode,
        a.processing_guarantee,
        a.records,
        secs,
        a.records as f64 / secs,
        commits
    );
    Ok(())
}
