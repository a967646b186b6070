//! `sluice sql`: streaming SQL from a shell (line editing, history, multi-line statements,
//! completion of keywords and names), or from `-e "..."` and `-f FILE`; results as aligned
//! tables, JSON lines or CSV.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_proto::v1::{ExecuteRequest, QueryRequest, SqlRow, query_response};
use tokio_stream::StreamExt;

use crate::GatewayArg;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    /// Run these statements and exit.
    #[arg(short = 'e', long = "execute", value_name = "SQL", conflicts_with = "file")]
    execute: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// How results are printed.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// A statement property, KEY=VALUE (auto.offset.reset=earliest reads topics from their
    /// start in the queries started).
    #[arg(short = 'p', long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    #[command(flatten)]
    gw: GatewayArg,
}

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "HAVING",
    "PARTITION",
    "EMIT",
    "CHANGES",
    "FINAL",
    "LIMIT",
    "WINDOW",
    "TUMBLING",
    "HOPPING",
    "SESSION",
    "SIZE",
    "ADVANCE",
    "GRACE",
    "PERIOD",
    "JOIN",
    "LEFT",
    "FULL",
    "OUTER",
    "INNER",
    "ON",
    "WITHIN",
    "CREATE",
    "STREAM",
    "TABLE",
    "WITH",
    "AS",
    "INSERT",
    "INTO",
    "VALUES",
    "SHOW",
    "LIST",
    "STREAMS",
    "TABLES",
    "QUERIES",
    "TOPICS",
    "DESCRIBE",
    "EXTENDED",
    "EXPLAIN",
    "DROP",
    "DELETE",
    "TOPIC",
    "TERMINATE",
    "ALL",
    "KEY",
    "PRIMARY",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "LIKE",
    "BETWEEN",
    "IN",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "COUNT_DISTINCT",
    "LATEST_BY_OFFSET",
    "EARLIEST_BY_OFFSET",
    "COLLECT_LIST",
    "WINDOWSTART",
    "WINDOWEND",
    "ROWTIME",
    "ROWPARTITION",
    "ROWOFFSET",
    "KAFKA_TOPIC",
    "VALUE_FORMAT",
    "KEY_FORMAT",
    "PARTITIONS",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "BIGINT",
    "INTEGER",
    "DOUBLE",
    "STRING",
    "VARCHAR",
    "BOOLEAN",
    "BYTES",
    "DATE",
    "ARRAY",
    "MAP",
    "STRUCT",
    "SECONDS",
    "MINUTES",
    "HOURS",
    "DAYS",
    "MILLISECONDS",
];

struct Session {
    client: sluice_client::Client,
    output: OutputFormat,
    properties: std::collections::HashMap<String, String>,
}

pub async fn run(a: SqlArgs) -> anyhow::Result<ExitCode> {
    let mut properties = std::collections::HashMap::new();
    for p in &a.properties {
        let Some((k, v)) = p.split_once('=') else {
            eprintln!("error: property '{p}' is not KEY=VALUE");
            return Ok(ExitCode::from(2));
        };
        properties.insert(k.trim().to_string(), v.trim().to_string());
    }
    let client = a.gw.connect().await?;
    let session = Session { client, output: a.output, properties };
    let text = match (&a.execute, &a.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                return Ok(ExitCode::from(2));
            }
        },
        (None, None) => None,
    };
    match text {
        Some(t) => Ok(if session.run_text(&t).await { ExitCode::SUCCESS } else { ExitCode::from(1) }),
        None => shell(session).await,
    }
}

impl Session {
    /// Runs every statement of `text`; false at the first that fails.
    async fn run_text(&self, text: &str) -> bool {
        let statements = match sluice_sql::parse(text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return false;
            }
        };
        for s in statements {
            let ok = match &s.statement {
                sluice_sql::ast::Statement::Select(_) => self.query(&s.text).await,
                _ => self.execute(&s.text).await,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    async fn execute(&self, sql: &str) -> bool {
        let req = ExecuteRequest { sql: sql.to_string(), properties: self.properties.clone() };
        match self.client.sql_api().execute(req).await {
            Ok(resp) => {
                for r in resp.into_inner().results {
                    if !r.message.is_empty() {
                        println!("{}", r.message);
                    }
                    if !r.columns.is_empty() {
                        self.print(&r.columns, &r.rows);
                    }
                }
                true
            }
            Err(s) => {
                eprintln!("error: {}", s.message());
                false
            }
        }
    }

    /// A pull query prints its rows; a push query prints rows as they come until its LIMIT,
    /// the end of its stream or Ctrl-C.
    async fn query(&self, sql: &str) -> bool {
        let req = QueryRequest { sql: sql.to_string(), properties: self.properties.clone() };
        let mut stream = match self.client.sql_api().query(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                eprintln!("error: {}", s.message());
                return false;
            }
        };
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        let mut streaming = false;
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = tokio::signal::ctrl_c() => break,
            };
            match next {
                None => break,
                Some(Err(s)) => {
                    eprintln!("error: {}", s.message());
                    return false;
                }
                Some(Ok(r)) => match r.kind {
                    Some(query_response::Kind::Header(h)) => {
                        // A push query's header names the types: rows print as they come.
                        streaming = !h.types.is_empty();
                        columns = h.columns;
                        if streaming {
                            self.print_header(&columns);
                        }
                    }
                    Some(query_response::Kind::Row(row)) if streaming => self.print_row(&columns, &row),
                    Some(query_response::Kind::Row(row)) => rows.push(row),
                    None => {}
                },
            }
        }
        if !streaming {
            self.print(&columns, &rows);
        }
        true
    }

    fn print(&self, columns: &[String], rows: &[SqlRow]) {
        match self.output {
            OutputFormat::Table => print!("{}", table(columns, rows)),
            _ => {
                self.print_header(columns);
                for r in rows {
                    self.print_row(columns, r);
                }
            }
        }
    }

    fn print_header(&self, columns: &[String]) {
        match self.output {
            OutputFormat::Csv => println!("{}", columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")),
            OutputFormat::Table => {
                println!("{}", columns.iter().map(|c| format!("{c:<16}")).collect::<Vec<_>>().join(" | "))
            }
            OutputFormat::Json => {}
        }
    }

    fn print_row(&self, columns: &[String], row: &SqlRow) {
        match self.output {
            OutputFormat::Json => {
                let obj: serde_json::Map<String, serde_json::Value> = columns
                    .iter()
                    .zip(&row.cells)
                    .map(|(c, v)| (c.clone(), serde_json::from_str(v).unwrap_or(serde_json::Value::Null)))
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            }
            OutputFormat::Csv => {
                println!("{}", row.cells.iter().map(|c| csv_field(&plain(c))).collect::<Vec<_>>().join(","))
            }
            OutputFormat::Table => {
                println!("{}", row.cells.iter().map(|c| format!("{:<16}", plain(c))).collect::<Vec<_>>().join(" | "))
            }
        }
    }
}

