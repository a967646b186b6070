//! postgres-sink: records as rows of PostgreSQL tables, exactly once.
//!
//! Each batch of rows and the offsets it reaches are written in one PostgreSQL transaction;
//! the offsets live in the table `__sluice_connect_offsets` (connector, topic, partition,
//! next offset), and a task resumes every partition from there, whatever the group's commits
//! say. An offset row only moves from the value this task read (a compare-and-set): a task
//! that lost its partition to another and writes late finds it moved, rolls back, and
//! resumes from the new position, so no row is written twice and none is lost.
//!
//! Values are JSON objects (structs); their fields are the columns. Parameters travel as
//! text and are cast to each column's type, so any type PostgreSQL can read from text works.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use sluice_connect::ConnectRecord;
use sluice_connect::config::{self, ConnectorConfig};
use tokio_postgres::{Client as Pg, NoTls};

use crate::tasks::{Ctx, Target, WriteError, run_sink};

const OFFSETS_TABLE: &str = "__sluice_connect_offsets";

pub(crate) async fn sink(ctx: &Ctx, cfg: &ConnectorConfig) -> Result<(), String> {
    let mut pg = connect(cfg).await?;
    // Concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL: one creator at a time.
    let tx = pg.transaction().await.map_err(|e| pg_error("starting a transaction", e))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('{OFFSETS_TABLE}')); \
         CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (connector text NOT NULL, topic text NOT NULL, \
         partition integer NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (connector, topic, partition))"
    ))
    .await
    .map_err(|e| pg_error(&format!("creating {OFFSETS_TABLE}"), e))?;
    tx.commit().await.map_err(|e| pg_error(&format!("creating {OFFSETS_TABLE}"), e))?;
    let target = PgTarget {
        pg,
        st: PgState {
            connector: ctx.id.connector.clone(),
            table_format: cfg.get("table.name.format").unwrap_or("${topic}").to_string(),
            upsert: cfg.get("insert.mode") == Some("upsert"),
            pk_mode: cfg.get("pk.mode").unwrap_or("none").to_string(),
            pk_fields: config::list(cfg.get("pk.fields").unwrap_or_default()),
            delete: cfg.get("delete.enabled") == Some("true"),
            auto_create: cfg.get("auto.create") == Some("true"),
            auto_evolve: cfg.get("auto.evolve") == Some("true"),
            columns: HashMap::new(),
            positions: HashMap::new(),
        },
    };
    run_sink(ctx, cfg, target).await
}

pub(crate) async fn connect(cfg: &ConnectorConfig) -> Result<Pg, String> {
    let url = cfg.get("connection.url").unwrap_or_default();
    let url = url.strip_prefix("jdbc:").unwrap_or(url);
    let mut pg: tokio_postgres::Config = url.parse().map_err(|e| pg_error("connection.url", e))?;
    if let Some(u) = cfg.get("connection.user").filter(|u| !u.is_empty()) {
        pg.user(u);
    }
    if let Some(p) = cfg.get("connection.password").filter(|p| !p.is_empty()) {
        pg.password(p);
    }
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| pg_error("connecting to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// What PostgreSQL said (tokio-postgres's own text is only "db error").
pub(crate) fn pg_error(what: &str, e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => format!("{what}: {e}"),
    }
}

/// A double-quoted identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A single-quoted string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A value as the text PostgreSQL reads it from (None: NULL).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The column type a new column gets: from the field's Kafka Connect schema type when there
/// is one, else from the JSON value.
fn column_type(schema: Option<&Value>, v: &Value) -> &'static str {
    match schema.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("int8" | "int16" | "int32" | "int64") => "bigint",
        Some("float32" | "float64") => "double precision",
        Some("boolean") => "boolean",
        Some("string") => "text",
        Some("struct" | "map" | "array") => "jsonb",
        Some("bytes") => "text",
        _ => match v {
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "bigint",
            Value::Number(_) => "double precision",
            Value::Object(_) | Value::Array(_) => "jsonb",
            _ => "text",
        },
    }
}

/// One row: column name, value text, and the schema of its field when known.
type Row = Vec<(String, Option<String>, Option<Value>, Value)>;

struct PgTarget {
    pg: Pg,
    st: PgState,
}

