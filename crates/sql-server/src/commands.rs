//! The command topic `__sql_commands`: every statement that changes the catalog, in the
//! order accepted, as ksqlDB's command topic. Gateways append; gateways and processors
//! replay it into a [`sluice_sql::Engine`], so all of them hold the same catalog and give
//! persistent queries the same ids.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};
use sluice_proto::v1::{IsolationLevel, ListOffsetsRequest, OffsetSpec};
use sluice_sql::{Engine, Outcome};

pub const TOPIC: &str = "__sql_commands";
/// Replication factor of the command topic (lowered to the live nodes).
const REPLICATION: u32 = 3;

/// A statement as written to the command topic.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Command {
    pub sql: String,
    /// Statement properties (`auto.offset.reset`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The property of a persistent query's command holding where its inputs start when they
/// have no committed offset: the end of each source partition when the statement was
/// accepted (`auto.offset.reset` latest means "from now", not from whenever a processor
/// first runs the query). Set by the gateway, never by a client.
pub const START_OFFSETS: &str = "sluice.start.offsets";

/// `START_OFFSETS`' value: topic -> [(partition, offset)].
pub type StartOffsets = BTreeMap<String, Vec<(u32, i64)>>;

/// The end of every partition of `topics` now, as a read_committed reader sees it (the last
/// stable offset: records of a transaction still open are after it). A partition whose end
/// cannot be told fails the whole: a query started from a guess could miss records.
pub async fn end_offsets(client: &Client, topics: &[String]) -> Result<StartOffsets, ClientError> {
    let mut out = StartOffsets::new();
    for topic in topics {
        let req = ListOffsetsRequest {
            topic: topic.clone(),
            spec: OffsetSpec::Latest as i32,
            isolation_level: IsolationLevel::ReadCommitted as i32,
            ..Default::default()
        };
        let offsets = client.admin().list_offsets(req).await?.into_inner().offsets;
        let mut ends = Vec::with_capacity(offsets.len());
        for o in offsets {
            if let Some(e) = o.error.filter(|_| o.offset < 0) {
                return Err(tonic::Status::unavailable(format!(
                    "where partition {} of {topic} ends cannot be told now (try again): {}",
                    o.partition, e.message
                ))
                .into());
            }
            ends.push((o.partition, o.offset));
        }
        out.insert(topic.clone(), ends);
    }
    Ok(out)
}

/// The start offsets a command carries, as Streams takes them; none when absent or unreadable.
pub fn start_offsets(properties: &BTreeMap<String, String>) -> BTreeMap<(String, u32), i64> {
    let parsed: StartOffsets =
        properties.get(START_OFFSETS).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default();
    parsed.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |(p, o)| ((t.clone(), p), o))).collect()
}

/// Creates the command topic when missing: one partition (one order), compacted with a
/// distinct key per command (nothing is ever compacted away, and it never expires).
pub async fn ensure_topic(client: &Client) -> Result<(), ClientError> {
    let config: HashMap<String, String> = [("cleanup.policy".to_string(), "compact".to_string())].into();
    client.create_topic_if_missing(TOPIC, 1, REPLICATION, config).await
}

/// Appends a command; answers its offset.
pub async fn append(client: &Client, cmd: &Command) -> Result<i64, ClientError> {
    ensure_topic(client).await?;
    let value = serde_json::to_vec(cmd).map_err(|e| ClientError::Invalid(e.to_string()))?;
    let key = format!(
        "{}-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
        std::process::id()
    );
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let record = ProducerRecord {
        topic: TOPIC.to_string(),
        partition: Some(0),
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp_ms: 0,
    };
    let delivery = producer.send(record).await?;
    producer.flush().await;
    let d = delivery
        .await
        .map_err(|_| ClientError::Invalid("the producer stopped before the command was written".into()))??;
    Ok(d.offset)
}

/// The commands from offset `from` to the current end, each with its offset, and the
/// offset after them (where following continues).
pub async fn read_from(client: &Client, from: i64) -> Result<(Vec<(i64, Command)>, i64), ClientError> {
    let (records, next) = read_topic(client, TOPIC, from).await?;
    let commands = records.into_iter().filter_map(|r| decode(r.value.as_deref()).map(|c| (r.offset, c))).collect();
    Ok((commands, next))
}

