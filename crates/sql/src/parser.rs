//! Statements parsed with `sqlparser`'s tokenizer and expression parser, the statements
//! themselves (ksqlDB's CREATE STREAM/TABLE, EMIT, WINDOW, WITHIN, PARTITION BY, SHOW,
//! TERMINATE ...) by this module. Errors name the line, the column and what was expected.

use sqlparser::ast::{Expr, Ident};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use crate::SqlError;
use crate::ast::*;
use crate::types::SqlType;

/// A statement and its text (what goes on the command topic and into EXPLAIN).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub statement: Statement,
    pub text: String,
}

/// Parses one or more statements separated by semicolons.
pub fn parse(sql: &str) -> Result<Vec<Parsed>, SqlError> {
    let dialect = GenericDialect {};
    let parser = Parser::new(&dialect).try_with_sql(sql).map_err(|e| from_parser(e, None))?;
    let lines: Vec<&str> = sql.split('\n').collect();
    let end = (lines.len() as u64, lines.last().map_or(0, |l| l.chars().count()) as u64 + 1);
    let mut p = P { p: parser, owed_gt: 0, end, type_depth: 0 };
    let mut out = Vec::new();
    loop {
        while p.p.consume_token(&Token::SemiColon) {}
        let first = p.p.peek_token();
        if first.token == Token::EOF {
            break;
        }
        let statement = p.statement()?;
        p.p.prev_token();
        let last = p.p.next_token();
        let next = p.p.peek_token();
        if next.token != Token::SemiColon && next.token != Token::EOF {
            return Err(p.expected("';' or the end of the statement", &next));
        }
        let text = slice(sql, first.span.start, last.span.end).trim().to_string();
        out.push(Parsed { statement, text });
    }
    if out.is_empty() {
        return Err(SqlError::Parse { line: 1, column: 1, message: "no statement".into() });
    }
    Ok(out)
}

/// Parses a single expression (tests, `INSERT ... VALUES` literals).
pub fn parse_expr(sql: &str) -> Result<Expr, SqlError> {
    let dialect = GenericDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(|e| from_parser(e, None))?;
    p.parse_expr().map_err(|e| from_parser(e, None))
}

fn offset(sql: &str, loc: Location) -> usize {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in sql.char_indices() {
        if line == loc.line && col == loc.column {
            return i;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    sql.len()
}

fn slice(sql: &str, from: Location, to: Location) -> &str {
    let (a, b) = (offset(sql, from), offset(sql, to));
    sql.get(a..b.max(a)).unwrap_or(sql)
}

/// A `sqlparser` error with its location taken out of the message ("... at Line: 1, Column: 5").
fn from_parser(e: ParserError, at: Option<&TokenWithSpan>) -> SqlError {
    let text = match e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => "the statement nests too deep".into(),
    };
    if let Some(i) = text.find(" at Line: ") {
        let (msg, loc) = text.split_at(i);
        let nums: Vec<u64> =
            loc.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
        if let [line, column, ..] = nums[..] {
            return SqlError::Parse { line, column, message: msg.to_string() };
        }
    }
    let (line, column) = at.map_or((1, 1), |t| (t.span.start.line.max(1), t.span.start.column.max(1)));
    SqlError::Parse { line, column, message: text }
}

/// An identifier as ksqlDB reads it: upper-cased unless quoted.
pub fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() { i.value.clone() } else { i.value.to_uppercase() }
}

/// How deep ARRAY, MAP and STRUCT types may nest.
const MAX_TYPE_DEPTH: usize = 32;

/// Words ending a FROM item (so they are not read as its alias).
const CLAUSE_WORDS: &[&str] = &[
    "WINDOW",
    "WHERE",
    "GROUP",
    "PARTITION",
    "HAVING",
    "EMIT",
    "LIMIT",
    "JOIN",
    "LEFT",
    "INNER",
    "FULL",
    "OUTER",
    "ON",
    "WITHIN",
    "GRACE",
];

struct P<'a> {
    p: Parser<'a>,
    /// `>` still to close after a `>>` token.
    owed_gt: usize,
    /// Just past the text: where errors at its end point (EOF tokens carry no place).
    end: (u64, u64),
    /// How deep the type being read nests (bounded: a type is read recursively).
    type_depth: usize,
}

