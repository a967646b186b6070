//! The catalog of streams, tables and persistent queries, and what each statement does to
//! it. The engine does no I/O: it answers what must happen (a topic to create, a query to
//! start, a record to write, rows to show), so the stream-processor service and the test
//! runner carry it out the same way. Every instance applies the same statements in the same
//! order (the command topic) and so holds the same catalog.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_streams::{StreamsBuilder, Topology};

use crate::SqlError;
use crate::ast::{Emit, Explained, PropValue, Props, Query, SelectItem, ShowWhat, SourceKind, Statement};
use crate::expr::{EvalCtx, Scope, ScopeColumn, cast, compile};
use crate::format::Format;
use crate::parser::Parsed;
use crate::plan::{QueryPlan, SourceDef, encoder};
use crate::types::{Column, Row, Schema, SqlType, Value};

/// A running persistent query.
#[derive(Clone)]
pub struct QueryInfo {
    pub id: String,
    pub text: String,
    /// The stream or table it writes.
    pub sink: String,
    pub plan: QueryPlan,
    pub emit_final: bool,
}

impl QueryInfo {
    /// The query's Streams topology: its result encoded into its sink's topic.
    pub fn topology(&self, sink: &SourceDef) -> Topology {
        let b = StreamsBuilder::new();
        let out = self.plan.build(&b, self.emit_final);
        let enc = encoder(&sink.schema, sink.key_format, sink.value_format, sink.window);
        out.map(move |k, v| enc(&k, v.as_ref())).to(&sink.topic);
        b.build()
    }
}

/// What a statement asks to be done (one per statement: variant sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// A stream or table was declared; its topic is created when missing.
    Created {
        name: String,
        topic: String,
        partitions: u32,
    },
    /// A persistent query was added (run it: [`Engine::query`]); its sink's topic is created
    /// when missing.
    Started {
        id: String,
        topic: String,
        partitions: u32,
    },
    /// A record to write.
    Insert {
        topic: String,
        key: Option<Bytes>,
        value: Option<Bytes>,
        timestamp: Option<i64>,
    },
    /// A push query: run the plan and stream its rows (columns: the plan's output).
    Push {
        plan: QueryPlan,
        emit_final: bool,
    },
    /// A pull query: read `store` of query `query` and keep the rows `filter` accepts.
    Pull(Pull),
    /// Rows to show (SHOW, DESCRIBE, EXPLAIN).
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A stream or table dropped; its topic is deleted when asked.
    Dropped {
        name: String,
        delete_topic: Option<String>,
    },
    Terminated(Vec<String>),
}

/// A pull query over a table: its current rows, filtered and projected.
pub struct Pull {
    pub table: SourceDef,
    /// The persistent query materializing the table: its id, its result store and plan.
    pub writer: Option<(String, String, QueryPlan)>,
    where_: Option<crate::expr::Scalar>,
    project: Vec<crate::expr::Scalar>,
    pub columns: Vec<String>,
    limit: Option<u64>,
}

impl Pull {
    /// The result from the table's full rows (key columns, then value columns).
    pub fn select(&self, rows: impl IntoIterator<Item = Vec<Value>>) -> Vec<Vec<Value>> {
        let cx = EvalCtx::default();
        rows.into_iter()
            .filter(|row| self.where_.as_ref().is_none_or(|w| w.eval(row, &cx) == Value::Bool(true)))
            .take(self.limit.map_or(usize::MAX, |l| l as usize))
            .map(|row| self.project.iter().map(|e| e.eval(&row, &cx)).collect())
            .collect()
    }

    /// The table's full rows from its writer's store entries (an aggregation's states
    /// finished into its result rows).
    pub fn from_store(&self, entries: Vec<(Row, Row)>) -> Vec<Vec<Value>> {
        let Some((_, store, plan)) = &self.writer else { return Vec::new() };
        let aggregate = store.ends_with("-AGGREGATE");
        entries
            .into_iter()
            .filter_map(|(k, v)| {
                let value = if aggregate { plan.finish(&k, &v, None)? } else { v };
                let mut row = k.0;
                row.extend(value.0);
                Some(row)
            })
            .collect()
    }
}

