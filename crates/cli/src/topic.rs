//! `sluice topic create|list|describe|delete`.

use std::collections::HashMap;
use std::process::ExitCode;

use crate::GatewayArg;

#[derive(clap::Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Copies of each partition (at most the number of partition nodes).
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        /// Topic config, repeatable: retention.ms, retention.bytes, cleanup.policy, ...
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Add partitions to a topic (they cannot be removed; keys move to other partitions).
    AddPartitions {
        name: String,
        /// The new partition count, more than the topic has.
        #[arg(long)]
        count: u32,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// List topics.
    List {
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Show a topic's partitions (leader, replicas, in-sync replicas, leader epoch, offsets
    /// and high watermark) and configuration.
    Describe {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Delete a topic and its records.
    Delete {
        name: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
}

fn parse_configs(configs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    configs
        .iter()
        .map(|c| match c.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => anyhow::bail!("--config '{c}' is not KEY=VALUE"),
        })
        .collect()
}

pub async fn run(c: TopicCmd) -> anyhow::Result<ExitCode> {
    match c {
        TopicCmd::Create { name, partitions, replication_factor, configs, gw } => {
            let config = parse_configs(&configs)?;
            let t = gw.connect().await?.create_topic(&name, partitions, replication_factor, config).await?;
            println!("created topic '{}' with {} partitions", t.name, t.partitions.len());
        }
        TopicCmd::AddPartitions { name, count, gw } => {
            let t = gw.connect().await?.create_partitions(&name, count).await?;
            println!("topic '{}' now has {} partitions", t.name, t.partitions.len());
        }
        TopicCmd::List { gw } => {
            for t in gw.connect().await?.list_topics().await? {
                println!("{}\tpartitions={}\treplication_factor={}", t.name, t.partitions, t.replication_factor);
            }
        }
        TopicCmd::Describe { name, gw } => {
            let t = gw.connect().await?.describe_topic(&name).await?;
            println!(
                "Topic: {}\tTopicId: {}\tPartitions: {}\tReplicationFactor: {}",
                t.name,
                t.topic_id,
                t.partitions.len(),
                t.replication_factor
            );
            let mut cfg: Vec<_> = t.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cfg.sort();
            println!("Config: {}", cfg.join(", "));
            for p in &t.partitions {
                let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                print!(
                    "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tLeaderEpoch: {}\tEarliest: {}\tLatest: {}\tHighWatermark: {}\tLastStable: {}",
                    p.partition,
                    p.leader,
                    ids(&p.replicas),
                    ids(&p.isr),
                    p.leader_epoch,
                    p.log_start_offset,
                    p.log_end_offset,
                    p.high_watermark,
                    p.last_stable_offset
                );
                match &p.error {
                    Some(e) => println!("\tError: {}", e.message),
                    None => println!(),
                }
            }
        }
        TopicCmd::Delete { name, gw } => {
            gw.connect().await?.delete_topic(&name).await?;
            println!("deleted topic '{name}'");
        }
    }
    Ok(ExitCode::SUCCESS)
}