struct PgState {
    connector: String,
    table_format: String,
    upsert: bool,
    pk_mode: String,
    pk_fields: Vec<String>,
    delete: bool,
    auto_create: bool,
    auto_evolve: bool,
    /// Each table's columns and their type (udt) names, as last read.
    columns: HashMap<String, BTreeMap<String, String>>,
    /// The next offset of each partition as this task read or wrote it in the table.
    positions: HashMap<(String, u32), Option<i64>>,
}

impl PgState {
    fn table(&self, topic: &str) -> String {
        self.table_format.replace("${topic}", topic)
    }

    /// The key columns of a record (name, text), per pk.mode.
    fn key_columns(&self, r: &ConnectRecord) -> Result<Row, String> {
        let fields = |data: &sluice_connect::Data, wanted: &[String]| -> Result<Row, String> {
            let Value::Object(m) = &data.value else {
                return Err(format!("a {} key needs an object, got {}", self.pk_mode, data.value));
            };
            let names: Vec<String> = if wanted.is_empty() { m.keys().cloned().collect() } else { wanted.to_vec() };
            names
                .into_iter()
                .map(|n| {
                    let v = m.get(&n).cloned().ok_or_else(|| format!("the primary key field '{n}' is missing"))?;
                    let schema = field_schema(data.schema.as_ref(), &n);
                    Ok((n, text(&v), schema, v))
                })
                .collect()
        };
        match self.pk_mode.as_str() {
            "record_key" => match &r.key.value {
                Value::Object(_) => fields(&r.key, &self.pk_fields),
                Value::Null => Err("pk.mode=record_key, but the record has no key".into()),
                v => {
                    let name = self.pk_fields.first().cloned().unwrap_or_else(|| "__connect_key".into());
                    Ok(vec![(name, text(v), r.key.schema.clone(), v.clone())])
                }
            },
            "record_value" => fields(&r.value, &self.pk_fields),
            _ => Ok(vec![]),
        }
    }

    /// The columns of a table (empty when it does not exist).
    async fn load_columns(&mut self, tx: &tokio_postgres::Transaction<'_>, table: &str) -> Result<(), String> {
        let rows = tx
            .query(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                &[&table],
            )
            .await
            .map_err(|e| pg_error(&format!("reading the columns of {table}"), e))?;
        let cols = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect();
        self.columns.insert(table.to_string(), cols);
        Ok(())
    }

