//! Kafka RecordBatch v2: the unit Sluice stores, replicates and serves.
//!
//! Layout (big-endian): baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8 (2),
//! crc u32 (CRC-32C of everything after it), attributes i16, lastOffsetDelta i32,
//! baseTimestamp i64, maxTimestamp i64, producerId i64, producerEpoch i16, baseSequence i32,
//! recordCount i32, then the records (compressed as one block when the codec is not none).
//! baseOffset and partitionLeaderEpoch sit before the CRC'd region, so a node assigns offsets
//! by rewriting them in place without re-encoding or recomputing anything.

use bytes::{BufMut, Bytes, BytesMut};

use crate::compression::Compression;
use crate::varint::{get_varint, get_varlong, put_varint, put_varlong, varlong_len};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Offset of batchLength within the header; the batch occupies `12 + batchLength` bytes.
const LENGTH_OFFSET: usize = 8;
const EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
/// Attribute bit: timestamps are the broker's append time.
pub const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
/// Attribute bit: the batch belongs to a transaction.
pub const TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: control batch (transaction markers).
pub const CONTROL: i16 = 0x20;

/// Why a batch was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch truncated while reading {0}")]
    Truncated(&'static str),
    #[error("malformed record batch: {0}")]
    Malformed(String),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    Magic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("compression error: {0}")]
    Compression(String),
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `b` (no CRC check).
    pub fn parse(b: &[u8]) -> Result<Self, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Truncated("batch header"));
        }
        let magic = b[MAGIC_OFFSET] as i8;
        if magic != 2 {
            return Err(BatchError::Magic(magic));
        }
        let h = Self {
            base_offset: i64_at(b, 0),
            batch_length: i32_at(b, LENGTH_OFFSET),
            partition_leader_epoch: i32_at(b, EPOCH_OFFSET),
            magic,
            crc: u32::from_be_bytes([b[17], b[18], b[19], b[20]]),
            attributes: i16_at(b, ATTRIBUTES_OFFSET),
            last_offset_delta: i32_at(b, 23),
            base_timestamp: i64_at(b, 27),
            max_timestamp: i64_at(b, MAX_TIMESTAMP_OFFSET),
            producer_id: i64_at(b, PRODUCER_ID_OFFSET),
            producer_epoch: i16_at(b, 51),
            base_sequence: i32_at(b, 53),
            record_count: i32_at(b, 57),
        };
        if (h.batch_length as i64) < (HEADER_LEN - 12) as i64 {
            return Err(BatchError::Malformed(format!("batch length {} is shorter than the header", h.batch_length)));
        }
        Ok(h)
    }

    /// Bytes the whole batch occupies.
    pub fn total_len(&self) -> usize {
        12 + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    /// Whether the batch comes from an idempotent (or transactional) producer.
    pub fn has_producer(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence of the batch's last record (sequences wrap from i32::MAX to 0, as Kafka's).
    pub fn last_sequence(&self) -> i32 {
        add_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// `seq + n` in sequence space, which wraps from i32::MAX to 0.
pub fn add_sequence(seq: i32, n: i32) -> i32 {
    ((seq as i64 + n as i64) % (i32::MAX as i64 + 1)) as i32
}

/// Rewrites the producer id, epoch and base sequence of the batch at the start of `b` and
/// recomputes its CRC (the fields are inside the CRC'd region).
pub fn set_producer(b: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    b[PRODUCER_ID_OFFSET + 8..PRODUCER_ID_OFFSET + 10].copy_from_slice(&producer_epoch.to_be_bytes());
    b[PRODUCER_ID_OFFSET + 10..PRODUCER_ID_OFFSET + 14].copy_from_slice(&base_sequence.to_be_bytes());
    let len = (12 + i32_at(b, LENGTH_OFFSET) as usize).min(b.len());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..len]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The kind of a transaction marker, the key of its control record (Kafka's control types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
}

/// A transaction marker: a control batch of one record whose key is (version 0, type: 0
/// abort, 1 commit) and whose value is (version 0, coordinator epoch), as Kafka writes them.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Result<Bytes, BatchError> {
    let kind: i16 = match marker {
        Marker::Abort => 0,
        Marker::Commit => 1,
    };
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    let mut b =
        BatchBuilder::new(Compression::None).producer(producer_id, producer_epoch, -1).flags(TRANSACTIONAL | CONTROL);
    b.push(timestamp, Some(&key), Some(&value), &[]);
    b.build()
}

/// Whether a read_committed reader skips the batch's records: a control batch (a marker is
/// never handed to applications), or a transactional batch of a producer inside one of its
/// aborted transactions (`first_offset..=last_offset`).
pub fn skipped_when_committed(h: &BatchHeader, aborted: &[sluice_proto::v1::AbortedTransaction]) -> bool {
    h.is_control()
        || (h.is_transactional()
            && aborted.iter().any(|a| {
                a.producer_id == h.producer_id && a.first_offset <= h.base_offset && h.base_offset <= a.last_offset
            }))
}

/// The marker a control batch holds (`b` holds exactly the batch); `None` for a batch that is
/// not a control batch or whose control record is not a transaction marker.
pub fn marker_of(b: &Bytes) -> Option<Marker> {
    let h = BatchHeader::parse(b).ok()?;
    if !h.is_control() {
        return None;
    }
    let records = decode_records(b).ok()?;
    let key = records.first()?.key.clone()?;
    match key.get(..4)? {
        [0, 0, 0, 0] => Some(Marker::Abort),
        [0, 0, 0, 1] => Some(Marker::Commit),
        _ => None,
    }
}

/// Rewrites the base offset of the batch at the start of `b`.
pub fn set_base_offset(b: &mut [u8], base_offset: i64) {
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch at the start of `b`.
pub fn set_partition_leader_epoch(b: &mut [u8], epoch: i32) {
    b[EPOCH_OFFSET..EPOCH_OFFSET + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as log-append-time stamped with `now` and recomputes its CRC.
pub fn set_log_append_time(b: &mut [u8], now: i64) {
    let attrs = i16_at(b, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_LOG_APPEND;
    b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Checks the CRC of a whole batch.
pub fn check_crc(b: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..header.total_len()]);
    if computed != header.crc {
        return Err(BatchError::Crc { stored: header.crc, computed });
    }
    Ok(())
}

/// Splits back-to-back batches, returning each header with its byte range. Checks framing
/// only; use [`verify_batch`] for CRC and record-level checks.
pub fn split_batches(b: &[u8]) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let h = BatchHeader::parse(&b[pos..])?;
        let end = pos.checked_add(h.total_len()).ok_or(BatchError::Truncated("batch"))?;
        if end > b.len() {
            return Err(BatchError::Truncated("batch"));
        }
        out.push((h, pos..end));
        pos = end;
    }
    Ok(out)
}

/// Records in back-to-back batches, from their headers alone (stops at the first malformed
/// one: a count for metrics, not a validation).
pub fn record_count(b: &[u8]) -> u64 {
    let (mut pos, mut n) = (0usize, 0u64);
    while pos < b.len() {
        let Ok(h) = BatchHeader::parse(&b[pos..]) else { break };
        n += h.record_count.max(0) as u64;
        pos = pos.saturating_add(h.total_len());
    }
    n
}

/// Full validation before a batch is stored: size limit, CRC, record count and the offset and
/// length of every record (decompressing when needed), so a stored batch always decodes.
pub fn verify_batch(b: &[u8], max_bytes: usize) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(b)?;
    if h.total_len() != b.len() {
        return Err(BatchError::Malformed("batch length does not match its framing".into()));
    }
    if h.total_len() > max_bytes {
        return Err(BatchError::TooLarge { size: h.total_len(), limit: max_bytes });
    }
    check_crc(b, &h)?;
    if h.record_count < 1 {
        return Err(BatchError::Malformed(format!("batch holds {} records", h.record_count)));
    }
    if h.last_offset_delta != h.record_count - 1 {
        return Err(BatchError::Malformed(format!(
            "lastOffsetDelta {} does not match {} records",
            h.last_offset_delta, h.record_count
        )));
    }
    let body = records_body(b, &h, max_bytes.max(1 << 20) * 4)?;
    let mut it = RecordIter { body: &body[..], pos: 0, remaining: h.record_count, header: h, owner: None };
    let mut expected = 0i32;
    while let Some(r) = it.next_raw()? {
        if r.offset_delta != expected {
            return Err(BatchError::Malformed(format!(
                "record offset delta {} where {expected} was expected",
                r.offset_delta
            )));
        }
        expected += 1;
    }
    if it.pos != body.len() {
        return Err(BatchError::Malformed("trailing bytes after the last record".into()));
    }
    Ok(h)
}

/// The records section, decompressed when the batch is compressed.
fn records_body<'a>(b: &'a [u8], h: &BatchHeader, limit: usize) -> Result<std::borrow::Cow<'a, [u8]>, BatchError> {
    let raw = &b[HEADER_LEN..h.total_len()];
    match h.compression()? {
        Compression::None => Ok(std::borrow::Cow::Borrowed(raw)),
        c => Ok(std::borrow::Cow::Owned(c.decompress(raw, limit)?)),
    }
}

