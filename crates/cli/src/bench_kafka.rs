//! `sluice bench produce|consume --kafka ADDR`: the same load as the gRPC bench, through a
//! gateway's Kafka listener, so that the two paths are measured by one load generator (Kafka's
//! Java tools are slower than the listener and would measure themselves).
//!
//! One connection, requests pipelined up to `--in-flight` (a Kafka connection answers in
//! order), messages encoded with the `kafka-protocol` crate as the listener decodes them.
//! Produce sends one RecordBatch v2 per request, built as the gRPC bench builds it; consume
//! fetches every partition from offset 0 and counts records from batch headers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use sluice_core::batch::BatchHeader;
use sluice_proto::v1::Acks;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, Semaphore};

use crate::bench::{Batches, BenchArgs, Run, Stats, histogram, limits, produce_stats, progress};

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
/// Largest answer read: the listener's own frame limit.
const MAX_FRAME: usize = 100 << 20;

/// The sending half of a Kafka connection.
struct Sender {
    w: BufWriter<OwnedWriteHalf>,
    next_id: i32,
}

impl Sender {
    /// Writes one request (not flushed: the caller flushes when it has nothing more to send).
    async fn send<R: Request>(&mut self, version: i16, req: &R) -> anyhow::Result<()> {
        let key = kafka_protocol::messages::ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown api key"))?;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.next_id)
            .with_client_id(Some(StrBytes::from_static_str("sluice-bench")));
        self.next_id = self.next_id.wrapping_add(1);
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_i32(0);
        header.encode(&mut buf, key.request_header_version(version))?;
        req.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.w.write_all(&buf).await?;
        Ok(())
    }
}

/// Reads the next answer, decoded as `R`'s response at `version`.
async fn receive<R: Request>(r: &mut BufReader<OwnedReadHalf>, version: i16) -> anyhow::Result<R::Response> {
    let len = r.read_i32().await.context("the Kafka listener closed the connection")?;
    let len = usize::try_from(len).ok().filter(|l| *l <= MAX_FRAME).context("answer of a bad length")?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
    R::Response::decode(&mut body, version)
}

async fn connect(addr: &str) -> anyhow::Result<(Sender, BufReader<OwnedReadHalf>)> {
    let stream =
        TcpStream::connect(addr).await.with_context(|| format!("cannot reach the Kafka listener at {addr}"))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    Ok((Sender { w: BufWriter::with_capacity(1 << 20, w), next_id: 0 }, BufReader::with_capacity(1 << 20, r)))
}

fn acks(a: &BenchArgs) -> i16 {
    match a.acks {
        Acks::All => -1,
        Acks::None => 0,
        _ => 1,
    }
}

