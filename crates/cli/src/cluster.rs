//! `sluice cluster up|down|nodes|elect-leaders`: a local cluster of separate processes on
//! loopback, and the state of a cluster's nodes and leaders.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_launcher::{Cluster, ClusterSpec};

use crate::GatewayArg;

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Start etcd, N partition nodes, gateways (each with a Kafka listener), group
    /// coordinators and connect runners; print the gateways.
    Up {
        /// Partition nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Group coordinators to start (one is active, the others take over when it dies).
        #[arg(long, default_value_t = 2)]
        coordinators: u32,
        /// Gateways to start; clients given the printed list move to another when one dies.
        #[arg(long, default_value_t = 1)]
        gateways: u32,
        /// Connect runners to start (connectors' tasks are spread over them).
        #[arg(long, default_value_t = 1)]
        runners: u32,
        /// Stream processors to start (streaming SQL's persistent queries are shared by them).
        #[arg(long, default_value_t = 1)]
        processors: u32,
        /// Where data, logs and cluster.json go.
        #[arg(long, default_value = ".sluice/cluster", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Stop every process of the cluster in DIR.
    Down {
        #[arg(long, default_value = ".sluice/cluster", value_name = "DIR")]
        dir: PathBuf,
    },
    /// List the partition nodes: alive or down, partitions led, held and out of sync.
    Nodes {
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Move leadership back to each partition's preferred replica where it is alive and in
    /// sync (nodes also do this on their own every replication.leader_rebalance_interval_ms).
    ElectLeaders {
        /// Only this topic (default: every topic).
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        gw: GatewayArg,
    },
}

pub async fn run(c: ClusterCmd) -> anyhow::Result<ExitCode> {
    match c {
        ClusterCmd::Up { nodes, coordinators, gateways, runners, processors, dir } => {
            if nodes == 0 {
                anyhow::bail!("a cluster needs at least one partition node (--nodes)");
            }
            if gateways == 0 {
                anyhow::bail!("a cluster needs at least one gateway (--gateways)");
            }
            if dir.join("cluster.json").exists() {
                anyhow::bail!(
                    "a cluster is already recorded in {}; run sluice cluster down --dir {} first",
                    dir.display(),
                    dir.display()
                );
            }
            let spec = ClusterSpec { nodes, coordinators, gateways, runners, processors, ..ClusterSpec::new(&dir) };
            let cluster = Cluster::start(spec, false).await?;
            eprintln!(
                "cluster up: {} processes, described in {}",
                cluster.manifest.processes.len(),
                cluster.manifest_path().display()
            );
            eprintln!("Kafka listeners (bootstrap.servers): {}", cluster.kafka_brokers());
            println!("{}", cluster.gateways());
        }
        ClusterCmd::Down { dir } => {
            let n = Cluster::down(&dir).await?;
            eprintln!("cluster down: stopped {n} processes");
        }
        ClusterCmd::Nodes { gw } => {
            for n in gw.connect().await?.list_nodes().await? {
                println!(
                    "Node: {}\tState: {}\tAddress: {}\tLeader: {}\tReplicas: {}\tOutOfSync: {}",
                    n.id,
                    if n.alive { "alive" } else { "down" },
                    if n.addr.is_empty() { "-" } else { &n.addr },
                    n.leader_partitions,
                    n.replica_partitions,
                    n.out_of_sync_partitions
                );
            }
        }
        ClusterCmd::ElectLeaders { topic, gw } => {
            let mut failed = 0;
            for r in gw.connect().await?.elect_leaders(topic.as_deref()).await? {
                match r.error {
                    Some(e) => {
                        failed += 1;
                        println!("{}-{}\tLeader: {}\tnot moved: {}", r.topic, r.partition, r.leader, e.message)
                    }
                    None => {
                        println!("{}-{}\tLeader: {}\tLeaderEpoch: {}", r.topic, r.partition, r.leader, r.leader_epoch)
                    }
                }
            }
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