impl P<'_> {
    fn err(&self, at: &TokenWithSpan, message: String) -> SqlError {
        let (line, column) = if at.token == Token::EOF { self.end } else { (at.span.start.line, at.span.start.column) };
        SqlError::Parse { line, column, message }
    }

    fn expected(&self, what: &str, found: &TokenWithSpan) -> SqlError {
        let found_text = if found.token == Token::EOF {
            "the end of the statement".to_string()
        } else {
            format!("'{}'", found.token)
        };
        self.err(found, format!("expected {what}, found {found_text}"))
    }

    fn map<T>(&self, r: Result<T, ParserError>) -> Result<T, SqlError> {
        let mut at = self.p.peek_token();
        if at.token == Token::EOF {
            at.span.start = Location { line: self.end.0, column: self.end.1 };
        }
        r.map_err(|e| from_parser(e, Some(&at)))
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(&self.p.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    fn peek_nth_word(&self, n: usize, word: &str) -> bool {
        matches!(&self.p.peek_nth_token(n).token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.peek_word(word) {
            self.p.next_token();
            true
        } else {
            false
        }
    }

    fn eat_all(&mut self, words: &[&str]) -> bool {
        if words.iter().enumerate().all(|(i, w)| self.peek_nth_word(i, w)) {
            for _ in words {
                self.p.next_token();
            }
            true
        } else {
            false
        }
    }

    fn expect(&mut self, word: &str) -> Result<(), SqlError> {
        if self.eat(word) { Ok(()) } else { Err(self.expected(word, &self.p.peek_token())) }
    }

    fn expect_token(&mut self, t: Token) -> Result<(), SqlError> {
        if self.p.consume_token(&t) { Ok(()) } else { Err(self.expected(&format!("'{t}'"), &self.p.peek_token())) }
    }

    fn name(&mut self) -> Result<String, SqlError> {
        let t = self.p.peek_token();
        match &t.token {
            Token::Word(_) => {
                let i = {
                    let r = self.p.parse_identifier();
                    self.map(r)
                }?;
                Ok(ident(&i))
            }
            _ => Err(self.expected("a name", &t)),
        }
    }

    fn statement(&mut self) -> Result<Statement, SqlError> {
        let t = self.p.peek_token();
        if self.eat("CREATE") {
            return self.create();
        }
        if self.eat("INSERT") {
            return self.insert();
        }
        if self.peek_word("SELECT") {
            return Ok(Statement::Select(self.query()?));
        }
        if self.eat("SHOW") || self.eat("LIST") {
            let what = self.p.peek_token();
            let what = if self.eat("STREAMS") {
                ShowWhat::Streams
            } else if self.eat("TABLES") {
                ShowWhat::Tables
            } else if self.eat("QUERIES") {
                ShowWhat::Queries
            } else if self.eat("TOPICS") {
                ShowWhat::Topics
            } else {
                return Err(self.expected("STREAMS, TABLES, QUERIES or TOPICS", &what));
            };
            let extended = self.eat("EXTENDED");
            return Ok(Statement::Show { what, extended });
        }
        if self.eat("DESCRIBE") {
            let name = self.name()?;
            let extended = self.eat("EXTENDED");
            return Ok(Statement::Describe { name, extended });
        }
        if self.eat("EXPLAIN") {
            let starts = ["CREATE", "INSERT", "SELECT"];
            if starts.iter().any(|w| self.peek_word(w)) {
                return Ok(Statement::Explain(Explained::Statement(Box::new(self.statement()?))));
            }
            return Ok(Statement::Explain(Explained::Query(self.name()?)));
        }
        if self.eat("DROP") {
            let kind = self.kind()?;
            let if_exists = self.eat_all(&["IF", "EXISTS"]);
            let name = self.name()?;
            let delete_topic = self.eat_all(&["DELETE", "TOPIC"]);
            return Ok(Statement::Drop { kind, name, if_exists, delete_topic });
        }
        if self.eat("TERMINATE") {
            if self.eat("ALL") {
                return Ok(Statement::Terminate(None));
            }
            return Ok(Statement::Terminate(Some(self.name()?)));
        }
        Err(self.expected("a statement (CREATE, INSERT, SELECT, SHOW, LIST, DESCRIBE, EXPLAIN, DROP or TERMINATE)", &t))
    }

    fn kind(&mut self) -> Result<SourceKind, SqlError> {
        if self.eat("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.eat("TABLE") {
            Ok(SourceKind::Table)
        } else {
            Err(self.expected("STREAM or TABLE", &self.p.peek_token()))
        }
    }

    fn create(&mut self) -> Result<Statement, SqlError> {
        let or_replace = self.eat_all(&["OR", "REPLACE"]);
        self.eat("SOURCE");
        let kind = self.kind()?;
        let if_not_exists = self.eat_all(&["IF", "NOT", "EXISTS"]);
        let name = self.name()?;
        let mut columns = Vec::new();
        if self.p.consume_token(&Token::LParen) {
            loop {
                columns.push(self.column_def()?);
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(Token::RParen)?;
        }
        let props = if self.eat("WITH") { self.props()? } else { Vec::new() };
        if self.eat("AS") {
            if !columns.is_empty() {
                return Err(self.err(
                    &self.p.peek_token(),
                    "a CREATE ... AS SELECT takes its columns from the query: declare none".into(),
                ));
            }
            let query = self.query()?;
            return Ok(Statement::CreateAs { kind, name, or_replace, if_not_exists, props, query });
        }
        Ok(Statement::CreateSource { kind, name, or_replace, if_not_exists, columns, props })
    }

    fn column_def(&mut self) -> Result<ColumnDef, SqlError> {
        let name = self.name()?;
        let ty = self.data_type()?;
        let primary = self.eat_all(&["PRIMARY", "KEY"]);
        let key = primary || self.eat("KEY");
        Ok(ColumnDef { name, ty, key, primary })
    }

    /// ksqlDB's types: BOOLEAN, INT/INTEGER, BIGINT, DOUBLE, STRING/VARCHAR, BYTES,
    /// TIMESTAMP, DATE, ARRAY<T>, MAP<STRING, T>, STRUCT<name T, ...>.
    fn data_type(&mut self) -> Result<SqlType, SqlError> {
        if self.type_depth >= MAX_TYPE_DEPTH {
            return Err(self.err(&self.p.peek_token(), format!("types nest {MAX_TYPE_DEPTH} deep at most")));
        }
        self.type_depth += 1;
        let t = self.data_type_inner();
        self.type_depth -= 1;
        t
    }

    fn data_type_inner(&mut self) -> Result<SqlType, SqlError> {
        let t = self.p.next_token();
        let Token::Word(w) = &t.token else { return Err(self.expected("a type", &t)) };
        let word = w.value.to_ascii_uppercase();
        Ok(match word.as_str() {
            "BOOLEAN" | "BOOL" => SqlType::Boolean,
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" => SqlType::BigInt,
            "DOUBLE" => SqlType::Double,
            "STRING" | "VARCHAR" => {
                // VARCHAR(n): the length is accepted and not enforced, as in ksqlDB.
                if self.p.consume_token(&Token::LParen) {
                    {
                        let r = self.p.parse_literal_uint();
                        self.map(r)
                    }?;
                    self.expect_token(Token::RParen)?;
                }
                SqlType::String
            }
            "BYTES" => SqlType::Bytes,
            "TIMESTAMP" => SqlType::Timestamp,
            "DATE" => SqlType::Date,
            "ARRAY" => {
                self.expect_token(Token::Lt)?;
                let item = self.data_type()?;
                self.close_angle()?;
                SqlType::Array(Box::new(item))
            }
            "MAP" => {
                self.expect_token(Token::Lt)?;
                let key = self.p.peek_token();
                if self.data_type()? != SqlType::String {
                    return Err(self.err(&key, "map keys are STRING".into()));
                }
                self.expect_token(Token::Comma)?;
                let item = self.data_type()?;
                self.close_angle()?;
                SqlType::Map(Box::new(item))
            }
            "STRUCT" => {
                self.expect_token(Token::Lt)?;
                let mut fields = Vec::new();
                loop {
                    let name = self.name()?;
                    fields.push((name, self.data_type()?));
                    // A `>>` just closed a nested type and this one with it.
                    if self.owed_gt > 0 || !self.p.consume_token(&Token::Comma) {
                        break;
                    }
                }
                self.close_angle()?;
                SqlType::Struct(fields)
            }
            "DECIMAL" | "NUMERIC" | "TIME" => {
                return Err(self.err(&t, format!("type {word} is not supported yet: use DOUBLE, BIGINT or TIMESTAMP")));
            }
            _ => return Err(self.expected("a type", &t)),
        })
    }

    /// A closing `>`; `>>` (one token) closes two nested types.
    fn close_angle(&mut self) -> Result<(), SqlError> {
        if self.owed_gt > 0 {
            self.owed_gt -= 1;
            return Ok(());
        }
        let t = self.p.peek_token();
        match t.token {
            Token::Gt => {
                self.p.next_token();
                Ok(())
            }
            Token::ShiftRight => {
                self.p.next_token();
                self.owed_gt = 1;
                Ok(())
            }
            _ => Err(self.expected("'>'", &t)),
        }
    }

    fn props(&mut self) -> Result<Props, SqlError> {
        self.expect_token(Token::LParen)?;
        let mut props = Vec::new();
        loop {
            let name = self.name()?.to_ascii_lowercase();
            self.expect_token(Token::Eq)?;
            let t = self.p.next_token();
            let value = match &t.token {
                Token::SingleQuotedString(s) => PropValue::Str(s.clone()),
                Token::Number(n, _) => PropValue::Num(n.clone()),
                Token::Word(w) if w.value.eq_ignore_ascii_case("true") => PropValue::Bool(true),
                Token::Word(w) if w.value.eq_ignore_ascii_case("false") => PropValue::Bool(false),
                _ => return Err(self.expected("a quoted string, a number or a boolean", &t)),
            };
            if props.iter().any(|(n, _)| *n == name) {
                return Err(self.err(&t, format!("property '{name}' is given twice")));
            }
            props.push((name, value));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(Token::RParen)?;
        Ok(props)
    }

    fn insert(&mut self) -> Result<Statement, SqlError> {
        self.expect("INTO")?;
        let target = self.name()?;
        let mut columns = None;
        if self.p.consume_token(&Token::LParen) {
            let mut cols = Vec::new();
            loop {
                cols.push(self.name()?);
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(Token::RParen)?;
            columns = Some(cols);
        }
        if self.eat("VALUES") {
            self.expect_token(Token::LParen)?;
            let values = {
                let r = self.p.parse_comma_separated(Parser::parse_expr);
                self.map(r)
            }?;
            self.expect_token(Token::RParen)?;
            return Ok(Statement::InsertValues { target, columns, values });
        }
        if columns.is_some() {
            return Err(self.expected("VALUES", &self.p.peek_token()));
        }
        if self.eat("WITH") {
            self.props()?;
        }
        if !self.peek_word("SELECT") {
            return Err(self.expected("VALUES or SELECT", &self.p.peek_token()));
        }
        Ok(Statement::InsertSelect { target, query: self.query()? })
    }

    fn expr(&mut self) -> Result<Expr, SqlError> {
        let r = self.p.parse_expr();
        self.map(r)
    }

    fn query(&mut self) -> Result<Query, SqlError> {
        self.expect("SELECT")?;
        let mut items = Vec::new();
        loop {
            items.push(self.select_item()?);
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect("FROM")?;
        let from = self.source_item()?;
        let mut joins = Vec::new();
        loop {
            let kind = if self.eat_all(&["LEFT", "OUTER", "JOIN"]) || self.eat_all(&["LEFT", "JOIN"]) {
                JoinKind::Left
            } else if self.eat_all(&["FULL", "OUTER", "JOIN"]) || self.eat_all(&["FULL", "JOIN"]) {
                JoinKind::Full
            } else if self.eat_all(&["INNER", "JOIN"]) || self.eat("JOIN") {
                JoinKind::Inner
            } else if self.peek_word("RIGHT") {
                return Err(self.err(
                    &self.p.peek_token(),
                    "RIGHT JOIN is not supported: swap the sources and use LEFT JOIN".into(),
                ));
            } else {
                break;
            };
            let source = self.source_item()?;
            let mut within = None;
            let mut grace = None;
            if self.eat("WITHIN") {
                if self.p.consume_token(&Token::LParen) {
                    let before = self.duration()?;
                    self.expect_token(Token::Comma)?;
                    let after = self.duration()?;
                    self.expect_token(Token::RParen)?;
                    within = Some((before, after));
                } else {
                    let d = self.duration()?;
                    within = Some((d, d));
                }
                if self.eat_all(&["GRACE", "PERIOD"]) {
                    grace = Some(self.duration()?);
                }
            }
            self.expect("ON")?;
            let on = self.expr()?;
            joins.push(Join { kind, source, within, grace, on });
        }
        let window = if self.eat("WINDOW") { Some(self.window()?) } else { None };
        let filter = if self.eat("WHERE") { Some(self.expr()?) } else { None };
        let mut group_by = Vec::new();
        if self.eat_all(&["GROUP", "BY"]) {
            group_by = {
                let r = self.p.parse_comma_separated(Parser::parse_expr);
                self.map(r)
            }?;
        }
        let partition_by = if self.eat_all(&["PARTITION", "BY"]) { Some(self.expr()?) } else { None };
        let having = if self.eat("HAVING") { Some(self.expr()?) } else { None };
        let emit = if self.eat("EMIT") {
            if self.eat("CHANGES") {
                Some(Emit::Changes)
            } else if self.eat("FINAL") {
                Some(Emit::Final)
            } else {
                return Err(self.expected("CHANGES or FINAL", &self.p.peek_token()));
            }
        } else {
            None
        };
        let limit = if self.eat("LIMIT") {
            Some({
                let r = self.p.parse_literal_uint();
                self.map(r)
            }?)
        } else {
            None
        };
        Ok(Query { items, from, joins, window, filter, group_by, partition_by, having, emit, limit })
    }

    fn select_item(&mut self) -> Result<SelectItem, SqlError> {
        if self.p.consume_token(&Token::Mul) {
            return Ok(SelectItem::Wildcard);
        }
        if matches!(self.p.peek_token().token, Token::Word(_))
            && self.p.peek_nth_token(1).token == Token::Period
            && self.p.peek_nth_token(2).token == Token::Mul
        {
            let name = self.name()?;
            self.p.next_token();
            self.p.next_token();
            return Ok(SelectItem::QualifiedWildcard(name));
        }
        let expr = self.expr()?;
        let named = self.eat("AS") || (matches!(self.p.peek_token().token, Token::Word(_)) && !self.peek_word("FROM"));
        let alias = if named { Some(self.name()?) } else { None };
        Ok(SelectItem::Expr { expr, alias })
    }

    fn source_item(&mut self) -> Result<FromItem, SqlError> {
        let name = self.name()?;
        self.eat("AS");
        let alias = match &self.p.peek_token().token {
            Token::Word(w)
                if !CLAUSE_WORDS.iter().any(|c| w.value.eq_ignore_ascii_case(c)) || w.quote_style.is_some() =>
            {
                Some(self.name()?)
            }
            _ => None,
        };
        Ok(FromItem { name, alias })
    }

    fn window(&mut self) -> Result<WindowSpec, SqlError> {
        let t = self.p.peek_token();
        let kind_word = if self.eat("TUMBLING") {
            "TUMBLING"
        } else if self.eat("HOPPING") {
            "HOPPING"
        } else if self.eat("SESSION") {
            "SESSION"
        } else {
            return Err(self.expected("TUMBLING, HOPPING or SESSION", &t));
        };
        self.expect_token(Token::LParen)?;
        let kind = match kind_word {
            "TUMBLING" => {
                self.expect("SIZE")?;
                WindowKind::Tumbling { size: self.duration()? }
            }
            "HOPPING" => {
                self.expect("SIZE")?;
                let size = self.duration()?;
                self.expect_token(Token::Comma)?;
                self.expect("ADVANCE")?;
                self.expect("BY")?;
                let advance = self.duration()?;
                WindowKind::Hopping { size, advance }
            }
            _ => WindowKind::Session { gap: self.duration()? },
        };
        let mut grace = None;
        if self.p.consume_token(&Token::Comma) {
            self.expect("GRACE")?;
            self.expect("PERIOD")?;
            grace = Some(self.duration()?);
        }
        self.expect_token(Token::RParen)?;
        Ok(WindowSpec { kind, grace })
    }

    /// `N UNIT`: MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS (singular too).
    fn duration(&mut self) -> Result<i64, SqlError> {
        let t = self.p.next_token();
        let Token::Number(n, _) = &t.token else { return Err(self.expected("a number", &t)) };
        let n: i64 = n.parse().map_err(|_| self.err(&t, format!("'{n}' is not a whole number")))?;
        let u = self.p.next_token();
        let unit = match &u.token {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => return Err(self.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS)", &u)),
        };
        let ms = match unit.trim_end_matches('S') {
            "MILLISECOND" => 1,
            "SECOND" => 1000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => return Err(self.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS)", &u)),
        };
        n.checked_mul(ms).ok_or_else(|| self.err(&t, "the duration is too long".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse(sql).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0).statement
    }

    #[test]
    fn statements_parse() {
        match one("CREATE STREAM n (a ARRAY<MAP<STRING, ARRAY<INT>>>, b STRUCT<x INT>) WITH (kafka_topic='n')") {
            Statement::CreateSource { columns, .. } => {
                assert_eq!(columns[0].ty.to_string(), "ARRAY<MAP<STRING, ARRAY<INTEGER>>>")
            }
            other => panic!("{other:?}"),
        }
        match one(
            "create stream pageviews (viewtime BIGINT, `userId` VARCHAR KEY, page STRING) with (kafka_topic='pv', value_format='json', partitions=4)",
        ) {
            Statement::CreateSource { kind, name, columns, props, .. } => {
                assert_eq!(kind, SourceKind::Stream);
                assert_eq!(name, "PAGEVIEWS");
                assert_eq!(columns[1].name, "userId");
                assert!(columns[1].key);
                assert_eq!(props[2], ("partitions".into(), PropValue::Num("4".into())));
            }
            other => panic!("{other:?}"),
        }
        match one(
            "CREATE TABLE c AS SELECT page, COUNT(*) AS n FROM pv p WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 10 SECONDS, GRACE PERIOD 5 SECONDS) WHERE page <> 'x' GROUP BY page HAVING COUNT(*) > 1 EMIT FINAL;",
        ) {
            Statement::CreateAs { query, .. } => {
                assert_eq!(query.from, FromItem { name: "PV".into(), alias: Some("P".into()) });
                assert_eq!(
                    query.window,
                    Some(WindowSpec { kind: WindowKind::Hopping { size: 60_000, advance: 10_000 }, grace: Some(5000) })
                );
                assert_eq!(query.group_by.len(), 1);
                assert_eq!(query.emit, Some(Emit::Final));
            }
            other => panic!("{other:?}"),
        }
        match one(
            "SELECT * FROM a LEFT JOIN b WITHIN (1 HOUR, 2 HOURS) GRACE PERIOD 1 MINUTE ON a.id = b.id EMIT CHANGES LIMIT 3",
        ) {
            Statement::Select(q) => {
                assert_eq!(q.joins[0].kind, JoinKind::Left);
                assert_eq!(q.joins[0].within, Some((3_600_000, 7_200_000)));
                assert_eq!(q.limit, Some(3));
                assert_eq!(q.items, vec![SelectItem::Wildcard]);
            }
            other => panic!("{other:?}"),
        }
        let all = parse("SHOW STREAMS; list queries; DROP TABLE IF EXISTS t DELETE TOPIC; TERMINATE ALL; EXPLAIN CTAS_T_1; INSERT INTO s (a, b) VALUES (1, 'x')").unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[2].statement,
            Statement::Drop { kind: SourceKind::Table, name: "T".into(), if_exists: true, delete_topic: true }
        );
        assert_eq!(all[2].text, "DROP TABLE IF EXISTS t DELETE TOPIC");
        assert_eq!(all[4].statement, Statement::Explain(Explained::Query("CTAS_T_1".into())));
    }

    #[test]
    fn errors_name_the_line_column_and_what_was_expected() {
        let e = parse("CREATE STREAM s (a INT)\nWITH (kafka_topic='t', value_format=)").unwrap_err();
        assert_eq!(e.to_string(), "line 2, column 37: expected a quoted string, a number or a boolean, found ')'");
        let e = parse("SELECT a FROM s WINDOW ROLLING (SIZE 1 MINUTE)").unwrap_err();
        assert!(e.to_string().starts_with("line 1, column 24: expected TUMBLING, HOPPING or SESSION"), "{e}");
        let e = parse("SELECT a +\n  FROM").unwrap_err();
        assert!(e.to_string().starts_with("line 2, column 7: expected FROM, found the end of the statement"), "{e}");
        let deep =
            format!("CREATE STREAM s (a {}INT{}) WITH (kafka_topic='t')", "ARRAY<".repeat(5000), "> ".repeat(5000));
        assert!(parse(&deep).unwrap_err().to_string().contains("types nest 32 deep at most"));
        let e = parse("SELEC a FROM s").unwrap_err();
        assert!(e.to_string().contains("expected a statement"), "{e}");
        let e = parse("CREATE STREAM s (a DECIMAL(4,2)) WITH (kafka_topic='t')").unwrap_err();
        assert!(e.to_string().contains("DECIMAL is not supported"), "{e}");
        let e = parse("SELECT * FROM s EMIT CHANGES x").unwrap_err();
        assert!(e.to_string().contains("expected ';' or the end of the statement, found 'x'"), "{e}");
    }
}
