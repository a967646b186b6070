//! The processors behind the DSL's operations.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::Codec;
use crate::record::{Change, Record, Windowed};
use crate::store::{StoreRef, WindowStore};
use crate::topology::{Ctx, Out, Output, Process};
use crate::window::{SessionWindows, TimeWindows};

/// Decodes a source's records (with the stream's codecs or the source's own decoder);
/// undecodable ones are skipped. Their event time advances the task's stream time.
pub(crate) struct Decode<K, V> {
    pub out: Out<K, V>,
    pub decode: crate::dsl::Decoder<K, V>,
}

impl<K: Clone, V: Clone> Process<Option<Bytes>, Option<Bytes>> for Decode<K, V> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<Option<Bytes>, Option<Bytes>>) {
        match (self.decode)(ctx, r) {
            Ok(r) => {
                ctx.stream_time = ctx.stream_time.max(r.timestamp);
                self.out.forward(ctx, r)
            }
            Err(why) => ctx.skip(&why),
        }
    }
}

/// A stateless step.
pub(crate) struct Step<F, K2, V2> {
    pub f: Arc<F>,
    pub out: Out<K2, V2>,
}

impl<K, V, K2, V2, F: Fn(&mut Ctx, Record<K, V>, &Out<K2, V2>)> Process<K, V> for Step<F, K2, V2> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        (self.f)(ctx, r, &self.out)
    }
}

/// Encodes records for a topic.
pub(crate) struct Encode<K, V> {
    pub topic: String,
    /// A repartition topic: named after the application.
    pub internal: bool,
    pub _t: PhantomData<fn(K, V)>,
}

impl<K: Codec, V: Codec> Process<K, V> for Encode<K, V> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        let topic = if self.internal { format!("{}-{}", ctx.app_id, self.topic) } else { self.topic.clone() };
        ctx.outputs.push(Output {
            topic,
            key: r.key.encode(),
            value: r.value.encode(),
            timestamp: r.timestamp,
            headers: r.headers,
            partition: None,
        });
    }
}

/// Keeps the latest value of each key (`None` deletes) and emits the change.
pub(crate) struct ToTable<K, V2> {
    pub store: StoreRef,
    pub out: Out<K, Change<V2>>,
}

impl<K: Codec + Clone, V: Into<Option<V2>>, V2: Codec + Clone> Process<K, V> for ToTable<K, V2> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if r.key.is_null() {
            return ctx.skip("a table row needs a key");
        }
        let new: Option<V2> = r.value.into();
        let mut store = self.store.borrow_mut();
        let old = match store.get::<K, V2>(&r.key).and_then(|old| store.put(&r.key, new.as_ref()).map(|()| old)) {
            Ok(old) => old,
            Err(e) => return ctx.fail(e),
        };
        drop(store);
        if old.is_none() && new.is_none() {
            return;
        }
        let key = r.key;
        self.out.forward(ctx, Record { key, value: Change { new, old }, timestamp: r.timestamp, headers: r.headers })
    }
}

/// Folds each key's records into its row of a key-value store and emits the change.
pub(crate) struct Aggregate<K, VA, F> {
    pub store: StoreRef,
    pub f: Arc<F>,
    pub out: Out<K, Change<VA>>,
}

impl<K: Codec + Clone, V, VA: Codec + Clone, F: Fn(&K, &V, Option<VA>) -> VA> Process<K, V> for Aggregate<K, VA, F> {
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if r.key.is_null() {
            return ctx.skip("an aggregation needs a key");
        }
        let mut store = self.store.borrow_mut();
        let old = match store.get::<K, VA>(&r.key) {
            Ok(old) => old,
            Err(e) => return ctx.fail(e),
        };
        let new = (self.f)(&r.key, &r.value, old.clone());
        if let Err(e) = store.put(&r.key, Some(&new)) {
            return ctx.fail(e);
        }
        drop(store);
        let value = Change { new: Some(new), old };
        self.out.forward(ctx, Record { key: r.key, value, timestamp: r.timestamp, headers: r.headers })
    }
}

/// The key under which windowed processors keep their observed stream time (not a window key).
const META: &[u8] = b"";

