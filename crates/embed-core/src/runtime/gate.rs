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
    /// The waiter to grant next.
    fn first(&self) -> Option<(Priority, u64)> {
        let bulk_waits = self.waiting.iter().any(|(p, _)| *p == Priority::Bulk);
        if bulk_waits && self.interactive_run >= INTERACTIVE_RUN {
            self.waiting.iter().min_by_key(|(_, t)| *t).copied()
        } else {
            self.waiting.first().copied()
        }
    }
}

struct Gate {
    state: Mutex<State>,
    turn: Condvar,
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let budget = std::thread::available_parallelism().map_or(1, |n| n.get());
        Gate {
            state: Mutex::new(State {
                budget,
                in_use: 0,
                peak: 0,
                passes: 0,
                waited: 0,
                next_ticket: 0,
                waiting: BTreeSet::new(),
                interactive_run: 0,
            }),
            turn: Condvar::new(),
        }
    })
}

fn lock() -> MutexGuard<'static, State> {
    // Only counters change under the lock; a panic cannot leave them half-written.
    gate().state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets how many threads CPU forward passes may use at once, all models of the process
/// together (default: the machine's available parallelism). A pass whose worker uses more
/// threads than the budget runs alone. Passes already running keep their share.
pub fn set_cpu_thread_budget(threads: usize) {
    lock().budget = threads.max(1);
    gate().turn.notify_all();
}

/// The CPU compute budget and its use so far.
pub fn cpu_compute_stats() -> CpuComputeStats {
    let s = lock();
    CpuComputeStats { budget: s.budget, in_use: s.in_use, peak: s.peak, passes: s.passes, waited: s.waited }
}

/// A CPU forward pass's share of the budget, returned on drop.
#[must_use = "the share is returned as soon as the permit is dropped"]
pub(crate) struct Permit {
    threads: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock().in_use -= self.threads;
        gate().turn.notify_all();
    }
}

/// Waits for `threads` of the budget (all of it if more) for a pass of `priority`.
pub(crate) fn acquire(priority: Priority, threads: usize) -> Permit {
    let g = gate();
    let mut s = lock();
    let ticket = s.next_ticket;
    s.next_ticket += 1;
    s.waiting.insert((priority, ticket));
    let mut waited = false;
    loop {
        let need = threads.clamp(1, s.budget);
        if s.first() == Some((priority, ticket)) && s.in_use + need <= s.budget {
            s.waiting.remove(&(priority, ticket));
            let bulk_waits = s.waiting.iter().any(|(p, _)| *p == Priority::Bulk);
            s.interactive_run = if priority == Priority::Interactive && bulk_waits { s.interactive_run + 1 } else { 0 };
            s.in_use += need;
            s.peak = s.peak.max(s.in_use);
            s.passes += 1;
            s.waited += u64::from(waited);
            drop(s);
            // The next in line may fit beside this pass.
            g.turn.notify_all();
            return Permit { threads: need };
        }
        waited = true;
        s = g.turn.wait(s).unwrap_or_else(|p| p.into_inner());
    }
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
