//! Where each persistent query runs and whether it fails: every stream processor reports,
//! for each query it runs, its state (running, or failed and why), its tasks and the records
//! they processed to the compacted topic `__sql_status`, one key per query and processor,
//! when it changes and every [`REFRESH`]; a processor that stops cleanly takes its reports
//! back, and a gateway that terminates a query takes back every report of it. `SHOW
//! QUERIES` and `EXPLAIN <query id>` read it: a report appended more than [`STALE`] ago (by
//! the log's clock, not the processor's) is from a processor that died without a word, and
//! is not counted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::producer::{Producer, ProducerConfig, ProducerRecord};
use sluice_client::{Client, ClientError};

pub const TOPIC: &str = "__sql_status";
/// Replication factor of the status topic (lowered to the live nodes).
const REPLICATION: u32 = 3;
/// How often a processor repeats a report that did not change.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How old a report may be and still count.
pub const STALE: Duration = Duration::from_secs(20);
/// How long a report may take to be written: a processor does not hold up its queries'
/// commands for a status (the next one is due soon).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// What a processor says of one query.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub query: String,
    pub processor: String,
    pub state: State,
    /// Why the query failed there.
    #[serde(default)]
    pub error: Option<String>,
    /// The query's tasks on this processor, and the records they processed since it started.
    #[serde(default)]
    pub tasks: usize,
    #[serde(default)]
    pub processed: u64,
    /// When it was said, ms since the epoch.
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    // Ordered as a status lists them: failures first.
    Error,
    Running,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Error => "ERROR",
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn key(query: &str, processor: &str) -> Bytes {
    Bytes::from(format!("{query}/{processor}"))
}

/// Creates the status topic when missing: one partition, compacted (one report per query and
/// processor is kept; taken-back reports leave with their tombstones).
pub async fn ensure_topic(client: &Client) -> Result<(), ClientError> {
    let config: HashMap<String, String> = [("cleanup.policy".to_string(), "compact".to_string())].into();
    client.create_topic_if_missing(TOPIC, 1, REPLICATION, config).await
}

/// A processor's side: sends a query's report when it changed or is due again.
pub struct Reporter {
    producer: Producer,
    processor: String,
    /// Per query: what was said last (its time aside) and when.
    said: BTreeMap<String, (Report, Instant)>,
}

impl Reporter {
    pub async fn new(client: &Client, processor: &str) -> Result<Reporter, ClientError> {
        ensure_topic(client).await?;
        Ok(Reporter {
            producer: Producer::new(client.clone(), ProducerConfig::default()),
            processor: processor.to_string(),
            said: BTreeMap::new(),
        })
    }

    /// Reports `query`'s state here.
    pub async fn report(
        &mut self,
        query: &str,
        error: Option<String>,
        tasks: usize,
        processed: u64,
    ) -> Result<(), ClientError> {
        let state = if error.is_some() { State::Error } else { State::Running };
        let report = Report {
            query: query.to_string(),
            processor: self.processor.clone(),
            state,
            error,
            tasks,
            processed,
            at_ms: 0,
        };
        let due = match self.said.get(query) {
            // The count of processed records alone does not make a report due.
            Some((last, at)) => {
                (last.state, &last.error, last.tasks) != (report.state, &report.error, report.tasks)
                    || at.elapsed() >= REFRESH
            }
            None => true,
        };
        if !due {
            return Ok(());
        }
        let value = serde_json::to_vec(&Report { at_ms: now_ms(), ..report.clone() })
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.send(query, Some(Bytes::from(value))).await?;
        self.said.insert(query.to_string(), (report, Instant::now()));
        Ok(())
    }

    /// Takes back this processor's report of `query` (terminated, or the processor stops).
    pub async fn forget(&mut self, query: &str) -> Result<(), ClientError> {
        self.said.remove(query);
        self.send(query, None).await
    }

    /// The queries it reported.
    pub fn queries(&self) -> Vec<String> {
        self.said.keys().cloned().collect()
    }

    async fn send(&self, query: &str, value: Option<Bytes>) -> Result<(), ClientError> {
        send(&self.producer, key(query, &self.processor), value).await
    }
}