/// A JSON cell as shown: strings without their quotes, null as NULL.
fn plain(cell: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(cell) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "NULL".into(),
        Ok(v) => v.to_string(),
        Err(_) => cell.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Rows as an aligned table with a rule under the header and a row count.
fn table(columns: &[String], rows: &[SqlRow]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells.iter().map(|c| plain(c)).collect()).collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            // Multi-line cells (EXPLAIN's topology) do not widen the table past their lines.
            let w = c.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            if let Some(x) = widths.get_mut(i) {
                *x = (*x).max(w);
            }
        }
    }
    let line = |vals: &[String]| -> String {
        let height = vals.iter().map(|v| v.lines().count().max(1)).max().unwrap_or(1);
        let mut out = String::new();
        for h in 0..height {
            let parts: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{:<w$}", vals.get(i).and_then(|v| v.lines().nth(h)).unwrap_or("")))
                .collect();
            out.push_str(parts.join(" | ").trim_end());
            out.push('\n');
        }
        out
    };
    let mut out = line(columns);
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.push('\n');
    for r in &cells {
        out.push_str(&line(r));
    }
    out.push_str(&format!("({} row{})\n", cells.len(), if cells.len() == 1 { "" } else { "s" }));
    out
}

/// Completes keywords and the names of streams, tables and queries.
struct Helper {
    names: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl rustyline::completion::Completer for Helper {
    type Candidate = String;
    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let start = line[..pos].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let upper = word.to_uppercase();
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        let mut out: Vec<String> = KEYWORDS
            .iter()
            .map(|k| k.to_string())
            .chain(names)
            .filter(|c| c.to_uppercase().starts_with(&upper))
            .collect();
        out.sort();
        out.dedup();
        Ok((start, out))
    }
}
impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

/// Whether `buf` ends a statement: a `;` outside quotes at its end.
fn complete_statement(buf: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut last = None;
    for c in buf.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '`' || c == '"' => quote = Some(c),
            None if !c.is_whitespace() => last = Some(c),
            None => {}
        }
    }
    quote.is_none() && last == Some(';')
}

async fn shell(session: Session) -> anyhow::Result<ExitCode> {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let refresh = |names: std::sync::Arc<std::sync::Mutex<Vec<String>>>, client: sluice_client::Client| async move {
        let mut found = Vec::new();
        for what in ["SHOW STREAMS", "SHOW TABLES", "SHOW QUERIES"] {
            let req = ExecuteRequest { sql: what.into(), properties: Default::default() };
            if let Ok(r) = client.sql_api().execute(req).await {
                for res in r.into_inner().results {
                    found.extend(res.rows.iter().filter_map(|r| r.cells.first()).map(|c| plain(c)));
                }
            }
        }
        if let Ok(mut n) = names.lock() {
            *n = found;
        }
    };
    refresh(names.clone(), session.client.clone()).await;
    let mut editor: rustyline::Editor<Helper, rustyline::history::DefaultHistory> = rustyline::Editor::new()?;
    editor.set_helper(Some(Helper { names: names.clone() }));
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("Sluice SQL. Statements end with ';'. Ctrl-C cancels a query or the line, Ctrl-D leaves.");
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() { "sluice> " } else { "     -> " };
        // The editor blocks: it runs off the async threads.
        let (line, back) = tokio::task::spawn_blocking(move || {
            let l = editor.readline(prompt);
            (l, editor)
        })
        .await?;
        editor = back;
        match line {
            Ok(l) => {
                if !buf.is_empty() {
                    buf.push('\n');
                }
                buf.push_str(&l);
                if !complete_statement(&buf) {
                    continue;
                }
                let _ = editor.add_history_entry(buf.as_str());
                session.run_text(&buf).await;
                buf.clear();
                refresh(names.clone(), session.client.clone()).await;
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buf.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_statements_end_at_a_semicolon_outside_quotes() {
        let rows = vec![
            SqlRow { cells: vec!["\"a\"".into(), "12".into()] },
            SqlRow { cells: vec!["null".into(), "3".into()] },
        ];
        let t = table(&["NAME".into(), "N".into()], &rows);
        assert_eq!(t, "NAME | N\n-----+---\na    | 12\nNULL | 3\n(2 rows)\n");
        assert!(complete_statement("SELECT 1;"));
        assert!(!complete_statement("SELECT ';"));
        assert!(!complete_statement("SELECT 1"));
        assert!(complete_statement("SELECT ';' ;  "));
    }
}