    /// Makes sure `table` has every column of `row` (creating or evolving it when allowed).
    async fn fit(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &str,
        row: &Row,
        keys: &[String],
    ) -> Result<(), String> {
        if !self.columns.contains_key(table) {
            self.load_columns(tx, table).await?;
        }
        let have = self.columns.get(table).cloned().unwrap_or_default();
        if have.is_empty() {
            if !self.auto_create {
                return Err(format!("table {table} does not exist (set auto.create=true to create it)"));
            }
            let cols: Vec<String> =
                row.iter().map(|(n, _, s, v)| format!("{} {}", ident(n), column_type(s.as_ref(), v))).collect();
            let pk = if keys.is_empty() {
                String::new()
            } else {
                format!(", PRIMARY KEY ({})", keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "))
            };
            let lock = format!("SELECT pg_advisory_xact_lock(hashtext({}))", literal(table));
            tx.batch_execute(&format!("{lock}; CREATE TABLE IF NOT EXISTS {} ({}{pk})", ident(table), cols.join(", ")))
                .await
                .map_err(|e| pg_error(&format!("creating table {table}"), e))?;
        } else {
            let missing: Vec<_> = row.iter().filter(|(n, ..)| !have.contains_key(n)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if !self.auto_evolve {
                let names: Vec<&str> = missing.iter().map(|(n, ..)| n.as_str()).collect();
                return Err(format!(
                    "table {table} has no column {} (set auto.evolve=true to add it)",
                    names.join(", ")
                ));
            }
            for (n, _, s, v) in missing {
                tx.batch_execute(&format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                    ident(table),
                    ident(n),
                    column_type(s.as_ref(), v)
                ))
                .await
                .map_err(|e| pg_error(&format!("adding column {n} to {table}"), e))?;
            }
        }
        // Types as PostgreSQL now has them (the transaction sees its own DDL).
        self.load_columns(tx, table).await
    }

    /// What writing `r` takes: nothing, a delete, or a row to insert with its neighbours.
    async fn prepare(&mut self, tx: &tokio_postgres::Transaction<'_>, r: &ConnectRecord) -> Result<Step, String> {
        let table = self.table(&r.topic);
        let keys = self.key_columns(r)?;
        let key_names: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
        if r.value.value.is_null() {
            if !self.delete {
                return Ok(Step::Skip);
            }
            if !self.columns.contains_key(&table) {
                self.load_columns(tx, &table).await?;
            }
            let types = self.columns.get(&table).cloned().unwrap_or_default();
            if types.is_empty() {
                return Ok(Step::Skip);
            }
            let cond: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, (n, ..))| format!("{} = (${}::text)::{}", ident(n), i + 1, cast(&types, n)))
                .collect();
            let sql = format!("DELETE FROM {} WHERE {}", ident(&table), cond.join(" AND "));
            return Ok(Step::Delete { table, sql, params: keys.into_iter().map(|k| k.1).collect() });
        }
        let Value::Object(m) = &r.value.value else {
            return Err(format!("a row needs an object value, got {}", r.value.value));
        };
        let mut row: Row =
            m.iter().map(|(n, v)| (n.clone(), text(v), field_schema(r.value.schema.as_ref(), n), v.clone())).collect();
        // A key column the value lacks (record_key) comes from the key.
        for k in &keys {
            if !row.iter().any(|c| c.0 == k.0) {
                row.push(k.clone());
            }
        }
        self.fit(tx, &table, &row, &key_names).await?;
        let types = self.columns.get(&table).cloned().unwrap_or_default();
        let key = keys.iter().map(|k| k.1.clone()).collect();
        Ok(Step::Insert(Insert {
            columns: row.iter().map(|c| (c.0.clone(), cast(&types, &c.0))).collect(),
            table,
            key_names,
            key,
            params: row.into_iter().map(|c| c.1).collect(),
        }))
    }

    /// Inserts `rows` (same table, same columns) in one statement.
    async fn insert(&self, tx: &tokio_postgres::Transaction<'_>, rows: &[Insert]) -> Result<(), String> {
        let Some(first) = rows.first() else { return Ok(()) };
        let names: Vec<String> = first.columns.iter().map(|c| ident(&c.0)).collect();
        let width = first.columns.len();
        let values: Vec<String> = (0..rows.len())
            .map(|r| {
                let cells: Vec<String> = first
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, cast))| format!("(${}::text)::{cast}", r * width + i + 1))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let table = &first.table;
        let mut sql = format!("INSERT INTO {} ({}) VALUES {}", ident(table), names.join(", "), values.join(", "));
        if self.upsert && !first.key_names.is_empty() {
            let updates: Vec<String> = first
                .columns
                .iter()
                .filter(|c| !first.key_names.contains(&c.0))
                .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.0)))
                .collect();
            let keys: Vec<String> = first.key_names.iter().map(|k| ident(k)).collect();
            sql.push_str(&format!(" ON CONFLICT ({}) ", keys.join(", ")));
            sql.push_str(&if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            });
        }
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            rows.iter().flat_map(|r| r.params.iter().map(|p| p as _)).collect();
        tx.execute(&sql, &refs).await.map_err(|e| pg_error(&format!("writing to {table}"), e))?;
        Ok(())
    }
}

/// What one record makes the sink do.
enum Step {
    Skip,
    Delete { table: String, sql: String, params: Vec<Option<String>> },
    Insert(Insert),
}

/// A row ready to insert.
struct Insert {
    table: String,
    /// Each column with the cast of its parameter.
    columns: Vec<(String, String)>,
    key_names: Vec<String>,
    /// The primary key's values (rows of one statement must not share one under upsert).
    key: Vec<Option<String>>,
    params: Vec<Option<String>>,
}

/// Most parameters of one statement (PostgreSQL's protocol allows 65,535).
const MAX_PARAMS: usize = 30_000;

/// The field's schema inside a struct schema, when there is one.
fn field_schema(schema: Option<&Value>, name: &str) -> Option<Value> {
    schema?.get("fields")?.as_array()?.iter().find(|f| f.get("field").and_then(Value::as_str) == Some(name)).cloned()
}