/// Writes one record of the status topic, in at most [`SEND_TIMEOUT`]. Its time is the
/// log's (0: stamped on arrival), which is what staleness is measured against.
async fn send(producer: &Producer, key: Bytes, value: Option<Bytes>) -> Result<(), ClientError> {
    let record = ProducerRecord {
        topic: TOPIC.to_string(),
        partition: Some(0),
        key: Some(key),
        value,
        headers: Vec::new(),
        timestamp_ms: 0,
    };
    let written = async {
        let delivery = producer.send(record).await?;
        producer.flush().await;
        delivery
            .await
            .map_err(|_| ClientError::Invalid("the producer stopped before the report was written".into()))??;
        Ok::<(), ClientError>(())
    };
    tokio::time::timeout(SEND_TIMEOUT, written)
        .await
        .map_err(|_| ClientError::Invalid(format!("{TOPIC} took more than {SEND_TIMEOUT:?} to take a report")))?
}

/// Takes back every report of `queries` (they were terminated): a processor that died
/// meanwhile never takes back its own.
pub async fn forget_queries(client: &Client, queries: &[String]) -> Result<(), ClientError> {
    let mut keys = Vec::new();
    for r in crate::commands::read_topic(client, TOPIC, 0).await?.0 {
        if let Some(k) = r.key
            && r.value.is_some()
            && queries.iter().any(|q| k.starts_with(format!("{q}/").as_bytes()))
        {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for k in keys {
        send(&producer, k, None).await?;
    }
    producer.close().await;
    Ok(())
}

/// The live reports of every query: the last report per query and processor, unless taken
/// back or older than [`STALE`].
pub async fn read(client: &Client) -> Result<BTreeMap<String, Vec<Report>>, ClientError> {
    let mut last: BTreeMap<Bytes, Option<(i64, Report)>> = BTreeMap::new();
    for r in crate::commands::read_topic(client, TOPIC, 0).await?.0 {
        let Some(k) = r.key else { continue };
        let report = r.value.as_deref().and_then(|v| serde_json::from_slice(v).ok());
        last.insert(k, report.map(|rep| (r.timestamp_ms, rep)));
    }
    let oldest = now_ms() - STALE.as_millis() as i64;
    let mut out: BTreeMap<String, Vec<Report>> = BTreeMap::new();
    for (_, r) in last.into_values().flatten().filter(|(appended, _)| *appended >= oldest) {
        out.entry(r.query.clone()).or_default().push(r);
    }
    Ok(out)
}

/// A query's status from its reports, as ksqlDB words it: the count of processors in each
/// state (`RUNNING:2`, `ERROR:1 RUNNING:1`), and the first error; `PENDING` when no live
/// processor reports it (none runs, or it has just been started).
pub fn summary(reports: &[Report]) -> String {
    if reports.is_empty() {
        return "PENDING".into();
    }
    let mut counts: BTreeMap<State, usize> = BTreeMap::new();
    for r in reports {
        *counts.entry(r.state).or_default() += 1;
    }
    let mut s = counts.iter().map(|(st, n)| format!("{}:{n}", st.name())).collect::<Vec<_>>().join(" ");
    if let Some(r) = reports.iter().find(|r| r.state == State::Error) {
        s.push_str(&format!(" ({}: {})", r.processor, r.error.as_deref().unwrap_or("failed")));
    }
    s
}

/// One line per processor, for EXPLAIN.
pub fn details(reports: &[Report]) -> String {
    if reports.is_empty() {
        return "no processor reports it".into();
    }
    reports
        .iter()
        .map(|r| {
            let mut line =
                format!("{}: {}, {} tasks, {} records processed", r.processor, r.state.name(), r.tasks, r.processed);
            if let Some(e) = &r.error {
                line.push_str(&format!(", error: {e}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(processor: &str, error: Option<&str>) -> Report {
        Report {
            query: "Q".into(),
            processor: processor.into(),
            state: if error.is_some() { State::Error } else { State::Running },
            error: error.map(String::from),
            tasks: 2,
            processed: 10,
            at_ms: 1,
        }
    }

    #[test]
    fn a_status_counts_processors_by_state_and_names_the_first_error() {
        assert_eq!(summary(&[]), "PENDING");
        assert_eq!(summary(&[report("a", None), report("b", None)]), "RUNNING:2");
        assert_eq!(summary(&[report("a", None), report("b", Some("store full"))]), "ERROR:1 RUNNING:1 (b: store full)");
        assert_eq!(
            details(&[report("a", None), report("b", Some("x"))]),
            "a: RUNNING, 2 tasks, 10 records processed\nb: ERROR, 2 tasks, 10 records processed, error: x"
        );
        let json = serde_json::to_string(&report("a", None)).unwrap();
        assert!(json.contains(r#""state":"RUNNING""#), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report("a", None));
    }
}
