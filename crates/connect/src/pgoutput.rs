//! PostgreSQL's logical replication messages (the `pgoutput` plugin, protocol version 1), as
//! `pg_logical_slot_peek_binary_changes` returns them, and PostgreSQL values (in their text
//! form) as Kafka Connect fields.
//!
//! Every length is checked against what is left of the message before anything is read, so
//! a short or garbled message is an error, never a panic or a huge allocation.

use serde_json::{Value, json};

use crate::ConnectError;

/// A column of a table: its name, type and whether it is part of the replica identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub key: bool,
}

/// A column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// A TOASTed value that did not change: not sent.
    Unchanged,
    Text(String),
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01, PostgreSQL's epoch.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
    },
    Relation {
        oid: u32,
        schema: String,
        name: String,
        columns: Vec<Column>,
    },
    Insert {
        relation: u32,
        new: Vec<Cell>,
    },
    Update {
        relation: u32,
        /// The old row: its key columns (identity `K`) or all of it (`O`, REPLICA IDENTITY
        /// FULL); absent when the key did not change and the identity is the default.
        old: Option<(char, Vec<Cell>)>,
        new: Vec<Cell>,
    },
    Delete {
        relation: u32,
        old: (char, Vec<Cell>),
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, Type and logical messages: nothing a change event needs.
    Other(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConnectError> {
        if n > self.buf.len() {
            return Err(ConnectError::Data(format!(
                "pgoutput message cut short: {n} bytes wanted, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ConnectError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, ConnectError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, ConnectError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32, ConnectError> {
        Ok(self.i32()? as u32)
    }

    fn i64(&mut self) -> Result<i64, ConnectError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn cstr(&mut self) -> Result<String, ConnectError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| ConnectError::Data("pgoutput string without its terminating zero".into()))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Cell>, ConnectError> {
        let n = self.i16()?;
        // Each column takes a byte at least: a count beyond what is left is garbage.
        if n < 0 || n as usize > self.buf.len() {
            return Err(ConnectError::Data(format!("pgoutput tuple of {n} columns in {} bytes", self.buf.len())));
        }
        let mut cells = Vec::with_capacity(n as usize);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len)
                        .map_err(|_| ConnectError::Data(format!("pgoutput value of length {len}")))?;
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => return Err(ConnectError::Data(format!("pgoutput column kind {:?}", other as char))),
            });
        }
        Ok(cells)
    }
}