/// The cast to a column's type (text when unknown).
fn cast(types: &BTreeMap<String, String>, column: &str) -> String {
    ident(types.get(column).map_or("text", String::as_str))
}

impl Target for PgTarget {
    async fn resume(&mut self, topic: &str, partition: u32) -> Result<Option<i64>, String> {
        let row = self
            .pg
            .query_opt(
                &format!(
                    "SELECT next_offset FROM {OFFSETS_TABLE} WHERE connector = $1 AND topic = $2 AND partition = $3"
                ),
                &[&self.st.connector, &topic, &(partition as i32)],
            )
            .await
            .map_err(|e| pg_error(&format!("reading {OFFSETS_TABLE}"), e))?;
        let next = row.map(|r| r.get::<_, i64>(0));
        self.st.positions.insert((topic.to_string(), partition), next);
        // Nothing recorded yet: everything the group gives is new.
        Ok(Some(next.unwrap_or(0)))
    }

    /// One PostgreSQL transaction: the rows, then each partition's offset moved from the value
    /// this task read (refused as Moved when another task moved it).
    async fn write(
        &mut self,
        records: &[ConnectRecord],
        next: &BTreeMap<(String, u32), i64>,
    ) -> Result<Vec<(usize, String)>, WriteError> {
        let failed = WriteError::Failed;
        let st = &mut self.st;
        let tx = self.pg.transaction().await.map_err(|e| failed(pg_error("starting a PostgreSQL transaction", e)))?;
        // Rows go in multi-row statements: consecutive rows of one table and one set of
        // columns, in order, a delete or (under upsert) a key seen again closing the group.
        let mut group: Vec<Insert> = Vec::new();
        let mut keys = std::collections::HashSet::new();
        let written: Result<(), String> = async {
            for r in records {
                match st.prepare(&tx, r).await? {
                    Step::Skip => {}
                    Step::Delete { table, sql, params } => {
                        // The rows before it first: order is what the topic says.
                        st.insert(&tx, &std::mem::take(&mut group)).await?;
                        keys.clear();
                        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                            params.iter().map(|p| p as _).collect();
                        tx.execute(&sql, &refs).await.map_err(|e| pg_error(&format!("deleting from {table}"), e))?;
                    }
                    Step::Insert(i) => {
                        let fits = group.first().is_none_or(|f| f.table == i.table && f.columns == i.columns)
                            && (group.len() + 1) * i.params.len() <= MAX_PARAMS
                            && !(st.upsert && keys.contains(&i.key));
                        if !fits {
                            st.insert(&tx, &std::mem::take(&mut group)).await?;
                            keys.clear();
                        }
                        keys.insert(i.key.clone());
                        group.push(i);
                    }
                }
            }
            st.insert(&tx, &group).await
        }
        .await;
        if let Err(e) = written {
            // The cached columns may be what failed (a table changed by hand).
            st.columns.clear();
            return Err(failed(e));
        }
        for ((topic, partition), n) in next {
            let expected = st.positions.get(&(topic.clone(), *partition)).copied().flatten();
            let moved = match expected {
                Some(e) => {
                    tx.execute(
                        &format!(
                            "UPDATE {OFFSETS_TABLE} SET next_offset = $4 WHERE connector = $1 AND topic = $2 AND partition = $3 AND next_offset = $5"
                        ),
                        &[&st.connector, topic, &(*partition as i32), n, &e],
                    )
                    .await
                }
                None => {
                    tx.execute(
                        &format!("INSERT INTO {OFFSETS_TABLE} VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"),
                        &[&st.connector, topic, &(*partition as i32), n],
                    )
                    .await
                }
            }
            .map_err(|e| failed(pg_error(&format!("writing {OFFSETS_TABLE}"), e)))?;
            if moved != 1 {
                drop(tx);
                // Rolled back: tables or columns made in it are gone too.
                st.positions.clear();
                st.columns.clear();
                return Err(WriteError::Moved(format!(
                    "partition {partition} of '{topic}' was written by another task"
                )));
            }
        }
        tx.commit().await.map_err(|e| failed(pg_error("committing to PostgreSQL", e)))?;
        for (tp, n) in next {
            st.positions.insert(tp.clone(), Some(*n));
        }
        Ok(Vec::new())
    }
}