/// The catalog.
#[derive(Clone)]
pub struct Engine {
    sources: BTreeMap<String, SourceDef>,
    queries: BTreeMap<String, QueryInfo>,
    next_query: u64,
    /// Partitions of topics a statement creates without saying.
    pub default_partitions: u32,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

const KNOWN_PROPS: &[&str] = &[
    "kafka_topic",
    "value_format",
    "key_format",
    "format",
    "partitions",
    "replicas",
    "timestamp",
    "timestamp_format",
    "value_delimiter",
    "wrap_single_value",
];

fn prop<'a>(props: &'a Props, name: &str) -> Option<&'a PropValue> {
    props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

impl Engine {
    pub fn new() -> Self {
        Self { sources: BTreeMap::new(), queries: BTreeMap::new(), next_query: 1, default_partitions: 1 }
    }

    pub fn source(&self, name: &str) -> Option<&SourceDef> {
        self.sources.get(name)
    }
    pub fn sources(&self) -> impl Iterator<Item = &SourceDef> {
        self.sources.values()
    }
    pub fn query(&self, id: &str) -> Option<&QueryInfo> {
        self.queries.get(id)
    }
    pub fn queries(&self) -> impl Iterator<Item = &QueryInfo> {
        self.queries.values()
    }

    /// Applies one statement to the catalog.
    pub fn execute(&mut self, p: &Parsed) -> Result<Outcome, SqlError> {
        match &p.statement {
            Statement::CreateSource { kind, name, or_replace, if_not_exists, columns, props } => {
                if let Some(existing) = self.existing(*kind, name, *or_replace, *if_not_exists)? {
                    return Ok(existing);
                }
                let def = self.declare(*kind, name, columns, props)?;
                let out = Outcome::Created { name: name.clone(), topic: def.topic.clone(), partitions: def.partitions };
                self.sources.insert(name.clone(), def);
                Ok(out)
            }
            Statement::CreateAs { kind, name, or_replace, if_not_exists, props, query } => {
                if let Some(existing) = self.existing(*kind, name, *or_replace, *if_not_exists)? {
                    return Ok(existing);
                }
                self.persistent(*kind, name, props, query, &p.text)
            }
            Statement::InsertSelect { target, query } => {
                let Some(t) = self.sources.get(target).cloned() else {
                    return Err(SqlError::NotFound(format!("stream {target} does not exist")));
                };
                if t.kind != SourceKind::Stream {
                    return Err(SqlError::Invalid(format!(
                        "INSERT INTO ... SELECT writes streams: {target} is a table"
                    )));
                }
                let id = format!("INSERTQUERY_{}", self.next_query);
                let plan = self.plan(&id, query)?;
                let same = plan.output().columns.len() == t.schema.columns.len()
                    && plan
                        .output()
                        .columns
                        .iter()
                        .zip(&t.schema.columns)
                        .all(|(a, b)| a.name == b.name && a.ty == b.ty && a.key == b.key);
                if !same {
                    return Err(SqlError::Type(format!(
                        "the query's columns ({}) are not {target}'s ({})",
                        describe_cols(plan.output()),
                        describe_cols(&t.schema)
                    )));
                }
                self.next_query += 1;
                let emit_final = query.emit == Some(Emit::Final);
                self.queries.insert(
                    id.clone(),
                    QueryInfo { id: id.clone(), text: p.text.clone(), sink: target.clone(), plan, emit_final },
                );
                Ok(Outcome::Started { id, topic: t.topic.clone(), partitions: t.partitions })
            }
            Statement::InsertValues { target, columns, values } => {
                self.insert_values(target, columns.as_deref(), values)
            }
            Statement::Select(q) => self.select(q),
            Statement::Show { what, .. } => Ok(self.show(*what)),
            Statement::Describe { name, extended } => {
                let s = self
                    .sources
                    .get(name)
                    .ok_or_else(|| SqlError::NotFound(format!("stream or table {name} does not exist")))?;
                let mut rows: Vec<Vec<String>> = s
                    .schema
                    .columns
                    .iter()
                    .map(|c| {
                        let key = match (c.key, s.kind) {
                            (false, _) => "",
                            (true, SourceKind::Table) => "(primary key)",
                            (true, SourceKind::Stream) => "(key)",
                        };
                        vec![c.name.clone(), format!("{} {key}", c.ty).trim().to_string()]
                    })
                    .collect();
                if *extended {
                    rows.push(vec!["Type".into(), s.kind.name().into()]);
                    rows.push(vec!["Topic".into(), format!("{} ({} partitions)", s.topic, s.partitions)]);
                    rows.push(vec!["Key format".into(), s.key_format.name().into()]);
                    rows.push(vec!["Value format".into(), s.value_format.name().into()]);
                    if let Some(q) = &s.writer {
                        rows.push(vec!["Written by".into(), q.clone()]);
                    }
                }
                Ok(Outcome::Rows { columns: vec!["Field".into(), "Type".into()], rows })
            }
            Statement::Explain(Explained::Query(id)) => {
                let q = self.queries.get(id).ok_or_else(|| SqlError::NotFound(format!("query {id} does not exist")))?;
                let sink = &self.sources[&q.sink];
                // Whether it runs is known to the processors, not to the catalog: a cluster
                // fills this row in from their reports.
                Ok(explain(&q.text, Some("RUNNING"), &q.topology(sink)))
            }
            Statement::Explain(Explained::Statement(s)) => match &**s {
                Statement::CreateAs { query, .. }
                | Statement::InsertSelect { query, .. }
                | Statement::Select(query) => {
                    let plan = self.plan("EXPLAIN", query)?;
                    let b = StreamsBuilder::new();
                    plan.build(&b, query.emit == Some(Emit::Final)).foreach(|_, _| {});
                    Ok(explain(&p.text, None, &b.build()))
                }
                _ => Err(SqlError::Invalid("EXPLAIN takes a query id or a query".into())),
            },
            Statement::Drop { kind, name, if_exists, delete_topic } => {
                let Some(s) = self.sources.get(name) else {
                    if *if_exists {
                        return Ok(Outcome::Dropped { name: name.clone(), delete_topic: None });
                    }
                    return Err(SqlError::NotFound(format!("{} {name} does not exist", kind.name())));
                };
                if s.kind != *kind {
                    return Err(SqlError::Invalid(format!("{name} is a {}, not a {}", s.kind.name(), kind.name())));
                }
                self.check_unused(name, true)?;
                let topic = s.topic.clone();
                self.sources.remove(name);
                Ok(Outcome::Dropped { name: name.clone(), delete_topic: delete_topic.then_some(topic) })
            }
            Statement::Terminate(id) => {
                let ids: Vec<String> = match id {
                    None => self.queries.keys().cloned().collect(),
                    Some(id) if self.queries.contains_key(id) => vec![id.clone()],
                    Some(id) => return Err(SqlError::NotFound(format!("query {id} does not exist"))),
                };
                for id in &ids {
                    if let Some(q) = self.queries.remove(id)
                        && let Some(s) = self.sources.get_mut(&q.sink)
                        && s.writer.as_deref() == Some(id)
                    {
                        s.writer = None;
                    }
                }
                Ok(Outcome::Terminated(ids))
            }
        }
    }