/// Decodes one message.
pub fn decode(data: &[u8]) -> Result<Message, ConnectError> {
    let mut r = Reader { buf: data };
    let kind = r.u8()?;
    Ok(match kind {
        b'B' => Message::Begin { final_lsn: r.i64()? as u64, commit_time: r.i64()?, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: r.i64()? as u64, end_lsn: r.i64()? as u64 }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 || n as usize > r.buf.len() {
                return Err(ConnectError::Data(format!("pgoutput relation of {n} columns")));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(Column { name, type_oid, key: flags & 1 == 1 });
            }
            Message::Relation { oid, schema, name, columns }
        }
        b'I' => {
            let relation = r.u32()?;
            expect(r.u8()?, b'N')?;
            Message::Insert { relation, new: r.tuple()? }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut tag = r.u8()?;
            if tag == b'K' || tag == b'O' {
                old = Some((tag as char, r.tuple()?));
                tag = r.u8()?;
            }
            expect(tag, b'N')?;
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32()?;
            let tag = r.u8()?;
            if tag != b'K' && tag != b'O' {
                return Err(ConnectError::Data(format!("pgoutput delete with tuple kind {:?}", tag as char)));
            }
            Message::Delete { relation, old: (tag as char, r.tuple()?) }
        }
        b'T' => {
            let n = r.i32()?;
            if n < 0 || n as usize > r.buf.len() / 4 + 1 {
                return Err(ConnectError::Data(format!("pgoutput truncate of {n} relations")));
            }
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

fn expect(tag: u8, want: u8) -> Result<(), ConnectError> {
    match tag == want {
        true => Ok(()),
        false => {
            Err(ConnectError::Data(format!("pgoutput tuple kind {:?} where {:?} belongs", tag as char, want as char)))
        }
    }
}

/// Microseconds since 2000-01-01 as milliseconds since 1970-01-01.
pub fn unix_ms(pg_micros: i64) -> i64 {
    pg_micros / 1000 + 946_684_800_000
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The Kafka Connect type a PostgreSQL type is carried as: integers, floats, booleans and
/// bytea as themselves, everything else (numeric, text, dates and times, uuid, json, arrays)
/// as the text PostgreSQL prints, which PostgreSQL reads back as the same value.
pub fn connect_type(type_oid: u32) -> &'static str {
    match type_oid {
        16 => "boolean",
        21 => "int16",
        23 => "int32",
        20 | 26 => "int64",
        700 => "float32",
        701 => "float64",
        17 => "bytes",
        _ => "string",
    }
}

/// A value from its text form, as [`connect_type`] says.
pub fn field_value(type_oid: u32, text: &str) -> Value {
    match connect_type(type_oid) {
        "boolean" => Value::Bool(text == "t" || text == "true"),
        "int16" | "int32" | "int64" => text.parse::<i64>().map_or_else(|_| text.into(), Value::from),
        // NaN and the infinities have no JSON number: they stay text.
        "float32" | "float64" => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(|| text.into(), Value::Number)
        }
        "bytes" => match text.strip_prefix("\\x").and_then(hex) {
            Some(b) => Value::String(crate::convert::base64_encode(&b)),
            None => text.into(),
        },
        _ => text.into(),
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A struct schema of `columns`; key columns are required, the others optional.
pub fn struct_schema(name: &str, columns: &[&Column], optional: bool) -> Value {
    let fields: Vec<Value> = columns
        .iter()
        .map(|c| json!({"field": c.name, "type": connect_type(c.type_oid), "optional": !c.key}))
        .collect();
    json!({"type": "struct", "name": name, "optional": optional, "fields": fields})
}

/// Debezium's placeholder for a TOASTed value that was not sent.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The row `cells` of `columns` as a JSON object (only the key columns when `key_only`).
pub fn row(columns: &[Column], cells: &[Cell], key_only: bool) -> Value {
    let mut out = serde_json::Map::new();
    for (c, cell) in columns.iter().zip(cells) {
        if key_only && !c.key {
            continue;
        }
        let v = match cell {
            Cell::Null => Value::Null,
            Cell::Unchanged if connect_type(c.type_oid) == "string" => UNAVAILABLE.into(),
            Cell::Unchanged => Value::Null,
            Cell::Text(t) => field_value(c.type_oid, t),
        };
        out.insert(c.name.clone(), v);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn text_cell(out: &mut Vec<u8>, s: &str) {
        out.push(b't');
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn decodes_relation_insert_update_delete_and_commit() {
        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut rel, "public");
        cstr(&mut rel, "orders");
        rel.push(b'f');
        rel.extend_from_slice(&2i16.to_be_bytes());
        rel.push(1);
        cstr(&mut rel, "id");
        rel.extend_from_slice(&23u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        rel.push(0);
        cstr(&mut rel, "note");
        rel.extend_from_slice(&25u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation { oid, schema, name, columns } = decode(&rel).unwrap() else { panic!("relation") };
        assert_eq!((oid, schema.as_str(), name.as_str()), (16384, "public", "orders"));
        assert!(columns[0].key && !columns[1].key);

        let mut ins = vec![b'I'];
        ins.extend_from_slice(&16384u32.to_be_bytes());
        ins.push(b'N');
        ins.extend_from_slice(&2i16.to_be_bytes());
        text_cell(&mut ins, "7");
        ins.push(b'n');
        let Message::Insert { new, .. } = decode(&ins).unwrap() else { panic!("insert") };
        assert_eq!(row(&columns, &new, false), json!({"id": 7, "note": null}));

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&16384u32.to_be_bytes());
        upd.push(b'O');
        upd.extend_from_slice(&2i16.to_be_bytes());
        text_cell(&mut upd, "7");
        upd.push(b'n');
        upd.push(b'N');
        upd.extend_from_slice(&2i16.to_be_bytes());
        text_cell(&mut upd, "7");
        upd.push(b'u');
        let Message::Update { old: Some(('O', old)), new, .. } = decode(&upd).unwrap() else { panic!("update") };
        assert_eq!(old[1], Cell::Null);
        assert_eq!(row(&columns, &new, false), json!({"id": 7, "note": UNAVAILABLE}));
        assert_eq!(row(&columns, &new, true), json!({"id": 7}));

        let mut del = vec![b'D'];
        del.extend_from_slice(&16384u32.to_be_bytes());
        del.push(b'K');
        del.extend_from_slice(&2i16.to_be_bytes());
        text_cell(&mut del, "7");
        del.push(b'n');
        assert!(matches!(decode(&del).unwrap(), Message::Delete { old: ('K', _), .. }));

        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        commit.extend_from_slice(&0x1_0000_0040u64.to_be_bytes());
        commit.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(decode(&commit).unwrap(), Message::Commit { commit_lsn: 0x1_0000_0010, end_lsn: 0x1_0000_0040 });
        assert_eq!(lsn_text(0x1_0000_0040), "1/40");
    }

    #[test]
    fn short_or_garbled_messages_are_errors() {
        for bad in
            [&b""[..], b"B\0\0", b"I\0\0\0\x01N\x7f\xff", b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff", b"R\0\0\0\x01abc"]
        {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode(b"Yxyz").unwrap(), Message::Other(b'Y'));
    }

    #[test]
    fn values_keep_their_types() {
        assert_eq!(field_value(16, "t"), json!(true));
        assert_eq!(field_value(20, "-12"), json!(-12));
        assert_eq!(field_value(701, "2.5"), json!(2.5));
        assert_eq!(field_value(701, "NaN"), json!("NaN"));
        assert_eq!(field_value(17, "\\x666f6f"), json!("Zm9v"));
        assert_eq!(field_value(1700, "12.30"), json!("12.30"));
        assert_eq!(unix_ms(0), 946_684_800_000);
    }
}
