//! The gate between the uses of a managed key and the changes of it.
//!
//! A use of a managed key (one request: an init with its first call, a
//! single call, an update, a final, a wrap ...) notes the key's epoch
//! before it reads the key's view and passes its check, and counts itself
//! running. Its result is settled after the backend call, under the read
//! side of its key's gate: when the epoch is still the one it saw, the
//! result is handed out and its use record queued; when a change of the key
//! came in between, the use is checked again against the view now, and a
//! use the view no longer allows is withheld (`CKR_KEY_FUNCTION_NOT_PERMITTED`,
//! recorded with the reason).
//!
//! A change of a key (a lifecycle change made here, or one another agent of
//! the fleet made) closes the key's gate (a use of the key that begins now
//! waits until the change is in the view, and is checked against it), waits
//! for the uses of the key that are running at most `[agent] change_wait_ms`,
//! then holds the write side
//! of the gate while its records are committed and the view reloaded, and
//! moves the epoch on before it opens the gate again. A backend call that
//! hangs therefore delays a change of its own key by that bound at most,
//! and never a use of another key; and after the change returns, no use it
//! refuses is handed out, wherever it was when the change came.
//!
//! The gates are a fixed table indexed by key id (keys sharing an entry
//! only wait for each other's changes and check again for nothing), so a
//! use costs two atomic counts, one atomic load and an uncontended read
//! lock of its entry, and no allocation.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use keyward_policy::Operation;

use crate::keys::ManagedRef;

/// Entries of the table.
const ENTRIES: usize = 256;

/// How long a use that begins during a change of its key waits for the
/// change's commit, beyond the change's own wait.
const COMMIT_GRACE: Duration = Duration::from_secs(5);

/// The default of `[agent] change_wait_ms`.
pub const DEFAULT_WAIT_MS: u64 = 2000;
/// The largest `[agent] change_wait_ms`.
pub const MAX_WAIT_MS: u64 = 60_000;

/// One entry of the table, on a cache line of its own.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Gate {
    /// Moved on by every change of a key of this entry, once its view is
    /// reloaded.
    epoch: AtomicU64,
    /// Uses of a key of this entry that are running and counted (they
    /// began while no change was waiting).
    running: AtomicU32,
    /// Changes waiting for the running uses (a use that begins meanwhile
    /// does not count itself: the change need not wait for it, it is
    /// settled against the changed view).
    closing: AtomicU32,
    /// Read: a use settling its result; write: a change committing and
    /// reloading the view.
    change: RwLock<()>,
}

/// The table of gates (on [`crate::shared::Core`]).
#[derive(Debug)]
pub(crate) struct Gates {
    gates: Box<[Gate]>,
    /// How long a change waits for the running uses of its key.
    wait_ms: AtomicU64,
}

impl Default for Gates {
    fn default() -> Gates {
        Gates {
            gates: (0..ENTRIES).map(|_| Gate::default()).collect(),
            wait_ms: AtomicU64::new(DEFAULT_WAIT_MS),
        }
    }
}

/// The use the current request checked: its entry, the epoch it saw, and
/// what to check again if the key changed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entered {
    entry: usize,
    epoch: u64,
    counted: bool,
    pub(crate) managed: ManagedRef,
    pub(crate) op: Operation,
}

thread_local! {
    /// A request is served on one thread from its check to its result.
    static ENTERED: Cell<Option<Entered>> = const { Cell::new(None) };
}

fn entry_of(key_id: i64) -> usize {
    (key_id as u64 % ENTRIES as u64) as usize
}

/// Held by a request that may use a managed key, from before its check
/// until its result is settled: ends the use's count when dropped.
#[derive(Debug)]
pub(crate) struct Running<'a> {
    gates: &'a Gates,
    /// The use is noted per thread.
    _thread: PhantomData<*const ()>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.gates.leave();
    }
}

/// A settled use: its entry's read side, held until its record is queued.
pub(crate) type Settled<'a> = Option<RwLockReadGuard<'a, ()>>;

impl Gates {
    /// Sets how long a change waits for the running uses of its key.
    pub(crate) fn set_wait(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(MAX_WAIT_MS);
        self.wait_ms.store(ms.min(MAX_WAIT_MS), Ordering::Relaxed);
    }

    fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms.load(Ordering::Relaxed))
    }

    /// The start of a request that may use a managed key.
    pub(crate) fn running(&self) -> Running<'_> {
        // A use left by a request that ended without its guard (none
        // should) is not counted against the next one.
        self.leave();
        Running {
            gates: self,
            _thread: PhantomData,
        }
    }

    /// The epoch of `key_id`'s entry, read before the key's view. A use
    /// that begins while a change of its key is under way waits for it
    /// first (the change's wait and commit; at most the bound and
    /// [`COMMIT_GRACE`] in all), so that it is checked against the changed
    /// view: from the start of a change, no new use passes the old check
    /// unless the change takes longer than that.
    pub(crate) fn epoch(&self, key_id: i64) -> u64 {
        let gate = &self.gates[entry_of(key_id)];
        if gate.closing.load(Ordering::SeqCst) != 0 {
            let cap = self.wait() + COMMIT_GRACE;
            let start = Instant::now();
            let mut pause = Duration::from_micros(50);
            while gate.closing.load(Ordering::SeqCst) != 0 && start.elapsed() < cap {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
        }
        gate.epoch.load(Ordering::Acquire)
    }

    /// Notes that this request's use of `managed` for `op` passed its check
    /// against the view seen after `epoch`. A request uses one key: a
    /// second check (an operation's init and its call) keeps the first.
    pub(crate) fn enter(&self, managed: ManagedRef, op: Operation, epoch: u64) {
        if ENTERED.with(Cell::get).is_some() {
            return;
        }
        let entry = entry_of(managed.key_id);
        let gate = &self.gates[entry];
        gate.running.fetch_add(1, Ordering::SeqCst);
        let counted = gate.closing.load(Ordering::SeqCst) == 0;
        if !counted {
            gate.running.fetch_sub(1, Ordering::SeqCst);
        }
        ENTERED.with(|e| {
            e.set(Some(Entered {
                entry,
                epoch,
                counted,
                managed,
                op,
            }))
        });
    }

    /// Ends this thread's use, if any.
    fn leave(&self) {
        if let Some(e) = ENTERED.with(Cell::take) {
            if e.counted {
                self.gates[e.entry].running.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// This request's use, and its entry's read side: `Some(use)` when its
    /// key changed since its check (it must be checked again), `None` when
    /// not. Nothing when the request uses no managed key.
    pub(crate) fn settle(&self) -> Option<(Option<Entered>, RwLockReadGuard<'_, ()>)> {
        let e = ENTERED.with(Cell::get)?;
        let gate = &self.gates[e.entry];
        let held = gate.change.read().unwrap_or_else(|p| p.into_inner());
        let changed = gate.epoch.load(Ordering::Acquire) != e.epoch;
        Some((changed.then_some(e), held))
    }

    /// A change of `key_id`: waits for the key's running uses (at most the
    /// configured bound), then holds the entry until dropped, when the
    /// epoch moves on. Drop it once the view has the change.
    pub(crate) fn change(&self, key_id: i64) -> Changing<'_> {
        let entry = entry_of(key_id);
        self.close(&[entry], Some(key_id));
        let held = vec![self.gates[entry]
            .change
            .write()
            .unwrap_or_else(|p| p.into_inner())];
        Changing {
            gates: self,
            entries: Entries::One(entry),
            held,
        }
    }

    /// A change of every key (the whole view reloaded).
    pub(crate) fn change_all(&self) -> Changing<'_> {
        let all: Vec<usize> = (0..self.gates.len()).collect();
        self.close(&all, None);
        let held = self
            .gates
            .iter()
            .map(|g| g.change.write().unwrap_or_else(|p| p.into_inner()))
            .collect();
        Changing {
            gates: self,
            entries: Entries::All,
            held,
        }
    }

    /// Closes `entries` and waits until none has a counted use running,
    /// at most the bound; says in the log when the bound passed.
    fn close(&self, entries: &[usize], key_id: Option<i64>) {
        for &i in entries {
            self.gates[i].closing.fetch_add(1, Ordering::SeqCst);
        }
        let bound = self.wait();
        let start = Instant::now();
        let running = || -> u32 {
            entries
                .iter()
                .map(|&i| self.gates[i].running.load(Ordering::SeqCst))
                .sum()
        };
        let mut pause = Duration::from_micros(50);
        loop {
            let n = running();
            if n == 0 {
                return;
            }
            let waited = start.elapsed();
            if waited >= bound {
                let which = key_id.map_or_else(|| "keys".to_owned(), |id| format!("key {id}"));
                log::warn!(
                    "a change of {which} waited {} ms for {n} use(s) still running \
                     (change_wait_ms): it goes ahead; a use it refuses is withheld when it ends",
                    waited.as_millis()
                );
                return;
            }
            std::thread::sleep(pause.min(bound - waited));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

#[derive(Debug)]
enum Entries {
    One(usize),
    All,
}

/// A change in progress (see [`Gates::change`]).
#[derive(Debug)]
pub(crate) struct Changing<'a> {
    gates: &'a Gates,
    entries: Entries,
    held: Vec<RwLockWriteGuard<'a, ()>>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let entries: &[Gate] = match self.entries {
            Entries::One(i) => &self.gates.gates[i..=i],
            Entries::All => &self.gates.gates,
        };
        // The view has the change: uses settling from now on see it.
        for g in entries {
            g.epoch.fetch_add(1, Ordering::Release);
        }
        self.held.clear();
        for g in entries {
            g.closing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: ManagedRef = ManagedRef {
        key_id: 7,
        version: 1,
    };

    #[test]
    fn a_use_that_ends_before_a_change_is_settled_unchanged() {
        let gates = Gates::default();
        let running = gates.running();
        gates.enter(KEY, Operation::Sign, gates.epoch(KEY.key_id));
        let (changed, held) = gates.settle().expect("a use");
        assert!(changed.is_none());
        drop(held);
        drop(running);
        let t = Instant::now();
        drop(gates.change(KEY.key_id));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "nothing to wait for"
        );
    }

    #[test]
    fn a_change_waits_for_a_running_use_at_most_the_bound_and_the_use_sees_it() {
        let gates = Gates::default();
        gates.set_wait(Duration::from_millis(200));
        let running = gates.running();
        gates.enter(KEY, Operation::Sign, gates.epoch(KEY.key_id));
        let t = Instant::now();
        drop(gates.change(KEY.key_id));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
        let (changed, _held) = gates.settle().expect("a use");
        let e = changed.expect("the use sees the change");
        assert_eq!((e.managed, e.op), (KEY, Operation::Sign));
        drop(running);
    }

    #[test]
    fn a_use_that_begins_during_a_change_of_its_key_waits_for_it() {
        let gates = std::sync::Arc::new(Gates::default());
        gates.set_wait(Duration::from_millis(300));
        let running = gates.running();
        gates.enter(KEY, Operation::Sign, gates.epoch(KEY.key_id));
        let before = gates.epoch(KEY.key_id);
        let changer = {
            let gates = gates.clone();
            std::thread::spawn(move || drop(gates.change(KEY.key_id)))
        };
        // The change has closed the key's entry.
        let t = Instant::now();
        while gates.gates[entry_of(KEY.key_id)]
            .closing
            .load(Ordering::SeqCst)
            == 0
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the change did not begin"
            );
            std::thread::yield_now();
        }
        // A new use of the key waits for the change and sees its epoch.
        let seen = std::thread::scope(|s| {
            s.spawn(|| gates.epoch(KEY.key_id))
                .join()
                .expect("a new use")
        });
        assert_eq!(
            seen,
            before + 1,
            "the new use is checked against the change"
        );
        changer.join().expect("the change");
        drop(running);
    }

    #[test]
    fn a_change_of_another_key_neither_waits_nor_is_seen() {
        let gates = Gates::default();
        gates.set_wait(Duration::from_secs(30));
        let running = gates.running();
        gates.enter(KEY, Operation::Sign, gates.epoch(KEY.key_id));
        let t = Instant::now();
        drop(gates.change(KEY.key_id + 1));
        assert!(t.elapsed() < Duration::from_secs(5));
        let (changed, _held) = gates.settle().expect("a use");
        assert!(changed.is_none());
        drop(running);
    }

    #[test]
    fn a_use_ended_ends_its_count_and_a_second_check_keeps_the_first() {
        let gates = Gates::default();
        gates.set_wait(Duration::from_secs(30));
        {
            let _running = gates.running();
            let e = gates.epoch(KEY.key_id);
            gates.enter(KEY, Operation::Sign, e);
            gates.enter(KEY, Operation::Verify, e + 1);
            let (changed, _held) = gates.settle().expect("a use");
            assert!(changed.is_none(), "the first check's epoch is kept");
        }
        assert!(gates.settle().is_none(), "no use after the request");
        let t = Instant::now();
        drop(gates.change_all());
        assert!(t.elapsed() < Duration::from_secs(5), "no count left behind");
    }
}