/// The records of partition 0 of `topic` (one of the SQL layer's single-partition topics)
/// from offset `from` to its current end, and the offset after them (its end, below `from`
/// when the topic was deleted and made anew); none when the topic does not exist yet.
pub async fn read_topic(client: &Client, topic: &str, from: i64) -> Result<(Vec<ConsumerRecord>, i64), ClientError> {
    // A partition without a leader yet (right after the topic is created) has no known end:
    // waited out, never taken for 0 (which would read nothing) nor -1.
    let end = match client.settled_offsets(topic, vec![0], OffsetSpec::Latest, 0).await {
        Ok(o) => o.first().map_or(0, |o| o.offset.max(0)),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => return Ok((Vec::new(), from)),
        Err(e) if e.is_retriable() => {
            return Err(tonic::Status::unavailable(format!("where {topic} ends cannot be told now: {e}")).into());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    if end <= from {
        // Below `from` only when the topic was made anew since: the caller sees it.
        return Ok((out, end));
    }
    let start = if from == 0 { StartFrom::Earliest } else { StartFrom::Offset(from) };
    let mut consumer = Consumer::assign(client.clone(), topic, &[0], start, ConsumerConfig::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while consumer.positions().get(&0).copied().unwrap_or(0) < end {
        if tokio::time::Instant::now() > deadline {
            return Err(ClientError::Invalid(format!("reading {topic} took more than 30 s")));
        }
        out.extend(consumer.poll(Duration::from_millis(500)).await?);
    }
    // The consumer's position, not the last record's offset + 1: right past a gap too.
    let next = consumer.positions().get(&0).copied().unwrap_or(end);
    Ok((out, next))
}

/// Every command so far, and the offset after them.
pub async fn read_all(client: &Client) -> Result<(Vec<(i64, Command)>, i64), ClientError> {
    read_from(client, 0).await
}

pub fn decode(value: Option<&[u8]>) -> Option<Command> {
    match serde_json::from_slice(value?) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "a command of {TOPIC} is not one; skipped");
            None
        }
    }
}

/// Applies a command to `engine`; a statement that fails now (it was accepted against an
/// older catalog, by a racing gateway) is skipped everywhere alike.
pub fn apply(engine: &mut Engine, cmd: &Command) -> Vec<Outcome> {
    let parsed = match sluice_sql::parse(&cmd.sql) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, sql = %cmd.sql, "a command does not parse; skipped");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for p in parsed {
        match engine.execute(&p) {
            Ok(o) => out.push(o),
            Err(e) => tracing::warn!(error = %e, sql = %p.text, "a command fails against the catalog; skipped"),
        }
    }
    out
}

/// Applies a command, reporting the first statement that fails.
pub fn apply_checked(engine: &mut Engine, cmd: &Command) -> Result<Vec<Outcome>, sluice_sql::SqlError> {
    let mut out = Vec::new();
    for p in sluice_sql::parse(&cmd.sql)? {
        out.push(engine.execute(&p)?);
    }
    Ok(out)
}

/// Moves `engine` (the log applied up to `next`) through the command at `offset`: what
/// that command did (None: no command there), and the new `next`.
pub async fn advance(
    client: &Client,
    engine: &mut Engine,
    next: i64,
    offset: i64,
) -> Result<(i64, Option<Result<Vec<Outcome>, sluice_sql::SqlError>>), ClientError> {
    let (commands, _) = read_from(client, next).await?;
    let mut outcome = None;
    let mut moved = next;
    for (o, c) in commands {
        if o > offset {
            break;
        }
        moved = o + 1;
        if o == offset {
            outcome = Some(apply_checked(engine, &c));
        } else {
            apply(engine, &c);
        }
    }
    Ok((moved.max(offset + 1), outcome))
}

/// The catalog as the command topic makes it now, and the offset after its last command.
pub async fn catalog(client: &Client) -> Result<(Engine, i64), ClientError> {
    let mut engine = Engine::new();
    let (commands, next) = read_all(client).await?;
    for (_, c) in commands {
        apply(&mut engine, &c);
    }
    Ok((engine, next))
}