    /// A CREATE of a name that exists: IF NOT EXISTS answers the existing one, OR REPLACE
    /// goes on when no query uses it (replacing a query in place is not supported: its
    /// writer must stop first), anything else is refused. `None`: go on and create.
    fn existing(
        &self,
        kind: SourceKind,
        name: &str,
        or_replace: bool,
        if_not_exists: bool,
    ) -> Result<Option<Outcome>, SqlError> {
        let Some(s) = self.sources.get(name) else { return Ok(None) };
        if if_not_exists {
            return Ok(Some(Outcome::Created {
                name: name.to_string(),
                topic: s.topic.clone(),
                partitions: s.partitions,
            }));
        }
        if !or_replace {
            return Err(SqlError::Exists(format!("{} {name} already exists", kind.name())));
        }
        self.check_unused(name, false)?;
        Ok(None)
    }

    /// Refuses to replace or drop a source a query reads or writes.
    fn check_unused(&self, name: &str, dropping: bool) -> Result<(), SqlError> {
        for q in self.queries.values() {
            if q.sink == name || q.plan.sources().iter().any(|s| s == name) {
                let what = if dropping { "dropped" } else { "replaced" };
                return Err(SqlError::Invalid(format!(
                    "{name} cannot be {what}: query {} uses it (TERMINATE it first)",
                    q.id
                )));
            }
        }
        Ok(())
    }

