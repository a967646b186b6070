//! Serialization formats of keys and values, as ksqlDB names them: `JSON` (an object of
//! columns for values, the bare value for a single key column), `DELIMITED` (comma-separated
//! fields), `KAFKA` (one primitive column in Kafka's serializers' bytes) and `NONE` (no key).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;

use crate::types::{Column, SqlType, Value};

/// A key or value format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Delimited,
    Kafka,
    None,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Format::Json),
            "DELIMITED" => Ok(Format::Delimited),
            "KAFKA" => Ok(Format::Kafka),
            "NONE" => Ok(Format::None),
            other => Err(format!("unknown format '{other}': JSON, DELIMITED, KAFKA or NONE")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Delimited => "DELIMITED",
            Format::Kafka => "KAFKA",
            Format::None => "NONE",
        }
    }

    /// Whether the format can carry these columns (`key`: as a record key).
    pub fn check(self, columns: &[&Column], key: bool) -> Result<(), String> {
        let what = if key { "key" } else { "value" };
        match self {
            Format::None if !columns.is_empty() => {
                Err(format!("{what} format NONE holds no columns, but {} are declared", columns.len()))
            }
            Format::Kafka if columns.len() > 1 => Err(format!(
                "{what} format KAFKA holds a single column, but {} are declared: use JSON or DELIMITED",
                columns.len()
            )),
            Format::Kafka | Format::Delimited => {
                for c in columns {
                    let ok = match self {
                        Format::Kafka => {
                            matches!(
                                c.ty,
                                SqlType::Int | SqlType::BigInt | SqlType::Double | SqlType::String | SqlType::Bytes
                            )
                        }
                        _ => !matches!(c.ty, SqlType::Array(_) | SqlType::Map(_) | SqlType::Struct(_)),
                    };
                    if !ok {
                        return Err(format!(
                            "{what} format {} cannot hold column {} of type {}",
                            self.name(),
                            c.name,
                            c.ty
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Decodes bytes into the values of `columns` (in order).
    pub fn decode(self, bytes: &[u8], columns: &[&Column], key: bool) -> Result<Vec<Value>, String> {
        match self {
            Format::None => Ok(Vec::new()),
            Format::Kafka => {
                let Some(c) = columns.first() else { return Ok(Vec::new()) };
                Ok(vec![kafka_decode(bytes, &c.ty)?])
            }
            Format::Json => {
                let json: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
                if key && columns.len() == 1 {
                    return Ok(vec![
                        from_json(&json, &columns[0].ty).map_err(|e| format!("{}: {e}", columns[0].name))?,
                    ]);
                }
                let Json::Object(fields) = json else {
                    return Err("a JSON object was expected".into());
                };
                columns
                    .iter()
                    .map(|c| {
                        // Field names match columns regardless of case, as in ksqlDB.
                        let v = fields
                            .get(&c.name)
                            .or_else(|| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.name)).map(|(_, v)| v));
                        match v {
                            None => Ok(Value::Null),
                            Some(v) => from_json(v, &c.ty).map_err(|e| format!("{}: {e}", c.name)),
                        }
                    })
                    .collect()
            }
            Format::Delimited => {
                let text = std::str::from_utf8(bytes).map_err(|_| "DELIMITED data is not UTF-8".to_string())?;
                let fields = split_delimited(text)?;
                if fields.len() != columns.len() {
                    return Err(format!("{} fields where {} columns are declared", fields.len(), columns.len()));
                }
                columns
                    .iter()
                    .zip(fields)
                    .map(|(c, f)| match f {
                        None => Ok(Value::Null),
                        Some(f) => parse_text(&f, &c.ty).map_err(|e| format!("{}: {e}", c.name)),
                    })
                    .collect()
            }
        }
    }

    /// Encodes values of `columns`; `None` for a format holding nothing.
    pub fn encode(self, values: &[Value], columns: &[&Column], key: bool) -> Option<Bytes> {
        match self {
            Format::None => None,
            Format::Kafka => values.first().and_then(kafka_encode),
            Format::Json => {
                if key && columns.len() == 1 {
                    return Some(Bytes::from(to_json(&values[0]).to_string()));
                }
                let mut obj = serde_json::Map::with_capacity(columns.len());
                for (c, v) in columns.iter().zip(values) {
                    obj.insert(c.name.clone(), to_json(v));
                }
                Some(Bytes::from(Json::Object(obj).to_string()))
            }
            Format::Delimited => {
                let mut out = String::new();
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if v.is_null() {
                        continue;
                    }
                    let s = v.to_string();
                    if s.contains([',', '"', '\n']) || s.is_empty() {
                        out.push('"');
                        out.push_str(&s.replace('"', "\"\""));
                        out.push('"');
                    } else {
                        out.push_str(&s);
                    }
                }
                Some(Bytes::from(out))
            }
        }
    }
}

fn kafka_decode(bytes: &[u8], ty: &SqlType) -> Result<Value, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(format!("{ty} in format KAFKA is {n} bytes, not {}", bytes.len()))
        }
    };
    Ok(match ty {
        SqlType::Int => Value::Int(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "bad INT")?)),
        SqlType::BigInt => Value::BigInt(i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "bad BIGINT")?)),
        SqlType::Double => Value::Double(f64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "bad DOUBLE")?)),
        SqlType::String => {
            Value::String(Arc::from(std::str::from_utf8(bytes).map_err(|_| "a STRING key is not UTF-8".to_string())?))
        }
        SqlType::Bytes => Value::Bytes(Bytes::copy_from_slice(bytes)),
        other => return Err(format!("format KAFKA cannot hold {other}")),
    })
}

