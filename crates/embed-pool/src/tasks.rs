//! The pool's async side: acquiring a model, loading and releasing on tasks of their own, the
//! TTL task, and the guards that keep every count right when a caller's future is dropped.
//!
//! One `std::sync::Mutex` guards the whole map ([`State`]). It is only ever held for
//! bookkeeping (never across an `.await`, a load or a cleanup), and a single lock keeps the
//! capacity invariants (`loaded <= max_models`, memory budget) atomic, which a sharded map
//! could not without a second lock. What to do is decided under it by [`crate::state`]; the
//! doing happens here, outside it; the warm tier's tasks are in `warm`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use embed_core::memory::accelerator_available;
use embed_core::{panic_message, CleanupReport, DeviceSpec, EmbeddingService, ModelSource, ModelSpec};
use futures::FutureExt;
use scopeguard::ScopeGuard;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::memory_release::MemoryMark;
use crate::state::{self, CloseStep, Published, Retire, Slot, Step, UnloadStep, WaitFor, Wanted, WarmPolicy};
use crate::history::History;
use crate::{
    DeviceMemory, EvictionCounts, ModelLoader, ModelRegistry, ModelSettings, PoolAction, PoolConfig, PoolError,
    PoolEvent, PoolStats,
};

mod warm;

pub(crate) type State = state::State<LoadCell>;

/// Why a load did not produce a model; shared by every caller waiting for it.
pub(crate) enum LoadFailure {
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
pub(crate) struct LoadCell {
    outcome: OnceLock<Result<Arc<Slot>, LoadFailure>>,
    done: Notify,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_failures: AtomicU64,
    // Evictions are rare (each releases a model), so a lock costs nothing here.
    evictions: Mutex<EvictionCounts>,
    capacity_waits: AtomicU64,
    capacity_wait_nanos: AtomicU64,
    exhausted: AtomicU64,
    offloads: AtomicU64,
    offload_failures: AtomicU64,
    restores: AtomicU64,
    restore_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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

/// A caller counted as a waiter of load `id` of a model: if it goes away before turning into
/// a lease, the count is given back (cancellation safety). Defused by `ScopeGuard::into_inner`.
type PendingLease = ScopeGuard<(Arc<Shared>, String, u64), fn((Arc<Shared>, String, u64))>;

fn pending_lease(shared: &Arc<Shared>, name: &str, id: u64) -> PendingLease {
    scopeguard::guard((shared.clone(), name.to_string(), id), |(shared, name, id)| shared.release(&name, id))
}

/// Puts a model back in service if an `unload(WaitForLeases)` is dropped before releasing it.
type DrainGuard = ScopeGuard<(Arc<Shared>, String, u64), fn((Arc<Shared>, String, u64))>;

fn drain_guard(shared: &Arc<Shared>, name: &str, id: u64) -> DrainGuard {
    scopeguard::guard((shared.clone(), name.to_string(), id), |(shared, name, id)| {
        shared.lock().undrain(&name, id);
        shared.changed.notify_waiters();
    })
}

/// Everything a pool handle shares: the config, the registry, the state behind the lock.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    registry: RwLock<ModelRegistry>,
    loader: Arc<dyn ModelLoader>,
    state: Mutex<State>,
    /// Signalled when room may have appeared: a lease count fell to 0, an entry left, a load
    /// finished, the pool closed.
    changed: Notify,
    counters: Counters,
    /// Recent loads and releases, for [`crate::Pool::history`].
    pub(crate) history: History,
    /// Where CUDA free memory is read.
    pub(crate) memory: Arc<dyn DeviceMemory>,
    maintenance_started: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: PoolConfig, registry: ModelRegistry, loader: Arc<dyn ModelLoader>, memory: Arc<dyn DeviceMemory>) -> Arc<Self> {
        let config_history_len = config.history_len;
        let mut state = State::default();
        state.warm = WarmPolicy { mode: config.warm.mode, host_budget: config.warm.host_budget.bytes() };
        let shared = Arc::new(Shared {
            config,
            registry: RwLock::new(registry),
            loader,
            memory,
            state: Mutex::new(state),
            changed: Notify::new(),
            counters: Counters::default(),
            history: History::new(config_history_len),
            maintenance_started: AtomicBool::new(false),
        });
        shared.ensure_maintenance();
        shared
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn registry(&self) -> std::sync::RwLockReadGuard<'_, ModelRegistry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(self: &Arc<Self>, name: String, spec: ModelSpec, settings: ModelSettings) {
        self.registry.write().unwrap_or_else(PoisonError::into_inner).insert(name, spec, settings);
        self.ensure_maintenance();
    }

