//! `sluice topic create|add-partitions|alter-config|list|describe|producers|delete`.

use std::collections::HashMap;
use std::process::ExitCode;

use sluice_proto::v1::{ConfigChange, ConfigOp};

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
    /// Change a topic's configuration: the nodes apply it as soon as they see it.
    AlterConfig {
        name: String,
        /// Sets a key, repeatable: retention.ms, retention.bytes, cleanup.policy, ...
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Stops setting a key (its default applies again), repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        /// Only checks the changes and shows the configuration they would give.
        #[arg(long)]
        validate_only: bool,
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
    /// The producers each partition remembers: id, epoch, last sequence, open transaction.
    Producers {
        name: String,
        /// Only these partitions (repeatable); all by default.
        #[arg(long = "partition")]
        partitions: Vec<u32>,
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
        TopicCmd::AlterConfig { name, set, delete, validate_only, gw } => {
            if set.is_empty() && delete.is_empty() {
                anyhow::bail!("nothing to change: give --set KEY=VALUE or --delete KEY");
            }
            let mut changes: Vec<ConfigChange> = delete
                .into_iter()
                .map(|key| ConfigChange { key, op: ConfigOp::Delete as i32, value: String::new() })
                .collect();
            let mut sets: Vec<_> = parse_configs(&set)?.into_iter().collect();
            sets.sort();
            changes.extend(sets.into_iter().map(|(key, value)| ConfigChange { key, op: ConfigOp::Set as i32, value }));
            let t = gw.connect().await?.alter_topic_config(&name, changes, validate_only).await?;
            let mut cfg: Vec<_> = t.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cfg.sort();
            let verb = if validate_only { "would have" } else { "now has" };
            println!("topic '{}' {verb} config: {}", t.name, cfg.join(", "));
        }
        TopicCmd::Producers { name, partitions, gw } => {
            let mut failed = false;
            for p in gw.connect().await?.describe_producers(&name, partitions).await? {
                if let Some(e) = p.error {
                    eprintln!("partition {}: {}", p.partition, e.message);
                    failed = true;
                    continue;
                }
                for s in p.producers {
                    let txn = if s.txn_start_offset < 0 { "-".to_string() } else { s.txn_start_offset.to_string() };
                    println!(
                        "Partition: {}\tProducerId: {}\tEpoch: {}\tLastSequence: {}\tLastWriteMs: {}\tTxnStartOffset: {txn}",
                        p.partition, s.producer_id, s.producer_epoch, s.last_sequence, s.last_timestamp_ms
                    );
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
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
