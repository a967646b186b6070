//! postgres-source: PostgreSQL tables into topics, as [`crate::source`] origins (each batch
//! and the position it reaches in one Sluice transaction).
//!
//! - Query modes (Kafka's JDBC source): `bulk` copies each table every poll; `incrementing`,
//!   `timestamp` and `timestamp+incrementing` select the rows after the last position, in
//!   its order. A task reads its share of the tables in turn. Positions:
//!   `{"incrementing": n}`, `{"timestamp": "<as PostgreSQL prints it>", "incrementing": n}`.
//! - `cdc`: logical replication with `pgoutput`, read through
//!   `pg_logical_slot_peek_binary_changes` (whole transactions, up to the WAL position read
//!   just before), written out, then the slot advanced past them. The position is the end
//!   LSN of the last transaction written (`{"lsn": n}`); a transaction at or below it is
//!   skipped, so a crash between the Sluice commit and the slot's advance writes nothing
//!   twice. Events have Debezium's layout; a delete is followed by a tombstone. The initial
//!   snapshot reads every table in one REPEATABLE READ transaction after the slot exists;
//!   rows changed between the slot's creation and the snapshot come once in the snapshot and
//!   again as changes (same key, same final state), and a snapshot cut short is taken again.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_connect::config::{self, ConnectorConfig};
use sluice_connect::pgoutput::{self, Cell, Column, Message};
use sluice_connect::{ConnectRecord, Data};
use tokio_postgres::{Client as Pg, SimpleQueryMessage};

use crate::postgres::{connect, ident, pg_error};
use crate::source::{Batch, Origin, run_source};
use crate::tasks::Ctx;