    /// Returns a lease (from `Lease`'s `Drop`): a map lookup and a counter, nothing else.
    pub(crate) fn release(&self, name: &str, id: u64) {
        let now = Instant::now().into_std();
        let idle = self.lock().release(name, id, now);
        if idle {
            self.changed.notify_waiters();
        }
    }

    /// A lease's slot and entry id for `name`, loading it first if needed (the facade wraps
    /// them in a `Lease` at once, with no await in between).
    pub(crate) async fn get(self: &Arc<Self>, name: &str) -> Result<(Arc<Slot>, u64), PoolError> {
        // Fast path: a loaded model needs neither the registry nor a deadline.
        let hit = {
            let mut st = self.lock();
            if st.closed {
                None
            } else {
                st.hit(name, Instant::now().into_std())
            }
        };
        if let Some(hit) = hit {
            bump(&self.counters.hits);
            return Ok(hit);
        }
        let mut wanted = self.resolve(name)?;
        if wanted.est_bytes == 0 && self.config.memory_budget.is_some() {
            // A hub id: config.json and a sharded model's index (not the weights) say what it
            // will take, so the budget can refuse it before any shard is downloaded.
            if let Ok(source @ ModelSource::Hub { .. }) = ModelSource::parse(&wanted.spec.source) {
                let dtype = wanted.spec.options.dtype;
                let estimate = tokio::task::spawn_blocking(move || source.estimate_weight_bytes(dtype)).await;
                wanted.est_bytes = estimate.ok().flatten().unwrap_or(0);
            }
        }
        self.acquire(&wanted).await
    }

