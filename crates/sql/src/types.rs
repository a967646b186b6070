//! SQL types and values, rows, and the compact binary layout rows take in state stores and
//! internal topics.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_streams::{Codec, CodecError};

/// A column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlType {
    Boolean,
    Int,
    BigInt,
    Double,
    String,
    Bytes,
    /// Milliseconds since the epoch, UTC.
    Timestamp,
    /// Days since the epoch.
    Date,
    Array(Box<SqlType>),
    /// Keys are strings.
    Map(Box<SqlType>),
    Struct(Vec<(String, SqlType)>),
    /// The type of a bare NULL literal: it fits anywhere, and no column has it.
    Null,
}

impl SqlType {
    pub fn is_numeric(&self) -> bool {
        matches!(self, SqlType::Int | SqlType::BigInt | SqlType::Double | SqlType::Null)
    }

    /// Whether a value of this type can stand where `want` is expected.
    pub fn fits(&self, want: &SqlType) -> bool {
        self == want || *self == SqlType::Null
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => f.write_str("BOOLEAN"),
            SqlType::Int => f.write_str("INTEGER"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Double => f.write_str("DOUBLE"),
            SqlType::String => f.write_str("STRING"),
            SqlType::Bytes => f.write_str("BYTES"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Null => f.write_str("NULL"),
            SqlType::Array(t) => write!(f, "ARRAY<{t}>"),
            SqlType::Map(t) => write!(f, "MAP<STRING, {t}>"),
            SqlType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n} {t}")?;
                }
                f.write_str(">")
            }
        }
    }
}

/// A value of some [`SqlType`], or null.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    BigInt(i64),
    Double(f64),
    String(Arc<str>),
    Bytes(Bytes),
    Timestamp(i64),
    Date(i32),
    Array(Arc<Vec<Value>>),
    Map(Arc<Vec<(String, Value)>>),
    /// Fields in the order of the struct's type.
    Struct(Arc<Vec<(String, Value)>>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::String(Arc::from(s))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a 64-bit integer, for integer types.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i as i64),
            Value::BigInt(i) | Value::Timestamp(i) => Some(*i),
            Value::Date(d) => Some(*d as i64),
            _ => None,
        }
    }

    /// The value as a double, for numeric types.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::BigInt(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A total order for sorting, MIN/MAX and comparisons of values of one type (numbers
    /// compare across integer and double); `None` when the two cannot be compared.
    pub fn compare(&self, other: &Value) -> Option<std::cmp::Ordering> {
        use Value::*;
        match (self, other) {
            (Null, _) | (_, Null) => None,
            (Bool(a), Bool(b)) => Some(a.cmp(b)),
            (String(a), String(b)) => Some(a.cmp(b)),
            (Bytes(a), Bytes(b)) => Some(a.cmp(b)),
            (Timestamp(a), Timestamp(b)) => Some(a.cmp(b)),
            (Date(a), Date(b)) => Some(a.cmp(b)),
            (Double(_), _) | (_, Double(_)) => self.as_f64()?.partial_cmp(&other.as_f64()?),
            (Int(_) | BigInt(_), Int(_) | BigInt(_)) => Some(self.as_i64()?.cmp(&other.as_i64()?)),
            (Array(a), Array(b)) => {
                for (x, y) in a.iter().zip(b.iter()) {
                    match x.compare(y)? {
                        std::cmp::Ordering::Equal => continue,
                        o => return Some(o),
                    }
                }
                Some(a.len().cmp(&b.len()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(i) => write!(f, "{i}"),
            Value::Double(d) => write!(f, "{d:?}"),
            Value::String(s) => f.write_str(s),
            Value::Bytes(b) => write!(f, "{}", crate::format::base64(b)),
            Value::Timestamp(t) => f.write_str(&crate::time::format_iso(*t)),
            Value::Date(d) => f.write_str(&crate::time::format_date(*d)),
            Value::Array(_) | Value::Map(_) | Value::Struct(_) => {
                f.write_str(&crate::format::to_json(self).to_string())
            }
        }
    }
}

/// A row: values in the order of its schema's columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }
}

/// Rows in stores and on internal topics: a count, then each value tagged by its kind.
impl Codec for Row {
    fn encode(&self) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(16 * self.0.len() + 4);
        out.put_u32(self.0.len() as u32);
        for v in &self.0 {
            put_value(&mut out, v);
        }
        Some(out.freeze())
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut b = bytes;
        let n = take_len(&mut b)?;
        let mut values = Vec::with_capacity(n.min(b.len()));
        for _ in 0..n {
            values.push(take_value(&mut b, 0)?);
        }
        Ok(Row(values))
    }
}

