//! `sluice consume`: print records with a kcat-style format.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};
use sluice_client::group::{DeliveryMode, GroupConfig, GroupConsumer, RebalanceListener, TopicPartition};
use sluice_proto::v1::IsolationLevel;

use crate::GatewayArg;

#[derive(clap::Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Read only this partition (default: all). Not with --group.
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// earliest, latest, an offset, or @TIMESTAMP_MS. With --group: where partitions without a
    /// committed offset start (earliest or latest).
    #[arg(long, default_value = "earliest")]
    from: StartFrom,
    /// Join this consumer group: the coordinator assigns partitions, offsets are committed.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// With --group: a static member id (group.instance.id); restarted within the session
    /// timeout, the member gets its partitions back without a rebalance.
    #[arg(long, requires = "group", value_name = "ID")]
    instance_id: Option<String>,
    /// With --group: at-least-once (commit after printing) or at-most-once (commit before).
    #[arg(long, default_value = "at-least-once", requires = "group")]
    delivery: DeliveryMode,
    /// With --group: sticky, range or round-robin.
    #[arg(long, default_value = "sticky", requires = "group")]
    assignor: String,
    /// With --group: session timeout, milliseconds.
    #[arg(long, default_value_t = 10_000, requires = "group", value_name = "MS")]
    session_timeout_ms: u64,
    /// With --group and at-least-once: how often printed records are committed, milliseconds.
    #[arg(long, default_value_t = 1_000, requires = "group", value_name = "MS")]
    commit_interval_ms: u64,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// Stop when nothing arrives for this long.
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// kcat-style format: %k key, %s value, %p partition, %o offset, %T timestamp, %t topic,
    /// %K/%S key/value length, \n, \t, %%.
    #[arg(long, default_value = "%s\\n", value_name = "FMT")]
    format: String,
    /// read_uncommitted (every record) or read_committed (below the last stable offset,
    /// without aborted transactions).
    #[arg(long, default_value = "read_uncommitted", value_parser = parse_isolation)]
    isolation: IsolationLevel,
    #[command(flatten)]
    gw: GatewayArg,
}

fn parse_isolation(s: &str) -> Result<IsolationLevel, String> {
    match s {
        "read_uncommitted" => Ok(IsolationLevel::ReadUncommitted),
        "read_committed" => Ok(IsolationLevel::ReadCommitted),
        _ => Err(format!("'{s}' is not an isolation level (read_uncommitted or read_committed)")),
    }
}