pub(crate) async fn produce(
    a: &BenchArgs,
    addr: &str,
    mut batches: Batches,
    mode: &'static str,
) -> anyhow::Result<Stats> {
    anyhow::ensure!(a.acks != Acks::None, "--kafka needs acknowledged produce (acks 1 or all)");
    let (target, dur) = limits(a);
    let (mut tx, mut rx) = connect(addr).await?;
    let window = Arc::new(Semaphore::new(a.in_flight.max(1)));
    // What each request in flight carried, in sending order (= answering order).
    let pending: Arc<Mutex<VecDeque<(Instant, u64)>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress(mode, done.clone(), bytes.clone(), target, dur);
    let reader = {
        let (window, pending, done, bytes) = (window.clone(), pending.clone(), done.clone(), bytes.clone());
        let record_size = a.record_size as u64;
        let mut hist = histogram()?;
        tokio::spawn(async move {
            let mut failed = 0u64;
            let mut first_error = None;
            loop {
                let resp = match receive::<ProduceRequest>(&mut rx, PRODUCE_VERSION).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Requests left unanswered failed.
                        let lost: u64 = pending.lock().await.drain(..).map(|(_, n)| n).sum();
                        if lost > 0 {
                            failed += lost;
                            first_error.get_or_insert(e.to_string());
                        }
                        break;
                    }
                };
                let Some((t0, n)) = pending.lock().await.pop_front() else { break };
                let code = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                    .map(|p| p.error_code)
                    .find(|c| *c != 0);
                match code {
                    Some(c) => {
                        failed += n;
                        first_error.get_or_insert(format!("Kafka error code {c}"));
                    }
                    None => {
                        let _ = hist.record_n((t0.elapsed().as_micros() as u64).max(1), n);
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
    let topic = TopicName(StrBytes::from_string(a.topic.clone()));
    let start = Instant::now();
    let mut sent = 0u64;
    while target.is_none_or(|t| sent < t) && dur.is_none_or(|d| start.elapsed() < d) {
        let want = target.map_or(batches.per_batch, |t| batches.per_batch.min(t - sent));
        if let Some(r) = a.rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(sent as f64 / r as f64)).into()).await;
        }
        // Flush what is written before waiting for room: the answers that free it need it sent.
        let permit = match window.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                tx.w.flush().await?;
                // Closed: the answers stopped (the connection ended).
                let Ok(p) = window.acquire().await else { break };
                p
            }
        };
        permit.forget();
        let (partition, n, data) = batches.next(want)?;
        let req = ProduceRequest::default().with_acks(acks(a)).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default().with_name(topic.clone()).with_partition_data(vec![
                PartitionProduceData::default().with_index(partition as i32).with_records(Some(data)),
            ]),
        ]);
        pending.lock().await.push_back((Instant::now(), n));
        tx.send(PRODUCE_VERSION, &req).await?;
        sent += n;
    }
    tx.w.flush().await?;
    produce_stats(Run { mode, start, done, bytes, bar }, &window, a.in_flight, tx, reader).await
}

/// Fetches every partition from offset 0 with one request in flight, as a Kafka consumer does
/// per broker, each asking up to 16 MiB (1 MiB per partition).
pub(crate) async fn consume(a: &BenchArgs, addr: &str, partitions: u32) -> anyhow::Result<Stats> {
    let (target, dur) = limits(a);
    let (mut tx, mut rx) = connect(addr).await?;
    let mut offsets = vec![0i64; partitions as usize];
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress("consume", done.clone(), bytes.clone(), target, dur);
    let start = Instant::now();
    let mut last_data = Instant::now();
    let topic = TopicName(StrBytes::from_string(a.topic.clone()));
    loop {
        if target.is_some_and(|t| done.load(Ordering::Relaxed) >= t) || dur.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if last_data.elapsed() > Duration::from_secs(2) {
            break;
        }
        let parts = offsets
            .iter()
            .enumerate()
            .map(|(p, o)| {
                FetchPartition::default()
                    .with_partition(p as i32)
                    .with_fetch_offset(*o)
                    .with_partition_max_bytes(1 << 20)
                    .with_current_leader_epoch(-1)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(16 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(topic.clone()).with_partitions(parts)]);
        tx.send(FETCH_VERSION, &req).await?;
        tx.w.flush().await?;
        let resp = receive::<FetchRequest>(&mut rx, FETCH_VERSION).await?;
        anyhow::ensure!(resp.error_code == 0, "fetch refused with Kafka error code {}", resp.error_code);
        for p in resp.responses.iter().flat_map(|t| t.partitions.iter()) {
            anyhow::ensure!(p.error_code == 0, "partition {} refused: Kafka error {}", p.partition_index, p.error_code);
            let Some(mut rest) = p.records.clone() else { continue };
            let len = rest.len() as u64;
            let mut n = 0u64;
            let mut next = None;
            while let Ok(h) = BatchHeader::parse(&rest) {
                if h.total_len() > rest.len() {
                    break;
                }
                n += h.record_count as u64;
                next = Some(h.base_offset + h.last_offset_delta as i64 + 1);
                rest.advance(h.total_len());
            }
            if let (Some(next), Some(o)) = (next, offsets.get_mut(p.partition_index as usize)) {
                *o = next;
                done.fetch_add(n, Ordering::Relaxed);
                bytes.fetch_add(len, Ordering::Relaxed);
                last_data = Instant::now();
            }
        }
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
