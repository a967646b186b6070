//! `sluice txn list|describe`.

use std::process::ExitCode;

use sluice_core::settings::now_ms;
use sluice_proto::v1::{TopicPartitions, TransactionState};

use crate::GatewayArg;

#[derive(clap::Subcommand)]
pub enum TxnCmd {
    /// List transactional ids: state, producer id and epoch, and the open transaction's
    /// partitions and age.
    List {
        #[command(flatten)]
        gw: GatewayArg,
    },
    /// Show a transactional id: state, producer id and epoch, transaction timeout, and the open
    /// transaction (partitions, groups with offsets in it, how long it has been open).
    Describe {
        transactional_id: String,
        #[command(flatten)]
        gw: GatewayArg,
    },
}

/// The state's name (Empty, Ongoing, PrepareCommit, ...).
fn state(s: i32) -> String {
    match TransactionState::try_from(s) {
        Ok(TransactionState::Unspecified) => "Unspecified".into(),
        Ok(TransactionState::Empty) => "Empty".into(),
        Ok(TransactionState::Ongoing) => "Ongoing".into(),
        Ok(TransactionState::PrepareCommit) => "PrepareCommit".into(),
        Ok(TransactionState::PrepareAbort) => "PrepareAbort".into(),
        Ok(TransactionState::CompleteCommit) => "CompleteCommit".into(),
        Ok(TransactionState::CompleteAbort) => "CompleteAbort".into(),
        Err(_) => format!("Unknown({s})"),
    }
}

fn tps(list: &[TopicPartitions]) -> String {
    let s: Vec<String> =
        list.iter().flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic))).collect();
    if s.is_empty() { "-".into() } else { s.join(",") }
}

/// How long the open transaction has been open, in seconds with one decimal; "-" when none is.
fn age(start_time_ms: i64, now: i64) -> String {
    if start_time_ms <= 0 {
        return "-".into();
    }
    format!("{:.1}s", now.saturating_sub(start_time_ms).max(0) as f64 / 1000.0)
}

pub async fn run(c: TxnCmd) -> anyhow::Result<ExitCode> {
    match c {
        TxnCmd::List { gw } => {
            let mut list = gw.connect().await?.list_transactions().await?;
            list.sort_by_key(|t| t.transactional_id.clone());
            let now = now_ms();
            println!("TRANSACTIONAL-ID\tSTATE\tPRODUCER-ID\tEPOCH\tPARTITIONS\tAGE");
            for t in &list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    t.transactional_id,
                    state(t.state),
                    t.producer_id,
                    t.producer_epoch,
                    tps(&t.partitions),
                    age(t.start_time_ms, now)
                );
            }
        }
        TxnCmd::Describe { transactional_id, gw } => {
            let d = gw.connect().await?.describe_transaction(&transactional_id).await?;
            let now = now_ms();
            println!("Transactional id: {}", d.transactional_id);
            println!("State: {}", state(d.state));
            println!("Producer id: {}", d.producer_id);
            println!("Epoch: {}", d.producer_epoch);
            println!("Timeout ms: {}", d.transaction_timeout_ms);
            println!("Partitions: {}", tps(&d.partitions));
            let groups = if d.groups.is_empty() { "-".to_string() } else { d.groups.join(",") };
            println!("Groups with offsets: {groups}");
            println!("Open for: {}", age(d.start_time_ms, now));
            println!("Last update ms: {}", d.last_update_ms);
        }
    }
    Ok(ExitCode::SUCCESS)
}
