//! Queries planned into Streams topologies. Rows move between processors as a key [`Row`]
//! and a full row: key columns, value columns, then ROWTIME, ROWPARTITION and ROWOFFSET.
//! A query's result is a stream of (key row, value row or a deletion); windowed results
//! carry WINDOWSTART and WINDOWEND at the end of their key row.

use std::sync::Arc;

use bytes::Bytes;
use sluice_streams::topology::{Ctx, RawRecord};
use sluice_streams::{JoinWindows, KStream, KTable, Record, SessionWindows, StreamsBuilder, TimeWindows, Windowed};

use crate::SqlError;
use crate::agg::AggCall;
use crate::ast::{Emit, JoinKind, Query, SelectItem, SourceKind, WindowKind, WindowSpec};
use crate::expr::{EvalCtx, Scalar, Scope, ScopeColumn, compile};
use crate::format::Format;
use crate::types::{Column, Row, Schema, SqlType, Value};

/// ksqlDB's grace period when a window names none.
pub const DEFAULT_GRACE_MS: i64 = 24 * 3_600_000;

/// Hopping windows a record may fall in (each is a store read and write per record).
const MAX_WINDOWS_PER_RECORD: i64 = 1000;

/// Pseudo columns every source row carries after its own.
pub const PSEUDO: [(&str, SqlType); 3] =
    [("ROWTIME", SqlType::BigInt), ("ROWPARTITION", SqlType::Int), ("ROWOFFSET", SqlType::BigInt)];

/// A stream or table of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDef {
    pub name: String,
    pub kind: SourceKind,
    pub schema: Schema,
    pub topic: String,
    pub partitions: u32,
    pub key_format: Format,
    pub value_format: Format,
    /// The column giving event time (BIGINT or TIMESTAMP, or STRING read with the format).
    pub timestamp: Option<(String, Option<String>)>,
    /// The kind of window its keys carry (the result of a windowed aggregation).
    pub window: Option<WindowKind>,
    /// The persistent query writing it, if any.
    pub writer: Option<String>,
}

impl SourceDef {
    fn key_cols(&self) -> Vec<&Column> {
        self.schema.keys().collect()
    }
    fn value_cols(&self) -> Vec<&Column> {
        self.schema.values().collect()
    }

    /// The scope of its full rows, columns qualified by `alias`.
    fn scope(&self, alias: &str) -> Vec<ScopeColumn> {
        let mut cols: Vec<ScopeColumn> = self
            .schema
            .columns
            .iter()
            .map(|c| ScopeColumn {
                qualifier: Some(alias.to_string()),
                name: c.name.clone(),
                ty: c.ty.clone(),
                hidden: false,
            })
            .collect();
        for (n, t) in PSEUDO {
            cols.push(ScopeColumn { qualifier: Some(alias.to_string()), name: n.into(), ty: t, hidden: true });
        }
        cols
    }

    fn width(&self) -> usize {
        self.schema.columns.len() + PSEUDO.len()
    }

    /// A record of its topic as (key row, full row); `None` value for a deletion.
    pub fn decode(&self, ctx: &Ctx, raw: RawRecord) -> Result<Record<Row, Option<Row>>, String> {
        let key_cols = self.key_cols();
        let mut key = match (&raw.key, self.key_format) {
            // No key columns: whatever the key holds is not read (ksqlDB ignores it).
            (_, Format::None) => Vec::new(),
            _ if key_cols.is_empty() => Vec::new(),
            (None, _) => vec![Value::Null; key_cols.len()],
            (Some(k), f) => {
                let bytes: &[u8] = match self.window {
                    // Windowed keys end with the window: start (time windows) or end and start.
                    Some(WindowKind::Session { .. }) => k.get(..k.len().saturating_sub(16)).unwrap_or(&[]),
                    Some(_) => k.get(..k.len().saturating_sub(8)).unwrap_or(&[]),
                    None => k,
                };
                f.decode(bytes, &key_cols, true).map_err(|e| format!("key: {e}"))?
            }
        };
        key.resize(key_cols.len(), Value::Null);
        let Some(value) = &raw.value else {
            return Ok(Record { key: Row(key), value: None, timestamp: raw.timestamp, headers: raw.headers });
        };
        let values = self.value_format.decode(value, &self.value_cols(), false).map_err(|e| format!("value: {e}"))?;
        let mut full = Vec::with_capacity(self.width());
        full.extend(key.iter().cloned());
        full.extend(values);
        let timestamp = match &self.timestamp {
            None => raw.timestamp,
            Some((col, fmt)) => {
                let i = self.schema.find(col).ok_or("timestamp column missing")?;
                match (&full[i], fmt) {
                    (Value::String(s), Some(f)) => crate::time::parse(s, f)?,
                    (v, _) => v.as_i64().ok_or_else(|| format!("timestamp column {col} is {v}"))?,
                }
            }
        };
        if timestamp < 0 {
            return Err(format!("negative event time {timestamp}"));
        }
        full.push(Value::BigInt(timestamp));
        full.push(Value::Int(ctx.partition() as i32));
        full.push(Value::BigInt(ctx.offset()));
        Ok(Record { key: Row(key), value: Some(Row(full)), timestamp, headers: raw.headers })
    }
}

/// A window `(start, end)`, when the key has one.
pub type Window = Option<(i64, i64)>;

