//! The groups an active coordinator serves, each behind its own lock and with its own timer.
//!
//! The registry's map is locked only to find, add or drop a group, never while a group is
//! worked on: calls for different groups never wait for each other. Each group has a timer
//! task that sleeps until the group's next session or rebalance deadline (or until the group
//! changes), then expires late members and reconciles that group alone.
//!
//! Lock order: the registry map, then one group (never two). A group found in the map may be
//! dropped from it before its lock is taken; [`Registry::with_group`] sees the `dropped` mark
//! and looks again, so nothing is ever written into a group the registry forgot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sluice_core::SluiceError;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::group::Group;

/// A group and what its timer needs.
pub struct Cell {
    state: Mutex<Slot>,
    /// Wakes the timer: the group changed, its deadlines may have moved.
    wake: Notify,
}

pub struct Slot {
    pub group: Group,
    /// Set when the registry dropped this cell: it must not be written any more.
    dropped: bool,
}

impl Cell {
    pub fn lock(&self) -> MutexGuard<'_, Slot> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a group's timer calls back into: the coordinator, without a strong reference.
pub trait Host: Send + Sync + 'static {
    /// Partition counts of every topic, for reconciling.
    fn partition_counts(&self) -> BTreeMap<String, u32>;
    /// The group's membership may have changed (for the snapshot writer).
    fn mark(&self, group: &str);
    /// The registry the group lives in.
    fn registry(&self) -> &Registry;
}

/// The groups, while this coordinator is active: closed (nothing can be added) on standby,
/// so that a call racing the loss of the role cannot leave a group behind.
#[derive(Default)]
pub struct Registry {
    groups: Mutex<Groups>,
}

#[derive(Default)]
struct Groups {
    open: bool,
    map: HashMap<String, Arc<Cell>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the registry (the role was won) with the groups a new coordinator loaded,
    /// starting their timers.
    pub fn open<H: Host>(&self, host: &Arc<H>, groups: Vec<Group>) {
        let mut g = self.lock();
        for group in groups {
            let id = group.id.clone();
            let cell = Arc::new(Cell { state: Mutex::new(Slot { group, dropped: false }), wake: Notify::new() });
            spawn_timer(Arc::downgrade(host), Arc::downgrade(&cell));
            if let Some(old) = g.map.insert(id, cell) {
                drop_cell(&old);
            }
        }
        g.open = true;
    }

    /// The group's cell, if the group exists.
    pub fn get(&self, id: &str) -> Option<Arc<Cell>> {
        self.lock().map.get(id).cloned()
    }

    /// Every group's cell.
    pub fn cells(&self) -> Vec<Arc<Cell>> {
        self.lock().map.values().cloned().collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().map.keys().cloned().collect()
    }

    /// Reads a group without changing it (`None` when it does not exist).
    pub fn read<R>(&self, id: &str, f: impl FnOnce(&Group) -> R) -> Option<R> {
        let cell = self.get(id)?;
        let slot = cell.lock();
        (!slot.dropped).then(|| f(&slot.group))
    }

    /// Applies `f` to a group, created when missing, then reconciles it (`counts`: partition
    /// counts), marks it for the snapshot writer, wakes its timer, and drops it from the
    /// registry when it is left with nothing to keep. Refused (COORDINATOR_NOT_AVAILABLE)
    /// while the registry is closed.
    pub fn with_group<H: Host, R>(
        &self,
        host: &Arc<H>,
        id: &str,
        f: impl FnOnce(&mut Group) -> R,
    ) -> Result<R, SluiceError> {
        self.with_group_then(host, id, f, |_, r| r)
    }

    /// [`Registry::with_group`], and `then` sees the group after it was reconciled, under the
    /// same lock, with what `f` returned: an answer built there is what the group holds.
    pub fn with_group_then<H: Host, R, T>(
        &self,
        host: &Arc<H>,
        id: &str,
        f: impl FnOnce(&mut Group) -> R,
        then: impl FnOnce(&mut Group, R) -> T,
    ) -> Result<T, SluiceError> {
        let counts = host.partition_counts();
        loop {
            let cell = {
                let mut g = self.lock();
                if !g.open {
                    return Err(SluiceError::CoordinatorNotAvailable("this coordinator is on standby".into()));
                }
                g.map
                    .entry(id.to_string())
                    .or_insert_with(|| {
                        let cell = Arc::new(Cell {
                            state: Mutex::new(Slot {
                                group: Group::new(id.to_string(), BTreeMap::new()),
                                dropped: false,
                            }),
                            wake: Notify::new(),
                        });
                        spawn_timer(Arc::downgrade(host), Arc::downgrade(&cell));
                        cell
                    })
                    .clone()
            };
            let mut slot = cell.lock();
            if slot.dropped {
                continue;
            }
            let r = f(&mut slot.group);
            slot.group.reconcile(&counts, Instant::now());
            let r = then(&mut slot.group, r);
            let idle = slot.group.is_idle();
            drop(slot);
            host.mark(id);
            cell.wake.notify_one();
            if idle {
                self.drop_if_idle(id);
            }
            return Ok(r);
        }
    }

    /// Applies `f` to an existing group without reconciling (cache updates, counters).
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut Group) -> R) -> Option<R> {
        let cell = self.get(id)?;
        let mut slot = cell.lock();
        if slot.dropped {
            return None;
        }
        let r = f(&mut slot.group);
        drop(slot);
        cell.wake.notify_one();
        Some(r)
    }

    /// Drops the group from the registry when it has no member and no offset left.
    pub fn drop_if_idle(&self, id: &str) -> bool {
        let mut g = self.lock();
        let Some(cell) = g.map.get(id).cloned() else { return false };
        let mut slot = cell.lock();
        if !slot.group.is_idle() {
            return false;
        }
        slot.dropped = true;
        g.map.remove(id);
        drop(slot);
        cell.wake.notify_one();
        true
    }

    /// Closes the registry and drops every group (the role is lost); their timers end.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.open = false;
        for (_, cell) in g.map.drain() {
            drop_cell(&cell);
        }
    }
}

fn drop_cell(cell: &Cell) {
    cell.lock().dropped = true;
    cell.wake.notify_one();
}

/// Sleeps until the group's next deadline or a change, then expires late members and
/// reconciles; ends when the group is dropped or the coordinator is gone.
fn spawn_timer<H: Host>(host: Weak<H>, cell: Weak<Cell>) {
    tokio::spawn(async move {
        loop {
            let (deadline, woken) = {
                let Some(c) = cell.upgrade() else { return };
                let slot = c.lock();
                if slot.dropped {
                    return;
                }
                // A change between here and the wait below is not missed: notify_one leaves a
                // permit when nobody waits yet.
                let deadline = slot.group.next_deadline();
                drop(slot);
                (deadline, async move { c.wake.notified().await })
            };
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = woken => continue,
                    }
                }
                None => {
                    woken.await;
                    continue;
                }
            }
            let (Some(h), Some(c)) = (host.upgrade(), cell.upgrade()) else { return };
            let mut slot = c.lock();
            if slot.dropped {
                return;
            }
            let now = Instant::now();
            if slot.group.expire(now) {
                slot.group.reconcile(&h.partition_counts(), now);
                let (id, idle) = (slot.group.id.clone(), slot.group.is_idle());
                drop(slot);
                h.mark(&id);
                if idle {
                    h.registry().drop_if_idle(&id);
                }
            }
        }
    });
}