    fn resolve(&self, name: &str) -> Result<Wanted, PoolError> {
        let registered = self.registry().get_shared(name);
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
            None if budgeted => safetensors_size(&spec.source, spec.options.dtype),
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

    fn cuda_free(&self, w: &Wanted) -> Option<u64> {
        // A warm model restores onto its own device, whatever the registry says now.
        let warm_device = self.lock().entries.get(&w.name).and_then(|e| e.cuda_index());
        let device = warm_device.or(w.cuda)?;
        self.memory.free_and_total(device).map(|(free, _)| free)
    }

    async fn acquire(self: &Arc<Self>, w: &Wanted) -> Result<(Arc<Slot>, u64), PoolError> {
        self.ensure_maintenance();
        let started = Instant::now();
        let deadline = started + self.config.timeouts.wait;
        let mut clock = WaitClock { counters: &self.counters, since: None };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cuda_free = self.cuda_free(w);
            let now = Instant::now();
            let step = self.lock().plan(&self.config, w, cuda_free, now.into_std());
            match step {
                Step::Leased(slot, id) => {
                    bump(&self.counters.hits);
                    return Ok((slot, id));
                }
                Step::Start(cell, id) => {
                    // The guard exists before the next await, so a cancelled caller is uncounted.
                    let pending = pending_lease(self, &w.name, id);
                    self.spawn_load(w.spec.clone(), cell.clone(), id);
                    bump(&self.counters.misses);
                    drop(clock);
                    return join(pending, cell).await;
                }
                Step::Join(cell, id) => {
                    let pending = pending_lease(self, &w.name, id);
                    bump(&self.counters.misses);
                    drop(clock);
                    return join(pending, cell).await;
                }
                Step::Restore(cell, id, slot) => {
                    let pending = pending_lease(self, &w.name, id);
                    self.spawn_restore(w.name.clone(), slot, cell.clone(), id);
                    bump(&self.counters.misses);
                    drop(clock);
                    return join(pending, cell).await;
                }
                Step::Evict(retires) => self.retire_all(retires).await,
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

    fn spawn_load(self: &Arc<Self>, spec: ModelSpec, cell: Arc<LoadCell>, id: u64) {
        let weak = Arc::downgrade(self);
        let loader = self.loader.clone();
        let timeout = self.config.timeouts.load;
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
                Some(shared) => {
                    shared.history.record(PoolEvent {
                        model: name.clone(),
                        action: if result.is_ok() { PoolAction::Loaded } else { PoolAction::LoadFailed },
                        cause: None,
                        weight_bytes: result.as_ref().ok().and_then(|s| s.info()).map_or(0, |i| i.weight_bytes),
                        at: SystemTime::now(),
                        duration: started.elapsed(),
                    });
                    shared.finish_load(&name, id, &cell, result)
                }
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
                kind: info.as_ref().map(|i| i.kind),
                service,
            })
        });
        let mut retires = Vec::new();
        {
            let mut st = self.lock();
            // Only this task changes or removes a loading entry, so it is still there.
            if !st.is_current(name, id) {
                if let Ok(slot) = &result {
                    slot.service.begin_cleanup();
                }
                let _ = cell.outcome.set(Err(LoadFailure::Closed));
                drop(st);
                cell.done.notify_waiters();
                return;
            }
            match result {
                Ok(slot) => {
                    bump(&self.counters.loads);
                    match st.publish(name, id, slot.clone(), self.config.memory_budget) {
                        Published::Closed(retire) => {
                            retires.push(retire);
                            let _ = cell.outcome.set(Err(LoadFailure::Closed));
                        }
                        Published::Failed => unreachable!("publish() never fails"),
                        Published::Ready(trimmed) => {
                            let _ = cell.outcome.set(Ok(slot));
                            retires.extend(trimmed);
                        }
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

    /// Releases a model on a task of its own (so a cancelled caller cannot strand the entry),
    /// then removes its entry. The handle yields the cleanup report.
    fn spawn_retire(self: &Arc<Self>, r: Retire) -> JoinHandle<Option<CleanupReport>> {
        if let Some(cause) = r.cause.filter(|_| !r.counted) {
            self.counters.evictions.lock().unwrap_or_else(PoisonError::into_inner).bump(cause);
            let action = if r.offload { "offloading" } else { "releasing" };
            tracing::info!(model = %r.name, %cause, weight_bytes = r.slot.weight_bytes, "pool {action} model");
        }
        if r.offload {
            return self.spawn_offload(r);
        }
        let weak = Arc::downgrade(self);
        let release_timeout = self.config.memory_budget.map(|_| self.config.timeouts.memory_release);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // A warm model holds no device memory: there is nothing to wait for.
            let mark = release_timeout.filter(|_| r.resident).map(|_| MemoryMark::take(&r.slot));
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
                shared.history.record(PoolEvent {
                    model: r.name.clone(),
                    action: PoolAction::Unloaded,
                    cause: r.cause,
                    weight_bytes: r.slot.weight_bytes,
                    at: SystemTime::now(),
                    duration: started.elapsed(),
                });
                let removed = shared.lock().remove(&r.name, r.id);
                if removed {
                    shared.changed.notify_waiters();
                }
            }
            report
        })
    }

    /// Releases every model in `retires` and waits until they are freed.
    async fn retire_all(self: &Arc<Self>, retires: Vec<Retire>) {
        let handles: Vec<_> = retires.into_iter().map(|r| self.spawn_retire(r)).collect();
        for h in handles {
            let _ = h.await;
        }
    }

    pub(crate) async fn evict_expired_at(self: &Arc<Self>, now: Instant) -> Vec<String> {
        let retires = self.lock().expire(now.into_std());
        let names = retires.iter().map(|r| r.name.clone()).collect();
        self.retire_all(retires).await;
        names
    }

    /// Starts the TTL task once some TTL is configured and a runtime is at hand.
    fn ensure_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.load(Ordering::Relaxed) {
            return;
        }
        let ttl_interval = self.config.maintenance_interval.filter(|_| self.config.default_ttl.is_some() || self.registry().any_ttl());
        // Pressure is only watched where there is a device to watch.
        let pressure_interval = self.config.pressure.interval.filter(|_| accelerator_available() || self.config.warm.mode == crate::WarmMode::Always);
        let Some(interval) = [ttl_interval, pressure_interval].into_iter().flatten().min() else { return };
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
                if shared.config.pressure.interval.is_some() {
                    shared.relieve_pressure().await;
                }
            }
        });
    }

    /// `Pool::unload`: releases `name` and waits until it is freed.
    pub(crate) async fn unload(
        self: &Arc<Self>,
        name: &str,
        fail_if_leased: bool,
    ) -> Result<Option<CleanupReport>, PoolError> {
        let mut drain: Option<DrainGuard> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = self.lock().unload_step(name, fail_if_leased, drain.as_ref().map(|d| d.2));
            match step {
                UnloadStep::Done => {
                    if let Some(d) = drain.take() {
                        ScopeGuard::into_inner(d);
                    }
                    return Ok(None);
                }
                UnloadStep::Fail(e) => return Err(e),
                UnloadStep::Retire(r) => {
                    if let Some(d) = drain.take() {
                        ScopeGuard::into_inner(d);
                    }
                    return Ok(self.spawn_retire(r).await.ok().flatten());
                }
                UnloadStep::Drain(id) => {
                    drain = Some(drain_guard(self, name, id));
                    notified.await;
                }
                UnloadStep::Wait => notified.await,
            }
        }
    }

    /// `Pool::close`: returns (released, forced leases, models left).
    pub(crate) async fn close(self: &Arc<Self>) -> (usize, usize, usize) {
        let started = Instant::now();
        let drain_deadline = started + self.config.timeouts.close;
        let hard_deadline = drain_deadline + self.config.timeouts.close;
        self.lock().closed = true;
        self.changed.notify_waiters();
        let (mut released, mut forced_leases) = (0, 0);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let force = now >= drain_deadline;
            let CloseStep { retires, forced_leases: forced, left } = self.lock().close_step(force);
            forced_leases += forced;
            if left == 0 {
                break;
            }
            if !retires.is_empty() {
                released += retires.len();
                self.retire_all(retires).await;
                continue;
            }
            if now >= hard_deadline {
                tracing::warn!(models = left, "pool close gave up waiting for loads and releases");
                return (released, forced_leases, left);
            }
            let until = if force { hard_deadline } else { drain_deadline };
            let _ = tokio::time::timeout_at(until, notified).await;
        }
        (released, forced_leases, 0)
    }

    /// Counters since the pool was created.
    pub(crate) fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            loads: get(&c.loads),
            load_failures: get(&c.load_failures),
            evictions: *c.evictions.lock().unwrap_or_else(PoisonError::into_inner),
            capacity_waits: get(&c.capacity_waits),
            capacity_wait_time: Duration::from_nanos(get(&c.capacity_wait_nanos)),
            exhausted: get(&c.exhausted),
            offloads: get(&c.offloads),
            offload_failures: get(&c.offload_failures),
            restores: get(&c.restores),
            restore_failures: get(&c.restore_failures),
        }
    }
}

