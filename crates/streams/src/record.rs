//! What flows between processors: typed records, table changes and windowed keys.

use bytes::Bytes;

use crate::codec::{Codec, CodecError};

/// A record's headers as read (name, value); most records have none, which costs nothing.
pub type Headers = Vec<(String, Bytes)>;

/// A record inside a topology: typed key and value, event time and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K, V> {
    pub key: K,
    pub value: V,
    /// Event time, milliseconds since the epoch: the record's timestamp or what the
    /// application's timestamp extractor says.
    pub timestamp: i64,
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        Self { key, value, timestamp, headers: Vec::new() }
    }

    /// The same record with another key and value (time and headers kept).
    pub fn with<K2, V2>(self, key: K2, value: V2) -> Record<K2, V2> {
        Record { key, value, timestamp: self.timestamp, headers: self.headers }
    }
}

/// A table's update to a key: the new value (`None`: deleted) and the one it replaced, which
/// downstream aggregations subtract and joins compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<V> {
    pub new: Option<V>,
    pub old: Option<V>,
}

/// A key within a window `[start, end)` (milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Windowed<K> {
    pub key: K,
    pub start: i64,
    pub end: i64,
}

/// The key's bytes, then the window's start and end, 8 bytes each, big-endian.
impl<K: Codec> Codec for Windowed<K> {
    fn encode(&self) -> Option<Bytes> {
        let mut out = self.key.encode().map(Vec::from).unwrap_or_default();
        out.extend_from_slice(&self.start.to_be_bytes());
        out.extend_from_slice(&self.end.to_be_bytes());
        Some(Bytes::from(out))
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let cut =
            bytes.len().checked_sub(16).ok_or_else(|| CodecError("a windowed key is at least 16 bytes".into()))?;
        let (key, times) = bytes.split_at(cut);
        let (start, end) = times.split_at(8);
        let word = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        Ok(Windowed { key: K::decode(key)?, start: word(start), end: word(end) })
    }
}

/// A table row entering (`Add`) or leaving (`Sub`) a group, on its way to a table
/// aggregation (Kafka's "subtractor" and "adder" inputs).
#[derive(Debug, Clone, PartialEq)]
pub enum TableOp<V> {
    Add(V),
    Sub(V),
    /// A row that changed within its group: the old value out and the new in, at once (one
    /// result, no intermediate one, as Kafka's KIP-904).
    Replace(V, V),
}

/// A tag byte (1: add, 0: subtract, 2: replace), then the value's bytes (for a replacement,
/// the old value's length as 4 big-endian bytes, the old value, the new one).
impl<V: Codec> Codec for TableOp<V> {
    fn encode(&self) -> Option<Bytes> {
        let body = |v: &V| v.encode().unwrap_or_default();
        let mut out = Vec::new();
        match self {
            TableOp::Add(v) => {
                out.push(1u8);
                out.extend_from_slice(&body(v));
            }
            TableOp::Sub(v) => {
                out.push(0u8);
                out.extend_from_slice(&body(v));
            }
            TableOp::Replace(old, new) => {
                let old = body(old);
                out.push(2u8);
                out.extend_from_slice(&(old.len() as u32).to_be_bytes());
                out.extend_from_slice(&old);
                out.extend_from_slice(&body(new));
            }
        }
        Some(Bytes::from(out))
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        match bytes.split_first() {
            Some((1, v)) => Ok(TableOp::Add(V::decode(v)?)),
            Some((0, v)) => Ok(TableOp::Sub(V::decode(v)?)),
            Some((2, rest)) => {
                let cut = || CodecError("a table replacement is cut short".into());
                let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
                let len = u32::from_be_bytes(*len) as usize;
                let old = rest.get(..len).ok_or_else(cut)?;
                Ok(TableOp::Replace(V::decode(old)?, V::decode(&rest[len..])?))
            }
            _ => Err(CodecError("a table operation starts with 0, 1 or 2".into())),
        }
    }
}