fn kafka_encode(v: &Value) -> Option<Bytes> {
    Some(match v {
        Value::Null => return None,
        Value::Int(i) => Bytes::copy_from_slice(&i.to_be_bytes()),
        Value::BigInt(i) | Value::Timestamp(i) => Bytes::copy_from_slice(&i.to_be_bytes()),
        Value::Double(d) => Bytes::copy_from_slice(&d.to_be_bytes()),
        Value::Bytes(b) => b.clone(),
        other => Bytes::from(other.to_string()),
    })
}

/// Fields of a comma-separated line; an empty unquoted field is null.
fn split_delimited(text: &str) -> Result<Vec<Option<String>>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("an unterminated quote in DELIMITED data".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' {
                break;
            }
            if quoted {
                return Err("text after a closing quote in DELIMITED data".into());
            }
            field.push(c);
            chars.next();
        }
        fields.push(if field.is_empty() && !quoted { None } else { Some(field) });
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// A value of type `ty` written as text (DELIMITED fields, CAST from STRING).
pub fn parse_text(s: &str, ty: &SqlType) -> Result<Value, String> {
    let bad = || format!("'{s}' is not a valid {ty}");
    let t = s.trim();
    Ok(match ty {
        SqlType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad()),
        },
        SqlType::Int => Value::Int(t.parse().map_err(|_| bad())?),
        SqlType::BigInt => Value::BigInt(t.parse().map_err(|_| bad())?),
        SqlType::Double => Value::Double(t.parse().map_err(|_| bad())?),
        SqlType::String => Value::str(s),
        SqlType::Bytes => Value::Bytes(Bytes::from(unbase64(t).ok_or_else(bad)?)),
        SqlType::Timestamp => match t.parse::<i64>() {
            Ok(ms) => Value::Timestamp(ms),
            Err(_) => Value::Timestamp(parse_iso(t).ok_or_else(bad)?),
        },
        SqlType::Date => {
            let ms = crate::time::parse(t, "yyyy-MM-dd").map_err(|_| bad())?;
            Value::Date((ms / 86_400_000) as i32)
        }
        other => return Err(format!("{other} cannot be read from text")),
    })
}

/// `2024-01-02T03:04:05[.678][Z]` or with a space.
fn parse_iso(t: &str) -> Option<i64> {
    let t = t.trim_end_matches('Z').replace(' ', "T");
    for p in ["yyyy-MM-dd'T'HH:mm:ss.SSS", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd"] {
        if let Ok(ms) = crate::time::parse(&t, p) {
            return Some(ms);
        }
    }
    None
}

