//! `sluice copy SRC DST --group G --transactional-id T`: an exactly-once copy of one topic
//! into another. A member of group G reads SRC (committed records only) and each poll's
//! records are written to DST in one transaction together with the group's offsets after
//! them: either both land or neither does, so a copier killed at any point and restarted
//! (with the same transactional id, which fences any copy of it still running) goes on from
//! the last committed transaction, and read_committed readers of DST see every source record
//! once, in source order per source partition (with the default `--partition-by source`).
//!
//! Each output record keeps its key, value, headers and timestamp, plus the headers
//! `sluice.source.partition` and `sluice.source.offset` (decimal).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::ClientError;
use sluice_client::consumer::{ConsumerConfig, ConsumerRecord, StartFrom};
use sluice_client::group::{DeliveryMode, GroupConfig, GroupConsumer, TopicPartition};
use sluice_client::producer::{GroupMetadata, Producer, ProducerConfig, ProducerRecord};
use sluice_core::error::codes;
use sluice_proto::v1::IsolationLevel;

use crate::GatewayArg;

/// Header naming the source partition of a copied record.
pub const SOURCE_PARTITION_HEADER: &str = "sluice.source.partition";
/// Header naming the source offset of a copied record.
pub const SOURCE_OFFSET_HEADER: &str = "sluice.source.offset";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartitionBy {
    /// The source partition (modulo DST's partition count): each source partition's order
    /// is kept in one DST partition.
    Source,
    /// The key's hash, as a producer partitions (keyless records: the source partition).
    Key,
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// The topic read.
    src: String,
    /// The topic written (must exist).
    dst: String,
    /// Consumer group whose committed offsets say where the copy stands.
    #[arg(long)]
    group: String,
    /// Transactional id of the copier: a copier started with the same id fences older ones.
    #[arg(long)]
    transactional_id: String,
    /// Copy only records whose key starts with this text (others are skipped, and counted
    /// as consumed).
    #[arg(long, value_name = "PREFIX")]
    filter_key_prefix: Option<String>,
    /// Where each record goes in DST.
    #[arg(long, value_enum, default_value = "source")]
    partition_by: PartitionBy,
    /// Stop once no record arrived for this long (default: run until stopped).
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// At most this many records per transaction (a poll's records go in several when more).
    #[arg(long, default_value_t = 5000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    transaction_records: u64,
    /// Longest time a poll waits for records.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    poll_ms: u64,
    /// How long a transaction may stay open before the coordinator aborts it.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    transaction_timeout_ms: u64,
    #[command(flatten)]
    gw: GatewayArg,
}

/// Totals of a run.
#[derive(Default)]
struct Counts {
    copied: u64,
    skipped: u64,
    transactions: u64,
    aborted: u64,
}

pub async fn run(a: CopyArgs) -> anyhow::Result<ExitCode> {
    let client = a.gw.connect().await?;
    // Fail fast with the clear sentence when a topic is missing.
    client.describe_topic(&a.src).await?;
    let dst_partitions = client.describe_topic(&a.dst).await?.partitions.len() as u32;
    if a.src == a.dst {
        anyhow::bail!("the source and destination topics are the same ('{}')", a.src);
    }
    let cfg = GroupConfig {
        client_id: format!("copy-{}", a.transactional_id),
        // Static: a copier restarted (same transactional id) gets its partitions back at
        // once, not after the session of the one it replaces expires.
        instance_id: Some(format!("copy-{}", a.transactional_id)),
        auto_offset_reset: StartFrom::Earliest,
        delivery: DeliveryMode::AtLeastOnce,
        // Offsets are committed only inside the transactions.
        auto_commit_interval: None,
        fetch: ConsumerConfig { isolation: IsolationLevel::ReadCommitted, ..ConsumerConfig::default() },
        ..GroupConfig::new(&a.group)
    };
    let pcfg = ProducerConfig {
        linger: Duration::from_millis(2),
        transaction_timeout: Duration::from_millis(a.transaction_timeout_ms),
        ..ProducerConfig::default()
    };
    // The producer first: its init fences an older copier and ends what it left open, so
    // the offsets the member starts from are stable.
    let producer = Producer::transactional(client.clone(), &a.transactional_id, pcfg).await?;
    let mut consumer = GroupConsumer::subscribe(client, &[&a.src], cfg).await?;
    let started = Instant::now();
    let mut last_record = Instant::now();
    let mut n = Counts::default();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let result = loop {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_millis(a.poll_ms)) => r,
            _ = &mut stop => break Ok(()),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "poll failed; trying again");
                continue;
            }
            Err(e) => break Err(e),
        };
        if records.is_empty() {
            if a.idle_timeout_ms.is_some_and(|ms| last_record.elapsed() >= Duration::from_millis(ms)) {
                break Ok(());
            }
            continue;
        }
        last_record = Instant::now();
        let mut failed = None;
        for (i, chunk) in records.chunks(a.transaction_records as usize).enumerate() {
            match copy_once(&a, dst_partitions, &producer, &consumer, chunk, &mut n).await {
                Ok(()) => n.transactions += 1,
                Err(e) => {
                    failed = Some((e, i * a.transaction_records as usize));
                    break;
                }
            }
        }
        match failed {
            None => {}
            Some((Failed::Stop(e), _)) => break Err(e),
            Some((Failed::Abort(e), from)) => {
                // Nothing of it is visible: abort, and read the same records again.
                tracing::warn!(error = %e, records = records.len() - from, "transaction failed; aborting and copying again");
                n.aborted += 1;
                if let Err(e) = producer.abort_transaction().await {
                    // Nothing is known to be aborted: reading again could copy twice.
                    break Err(e);
                }
                for ((topic, partition), offset) in first_offsets(&records[from..]) {
                    // A partition taken away meanwhile is read by its next owner from the
                    // committed offset.
                    let _ = consumer.seek(&topic, partition, offset);
                }
            }
        }
    };
    consumer.leave().await;
    producer.close().await;
    eprintln!(
        "copied {} records from '{}' to '{}' ({} skipped) in {:.2} s: {} transactions committed, {} aborted",
        n.copied,
        a.src,
        a.dst,
        n.skipped,
        started.elapsed().as_secs_f64(),
        n.transactions,
        n.aborted
    );
    result?;
    Ok(ExitCode::SUCCESS)
}

