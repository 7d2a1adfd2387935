//! The pool: a map of entries behind one short-held lock, plus tasks that load and release.
//!
//! One `std::sync::Mutex` guards the whole map. It is only ever held for bookkeeping (never
//! across an `.await`, a load or a cleanup), and a single lock keeps the capacity invariants
//! (`loaded <= max_models`, memory budget) atomic, which a sharded map could not without a
//! second lock.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use embed_core::memory::{accelerator_available, cuda_memory, live_weight_bytes};
use embed_core::{CleanupReport, DeviceSpec, EmbeddingService, ModelSource, ModelSpec, ResolvedDevice};
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lease::Lease;
use crate::{
    DenseLoader, EvictionCause, EvictionCounts, Limit, ModelLoader, ModelRegistry, ModelSettings, ModelState,
    ModelStatus, PoolConfig, PoolError, PoolStats, PoolStatus,
};

/// What [`Pool::unload`] does when the model is leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnloadMode {
    /// Stop new leases at once, wait for the current ones to end, then release the model.
    /// (Dropping the `unload` future before that puts the model back in service.)
    WaitForLeases,
    /// Fail with [`PoolError::Leased`] if the model has leases (or callers waiting for its load).
    FailIfLeased,
}

/// What [`Pool::close`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// Models released by `close` itself.
    pub released: usize,
    /// Leases still held when the close timeout passed; their models were released anyway
    /// (those leases now see a closed service).
    pub forced_leases: usize,
    /// Models still in the pool when `close` gave up waiting (loads or releases that did not
    /// finish within twice the close timeout). 0 when everything was released.
    pub models_left: usize,
}

/// A loaded model, shared by its entry and its leases.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) service: Arc<dyn EmbeddingService>,
    weight_bytes: u64,
    device: Option<ResolvedDevice>,
}

impl Slot {
    fn cuda_index(&self) -> Option<usize> {
        match self.device {
            Some(ResolvedDevice::Cuda(i)) => Some(i),
            _ => None,
        }
    }
}

/// Why a load did not produce a model; shared by every caller waiting for it.
enum LoadFailure {
    Error(Arc<embed_core::Error>),
    Timeout(Duration),
    Panicked(String),
    Closed,
}

impl LoadFailure {
    fn to_error(&self, name: &str) -> PoolError {
        let name = name.to_string();
        match self {
            LoadFailure::Error(e) => PoolError::Load { name, source: e.clone() },
            LoadFailure::Timeout(timeout) => PoolError::LoadTimeout { name, timeout: *timeout },
            LoadFailure::Panicked(message) => PoolError::LoaderPanicked { name, message: message.clone() },
            LoadFailure::Closed => PoolError::Closed { name },
        }
    }
}

/// The single-flight rendezvous of one load. `outcome` is set once, under the pool lock.
#[derive(Default)]
struct LoadCell {
    outcome: OnceLock<Result<Arc<Slot>, LoadFailure>>,
    done: Notify,
}

enum Phase {
    Loading(Arc<LoadCell>),
    Ready(Arc<Slot>),
    /// No new leases. `retiring` once its cleanup task runs; before that it waits for leases
    /// to end (`unload(WaitForLeases)`).
    Draining {
        slot: Arc<Slot>,
        retiring: bool,
    },
}

struct Entry {
    /// Distinguishes this entry from a later one of the same name (leases carry it).
    id: u64,
    phase: Phase,
    /// Leases held; while loading, callers waiting for the load (each becomes a lease).
    leases: usize,
    /// LRU clock value of the last lease or return.
    tick: u64,
    last_used: Instant,
    pinned: bool,
    ttl: Option<Duration>,
    /// Weight bytes expected while loading.
    est_bytes: u64,
    /// CUDA device the model will use, while loading.
    target_cuda: Option<usize>,
}

impl Entry {
    fn bytes(&self) -> u64 {
        match &self.phase {
            Phase::Loading(_) => self.est_bytes,
            Phase::Ready(s) | Phase::Draining { slot: s, .. } => s.weight_bytes,
        }
    }

    fn cuda_index(&self) -> Option<usize> {
        match &self.phase {
            Phase::Loading(_) => self.target_cuda,
            Phase::Ready(s) | Phase::Draining { slot: s, .. } => s.cuda_index(),
        }
    }

    fn evictable(&self) -> bool {
        matches!(self.phase, Phase::Ready(_)) && self.leases == 0 && !self.pinned
    }

    fn retiring(&self) -> bool {
        matches!(self.phase, Phase::Draining { retiring: true, .. })
    }

    fn state(&self) -> ModelState {
        match self.phase {
            Phase::Loading(_) => ModelState::Loading,
            Phase::Ready(_) => ModelState::Ready,
            Phase::Draining { .. } => ModelState::Draining,
        }
    }

    /// Marks the entry as leaving and returns the job that releases it.
    fn retire(&mut self, name: &str, cause: Option<EvictionCause>) -> Retire {
        let slot = match &self.phase {
            Phase::Ready(s) | Phase::Draining { slot: s, .. } => s.clone(),
            Phase::Loading(_) => unreachable!("a loading entry is never retired"),
        };
        self.phase = Phase::Draining { slot: slot.clone(), retiring: true };
        Retire { name: name.to_string(), id: self.id, slot, cause }
    }
}