fn read_meta(store: &WindowStore) -> Option<i64> {
    let raw = store.store.borrow().get_raw(META).ok()??;
    Some(i64::from_be_bytes(raw.as_slice().try_into().ok()?))
}

/// Folds each key's records into their time windows.
pub(crate) struct WindowAggregate<K, VA, F> {
    store: WindowStore,
    windows: TimeWindows,
    emit_final: bool,
    f: Arc<F>,
    out: Out<Windowed<K>, Change<VA>>,
    /// The largest time this processor has seen: what windows close by.
    observed: i64,
    /// Windows updated and not yet emitted (emit-final): (end, key, start).
    pending: BTreeSet<(i64, Vec<u8>, i64)>,
    opened: bool,
}

impl<K, VA, F> WindowAggregate<K, VA, F> {
    pub fn new(
        store: WindowStore,
        windows: TimeWindows,
        emit_final: bool,
        f: Arc<F>,
        out: Out<Windowed<K>, Change<VA>>,
    ) -> Self {
        Self { store, windows, emit_final, f, out, observed: i64::MIN, pending: BTreeSet::new(), opened: false }
    }
}

impl<K: Codec + Clone, VA: Codec + Clone, F> WindowAggregate<K, VA, F> {
    /// Picks up where the store's last owner stopped: its stream time and unemitted windows.
    fn open(&mut self) -> Result<(), crate::store::StoreError> {
        self.opened = true;
        let entries = self.store.all_raw()?;
        let meta = read_meta(&self.store);
        self.observed = entries.iter().map(|e| e.1).chain(meta).max().unwrap_or(i64::MIN);
        if self.emit_final {
            let emitted_until = meta.unwrap_or(i64::MIN);
            for (k, s, e, _) in entries {
                if e + self.windows.grace > emitted_until {
                    self.pending.insert((e, k, s));
                }
            }
        }
        Ok(())
    }

    /// Emits the windows closed by the observed time (emit-final).
    fn emit_closed(&mut self, ctx: &mut Ctx) -> Result<(), crate::store::StoreError> {
        let mut any = false;
        while let Some((end, _, _)) = self.pending.first() {
            if end + self.windows.grace > self.observed {
                break;
            }
            let Some((end, kb, start)) = self.pending.pop_first() else { break };
            any = true;
            let Some(raw) = self.store.get_raw(&kb, start, end)? else { continue };
            let (Ok(key), Ok(value)) = (K::decode(&kb), VA::decode(&raw)) else {
                ctx.skip("a stored window could not be decoded");
                continue;
            };
            let rec = Record::new(Windowed { key, start, end }, Change { new: Some(value), old: None }, end - 1);
            self.out.forward(ctx, rec);
        }
        if any {
            self.store.store.borrow_mut().put_raw(META, Some(&self.observed.to_be_bytes()))?;
        }
        Ok(())
    }
}

impl<K: Codec + Clone, V, VA: Codec + Clone, F: Fn(&K, &V, Option<VA>) -> VA> Process<K, V>
    for WindowAggregate<K, VA, F>
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if let Err(e) = self.step(ctx, r) {
            ctx.fail(e)
        }
    }
}

impl<K: Codec + Clone, VA: Codec + Clone, F> WindowAggregate<K, VA, F> {
    fn step<V>(&mut self, ctx: &mut Ctx, r: Record<K, V>) -> Result<(), crate::store::StoreError>
    where
        F: Fn(&K, &V, Option<VA>) -> VA,
    {
        if !self.opened {
            self.open()?;
        }
        let Some(kb) = r.key.encode().map(Vec::from) else {
            ctx.skip("a windowed aggregation needs a key");
            return Ok(());
        };
        self.observed = self.observed.max(r.timestamp);
        for (start, end) in self.windows.windows_for(r.timestamp) {
            if end + self.windows.grace <= self.observed {
                ctx.metrics.dropped_late += 1;
                continue;
            }
            let old = match self.store.get_raw(&kb, start, end)? {
                Some(raw) => VA::decode(&raw).ok(),
                None => None,
            };
            let new = (self.f)(&r.key, &r.value, old.clone());
            self.store.put_raw(&kb, start, end, new.encode().as_deref())?;
            if self.emit_final {
                self.pending.insert((end, kb.clone(), start));
            } else {
                let key = Windowed { key: r.key.clone(), start, end };
                self.out.forward(ctx, Record::new(key, Change { new: Some(new), old }, r.timestamp));
            }
        }
        if self.emit_final {
            self.emit_closed(ctx)?;
        }
        self.store.expire(self.observed)
    }
}

