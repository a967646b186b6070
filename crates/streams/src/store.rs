//! State stores: what a stateful processor remembers between records, per task.
//!
//! A store is a sorted map of bytes over a [`Backend`] (memory in the test driver, sled in a
//! running application). Every write is also captured for the store's changelog topic
//! (`<application id>-<store>-changelog`, compacted, one partition per task), from which a
//! task that moves rebuilds the store. Typed access goes through the [`Codec`]s of the
//! processor's key and value types.
//!
//! Window stores keep `(key, window)` entries under one composite key: the key's length
//! (4 bytes), the key, the window's start and end (8 bytes each, big-endian with the sign
//! bit flipped, so a key's windows sort by start, negative times included), plus an in-memory index by window end that drops entries past
//! the store's retention as stream time moves.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::codec::{Codec, CodecError};

/// Why a store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store '{store}': {why}")]
    Io { store: String, why: String },
    #[error("store '{store}': {source}")]
    Codec {
        store: String,
        #[source]
        source: CodecError,
    },
}

/// Entries of a range, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A window store's entry: key bytes, window start and end, value.
pub type WindowEntry = (Vec<u8>, i64, i64, Vec<u8>);

/// Where a store's bytes live.
pub trait Backend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Writes `value` under `key`; `None` deletes.
    fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
    /// The entries with `from <= key < to` (`to = None`: to the end), in key order.
    fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Entries, String>;
    /// Makes the writes so far durable (before the task commits past them).
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A backend in memory: the test driver's, and a running application's for stores asked to
/// be in memory (rebuilt from the changelog when a task opens).
#[derive(Default)]
pub struct MemoryBackend(BTreeMap<Vec<u8>, Vec<u8>>);

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) => self.0.insert(key.to_vec(), v.to_vec()),
            None => self.0.remove(key),
        };
        Ok(())
    }
    fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Entries, String> {
        let upper = to.map_or(std::ops::Bound::Unbounded, |t| std::ops::Bound::Excluded(t.to_vec()));
        Ok(self
            .0
            .range((std::ops::Bound::Included(from.to_vec()), upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// One write, as its changelog record carries it.
pub type ChangelogEntry = (Vec<u8>, Option<Vec<u8>>);

/// A task's store: its backend and the writes not yet sent to the changelog.
pub struct Store {
    pub(crate) name: String,
    backend: Box<dyn Backend>,
    pending: Vec<ChangelogEntry>,
    logged: bool,
}

/// A store shared by the processors of one task.
pub type StoreRef = Rc<RefCell<Store>>;

impl Store {
    pub fn new(name: &str, backend: Box<dyn Backend>, logged: bool) -> Self {
        Self { name: name.to_string(), backend, pending: Vec::new(), logged }
    }

    fn io(&self, why: String) -> StoreError {
        StoreError::Io { store: self.name.clone(), why }
    }

    fn codec(&self, source: CodecError) -> StoreError {
        StoreError::Codec { store: self.name.clone(), source }
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(key).map_err(|e| self.io(e))
    }

    pub fn put_raw(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.backend.put(key, value).map_err(|e| self.io(e))?;
        if self.logged {
            self.pending.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        }
        Ok(())
    }

    pub fn range_raw(&self, from: &[u8], to: Option<&[u8]>) -> Result<Entries, StoreError> {
        self.backend.range(from, to).map_err(|e| self.io(e))
    }

    /// Applies a changelog record while restoring (not logged again).
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.backend.put(key, value).map_err(|e| self.io(e))
    }

    /// The writes since the last call, for the changelog.
    pub fn take_changelog(&mut self) -> Vec<ChangelogEntry> {
        std::mem::take(&mut self.pending)
    }

    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.backend.flush().map_err(|e| self.io(e))
    }

    /// The value under `key`, typed.
    pub fn get<K: Codec, V: Codec>(&self, key: &K) -> Result<Option<V>, StoreError> {
        let Some(k) = key.encode() else { return Ok(None) };
        match self.get_raw(&k)? {
            Some(b) => V::decode(&b).map(Some).map_err(|e| self.codec(e)),
            None => Ok(None),
        }
    }

    /// Writes `value` under `key` (`None` deletes), typed.
    pub fn put<K: Codec, V: Codec>(&mut self, key: &K, value: Option<&V>) -> Result<(), StoreError> {
        let Some(k) = key.encode() else { return Ok(()) };
        let v = value.and_then(Codec::encode);
        self.put_raw(&k, v.as_deref())
    }

    /// Every entry, typed, in key-byte order.
    pub fn all<K: Codec, V: Codec>(&self) -> Result<Vec<(K, V)>, StoreError> {
        self.range_raw(&[], None)?
            .into_iter()
            .map(|(k, v)| Ok((K::decode(&k).map_err(|e| self.codec(e))?, V::decode(&v).map_err(|e| self.codec(e))?)))
            .collect()
    }
}

/// The composite key of a window entry.
pub(crate) fn window_key(key: &[u8], start: i64, end: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 20);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&sortable(start));
    out.extend_from_slice(&sortable(end));
    out
}