/// A model to release: cleanup runs on a task, then the entry is removed.
struct Retire {
    name: String,
    id: u64,
    slot: Arc<Slot>,
    cause: Option<EvictionCause>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Weight bytes of each model the last time it loaded, for the memory budget.
    known_bytes: HashMap<String, u64>,
    closed: bool,
    next_id: u64,
    clock: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    evictions: [AtomicU64; 4],
    capacity_waits: AtomicU64,
    capacity_wait_nanos: AtomicU64,
    exhausted: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn cause_index(cause: EvictionCause) -> usize {
    match cause {
        EvictionCause::Capacity => 0,
        EvictionCause::Memory => 1,
        EvictionCause::Ttl => 2,
        EvictionCause::Explicit => 3,
    }
}

/// Records the time a `get` spent waiting for capacity, on every exit path.
struct WaitClock<'a> {
    counters: &'a Counters,
    since: Option<Instant>,
}

impl Drop for WaitClock<'_> {
    fn drop(&mut self) {
        if let Some(since) = self.since {
            bump(&self.counters.capacity_waits);
            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counters.capacity_wait_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }
}

/// A caller counted as a waiter of a load; if it goes away before turning into a [`Lease`],
/// the count is given back (cancellation safety).
struct PendingLease {
    shared: Arc<Shared>,
    name: String,
    id: u64,
    armed: bool,
}

impl PendingLease {
    fn disarm(mut self) -> u64 {
        self.armed = false;
        self.id
    }
}

impl Drop for PendingLease {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release(&self.name, self.id);
        }
    }
}

/// Puts a model back in service if an `unload(WaitForLeases)` is dropped before releasing it.
struct DrainGuard {
    shared: Arc<Shared>,
    name: String,
    id: u64,
    armed: bool,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut st = self.shared.lock();
            if let Some(e) = st.entries.get_mut(&self.name).filter(|e| e.id == self.id) {
                if let Phase::Draining { slot, retiring: false } = &e.phase {
                    e.phase = Phase::Ready(slot.clone());
                }
            }
        }
        self.shared.changed.notify_waiters();
    }
}

/// A model the caller asked for, resolved against the registry.
struct Wanted {
    name: String,
    spec: ModelSpec,
    pinned: bool,
    ttl: Option<Duration>,
    /// Expected weight bytes before the first load (only computed under a memory budget).
    est_bytes: u64,
    /// CUDA device the model will use (only computed under a memory budget).
    cuda: Option<usize>,
}

enum WaitFor {
    /// Nothing can be evicted now.
    Capacity(Limit),
    /// Releases already under way will make room.
    Releasing(Limit),
    /// The model itself is being unloaded.
    Draining,
}

enum Step {
    Leased(Arc<Slot>, u64),
    /// A load of the model is in flight; the caller is counted as its waiter.
    Join(Arc<LoadCell>, u64),
    /// The caller inserted the loading entry and must start the load.
    Start(Arc<LoadCell>, u64),
    Evict(Vec<Retire>),
    Wait(WaitFor),
    Fail(PoolError),
}