/// Folds each key's records into sessions, merging sessions a record bridges.
pub(crate) struct SessionAggregate<K, VA, I, F, M> {
    pub store: WindowStore,
    pub windows: SessionWindows,
    pub emit_final: bool,
    pub init: Arc<I>,
    pub f: Arc<F>,
    pub merge: Arc<M>,
    pub out: Out<Windowed<K>, Change<VA>>,
    /// Sessions updated and not yet emitted (emit-final): (end, key, start).
    pub pending: BTreeSet<(i64, Vec<u8>, i64)>,
    pub restored: bool,
    /// The largest time this processor has seen.
    pub observed: i64,
}

impl<K, V, VA, I, F, M> Process<K, V> for SessionAggregate<K, VA, I, F, M>
where
    K: Codec + Clone,
    VA: Codec + Clone,
    I: Fn() -> VA,
    F: Fn(&K, &V, VA) -> VA,
    M: Fn(&K, VA, VA) -> VA,
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if let Err(e) = self.step(ctx, r) {
            ctx.fail(e)
        }
    }
}

impl<K, VA, I, F, M> SessionAggregate<K, VA, I, F, M>
where
    K: Codec + Clone,
    VA: Codec + Clone,
    I: Fn() -> VA,
    M: Fn(&K, VA, VA) -> VA,
{
    fn step<V>(&mut self, ctx: &mut Ctx, r: Record<K, V>) -> Result<(), crate::store::StoreError>
    where
        F: Fn(&K, &V, VA) -> VA,
    {
        let (gap, grace) = (self.windows.gap, self.windows.grace);
        if !self.restored {
            // Where the store's last owner stopped: its stream time as last written (when it
            // emitted), else the latest session end, and the sessions not yet emitted.
            self.restored = true;
            let entries = self.store.all_raw()?;
            let meta = read_meta(&self.store);
            self.observed = entries.iter().map(|e| e.2).chain(meta).max().unwrap_or(i64::MIN);
            if self.emit_final {
                let emitted_at = meta.unwrap_or(i64::MIN);
                for (k, s, e, _) in entries {
                    if e + gap + grace >= emitted_at {
                        self.pending.insert((e, k, s));
                    }
                }
            }
        }
        let Some(kb) = r.key.encode().map(Vec::from) else {
            ctx.skip("a session aggregation needs a key");
            return Ok(());
        };
        self.observed = self.observed.max(r.timestamp);
        let observed = self.observed;
        let t = r.timestamp;
        // Sessions this record touches: ending at most `gap` before it, starting at most `gap`
        // after it.
        let touching: Vec<(i64, i64, Vec<u8>)> =
            self.store.fetch_raw(&kb, i64::MIN + 1, t + gap)?.into_iter().filter(|(_, e, _)| *e >= t - gap).collect();
        let start = touching.iter().map(|s| s.0).fold(t, i64::min);
        let end = touching.iter().map(|s| s.1).fold(t, i64::max);
        // As Kafka: late when the merged session closed (its end, the gap and grace passed).
        if end + gap + grace < observed {
            ctx.metrics.dropped_late += 1;
            return Ok(());
        }
        let mut agg: Option<VA> = None;
        for (s, e, raw) in touching {
            let Ok(value) = VA::decode(&raw) else { continue };
            self.store.put_raw(&kb, s, e, None)?;
            self.pending.remove(&(e, kb.clone(), s));
            if !self.emit_final {
                let key = Windowed { key: r.key.clone(), start: s, end: e };
                self.out.forward(ctx, Record::new(key, Change { new: None, old: Some(value.clone()) }, t));
            }
            agg = Some(match agg {
                Some(a) => (self.merge)(&r.key, a, value),
                None => value,
            });
        }
        let new = (self.f)(&r.key, &r.value, agg.unwrap_or_else(|| (self.init)()));
        self.store.put_raw(&kb, start, end, new.encode().as_deref())?;
        if self.emit_final {
            self.pending.insert((end, kb.clone(), start));
            while let Some((e, _, _)) = self.pending.first() {
                // Closed once no record can merge into it: its end, gap and grace passed.
                if e + gap + grace >= observed {
                    break;
                }
                let Some((e, k, s)) = self.pending.pop_first() else { break };
                self.store.store.borrow_mut().put_raw(META, Some(&observed.to_be_bytes()))?;
                let Some(raw) = self.store.get_raw(&k, s, e)? else { continue };
                if let (Ok(key), Ok(value)) = (K::decode(&k), VA::decode(&raw)) {
                    let rec =
                        Record::new(Windowed { key, start: s, end: e }, Change { new: Some(value), old: None }, e);
                    self.out.forward(ctx, rec);
                }
            }
        } else {
            let key = Windowed { key: r.key.clone(), start, end };
            self.out.forward(ctx, Record::new(key, Change { new: Some(new), old: None }, t));
        }
        self.store.expire(observed)
    }
}