/// A decoded record. Key, value and header values share the batch's buffer when it is
/// uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

struct RawRecord {
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<std::ops::Range<usize>>,
    value: Option<std::ops::Range<usize>>,
    headers: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

struct RecordIter<'a> {
    body: &'a [u8],
    pos: usize,
    remaining: i32,
    header: BatchHeader,
    owner: Option<Bytes>,
}

impl RecordIter<'_> {
    fn bytes_field(
        &self,
        pos: &mut usize,
        end: usize,
        what: &'static str,
    ) -> Result<Option<std::ops::Range<usize>>, BatchError> {
        let len = get_varint(self.body, pos)?;
        if len < 0 {
            return Ok(None);
        }
        let start = *pos;
        let stop = start.checked_add(len as usize).ok_or(BatchError::Truncated(what))?;
        if stop > end {
            return Err(BatchError::Truncated(what));
        }
        *pos = stop;
        Ok(Some(start..stop))
    }

    fn next_raw(&mut self) -> Result<Option<RawRecord>, BatchError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let len = get_varint(self.body, &mut self.pos)?;
        if len < 0 {
            return Err(BatchError::Malformed(format!("negative record length {len}")));
        }
        let end = self.pos.checked_add(len as usize).ok_or(BatchError::Truncated("record"))?;
        if end > self.body.len() {
            return Err(BatchError::Truncated("record"));
        }
        let mut p = self.pos + 1; // record attributes, unused in v2
        let timestamp_delta = get_varlong(self.body, &mut p)?;
        let offset_delta = get_varint(self.body, &mut p)?;
        let key = self.bytes_field(&mut p, end, "record key")?;
        let value = self.bytes_field(&mut p, end, "record value")?;
        let count = get_varint(self.body, &mut p)?;
        if count < 0 || count as usize > len as usize {
            return Err(BatchError::Malformed(format!("record has {count} headers")));
        }
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let k = self
                .bytes_field(&mut p, end, "header key")?
                .ok_or_else(|| BatchError::Malformed("null header key".into()))?;
            std::str::from_utf8(&self.body[k.clone()])
                .map_err(|_| BatchError::Malformed("header key is not UTF-8".into()))?;
            let v = self.bytes_field(&mut p, end, "header value")?.unwrap_or(0..0);
            headers.push((k, v));
        }
        if p != end {
            return Err(BatchError::Malformed("record length does not match its fields".into()));
        }
        self.pos = end;
        Ok(Some(RawRecord { offset_delta, timestamp_delta, key, value, headers }))
    }

    fn slice(&self, r: std::ops::Range<usize>) -> Bytes {
        match &self.owner {
            Some(o) => o.slice(r),
            None => Bytes::copy_from_slice(&self.body[r]),
        }
    }
}