pub(crate) struct Shared {
    config: PoolConfig,
    registry: RwLock<ModelRegistry>,
    loader: Arc<dyn ModelLoader>,
    state: Mutex<State>,
    /// Signalled when room may have appeared: a lease count fell to 0, an entry left, a load
    /// finished, the pool closed.
    changed: Notify,
    counters: Counters,
    maintenance_started: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns a lease (from [`Lease`]'s `Drop`): a map lookup and a counter, nothing else.
    pub(crate) fn release(&self, name: &str, id: u64) {
        let now = Instant::now();
        let idle = {
            let mut guard = self.lock();
            let st = &mut *guard;
            match st.entries.get_mut(name).filter(|e| e.id == id) {
                Some(e) => {
                    debug_assert!(e.leases > 0, "lease count of {name} underflows");
                    e.leases = e.leases.saturating_sub(1);
                    st.clock += 1;
                    e.tick = st.clock;
                    e.last_used = now;
                    e.leases == 0
                }
                None => false,
            }
        };
        if idle {
            self.changed.notify_waiters();
        }
    }

    /// Leases `name` if it is loaded and serving.
    fn hit(st: &mut State, name: &str, now: Instant) -> Option<(Arc<Slot>, u64)> {
        let e = st.entries.get_mut(name)?;
        let Phase::Ready(slot) = &e.phase else { return None };
        let slot = slot.clone();
        if !slot.service.is_ready() {
            // Cleaned up behind the pool's back (e.g. `cleanup()` called through a lease) or its
            // worker died: forget it, so the caller loads a fresh one.
            tracing::warn!(model = %name, state = %slot.service.state(), "pooled model is no longer ready; reloading it");
            st.entries.remove(name);
            slot.service.begin_cleanup();
            return None;
        }
        e.leases += 1;
        st.clock += 1;
        e.tick = st.clock;
        e.last_used = now;
        Some((slot, e.id))
    }

    fn resolve(&self, name: &str) -> Result<Wanted, PoolError> {
        let registered = self.registry.read().unwrap_or_else(PoisonError::into_inner).get_shared(name);
        let (spec, settings) = match registered {
            Some(m) => (m.spec.clone(), m.settings.clone()),
            None if self.config.allow_arbitrary_sources => {
                ModelSource::parse(name)
                    .map_err(|source| PoolError::InvalidSource { name: name.to_string(), source })?;
                (ModelSpec::new(name).with_options(self.config.default_options.clone()), ModelSettings::default())
            }
            None => return Err(PoolError::UnknownModel { name: name.to_string() }),
        };
        let budgeted = self.config.memory_budget.is_some();
        let est_bytes = match settings.weight_bytes_hint {
            Some(b) => b,
            None if budgeted => safetensors_size(&spec.source),
            None => 0,
        };
        let cuda = match spec.options.device {
            _ if !budgeted => None,
            DeviceSpec::Cuda(i) => Some(i),
            DeviceSpec::Auto => accelerator_available().then_some(0),
            _ => None,
        };
        Ok(Wanted {
            name: name.to_string(),
            spec,
            pinned: settings.pinned,
            // A pinned model never expires.
            ttl: if settings.pinned { None } else { settings.ttl.or(self.config.default_ttl) },
            est_bytes,
            cuda,
        })
    }

    /// Decides the next step of a `get`, under the lock.
    fn plan(&self, st: &mut State, w: &Wanted, cuda_free: Option<u64>, now: Instant) -> Step {
        if st.closed {
            return Step::Fail(PoolError::Closed { name: w.name.clone() });
        }
        if let Some((slot, id)) = Self::hit(st, &w.name, now) {
            return Step::Leased(slot, id);
        }
        if let Some(e) = st.entries.get_mut(&w.name) {
            match &e.phase {
                Phase::Loading(cell) => {
                    e.leases += 1;
                    return Step::Join(cell.clone(), e.id);
                }
                Phase::Draining { .. } => return Step::Wait(WaitFor::Draining),
                Phase::Ready(_) => unreachable!("hit() leases or removes ready entries"),
            }
        }

        let budget = self.config.memory_budget;
        let est = match budget {
            Some(_) => st.known_bytes.get(&w.name).copied().unwrap_or(w.est_bytes),
            None => 0,
        };
        if let Some(budget) = budget.filter(|&b| est > b) {
            return Step::Fail(PoolError::ModelTooLarge { name: w.name.clone(), bytes: est, budget });
        }
        let max = self.config.max_models.max(1);
        let used: u64 = st.entries.values().map(Entry::bytes).sum();
        let mut need_slots = (st.entries.len() + 1).saturating_sub(max);
        let mut need_bytes = budget.map_or(0, |b| (used + est).saturating_sub(b));
        let mut need_cuda = match (budget, cuda_free) {
            (Some(_), Some(free)) => est.saturating_sub(free),
            _ => 0,
        };
        let limit_now = |slots: usize, bytes: u64| {
            if slots > 0 {
                Limit::MaxModels(max)
            } else if bytes > 0 {
                Limit::MemoryBudget(budget.unwrap_or(0))
            } else {
                Limit::CudaMemory { device: w.cuda.unwrap_or(0), free: cuda_free.unwrap_or(0) }
            }
        };
        if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
            st.next_id += 1;
            st.clock += 1;
            let (id, tick) = (st.next_id, st.clock);
            let cell = Arc::new(LoadCell::default());
            st.entries.insert(
                w.name.clone(),
                Entry {
                    id,
                    phase: Phase::Loading(cell.clone()),
                    leases: 1,
                    tick,
                    last_used: now,
                    pinned: w.pinned,
                    ttl: w.ttl,
                    est_bytes: est,
                    target_cuda: w.cuda,
                },
            );
            return Step::Start(cell, id);
        }

        // Releases already under way count toward what is needed.
        let limit = limit_now(need_slots, need_bytes);
        for e in st.entries.values().filter(|e| e.retiring()) {
            need_slots = need_slots.saturating_sub(1);
            need_bytes = need_bytes.saturating_sub(e.bytes());
            if w.cuda.is_some() && e.cuda_index() == w.cuda {
                need_cuda = need_cuda.saturating_sub(e.bytes());
            }
        }
        if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
            return Step::Wait(WaitFor::Releasing(limit));
        }

