//! `sluice bench produce|consume|e2e`: throughput and latency, in the spirit of
//! kafka-producer-perf-test and the OpenMessaging Benchmark.
//!
//! `produce` builds RecordBatch v2 itself (as the fast client does) and pipelines them on one
//! produce stream; latency is from building a batch to its acknowledgement, for every record
//! in it. `consume` reads everything from the earliest offset and counts records from batch
//! headers. `e2e` produces at `--rate` while a consumer reads from the end, and measures each
//! record from its timestamp to its arrival. MB means 2^20 bytes.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_client::Client;
use sluice_core::batch::{BatchBuilder, BatchHeader};
use sluice_core::compression::Compression;
use sluice_proto::v1::fetch_request::Kind;
use sluice_proto::v1::{Acks, FetchCredit, FetchRequest, FetchStart, OffsetSpec, PartitionBatches, ProduceRequest};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::GatewayArg;

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "sluice-bench")]
    pub(crate) topic: String,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 8)]
    pub(crate) partitions: u32,
    /// Replication factor of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    pub(crate) replication_factor: u32,
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub(crate) record_size: usize,
    /// Records to send or read (default 1,000,000 unless --duration is given).
    #[arg(long, value_name = "N")]
    pub(crate) records: Option<u64>,
    /// Run for this long instead of a record count.
    #[arg(long, value_name = "SECS")]
    pub(crate) duration: Option<u64>,
    /// Records per second to aim at (default: as fast as possible; e2e default 20,000).
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    pub(crate) rate: Option<u64>,
    #[arg(long, default_value = "1", value_parser = crate::produce::parse_acks)]
    pub(crate) acks: Acks,
    /// Bytes per batch.
    #[arg(long, default_value_t = 256 * 1024)]
    pub(crate) batch_bytes: usize,
    /// Produce requests outstanding at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) in_flight: usize,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub(crate) compression: String,
    /// produce: send as an idempotent producer (a producer id from the coordinator, every
    /// batch numbered per partition and checked by its leader), as the Rust client does by
    /// default; compare with a run without it to see what idempotence costs.
    #[arg(long)]
    pub(crate) idempotent: bool,
    /// produce: send through a transactional producer (the Rust client's), committing every
    /// N records (acks=all); the latency reported is each transaction's, begin to commit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) transaction_records: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// consume: read as a member of this consumer group (decoding records, committing
    /// offsets every second) instead of a raw fetch of every partition.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
    /// produce, consume: go through this Kafka listener (host:port of a gateway's) instead of
    /// gRPC, with the same batches; the topic is still created over gRPC.
    #[arg(long, value_name = "ADDR")]
    pub(crate) kafka: Option<String>,
    #[command(flatten)]
    pub(crate) gw: GatewayArg,
}

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Produce as fast as possible (or at --rate).
    Produce(BenchArgs),
    /// Read what an earlier produce left, from the earliest offset.
    Consume(BenchArgs),
    /// Produce at --rate and consume at the same time; latency is producer to consumer.
    E2e(BenchArgs),
    /// Rows per second through a persistent SQL query (needs a stream processor).
    Sql(crate::bench_sql::SqlBenchArgs),
}

pub(crate) struct Stats {
    pub(crate) mode: &'static str,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) hist: Histogram<u64>,
    pub(crate) failed: u64,
}