/// Decodes every record of one batch (`b` holds exactly the batch). Log-append-time batches
/// report the batch's max timestamp for every record, as Kafka does.
pub fn decode_records(b: &Bytes) -> Result<Vec<Record>, BatchError> {
    let h = BatchHeader::parse(b)?;
    if h.total_len() > b.len() {
        return Err(BatchError::Truncated("batch"));
    }
    let body: Bytes = match h.compression()? {
        Compression::None => b.slice(HEADER_LEN..h.total_len()),
        c => Bytes::from(c.decompress(&b[HEADER_LEN..h.total_len()], 256 << 20)?),
    };
    let mut it =
        RecordIter { body: &body[..], pos: 0, remaining: h.record_count.max(0), header: h, owner: Some(body.clone()) };
    // The count comes from the wire: never reserve more than the body could hold.
    let mut out = Vec::with_capacity((h.record_count.max(0) as usize).min(body.len() / 7));
    let log_append = h.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0;
    while let Some(r) = it.next_raw()? {
        let headers = r
            .headers
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(&it.body[k.clone()]).into_owned(), it.slice(v.clone())))
            .collect();
        out.push(Record {
            offset: it.header.base_offset + r.offset_delta as i64,
            timestamp: if log_append { it.header.max_timestamp } else { it.header.base_timestamp + r.timestamp_delta },
            key: r.key.map(|k| it.slice(k)),
            value: r.value.map(|v| it.slice(v)),
            headers,
        });
    }
    Ok(out)
}