        // Least recently used idle models first; take only those that help.
        let mut candidates: Vec<(&String, &Entry)> = st.entries.iter().filter(|(_, e)| e.evictable()).collect();
        candidates.sort_by_key(|(_, e)| e.tick);
        let mut victims = Vec::new();
        for (name, e) in candidates {
            if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
                break;
            }
            let bytes = e.bytes();
            let same_cuda = w.cuda.is_some() && e.cuda_index() == w.cuda;
            let helps = need_slots > 0 || (need_bytes > 0 && bytes > 0) || (need_cuda > 0 && same_cuda && bytes > 0);
            if !helps {
                continue;
            }
            let cause = if need_slots > 0 { EvictionCause::Capacity } else { EvictionCause::Memory };
            need_slots = need_slots.saturating_sub(1);
            need_bytes = need_bytes.saturating_sub(bytes);
            if same_cuda {
                need_cuda = need_cuda.saturating_sub(bytes);
            }
            victims.push((name.clone(), cause));
        }
        if need_slots > 0 || need_bytes > 0 || need_cuda > 0 {
            // Evicting some now would not make room; wait for leases to end instead.
            return Step::Wait(WaitFor::Capacity(limit_now(need_slots, need_bytes)));
        }
        let retires = victims
            .into_iter()
            .map(|(name, cause)| {
                let e = st.entries.get_mut(&name).expect("victim is in the map");
                e.retire(&name, Some(cause))
            })
            .collect();
        Step::Evict(retires)
    }

    fn cuda_free(&self, w: &Wanted) -> Option<u64> {
        let device = w.cuda?;
        cuda_memory(device).ok().map(|m| m.device_free)
    }

    async fn acquire(self: &Arc<Self>, w: &Wanted) -> Result<Lease, PoolError> {
        self.ensure_maintenance();
        let started = Instant::now();
        let deadline = started + self.config.wait_timeout;
        let mut clock = WaitClock { counters: &self.counters, since: None };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cuda_free = self.cuda_free(w);
            let now = Instant::now();
            let step = {
                let mut st = self.lock();
                self.plan(&mut st, w, cuda_free, now)
            };
            match step {
                Step::Leased(slot, id) => {
                    bump(&self.counters.hits);
                    return Ok(Lease::new(self, slot, id));
                }
                Step::Start(cell, id) => {
                    // The guard exists before the next await, so a cancelled caller is uncounted.
                    let pending = PendingLease { shared: self.clone(), name: w.name.clone(), id, armed: true };
                    self.spawn_load(w.spec.clone(), cell.clone(), id);
                    bump(&self.counters.misses);
                    drop(clock);
                    return self.join(pending, cell).await;
                }
                Step::Join(cell, id) => {
                    let pending = PendingLease { shared: self.clone(), name: w.name.clone(), id, armed: true };
                    bump(&self.counters.misses);
                    drop(clock);
                    return self.join(pending, cell).await;
                }
                Step::Evict(retires) => {
                    let handles: Vec<_> = retires.into_iter().map(|r| self.spawn_retire(r)).collect();
                    for h in handles {
                        let _ = h.await;
                    }
                }
                Step::Wait(reason) => {
                    let waited = now.saturating_duration_since(started);
                    if now >= deadline {
                        return Err(match reason {
                            WaitFor::Capacity(limit) | WaitFor::Releasing(limit) => {
                                bump(&self.counters.exhausted);
                                PoolError::Exhausted { name: w.name.clone(), limit, waited }
                            }
                            WaitFor::Draining => PoolError::Unloading { name: w.name.clone(), waited },
                        });
                    }
                    if matches!(reason, WaitFor::Capacity(_)) {
                        clock.since.get_or_insert(now);
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                Step::Fail(e) => return Err(e),
            }
        }
    }

    async fn join(self: &Arc<Self>, pending: PendingLease, cell: Arc<LoadCell>) -> Result<Lease, PoolError> {
        loop {
            let done = cell.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if let Some(outcome) = cell.outcome.get() {
                let name = pending.name.clone();
                let id = pending.disarm();
                return match outcome {
                    Ok(slot) => Ok(Lease::new(self, slot.clone(), id)),
                    Err(failure) => Err(failure.to_error(&name)),
                };
            }
            done.await;
        }
    }

    fn spawn_load(self: &Arc<Self>, spec: ModelSpec, cell: Arc<LoadCell>, id: u64) {
        let weak = Arc::downgrade(self);
        let loader = self.loader.clone();
        let timeout = self.config.load_timeout;
        // A task of its own: the load finishes (and reaches every waiter) even if the caller
        // that started it goes away.
        tokio::spawn(async move {
            let name = spec.name.clone();
            let started = std::time::Instant::now();
            let load = AssertUnwindSafe(loader.load(&spec)).catch_unwind();
            let outcome = match timeout {
                Some(t) => tokio::time::timeout(t, load).await.map_err(|_| LoadFailure::Timeout(t)),
                None => Ok(load.await),
            };
            let result = match outcome {
                Ok(Ok(Ok(service))) => Ok(service),
                Ok(Ok(Err(e))) => Err(LoadFailure::Error(Arc::new(e))),
                Ok(Err(panic)) => Err(LoadFailure::Panicked(panic_message(panic.as_ref()))),
                Err(timeout) => Err(timeout),
            };
            match &result {
                Ok(_) => tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "pool loaded model"),
                Err(f) => tracing::warn!(model = %name, error = %f.to_error(&name), "pool failed to load model"),
            }
            match weak.upgrade() {
                Some(shared) => shared.finish_load(&name, id, &cell, result),
                None => {
                    if let Ok(service) = result {
                        service.begin_cleanup();
                    }
                }
            }
        });
    }

    fn finish_load(
        self: &Arc<Self>,
        name: &str,
        id: u64,
        cell: &LoadCell,
        result: Result<Arc<dyn EmbeddingService>, LoadFailure>,
    ) {
        let result = result.map(|service| {
            let info = service.info();
            Arc::new(Slot {
                name: name.to_string(),
                weight_bytes: info.as_ref().map_or(0, |i| i.weight_bytes),
                device: info.as_ref().map(|i| i.device),
                service,
            })
        });
        let mut retires = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            // Only this task changes or removes a loading entry, so it is still there.
            let Some(entry) = st.entries.get_mut(name).filter(|e| e.id == id) else {
                if let Ok(slot) = &result {
                    slot.service.begin_cleanup();
                }
                let _ = cell.outcome.set(Err(LoadFailure::Closed));
                drop(guard);
                cell.done.notify_waiters();
                return;
            };
            match result {
                Ok(slot) => {
                    bump(&self.counters.loads);
                    st.known_bytes.insert(name.to_string(), slot.weight_bytes);
                    if st.closed {
                        // Closed while loading: release it; waiters get `Closed`. A fresh id so
                        // their pending leases do not touch the releasing entry.
                        st.next_id += 1;
                        entry.id = st.next_id;
                        entry.leases = 0;
                        entry.phase = Phase::Draining { slot: slot.clone(), retiring: true };
                        retires.push(Retire { name: name.to_string(), id: entry.id, slot, cause: None });
                        let _ = cell.outcome.set(Err(LoadFailure::Closed));
                    } else {
                        // Waiters become leases here, atomically with publishing the model,
                        // so it cannot be evicted before they pick it up.
                        entry.phase = Phase::Ready(slot.clone());
                        let _ = cell.outcome.set(Ok(slot));
                        retires.extend(self.trim_to_budget(st));
                    }
                }
                Err(failure) => {
                    st.entries.remove(name);
                    bump(&self.counters.load_failures);
                    let _ = cell.outcome.set(Err(failure));
                }
            }
        }
        cell.done.notify_waiters();
        self.changed.notify_waiters();
        for r in retires {
            drop(self.spawn_retire(r));
        }
    }

    /// After a model turned out larger than its estimate: evict idle models until the pool is
    /// within its budget again.
    fn trim_to_budget(&self, st: &mut State) -> Vec<Retire> {
        let Some(budget) = self.config.memory_budget else { return Vec::new() };
        let mut used: u64 = st.entries.values().filter(|e| !e.retiring()).map(Entry::bytes).sum();
        if used <= budget {
            return Vec::new();
        }
        let mut candidates: Vec<(String, u64, u64)> = st
            .entries
            .iter()
            .filter(|(_, e)| e.evictable() && e.bytes() > 0)
            .map(|(n, e)| (n.clone(), e.tick, e.bytes()))
            .collect();
        candidates.sort_by_key(|c| c.1);
        let mut retires = Vec::new();
        for (name, _, bytes) in candidates {
            if used <= budget {
                break;
            }
            used -= bytes;
            let e = st.entries.get_mut(&name).expect("candidate is in the map");
            retires.push(e.retire(&name, Some(EvictionCause::Memory)));
        }
        retires
    }

    /// Releases a model on a task of its own (so a cancelled caller cannot strand the entry),
    /// then removes its entry. The handle yields the cleanup report.
    fn spawn_retire(self: &Arc<Self>, r: Retire) -> JoinHandle<Option<CleanupReport>> {
        if let Some(cause) = r.cause {
            bump(&self.counters.evictions[cause_index(cause)]);
            tracing::info!(model = %r.name, %cause, weight_bytes = r.slot.weight_bytes, "pool releasing model");
        }
        let weak = Arc::downgrade(self);
        let release_timeout = self.config.memory_budget.map(|_| self.config.memory_release_timeout);
        tokio::spawn(async move {
            let mark = release_timeout.map(|_| MemoryMark::take(&r.slot));
            let report = match r.slot.service.cleanup().await {
                Ok(report) => Some(report),
                Err(e) => {
                    tracing::warn!(model = %r.name, error = %e, "cleanup of a pooled model failed; releasing it without waiting");
                    r.slot.service.begin_cleanup();
                    None
                }
            };
            if let (Some(timeout), Some(mark)) = (release_timeout, mark) {
                mark.wait_released(&r.name, r.slot.weight_bytes, timeout).await;
            }
            if let Some(shared) = weak.upgrade() {
                let removed = {
                    let mut st = shared.lock();
                    let ours = st.entries.get(&r.name).is_some_and(|e| e.id == r.id);
                    if ours {
                        st.entries.remove(&r.name);
                    }
                    ours
                };
                if removed {
                    shared.changed.notify_waiters();
                }
            }
            report
        })
    }

    async fn evict_expired_at(self: &Arc<Self>, now: Instant) -> Vec<String> {
        let retires: Vec<Retire> = {
            let mut st = self.lock();
            if st.closed {
                return Vec::new();
            }
            st.entries
                .iter_mut()
                .filter(|(_, e)| {
                    e.evictable() && e.ttl.is_some_and(|ttl| now.saturating_duration_since(e.last_used) >= ttl)
                })
                .map(|(name, e)| e.retire(name, Some(EvictionCause::Ttl)))
                .collect()
        };
        let names = retires.iter().map(|r| r.name.clone()).collect();
        let handles: Vec<_> = retires.into_iter().map(|r| self.spawn_retire(r)).collect();
        for h in handles {
            let _ = h.await;
        }
        names
    }

    /// Starts the TTL task once some TTL is configured and a runtime is at hand.
    fn ensure_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.load(Ordering::Relaxed) {
            return;
        }
        let Some(interval) = self.config.maintenance_interval else { return };
        let needed = self.config.default_ttl.is_some()
            || self.registry.read().unwrap_or_else(PoisonError::into_inner).any_ttl();
        if !needed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.maintenance_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = interval.max(Duration::from_millis(1));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                // Holds the pool only for one round, so dropping the pool ends the task.
                let Some(shared) = weak.upgrade() else { break };
                if shared.lock().closed {
                    break;
                }
                let expired = shared.evict_expired_at(Instant::now()).await;
                if !expired.is_empty() {
                    tracing::debug!(models = ?expired, "idle models expired");
                }
            }
        });
    }
}