/// A windowed key cut into the key's bytes and its window `(start, end)`, as Kafka's
/// windowed serdes lay it out: key then start (time windows), or key, end, start (sessions).
pub fn split_window(k: &[u8], window: Option<WindowKind>) -> Result<(&[u8], Window), String> {
    let word = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    match window {
        None => Ok((k, None)),
        Some(WindowKind::Session { .. }) => {
            let cut = k.len().checked_sub(16).ok_or("a session key is at least 16 bytes")?;
            Ok((&k[..cut], Some((word(&k[cut + 8..]), word(&k[cut..cut + 8])))))
        }
        Some(WindowKind::Tumbling { size }) | Some(WindowKind::Hopping { size, .. }) => {
            let cut = k.len().checked_sub(8).ok_or("a windowed key is at least 8 bytes")?;
            let start = word(&k[cut..]);
            Ok((&k[..cut], Some((start, start + size))))
        }
    }
}

impl SourceDef {
    /// The key columns its key format holds (a windowed table's window bounds are not).
    pub fn encoded_key_cols(&self) -> Vec<&Column> {
        self.schema
            .keys()
            .filter(|c| self.window.is_none() || !matches!(c.name.as_str(), "WINDOWSTART" | "WINDOWEND"))
            .collect()
    }

    /// A record of a table's topic as a full row of its schema: key columns (with the
    /// window's bounds for a windowed table), then value columns.
    pub fn decode_row(&self, key: Option<&[u8]>, value: &[u8]) -> Result<Vec<Value>, String> {
        let key_cols = self.encoded_key_cols();
        let mut row = match key {
            Some(k) if self.key_format != Format::None => {
                let (body, window) = split_window(k, self.window)?;
                let mut vals = self.key_format.decode(body, &key_cols, true)?;
                if let Some((s, e)) = window {
                    vals.push(Value::BigInt(s));
                    vals.push(Value::BigInt(e));
                }
                vals
            }
            _ => vec![Value::Null; self.schema.key_count()],
        };
        row.extend(self.value_format.decode(value, &self.value_cols(), false)?);
        Ok(row)
    }
}

/// What a query's result looks like and how to make it.
#[derive(Clone)]
pub struct QueryPlan {
    inner: Arc<Inner>,
}

struct Inner {
    /// An identifier for its stores and internal topics.
    id: String,
    sources: Vec<(SourceDef, String)>,
    /// Each source after the first joined with all before it.
    joins: Vec<JoinPlan>,
    filter: Option<Scalar>,
    shape: Shape,
    /// The result's columns: key columns (and WINDOWSTART, WINDOWEND when windowed), values.
    pub output: Schema,
    pub kind: SourceKind,
    pub window: Option<WindowSpec>,
    pub limit: Option<u64>,
}

struct JoinPlan {
    kind: JoinKind,
    /// The join expressions: the left one over the rows of the sources joined before (their
    /// rows end to end, `left_width` columns), the right one over the right source's row.
    left: Scalar,
    right: Scalar,
    left_width: usize,
    /// Whether a side goes through a repartition topic keyed by its expression cast to
    /// `key_type`. Neither does when both are keyed by their expression in the same bytes
    /// already (keys of one type and one key format, as written to their topics); the left one
    /// does not when an earlier join left it keyed that way.
    rekey_left: bool,
    rekey_right: bool,
    key_type: SqlType,
    within: Option<(i64, i64, i64)>,
}

/// How the rows of the sources joined so far are keyed and partitioned.
struct Keying {
    /// Expressions (over the joined rows) equal to the record key wherever they are not null.
    exprs: Vec<Scalar>,
    ty: SqlType,
    /// The key format when records are partitioned as written to the first source's topic;
    /// `None` once they went through a repartition topic keyed by the cast key.
    written: Option<Format>,
}

impl Keying {
    fn of(src: &SourceDef) -> Keying {
        let single = src.schema.key_count() == 1;
        Keying {
            exprs: if single { vec![Scalar::Column(0)] } else { Vec::new() },
            ty: src.schema.keys().next().map(|c| c.ty.clone()).unwrap_or(SqlType::Null),
            written: Some(src.key_format),
        }
    }
}

enum Shape {
    /// Each input row gives an output row: key expressions (none: the input key) and values.
    Project { key: Option<Vec<Scalar>>, values: Vec<Scalar> },
    /// Rows grouped and aggregated; `values` and `having` read the post-aggregation row:
    /// group values, then aggregate results.
    Aggregate { keys: Vec<Scalar>, aggs: Vec<AggCall>, values: Vec<Scalar>, having: Option<Scalar> },
}

