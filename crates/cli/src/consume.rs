//! `sluice consume`: print records with a kcat-style format.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartFrom};

use crate::GatewayArg;

#[derive(clap::Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// earliest, latest, an offset, or @TIMESTAMP_MS.
    #[arg(long, default_value = "earliest")]
    from: StartFrom,
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
    #[command(flatten)]
    gw: GatewayArg,
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

pub async fn run(a: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = a.gw.connect().await?;
    let partitions: Vec<u32> = a.partition.into_iter().collect();
    let mut consumer = Consumer::assign(client, &a.topic, &partitions, a.from, ConsumerConfig::default()).await?;
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
        let records = tokio::select! {
            r = consumer.poll(wait) => r?,
            _ = shutdown.wait() => break,
        };
        if records.is_empty() {
            continue;
        }
        last = Instant::now();
        buf.clear();
        for r in records {
            if a.max_messages.is_some_and(|m| count >= m) {
                break;
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
    eprintln!("consumed {count} records from '{}'", a.topic);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kcat_placeholders() {
        let r = ConsumerRecord {
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