    fn plan(&self, id: &str, q: &Query) -> Result<QueryPlan, SqlError> {
        QueryPlan::new(id, q, &|n| self.sources.get(n).cloned())
    }

    fn declare(
        &self,
        kind: SourceKind,
        name: &str,
        columns: &[crate::ast::ColumnDef],
        props: &Props,
    ) -> Result<SourceDef, SqlError> {
        for (n, _) in props {
            if !KNOWN_PROPS.contains(&n.as_str()) {
                return Err(SqlError::Invalid(format!("unknown property '{n}': known are {}", KNOWN_PROPS.join(", "))));
            }
        }
        let topic = prop(props, "kafka_topic")
            .map(|v| v.text())
            .ok_or_else(|| SqlError::Invalid(format!("{} {name} needs a KAFKA_TOPIC property", kind.name())))?;
        if columns.is_empty() {
            return Err(SqlError::Invalid(format!("{} {name} declares no columns", kind.name())));
        }
        for c in columns {
            match (kind, c.key, c.primary) {
                (SourceKind::Stream, _, true) => {
                    return Err(SqlError::Invalid(format!(
                        "column {}: streams have KEY columns, not PRIMARY KEY",
                        c.name
                    )));
                }
                (SourceKind::Table, true, false) => {
                    return Err(SqlError::Invalid(format!(
                        "column {}: tables have a PRIMARY KEY, not KEY columns",
                        c.name
                    )));
                }
                _ => {}
            }
            if columns.iter().filter(|d| d.name == c.name).count() > 1 {
                return Err(SqlError::Invalid(format!("column {} is declared twice", c.name)));
            }
            if matches!(c.name.as_str(), "ROWTIME" | "ROWPARTITION" | "ROWOFFSET" | "WINDOWSTART" | "WINDOWEND") {
                return Err(SqlError::Invalid(format!("{} is a reserved column name", c.name)));
            }
        }
        if kind == SourceKind::Table && !columns.iter().any(|c| c.key) {
            return Err(SqlError::Invalid(format!("table {name} needs a PRIMARY KEY column")));
        }
        let mut cols: Vec<Column> = columns
            .iter()
            .filter(|c| c.key)
            .map(|c| Column { name: c.name.clone(), ty: c.ty.clone(), key: true })
            .collect();
        cols.extend(columns.iter().filter(|c| !c.key).map(|c| Column {
            name: c.name.clone(),
            ty: c.ty.clone(),
            key: false,
        }));
        let schema = Schema { columns: cols };
        let (key_format, value_format) = formats(props, None)?;
        let key_format =
            if schema.key_count() == 0 && prop(props, "key_format").is_none() && prop(props, "format").is_none() {
                Format::None
            } else {
                key_format
            };
        check_formats(&schema, key_format, value_format)?;
        let partitions = partitions(props)?.unwrap_or(self.default_partitions);
        let timestamp = timestamp(props, &schema)?;
        Ok(SourceDef {
            name: name.to_string(),
            kind,
            schema,
            topic,
            partitions,
            key_format,
            value_format,
            timestamp,
            window: None,
            writer: None,
        })
    }