/// Joins stream records with a table's current row.
pub(crate) struct StreamTableJoin<K, VT, VR, F> {
    pub store: StoreRef,
    pub f: Arc<F>,
    pub out: Out<K, VR>,
    pub _t: PhantomData<fn(VT)>,
}

impl<K: Codec + Clone, V, VT: Codec, VR: Clone, F: Fn(&V, Option<&VT>) -> Option<VR>> Process<K, V>
    for StreamTableJoin<K, VT, VR, F>
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if r.key.is_null() {
            return ctx.skip("a stream-table join needs a key");
        }
        let row = match self.store.borrow().get::<K, VT>(&r.key) {
            Ok(row) => row,
            Err(e) => return ctx.fail(e),
        };
        if let Some(v) = (self.f)(&r.value, row.as_ref()) {
            let key = r.key.clone();
            self.out.forward(ctx, r.with(key, v))
        }
    }
}

/// Reads a store of the task for each record (a table-table join's side).
pub(crate) struct Lookup<F, K, V2> {
    pub store: StoreRef,
    pub f: Arc<F>,
    pub out: Out<K, V2>,
}

impl<K: Clone, V, V2: Clone, F: Fn(&crate::store::Store, &Ctx, &Record<K, V>) -> V2> Process<K, V>
    for Lookup<F, K, V2>
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        let v = (self.f)(&self.store.borrow(), ctx, &r);
        let key = r.key.clone();
        self.out.forward(ctx, r.with(key, v))
    }
}