pub(crate) async fn source(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<(), String> {
    let pg = connect(cfg).await?;
    // Timestamps without a time zone are compared with now() as UTC.
    pg.batch_execute("SET TIME ZONE 'UTC'").await.map_err(|e| pg_error("setting the time zone", e))?;
    let all = config::list(cfg.get("table.whitelist").unwrap_or_default());
    let int = |k: &str, d: i64| cfg.int(k).unwrap_or(d).max(0) as u64;
    let common = Common {
        pg,
        prefix: cfg.get("topic.prefix").unwrap_or_default().to_string(),
        batch: int("batch.max.rows", 1000) as usize,
        poll: Duration::from_millis(int("poll.interval.ms", 5000)),
    };
    match cfg.get("mode").unwrap_or_default() {
        "cdc" => {
            let default = format!("sluice_{}", sanitize(&ctx.id.connector));
            let name = |k: &str| cfg.get(k).filter(|v| !v.is_empty()).map_or_else(|| default.clone(), String::from);
            let origin = Cdc {
                c: common,
                slot: name("slot.name"),
                publication: name("publication.name"),
                snapshot_initial: cfg.get("snapshot.mode") != Some("never"),
                listed: all,
                connector: ctx.id.connector.clone(),
                db: String::new(),
                topics: HashMap::new(),
                relations: HashMap::new(),
                lsn: 0,
                pending: None,
                snapshot: None,
            };
            run_source(ctx, cfg, origin).await
        }
        mode => {
            // Task t of n reads tables t, t + n, ...
            let n = cfg.tasks_max.max(1) as usize;
            let mine: Vec<String> = all.into_iter().skip(ctx.id.task as usize).step_by(n).collect();
            let origin = Query {
                c: common,
                mode: mode.to_string(),
                incrementing: cfg.get("incrementing.column.name").unwrap_or_default().to_string(),
                timestamp: cfg.get("timestamp.column.name").unwrap_or_default().to_string(),
                delay_ms: int("timestamp.delay.interval.ms", 0) as i64,
                tables: mine.into_iter().map(|listed| Table { listed, ..Default::default() }).collect(),
                next: 0,
                bulk: None,
            };
            run_source(ctx, cfg, origin).await
        }
    }
}

/// A connector name as part of a slot or publication name.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

struct Common {
    pg: Pg,
    prefix: String,
    batch: usize,
    poll: Duration,
}

impl Common {
    /// A table's columns (key: part of its primary key) and its name as PostgreSQL quotes it.
    async fn columns(&self, table: &str) -> Result<(String, Vec<Column>), String> {
        let rows = self
            .pg
            .query(
                "SELECT $1::text::regclass::text, a.attname::text, a.atttypid::int8, \
                   COALESCE(a.attnum = ANY(i.indkey), false) \
                 FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(|e| pg_error(&format!("table '{table}'"), e))?;
        let quoted =
            rows.first().map(|r| r.get::<_, String>(0)).ok_or_else(|| format!("table '{table}' has no columns"))?;
        let columns = rows
            .iter()
            .map(|r| Column { name: r.get(1), type_oid: r.get::<_, i64>(2) as u32, key: r.get(3) })
            .collect();
        Ok((quoted, columns))
    }
}

/// A select list of every column (of the table aliased `src`) as text.
fn select_list(columns: &[Column]) -> String {
    columns.iter().map(|c| format!("src.{}::text", ident(&c.name))).collect::<Vec<_>>().join(", ")
}

#[derive(Default)]
struct Table {
    listed: String,
    /// Filled at the first read: the name as PostgreSQL quotes it, the columns, the query.
    quoted: String,
    columns: Vec<Column>,
    sql: String,
    incrementing: Option<usize>,
    timestamp: Option<usize>,
    /// The position: the last incrementing value and timestamp (text) written.
    last_id: i64,
    last_ts: String,
}

struct Query {
    c: Common,
    mode: String,
    incrementing: String,
    timestamp: String,
    delay_ms: i64,
    tables: Vec<Table>,
    /// The table read next (they take turns).
    next: usize,
    /// bulk: when the last copy of every table began.
    bulk: Option<tokio::time::Instant>,
}

impl Query {
    async fn prepare(&self, t: &mut Table) -> Result<(), String> {
        let (quoted, columns) = self.c.columns(&t.listed).await?;
        let find = |name: &str| -> Result<Option<usize>, String> {
            if name.is_empty() {
                return Ok(None);
            }
            columns
                .iter()
                .position(|c| c.name == name)
                .map(Some)
                .ok_or_else(|| format!("table '{}' has no column '{name}'", t.listed))
        };
        t.incrementing = if self.mode.contains("incrementing") { find(&self.incrementing)? } else { None };
        t.timestamp = if self.mode.contains("timestamp") { find(&self.timestamp)? } else { None };
        let ts_type = match t.timestamp {
            Some(_) => {
                let row = self
                    .c
                    .pg
                    .query_one(
                        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                         WHERE attrelid = $1::text::regclass AND attname = $2",
                        &[&t.listed, &self.timestamp],
                    )
                    .await
                    .map_err(|e| pg_error(&format!("table '{}'", t.listed), e))?;
                row.get::<_, String>(0)
            }
            None => String::new(),
        };
        let cols = select_list(&columns);
        // Conditions and order name the table's columns through its alias: the select list's
        // text casts carry the same names, and ORDER BY would sort by those texts.
        let (inc, ts) = (format!("src.{}", ident(&self.incrementing)), format!("src.{}", ident(&self.timestamp)));
        let from = format!("{quoted} AS src");
        let n = self.c.batch;
        // Rows newer than now minus the delay wait: a transaction may still commit older ones.
        let bound = format!("{ts} < (now() - $3::int8 * interval '1 millisecond')::{ts_type}");
        t.sql = match self.mode.as_str() {
            "bulk" => format!("SELECT {cols} FROM {from}"),
            "incrementing" => format!("SELECT {cols} FROM {from} WHERE {inc} > $1::int8 ORDER BY {inc} LIMIT {n}"),
            // Rows sharing the last timestamp of a batch all come in it: the next batch starts
            // after that timestamp.
            "timestamp" => format!(
                "WITH b AS (SELECT {ts} AS last FROM {from} WHERE {ts} > $2::text::{ts_type} AND {bound} \
                   ORDER BY {ts} LIMIT {n}) \
                 SELECT {cols} FROM {from} WHERE {ts} > $2::text::{ts_type} AND {ts} <= (SELECT max(last) FROM b) \
                   AND $1::int8 IS NOT NULL ORDER BY {ts}"
            ),
            _ => format!(
                "SELECT {cols} FROM {from} WHERE (({ts} = $2::text::{ts_type} AND {inc} > $1::int8) \
                   OR {ts} > $2::text::{ts_type}) AND {bound} ORDER BY {ts}, {inc} LIMIT {n}"
            ),
        };
        t.quoted = quoted;
        t.columns = columns;
        Ok(())
    }

    /// The rows of table `i` after its position, as records with the position they reach.
    async fn read_table(&mut self, i: usize) -> Result<Batch, String> {
        if self.tables[i].sql.is_empty() {
            let mut t = std::mem::take(&mut self.tables[i]);
            let prepared = self.prepare(&mut t).await;
            self.tables[i] = t;
            prepared?;
        }
        let t = &self.tables[i];
        let rows = match self.mode.as_str() {
            "bulk" => self.c.pg.query(&t.sql, &[]).await,
            "incrementing" => self.c.pg.query(&t.sql, &[&t.last_id]).await,
            // Both timestamp modes: $1 (unused by timestamp alone), $2 and $3.
            _ => self.c.pg.query(&t.sql, &[&t.last_id, &t.last_ts, &self.delay_ms]).await,
        }
        .map_err(|e| pg_error(&format!("reading '{}'", t.listed), e))?;
        let cols: Vec<&Column> = t.columns.iter().collect();
        let schema = pgoutput::struct_schema(&t.listed, &cols, false);
        let topic = format!("{}{}", self.c.prefix, t.listed);
        let now = sluice_core::settings::now_ms();
        let (mut last_id, mut last_ts) = (t.last_id, t.last_ts.clone());
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let texts: Vec<Option<String>> = (0..t.columns.len()).map(|c| row.get(c)).collect();
            if let Some(c) = t.incrementing {
                let text = texts[c].as_deref().unwrap_or_default();
                last_id = text
                    .parse()
                    .map_err(|_| format!("'{}' of '{}' is not an integer: {text:?}", self.incrementing, t.listed))?;
            }
            if let Some(c) = t.timestamp {
                last_ts = texts[c].clone().unwrap_or(last_ts);
            }
            let cells: Vec<Cell> = texts.into_iter().map(|v| v.map_or(Cell::Null, Cell::Text)).collect();
            // Query-mode fields are optional unless NOT NULL is known: as written by `row`.
            let value = pgoutput::row(&t.columns, &cells, false);
            records.push(ConnectRecord {
                topic: topic.clone(),
                value: Data { schema: Some(schema.clone()), value },
                timestamp_ms: now,
                ..Default::default()
            });
        }
        if records.is_empty() {
            return Ok(Batch::default());
        }
        let offset = match self.mode.as_str() {
            "bulk" => None,
            "incrementing" => Some(json!({ "incrementing": last_id })),
            "timestamp" => Some(json!({ "timestamp": last_ts })),
            _ => Some(json!({ "timestamp": last_ts, "incrementing": last_id })),
        };
        let t = &mut self.tables[i];
        (t.last_id, t.last_ts) = (last_id, last_ts);
        Ok(Batch { records, offsets: offset.map(|o| vec![(i, o)]).unwrap_or_default() })
    }
}

impl Origin for Query {
    fn partitions(&self) -> Vec<Value> {
        self.tables.iter().map(|t| json!({ "table": t.listed })).collect()
    }

    async fn open(&mut self, committed: Vec<Option<Value>>) -> Result<(), String> {
        for (t, o) in self.tables.iter_mut().zip(committed) {
            let o = o.unwrap_or(Value::Null);
            t.last_id = o.get("incrementing").and_then(Value::as_i64).unwrap_or(i64::MIN);
            t.last_ts = o.get("timestamp").and_then(Value::as_str).unwrap_or("-infinity").to_string();
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<Batch, String> {
        if self.tables.is_empty() {
            return Ok(Batch::default());
        }
        if self.mode == "bulk" {
            // Every table once per poll interval, one table per batch.
            if self.next == 0 {
                if self.bulk.is_some_and(|b| b.elapsed() < self.c.poll) {
                    return Ok(Batch::default());
                }
                self.bulk = Some(tokio::time::Instant::now());
            }
            let i = self.next;
            self.next = (self.next + 1) % self.tables.len();
            return self.read_table(i).await;
        }
        for _ in 0..self.tables.len() {
            let i = self.next;
            self.next = (self.next + 1) % self.tables.len();
            let batch = self.read_table(i).await?;
            if !batch.records.is_empty() {
                return Ok(batch);
            }
        }
        Ok(Batch::default())
    }

    fn idle(&self) -> Duration {
        match self.mode.as_str() {
            // The interval is kept by `read`; this is how soon it looks again.
            "bulk" => self.c.poll.min(Duration::from_millis(200)),
            _ => self.c.poll,
        }
    }
}

/// A relation as the stream described it, with where its events go.
struct Relation {
    schema: String,
    name: String,
    columns: Vec<Column>,
    topic: String,
    /// Built once: the key's schema (None without key columns) and the event envelope's.
    key_schema: Option<Value>,
    envelope: Value,
}

impl Relation {
    fn new(schema: String, name: String, columns: Vec<Column>, topic: String) -> Self {
        let keys: Vec<&Column> = columns.iter().filter(|c| c.key).collect();
        let key_schema = (!keys.is_empty()).then(|| pgoutput::struct_schema(&format!("{topic}.Key"), &keys, false));
        let all: Vec<&Column> = columns.iter().collect();
        let row_schema = pgoutput::struct_schema(&format!("{topic}.Value"), &all, true);
        let mut before = row_schema.clone();
        before["field"] = "before".into();
        let mut after = row_schema;
        after["field"] = "after".into();
        let source = json!({"type": "struct", "name": "io.debezium.connector.postgresql.Source", "optional": false,
            "field": "source", "fields": [
            {"field": "version", "type": "string", "optional": false},
            {"field": "connector", "type": "string", "optional": false},
            {"field": "name", "type": "string", "optional": false},
            {"field": "ts_ms", "type": "int64", "optional": false},
            {"field": "snapshot", "type": "string", "optional": true},
            {"field": "db", "type": "string", "optional": false},
            {"field": "schema", "type": "string", "optional": false},
            {"field": "table", "type": "string", "optional": false},
            {"field": "txId", "type": "int64", "optional": true},
            {"field": "lsn", "type": "int64", "optional": true},
        ]});
        let envelope = json!({"type": "struct", "name": format!("{topic}.Envelope"), "optional": false, "fields": [
            before, after, source,
            {"field": "op", "type": "string", "optional": false},
            {"field": "ts_ms", "type": "int64", "optional": true},
        ]});
        Self { schema, name, columns, topic, key_schema, envelope }
    }

    /// A change event, and the tombstone that follows a delete.
    fn events(
        &self,
        op: &str,
        key_cells: &[Cell],
        before: Option<Value>,
        after: Option<Value>,
        source: Value,
        out: &mut Vec<ConnectRecord>,
    ) {
        let key = match &self.key_schema {
            None => Data::default(),
            Some(schema) => Data { schema: Some(schema.clone()), value: pgoutput::row(&self.columns, key_cells, true) },
        };
        let now = sluice_core::settings::now_ms();
        let value = json!({"before": before, "after": after, "source": source, "op": op, "ts_ms": now});
        let tombstone = (op == "d" && self.key_schema.is_some()).then(|| ConnectRecord {
            topic: self.topic.clone(),
            key: key.clone(),
            timestamp_ms: now,
            ..Default::default()
        });
        out.push(ConnectRecord {
            topic: self.topic.clone(),
            key,
            value: Data { schema: Some(self.envelope.clone()), value },
            timestamp_ms: now,
            ..Default::default()
        });
        // A compacted topic forgets the row.
        out.extend(tombstone);
    }
}

/// The initial snapshot under way: the tables still to read, in one transaction.
struct Snapshot {
    tables: VecDeque<String>,
    /// The table whose cursor is open.
    current: Option<(String, Vec<Column>)>,
    /// The slot's position: where streaming starts once the snapshot is written.
    lsn: u64,
}

struct Cdc {
    c: Common,
    slot: String,
    publication: String,
    snapshot_initial: bool,
    listed: Vec<String>,
    connector: String,
    db: String,
    /// "schema.table" to the topic of its events.
    topics: HashMap<String, String>,
    relations: HashMap<u32, Relation>,
    /// The end LSN of the last transaction written.
    lsn: u64,
    /// The LSN the slot moves to once the batch read is committed.
    pending: Option<u64>,
    snapshot: Option<Snapshot>,
}

const SNAPSHOT_CURSOR: &str = "sluice_snapshot";

impl Cdc {
    fn source(&self, schema: &str, table: &str, ts_ms: i64, snapshot: bool, xid: Option<u32>, lsn: u64) -> Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": self.c.prefix,
            "ts_ms": ts_ms,
            "snapshot": if snapshot { "true" } else { "false" },
            "db": self.db,
            "schema": schema,
            "table": table,
            "txId": xid,
            "lsn": lsn,
        })
    }

    async fn simple(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let msgs = self.c.pg.simple_query(sql).await.map_err(|e| pg_error(sql, e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect()),
                _ => None,
            })
            .collect())
    }

    async fn read_snapshot(&mut self) -> Result<Batch, String> {
        let Some(snap) = self.snapshot.as_mut() else { return Ok(Batch::default()) };
        let (table, columns) = match snap.current.clone() {
            Some(c) => c,
            None => match snap.tables.pop_front() {
                None => {
                    let lsn = snap.lsn;
                    self.c.pg.batch_execute("COMMIT").await.map_err(|e| pg_error("ending the snapshot", e))?;
                    self.snapshot = None;
                    tracing::info!(slot = %self.slot, "snapshot written; streaming changes");
                    self.lsn = lsn;
                    return Ok(Batch { records: vec![], offsets: vec![(0, json!({ "lsn": lsn }))] });
                }
                Some(table) => {
                    let (quoted, columns) = self.c.columns(&table).await?;
                    self.c
                        .pg
                        .batch_execute(&format!(
                            "DECLARE {SNAPSHOT_CURSOR} NO SCROLL CURSOR FOR SELECT {} FROM {quoted} AS src",
                            select_list(&columns)
                        ))
                        .await
                        .map_err(|e| pg_error(&format!("snapshot of '{table}'"), e))?;
                    let current = (table, columns);
                    snap.current = Some(current.clone());
                    current
                }
            },
        };
        let lsn = snap.lsn;
        let rows = self.simple(&format!("FETCH {} FROM {SNAPSHOT_CURSOR}", self.c.batch)).await?;
        if rows.len() < self.c.batch {
            self.c.pg.batch_execute(&format!("CLOSE {SNAPSHOT_CURSOR}")).await.map_err(|e| pg_error("snapshot", e))?;
            if let Some(s) = self.snapshot.as_mut() {
                s.current = None;
            }
        }
        let (schema, name) = split_name(&self.topic_key(&table));
        let rel = Relation::new(schema, name, columns, format!("{}{table}", self.c.prefix));
        let now = sluice_core::settings::now_ms();
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let cells: Vec<Cell> = row.into_iter().map(|v| v.map_or(Cell::Null, Cell::Text)).collect();
            let after = pgoutput::row(&rel.columns, &cells, false);
            let source = self.source(&rel.schema, &rel.name, now, true, None, lsn);
            rel.events("r", &cells, None, Some(after), source, &mut records);
        }
        // A snapshot cut short is taken again: its batches carry no position.
        Ok(Batch { records, offsets: vec![] })
    }

    /// The "schema.table" a listed table is.
    fn topic_key(&self, listed: &str) -> String {
        let topic = format!("{}{listed}", self.c.prefix);
        self.topics.iter().find(|(_, t)| **t == topic).map(|(k, _)| k.clone()).unwrap_or_default()
    }

    async fn read_changes(&mut self) -> Result<Batch, String> {
        // Read up to the WAL position of now only: when nothing comes back, the slot can move
        // there (other tables' and databases' writes are not held for ever).
        let upto: String = self
            .c
            .pg
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg_error("reading the WAL position", e))?
            .get(0);
        let rows = self
            .c
            .pg
            .query(
                "SELECT (lsn - '0/0'::pg_lsn)::int8, data FROM pg_logical_slot_peek_binary_changes(\
                   $1, $2::text::pg_lsn, $3, 'proto_version', '1', 'publication_names', $4)",
                &[&self.slot, &upto, &(self.c.batch.min(i32::MAX as usize) as i32), &self.publication],
            )
            .await
            .map_err(|e| pg_error(&format!("reading slot '{}'", self.slot), e))?;
        let mut records = Vec::new();
        let mut tx: Vec<ConnectRecord> = Vec::new();
        let (mut xid, mut commit_ms) = (0u32, 0i64);
        let mut last_end = None;
        for row in &rows {
            let lsn = row.get::<_, i64>(0) as u64;
            let data: &[u8] = row.get(1);
            match pgoutput::decode(data).map_err(|e| e.to_string())? {
                Message::Begin { commit_time, xid: x, .. } => {
                    (xid, commit_ms) = (x, pgoutput::unix_ms(commit_time));
                    tx.clear();
                }
                Message::Commit { end_lsn, .. } => {
                    // At or below the position: written before a crash that kept the slot back.
                    if end_lsn > self.lsn {
                        records.append(&mut tx);
                        last_end = Some(end_lsn);
                    }
                    tx.clear();
                }
                Message::Relation { oid, schema, name, mut columns } => {
                    // The stream marks the replica identity, which is every column under
                    // REPLICA IDENTITY FULL: events are keyed by the primary key when there is one.
                    let pk = self.primary_key(oid).await?;
                    if !pk.is_empty() {
                        for c in &mut columns {
                            c.key = pk.contains(&c.name);
                        }
                    }
                    let key = format!("{schema}.{name}");
                    let topic = self.topics.get(&key).cloned().unwrap_or_else(|| format!("{}{key}", self.c.prefix));
                    self.relations.insert(oid, Relation::new(schema, name, columns, topic));
                }
                Message::Insert { relation, new } => {
                    let rel = self.relation(relation)?;
                    let after = pgoutput::row(&rel.columns, &new, false);
                    let source = self.source(&rel.schema, &rel.name, commit_ms, false, Some(xid), lsn);
                    rel.events("c", &new, None, Some(after), source, &mut tx);
                }
                Message::Update { relation, old, new } => {
                    let rel = self.relation(relation)?;
                    let source = self.source(&rel.schema, &rel.name, commit_ms, false, Some(xid), lsn);
                    let after = pgoutput::row(&rel.columns, &new, false);
                    let old_key = old.as_ref().map(|(_, cells)| pgoutput::row(&rel.columns, cells, true));
                    let new_key = pgoutput::row(&rel.columns, &new, true);
                    match old {
                        // The key changed: the old row is deleted and the new one created, as
                        // Debezium does, so each key's events stay on its own.
                        Some((_, cells)) if old_key.as_ref() != Some(&new_key) => {
                            let before = pgoutput::row(&rel.columns, &cells, false);
                            rel.events("d", &cells, Some(before), None, source.clone(), &mut tx);
                            rel.events("c", &new, None, Some(after), source, &mut tx);
                        }
                        Some((kind, cells)) => {
                            let before = (kind == 'O').then(|| pgoutput::row(&rel.columns, &cells, false));
                            rel.events("u", &new, before, Some(after), source, &mut tx);
                        }
                        None => rel.events("u", &new, None, Some(after), source, &mut tx),
                    }
                }
                Message::Delete { relation, old: (_, cells) } => {
                    let rel = self.relation(relation)?;
                    let source = self.source(&rel.schema, &rel.name, commit_ms, false, Some(xid), lsn);
                    let before = pgoutput::row(&rel.columns, &cells, false);
                    rel.events("d", &cells, Some(before), None, source, &mut tx);
                }
                Message::Truncate { relations } => {
                    tracing::warn!(?relations, "TRUNCATE is not streamed (Debezium skips it by default too)");
                }
                Message::Other(_) => {}
            }
        }
        match last_end {
            Some(end) => {
                self.pending = Some(end);
                Ok(Batch { records, offsets: vec![(0, json!({ "lsn": end }))] })
            }
            None => {
                if rows.is_empty() {
                    self.advance(&upto).await?;
                }
                Ok(Batch::default())
            }
        }
    }

    async fn primary_key(&self, oid: u32) -> Result<Vec<String>, String> {
        let rows = self
            .c
            .pg
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a                    ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)                  WHERE i.indrelid = $1::int8::oid AND i.indisprimary",
                &[&i64::from(oid)],
            )
            .await
            .map_err(|e| pg_error(&format!("the primary key of relation {oid}"), e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn relation(&self, oid: u32) -> Result<&Relation, String> {
        self.relations.get(&oid).ok_or_else(|| format!("a change of relation {oid}, which the stream never described"))
    }

    /// Moves the slot to `lsn` when that is ahead of it.
    async fn advance(&self, lsn: &str) -> Result<(), String> {
        self.c
            .pg
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&self.slot, &lsn],
            )
            .await
            .map_err(|e| pg_error(&format!("advancing slot '{}'", self.slot), e))?;
        Ok(())
    }
}