    fn persistent(
        &mut self,
        kind: SourceKind,
        name: &str,
        props: &Props,
        query: &Query,
        text: &str,
    ) -> Result<Outcome, SqlError> {
        for (n, _) in props {
            if !KNOWN_PROPS.contains(&n.as_str()) {
                return Err(SqlError::Invalid(format!("unknown property '{n}': known are {}", KNOWN_PROPS.join(", "))));
            }
        }
        let prefix = if kind == SourceKind::Stream { "CSAS" } else { "CTAS" };
        let id = format!("{prefix}_{name}_{}", self.next_query);
        let plan = self.plan(&id, query)?;
        if plan.kind() != kind {
            return Err(SqlError::Invalid(match kind {
                SourceKind::Stream => {
                    format!("the query makes a table (it aggregates or reads a table): use CREATE TABLE {name} AS")
                }
                SourceKind::Table => {
                    format!("the query makes a stream: use CREATE STREAM {name} AS, or aggregate with GROUP BY")
                }
            }));
        }
        let first = self
            .sources
            .get(&plan.sources()[0])
            .cloned()
            .ok_or_else(|| SqlError::NotFound("source vanished".into()))?;
        let schema = plan.output().clone();
        let keys = schema
            .keys()
            .filter(|c| !matches!(c.name.as_str(), "WINDOWSTART" | "WINDOWEND") || plan.window().is_none())
            .count();
        // Inherit the first source's formats; a KAFKA key cannot hold several columns.
        let inherited_key = if keys > 1 && first.key_format == Format::Kafka { Format::Json } else { first.key_format };
        let inherited_key = if keys > 0 && inherited_key == Format::None { Format::Kafka } else { inherited_key };
        let (key_format, value_format) = formats(props, Some((inherited_key, first.value_format)))?;
        let key_format = if keys == 0 { Format::None } else { key_format };
        let key_cols: Schema = Schema {
            columns: schema
                .columns
                .iter()
                .filter(|c| plan.window().is_none() || !matches!(c.name.as_str(), "WINDOWSTART" | "WINDOWEND"))
                .cloned()
                .collect(),
        };
        check_formats(&key_cols, key_format, value_format)?;
        let topic = prop(props, "kafka_topic").map(|v| v.text()).unwrap_or_else(|| name.to_string());
        let partitions = partitions(props)?.unwrap_or(first.partitions);
        let def = SourceDef {
            name: name.to_string(),
            kind,
            schema,
            topic: topic.clone(),
            partitions,
            key_format,
            value_format,
            timestamp: None,
            window: plan.window().map(|w| w.kind),
            writer: Some(id.clone()),
        };
        self.next_query += 1;
        let emit_final = query.emit == Some(Emit::Final);
        self.sources.insert(name.to_string(), def);
        self.queries.insert(
            id.clone(),
            QueryInfo { id: id.clone(), text: text.to_string(), sink: name.to_string(), plan, emit_final },
        );
        Ok(Outcome::Started { id, topic, partitions })
    }