fn name_of(expr: &crate::ast::Expr) -> Option<String> {
    use sqlparser::ast::{BinaryOperator, Expr};
    match expr {
        Expr::Identifier(i) => Some(crate::parser::ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(crate::parser::ident),
        Expr::BinaryOp { op: BinaryOperator::Arrow, right, .. } => name_of(right),
        _ => None,
    }
}

impl QueryPlan {
    pub fn output(&self) -> &Schema {
        &self.inner.output
    }
    pub fn kind(&self) -> SourceKind {
        self.inner.kind
    }
    pub fn window(&self) -> Option<WindowSpec> {
        self.inner.window
    }
    pub fn limit(&self) -> Option<u64> {
        self.inner.limit
    }
    pub fn sources(&self) -> Vec<String> {
        self.inner.sources.iter().map(|(s, _)| s.name.clone()).collect()
    }
    /// The store holding the result, for pull queries (aggregations and table results).
    pub fn store(&self) -> Option<String> {
        match (&self.inner.shape, self.inner.kind) {
            (Shape::Aggregate { .. }, _) => Some(format!("{}-AGGREGATE", self.inner.id)),
            (_, SourceKind::Table) => Some(format!("{}-PROJECT", self.inner.id)),
            _ => None,
        }
    }

    /// Plans `q` over the catalog's sources (`lookup` finds them by name).
    pub fn new(id: &str, q: &Query, lookup: &dyn Fn(&str) -> Option<SourceDef>) -> Result<QueryPlan, SqlError> {
        let find = |name: &str| {
            lookup(name).ok_or_else(|| SqlError::NotFound(format!("stream or table {name} does not exist")))
        };
        let left = find(&q.from.name)?;
        let left_alias = q.from.alias.clone().unwrap_or_else(|| left.name.clone());
        let mut sources = vec![(left.clone(), left_alias.clone())];
        let mut scope = Scope { columns: left.scope(&left_alias), windowed: false };
        if left.window.is_some() {
            return Err(SqlError::Invalid(format!(
                "{} is windowed: reading windowed tables is not supported yet",
                left.name
            )));
        }
        let mut joins: Vec<JoinPlan> = Vec::new();
        let mut kind = left.kind;
        let mut keying = Keying::of(&left);
        // Expressions besides the last join's left one that equal the result's key: a select
        // item reading one of them names the key column.
        let mut same_key: Vec<Scalar> = Vec::new();
        for j in &q.joins {
            let right = find(&j.source.name)?;
            let right_alias = j.source.alias.clone().unwrap_or_else(|| right.name.clone());
            // One topic read twice in a topology is two sources of one topic, which Streams
            // refuses (as ksqlDB refuses self-joins).
            if let Some((s, _)) = sources.iter().find(|(s, _)| s.topic == right.topic) {
                return Err(SqlError::Invalid(format!(
                    "{} is already in the join{}: a query joins each stream, table and topic once \
                     (self-joins are not supported)",
                    right.name,
                    if s.name == right.name {
                        String::new()
                    } else {
                        format!(" (through {}, on topic {})", s.name, s.topic)
                    }
                )));
            }
            if sources.iter().any(|(_, a)| *a == right_alias) {
                return Err(SqlError::Invalid(format!(
                    "two sources of the join are called {right_alias}: give one an alias"
                )));
            }
            if right.window.is_some() {
                return Err(SqlError::Invalid(format!(
                    "{} is windowed: joining windowed tables is not supported yet",
                    right.name
                )));
            }
            // The left side is everything joined so far, its rows those sources' rows end to end.
            let left_names = sources.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(", ");
            let left_width = scope.columns.len();
            let right_scope = Scope { columns: right.scope(&right_alias), windowed: false };
            let (a, b) = match &j.on {
                sqlparser::ast::Expr::BinaryOp { left: a, op: sqlparser::ast::BinaryOperator::Eq, right: b } => (a, b),
                other => {
                    return Err(SqlError::Invalid(format!(
                        "a join's ON is an equality of one column of each side, not '{other}'"
                    )));
                }
            };
            // Each side of `=` must read one side; either order.
            type Typed = Option<(Scalar, SqlType)>;
            let side = |e: &crate::ast::Expr| -> (Typed, Typed) {
                (compile(e, &scope, &mut None).ok(), compile(e, &right_scope, &mut None).ok())
            };
            let ((la, ra), (lb, rb)) = (side(a), side(b));
            let ((l, lt), (r, rt)) = match (la, rb, lb, ra) {
                (Some(l), Some(r), _, _) => (l, r),
                (_, _, Some(l), Some(r)) => (l, r),
                _ => {
                    return Err(SqlError::Invalid(format!(
                        "'{}' must compare an expression of {left_names} with one of {right_alias}",
                        j.on
                    )));
                }
            };
            if !(lt.fits(&rt) || (lt.is_numeric() && rt.is_numeric())) {
                return Err(SqlError::Type(format!("the join compares {lt} with {rt} in '{}'", j.on)));
            }
            let right_is_key = right.schema.key_count() == 1 && r == Scalar::Column(0);
            let left_is_key = keying.exprs.contains(&l);
            let within = match (kind, right.kind) {
                (SourceKind::Stream, SourceKind::Stream) => {
                    let Some((before, after)) = j.within else {
                        return Err(SqlError::Invalid("a stream-stream join needs WITHIN".into()));
                    };
                    Some((before, after, j.grace.unwrap_or(DEFAULT_GRACE_MS)))
                }
                (SourceKind::Stream, SourceKind::Table) => {
                    if !right_is_key {
                        return Err(SqlError::Invalid(format!(
                            "a stream-table join must use the table's primary key: {} is not {right_alias}'s key",
                            j.on
                        )));
                    }
                    if j.kind == JoinKind::Full {
                        return Err(SqlError::Invalid("a stream-table join is INNER or LEFT".into()));
                    }
                    None
                }
                (SourceKind::Table, SourceKind::Table) => {
                    if !left_is_key || !right_is_key {
                        return Err(SqlError::Invalid(format!(
                            "a table-table join must use both tables' primary keys: '{}'{}",
                            j.on,
                            if joins.is_empty() { "" } else { " (the key of the tables joined before it)" }
                        )));
                    }
                    None
                }
                (SourceKind::Table, SourceKind::Stream) => {
                    return Err(SqlError::Invalid(
                        "a table cannot be joined with a stream: put the stream first".into(),
                    ));
                }
            };
            if within.is_none() && j.within.is_some() {
                return Err(SqlError::Invalid("WITHIN is for stream-stream joins".into()));
            }
            let key_type = if lt == rt { lt.clone() } else { crate::expr::wider(&lt, &rt) };
            if (lt == SqlType::Double) != (rt == SqlType::Double) && lt.is_numeric() && rt.is_numeric() {
                return Err(SqlError::Type(format!(
                    "the join compares {lt} with {rt} in '{}': keys are compared exactly, CAST one side",
                    j.on
                )));
            }
            if left.partitions != right.partitions {
                return Err(SqlError::Invalid(format!(
                    "joined sources have as many partitions: {} has {}, {} has {}",
                    left.name, left.partitions, right.name, right.partitions
                )));
            }
            // Both sides keyed by their join expression in the same bytes already (keys of one
            // type, one key format, each topic as written): no repartition. Otherwise both meet
            // keyed by the key cast to `key_type` through repartition topics, unless the left
            // side went through one keyed that way by an earlier join.
            let as_written = keying.written == Some(right.key_format) && left_is_key && right_is_key && lt == rt;
            let keyed_by_earlier_join = left_is_key && keying.written.is_none() && keying.ty == key_type;
            let rekey_left = !(as_written || keyed_by_earlier_join);
            same_key = vec![shift(&r, left_width)];
            if left_is_key {
                same_key.extend(keying.exprs.iter().filter(|e| **e != l).cloned());
            }
            keying = Keying {
                // After a LEFT join the right side's expression may be null where the key is
                // not; after a FULL join either side's may be.
                exprs: match j.kind {
                    JoinKind::Inner => vec![l.clone(), shift(&r, left_width)],
                    JoinKind::Left => vec![l.clone()],
                    JoinKind::Full => Vec::new(),
                },
                ty: key_type.clone(),
                written: if as_written { keying.written } else { None },
            };
            joins.push(JoinPlan {
                kind: j.kind,
                left: l,
                right: r,
                left_width,
                rekey_left,
                rekey_right: !as_written,
                key_type,
                within,
            });
            kind = if kind == SourceKind::Table { SourceKind::Table } else { SourceKind::Stream };
            scope.columns.extend(right.scope(&right_alias));
            sources.push((right, right_alias));
        }
        let filter = match &q.filter {
            Some(f) => {
                let (s, t) = compile(f, &scope, &mut None)?;
                if !t.fits(&SqlType::Boolean) {
                    return Err(SqlError::Type(format!("WHERE '{f}' is {t}, not BOOLEAN")));
                }
                Some(s)
            }
            None => None,
        };
        // The select list, with `*` expanded and names given.
        let mut items: Vec<(crate::ast::Expr, String)> = Vec::new();
        for (n, item) in q.items.iter().enumerate() {
            match item {
                SelectItem::Wildcard | SelectItem::QualifiedWildcard(_) => {
                    let only = match item {
                        SelectItem::QualifiedWildcard(a) => Some(a.clone()),
                        _ => None,
                    };
                    if only.as_ref().is_some_and(|a| !sources.iter().any(|(_, al)| al == a)) {
                        return Err(SqlError::NotFound(format!("no source is called {}", only.unwrap_or_default())));
                    }
                    for c in scope.columns.iter().filter(|c| !c.hidden) {
                        let q = c.qualifier.clone().unwrap_or_default();
                        if only.as_ref().is_some_and(|a| *a != q) {
                            continue;
                        }
                        let expr = sqlparser::ast::Expr::CompoundIdentifier(vec![
                            sqlparser::ast::Ident::with_quote('`', q.clone()),
                            sqlparser::ast::Ident::with_quote('`', c.name.clone()),
                        ]);
                        let name = if joins.is_empty() { c.name.clone() } else { format!("{q}_{}", c.name) };
                        items.push((expr, name));
                    }
                }
                SelectItem::Expr { expr, alias } => {
                    let name = alias.clone().or_else(|| name_of(expr)).unwrap_or_else(|| format!("KSQL_COL_{n}"));
                    items.push((expr.clone(), name));
                }
            }
        }
        for (i, (_, n)) in items.iter().enumerate() {
            if items[..i].iter().any(|(_, m)| m == n) {
                return Err(SqlError::Invalid(format!("column {n} is selected twice: give one an alias")));
            }
        }
        let window = q.window;
        if let Some(WindowSpec { kind: WindowKind::Hopping { size, advance }, .. }) = window {
            if advance <= 0 || size <= 0 || advance > size {
                return Err(SqlError::Invalid("a hopping window advances by more than 0 and at most its size".into()));
            }
            if size / advance > MAX_WINDOWS_PER_RECORD {
                return Err(SqlError::Invalid(format!(
                    "a record would fall in {} hopping windows: {MAX_WINDOWS_PER_RECORD} at most (advance by more)",
                    size / advance
                )));
            }
        }
        if let Some(WindowSpec { kind: WindowKind::Tumbling { size } | WindowKind::Session { gap: size }, .. }) = window
            && size <= 0
        {
            return Err(SqlError::Invalid("a window's size is more than 0".into()));
        }
        if window.is_some() && q.group_by.is_empty() {
            return Err(SqlError::Invalid("WINDOW needs GROUP BY".into()));
        }
        if q.emit == Some(Emit::Final) && window.is_none() {
            return Err(SqlError::Invalid("EMIT FINAL is for windowed aggregations".into()));
        }
        let id = id.to_string();
        let (shape, output, kind) = if q.group_by.is_empty() {
            if q.having.is_some() {
                return Err(SqlError::Invalid("HAVING needs GROUP BY".into()));
            }
            let mut compiled = Vec::new();
            for (e, n) in &items {
                let (s, t) = compile(e, &scope, &mut None)?;
                if t == SqlType::Null {
                    return Err(SqlError::Type(format!(
                        "the type of column {n} cannot be inferred from NULL: CAST it"
                    )));
                }
                compiled.push((s, t, n.clone()));
            }
            // The key: PARTITION BY's expression, the join expression, or the source's key.
            let key_exprs: Vec<(Scalar, SqlType, String)> = match (&q.partition_by, joins.last()) {
                (Some(p), _) => {
                    if kind == SourceKind::Table {
                        return Err(SqlError::Invalid(
                            "PARTITION BY is for streams: a table's key is its primary key".into(),
                        ));
                    }
                    let (s, t) = compile(p, &scope, &mut None)?;
                    vec![(s, t, name_of(p).unwrap_or_else(|| "KSQL_COL_0".into()))]
                }
                (None, Some(j)) => {
                    let name = match &j.left {
                        Scalar::Column(i) => scope.columns[*i].name.clone(),
                        _ => "ROWKEY".into(),
                    };
                    vec![(j.left.clone(), j.key_type.clone(), name)]
                }
                (None, None) => left
                    .schema
                    .keys()
                    .enumerate()
                    .map(|(i, c)| (Scalar::Column(i), c.ty.clone(), c.name.clone()))
                    .collect(),
            };
            let also_key = if q.partition_by.is_some() { &[][..] } else { &same_key[..] };
            let (output, values) = split_key(&key_exprs, &compiled, also_key, None);
            // After a join the record key is the join key already.
            let rekey = q.partition_by.is_some();
            let key = if rekey { Some(key_exprs.into_iter().map(|(s, _, _)| s).collect()) } else { None };
            (Shape::Project { key, values }, output, kind)
        } else {
            if kind == SourceKind::Table && window.is_some() {
                return Err(SqlError::Invalid("a table has no event times to window: WINDOW is for streams".into()));
            }
            if q.partition_by.is_some() {
                return Err(SqlError::Invalid("PARTITION BY and GROUP BY cannot go together".into()));
            }
            let scope = Scope { windowed: window.is_some(), ..scope };
            let mut keys = Vec::new();
            for (n, g) in q.group_by.iter().enumerate() {
                let (s, t) = compile(g, &scope, &mut None)?;
                keys.push((s, t, name_of(g).unwrap_or_else(|| format!("KSQL_COL_{n}"))));
            }
            let mut aggs = Vec::new();
            let mut compiled = Vec::new();
            for (e, n) in &items {
                let (s, t) = compile(e, &scope, &mut Some(&mut aggs))?;
                compiled.push((s, t, n.clone()));
            }
            let having = match &q.having {
                Some(h) => {
                    let (s, t) = compile(h, &scope, &mut Some(&mut aggs))?;
                    if !t.fits(&SqlType::Boolean) {
                        return Err(SqlError::Type(format!("HAVING '{h}' is {t}, not BOOLEAN")));
                    }
                    Some(s)
                }
                None => None,
            };
            // After aggregation a row is the group's values, then the aggregates' results.
            let group: Vec<Scalar> = keys.iter().map(|(s, _, _)| s.clone()).collect();
            let post = |s: &Scalar, what: &str| -> Result<Scalar, SqlError> {
                let r = s.rewrite(&|x| match x {
                    x if group.contains(x) => group.iter().position(|g| g == x).map(Scalar::Column),
                    Scalar::Agg(i) => Some(Scalar::Column(group.len() + i)),
                    _ => None,
                });
                // Any column left reads the input row: neither grouped nor aggregated.
                let mut left_cols = Vec::new();
                s.rewrite(&|x| {
                    if group.contains(x) || matches!(x, Scalar::Agg(_)) {
                        Some(Scalar::Literal(Value::Null))
                    } else {
                        None
                    }
                })
                .columns(&mut left_cols);
                if let Some(c) = left_cols.first() {
                    return Err(SqlError::Invalid(format!(
                        "{what} reads column {} which is neither in GROUP BY nor in an aggregate",
                        scope.columns[*c].name
                    )));
                }
                Ok(r)
            };
            let mut post_items = Vec::new();
            for (s, t, n) in &compiled {
                post_items.push((post(s, &format!("column {n}"))?, t.clone(), n.clone()));
            }
            let having = having.map(|h| post(&h, "HAVING")).transpose()?;
            let post_keys: Vec<(Scalar, SqlType, String)> =
                keys.iter().enumerate().map(|(i, (_, t, n))| (Scalar::Column(i), t.clone(), n.clone())).collect();
            let (output, values) = split_key(&post_keys, &post_items, &[], window.map(|w| w.kind));
            if kind == SourceKind::Table
                && let Some(a) = aggs.iter().find(|a| !a.func.retractable())
            {
                return Err(SqlError::Invalid(format!(
                    "{} cannot aggregate a table: a row that changes or leaves must be taken back out \
                     (COUNT, SUM, AVG and COLLECT_LIST can)",
                    a.func.name()
                )));
            }
            (Shape::Aggregate { keys: group, aggs, values, having }, output, SourceKind::Table)
        };
        Ok(QueryPlan {
            inner: Arc::new(Inner { id, sources, joins, filter, shape, output, kind, window, limit: q.limit }),
        })
    }

    /// Adds the query to `b`; the result is (key row, value row or a deletion).
    pub fn build(&self, b: &StreamsBuilder, emit_final: bool) -> KStream<Row, Option<Row>> {
        enum Joined {
            Stream(KStream<Row, Row>),
            Table(KTable<Row, Row>),
        }
        let p = self.inner.clone();
        let (first, _) = &p.sources[0];
        let id = &p.id;
        let mut joined = match (first.kind, p.joins.first()) {
            (SourceKind::Stream, _) => Joined::Stream(stream(b, first)),
            (SourceKind::Table, None) => Joined::Table(table(b, first, &format!("{id}-SOURCE"))),
            (SourceKind::Table, Some(j)) => {
                Joined::Table(keyed_table(b, first, &format!("{id}-LEFT"), !j.rekey_left, &j.key_type))
            }
        };
        for (i, j) in p.joins.iter().enumerate() {
            let (right, _) = &p.sources[i + 1];
            let (lw, rw) = (j.left_width, right.width());
            let concat = move |l: Option<&Row>, r: Option<&Row>| {
                let mut v = Vec::with_capacity(lw + rw);
                match l {
                    Some(l) => v.extend(l.0.iter().cloned()),
                    None => v.resize(lw, Value::Null),
                }
                match r {
                    Some(r) => v.extend(r.0.iter().cloned()),
                    None => v.resize(lw + rw, Value::Null),
                }
                Row(v)
            };
            let ty = &j.key_type;
            // The first join's stores keep the names they had before joins could chain (a
            // running query's changelogs are named after them).
            let n = if i == 0 { String::new() } else { format!("-{}", i + 1) };
            joined = match (joined, right.kind) {
                (Joined::Table(lt), SourceKind::Table) => {
                    let lt = if i > 0 && j.rekey_left { rekey_table(&lt, ty, &format!("{id}-LEFT{n}")) } else { lt };
                    let rt = keyed_table(b, right, &format!("{id}-RIGHT{n}"), !j.rekey_right, ty);
                    let store = format!("{id}-JOIN{n}");
                    Joined::Table(match j.kind {
                        JoinKind::Inner => lt.join(&rt, &store, move |l, r| concat(Some(l), Some(r))),
                        JoinKind::Left => lt.left_join(&rt, &store, move |l, r| concat(Some(l), r)),
                        JoinKind::Full => lt.outer_join(&rt, &store, concat),
                    })
                }
                (Joined::Stream(s), SourceKind::Table) => {
                    let s = rekey(s, &j.left, !j.rekey_left, ty);
                    let t = keyed_table(b, right, &format!("{id}-RIGHT{n}"), !j.rekey_right, ty);
                    Joined::Stream(match j.kind {
                        JoinKind::Left => s.left_join(&t, move |l, r| concat(Some(l), r)),
                        _ => s.join(&t, move |l, r| concat(Some(l), Some(r))),
                    })
                }
                (Joined::Stream(s), SourceKind::Stream) => {
                    let s = rekey(s, &j.left, !j.rekey_left, ty);
                    let o = rekey(stream(b, right), &j.right, !j.rekey_right, ty);
                    let (before, after, grace) = j.within.unwrap_or((0, 0, 0));
                    let w = JoinWindows { before, after, grace };
                    Joined::Stream(match j.kind {
                        JoinKind::Inner => s.join_windowed(&o, w, move |l, r| concat(Some(l), Some(r))),
                        JoinKind::Left => s.left_join_windowed(&o, w, move |l, r| concat(Some(l), r)),
                        JoinKind::Full => s.outer_join_windowed(&o, w, concat),
                    })
                }
                (Joined::Table(_), SourceKind::Stream) => {
                    unreachable!("planning refuses a table joined with a stream")
                }
            };
        }
        match joined {
            Joined::Stream(s) => self.after_stream(s, emit_final),
            Joined::Table(t) => self.after_table(t),
        }
    }

    fn after_stream(&self, s: KStream<Row, Row>, emit_final: bool) -> KStream<Row, Option<Row>> {
        let p = self.inner.clone();
        let s = match &p.filter {
            Some(f) => {
                let f = f.clone();
                s.filter(move |_, v| f.eval(&v.0, &EvalCtx::default()) == Value::Bool(true))
            }
            None => s,
        };
        match &p.shape {
            Shape::Project { key, values } => {
                let (key, values) = (key.clone(), values.clone());
                let cx = EvalCtx::default();
                match key {
                    None => s.map_values(move |_, v| Some(Row(values.iter().map(|e| e.eval(&v.0, &cx)).collect()))),
                    Some(key) => s.map(move |_, v| {
                        let k = Row(key.iter().map(|e| e.eval(&v.0, &cx)).collect());
                        (k, Some(Row(values.iter().map(|e| e.eval(&v.0, &cx)).collect())))
                    }),
                }
            }
            Shape::Aggregate { keys, aggs, .. } => {
                // Grouped by the record key as it is: no repartition (after a join the key is
                // the join key, not the left source's key columns).
                let by_key = p.joins.is_empty()
                    && keys.len() == p.sources[0].0.schema.key_count()
                    && keys.iter().enumerate().all(|(i, k)| *k == Scalar::Column(i));
                let keys = keys.clone();
                // Rows with a null grouping value are dropped, as ksqlDB drops them.
                let grouped = if by_key {
                    s.filter(|k, _| !k.0.iter().any(Value::is_null)).group_by_key()
                } else {
                    let k2 = keys.clone();
                    s.filter(move |_, v| !k2.iter().any(|e| e.eval(&v.0, &EvalCtx::default()).is_null()))
                        .group_by(move |_, v| Row(keys.iter().map(|e| e.eval(&v.0, &EvalCtx::default())).collect()))
                };
                let store = format!("{}-AGGREGATE", p.id);
                let aggs = Arc::new(aggs.clone());
                let (a1, a2, a3) = (aggs.clone(), aggs.clone(), aggs.clone());
                let init = move || Row(a1.iter().map(|a| a.func.init()).collect());
                let add = move |_: &Row, v: &Row, state: Row| {
                    Row(a2.iter().zip(state.0).map(|(a, s)| a.add(s, &v.0)).collect())
                };
                let plan = self.clone();
                match p.window {
                    None => {
                        let t = grouped.aggregate(&store, init, add);
                        t.to_stream().map_values(move |k, state| state.and_then(|s| plan.finish(k, &s, None)))
                    }
                    Some(w) => {
                        let grace = w.grace.unwrap_or(DEFAULT_GRACE_MS);
                        let t: KTable<Windowed<Row>, Row> = match w.kind {
                            WindowKind::Tumbling { size } => {
                                let mut ws = grouped.windowed_by(TimeWindows::of(size).grace(grace));
                                if emit_final {
                                    ws = ws.emit_final();
                                }
                                ws.aggregate(&store, init, add)
                            }
                            WindowKind::Hopping { size, advance } => {
                                let mut ws =
                                    grouped.windowed_by(TimeWindows::of(size).advance_by(advance).grace(grace));
                                if emit_final {
                                    ws = ws.emit_final();
                                }
                                ws.aggregate(&store, init, add)
                            }
                            WindowKind::Session { gap } => {
                                let mut ws =
                                    grouped.windowed_by_session(SessionWindows::with_inactivity_gap(gap).grace(grace));
                                if emit_final {
                                    ws = ws.emit_final();
                                }
                                let merge = move |_: &Row, a: Row, b: Row| {
                                    Row(a3
                                        .iter()
                                        .zip(a.0.into_iter().zip(b.0))
                                        .map(|(f, (x, y))| f.merge(x, y))
                                        .collect())
                                };
                                ws.aggregate(&store, init, add, merge)
                            }
                        };
                        t.to_stream().map(move |k, state| {
                            let window = (k.start, k.end);
                            let out = state.and_then(|s| plan.finish(&k.key, &s, Some(window)));
                            let mut key = k.key.0;
                            key.push(Value::BigInt(window.0));
                            key.push(Value::BigInt(window.1));
                            (Row(key), out)
                        })
                    }
                }
            }
        }
    }

    /// An aggregate's state made an output value row; `None` when HAVING drops it.
    pub fn finish(&self, key: &Row, state: &Row, window: Option<(i64, i64)>) -> Option<Row> {
        let Shape::Aggregate { aggs, values, having, .. } = &self.inner.shape else { return None };
        let mut row = key.0.clone();
        row.extend(aggs.iter().zip(&state.0).map(|(a, s)| a.result(s)));
        let cx = EvalCtx { window };
        if let Some(h) = having
            && h.eval(&row, &cx) != Value::Bool(true)
        {
            return None;
        }
        Some(Row(values.iter().map(|e| e.eval(&row, &cx)).collect()))
    }

    fn after_table(&self, t: KTable<Row, Row>) -> KStream<Row, Option<Row>> {
        let p = self.inner.clone();
        let values = match &p.shape {
            Shape::Project { values, .. } => values,
            Shape::Aggregate { keys, aggs, .. } => return self.aggregate_table(t, keys, aggs),
        };
        let (filter, values) = (p.filter.clone(), values.clone());
        let projected = t.map_values(&format!("{}-PROJECT", p.id), move |_, v| {
            let cx = EvalCtx::default();
            if let Some(f) = &filter
                && f.eval(&v.0, &cx) != Value::Bool(true)
            {
                return None;
            }
            Some(Row(values.iter().map(|e| e.eval(&v.0, &cx)).collect()))
        });
        projected.to_stream()
    }
}

impl QueryPlan {
    /// A table's rows grouped and aggregated: a row that changes group, stops matching WHERE
    /// or is deleted is taken out of its old group (retracted) before it joins its new one.
    fn aggregate_table(&self, t: KTable<Row, Row>, keys: &[Scalar], aggs: &[AggCall]) -> KStream<Row, Option<Row>> {
        let p = self.inner.clone();
        // Rows failing WHERE, or with a null grouping value, are in no group.
        let (filter, k1) = (p.filter.clone(), keys.to_vec());
        let kept = t.filter(&format!("{}-FILTER", p.id), move |_, v| {
            let cx = EvalCtx::default();
            filter.as_ref().is_none_or(|f| f.eval(&v.0, &cx) == Value::Bool(true))
                && !k1.iter().any(|e| e.eval(&v.0, &cx).is_null())
        });
        let k2 = keys.to_vec();
        let grouped =
            kept.group_by(move |_, v| (Row(k2.iter().map(|e| e.eval(&v.0, &EvalCtx::default())).collect()), v.clone()));
        let aggs = Arc::new(aggs.to_vec());
        let (a1, a2, a3) = (aggs.clone(), aggs.clone(), aggs);
        let init = move || Row(a1.iter().map(|a| a.func.init()).collect());
        let add =
            move |_: &Row, v: &Row, state: Row| Row(a2.iter().zip(state.0).map(|(a, s)| a.add(s, &v.0)).collect());
        let sub =
            move |_: &Row, v: &Row, state: Row| Row(a3.iter().zip(state.0).map(|(a, s)| a.retract(s, &v.0)).collect());
        let table = grouped.aggregate(&format!("{}-AGGREGATE", p.id), init, add, sub);
        let plan = self.clone();
        table.to_stream().map_values(move |k, state| state.and_then(|s| plan.finish(k, &s, None)))
    }
}

/// `s` reading the right side of a joined row (its columns moved past the left side's).
fn shift(s: &Scalar, by: usize) -> Scalar {
    s.rewrite(&|x| match x {
        Scalar::Column(i) => Some(Scalar::Column(i + by)),
        _ => None,
    })
}

/// The output schema and value expressions: select items equal to a key expression name the
/// key column and leave the value.
fn split_key(
    keys: &[(Scalar, SqlType, String)],
    items: &[(Scalar, SqlType, String)],
    also_key: &[Scalar],
    window: Option<WindowKind>,
) -> (Schema, Vec<Scalar>) {
    let mut columns = Vec::new();
    let mut used = vec![false; items.len()];
    for (k, (s, t, default)) in keys.iter().enumerate() {
        let hit = items
            .iter()
            .enumerate()
            .position(|(i, (x, _, _))| !used[i] && (x == s || (k == 0 && also_key.contains(x))));
        let name = match hit {
            Some(i) => {
                used[i] = true;
                items[i].2.clone()
            }
            None => default.clone(),
        };
        columns.push(Column { name, ty: t.clone(), key: true });
    }
    if window.is_some() {
        for n in ["WINDOWSTART", "WINDOWEND"] {
            columns.push(Column { name: n.into(), ty: SqlType::BigInt, key: true });
        }
    }
    let mut values = Vec::new();
    for (i, (s, t, n)) in items.iter().enumerate() {
        let window_bound = window.is_some() && matches!(s, Scalar::WindowStart | Scalar::WindowEnd);
        if !(used[i] || window_bound) {
            columns.push(Column { name: n.clone(), ty: t.clone(), key: false });
            values.push(s.clone());
        }
    }
    (Schema { columns }, values)
}

fn stream(b: &StreamsBuilder, src: &SourceDef) -> KStream<Row, Row> {
    let s = src.clone();
    b.stream_decoded(&src.topic, move |ctx, raw| {
        let r = s.decode(ctx, raw)?;
        // A stream has no deletions: a record without a value is skipped.
        let value = r.value.ok_or("a record without a value")?;
        Ok(Record { key: r.key, value, timestamp: r.timestamp, headers: r.headers })
    })
}

fn table(b: &StreamsBuilder, src: &SourceDef, store: &str) -> KTable<Row, Row> {
    let s = src.clone();
    b.table_decoded(&src.topic, store, move |ctx, raw| {
        let r = s.decode(ctx, raw)?;
        // A table row needs its key, as in ksqlDB.
        if r.key.0.iter().all(Value::is_null) && !r.key.0.is_empty() {
            return Err("a table record without a key".into());
        }
        Ok(r)
    })
}

/// A table keyed for a join: as read when both sides are co-partitioned, otherwise its
/// changes go through a repartition topic keyed by its key cast to `ty` (a table joins on its
/// primary key).
fn keyed_table(
    b: &StreamsBuilder,
    src: &SourceDef,
    store: &str,
    copartitioned: bool,
    ty: &SqlType,
) -> KTable<Row, Row> {
    if copartitioned {
        return table(b, src, store);
    }
    let s = src.clone();
    let changes: KStream<Row, Option<Row>> = b.stream_decoded(&src.topic, move |ctx, raw| s.decode(ctx, raw));
    let ty = ty.clone();
    changes
        .filter(|k, _| k.0.first().is_some_and(|v| !v.is_null()))
        .select_key(move |k, _| Row(vec![crate::expr::cast(k.get(0).clone(), &ty)]))
        .to_table(store)
}

/// The joined tables `t` keyed by their key cast to `ty`, through a repartition topic.
fn rekey_table(t: &KTable<Row, Row>, ty: &SqlType, store: &str) -> KTable<Row, Row> {
    let ty = ty.clone();
    t.to_stream()
        .filter(|k, _| k.0.first().is_some_and(|v| !v.is_null()))
        .select_key(move |k, _| Row(vec![crate::expr::cast(k.get(0).clone(), &ty)]))
        .to_table(store)
}

/// A stream keyed by its join expression: as read when both sides are co-partitioned,
/// otherwise rekeyed (through a repartition topic) by the expression cast to `ty`. Rows
/// whose join key is null are dropped, as ksqlDB drops them.
fn rekey(s: KStream<Row, Row>, by: &Scalar, copartitioned: bool, ty: &SqlType) -> KStream<Row, Row> {
    if copartitioned {
        return s.filter(|k, _| !k.0.iter().any(Value::is_null));
    }
    let (by, ty) = (by.clone(), ty.clone());
    // One evaluation per row: the key, or the row dropped when it is null.
    s.flat_map(move |_, v| {
        let key = by.eval(&v.0, &EvalCtx::default());
        (!key.is_null()).then(|| (Row(vec![crate::expr::cast(key, &ty)]), v))
    })
}

/// Encodes result rows for a topic: key columns with `key_format` (and the window, as
/// Kafka's windowed serdes lay it out), value columns with `value_format`.
pub fn encoder(
    schema: &Schema,
    key_format: Format,
    value_format: Format,
    window: Option<WindowKind>,
) -> impl Fn(&Row, Option<&Row>) -> (Option<Bytes>, Option<Bytes>) + Send + Sync + 'static {
    let key_cols: Vec<Column> = schema
        .keys()
        .filter(|c| window.is_none() || !matches!(c.name.as_str(), "WINDOWSTART" | "WINDOWEND"))
        .cloned()
        .collect();
    let value_cols: Vec<Column> = schema.values().cloned().collect();
    move |k, v| {
        let kc: Vec<&Column> = key_cols.iter().collect();
        let n = kc.len();
        let key = key_format.encode(&k.0[..n.min(k.0.len())], &kc, true).map(|kb| match window {
            None => kb,
            Some(w) => {
                let (start, end) = (k.get(n).as_i64().unwrap_or(0), k.get(n + 1).as_i64().unwrap_or(0));
                let mut out = Vec::with_capacity(kb.len() + 16);
                out.extend_from_slice(&kb);
                if matches!(w, WindowKind::Session { .. }) {
                    out.extend_from_slice(&end.to_be_bytes());
                }
                out.extend_from_slice(&start.to_be_bytes());
                Bytes::from(out)
            }
        });
        let vc: Vec<&Column> = value_cols.iter().collect();
        let value = v.and_then(|v| value_format.encode(&v.0, &vc, false));
        (key, value)
    }
}