/// Waits for the load behind `cell`; the pending lease becomes the caller's lease.
async fn join(pending: PendingLease, cell: Arc<LoadCell>) -> Result<(Arc<Slot>, u64), PoolError> {
    loop {
        let done = cell.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if let Some(outcome) = cell.outcome.get() {
            let (_, name, id) = ScopeGuard::into_inner(pending);
            return match outcome {
                Ok(slot) => Ok((slot.clone(), id)),
                Err(failure) => Err(failure.to_error(&name)),
            };
        }
        done.await;
    }
}

impl Drop for Shared {
    /// The last handle is gone: start releasing every model without blocking. Leases that
    /// outlive the pool find their service closed. Loads still in flight release their model
    /// when they finish.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (name, e) in st.entries.drain() {
            if let Some(s) = e.slot() {
                if s.service.begin_cleanup() {
                    tracing::debug!(model = %name, "pool dropped; model release started");
                }
            }
        }
    }
}

/// The weight bytes a local model will hold in `dtype` (from its safetensors header: an int8
/// model counts a quarter of its f32 file), or 0 where nothing on disk says.
fn safetensors_size(source: &str, dtype: Option<embed_core::DType>) -> u64 {
    match ModelSource::parse(source) {
        Ok(ModelSource::Local(dir)) => embed_core::estimate_weight_bytes(&dir, dtype).unwrap_or(0),
        _ => 0,
    }
}
