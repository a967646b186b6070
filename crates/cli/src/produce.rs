//! `sluice produce`: one record per line of standard input, with an optional delivery report.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_proto::v1::Acks;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::GatewayArg;

#[derive(clap::Args)]
pub struct ProduceArgs {
    topic: String,
    /// Text before the first occurrence of SEP is the key, the rest the value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// 0 (no acknowledgement), 1 (leader) or all (every in-sync replica, durable).
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: Acks,
    /// Print PARTITION<TAB>OFFSET<TAB>VALUE for every acknowledged record.
    #[arg(long)]
    print_acks: bool,
    /// Compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Give up on a record after this many milliseconds of retries.
    #[arg(long, default_value_t = 60_000)]
    delivery_timeout_ms: u64,
    /// Write each record once and in order whatever the retries (with acks=all; Kafka's
    /// enable.idempotence).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    idempotence: bool,
    /// Send the records in transactions of this transactional id (Kafka's transactional.id):
    /// read_committed consumers see only committed ones; an older producer with the same id is
    /// fenced. Needs --acks all.
    #[arg(long, value_name = "ID")]
    transactional_id: Option<String>,
    /// With --transactional-id: commit a transaction every N records (default 0: one
    /// transaction for the whole input).
    #[arg(long, requires = "transactional_id", value_name = "N")]
    transaction_records: Option<u64>,
    #[command(flatten)]
    gw: GatewayArg,
}

pub fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "0" | "none" => Ok(Acks::None),
        "1" | "leader" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        _ => Err(format!("'{s}' is not an acks level (0, 1 or all)")),
    }
}

pub async fn run(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    // When traces are exported, the records carry this span's context to their consumers.
    let span = tracing::info_span!("send", otel.kind = "producer", messaging.destination.name = %a.topic);
    tracing::Instrument::instrument(produce(a), span).await
}

async fn produce(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    if a.transactional_id.is_some() {
        if !matches!(a.acks, Acks::All) {
            anyhow::bail!("--transactional-id needs --acks all");
        }
        if !a.idempotence {
            anyhow::bail!("--transactional-id needs idempotence (drop --idempotence false)");
        }
    }
    let client = a.gw.connect().await?;
    // Fail fast with the clear sentence when the topic is missing.
    client.describe_topic(&a.topic).await?;
    let compression = a.compression.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let cfg = ProducerConfig {
        acks: a.acks,
        compression,
        delivery_timeout: Duration::from_millis(a.delivery_timeout_ms),
        idempotence: a.idempotence,
        ..Default::default()
    };
    let producer = match &a.transactional_id {
        Some(id) => Producer::transactional(client, id, cfg).await?,
        None => Producer::new(client, cfg),
    };
    let transactional = a.transactional_id.is_some();
    // 0: one transaction for the whole input.
    let per_transaction = a.transaction_records.unwrap_or(0);
    let started = Instant::now();

    // Reports are written in input order by one task, so output stays tidy and bounded.
    let (tx, mut rx) = mpsc::channel::<(Bytes, sluice_client::producer::DeliveryFuture)>(16_384);
    let print_acks = a.print_acks;
    let reporter = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, 0u64);
        let mut out = std::io::BufWriter::new(std::io::stdout());
        while let Some((value, fut)) = rx.recv().await {
            let result = match fut.await {
                Ok(r) => r,
                Err(_) => Err(sluice_client::ClientError::Invalid("the producer stopped".into())),
            };
            match result {
                Ok(d) => {
                    ok += 1;
                    if print_acks {
                        let _ = writeln!(out, "{}\t{}\t{}", d.partition, d.offset, String::from_utf8_lossy(&value));
                        if rx.is_empty() {
                            let _ = out.flush();
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    let _ = out.flush();
                    eprintln!("error: record '{}' was not acknowledged: {e}", String::from_utf8_lossy(&value));
                }
            }
        }
        let _ = out.flush();
        (ok, failed)
    });

    // Lines are bytes, not necessarily UTF-8; a trailing "\r" (CRLF input) is dropped.
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    let sep = a.key_separator.as_deref().map(str::as_bytes).filter(|s| !s.is_empty());
    // Transactional: records in the open transaction (begun lazily, before its first record, so
    // that no empty transaction is committed), transactions committed, and whether a commit failed.
    let (mut open, mut committed, mut commit_failed) = (0u64, 0u64, false);
    while let Some(mut line) = input.next_segment().await? {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = Bytes::from(line);
        let (key, value) =
            match sep.and_then(|sep| line.windows(sep.len()).position(|w| w == sep).map(|at| (at, sep.len()))) {
                Some((at, n)) => (Some(line.slice(..at)), line.slice(at + n..)),
                None => (None, line),
            };
        let rec = ProducerRecord {
            topic: a.topic.clone(),
            partition: a.partition,
            key,
            value: Some(value.clone()),
            ..Default::default()
        };
        if transactional && open == 0 {
            producer.begin_transaction().await?;
        }
        let fut = producer.send(rec).await?;
        if tx.send((value, fut)).await.is_err() {
            break;
        }
        if transactional {
            open += 1;
            if per_transaction > 0 && open >= per_transaction {
                if !commit(&producer, open).await {
                    commit_failed = true;
                    break;
                }
                committed += 1;
                open = 0;
            }
        }
    }
    if transactional && open > 0 && !commit_failed {
        if commit(&producer, open).await {
            committed += 1;
        } else {
            commit_failed = true;
        }
    }
    producer.close().await;
    drop(tx);
    let (ok, failed) = reporter.await?;
    let transactions = if transactional {
        format!(", {committed} transaction{} committed", if committed == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    eprintln!(
        "produced {ok} records to '{}' ({failed} failed) in {:.2} s{transactions}",
        a.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 && !commit_failed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Commits the open transaction of `records` records. On failure says so on stderr (its
/// records are not committed), aborts it and returns false.
async fn commit(producer: &Producer, records: u64) -> bool {
    // A commit without an answer is committed again (the coordinator answers a repeated
    // commit as it did the first): aborting instead could throw away what committed.
    let mut last = None;
    for _ in 0..3 {
        match producer.commit_transaction().await {
            Ok(()) => return true,
            Err(e @ sluice_client::ClientError::MustAbort(_)) => {
                eprintln!("error: transaction of {records} records not committed: {e}");
                if let Err(e) = producer.abort_transaction().await {
                    tracing::debug!(error = %e, "aborting after a refused commit failed too");
                }
                return false;
            }
            Err(e) if e.sluice_code() == sluice_core::error::codes::PRODUCER_FENCED => {
                eprintln!("error: transaction of {records} records not committed: {e}");
                return false;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        eprintln!("error: transaction of {records} records: commit outcome unknown: {e}");
    }
    false
}