    fn insert_values(
        &self,
        target: &str,
        columns: Option<&[String]>,
        values: &[crate::ast::Expr],
    ) -> Result<Outcome, SqlError> {
        let s = self
            .sources
            .get(target)
            .ok_or_else(|| SqlError::NotFound(format!("stream or table {target} does not exist")))?;
        if s.writer.is_some() && s.kind == SourceKind::Table {
            return Err(SqlError::Invalid(format!(
                "{target} is written by query {}: insert into its sources",
                s.writer.clone().unwrap_or_default()
            )));
        }
        let names: Vec<String> = match columns {
            Some(c) => c.to_vec(),
            None => s.schema.columns.iter().map(|c| c.name.clone()).collect(),
        };
        if names.len() != values.len() {
            return Err(SqlError::Invalid(format!("{} columns and {} values", names.len(), values.len())));
        }
        let mut row = vec![Value::Null; s.schema.columns.len()];
        let mut timestamp = None;
        let empty = Scope::default();
        for (n, e) in names.iter().zip(values) {
            let (x, t) = compile(e, &empty, &mut None)?;
            let v = x.eval(&[], &EvalCtx::default());
            if n == "ROWTIME" {
                timestamp = Some(v.as_i64().ok_or_else(|| SqlError::Type(format!("ROWTIME is BIGINT, not {t}")))?);
                continue;
            }
            let i = s.schema.find(n).ok_or_else(|| SqlError::NotFound(format!("{target} has no column {n}")))?;
            let want = &s.schema.columns[i].ty;
            let ok = t.fits(want)
                || (t.is_numeric() && want.is_numeric())
                || (t == SqlType::String && !matches!(want, SqlType::Array(_) | SqlType::Map(_) | SqlType::Struct(_)))
                || (t.is_numeric() && *want == SqlType::Timestamp);
            if !ok {
                return Err(SqlError::Type(format!("column {n} is {want}: the value '{e}' is {t}")));
            }
            let v = cast(v, want);
            if v.is_null() && !e.to_string().eq_ignore_ascii_case("null") {
                return Err(SqlError::Type(format!("column {n} is {want}: {e} cannot be one")));
            }
            row[i] = v;
        }
        let nk = s.schema.key_count();
        let enc = encoder(&s.schema, s.key_format, s.value_format, None);
        let (key, value) = enc(&Row(row[..nk].to_vec()), Some(&Row(row[nk..].to_vec())));
        Ok(Outcome::Insert { topic: s.topic.clone(), key, value, timestamp })
    }

    /// A SELECT: a push query, or a pull query over a materialized table.
    pub fn select(&self, q: &Query) -> Result<Outcome, SqlError> {
        let from = self
            .sources
            .get(&q.from.name)
            .ok_or_else(|| SqlError::NotFound(format!("stream or table {} does not exist", q.from.name)))?;
        let pull = q.emit.is_none()
            && from.kind == SourceKind::Table
            && q.joins.is_empty()
            && q.group_by.is_empty()
            && q.window.is_none();
        if !pull {
            if q.emit.is_none() {
                return Err(SqlError::Invalid(format!(
                    "{} is a stream: a query over it runs until cancelled, so it ends with EMIT CHANGES",
                    from.name
                )));
            }
            let plan = self.plan("TRANSIENT", q)?;
            return Ok(Outcome::Push { plan, emit_final: q.emit == Some(Emit::Final) });
        }
        let writer = from.writer.as_ref().and_then(|id| {
            let q = self.queries.get(id)?;
            Some((id.clone(), q.plan.store()?, q.plan.clone()))
        });
        let alias = q.from.alias.clone().unwrap_or_else(|| from.name.clone());
        let scope = Scope {
            columns: from
                .schema
                .columns
                .iter()
                .map(|c| ScopeColumn {
                    qualifier: Some(alias.clone()),
                    name: c.name.clone(),
                    ty: c.ty.clone(),
                    hidden: false,
                })
                .collect(),
            windowed: false,
        };
        let where_ = q.filter.as_ref().map(|w| compile(w, &scope, &mut None).map(|(s, _)| s)).transpose()?;
        let mut project = Vec::new();
        let mut columns = Vec::new();
        for item in &q.items {
            match item {
                SelectItem::Wildcard | SelectItem::QualifiedWildcard(_) => {
                    for (i, c) in from.schema.columns.iter().enumerate() {
                        project.push(crate::expr::Scalar::Column(i));
                        columns.push(c.name.clone());
                    }
                }
                SelectItem::Expr { expr, alias } => {
                    project.push(compile(expr, &scope, &mut None)?.0);
                    columns.push(alias.clone().unwrap_or_else(|| expr.to_string().to_uppercase()));
                }
            }
        }
        Ok(Outcome::Pull(Pull { table: from.clone(), writer, where_, project, columns, limit: q.limit }))
    }

