//! One budget of CPU compute threads for the whole process.
//!
//! Each model's worker runs its CPU forward passes on its own libtorch thread pool; two busy
//! models running at once would each start a pool as large as the machine and oversubscribe
//! the cores. Every CPU forward pass therefore holds a share of one process-wide budget (its
//! worker's thread count) while it runs. Waiting passes are granted interactive first, then in
//! arrival order (models take turns, so one model's bulk load cannot hold another model's
//! queries behind it); after [`INTERACTIVE_RUN`] interactive grants in a row the oldest waiter
//! goes next whatever its priority, so bulk work on one model cannot be starved by queries on
//! another. Interactive arrivals are also noted here, for every model of the process: while
//! any model has interactive traffic, bulk batches everywhere are cut short.
//!
//! Each CUDA device has a gate of the same kind ([`cuda_gate`]): its budget is batches in
//! flight on the device rather than threads, granted by the same rules, so one model's bulk
//! load on a GPU cannot hold another model's queries behind its backlog either.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::queue::INTERACTIVE_RUN;
use crate::Priority;

/// The process's CPU compute budget and its use (see [`cpu_compute_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct CpuComputeStats {
    /// Threads CPU forward passes may use at once, all models together.
    pub budget: usize,
    /// Threads in use by CPU forward passes now.
    pub in_use: usize,
    /// The most ever in use at once.
    pub peak: usize,
    /// CPU forward passes granted.
    pub passes: u64,
    /// Passes that had to wait for another pass to finish.
    pub waited: u64,
}

/// The decisions of a gate: who holds what, who waits, who goes next. Pure (no locking, no
/// waiting), so the ordering is unit-tested directly; the CPU gate and the CUDA device gates
/// share it.
struct State {
    budget: usize,
    in_use: usize,
    peak: usize,
    passes: u64,
    waited: u64,
    next_ticket: u64,
    /// (priority, ticket) of every waiting pass.
    waiting: BTreeSet<(Priority, u64)>,
    /// Interactive grants in a row while a bulk pass waited.
    interactive_run: usize,
}

impl State {
    fn new(budget: usize) -> State {
        State { budget, in_use: 0, peak: 0, passes: 0, waited: 0, next_ticket: 0, waiting: BTreeSet::new(), interactive_run: 0 }
    }

    /// The waiter to grant next: interactive first, then arrival order; after
    /// [`INTERACTIVE_RUN`] interactive grants in a row while bulk waited, the oldest waiter.
    fn first(&self) -> Option<(Priority, u64)> {
        let bulk_waits = self.waiting.iter().any(|(p, _)| *p == Priority::Bulk);
        if bulk_waits && self.interactive_run >= INTERACTIVE_RUN {
            self.waiting.iter().min_by_key(|(_, t)| *t).copied()
        } else {
            self.waiting.first().copied()
        }
    }

    /// Queues a pass; returns its place.
    fn enter(&mut self, priority: Priority) -> (Priority, u64) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.insert((priority, ticket));
        (priority, ticket)
    }

    /// Grants `units` (the whole budget if more) to the waiter `place` if it is next and they
    /// fit; returns the units granted.
    fn grant(&mut self, place: (Priority, u64), units: usize, waited: bool) -> Option<usize> {
        let need = units.clamp(1, self.budget);
        if self.first() != Some(place) || self.in_use + need > self.budget {
            return None;
        }
        self.waiting.remove(&place);
        let bulk_waits = self.waiting.iter().any(|(p, _)| *p == Priority::Bulk);
        self.interactive_run = if place.0 == Priority::Interactive && bulk_waits { self.interactive_run + 1 } else { 0 };
        self.in_use += need;
        self.peak = self.peak.max(self.in_use);
        self.passes += 1;
        self.waited += u64::from(waited);
        Some(need)
    }

    /// Gives up a place in the line without a grant.
    fn leave(&mut self, place: (Priority, u64)) {
        self.waiting.remove(&place);
    }
}

/// A budget shared by the passes of every model on one device: CPU threads, or the passes in
/// flight on one CUDA device.
pub(crate) struct Gate {
    state: Mutex<State>,
    turn: Condvar,
}