/// A JSON value read as type `ty` (numbers convert between numeric types, numbers and
/// booleans from strings, as ksqlDB does).
pub fn from_json(v: &Json, ty: &SqlType) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let bad = || format!("{v} is not a valid {ty}");
    Ok(match ty {
        SqlType::Null => Value::Null,
        SqlType::Boolean => match v {
            Json::Bool(b) => Value::Bool(*b),
            Json::String(s) => parse_text(s, ty)?,
            _ => return Err(bad()),
        },
        SqlType::Int => match v {
            Json::Number(n) => Value::Int(n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(bad)?),
            Json::String(s) => parse_text(s, ty)?,
            _ => return Err(bad()),
        },
        SqlType::BigInt | SqlType::Timestamp => {
            let n = match v {
                Json::Number(n) => n.as_i64().ok_or_else(bad)?,
                Json::String(s) => match parse_text(s, ty)? {
                    Value::Timestamp(t) | Value::BigInt(t) => t,
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            };
            if *ty == SqlType::Timestamp { Value::Timestamp(n) } else { Value::BigInt(n) }
        }
        SqlType::Double => match v {
            Json::Number(n) => Value::Double(n.as_f64().ok_or_else(bad)?),
            Json::String(s) => parse_text(s, ty)?,
            _ => return Err(bad()),
        },
        SqlType::String => match v {
            Json::String(s) => Value::str(s),
            // ksqlDB reads any JSON as a STRING column: its text.
            other => Value::str(&other.to_string()),
        },
        SqlType::Bytes => match v {
            Json::String(s) => parse_text(s, ty)?,
            _ => return Err(bad()),
        },
        SqlType::Date => match v {
            Json::Number(n) => Value::Date(n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(bad)?),
            Json::String(s) => parse_text(s, ty)?,
            _ => return Err(bad()),
        },
        SqlType::Array(item) => match v {
            Json::Array(items) => {
                Value::Array(Arc::new(items.iter().map(|i| from_json(i, item)).collect::<Result<_, _>>()?))
            }
            _ => return Err(bad()),
        },
        SqlType::Map(item) => match v {
            Json::Object(m) => Value::Map(Arc::new(
                m.iter().map(|(k, v)| Ok((k.clone(), from_json(v, item)?))).collect::<Result<_, String>>()?,
            )),
            _ => return Err(bad()),
        },
        SqlType::Struct(fields) => match v {
            Json::Object(m) => Value::Struct(Arc::new(
                fields
                    .iter()
                    .map(|(name, t)| {
                        let v = m
                            .get(name)
                            .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v));
                        Ok((name.clone(), v.map(|v| from_json(v, t)).transpose()?.unwrap_or(Value::Null)))
                    })
                    .collect::<Result<_, String>>()?,
            )),
            _ => return Err(bad()),
        },
    })
}

/// A value as JSON (timestamps as milliseconds, dates as days, bytes as base64).
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::BigInt(i) | Value::Timestamp(i) => Json::from(*i),
        Value::Date(d) => Json::from(*d),
        Value::Double(d) => serde_json::Number::from_f64(*d).map(Json::Number).unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.to_string()),
        Value::Bytes(b) => Json::String(base64(b)),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) | Value::Struct(entries) => {
            Json::Object(entries.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (BYTES in JSON and text, as ksqlDB writes them).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: SqlType) -> Column {
        Column { name: name.into(), ty, key: false }
    }

    #[test]
    fn formats_read_and_write_columns() {
        let cols = [
            col("ID", SqlType::BigInt),
            col("NAME", SqlType::String),
            col("TAGS", SqlType::Array(Box::new(SqlType::Int))),
        ];
        let refs: Vec<&Column> = cols.iter().collect();
        let row = Format::Json.decode(br#"{"id": 7, "Name": "a", "tags": [1, 2]}"#, &refs, false).unwrap();
        assert_eq!(row[0], Value::BigInt(7));
        assert_eq!(row[1], Value::str("a"));
        let back = Format::Json.encode(&row, &refs, false).unwrap();
        assert_eq!(&back[..], br#"{"ID":7,"NAME":"a","TAGS":[1,2]}"#);
        assert!(Format::Json.decode(br#"{"id": "x"}"#, &refs, false).unwrap_err().contains("ID"));

        let two = &refs[..2];
        let row = Format::Delimited.decode(br#"7,"a, ""b""#, two, false).unwrap();
        assert_eq!(row, vec![Value::BigInt(7), Value::str(r#"a, "b"#)]);
        assert_eq!(&Format::Delimited.encode(&row, two, false).unwrap()[..], br#"7,"a, ""b""#);
        assert_eq!(Format::Delimited.decode(b",x", two, false).unwrap()[0], Value::Null);
        assert!(Format::Delimited.decode(b"1", two, false).is_err());

        let k = [col("K", SqlType::Int)];
        let kr: Vec<&Column> = k.iter().collect();
        assert_eq!(Format::Kafka.decode(&5i32.to_be_bytes(), &kr, true).unwrap(), vec![Value::Int(5)]);
        assert!(Format::Kafka.decode(&[1, 2], &kr, true).is_err());
        assert!(Format::Kafka.check(&refs, true).is_err());
        assert_eq!(base64(b"hello!?"), "aGVsbG8hPw==");
        assert_eq!(unbase64("aGVsbG8hPw==").unwrap(), b"hello!?");
    }
}
