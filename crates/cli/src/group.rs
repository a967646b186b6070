//! `sluice group list|describe|reset-offsets|delete`.

use std::process::ExitCode;

use sluice_proto::v1::{OffsetSpec, TopicPartitions};

use crate::GatewayArg;

#[derive(clap::Subcommand)]
pub enum GroupCmd {
    /// List consumer groups: state and member count.
    List {
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Show a group's members and assignment, and per partition the committed offset, the
    /// log end (high watermark) and the lag.
    Describe {
        group: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Move a group's committed offsets for a topic (refused while the group has members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// Only this partition (repeatable; default: all).
        #[arg(long = "partition", value_name = "P")]
        partitions: Vec<u32>,
        #[arg(long, group = "target")]
        to_earliest: bool,
        #[arg(long, group = "target")]
        to_latest: bool,
        /// An offset within the log (between its start and its end).
        #[arg(long, group = "target", value_name = "N")]
        to_offset: Option<i64>,
        /// The first offset at or after this time (ms since the epoch); the log end if none.
        #[arg(long, group = "target", value_name = "MS")]
        to_timestamp: Option<i64>,
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Delete a group and its committed offsets (refused while the group has members).
    Delete {
        group: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
}

fn tps(list: &[TopicPartitions]) -> String {
    let s: Vec<String> =
        list.iter().flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic))).collect();
    if s.is_empty() { "-".into() } else { s.join(",") }
}

fn num(n: i64) -> String {
    if n < 0 { "-".into() } else { n.to_string() }
}

pub async fn run(c: GroupCmd) -> anyhow::Result<ExitCode> {
    match c {
        GroupCmd::List { gw } => {
            for g in gw.connect().await?.list_groups().await? {
                println!("Group: {}\tState: {}\tMembers: {}", g.group_id, g.state, g.members);
            }
        }
        GroupCmd::Describe { group, gw } => {
            let d = gw.connect().await?.describe_group(&group).await?;
            println!(
                "Group: {}\tState: {}\tAssignor: {}\tGeneration: {}\tCoordinator: {} (epoch {})",
                d.group_id, d.state, d.assignor, d.generation, d.coordinator, d.coordinator_epoch
            );
            for m in &d.members {
                println!(
                    "Member: {}\tInstance: {}\tClient: {}\tConnected: {}\tTopics: {}\tAssigned: {}\tRevoking: {}",
                    m.member_id,
                    if m.instance_id.is_empty() { "-" } else { &m.instance_id },
                    m.client_id,
                    m.connected,
                    m.topics.join(","),
                    tps(&m.assigned),
                    tps(&m.revoking)
                );
            }
            for p in &d.partitions {
                println!(
                    "Partition: {}-{}\tCommitted: {}\tLogEnd: {}\tLag: {}\tMember: {}",
                    p.topic,
                    p.partition,
                    num(p.committed),
                    num(p.log_end),
                    num(p.lag),
                    if p.member_id.is_empty() { "-" } else { &p.member_id }
                );
            }
        }
        GroupCmd::ResetOffsets { group, topic, partitions, to_earliest, to_latest, to_offset, to_timestamp, gw } => {
            let (spec, ts) = match (to_earliest, to_latest, to_timestamp) {
                (true, _, _) => (OffsetSpec::Earliest, 0),
                (_, true, _) => (OffsetSpec::Latest, 0),
                (_, _, Some(ms)) => (OffsetSpec::Timestamp, ms),
                _ if to_offset.is_some() => (OffsetSpec::Latest, 0),
                _ => anyhow::bail!("say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp MS"),
            };
            let client = gw.connect().await?;
            for o in client.reset_offsets(&group, &topic, partitions, spec, ts, to_offset).await? {
                println!("Partition: {}-{}\tCommitted: {}", o.topic, o.partition, o.offset);
            }
        }
        GroupCmd::Delete { group, gw } => {
            gw.connect().await?.delete_group(&group).await?;
            eprintln!("deleted group '{group}'");
        }
    }
    Ok(ExitCode::SUCCESS)
}