/// One transaction: the records (filtered), then the group's offsets after them, then commit.
async fn copy_once(
    a: &CopyArgs,
    dst_partitions: u32,
    producer: &Producer,
    consumer: &GroupConsumer,
    records: &[ConsumerRecord],
    n: &mut Counts,
) -> Result<(), Failed> {
    producer.begin_transaction().await?;
    let mut sent = Vec::with_capacity(records.len());
    let mut skipped = 0u64;
    for r in records {
        if let Some(prefix) = &a.filter_key_prefix
            && !r.key.as_ref().is_some_and(|k| k.starts_with(prefix.as_bytes()))
        {
            skipped += 1;
            continue;
        }
        let mut headers = r.headers.clone();
        headers.push((SOURCE_PARTITION_HEADER.to_string(), Bytes::from(r.partition.to_string())));
        headers.push((SOURCE_OFFSET_HEADER.to_string(), Bytes::from(r.offset.to_string())));
        let partition = match (a.partition_by, &r.key) {
            (PartitionBy::Key, Some(_)) => None,
            _ => Some(r.partition % dst_partitions),
        };
        let out = ProducerRecord {
            topic: a.dst.clone(),
            partition,
            key: r.key.clone(),
            value: r.value.clone(),
            headers,
            timestamp_ms: r.timestamp_ms,
        };
        sent.push(producer.send(out).await?);
    }
    let next: BTreeMap<TopicPartition, i64> =
        records.iter().map(|r| ((r.topic.to_string(), r.partition), r.offset + 1)).collect();
    let group = GroupMetadata {
        group_id: a.group.clone(),
        member_id: consumer.member_id().to_string(),
        generation: consumer.generation(),
    };
    producer.send_offsets_to_transaction(&next, &group).await?;
    // The commit waits for every record; one that failed makes it fail (MustAbort).
    drop(sent);
    let mut tries = 0;
    loop {
        match producer.commit_transaction().await {
            Ok(()) => break,
            Err(e) if matches!(e, ClientError::MustAbort(_)) => return Err(Failed::Abort(e)),
            Err(e) if e.sluice_code() == codes::PRODUCER_FENCED => return Err(Failed::Stop(e)),
            // No answer: the outcome is unknown, and a repeated commit gets it. Aborting
            // instead could copy again what already committed.
            Err(e) if tries < COMMIT_TRIES => {
                tries += 1;
                tracing::warn!(error = %e, tries, "commit outcome unknown; committing again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(Failed::Stop(e)),
        }
    }
    n.copied += records.len() as u64 - skipped;
    n.skipped += skipped;
    Ok(())
}

/// Why a transaction of the copy failed.
enum Failed {
    /// Nothing of it committed: abort it and copy its records again.
    Abort(ClientError),
    /// Fenced (another copier took over), or a commit whose outcome stayed unknown: stop; a
    /// copier started again with the same transactional id settles it.
    Stop(ClientError),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        if e.sluice_code() == codes::PRODUCER_FENCED { Self::Stop(e) } else { Self::Abort(e) }
    }
}

/// How many times a commit whose outcome is unknown is tried again before the copier stops
/// (a restart with the same transactional id then settles it).
const COMMIT_TRIES: u32 = 30;

/// The first offset of each partition among `records`.
fn first_offsets(records: &[ConsumerRecord]) -> BTreeMap<TopicPartition, i64> {
    let mut m = BTreeMap::new();
    for r in records {
        m.entry((r.topic.to_string(), r.partition)).or_insert(r.offset);
    }
    m
}