/// A time as bytes that sort as the numbers do (the sign bit flipped), negatives included.
fn sortable(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_sortable(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().unwrap_or([0; 8])) ^ (1 << 63)) as i64
}

/// The key bytes and window of a composite key.
pub(crate) fn split_window_key(composite: &[u8]) -> Option<(&[u8], i64, i64)> {
    let len = u32::from_be_bytes(composite.get(..4)?.try_into().ok()?) as usize;
    let key = composite.get(4..4 + len)?;
    let times = composite.get(4 + len..)?;
    if times.len() != 16 {
        return None;
    }
    Some((key, from_sortable(&times[..8]), from_sortable(&times[8..])))
}

/// A window store over a [`Store`]: entries by key and window, expired past `retention`.
pub struct WindowStore {
    pub(crate) store: StoreRef,
    retention: i64,
    /// (window end, composite key) of every entry, to expire them in end order.
    by_end: BTreeSet<(i64, Vec<u8>)>,
    indexed: bool,
}

impl WindowStore {
    pub fn new(store: StoreRef, retention: i64) -> Self {
        Self { store, retention, by_end: BTreeSet::new(), indexed: false }
    }

    fn index(&mut self) -> Result<(), StoreError> {
        if !self.indexed {
            for (k, _) in self.store.borrow().range_raw(&[], None)? {
                if let Some((_, _, end)) = split_window_key(&k) {
                    self.by_end.insert((end, k));
                }
            }
            self.indexed = true;
        }
        Ok(())
    }

    pub fn get_raw(&self, key: &[u8], start: i64, end: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.borrow().get_raw(&window_key(key, start, end))
    }

    pub fn put_raw(&mut self, key: &[u8], start: i64, end: i64, value: Option<&[u8]>) -> Result<(), StoreError> {
        self.index()?;
        let k = window_key(key, start, end);
        match value {
            Some(_) => self.by_end.insert((end, k.clone())),
            None => self.by_end.remove(&(end, k.clone())),
        };
        self.store.borrow_mut().put_raw(&k, value)
    }

    /// The windows of `key` starting in `[from, to]`, as (start, end, value).
    pub fn fetch_raw(&self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, i64, Vec<u8>)>, StoreError> {
        let lo = window_key(key, from, i64::MIN);
        let hi = window_key(key, to.saturating_add(1), i64::MIN);
        Ok(self
            .store
            .borrow()
            .range_raw(&lo, Some(&hi))?
            .into_iter()
            .filter_map(|(k, v)| split_window_key(&k).map(|(_, s, e)| (s, e, v)))
            .collect())
    }

    /// Every entry as (key bytes, start, end, value), in key then start order.
    pub fn all_raw(&self) -> Result<Vec<WindowEntry>, StoreError> {
        Ok(self
            .store
            .borrow()
            .range_raw(&[], None)?
            .into_iter()
            .filter_map(|(k, v)| split_window_key(&k).map(|(key, s, e)| (key.to_vec(), s, e, v)))
            .collect())
    }

    /// Drops the entries whose window ended more than `retention` before `stream_time`.
    pub fn expire(&mut self, stream_time: i64) -> Result<(), StoreError> {
        self.index()?;
        let horizon = stream_time.saturating_sub(self.retention);
        while let Some((end, k)) = self.by_end.first().cloned() {
            if end > horizon {
                break;
            }
            self.by_end.pop_first();
            self.store.borrow_mut().put_raw(&k, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keys_sort_by_key_then_start_and_expire_by_end() {
        let store = Rc::new(RefCell::new(Store::new("w", Box::new(MemoryBackend::default()), true)));
        let mut w = WindowStore::new(store.clone(), 100);
        w.put_raw(b"b", 0, 10, Some(b"1")).unwrap();
        w.put_raw(b"a", 20, 30, Some(b"2")).unwrap();
        w.put_raw(b"a", 0, 10, Some(b"3")).unwrap();
        w.put_raw(b"ab", 5, 15, Some(b"4")).unwrap();
        assert_eq!(w.fetch_raw(b"a", 0, 20).unwrap(), vec![(0, 10, b"3".to_vec()), (20, 30, b"2".to_vec())]);
        assert_eq!(w.fetch_raw(b"a", 1, 20).unwrap(), vec![(20, 30, b"2".to_vec())]);
        w.expire(114).unwrap();
        let left: Vec<_> = w.all_raw().unwrap().into_iter().map(|(k, s, _, _)| (k, s)).collect();
        assert_eq!(left, vec![(b"a".to_vec(), 20), (b"ab".to_vec(), 5)]);
        let log = store.borrow_mut().take_changelog();
        assert_eq!(log.len(), 6, "four writes and two deletions go to the changelog");
        assert_eq!(log[4].1, None);
    }
}
