//! `sluice cluster up|down`: a local cluster of separate processes on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_testkit::{Cluster, ClusterSpec};

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Start etcd, N partition nodes, a gateway and a group coordinator; print the gateway.
    Up {
        /// Partition nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Group coordinators to start.
        #[arg(long, default_value_t = 1)]
        coordinators: u32,
        /// Where data, logs and cluster.json go.
        #[arg(long, default_value = ".sluice/cluster", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Stop every process of the cluster in DIR.
    Down {
        #[arg(long, default_value = ".sluice/cluster", value_name = "DIR")]
        dir: PathBuf,
    },
}

pub async fn run(c: ClusterCmd) -> anyhow::Result<ExitCode> {
    match c {
        ClusterCmd::Up { nodes, coordinators, dir } => {
            if nodes == 0 {
                anyhow::bail!("a cluster needs at least one partition node (--nodes)");
            }
            if dir.join("cluster.json").exists() {
                anyhow::bail!(
                    "a cluster is already recorded in {}; run sluice cluster down --dir {} first",
                    dir.display(),
                    dir.display()
                );
            }
            let spec = ClusterSpec { nodes, coordinators, ..ClusterSpec::new(&dir) };
            let cluster = Cluster::start(spec, false).await?;
            eprintln!(
                "cluster up: {} processes, described in {}",
                cluster.manifest.processes.len(),
                cluster.manifest_path().display()
            );
            println!("{}", cluster.gateway());
        }
        ClusterCmd::Down { dir } => {
            let n = Cluster::down(&dir).await?;
            eprintln!("cluster down: stopped {n} processes");
        }
    }
    Ok(ExitCode::SUCCESS)
}
