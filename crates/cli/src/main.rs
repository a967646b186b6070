//! `sluice`: run a single-node Sluice (`dev`), a local multi-process cluster (`cluster`), and
//! work with topics, records and benchmarks from the command line.
//!
//! Exit codes: 0 success; 1 the request failed (one sentence on stderr names the problem);
//! 2 bad command-line usage.

mod bench;
mod bench_kafka;
mod bench_sql;
mod cluster;
mod connect;
mod consume;
mod copy;
mod dev;
mod group;
mod produce;
mod sql;
mod topic;
mod txn;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice event streaming: run it, and talk to it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The gateway to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArg {
    /// Gateway address.
    #[arg(long, env = "SLUICE_GATEWAY", default_value = "127.0.0.1:7070", value_name = "ADDR", global = true)]
    pub gateway: String,
}

impl GatewayArg {
    pub async fn connect(&self) -> anyhow::Result<sluice_client::Client> {
        Ok(sluice_client::Client::connect(&self.gateway).await?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway, a partition node, the other services and embedded metadata in one process.
    Dev(dev::DevArgs),
    /// Start or stop a local cluster of separate processes (etcd, nodes, gateway, coordinator).
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Produce one record per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print records, one per line (alone, or as a member of a consumer group).
    Consume(consume::ConsumeArgs),
    /// Copy a topic into another exactly once (consume-transform-produce in transactions), until stopped or idle.
    Copy(copy::CopyArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// List and describe transactional ids (state, producer id and epoch, open transaction).
    #[command(subcommand)]
    Txn(txn::TxnCmd),
    /// Create, inspect, pause, restart and delete connectors (Kafka Connect's configs).
    #[command(subcommand)]
    Connect(connect::ConnectCmd),
    /// Streaming SQL: an interactive shell, or statements given with -e or -f.
    Sql(sql::SqlArgs),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `sluice dev` sets up its own logs and telemetry from its settings. Client commands log
    // warnings only unless RUST_LOG asks, and export traces when OTEL_EXPORTER_OTLP_ENDPOINT
    // is set.
    let telemetry = if matches!(cli.command, Command::Dev(_)) {
        sluice_telemetry::Telemetry::default()
    } else {
        let cfg = sluice_telemetry::TelemetryConfig {
            log_filter: "warn".into(),
            ..sluice_telemetry::TelemetryConfig::resolve("", "sluice-cli", 10_000)
        };
        sluice_telemetry::init(&cfg).unwrap_or_else(|e| {
            eprintln!("warning: {e}; continuing without telemetry");
            sluice_telemetry::Telemetry::default()
        })
    };
    let result = match cli.command {
        Command::Dev(a) => dev::run(a).await,
        Command::Cluster(c) => cluster::run(c).await,
        Command::Topic(c) => topic::run(c).await,
        Command::Produce(a) => produce::run(a).await,
        Command::Consume(a) => consume::run(a).await,
        Command::Copy(a) => copy::run(a).await,
        Command::Group(c) => group::run(c).await,
        Command::Txn(c) => txn::run(c).await,
        Command::Connect(c) => connect::run(c).await,
        Command::Sql(a) => sql::run(a).await,
        Command::Bench(c) => bench::run(c).await,
    };
    telemetry.shutdown().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", sentence(&e));
            ExitCode::from(1)
        }
    }
}

/// The error as one sentence: the outermost message and, for transport failures, its causes.
fn sentence(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}