impl Drop for Shared {
    /// The last handle is gone: start releasing every model without blocking. Leases that
    /// outlive the pool find their service closed. Loads still in flight release their model
    /// when they finish.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (name, e) in st.entries.drain() {
            if let Phase::Ready(s) | Phase::Draining { slot: s, .. } = &e.phase {
                if s.service.begin_cleanup() {
                    tracing::debug!(model = %name, "pool dropped; model release started");
                }
            }
        }
    }
}

/// Memory figures before a release, to see it take effect.
struct MemoryMark {
    live: u64,
    cuda: Option<(usize, u64)>,
}

impl MemoryMark {
    fn take(slot: &Slot) -> Self {
        MemoryMark {
            live: live_weight_bytes(),
            cuda: slot.cuda_index().and_then(|i| cuda_memory(i).ok().map(|m| (i, m.allocated))),
        }
    }

    /// Polls until the process-wide figures dropped by `bytes` (bounded by `timeout`).
    async fn wait_released(&self, name: &str, bytes: u64, timeout: Duration) {
        // A model embed-core does not track (a custom loader's) leaves nothing to wait for.
        if bytes == 0 || self.live < bytes {
            return;
        }
        let live_target = self.live - bytes;
        let cuda_target = self.cuda.map(|(i, allocated)| (i, allocated.saturating_sub(bytes)));
        let deadline = Instant::now() + timeout;
        loop {
            let live_ok = live_weight_bytes() <= live_target;
            let cuda_ok = cuda_target.is_none_or(|(i, t)| cuda_memory(i).map_or(true, |m| m.allocated <= t));
            if live_ok && cuda_ok {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(model = %name, ?timeout, "released memory did not show up in time; going on anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn safetensors_size(source: &str) -> u64 {
    match ModelSource::parse(source) {
        Ok(ModelSource::Local(dir)) => std::fs::metadata(dir.join("model.safetensors")).map_or(0, |m| m.len()),
        _ => 0,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// An LRU pool of loaded embedding models. Cheap to clone (a handle); the models are released
/// when the last handle is dropped (without blocking) or by [`Pool::close`] (waiting).
///
/// Requires a tokio runtime: loads and releases run on tasks of their own.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status();
        f.debug_struct("Pool")
            .field("models", &status.models.iter().map(|m| (&m.name, m.state, m.leases)).collect::<Vec<_>>())
            .field("max_models", &status.max_models)
            .field("closed", &status.closed)
            .finish()
    }
}

impl Pool {
    /// A pool of [`embed_core::DenseEmbeddingService`] models.
    pub fn new(config: PoolConfig, registry: ModelRegistry) -> Self {
        Self::with_loader(config, registry, DenseLoader)
    }

    /// A pool whose models come from `loader`.
    pub fn with_loader(config: PoolConfig, registry: ModelRegistry, loader: impl ModelLoader) -> Self {
        let shared = Arc::new(Shared {
            config,
            registry: RwLock::new(registry),
            loader: Arc::new(loader),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            counters: Counters::default(),
            maintenance_started: AtomicBool::new(false),
        });
        shared.ensure_maintenance();
        Pool { shared }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Adds (or replaces) a registry entry. A loaded model keeps its old spec until it is
    /// next loaded.
    pub fn register(&self, name: impl Into<String>, spec: ModelSpec, settings: ModelSettings) {
        self.shared.registry.write().unwrap_or_else(PoisonError::into_inner).insert(name, spec, settings);
        self.shared.ensure_maintenance();
    }

    /// A copy of the registry.
    pub fn registry(&self) -> ModelRegistry {
        self.shared.registry.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A lease on `name`, loading it first if needed. The model stays loaded while the lease is
    /// held. Concurrent callers for one unloaded model share a single load. When the pool is
    /// full, the least recently used idle model is evicted; if every model is leased, this
    /// waits up to [`PoolConfig::wait_timeout`] for a lease to end.
    ///
    /// Cancellation safe: dropping the future never leaks a lease or a slot.
    pub async fn get(&self, name: &str) -> Result<Lease, PoolError> {
        let shared = &self.shared;
        // Fast path: a loaded model needs neither the registry nor a deadline.
        let hit = {
            let mut st = shared.lock();
            if st.closed {
                None
            } else {
                Shared::hit(&mut st, name, Instant::now())
            }
        };
        if let Some((slot, id)) = hit {
            bump(&shared.counters.hits);
            return Ok(Lease::new(shared, slot, id));
        }
        let wanted = shared.resolve(name)?;
        shared.acquire(&wanted).await
    }

    /// Runs `f` with the model `name`, holding a lease until the future it returns completes.
    ///
    /// The `Arc` handed to `f` is for this call only; kept beyond it, it may find the model
    /// released.
    pub async fn with<F, Fut, T>(&self, name: &str, f: F) -> Result<T, PoolError>
    where
        F: FnOnce(Arc<dyn EmbeddingService>) -> Fut,
        Fut: Future<Output = T>,
    {
        let lease = self.get(name).await?;
        let out = f(Lease::service(&lease)).await;
        drop(lease);
        Ok(out)
    }

    /// Loads `name` (if it is not loaded yet) without keeping a lease.
    pub async fn preload(&self, name: &str) -> Result<(), PoolError> {
        drop(self.get(name).await?);
        Ok(())
    }

    /// Releases `name` and waits until it is freed. Returns its cleanup report, or `None` when
    /// it was not loaded (or someone else released it meanwhile). A load in flight is waited
    /// for, then released.
    pub async fn unload(&self, name: &str, mode: UnloadMode) -> Result<Option<CleanupReport>, PoolError> {
        enum Action {
            Done,
            Fail(PoolError),
            Retire(Retire),
            Wait,
        }
        let shared = &self.shared;
        let mut drain: Option<DrainGuard> = None;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let action = {
                let mut st = shared.lock();
                match st.entries.get_mut(name) {
                    None => Action::Done,
                    Some(e) => {
                        let ours = drain.as_ref().is_some_and(|d| d.id == e.id);
                        let leased = || PoolError::Leased { name: name.to_string(), leases: e.leases };
                        match &e.phase {
                            Phase::Loading(_) if mode == UnloadMode::FailIfLeased && e.leases > 0 => {
                                Action::Fail(leased())
                            }
                            Phase::Loading(_) => Action::Wait,
                            Phase::Ready(_) if e.leases == 0 => {
                                Action::Retire(e.retire(name, Some(EvictionCause::Explicit)))
                            }
                            Phase::Ready(_) if mode == UnloadMode::FailIfLeased => Action::Fail(leased()),
                            Phase::Ready(slot) => {
                                e.phase = Phase::Draining { slot: slot.clone(), retiring: false };
                                drain = Some(DrainGuard {
                                    shared: shared.clone(),
                                    name: name.to_string(),
                                    id: e.id,
                                    armed: true,
                                });
                                Action::Wait
                            }
                            Phase::Draining { retiring: false, .. } if ours && e.leases == 0 => {
                                Action::Retire(e.retire(name, Some(EvictionCause::Explicit)))
                            }
                            // Leases still held, or another caller is releasing it.
                            Phase::Draining { .. } => Action::Wait,
                        }
                    }
                }
            };
            match action {
                Action::Done => {
                    if let Some(mut d) = drain.take() {
                        d.armed = false;
                    }
                    return Ok(None);
                }
                Action::Fail(e) => return Err(e),
                Action::Retire(r) => {
                    if let Some(mut d) = drain.take() {
                        d.armed = false;
                    }
                    return Ok(shared.spawn_retire(r).await.ok().flatten());
                }
                Action::Wait => notified.await,
            }
        }
    }

    /// Unloads every idle, unpinned model whose TTL has passed, and waits until they are
    /// freed. Returns their names. The background task calls this every
    /// [`PoolConfig::maintenance_interval`]; tests can call it directly (with tokio's paused
    /// clock, after `tokio::time::advance`).
    pub async fn evict_expired(&self) -> Vec<String> {
        self.shared.evict_expired_at(Instant::now()).await
    }

    /// [`Pool::evict_expired`] as if the time were `now`.
    pub async fn evict_expired_at(&self, now: Instant) -> Vec<String> {
        self.shared.evict_expired_at(now).await
    }

    /// Closes the pool: new `get`s fail with [`PoolError::Closed`] (callers waiting for room
    /// too), idle models are released at once, leased ones when their lease ends or, after
    /// [`PoolConfig::close_timeout`], anyway. Returns once every model is freed (or after
    /// twice the close timeout; see [`CloseReport::models_left`]). Idempotent.
    pub async fn close(&self) -> CloseReport {
        let shared = &self.shared;
        let started = Instant::now();
        let drain_deadline = started + shared.config.close_timeout;
        let hard_deadline = drain_deadline + shared.config.close_timeout;
        shared.lock().closed = true;
        shared.changed.notify_waiters();
        let mut report = CloseReport::default();
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let force = now >= drain_deadline;
            let (retires, left) = {
                let mut st = shared.lock();
                let mut retires = Vec::new();
                for (name, e) in st.entries.iter_mut() {
                    let releasable = matches!(e.phase, Phase::Ready(_) | Phase::Draining { retiring: false, .. });
                    if releasable && (e.leases == 0 || force) {
                        if e.leases > 0 {
                            tracing::warn!(model = %name, leases = e.leases, "close timeout passed; releasing a leased model");
                            report.forced_leases += e.leases;
                        }
                        retires.push(e.retire(name, Some(EvictionCause::Explicit)));
                    }
                }
                (retires, st.entries.len())
            };
            if left == 0 {
                break;
            }
            if !retires.is_empty() {
                report.released += retires.len();
                let handles: Vec<_> = retires.into_iter().map(|r| shared.spawn_retire(r)).collect();
                for h in handles {
                    let _ = h.await;
                }
                continue;
            }
            if now >= hard_deadline {
                tracing::warn!(models = left, "pool close gave up waiting for loads and releases");
                report.models_left = left;
                break;
            }
            let until = if force { hard_deadline } else { drain_deadline };
            let _ = tokio::time::timeout_at(until, notified).await;
        }
        report
    }

    /// True once [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The models in the pool, least recently used first.
    pub fn status(&self) -> PoolStatus {
        let st = self.shared.lock();
        let mut entries: Vec<(&String, &Entry)> = st.entries.iter().collect();
        entries.sort_by_key(|(_, e)| e.tick);
        let models: Vec<ModelStatus> = entries
            .into_iter()
            .map(|(name, e)| ModelStatus {
                name: name.clone(),
                state: e.state(),
                weight_bytes: e.bytes(),
                leases: e.leases,
                last_used: e.last_used,
                pinned: e.pinned,
                device: match &e.phase {
                    Phase::Ready(s) | Phase::Draining { slot: s, .. } => s.device,
                    Phase::Loading(_) => None,
                },
            })
            .collect();
        PoolStatus {
            weight_bytes: models.iter().map(|m| m.weight_bytes).sum(),
            leases: models.iter().map(|m| m.leases).sum(),
            models,
            max_models: self.shared.config.max_models.max(1),
            memory_budget: self.shared.config.memory_budget,
            closed: st.closed,
        }
    }

    /// Counters since the pool was created.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            loads: get(&c.loads),
            load_failures: get(&c.load_failures),
            evictions: EvictionCounts {
                capacity: get(&c.evictions[0]),
                memory: get(&c.evictions[1]),
                ttl: get(&c.evictions[2]),
                explicit: get(&c.evictions[3]),
            },
            capacity_waits: get(&c.capacity_waits),
            capacity_wait_time: Duration::from_nanos(get(&c.capacity_wait_nanos)),
            exhausted: get(&c.exhausted),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Pool logic against fake services: exact byte counts, panics, services that die.

    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use embed_core::{
        DType, EmbedOptions, Embeddings, ModelInfo, Pooling, ServiceState, TokenizedText,
    };

    use super::*;

    struct FakeService {
        info: ModelInfo,
        state: Mutex<ServiceState>,
    }

    #[async_trait]
    impl EmbeddingService for FakeService {
        async fn load(&self, _spec: ModelSpec) -> embed_core::Result<ModelInfo> {
            Err(embed_core::Error::AlreadyLoaded { state: self.state() })
        }
        async fn embed_texts(&self, _texts: &[String], _o: &EmbedOptions) -> embed_core::Result<Embeddings> {
            Ok(Embeddings::default())
        }
        async fn tokenize(&self, _texts: &[String], _o: &EmbedOptions) -> embed_core::Result<Vec<TokenizedText>> {
            Ok(Vec::new())
        }
        fn info(&self) -> Option<ModelInfo> {
            Some(self.info.clone())
        }
        fn state(&self) -> ServiceState {
            *self.state.lock().unwrap()
        }
        async fn cleanup(&self) -> embed_core::Result<CleanupReport> {
            self.begin_cleanup();
            Ok(CleanupReport { model: Some(self.info.name.clone()), ..Default::default() })
        }
        fn begin_cleanup(&self) -> bool {
            std::mem::replace(&mut *self.state.lock().unwrap(), ServiceState::Closed) == ServiceState::Ready
        }
    }

    /// Loads fake models whose weight bytes are `bytes[name]`; panics for `panic_on`.
    #[derive(Default)]
    struct FakeLoader {
        bytes: HashMap<String, u64>,
        panic_on: Option<String>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl ModelLoader for FakeLoader {
        async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert_ne!(self.panic_on.as_deref(), Some(spec.name.as_str()), "fake loader told to panic");
            let info = ModelInfo {
                name: spec.name.clone(),
                source: spec.source.clone(),
                dir: spec.source.clone().into(),
                architecture: "fake".into(),
                dimension: 4,
                max_seq_length: 8,
                pooling: Pooling::Mean,
                normalize: true,
                device: ResolvedDevice::Cpu,
                device_note: None,
                dtype: DType::F32,
                weight_bytes: self.bytes.get(&spec.name).copied().unwrap_or(1),
                num_layers: 1,
                vocab_size: 10,
                prompts: BTreeMap::new(),
                load_duration: Duration::ZERO,
                threads: 1,
            };
            Ok(Arc::new(FakeService { info, state: Mutex::new(ServiceState::Ready) }))
        }
    }

    fn registry(names: &[(&str, Option<u64>)]) -> ModelRegistry {
        names.iter().fold(ModelRegistry::new(), |r, (name, hint)| {
            let settings = match hint {
                Some(h) => ModelSettings::default().with_weight_bytes_hint(*h),
                None => ModelSettings::default(),
            };
            // Hub-style sources: nothing on disk to estimate from.
            r.with_settings(*name, ModelSpec::new(format!("fake/{name}")), settings)
        })
    }

    fn names(pool: &Pool) -> Vec<String> {
        pool.status().models.into_iter().map(|m| m.name).collect()
    }

    #[tokio::test]
    async fn a_model_larger_than_its_estimate_pushes_idle_ones_out() {
        let loader = Arc::new(FakeLoader {
            bytes: [("a".to_string(), 60), ("b".to_string(), 60)].into(),
            ..Default::default()
        });
        let config = PoolConfig::default().with_memory_budget(Some(100));
        let pool = Pool::with_loader(config, registry(&[("a", Some(10)), ("b", Some(10))]), loader.clone());
        pool.preload("a").await.unwrap();
        // b's estimate (10) fits next to a (60); its real size (60) does not: a goes.
        pool.preload("b").await.unwrap();
        tokio::task::yield_now().await;
        let p = pool.clone();
        for _ in 0..100 {
            if names(&p) == ["b"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(names(&pool), ["b"]);
        assert_eq!(pool.stats().evictions.memory, 1);
        // Now a's real size is known: b is evicted before a loads.
        pool.preload("a").await.unwrap();
        assert_eq!(names(&pool), ["a"]);
        assert_eq!(pool.stats().evictions.memory, 2);
        assert_eq!(pool.status().weight_bytes, 60);
    }

    #[tokio::test]
    async fn loader_panic_is_typed_and_leaves_no_entry() {
        let loader = FakeLoader { panic_on: Some("boom".into()), ..Default::default() };
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("boom", None), ("ok", None)]), loader);
        match pool.get("boom").await {
            Err(PoolError::LoaderPanicked { name, message }) => {
                assert_eq!(name, "boom");
                assert!(message.contains("fake loader told to panic"), "{message}");
            }
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
        assert!(pool.status().models.is_empty());
        assert_eq!(pool.stats().load_failures, 1);
        pool.preload("ok").await.unwrap();
    }

    #[tokio::test]
    async fn a_service_cleaned_up_behind_the_pools_back_is_reloaded() {
        let loader = Arc::new(FakeLoader::default());
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("a", None)]), loader.clone());
        let lease = pool.get("a").await.unwrap();
        lease.cleanup().await.unwrap();
        drop(lease);
        let lease = pool.get("a").await.unwrap();
        assert!(lease.is_ready());
        assert_eq!(loader.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_models_are_never_evicted_for_room() {
        let reg = registry(&[("b", None)]).with_settings(
            "a",
            ModelSpec::new("fake/a"),
            ModelSettings::default().with_pinned(true),
        );
        let config = PoolConfig::default().with_max_models(1).with_wait_timeout(Duration::from_secs(1));
        let pool = Pool::with_loader(config, reg, FakeLoader::default());
        pool.preload("a").await.unwrap();
        match pool.get("b").await {
            Err(PoolError::Exhausted { limit: Limit::MaxModels(1), .. }) => {}
            other => panic!("expected Exhausted, got {other:?}"),
        }
        assert_eq!(names(&pool), ["a"]);
        // Explicit unload still works.
        assert!(pool.unload("a", UnloadMode::FailIfLeased).await.unwrap().is_some());
        pool.preload("b").await.unwrap();
        assert_eq!(names(&pool), ["b"]);
    }

    #[tokio::test]
    async fn lease_derefs_to_the_service_and_reports_its_name() {
        let pool = Pool::with_loader(PoolConfig::default(), registry(&[("a", None)]), FakeLoader::default());
        let lease = pool.get("a").await.unwrap();
        assert_eq!(Lease::name(&lease), "a");
        assert_eq!(lease.dimension(), Some(4));
        assert!(format!("{lease:?}").contains("\"a\""));
        assert!(format!("{pool:?}").contains("\"a\""));
    }
}
