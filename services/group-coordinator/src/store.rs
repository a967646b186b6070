//! Committed offsets, kept in the internal compacted topic `__consumer_offsets` on the
//! partition nodes, as Kafka does: replicated like any topic, compacted to the last commit of
//! each (group, topic, partition), and read back whole by a coordinator taking over.
//!
//! All records of a group go to one partition (murmur2 of the group id), so a group's
//! commits stay in order. Two kinds of record, told apart by the key's first byte:
//! - an offset: key `[0][u16 len][group][u16 len][topic][u32 partition]`, value
//!   `[1][i64 offset][i64 commit time ms][u64 generation][u64 coordinator epoch][u64 topic id][u16 len][metadata]`
//!   (version 0, still read, had no topic id). The topic id tells an offset of a deleted
//!   topic from one of a topic re-created under the same name: offsets whose topic is gone,
//!   or now has another id, are ignored when read and dropped from the cache when the
//!   metadata shows the change, so a re-created topic is read from its start;
//! - a group's membership: key `[1][u16 len][group]`, value a JSON [`GroupSnapshot`]
//!   (members, what each holds, generations), written whenever it changes, so that a
//!   coordinator taking over knows who holds what and moves nothing until those members
//!   rejoin or their sessions expire.
//!
//! A tombstone (no value) forgets the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_core::SluiceError;
use sluice_proto::v1::{ConsumedRecord, OffsetSpec, PartitionOffset};
use sluice_router::Router;
pub use sluice_router::internal::{InternalTopic, LazyTopic, RoleCheck, list_offsets};

use crate::assignor::Tp;

pub use sluice_core::topic::OFFSETS_TOPIC;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub commit_time_ms: i64,
    pub generation: u64,
    pub epoch: u64,
    /// The id of the topic committed to (0: unknown, written before ids were kept).
    pub topic_id: u64,
}

impl Committed {
    /// Whether this offset belongs to the topic that now has this name (`live`: its id, or
    /// None when no topic has it).
    pub fn is_for(&self, live: Option<u64>) -> bool {
        live.is_some_and(|id| self.topic_id == 0 || self.topic_id == id)
    }
}

/// Every group's committed offsets.
pub type AllOffsets = HashMap<String, BTreeMap<Tp, Committed>>;

/// A group's membership as last written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupSnapshot {
    pub generation: u64,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberSnapshot {
    pub id: String,
    pub instance_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub assignor: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Held partitions with the generation each was handed at.
    pub held: Vec<(String, u32, u64)>,
    /// The last set sent (held minus what it is releasing).
    pub sent: Vec<(String, u32)>,
    pub generation: u64,
    /// Set for a Kafka consumer-protocol member (absent in snapshots of older coordinators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSnapshot>,
}

/// What a consumer-protocol member was last told, so a successor fences it the same way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KafkaSnapshot {
    pub reported_epoch: i32,
    pub previous_epoch: i32,
    pub static_left: bool,
    pub client_host: String,
}

/// What a coordinator taking over reads.
#[derive(Debug, Default)]
pub struct Loaded {
    pub offsets: AllOffsets,
    pub groups: HashMap<String, GroupSnapshot>,
}

pub fn encode_group_key(group: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(3 + group.len());
    b.put_u8(1);
    b.put_u16(group.len() as u16);
    b.put_slice(group.as_bytes());
    b.freeze()
}

pub fn decode_group_key(mut b: &[u8]) -> Option<String> {
    if b.first() != Some(&1) {
        return None;
    }
    b.advance(1);
    let group = take_str(&mut b)?;
    b.is_empty().then_some(group)
}

pub fn encode_key(group: &str, tp: &Tp) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + group.len() + tp.0.len());
    b.put_u8(0);
    b.put_u16(group.len() as u16);
    b.put_slice(group.as_bytes());
    b.put_u16(tp.0.len() as u16);
    b.put_slice(tp.0.as_bytes());
    b.put_u32(tp.1);
    b.freeze()
}

pub fn encode_value(c: &Committed) -> Bytes {
    let mut b = BytesMut::with_capacity(43 + c.metadata.len());
    b.put_u8(1);
    b.put_i64(c.offset);
    b.put_i64(c.commit_time_ms);
    b.put_u64(c.generation);
    b.put_u64(c.epoch);
    b.put_u64(c.topic_id);
    b.put_u16(c.metadata.len() as u16);
    b.put_slice(c.metadata.as_bytes());
    b.freeze()
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
    b.advance(n);
    Some(s)
}

pub fn decode_key(mut b: &[u8]) -> Option<(String, Tp)> {
    if b.first() != Some(&0) {
        return None;
    }
    b.advance(1);
    let group = take_str(&mut b)?;
    let topic = take_str(&mut b)?;
    (b.remaining() == 4).then(|| (group, (topic, b.get_u32())))
}

pub fn decode_value(mut b: &[u8]) -> Option<Committed> {
    let version = *b.first()?;
    let fixed = match version {
        0 => 35,
        1 => 43,
        _ => return None,
    };
    if b.len() < fixed {
        return None;
    }
    b.advance(1);
    let (offset, commit_time_ms, generation, epoch) = (b.get_i64(), b.get_i64(), b.get_u64(), b.get_u64());
    let topic_id = if version >= 1 { b.get_u64() } else { 0 };
    let metadata = take_str(&mut b)?;
    b.is_empty().then_some(Committed { offset, metadata, commit_time_ms, generation, epoch, topic_id })
}