/// "schema.table" in its two parts.
fn split_name(qualified: &str) -> (String, String) {
    match qualified.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), qualified.to_string()),
    }
}

impl Origin for Cdc {
    fn partitions(&self) -> Vec<Value> {
        vec![json!({ "slot": self.slot })]
    }

    async fn open(&mut self, committed: Vec<Option<Value>>) -> Result<(), String> {
        let pg = &self.c.pg;
        self.db = pg
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(|e| pg_error("reading the database name", e))?
            .get(0);
        let mut quoted = Vec::new();
        for listed in &self.listed {
            let row = pg
                .query_one(
                    "SELECT n.nspname::text, c.relname::text, $1::text::regclass::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::text::regclass",
                    &[listed],
                )
                .await
                .map_err(|e| pg_error(&format!("table '{listed}'"), e))?;
            let (schema, name, q): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            self.topics.insert(format!("{schema}.{name}"), format!("{}{listed}", self.c.prefix));
            quoted.push(q);
        }
        let publication = pg
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&self.publication])
            .await
            .map_err(|e| pg_error("reading publications", e))?;
        if publication.is_none() {
            pg.batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(&self.publication),
                quoted.join(", ")
            ))
            .await
            .map_err(|e| pg_error(&format!("creating publication '{}'", self.publication), e))?;
        }
        let slot = pg
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| pg_error("reading replication slots", e))?;
        let (slot_lsn, created) = match slot {
            Some(row) => (row.get::<_, Option<i64>>(0).unwrap_or(0) as u64, false),
            None => {
                let row = pg
                    .query_one(
                        "SELECT (lsn - '0/0'::pg_lsn)::int8 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&self.slot],
                    )
                    .await
                    .map_err(|e| pg_error(&format!("creating replication slot '{}'", self.slot), e))?;
                (row.get::<_, i64>(0) as u64, true)
            }
        };
        match committed.into_iter().next().flatten().and_then(|o| o.get("lsn")?.as_u64()) {
            Some(lsn) => {
                if created {
                    tracing::warn!(slot = %self.slot, "the replication slot was missing and is created again: changes since the last position are lost");
                }
                self.lsn = lsn;
                // Written before a crash that kept the slot back: move it now, or the same
                // transactions would be read (and skipped) at every poll.
                self.advance(&pgoutput::lsn_text(lsn)).await?;
            }
            None if self.snapshot_initial => {
                pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| pg_error("starting the snapshot", e))?;
                self.snapshot =
                    Some(Snapshot { tables: self.listed.iter().cloned().collect(), current: None, lsn: slot_lsn });
                tracing::info!(slot = %self.slot, tables = self.listed.len(), "taking the initial snapshot");
            }
            None => self.lsn = slot_lsn,
        }
        tracing::info!(connector = %self.connector, slot = %self.slot, publication = %self.publication, "streaming changes");
        Ok(())
    }

    async fn read(&mut self) -> Result<Batch, String> {
        match self.snapshot.is_some() {
            true => self.read_snapshot().await,
            false => self.read_changes().await,
        }
    }

    async fn committed(&mut self) -> Result<(), String> {
        if let Some(end) = self.pending.take() {
            self.lsn = end;
            self.advance(&pgoutput::lsn_text(end)).await?;
        }
        Ok(())
    }

    fn idle(&self) -> Duration {
        self.c.poll
    }
}