/// Builds one batch from records. Offsets start at 0; the node assigns the real base offset.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    records: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// TRANSACTIONAL and CONTROL, when set.
    flags: i16,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            records: Vec::new(),
            count: 0,
            base_timestamp: -1,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            flags: 0,
        }
    }

    /// Marks the batch as part of a transaction, and as a control batch (a marker) when
    /// `flags` says so; other attribute bits are ignored.
    pub fn flags(mut self, flags: i16) -> Self {
        self.flags = flags & (TRANSACTIONAL | CONTROL);
        self
    }

    /// Sets the idempotent-producer fields of a builder in use.
    pub fn set_producer(&mut self, id: i64, epoch: i16, base_sequence: i32) {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
    }

    /// Sets the idempotent-producer fields (left at -1 otherwise).
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed size the batch would have now.
    pub fn estimated_size(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// Size one more record would add (uncompressed).
    pub fn record_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> usize {
        let body = 1
            + 10
            + 5
            + 5
            + key.map_or(0, |k| k.len())
            + 5
            + value.map_or(0, |v| v.len())
            + 5
            + headers.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
        body + 5
    }

    /// Appends one record.
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) {
        self.push_at(self.count, timestamp, key, value, headers)
    }

    /// Appends one record at an explicit offset delta: compaction keeps each survivor's offset.
    pub fn push_at(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp - self.base_timestamp;
        let field_len = |f: Option<&[u8]>| f.map_or(varlong_len(-1), |v| varlong_len(v.len() as i64) + v.len());
        let mut len = 1 + varlong_len(ts_delta) + varlong_len(offset_delta as i64) + field_len(key) + field_len(value);
        len += varlong_len(headers.len() as i64);
        for (k, v) in headers {
            len += field_len(Some(k.as_bytes())) + field_len(Some(v));
        }
        let r = &mut self.records;
        r.reserve(len + 5);
        put_varint(r, len as i32);
        r.push(0);
        put_varlong(r, ts_delta);
        put_varint(r, offset_delta);
        for f in [key, value] {
            match f {
                Some(v) => {
                    put_varint(r, v.len() as i32);
                    r.extend_from_slice(v);
                }
                None => put_varint(r, -1),
            }
        }
        put_varint(r, headers.len() as i32);
        for (k, v) in headers {
            put_varint(r, k.len() as i32);
            r.extend_from_slice(k.as_bytes());
            put_varint(r, v.len() as i32);
            r.extend_from_slice(v);
        }
        self.count += 1;
    }

    /// Encodes the batch (base offset 0, partition leader epoch -1).
    pub fn build(self) -> Result<Bytes, BatchError> {
        let last = self.count - 1;
        self.build_at(0, last)
    }

    /// Encodes the batch with a given base offset and last offset delta (compaction keeps the
    /// original range even when records inside it are gone).
    pub fn build_at(self, base_offset: i64, last_offset_delta: i32) -> Result<Bytes, BatchError> {
        let body = match self.compression {
            Compression::None => self.records,
            c => c.compress(&self.records)?,
        };
        let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
        b.put_i64(base_offset);
        b.put_i32((HEADER_LEN - 12 + body.len()) as i32);
        b.put_i32(-1);
        b.put_i8(2);
        b.put_u32(0);
        b.put_i16(self.compression as i16 | self.flags);
        b.put_i32(last_offset_delta);
        b.put_i64(self.base_timestamp);
        b.put_i64(self.max_timestamp);
        b.put_i64(self.producer_id);
        b.put_i16(self.producer_epoch);
        b.put_i32(self.base_sequence);
        b.put_i32(self.count);
        b.extend_from_slice(&body);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: Compression) -> Bytes {
        let mut bb = BatchBuilder::new(c);
        bb.push(1000, Some(b"k1"), Some(b"v1"), &[("h", b"x")]);
        bb.push(1005, None, Some(b"v2"), &[]);
        bb.push(1003, Some(b"k3"), None, &[]);
        bb.build().unwrap()
    }

    #[test]
    fn encodes_and_decodes_with_every_codec() {
        for c in [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let b = sample(c);
            let h = verify_batch(&b, 1 << 20).unwrap();
            assert_eq!(h.record_count, 3);
            assert_eq!(h.max_timestamp, 1005);
            assert_eq!(h.compression().unwrap(), c);
            let recs = decode_records(&b).unwrap();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(recs[0].headers, vec![("h".to_string(), Bytes::from_static(b"x"))]);
            assert_eq!(recs[1].key, None);
            assert_eq!(recs[1].timestamp, 1005);
            assert_eq!(recs[2].value, None);
            assert_eq!(recs[2].offset, 2);
        }
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut b = sample(Compression::None).to_vec();
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h = verify_batch(&b, 1 << 20).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 44);
        let recs = decode_records(&Bytes::from(b)).unwrap();
        assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![42, 43, 44]);
    }

    #[test]
    fn log_append_time_overrides_record_timestamps() {
        let mut b = sample(Compression::Lz4).to_vec();
        set_log_append_time(&mut b, 9999);
        verify_batch(&b, 1 << 20).unwrap();
        assert!(decode_records(&Bytes::from(b)).unwrap().iter().all(|r| r.timestamp == 9999));
    }

    #[test]
    fn detects_corruption_truncation_and_oversize() {
        let b = sample(Compression::None);
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(verify_batch(&bad, 1 << 20), Err(BatchError::Crc { .. })));
        assert!(verify_batch(&b[..b.len() - 1], 1 << 20).is_err());
        assert!(matches!(verify_batch(&b, 10), Err(BatchError::TooLarge { limit: 10, .. })));
        let mut magic = b.to_vec();
        magic[16] = 1;
        assert_eq!(verify_batch(&magic, 1 << 20), Err(BatchError::Magic(1)));
    }

    #[test]
    fn split_finds_back_to_back_batches() {
        let mut two = sample(Compression::None).to_vec();
        two.extend_from_slice(&sample(Compression::Zstd));
        let parts = split_batches(&two).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1.end, two.len());
        assert!(split_batches(&two[..two.len() - 3]).is_err());
    }

    #[test]
    fn never_panics_on_garbage() {
        let b = sample(Compression::None);
        for cut in 0..b.len() {
            let _ = verify_batch(&b[..cut], 1 << 20);
            let _ = decode_records(&b.slice(..cut));
            let _ = split_batches(&b[..cut]);
        }
        let mut x: u64 = 7;
        for _ in 0..2000 {
            let mut v = b.to_vec();
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % v.len();
            v[i] = (x >> 17) as u8;
            let _ = decode_records(&Bytes::from(v.clone()));
            let _ = verify_batch(&v, 1 << 20);
        }
    }

    #[test]
    fn producer_fields_rewrite_keeps_crc_valid() {
        let mut b = sample(Compression::None).to_vec();
        set_producer(&mut b, 42, 3, i32::MAX - 1);
        let h = verify_batch(&b, 1 << 20).expect("still valid");
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (42, 3, i32::MAX - 1));
        assert!(h.has_producer());
        // Sequences wrap to 0 after i32::MAX.
        assert_eq!(h.last_sequence(), add_sequence(i32::MAX - 1, h.last_offset_delta));
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(5, 3), 8);
    }

    #[test]
    fn markers_round_trip() {
        for m in [Marker::Abort, Marker::Commit] {
            let b = marker_batch(9, 2, m, 5, 1000).unwrap();
            let h = verify_batch(&b, 1 << 20).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (9, 2));
            assert_eq!(marker_of(&b), Some(m));
        }
        assert_eq!(marker_of(&sample(Compression::None)), None);
    }

    #[test]
    fn read_committed_skips_markers_and_aborted_transactions_only() {
        use sluice_proto::v1::AbortedTransaction;
        let txn = |pid: i64, base: i64| {
            let mut b = BatchBuilder::new(Compression::None).producer(pid, 0, 0).flags(TRANSACTIONAL);
            b.push(1, None, Some(b"v"), &[]);
            let mut v = b.build().unwrap().to_vec();
            set_base_offset(&mut v, base);
            BatchHeader::parse(&v).unwrap()
        };
        let aborted = [AbortedTransaction { producer_id: 5, first_offset: 10, last_offset: 20 }];
        assert!(skipped_when_committed(&txn(5, 10), &aborted));
        assert!(skipped_when_committed(&txn(5, 15), &aborted));
        assert!(!skipped_when_committed(&txn(5, 21), &aborted), "a later transaction of the producer");
        assert!(!skipped_when_committed(&txn(6, 15), &aborted), "another producer's committed one");
        let plain = BatchHeader::parse(&sample(Compression::None)).unwrap();
        assert!(!skipped_when_committed(&plain, &aborted));
        let marker = marker_batch(6, 0, Marker::Commit, 0, 1).unwrap();
        assert!(skipped_when_committed(&BatchHeader::parse(&marker).unwrap(), &[]));
    }
}