/// Longest metadata string a commit may carry (Kafka's offset.metadata.max.bytes).
pub const MAX_METADATA: usize = 4096;

/// Reads and writes the offsets topic.
pub struct OffsetStore {
    topic: InternalTopic,
}

impl OffsetStore {
    /// Opens the offsets topic (see [`InternalTopic::open`]).
    pub async fn open(
        router: Arc<Router>,
        partitions: u32,
        replication_factor: u32,
        holds_role: RoleCheck,
    ) -> Result<Self, SluiceError> {
        Ok(Self {
            topic: InternalTopic::open(router, OFFSETS_TOPIC, partitions, replication_factor, holds_role).await?,
        })
    }

    /// Writes a group's offset changes (a value, or `None` to forget) durably on every
    /// in-sync replica; returns once all are acknowledged.
    pub async fn write(&self, group: &str, changes: &[(Tp, Option<Committed>)]) -> Result<(), SluiceError> {
        let records = changes.iter().map(|(tp, c)| (encode_key(group, tp), c.as_ref().map(encode_value)));
        self.topic.put(group, records).await
    }

    /// Writes a group's membership (or forgets it with `None`), durably.
    pub async fn write_snapshot(&self, group: &str, snapshot: Option<&GroupSnapshot>) -> Result<(), SluiceError> {
        let value = match snapshot {
            Some(s) => Some(Bytes::from(
                serde_json::to_vec(s).map_err(|e| SluiceError::Internal(format!("group snapshot: {e}")))?,
            )),
            None => None,
        };
        self.topic.put(group, std::iter::once((encode_group_key(group), value))).await
    }

    /// Earliest, latest or by-timestamp offsets of a topic's partitions (all when empty).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<PartitionOffset>, SluiceError> {
        list_offsets(self.topic.router(), topic, partitions, spec, timestamp_ms).await
    }

    /// Reads the whole topic up to its high watermark: the last value of each key wins.
    pub async fn load(&self) -> Result<Loaded, SluiceError> {
        let mut loaded = Loaded::default();
        self.topic.load(|r| apply(&mut loaded, r)).await?;
        loaded.offsets.retain(|_, g| !g.is_empty());
        Ok(loaded)
    }
}

/// Folds one record of the offsets topic into what was loaded so far.
fn apply(loaded: &mut Loaded, r: ConsumedRecord) {
    if let Some(group) = r.key.as_deref().and_then(decode_group_key) {
        match r.value.as_deref().map(serde_json::from_slice::<GroupSnapshot>) {
            Some(Ok(s)) => {
                loaded.groups.insert(group, s);
            }
            Some(Err(e)) => tracing::warn!(%group, error = %e, "skipping an unreadable group snapshot"),
            None => {
                loaded.groups.remove(&group);
            }
        }
        return;
    }
    let Some((group, tp)) = r.key.as_deref().and_then(decode_key) else {
        tracing::warn!(partition = r.partition, offset = r.offset, "skipping an unreadable offsets key");
        return;
    };
    let out = &mut loaded.offsets;
    match r.value.as_deref() {
        None => {
            if let Some(g) = out.get_mut(&group) {
                g.remove(&tp);
            }
        }
        Some(v) => match decode_value(v) {
            Some(c) => {
                out.entry(group).or_default().insert(tp, c);
            }
            None => tracing::warn!(partition = r.partition, offset = r.offset, "skipping an unreadable offset"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let tp = ("orders".to_string(), 7);
        let k = encode_key("g-1", &tp);
        assert_eq!(decode_key(&k), Some(("g-1".to_string(), tp)));
        let c =
            Committed { offset: 42, metadata: "m".into(), commit_time_ms: 5, generation: 3, epoch: 9, topic_id: 77 };
        assert_eq!(decode_value(&encode_value(&c)), Some(c.clone()));
        // Version 0 (no topic id) is still read, as an offset of an unknown topic id.
        let mut v0 = vec![0u8];
        for x in [42i64, 5, 3, 9] {
            v0.extend_from_slice(&x.to_be_bytes());
        }
        v0.extend_from_slice(&[0, 1, b'm']);
        assert_eq!(decode_value(&v0), Some(Committed { topic_id: 0, ..c.clone() }));
        assert!(c.is_for(Some(77)) && !c.is_for(Some(78)) && !c.is_for(None));
        assert!(Committed { topic_id: 0, ..c.clone() }.is_for(Some(78)));
        let mut long = encode_value(&c).to_vec();
        long.push(0);
        assert_eq!(decode_value(&long), None, "trailing bytes");
        assert_eq!(decode_key(&k[..k.len() - 1]), None);
        assert_eq!(decode_value(&[1, 2, 3]), None);
        let g = encode_group_key("g-1");
        assert_eq!(decode_group_key(&g).as_deref(), Some("g-1"));
        assert_eq!(decode_key(&g), None, "the two kinds never mix");
        assert_eq!(decode_group_key(&k), None);
    }
}