fn put_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => out.put_u8(0),
        Value::Bool(b) => {
            out.put_u8(1);
            out.put_u8(*b as u8)
        }
        Value::Int(i) => {
            out.put_u8(2);
            out.put_i32(*i)
        }
        Value::BigInt(i) => {
            out.put_u8(3);
            out.put_i64(*i)
        }
        Value::Double(d) => {
            out.put_u8(4);
            out.put_f64(*d)
        }
        Value::String(s) => {
            out.put_u8(5);
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes())
        }
        Value::Bytes(b) => {
            out.put_u8(6);
            out.put_u32(b.len() as u32);
            out.put_slice(b)
        }
        Value::Timestamp(t) => {
            out.put_u8(7);
            out.put_i64(*t)
        }
        Value::Date(d) => {
            out.put_u8(8);
            out.put_i32(*d)
        }
        Value::Array(items) => {
            out.put_u8(9);
            out.put_u32(items.len() as u32);
            for i in items.iter() {
                put_value(out, i);
            }
        }
        Value::Map(entries) | Value::Struct(entries) => {
            out.put_u8(if matches!(v, Value::Map(_)) { 10 } else { 11 });
            out.put_u32(entries.len() as u32);
            for (k, v) in entries.iter() {
                out.put_u32(k.len() as u32);
                out.put_slice(k.as_bytes());
                put_value(out, v);
            }
        }
    }
}

fn short() -> CodecError {
    CodecError("a stored row is cut short".into())
}

fn take_len(b: &mut &[u8]) -> Result<usize, CodecError> {
    if b.remaining() < 4 {
        return Err(short());
    }
    Ok(b.get_u32() as usize)
}

fn take_bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let n = take_len(b)?;
    if b.len() < n {
        return Err(short());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_str(b: &mut &[u8]) -> Result<String, CodecError> {
    String::from_utf8(take_bytes(b)?.to_vec()).map_err(|_| CodecError("a stored string is not UTF-8".into()))
}

fn take_value(b: &mut &[u8], depth: usize) -> Result<Value, CodecError> {
    if depth > 64 {
        return Err(CodecError("a stored value nests too deep".into()));
    }
    if b.is_empty() {
        return Err(short());
    }
    let need = |b: &&[u8], n: usize| if b.remaining() < n { Err(short()) } else { Ok(()) };
    Ok(match b.get_u8() {
        0 => Value::Null,
        1 => {
            need(b, 1)?;
            Value::Bool(b.get_u8() != 0)
        }
        2 => {
            need(b, 4)?;
            Value::Int(b.get_i32())
        }
        3 => {
            need(b, 8)?;
            Value::BigInt(b.get_i64())
        }
        4 => {
            need(b, 8)?;
            Value::Double(b.get_f64())
        }
        5 => Value::String(Arc::from(take_str(b)?)),
        6 => Value::Bytes(Bytes::copy_from_slice(take_bytes(b)?)),
        7 => {
            need(b, 8)?;
            Value::Timestamp(b.get_i64())
        }
        8 => {
            need(b, 4)?;
            Value::Date(b.get_i32())
        }
        9 => {
            let n = take_len(b)?;
            let mut items = Vec::with_capacity(n.min(b.len()));
            for _ in 0..n {
                items.push(take_value(b, depth + 1)?);
            }
            Value::Array(Arc::new(items))
        }
        t @ (10 | 11) => {
            let n = take_len(b)?;
            let mut entries = Vec::with_capacity(n.min(b.len()));
            for _ in 0..n {
                let k = take_str(b)?;
                entries.push((k, take_value(b, depth + 1)?));
            }
            if t == 10 { Value::Map(Arc::new(entries)) } else { Value::Struct(Arc::new(entries)) }
        }
        t => return Err(CodecError(format!("unknown value tag {t} in a stored row"))),
    })
}

/// A column of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    /// Part of the record's key (a stream's KEY, a table's PRIMARY KEY).
    pub key: bool,
}

/// The columns of a stream or table: key columns first, then value columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub columns: Vec<Column>,
}

impl Schema {
    pub fn keys(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.key)
    }
    pub fn values(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.key)
    }
    pub fn key_count(&self) -> usize {
        self.keys().count()
    }
    pub fn find(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_through_their_binary_layout_and_cut_ones_are_refused() {
        let row = Row(vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(-3),
            Value::BigInt(1 << 40),
            Value::Double(2.5),
            Value::str("héllo"),
            Value::Bytes(Bytes::from_static(b"\x00\x01")),
            Value::Timestamp(1_700_000_000_000),
            Value::Date(19000),
            Value::Array(Arc::new(vec![Value::Int(1), Value::Null])),
            Value::Map(Arc::new(vec![("a".into(), Value::BigInt(1))])),
            Value::Struct(Arc::new(vec![("X".into(), Value::str("y"))])),
        ]);
        let bytes = row.encode().unwrap();
        assert_eq!(Row::decode(&bytes).unwrap(), row);
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(Row::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A count far beyond the bytes given allocates nothing big and fails.
        assert!(Row::decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