impl Stats {
    fn print(&self, a: &BenchArgs) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        let mb = self.bytes as f64 / (1024.0 * 1024.0) / secs;
        if a.json {
            let v = serde_json::json!({
                "mode": self.mode,
                "records": self.records,
                "failed": self.failed,
                "bytes": self.bytes,
                "seconds": secs,
                "records_per_sec": self.records as f64 / secs,
                "mb_per_sec": mb,
                "p50_ms": q(0.5),
                "p99_ms": q(0.99),
                "p999_ms": q(0.999),
                "max_ms": self.hist.max() as f64 / 1000.0,
                "record_size": a.record_size,
                "partitions": a.partitions,
                "replication_factor": a.replication_factor,
                "acks": format!("{:?}", a.acks),
                "batch_bytes": a.batch_bytes,
                "in_flight": a.in_flight,
            });
            println!("{v}");
        } else {
            println!(
                "{}: {} records ({} failed), {:.1} MB in {:.2} s: {:.0} records/s, {:.1} MB/s",
                self.mode,
                self.records,
                self.failed,
                self.bytes as f64 / 1048576.0,
                secs,
                self.records as f64 / secs,
                mb
            );
            if !self.hist.is_empty() {
                println!(
                    "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    q(0.5),
                    q(0.99),
                    q(0.999),
                    self.hist.max() as f64 / 1000.0
                );
            }
        }
    }
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds up to an hour, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// A progress line on stderr, redrawn twice a second.
pub(crate) fn progress(
    label: &'static str,
    done: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    target: Option<u64>,
    dur: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = done.load(Ordering::Relaxed);
            let frac = match (target, dur) {
                (Some(t), _) if t > 0 => n as f64 / t as f64,
                (_, Some(d)) => start.elapsed().as_secs_f64() / d.as_secs_f64(),
                _ => 0.0,
            }
            .min(1.0);
            let filled = (frac * 30.0) as usize;
            let mb = bytes.load(Ordering::Relaxed) as f64 / 1048576.0 / start.elapsed().as_secs_f64();
            eprint!(
                "\r{label} [{}{}] {:>3.0}% {n} records {mb:.1} MB/s   ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                frac * 100.0
            );
            let _ = std::io::stderr().flush();
        }
    })
}

/// A producer id, waiting (up to 30 s) for a coordinator that is still taking up its role.
async fn producer_id(client: &Client) -> anyhow::Result<(i64, i16)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.init_producer_id().await {
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other?),
        }
    }
}

