//! Sluice streaming SQL: ksqlDB's statements over Sluice Streams. Statements are parsed
//! ([`parser`]), checked against a catalog of streams and tables, and persistent queries are
//! planned into Streams topologies that any number of stream-processor instances share.

pub mod agg;
pub mod ast;
pub mod engine;
pub mod expr;
pub mod format;
pub mod harness;
pub mod parser;
pub mod plan;
pub mod time;
pub mod types;

pub use engine::{Engine, Outcome, QueryInfo};
pub use parser::{Parsed, parse};
pub use types::{Column, Row, Schema, SqlType, Value};

/// What can be wrong with a statement.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse.
    #[error("line {line}, column {column}: {message}")]
    Parse { line: u64, column: u64, message: String },
    /// An expression's types do not fit (the message names the column and the types).
    #[error("{0}")]
    Type(String),
    /// A stream, table, column or query that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stream or table that exists already.
    #[error("{0}")]
    Exists(String),
    /// A statement that parses but cannot be run as written.
    #[error("{0}")]
    Invalid(String),
}
