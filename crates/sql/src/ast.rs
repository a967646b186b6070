//! Statements as parsed: ksqlDB's statements, with expressions left as `sqlparser`'s.

pub use sqlparser::ast::Expr;

use crate::types::SqlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stream,
    Table,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }
}

/// A column as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    /// `KEY` (streams) or `PRIMARY KEY` (tables).
    pub key: bool,
    pub primary: bool,
}

/// A `WITH (...)` property value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    Str(String),
    Num(String),
    Bool(bool),
}

impl PropValue {
    pub fn text(&self) -> String {
        match self {
            PropValue::Str(s) | PropValue::Num(s) => s.clone(),
            PropValue::Bool(b) => b.to_string(),
        }
    }
}

/// `WITH (...)` properties, names lower-cased.
pub type Props = Vec<(String, PropValue)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE STREAM|TABLE name (columns) WITH (...)`.
    CreateSource {
        kind: SourceKind,
        name: String,
        or_replace: bool,
        if_not_exists: bool,
        columns: Vec<ColumnDef>,
        props: Props,
    },
    /// `CREATE STREAM|TABLE name [WITH (...)] AS SELECT ...`: a persistent query.
    CreateAs {
        kind: SourceKind,
        name: String,
        or_replace: bool,
        if_not_exists: bool,
        props: Props,
        query: Query,
    },
    /// `INSERT INTO name SELECT ...`: a persistent query writing to an existing stream.
    InsertSelect {
        target: String,
        query: Query,
    },
    /// `INSERT INTO name [(columns)] VALUES (...)`.
    InsertValues {
        target: String,
        columns: Option<Vec<String>>,
        values: Vec<Expr>,
    },
    /// A push query (`EMIT CHANGES`) or a pull query (a table read by key).
    Select(Query),
    Show {
        what: ShowWhat,
        extended: bool,
    },
    Describe {
        name: String,
        extended: bool,
    },
    /// `EXPLAIN query_id` or `EXPLAIN statement`.
    Explain(Explained),
    Drop {
        kind: SourceKind,
        name: String,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `TERMINATE query_id`; `None`: `TERMINATE ALL`.
    Terminate(Option<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Explained {
    Query(String),
    Statement(Box<Statement>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    Streams,
    Tables,
    Queries,
    Topics,
}

// Built once per statement: the size of the expression variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`
    Wildcard,
    /// `alias.*`
    QualifiedWildcard(String),
    Expr {
        expr: Expr,
        alias: Option<String>,
    },
}

/// A source in FROM or JOIN, with its alias.
#[derive(Debug, Clone, PartialEq)]
pub struct FromItem {
    pub name: String,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Full,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub kind: JoinKind,
    pub source: FromItem,
    /// `WITHIN d` or `WITHIN (before, after)`, in milliseconds (stream-stream joins).
    pub within: Option<(i64, i64)>,
    pub grace: Option<i64>,
    pub on: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Hopping { size: i64, advance: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// Milliseconds; ksqlDB's default is 24 hours.
    pub grace: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    Changes,
    Final,
}

/// A SELECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub items: Vec<SelectItem>,
    pub from: FromItem,
    pub joins: Vec<Join>,
    pub window: Option<WindowSpec>,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub partition_by: Option<Expr>,
    pub having: Option<Expr>,
    pub emit: Option<Emit>,
    pub limit: Option<u64>,
}