async fn ensure_topic(client: &Client, a: &BenchArgs) -> anyhow::Result<u32> {
    match client.describe_topic(&a.topic).await {
        Ok(t) => Ok(t.partitions.len() as u32),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            let t = client.create_topic(&a.topic, a.partitions, a.replication_factor, HashMap::new()).await?;
            let n = t.partitions.len() as u32;
            wait_for_leaders(client, &a.topic, n).await?;
            Ok(n)
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until every partition of a new topic has a leader serving it (its offsets answer),
/// so that the clock does not count leader elections.
async fn wait_for_leaders(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = client.list_offsets(topic, (0..partitions).collect(), OffsetSpec::Latest, 0).await;
        match offsets {
            Ok(o) if o.len() == partitions as usize && o.iter().all(|p| p.log_end_offset >= 0) => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => anyhow::bail!("the partitions of '{topic}' still have no leader after 30 s"),
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn run(c: BenchCmd) -> anyhow::Result<ExitCode> {
    let (a, stats) = match c {
        BenchCmd::Produce(a) => {
            let s = produce(&a, a.rate, "produce").await?;
            (a, s)
        }
        BenchCmd::Consume(a) => {
            let s = consume(&a).await?;
            (a, s)
        }
        BenchCmd::E2e(a) => {
            let s = e2e(&a).await?;
            (a, s)
        }
        BenchCmd::Sql(a) => return crate::bench_sql::run(a).await,
    };
    eprintln!();
    stats.print(&a);
    Ok(if stats.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn limits(a: &BenchArgs) -> (Option<u64>, Option<Duration>) {
    let dur = a.duration.map(Duration::from_secs);
    let records = a.records.or(if dur.is_none() { Some(1_000_000) } else { None });
    (records, dur)
}

/// The batches a produce bench sends: random values of `--record-size` bytes, about
/// `--batch-bytes` per batch, partitions in turn, numbered per partition when idempotent.
pub(crate) struct Batches {
    pub(crate) per_batch: u64,
    payload: Vec<u8>,
    compression: Compression,
    producer: Option<(i64, i16)>,
    sequences: Vec<i32>,
    partition: u32,
}

impl Batches {
    pub(crate) fn new(a: &BenchArgs, partitions: u32, producer: Option<(i64, i16)>) -> anyhow::Result<Self> {
        Ok(Self {
            per_batch: (a.batch_bytes / (a.record_size + 20)).max(1) as u64,
            payload: (0..a.record_size).map(|_| rand::random::<u8>()).collect(),
            compression: a.compression.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            producer,
            sequences: vec![0; partitions as usize],
            partition: 0,
        })
    }

    /// The next batch of `n` records: its partition, `n` and its bytes.
    pub(crate) fn next(&mut self, n: u64) -> anyhow::Result<(u32, u64, Bytes)> {
        let partition = self.partition;
        self.partition = (partition + 1) % self.sequences.len() as u32;
        let now = sluice_core::settings::now_ms();
        let mut b = BatchBuilder::new(self.compression);
        if let Some((pid, epoch)) = self.producer {
            let seq = &mut self.sequences[partition as usize];
            b.set_producer(pid, epoch, *seq);
            *seq = sluice_core::batch::add_sequence(*seq, n as i32);
        }
        for _ in 0..n {
            b.push(now, None, Some(&self.payload), &[]);
        }
        Ok((partition, n, b.build()?))
    }
}

async fn produce(a: &BenchArgs, rate: Option<u64>, mode: &'static str) -> anyhow::Result<Stats> {
    if let Some(n) = a.transaction_records {
        return produce_transactional(a, n).await;
    }
    let client = a.gw.connect().await?;
    let partitions = ensure_topic(&client, a).await?;
    let (target, dur) = limits(a);
    let producer = match a.idempotent {
        true => Some(producer_id(&client).await?),
        false => None,
    };
    let mut batches = Batches::new(a, partitions, producer)?;
    if let Some(addr) = &a.kafka {
        return crate::bench_kafka::produce(a, addr, batches, mode).await;
    }

    let (tx, rx) = mpsc::channel::<ProduceRequest>(a.in_flight.max(1) * 2);
    let mut responses = client.broker().produce(ReceiverStream::new(rx)).await?.into_inner();
    let window = Arc::new(Semaphore::new(a.in_flight.max(1)));
    let sent_at: Arc<Mutex<HashMap<u64, (Instant, u64)>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress(mode, done.clone(), bytes.clone(), target, dur);

    let reader = {
        let (window, sent_at, done, bytes) = (window.clone(), sent_at.clone(), done.clone(), bytes.clone());
        let record_size = a.record_size as u64;
        let mut hist = histogram()?;
        tokio::spawn(async move {
            let mut failed = 0u64;
            let mut first_error = None;
            while let Ok(Some(resp)) = responses.message().await {
                let Some((t0, n)) = sent_at.lock().await.remove(&resp.id) else { continue };
                let lat = t0.elapsed().as_micros() as u64;
                let err = resp.error.or_else(|| resp.partitions.iter().find_map(|p| p.error.clone()));
                match err {
                    Some(e) => {
                        failed += n;
                        first_error.get_or_insert(e.message);
                    }
                    None => {
                        let _ = hist.record_n(lat.max(1), n);
                        done.fetch_add(n, Ordering::Relaxed);
                        bytes.fetch_add(n * record_size, Ordering::Relaxed);
                    }
                }
                window.add_permits(1);
            }
            // No more answers: whoever waits for room stops waiting.
            window.close();
            (hist, failed, first_error)
        })
    };

    let start = Instant::now();
    let mut sent = 0u64;
    let mut id = 0u64;
    while target.is_none_or(|t| sent < t) && dur.is_none_or(|d| start.elapsed() < d) {
        let want = target.map_or(batches.per_batch, |t| batches.per_batch.min(t - sent));
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / r as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        // Closed: the answers stopped (the stream ended).
        let Ok(permit) = window.acquire().await else { break };
        permit.forget();
        let (partition, n, data) = batches.next(want)?;
        id += 1;
        let req = ProduceRequest {
            id,
            topic: a.topic.clone(),
            acks: a.acks as i32,
            records: Vec::new(),
            batches: vec![PartitionBatches { partition, data }],
            timeout_ms: 30_000,
            ..Default::default()
        };
        sent_at.lock().await.insert(id, (Instant::now(), n));
        if tx.send(req).await.is_err() {
            break;
        }
        sent += n;
    }
    produce_stats(Run { mode, start, done, bytes, bar }, &window, a.in_flight, tx, reader).await
}

/// A run's clock and counters (what its progress line shows).
pub(crate) struct Run {
    pub(crate) mode: &'static str,
    pub(crate) start: Instant,
    pub(crate) done: Arc<AtomicU64>,
    pub(crate) bytes: Arc<AtomicU64>,
    pub(crate) bar: tokio::task::JoinHandle<()>,
}

/// What a produce run's reader gathered from the answers: latencies, records failed, the
/// first error.
pub(crate) type Answers = tokio::task::JoinHandle<(Histogram<u64>, u64, Option<String>)>;

/// Waits for every answer of a produce run (its `in_flight` permits back), then closes its
/// sending side `tx` and makes the stats.
pub(crate) async fn produce_stats<T>(
    run: Run,
    window: &Semaphore,
    in_flight: usize,
    tx: T,
    reader: Answers,
) -> anyhow::Result<Stats> {
    let _ = window.acquire_many(in_flight.max(1) as u32).await;
    let elapsed = run.start.elapsed();
    drop(tx);
    let (hist, failed, first_error) = reader.await?;
    run.bar.abort();
    if let Some(e) = first_error {
        eprintln!("\nerror: {failed} records failed; first error: {e}");
    }
    Ok(Stats {
        mode: run.mode,
        records: run.done.load(Ordering::Relaxed),
        bytes: run.bytes.load(Ordering::Relaxed),
        elapsed,
        hist,
        failed,
    })
}

/// Transactions of `per_txn` records each through the client's transactional producer,
/// records spread over the partitions in turn.
async fn produce_transactional(a: &BenchArgs, per_txn: u64) -> anyhow::Result<Stats> {
    use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
    let client = a.gw.connect().await?;
    let partitions = ensure_topic(&client, a).await?;
    let (target, dur) = limits(a);
    let cfg = ProducerConfig {
        acks: Acks::All,
        batch_bytes: a.batch_bytes,
        compression: a.compression.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        max_in_flight: a.in_flight.max(1),
        ..ProducerConfig::default()
    };
    let id = format!("bench-{}-{}", a.topic, rand::random::<u32>());
    let producer = Producer::transactional(client, &id, cfg).await?;
    let payload = bytes::Bytes::from((0..a.record_size).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress("produce-transactional", done.clone(), bytes.clone(), target, dur);
    let mut hist = histogram()?;
    let (mut sent, mut failed, mut partition) = (0u64, 0u64, 0u32);
    let start = Instant::now();
    while target.is_none_or(|t| sent < t) && dur.is_none_or(|d| start.elapsed() < d) {
        let n = target.map_or(per_txn, |t| per_txn.min(t - sent));
        let t0 = Instant::now();
        producer.begin_transaction().await?;
        let mut futs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let r = ProducerRecord {
                topic: a.topic.clone(),
                partition: Some(partition),
                value: Some(payload.clone()),
                ..Default::default()
            };
            futs.push(producer.send(r).await?);
            partition = (partition + 1) % partitions;
        }
        sent += n;
        match producer.commit_transaction().await {
            Ok(()) => {
                let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                done.fetch_add(n, Ordering::Relaxed);
                bytes.fetch_add(n * a.record_size as u64, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("\nerror: a transaction of {n} records failed: {e}");
                failed += n;
                producer.abort_transaction().await?;
            }
        }
        drop(futs);
    }
    let elapsed = start.elapsed();
    bar.abort();
    producer.close().await;
    Ok(Stats {
        mode: "produce-transactional",
        records: done.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        elapsed,
        hist,
        failed,
    })
}

async fn consume(a: &BenchArgs) -> anyhow::Result<Stats> {
    if let Some(group) = &a.group {
        return consume_group(a, group).await;
    }
    let client = a.gw.connect().await?;
    let topic = client.describe_topic(&a.topic).await?;
    if let Some(addr) = &a.kafka {
        return crate::bench_kafka::consume(a, addr, topic.partitions.len() as u32).await;
    }
    let (target, dur) = limits(a);
    let (tx, rx) = mpsc::channel(16);
    let credit = 16u64 << 20;
    let start_msg = FetchStart { topic: a.topic.clone(), max_bytes: credit, ..Default::default() };
    tx.send(FetchRequest { kind: Some(Kind::Start(start_msg)) }).await?;
    let mut stream = client.broker().fetch(ReceiverStream::new(rx)).await?.into_inner();
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress("consume", done.clone(), bytes.clone(), target, dur);
    let start = Instant::now();
    let mut last_data = Instant::now();
    loop {
        if target.is_some_and(|t| done.load(Ordering::Relaxed) >= t) || dur.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let msg = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Err(_) => break,
            Ok(m) => m?,
        };
        let Some(resp) = msg else { break };
        if let Some(e) = resp.error {
            anyhow::bail!("{}", e.message);
        }
        let len = resp.batches.len() as u64;
        let mut rest: Bytes = resp.batches;
        let mut n = 0u64;
        while let Ok(h) = BatchHeader::parse(&rest) {
            if h.total_len() > rest.len() {
                break;
            }
            n += h.record_count as u64;
            let _ = rest.split_to(h.total_len());
        }
        done.fetch_add(n, Ordering::Relaxed);
        bytes.fetch_add(len, Ordering::Relaxed);
        last_data = Instant::now();
        tx.send(FetchRequest { kind: Some(Kind::Credit(FetchCredit { bytes: len })) }).await?;
    }
    let elapsed = last_data.duration_since(start);
    bar.abort();
    Ok(Stats {
        mode: "consume",
        records: done.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        elapsed,
        hist: histogram()?,
        failed: 0,
    })
}

/// Consumption through the group consumer: assignment, decoding into records, auto-commit.
async fn consume_group(a: &BenchArgs, group: &str) -> anyhow::Result<Stats> {
    use sluice_client::group::{GroupConfig, GroupConsumer};
    let client = a.gw.connect().await?;
    client.describe_topic(&a.topic).await?;
    let (target, dur) = limits(a);
    let cfg = GroupConfig {
        client_id: "sluice-bench".into(),
        auto_commit_interval: Some(Duration::from_secs(1)),
        ..GroupConfig::new(group)
    };
    let mut consumer = GroupConsumer::subscribe(client, &[a.topic.as_str()], cfg).await?;
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress("consume", done.clone(), bytes.clone(), target, dur);
    let start = Instant::now();
    let mut last_data = Instant::now();
    loop {
        if target.is_some_and(|t| done.load(Ordering::Relaxed) >= t) || dur.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let recs = consumer.poll(Duration::from_secs(2)).await?;
        // Caught up (nothing for 2 s after data), or nothing at all for 10 s.
        let idle = last_data.elapsed();
        if recs.is_empty()
            && (idle >= Duration::from_secs(10) || (idle >= Duration::from_secs(2) && done.load(Ordering::Relaxed) > 0))
        {
            break;
        }
        let n = recs.len() as u64;
        let b: u64 = recs.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64)).sum();
        if n > 0 {
            done.fetch_add(n, Ordering::Relaxed);
            bytes.fetch_add(b, Ordering::Relaxed);
            last_data = Instant::now();
        }
    }
    let elapsed = last_data.duration_since(start);
    bar.abort();
    consumer.close().await?;
    Ok(Stats {
        mode: "consume",
        records: done.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        elapsed,
        hist: histogram()?,
        failed: 0,
    })
}

async fn e2e(a: &BenchArgs) -> anyhow::Result<Stats> {
    let client = a.gw.connect().await?;
    ensure_topic(&client, a).await?;
    let rate = a.rate.unwrap_or(20_000);
    let mut consumer = sluice_client::consumer::Consumer::assign(
        client,
        &a.topic,
        &[],
        sluice_client::consumer::StartFrom::Latest,
        sluice_client::consumer::ConsumerConfig::default(),
    )
    .await?;
    let (target, _) = limits(a);
    let expected = target.unwrap_or(u64::MAX);
    let mut hist = histogram()?;
    let consumer_task = tokio::spawn(async move {
        let mut n = 0u64;
        let mut bytes = 0u64;
        while n < expected {
            let recs = match consumer.poll(Duration::from_secs(3)).await {
                Ok(r) if r.is_empty() => break,
                Ok(r) => r,
                Err(_) => break,
            };
            let now = sluice_core::settings::now_ms();
            for r in recs {
                let _ = hist.record(((now - r.timestamp_ms).max(0) as u64 * 1000).max(1));
                bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
                n += 1;
            }
        }
        (hist, n, bytes)
    });
    // Small batches: at a fixed rate, latency is what matters.
    let mut pa = a.clone();
    pa.batch_bytes = a.batch_bytes.min(((rate as usize * (a.record_size + 20)) / 1000).max(a.record_size + 100));
    let p = produce(&pa, Some(rate), "e2e").await?;
    let (hist, n, bytes) = consumer_task.await?;
    // Record timestamps are in milliseconds, so e2e latency has a 1 ms resolution.
    Ok(Stats {
        mode: "e2e",
        records: n,
        bytes,
        elapsed: p.elapsed,
        hist,
        failed: p.failed + p.records.saturating_sub(n),
    })
}