impl Gate {
    fn new(budget: usize) -> Gate {
        Gate { state: Mutex::new(State::new(budget)), turn: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counters change under the lock; a panic cannot leave them half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `units` of the budget (all of it if more) for a pass of `priority`.
    pub(crate) fn acquire(&'static self, priority: Priority, units: usize) -> Permit {
        let mut s = self.lock();
        let place = s.enter(priority);
        let mut waited = false;
        loop {
            if let Some(units) = s.grant(place, units, waited) {
                drop(s);
                // The next in line may fit beside this pass.
                self.turn.notify_all();
                return Permit { gate: self, units };
            }
            waited = true;
            s = self.turn.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A share now if this pass would be granted one at once (it is next in line and fits),
    /// else `None` and no place kept.
    pub(crate) fn try_acquire(&'static self, priority: Priority, units: usize) -> Option<Permit> {
        let mut s = self.lock();
        let place = s.enter(priority);
        match s.grant(place, units, false) {
            Some(units) => Some(Permit { gate: self, units }),
            None => {
                s.leave(place);
                None
            }
        }
    }

    /// Whether an interactive pass waits for its share.
    pub(crate) fn interactive_waiting(&self) -> bool {
        self.lock().waiting.first().is_some_and(|(p, _)| *p == Priority::Interactive)
    }
}

fn cpu_gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Batches in flight on one CUDA device, all models together: two, so the device always has
/// the next batch queued while the CPU reads the last one back, and a query of one model waits
/// for at most two batches of another (see [`cuda_gate`]).
pub(crate) const CUDA_PASSES_IN_FLIGHT: usize = 2;

/// The gate of CUDA device `index`: each launched batch holds one of
/// [`CUDA_PASSES_IN_FLIGHT`] places from launch until it is read back, granted interactive
/// first, then in arrival order across models, exactly as the CPU gate grants threads.
pub(crate) fn cuda_gate(index: usize) -> &'static Gate {
    static GATES: Mutex<Vec<(usize, &'static Gate)>> = Mutex::new(Vec::new());
    let mut gates = GATES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, g)) = gates.iter().find(|(i, _)| *i == index) {
        return g;
    }
    // One per device for the life of the process.
    let g: &'static Gate = Box::leak(Box::new(Gate::new(CUDA_PASSES_IN_FLIGHT)));
    gates.push((index, g));
    g
}

/// Sets how many threads CPU forward passes may use at once, all models of the process
/// together (default: the machine's available parallelism). A pass whose worker uses more
/// threads than the budget runs alone. Passes already running keep their share.
pub fn set_cpu_thread_budget(threads: usize) {
    cpu_gate().lock().budget = threads.max(1);
    cpu_gate().turn.notify_all();
}

/// The CPU compute budget and its use so far.
pub fn cpu_compute_stats() -> CpuComputeStats {
    let s = cpu_gate().lock();
    CpuComputeStats { budget: s.budget, in_use: s.in_use, peak: s.peak, passes: s.passes, waited: s.waited }
}

/// A pass's share of a gate's budget, returned on drop.
#[must_use = "the share is returned as soon as the permit is dropped"]
pub(crate) struct Permit {
    gate: &'static Gate,
    units: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.lock().in_use -= self.units;
        self.gate.turn.notify_all();
    }
}

/// Waits for `threads` of the CPU budget (all of it if more) for a pass of `priority`.
pub(crate) fn acquire(priority: Priority, threads: usize) -> Permit {
    cpu_gate().acquire(priority, threads)
}

/// Whether an interactive pass waits for its share (a bulk pass between two layers then gives
/// its share back and queues for it again, see `nn::preempt`).
pub(crate) fn interactive_waiting() -> bool {
    cpu_gate().interactive_waiting()
}

/// Milliseconds from the process's first note to the last interactive arrival that met bulk
/// work, plus one (0: none yet).
static LAST_INTERACTIVE: AtomicU64 = AtomicU64::new(0);
/// Bulk requests submitted and not yet answered (or dropped), all models together.
static BULK_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts a bulk request while it is in flight (dropped with the caller's future).
#[must_use = "the request counts as in flight only while this is held"]
pub(crate) struct BulkInFlight(());

impl BulkInFlight {
    pub(crate) fn new() -> BulkInFlight {
        BULK_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        BulkInFlight(())
    }
}

impl Drop for BulkInFlight {
    fn drop(&mut self) {
        BULK_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An interactive request arrived (for any model). Noted only while bulk work is in flight:
/// without it there is nothing to cut short, and an idle server batches every request the same
/// way whatever came before (so results stay reproducible to the bit).
pub(crate) fn note_interactive() {
    if BULK_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        return;
    }
    let ms = epoch().elapsed().as_millis() as u64 + 1;
    LAST_INTERACTIVE.fetch_max(ms, Ordering::Relaxed);
}

/// Whether an interactive request arrived within `window`.
pub(crate) fn interactive_within(window: Duration) -> bool {
    let last = LAST_INTERACTIVE.load(Ordering::Relaxed);
    last > 0 && (epoch().elapsed().as_millis() as u64 + 1).saturating_sub(last) <= window.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{Bulk, Interactive};

    /// Grants whoever is next while units are free; returns the places granted, in order.
    fn drain(s: &mut State, places: &[(Priority, u64)]) -> Vec<u64> {
        let mut granted = Vec::new();
        loop {
            let Some(next) = places.iter().copied().find(|p| s.grant(*p, 1, true).is_some()) else { break };
            granted.push(next.1);
            s.in_use -= 1; // the pass finishes at once
        }
        granted
    }

    #[test]
    fn interactive_passes_go_first_then_arrival_order_across_models() {
        let mut s = State::new(1);
        // Model A's bulk passes queue first, then model B's query, then A's and B's bulk.
        let places = [s.enter(Bulk), s.enter(Bulk), s.enter(Interactive), s.enter(Bulk), s.enter(Interactive)];
        assert_eq!(drain(&mut s, &places), vec![2, 4, 0, 1, 3]);
        assert_eq!((s.passes, s.waited, s.in_use), (5, 5, 0));
    }

    #[test]
    fn a_waiting_bulk_pass_goes_after_a_run_of_interactive_ones() {
        let mut s = State::new(1);
        let mut places = vec![s.enter(Bulk)];
        places.extend((0..INTERACTIVE_RUN + 2).map(|_| s.enter(Interactive)));
        let order = drain(&mut s, &places);
        // INTERACTIVE_RUN queries, then the bulk pass, then the rest.
        let mut want: Vec<u64> = (1..=INTERACTIVE_RUN as u64).collect();
        want.push(0);
        want.extend(INTERACTIVE_RUN as u64 + 1..=INTERACTIVE_RUN as u64 + 2);
        assert_eq!(order, want);
    }

    #[test]
    fn a_pass_waits_until_its_units_fit_and_nobody_overtakes_the_first() {
        let mut s = State::new(2);
        let a = s.enter(Bulk);
        assert_eq!(s.grant(a, 1, false), Some(1));
        let b = s.enter(Bulk);
        let q = s.enter(Interactive);
        // The query is first; it fits beside the running pass.
        assert_eq!(s.grant(b, 1, false), None);
        assert_eq!(s.grant(q, 1, false), Some(1));
        assert_eq!((s.in_use, s.peak), (2, 2));
        // Full: the bulk pass waits for a unit back.
        assert_eq!(s.grant(b, 1, true), None);
        s.in_use -= 1;
        assert_eq!(s.grant(b, 1, true), Some(1));
        // A pass wanting more than the budget gets all of it, alone.
        s.in_use = 0;
        let big = s.enter(Bulk);
        assert_eq!(s.grant(big, 8, false), Some(2));
    }

    #[test]
    fn a_refused_try_keeps_no_place_in_line() {
        let mut s = State::new(1);
        let held = s.enter(Bulk);
        assert_eq!(s.grant(held, 1, false), Some(1));
        let tried = s.enter(Bulk);
        assert_eq!(s.grant(tried, 1, false), None);
        s.leave(tried);
        assert!(s.waiting.is_empty());
        assert_eq!(s.first(), None);
    }

    #[test]
    fn each_cuda_device_has_its_own_gate_of_two_passes_in_flight() {
        let (g0, g1) = (cuda_gate(7), cuda_gate(8));
        assert!(std::ptr::eq(g0, cuda_gate(7)));
        assert!(!std::ptr::eq(g0, g1));
        let a = g0.try_acquire(Bulk, 1).expect("a free place");
        let b = g0.try_acquire(Bulk, 1).expect("a second free place");
        assert!(g0.try_acquire(Interactive, 1).is_none(), "two passes in flight at most");
        assert!(g1.try_acquire(Interactive, 1).is_some(), "another device is not held");
        drop(a);
        let c = g0.try_acquire(Interactive, 1).expect("a place came back");
        drop((b, c));
        assert_eq!(g0.lock().in_use, 0);
    }
}
