//! opensearch-sink: records as documents through the `_bulk` API of OpenSearch or
//! Elasticsearch (the keys of Confluent's Elasticsearch sink).
//!
//! A record's document id is its key (or `topic+partition+offset` with `key.ignore`), so
//! writing a batch again after a crash or a move rewrites the same documents: the index ends
//! as if each record was written once. The index is the record's topic, lower-cased (after
//! the transforms, so a RegexRouter can rename it). A tombstone deletes its document
//! (`behavior.on.null.values`). A whole request refused with 429 or 5xx, or that cannot be
//! sent, is tried again with exponential backoff (`max.retries`, `retry.backoff.ms`); so are
//! the items of a bulk answered 429 or 5xx. An item refused otherwise (a mapping error) is
//! the record's fault: it fails the task, or goes to the dead-letter topic with
//! `errors.tolerance=all`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};
use sluice_connect::ConnectRecord;
use sluice_connect::config::{self, ConnectorConfig};
use sluice_connect::plugins::http_host;

use crate::tasks::{Ctx, Target, WriteError, run_sink};

pub(crate) async fn sink(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<(), String> {
    let int = |k: &str, d: i64| cfg.int(k).unwrap_or(d).max(0) as u64;
    let auth = match (cfg.get("connection.username"), cfg.get("connection.password")) {
        (Some(u), p) if !u.is_empty() => {
            let pair = format!("{u}:{}", p.unwrap_or_default());
            Some(format!("Basic {}", sluice_connect::convert::base64_encode(pair.as_bytes())))
        }
        _ => None,
    };
    let target = Bulk {
        http: Http {
            hosts: config::list(cfg.get("connection.url").unwrap_or_default())
                .iter()
                .map(|u| http_host(u, 9200).map_err(|why| format!("connection.url {why}")))
                .collect::<Result<_, _>>()?,
            next: 0,
            conn: None,
            auth,
            timeout: Duration::from_millis(int("read.timeout.ms", 3000)),
            connect_timeout: Duration::from_millis(int("connection.timeout.ms", 1000)),
        },
        key_ignore: cfg.get("key.ignore") == Some("true"),
        upsert: cfg.get("write.method") == Some("upsert"),
        on_null: cfg.get("behavior.on.null.values").unwrap_or("delete").to_string(),
        on_malformed: cfg.get("behavior.on.malformed.documents").unwrap_or("fail").to_string(),
        max_retries: int("max.retries", 5) as u32,
        backoff: Duration::from_millis(int("retry.backoff.ms", 100)),
        batch: int("batch.size", 2000).max(1) as usize,
    };
    run_sink(ctx, cfg, target).await
}

/// A keep-alive HTTP/1.1 connection to one of the hosts, the next one after a failure.
struct Http {
    hosts: Vec<String>,
    next: usize,
    conn: Option<(String, SendRequest<Full<Bytes>>)>,
    auth: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
}

/// What a request came back with: the status and the body.
type Answer = (u16, Bytes);

impl Http {
    async fn connection(&mut self) -> Result<&mut (String, SendRequest<Full<Bytes>>), String> {
        if self.conn.as_ref().is_some_and(|(_, s)| s.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let host = self.hosts.get(self.next % self.hosts.len().max(1)).cloned().ok_or("no connection.url")?;
            self.next += 1;
            let send = crate::http::connect(&host, self.connect_timeout, "OpenSearch").await?;
            self.conn = Some((host, send));
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_string())
    }

    async fn post(&mut self, path: &str, content_type: &str, body: Bytes) -> Result<Answer, String> {
        let (timeout, auth) = (self.timeout, self.auth.clone());
        let (host, send) = self.connection().await?;
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(a) = auth {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let host = host.clone();
        let answer = tokio::time::timeout(timeout, async {
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.conn = None;
                Err(format!("{host}: {e}"))
            }
            Err(_) => {
                self.conn = None;
                Err(format!("{host}: no answer within {timeout:?}"))
            }
        }
    }
}

struct Bulk {
    http: Http,
    key_ignore: bool,
    upsert: bool,
    on_null: String,
    on_malformed: String,
    max_retries: u32,
    backoff: Duration,
    batch: usize,
}

/// A record's document id: its key as text, or where it was read.
fn doc_id(r: &ConnectRecord, key_ignore: bool) -> Option<String> {
    if key_ignore {
        return Some(format!("{}+{}+{}", r.topic, r.partition.unwrap_or(0), r.offset.unwrap_or(0)));
    }
    match &r.key.value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Whether an item or request refused with `status` may pass if tried again.
fn retriable(status: u16) -> bool {
    status == 429 || status >= 500
}

impl Bulk {
    /// The bulk lines of `r` (none when it is skipped), or why it cannot be written.
    fn lines(&self, r: &ConnectRecord, out: &mut Vec<u8>) -> Result<bool, String> {
        let index = r.topic.to_lowercase();
        let id = doc_id(r, self.key_ignore);
        if r.value.value.is_null() {
            return match (self.on_null.as_str(), id) {
                ("ignore", _) => Ok(false),
                ("delete", Some(id)) => {
                    out.extend_from_slice(json!({"delete": {"_index": index, "_id": id}}).to_string().as_bytes());
                    out.push(b'\n');
                    Ok(true)
                }
                ("delete", None) => Err("a tombstone without a key: no document to delete".into()),
                _ => Err("a null value (behavior.on.null.values=fail)".into()),
            };
        }
        if !r.value.value.is_object() {
            return Err(format!("a document must be a JSON object, not {}", r.value.value));
        }
        let (action, doc) = match self.upsert {
            true => ("update", json!({"doc": r.value.value, "doc_as_upsert": true})),
            false => ("index", r.value.value.clone()),
        };
        let meta = match (&id, self.upsert) {
            (Some(id), _) => json!({action: {"_index": index, "_id": id}}),
            (None, false) => json!({"index": {"_index": index}}),
            (None, true) => return Err("write.method=upsert needs a key (the document id)".into()),
        };
        out.extend_from_slice(meta.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(doc.to_string().as_bytes());
        out.push(b'\n');
        Ok(true)
    }

    /// Sends the records at `idx`; returns those to try again and those refused for good.
    async fn send(&mut self, records: &[ConnectRecord], idx: &[usize]) -> Result<Retry, WriteError> {
        let mut body = Vec::new();
        let mut sent = Vec::with_capacity(idx.len());
        let mut outcome = Retry::default();
        for &i in idx {
            match self.lines(&records[i], &mut body) {
                Ok(true) => sent.push(i),
                Ok(false) => {}
                Err(why) => outcome.refused.push((i, why)),
            }
        }
        if sent.is_empty() {
            return Ok(outcome);
        }
        let (status, answer) =
            self.http.post("/_bulk", "application/x-ndjson", Bytes::from(body)).await.map_err(WriteError::Failed)?;
        if retriable(status) {
            outcome.again = sent;
            outcome.why = format!("_bulk answered {status}: {}", String::from_utf8_lossy(&answer));
            return Ok(outcome);
        }
        if status != 200 {
            // The request itself is wrong (or the credentials): no document of it was written.
            return Err(WriteError::Failed(format!("_bulk answered {status}: {}", String::from_utf8_lossy(&answer))));
        }
        let answer: Value =
            serde_json::from_slice(&answer).map_err(|e| WriteError::Failed(format!("_bulk answer: {e}")))?;
        let items = answer.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if items.len() != sent.len() {
            return Err(WriteError::Failed(format!("_bulk answered {} items for {}", items.len(), sent.len())));
        }
        for (item, &i) in items.iter().zip(&sent) {
            let Some(result) = item.as_object().and_then(|o| o.values().next()) else { continue };
            let status = result.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
            // A delete of a document that is not there has done what it was for.
            if (200..300).contains(&status) || status == 404 && item.get("delete").is_some() {
                continue;
            }
            let why = result.get("error").map_or_else(|| format!("status {status}"), |e| format!("{status}: {e}"));
            if retriable(status) {
                outcome.again.push(i);
                outcome.why = why;
            } else {
                outcome.refused.push((i, why));
            }
        }
        Ok(outcome)
    }
}

#[derive(Default)]
struct Retry {
    again: Vec<usize>,
    why: String,
    refused: Vec<(usize, String)>,
}

impl Target for Bulk {
    async fn write(
        &mut self,
        records: &[ConnectRecord],
        _next: &BTreeMap<(String, u32), i64>,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let mut refused = Vec::new();
        let all: Vec<usize> = (0..records.len()).collect();
        for chunk in all.chunks(self.batch) {
            let mut todo = chunk.to_vec();
            let mut pause = self.backoff;
            let mut tries = 0;
            while !todo.is_empty() {
                let outcome = match self.send(records, &todo).await {
                    Ok(o) => o,
                    // Not sent at all (no connection): the same items again.
                    Err(WriteError::Failed(why)) if tries < self.max_retries => {
                        Retry { again: todo, why, ..Default::default() }
                    }
                    Err(e) => return Err(e),
                };
                refused.extend(outcome.refused);
                todo = outcome.again;
                if todo.is_empty() {
                    break;
                }
                if tries >= self.max_retries {
                    return Err(WriteError::Failed(format!("{} after {tries} retries", outcome.why)));
                }
                tries += 1;
                tracing::info!(error = %outcome.why, items = todo.len(), "OpenSearch asks to retry");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
        match self.on_malformed.as_str() {
            // Dropped without a word, or with one; the task goes on either way.
            "ignore" => Ok(Vec::new()),
            "warn" => {
                for (i, why) in &refused {
                    tracing::warn!(error = %why, topic = %records[*i].topic, offset = ?records[*i].offset, "document refused; skipped");
                }
                Ok(Vec::new())
            }
            _ => Ok(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_connect::Data;

    #[test]
    fn urls_and_ids() {
        assert_eq!(http_host("http://127.0.0.1:9201/", 9200).unwrap(), "127.0.0.1:9201");
        assert_eq!(http_host("http://search", 9200).unwrap(), "search:9200");
        assert!(http_host("https://search:9200", 9200).unwrap_err().contains("no TLS"));
        assert!(http_host("http://search:9200/prefix", 9200).is_err());
        let r = ConnectRecord {
            topic: "Orders".into(),
            partition: Some(1),
            offset: Some(7),
            key: Data::plain(json!({"id": 3})),
            ..Default::default()
        };
        assert_eq!(doc_id(&r, false).as_deref(), Some(r#"{"id":3}"#));
        assert_eq!(doc_id(&r, true).as_deref(), Some("Orders+1+7"));
    }

    #[test]
    fn bulk_lines_index_upsert_delete_and_refuse() {
        let mut b = Bulk {
            http: Http {
                hosts: vec![],
                next: 0,
                conn: None,
                auth: None,
                timeout: Duration::ZERO,
                connect_timeout: Duration::ZERO,
            },
            key_ignore: false,
            upsert: false,
            on_null: "delete".into(),
            on_malformed: "fail".into(),
            max_retries: 0,
            backoff: Duration::ZERO,
            batch: 10,
        };
        let rec = |key: Value, value: Value| ConnectRecord {
            topic: "Orders".into(),
            key: Data::plain(key),
            value: Data::plain(value),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(b.lines(&rec(json!("k1"), json!({"a": 1})), &mut out).unwrap());
        assert!(b.lines(&rec(json!("k2"), Value::Null), &mut out).unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"index\":{\"_id\":\"k1\",\"_index\":\"orders\"}}\n{\"a\":1}\n{\"delete\":{\"_id\":\"k2\",\"_index\":\"orders\"}}\n"
        );
        assert!(b.lines(&rec(json!("k"), json!([1])), &mut Vec::new()).unwrap_err().contains("JSON object"));
        assert!(b.lines(&rec(Value::Null, Value::Null), &mut Vec::new()).is_err());
        b.upsert = true;
        let mut out = Vec::new();
        b.lines(&rec(json!("k1"), json!({"a": 1})), &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("\"doc_as_upsert\":true"));
    }
}