/// Which side of a stream-stream join a record comes from.
#[derive(Debug, Clone)]
pub(crate) enum Side<V, VO> {
    This(V),
    Other(VO),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum JoinKind {
    Inner,
    Left,
    Outer,
}

/// A buffered record of one side: unmatched until a record of the other side joins it, then
/// emitted (left and outer joins emit unmatched records once their window closes).
const UNMATCHED: u8 = 0;
const MATCHED: u8 = 1;

/// A window-store entry holds every record of a key at one time: (flag, length, bytes)*.
fn entries(blob: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = blob;
    while rest.len() >= 5 {
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(bytes) = rest.get(5..5 + len) else { break };
        out.push((flag, bytes));
        rest = &rest[5 + len..];
    }
    out
}

fn blob(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (flag, bytes) in entries {
        out.push(*flag);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Joins the records of two streams that share a key and are close enough in time.
pub(crate) struct StreamStreamJoin<K, V, VO, VR, F> {
    this: WindowStore,
    other: WindowStore,
    windows: crate::dsl::JoinWindows,
    kind: JoinKind,
    f: Arc<F>,
    out: Out<K, VR>,
    observed: i64,
    /// Unmatched records awaiting their window's close (left/outer): (close time, this side?,
    /// key, time).
    waiting: BTreeSet<(i64, bool, Vec<u8>, i64)>,
    opened: bool,
    _t: PhantomData<fn(V, VO)>,
}

impl<K, V, VO, VR, F> StreamStreamJoin<K, V, VO, VR, F> {
    pub fn new(
        this: WindowStore,
        other: WindowStore,
        windows: crate::dsl::JoinWindows,
        kind: JoinKind,
        f: Arc<F>,
        out: Out<K, VR>,
    ) -> Self {
        Self {
            this,
            other,
            windows,
            kind,
            f,
            out,
            observed: i64::MIN,
            waiting: BTreeSet::new(),
            opened: false,
            _t: PhantomData,
        }
    }
}

impl<K, V, VO, VR, F> Process<K, Side<V, VO>> for StreamStreamJoin<K, V, VO, VR, F>
where
    K: Codec + Clone,
    V: Codec + Clone,
    VO: Codec + Clone,
    VR: Clone,
    F: Fn(Option<&V>, Option<&VO>) -> Option<VR>,
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, Side<V, VO>>) {
        if let Err(e) = self.step(ctx, r) {
            ctx.fail(e)
        }
    }
}

impl<K, V, VO, VR, F> StreamStreamJoin<K, V, VO, VR, F>
where
    K: Codec + Clone,
    V: Codec + Clone,
    VO: Codec + Clone,
    VR: Clone,
    F: Fn(Option<&V>, Option<&VO>) -> Option<VR>,
{
    /// When a record of a side at `t` can no longer be joined.
    fn close(&self, this_side: bool, t: i64) -> i64 {
        let w = self.windows;
        if this_side { t + w.after + w.grace } else { t + w.before + w.grace }
    }

    fn waits(&self, this_side: bool) -> bool {
        match self.kind {
            JoinKind::Inner => false,
            JoinKind::Left => this_side,
            JoinKind::Outer => true,
        }
    }

    fn open(&mut self) -> Result<(), crate::store::StoreError> {
        self.opened = true;
        for this_side in [true, false] {
            let store = if this_side { &self.this } else { &self.other };
            let all = store.all_raw()?;
            self.observed = self.observed.max(all.iter().map(|e| e.1).max().unwrap_or(i64::MIN));
            if self.waits(this_side) {
                for (k, t, _, raw) in all {
                    if entries(&raw).iter().any(|(flag, _)| *flag == UNMATCHED) {
                        let close = self.close(this_side, t);
                        self.waiting.insert((close, this_side, k, t));
                    }
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, ctx: &mut Ctx, r: Record<K, Side<V, VO>>) -> Result<(), crate::store::StoreError> {
        if !self.opened {
            self.open()?;
        }
        let Some(kb) = r.key.encode().map(Vec::from) else {
            ctx.skip("a stream-stream join needs a key");
            return Ok(());
        };
        let t = r.timestamp;
        self.observed = self.observed.max(t);
        let this_side = matches!(r.value, Side::This(_));
        if self.close(this_side, t) < self.observed {
            ctx.metrics.dropped_late += 1;
            return Ok(());
        }
        let w = self.windows;
        // The other side's records within the window around this one.
        let (from, to) = if this_side { (t - w.before, t + w.after) } else { (t - w.after, t + w.before) };
        let (mine, theirs) =
            if this_side { (&mut self.this, &mut self.other) } else { (&mut self.other, &mut self.this) };
        let mut matched = false;
        let mut outputs = Vec::new();
        for (ot, _, raw) in theirs.fetch_raw(&kb, from, to)? {
            let mut list: Vec<(u8, &[u8])> = entries(&raw);
            for (flag, bytes) in list.iter_mut() {
                let joined = match &r.value {
                    Side::This(v) => VO::decode(bytes).ok().and_then(|o| (self.f)(Some(v), Some(&o))),
                    Side::Other(o) => V::decode(bytes).ok().and_then(|v| (self.f)(Some(&v), Some(o))),
                };
                if let Some(j) = joined {
                    outputs.push((j, t.max(ot)));
                }
                *flag = MATCHED;
                matched = true;
            }
            theirs.put_raw(&kb, ot, ot, Some(&blob(&list)))?;
        }
        let own = match &r.value {
            Side::This(v) => v.encode(),
            Side::Other(o) => o.encode(),
        }
        .unwrap_or_default();
        let mut list_raw = mine.get_raw(&kb, t, t)?.unwrap_or_default();
        list_raw.extend(blob(&[(if matched { MATCHED } else { UNMATCHED }, &own[..])]));
        mine.put_raw(&kb, t, t, Some(&list_raw))?;
        if !matched && self.waits(this_side) {
            let close = self.close(this_side, t);
            self.waiting.insert((close, this_side, kb.clone(), t));
        }
        for (j, ts) in outputs {
            self.out.forward(ctx, Record { key: r.key.clone(), value: j, timestamp: ts, headers: r.headers.clone() });
        }
        self.emit_unmatched(ctx)?;
        let horizon = self.observed;
        self.this.expire(horizon)?;
        self.other.expire(horizon)
    }

    /// Emits the records whose window closed without a match (left and outer joins).
    fn emit_unmatched(&mut self, ctx: &mut Ctx) -> Result<(), crate::store::StoreError> {
        while let Some((close, ..)) = self.waiting.first() {
            if *close >= self.observed {
                break;
            }
            let Some((_, this_side, kb, t)) = self.waiting.pop_first() else { break };
            let store = if this_side { &mut self.this } else { &mut self.other };
            let Some(raw) = store.get_raw(&kb, t, t)? else { continue };
            let mut list = entries(&raw);
            let Ok(key) = K::decode(&kb) else { continue };
            let mut outs = Vec::new();
            for (flag, bytes) in list.iter_mut() {
                if *flag != UNMATCHED {
                    continue;
                }
                *flag = MATCHED;
                let joined = if this_side {
                    V::decode(bytes).ok().and_then(|v| (self.f)(Some(&v), None))
                } else {
                    VO::decode(bytes).ok().and_then(|o| (self.f)(None, Some(&o)))
                };
                outs.extend(joined);
            }
            store.put_raw(&kb, t, t, Some(&blob(&list)))?;
            for j in outs {
                self.out.forward(ctx, Record::new(key.clone(), j, t));
            }
        }
        Ok(())
    }
}

/// Folds each key's records into sliding windows (Kafka's `SlidingWindows`): fixed windows
/// `[start, start + difference]`, both ends included, one ending at each record (starting at
/// 0 for records earlier than `difference`) and one starting just after each record when it
/// holds records: every distinct set of records at most `difference` apart. Records are kept
/// (`records` store, by time) while a window holding them is open; each window a record
/// falls in is folded again from its records, so a window's result never depends on arrival
/// order.
pub(crate) struct SlidingAggregate<K, V, VA, F> {
    pub records: WindowStore,
    pub results: WindowStore,
    pub difference: i64,
    pub grace: i64,
    pub emit_final: bool,
    pub f: Arc<F>,
    pub out: Out<Windowed<K>, Change<VA>>,
    pub observed: i64,
    pub pending: BTreeSet<(i64, Vec<u8>, i64)>,
    pub opened: bool,
    pub _t: PhantomData<fn(V)>,
}

impl<K, V, VA, F> Process<K, V> for SlidingAggregate<K, V, VA, F>
where
    K: Codec + Clone,
    V: Codec,
    VA: Codec + Clone,
    F: Fn(&K, &V, Option<VA>) -> VA,
{
    fn process(&mut self, ctx: &mut Ctx, r: Record<K, V>) {
        if let Err(e) = self.step(ctx, r) {
            ctx.fail(e)
        }
    }
}

impl<K, V, VA, F> SlidingAggregate<K, V, VA, F>
where
    K: Codec + Clone,
    V: Codec,
    VA: Codec + Clone,
    F: Fn(&K, &V, Option<VA>) -> VA,
{
    /// The window ending at a record at `t`.
    fn left(&self, t: i64) -> (i64, i64) {
        let start = (t - self.difference).max(0);
        (start, start + self.difference)
    }

    fn step(&mut self, ctx: &mut Ctx, r: Record<K, V>) -> Result<(), crate::store::StoreError> {
        let (d, grace) = (self.difference, self.grace);
        if !self.opened {
            self.opened = true;
            let results = self.results.all_raw()?;
            let meta = read_meta(&self.results);
            // Stream time is the latest record's (window ends can lie ahead of it).
            let latest = self.records.all_raw()?.iter().map(|e| e.1).max();
            self.observed = latest.into_iter().chain(meta).max().unwrap_or(i64::MIN);
            if self.emit_final {
                let emitted_at = meta.unwrap_or(i64::MIN);
                for (k, s, e, _) in results {
                    if e + grace >= emitted_at {
                        self.pending.insert((e, k, s));
                    }
                }
            }
        }
        let Some(kb) = r.key.encode().map(Vec::from) else {
            ctx.skip("a windowed aggregation needs a key");
            return Ok(());
        };
        let t = r.timestamp;
        self.observed = self.observed.max(t);
        if t.saturating_add(d).saturating_add(grace) < self.observed {
            ctx.metrics.dropped_late += 1;
            return Ok(());
        }
        let value = r.value.encode().unwrap_or_default();
        let mut list = self.records.get_raw(&kb, t, t)?.unwrap_or_default();
        list.extend(blob(&[(UNMATCHED, &value[..])]));
        self.records.put_raw(&kb, t, t, Some(&list))?;
        // The records around: every window holding `t` is made of some of them.
        let near: Vec<(i64, Vec<Vec<u8>>)> = self
            .records
            .fetch_raw(&kb, t - d - 1, t + d + 1)?
            .into_iter()
            .map(|(rt, _, raw)| (rt, entries(&raw).into_iter().map(|(_, b)| b.to_vec()).collect()))
            .collect();
        let mut windows = BTreeSet::new();
        for (rt, _) in &near {
            let (rt, (ls, le)) = (*rt, self.left(*rt));
            if ls <= t && t <= le {
                windows.insert((ls, le));
            }
            // The window right after a record, when it holds records.
            let (rs, re) = (rt + 1, rt + 1 + d);
            if near.iter().any(|(x, _)| rs <= *x && *x <= re) && (rs <= t && t <= re || rt == t) {
                windows.insert((rs, re));
            }
        }
        for (start, end) in windows {
            // A closed window (its end is included, so closed once stream time passed end +
            // grace) is final: a record still taken by others leaves it alone.
            if end + grace < self.observed {
                continue;
            }
            let mut agg = None;
            for (_, values) in near.iter().filter(|(rt, _)| start <= *rt && *rt <= end) {
                for v in values {
                    if let Ok(v) = V::decode(v) {
                        agg = Some((self.f)(&r.key, &v, agg));
                    }
                }
            }
            let Some(agg) = agg else { continue };
            let old = self.results.get_raw(&kb, start, end)?.and_then(|raw| VA::decode(&raw).ok());
            self.results.put_raw(&kb, start, end, agg.encode().as_deref())?;
            if self.emit_final {
                self.pending.insert((end, kb.clone(), start));
            } else {
                let key = Windowed { key: r.key.clone(), start, end };
                self.out.forward(ctx, Record::new(key, Change { new: Some(agg), old }, t));
            }
        }
        if self.emit_final {
            let mut any = false;
            while let Some((end, _, _)) = self.pending.first() {
                if end + grace >= self.observed {
                    break;
                }
                let Some((end, k, start)) = self.pending.pop_first() else { break };
                any = true;
                let Some(raw) = self.results.get_raw(&k, start, end)? else { continue };
                if let (Ok(key), Ok(value)) = (K::decode(&k), VA::decode(&raw)) {
                    let rec = Record::new(Windowed { key, start, end }, Change { new: Some(value), old: None }, end);
                    self.out.forward(ctx, rec);
                }
            }
            if any {
                self.results.store.borrow_mut().put_raw(META, Some(&self.observed.to_be_bytes()))?;
            }
        }
        self.records.expire(self.observed)?;
        self.results.expire(self.observed)
    }
}