/// Renders `r` with a kcat-style format string.
pub fn render(fmt: &str, topic: &str, r: &ConsumerRecord, out: &mut Vec<u8>) {
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('k') => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
                Some('s') => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
                Some('p') => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Some('o') => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Some('T') => out.extend_from_slice(r.timestamp_ms.to_string().as_bytes()),
                Some('t') => out.extend_from_slice(topic.as_bytes()),
                Some('K') => {
                    out.extend_from_slice(r.key.as_ref().map_or(-1, |k| k.len() as i64).to_string().as_bytes())
                }
                Some('S') => {
                    out.extend_from_slice(r.value.as_ref().map_or(-1, |v| v.len() as i64).to_string().as_bytes())
                }
                Some('%') => out.push(b'%'),
                Some(o) => {
                    out.push(b'%');
                    let mut b = [0; 4];
                    out.extend_from_slice(o.encode_utf8(&mut b).as_bytes());
                }
                None => out.push(b'%'),
            },
            '\\' => match chars.peek() {
                Some('n') => {
                    chars.next();
                    out.push(b'\n');
                }
                Some('t') => {
                    chars.next();
                    out.push(b'\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push(b'\\');
                }
                _ => out.push(b'\\'),
            },
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// Reports assignment changes on stderr, one line each (what `sluice group describe` shows).
struct Report;

fn list(tps: &[TopicPartition]) -> String {
    tps.iter().map(|(t, p)| format!("{t}-{p}")).collect::<Vec<_>>().join(",")
}

impl RebalanceListener for Report {
    fn on_assigned(&mut self, tps: &[TopicPartition]) {
        eprintln!("assigned: {}", list(tps));
    }
    fn on_revoked(&mut self, tps: &[TopicPartition]) {
        eprintln!("revoked: {}", list(tps));
    }
    fn on_lost(&mut self, tps: &[TopicPartition]) {
        eprintln!("lost: {}", list(tps));
    }
}

/// Where records come from: assigned partitions, or a group.
enum Source {
    Assigned(Consumer),
    Group(GroupConsumer),
}

impl Source {
    async fn poll(&mut self, wait: Duration) -> Result<Vec<ConsumerRecord>, sluice_client::ClientError> {
        match self {
            Self::Assigned(c) => c.poll(wait).await,
            Self::Group(g) => g.poll(wait).await,
        }
    }
}

pub async fn run(a: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = a.gw.connect().await?;
    let fetch = ConsumerConfig { isolation: a.isolation, ..ConsumerConfig::default() };
    let mut consumer = match &a.group {
        None => {
            let partitions: Vec<u32> = a.partition.into_iter().collect();
            Source::Assigned(Consumer::assign(client, &a.topic, &partitions, a.from, fetch).await?)
        }
        Some(group) => {
            if !matches!(a.from, StartFrom::Earliest | StartFrom::Latest) {
                anyhow::bail!("with --group, --from must be earliest or latest (committed offsets decide the rest)");
            }
            let cfg = GroupConfig {
                instance_id: a.instance_id.clone(),
                client_id: "sluice-cli".into(),
                assignor: a.assignor.clone(),
                session_timeout: Duration::from_millis(a.session_timeout_ms),
                auto_offset_reset: a.from,
                delivery: a.delivery,
                auto_commit_interval: Some(Duration::from_millis(a.commit_interval_ms)),
                fetch,
                ..GroupConfig::new(group)
            };
            let mut g = GroupConsumer::subscribe(client, &[a.topic.as_str()], cfg).await?;
            g.set_listener(Report);
            eprintln!("joined group '{group}' as {}", g.member_id());
            Source::Group(g)
        }
    };
    // With a group, the records printed and not yet committed, per partition (next offset).
    let mut printed: std::collections::BTreeMap<u32, i64> = Default::default();
    let mut member = match &consumer {
        Source::Group(g) => g.member_id().to_string(),
        Source::Assigned(_) => String::new(),
    };
    let idle = a.idle_timeout_ms.map(Duration::from_millis);
    let mut last = Instant::now();
    let mut count = 0u64;
    let stdout = std::io::stdout();
    let mut buf = Vec::with_capacity(64 * 1024);
    let shutdown = sluice_runtime::Shutdown::new();
    shutdown.on_signals();
    loop {
        if a.max_messages.is_some_and(|m| count >= m) {
            break;
        }
        let wait = match idle {
            Some(i) => match i.checked_sub(last.elapsed()) {
                Some(w) => w,
                None => break,
            },
            None => Duration::from_secs(1),
        };
        let polled = tokio::select! {
            r = consumer.poll(wait) => r,
            _ = shutdown.wait() => break,
        };
        let records = match polled {
            Ok(records) => records,
            // A consumer rides through what may pass (a coordinator or leader changing, a
            // commit that could not be written yet) as Kafka's does; the rest ends the run.
            Err(e) if e.is_retriable() => {
                eprintln!("warning: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let (Source::Group(g), Some(group)) = (&consumer, &a.group)
            && g.member_id() != member
        {
            // Removed from the group (e.g. after a pause past the session timeout) and back.
            member = g.member_id().to_string();
            eprintln!("joined group '{group}' as {member}");
        }
        if records.is_empty() {
            continue;
        }
        last = Instant::now();
        buf.clear();
        for r in records {
            if a.max_messages.is_some_and(|m| count >= m) {
                break;
            }
            if a.group.is_some() {
                printed.insert(r.partition, r.offset + 1);
            }
            r.process_span(&a.topic).in_scope(|| render(&a.format, &a.topic, &r, &mut buf));
            count += 1;
        }
        let mut out = stdout.lock();
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            // The reader went away (e.g. `| head`): that is a normal end.
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Source::Group(mut g) = consumer {
        if a.delivery == DeliveryMode::AtLeastOnce {
            // What was printed is committed, not the consumer's positions: with --max-messages
            // the last batch may have been cut short, and a poll interrupted by a signal may
            // have read records it never handed out.
            let printed = printed.into_iter().map(|(p, o)| ((a.topic.clone(), p), o)).collect();
            let refused = g.commit_offsets(&printed).await?;
            if !refused.is_empty() {
                let tps: Vec<TopicPartition> = refused.iter().map(|(tp, _)| tp.clone()).collect();
                eprintln!("warning: commits failed for {}: {}", list(&tps), refused[0].1.message);
            }
        }
        g.leave().await;
    }
    eprintln!("consumed {count} records from '{}'", a.topic);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kcat_placeholders() {
        let r = ConsumerRecord {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: 1000,
            key: Some("k".into()),
            value: Some("v".into()),
            headers: vec![],
        };
        let mut out = Vec::new();
        render("%p\\t%o\\t%k=%s %T %t %K %S 100%%\\n", "orders", &r, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "3\t42\tk=v 1000 orders 1 1 100%\n");
    }
}