    fn show(&self, what: ShowWhat) -> Outcome {
        let (columns, rows): (Vec<&str>, Vec<Vec<String>>) = match what {
            ShowWhat::Streams | ShowWhat::Tables => {
                let kind = if what == ShowWhat::Streams { SourceKind::Stream } else { SourceKind::Table };
                let rows = self
                    .sources
                    .values()
                    .filter(|s| s.kind == kind)
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.topic.clone(),
                            s.key_format.name().into(),
                            s.value_format.name().into(),
                            s.window.is_some().to_string(),
                        ]
                    })
                    .collect();
                (vec!["Name", "Topic", "Key format", "Value format", "Windowed"], rows)
            }
            ShowWhat::Queries => (
                vec!["Query ID", "Status", "Sink", "Query"],
                self.queries
                    .values()
                    .map(|q| vec![q.id.clone(), "RUNNING".into(), q.sink.clone(), q.text.clone()])
                    .collect(),
            ),
            ShowWhat::Topics => {
                let mut topics: BTreeMap<String, u32> = BTreeMap::new();
                for s in self.sources.values() {
                    topics.insert(s.topic.clone(), s.partitions);
                }
                (vec!["Topic", "Partitions"], topics.into_iter().map(|(t, p)| vec![t, p.to_string()]).collect())
            }
        };
        Outcome::Rows { columns: columns.into_iter().map(String::from).collect(), rows }
    }
}

fn explain(text: &str, status: Option<&str>, topology: &Topology) -> Outcome {
    let mut rows = vec![vec!["Statement".to_string(), text.to_string()]];
    if let Some(st) = status {
        rows.push(vec!["Status".into(), st.into()]);
    }
    rows.push(vec!["Topology".into(), topology.to_string()]);
    Outcome::Rows { columns: vec!["Field".into(), "Value".into()], rows }
}

fn describe_cols(s: &Schema) -> String {
    s.columns
        .iter()
        .map(|c| format!("{} {}{}", c.name, c.ty, if c.key { " KEY" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn formats(props: &Props, inherited: Option<(Format, Format)>) -> Result<(Format, Format), SqlError> {
    let get = |n: &str| prop(props, n).map(|v| Format::parse(&v.text()).map_err(SqlError::Invalid)).transpose();
    let both = get("format")?;
    let (ik, iv) = inherited.unwrap_or((Format::Kafka, Format::Json));
    let key = get("key_format")?.or(both).unwrap_or(ik);
    let value = get("value_format")?.or(both).unwrap_or(iv);
    if value == Format::None {
        return Err(SqlError::Invalid("value format NONE holds nothing: use JSON, DELIMITED or KAFKA".into()));
    }
    Ok((key, value))
}

fn check_formats(schema: &Schema, key: Format, value: Format) -> Result<(), SqlError> {
    let keys: Vec<&Column> = schema.keys().collect();
    let values: Vec<&Column> = schema.values().collect();
    key.check(&keys, true).map_err(SqlError::Invalid)?;
    value.check(&values, false).map_err(SqlError::Invalid)
}

fn partitions(props: &Props) -> Result<Option<u32>, SqlError> {
    prop(props, "partitions")
        .map(|v| match v.text().parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(SqlError::Invalid(format!("PARTITIONS is a number from 1 to 10000, not {}", v.text()))),
        })
        .transpose()
}

fn timestamp(props: &Props, schema: &Schema) -> Result<Option<(String, Option<String>)>, SqlError> {
    let Some(col) = prop(props, "timestamp") else { return Ok(None) };
    let name = col.text().to_uppercase();
    let c = schema
        .columns
        .iter()
        .find(|c| c.name == name || c.name == col.text())
        .ok_or_else(|| SqlError::NotFound(format!("TIMESTAMP column {name} is not a column")))?;
    let fmt = prop(props, "timestamp_format").map(|v| v.text());
    match (&c.ty, &fmt) {
        (SqlType::BigInt | SqlType::Timestamp, _) | (SqlType::String, Some(_)) => Ok(Some((c.name.clone(), fmt))),
        (SqlType::String, None) => {
            Err(SqlError::Invalid(format!("TIMESTAMP column {} is a STRING: give its TIMESTAMP_FORMAT", c.name)))
        }
        (t, _) => {
            Err(SqlError::Type(format!("TIMESTAMP column {} is {t}: BIGINT, TIMESTAMP or STRING expected", c.name)))
        }
    }
}
