//! The state behind the pool's lock, and every decision taken under it.
//!
//! Decide under the lock, act outside it: these functions only read and change the map and
//! return what the caller must do next (start a load, release models, wait). They never
//! await, spawn or sleep, so they are unit tests without a runtime; this module imports no
//! tokio (`xtask/tests/layering.rs` checks). Times are `std::time::Instant`s; the async side
//! passes tokio's clock in (`tokio::time::Instant::into_std`), so a paused clock still rules.
//!
//! `L` is the rendezvous of a load in flight (the async side's `LoadCell`); the decisions only
//! create and hand it out. The warm tier's decisions are in `warm`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_core::{EmbeddingService, ModelKind, ModelSpec, ResolvedDevice};

use crate::{EvictionCause, Limit, ModelState, PoolConfig, PoolError};

mod warm;
pub(crate) use warm::WarmPolicy;

/// A loaded model, shared by its entry and its leases.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) service: Arc<dyn EmbeddingService>,
    pub(crate) weight_bytes: u64,
    pub(crate) device: Option<ResolvedDevice>,
    /// What the model computes (`None` for a service that reports no info).
    pub(crate) kind: Option<ModelKind>,
}

impl Slot {
    pub(crate) fn cuda_index(&self) -> Option<usize> {
        match self.device {
            Some(ResolvedDevice::Cuda(i)) => Some(i),
            _ => None,
        }
    }
}

pub(crate) enum Phase<L> {
    Loading(Arc<L>),
    Ready(Arc<Slot>),
    /// No new leases. `retiring` once its cleanup task runs; before that it waits for leases
    /// to end (`unload(WaitForLeases)`).
    Draining { slot: Arc<Slot>, retiring: bool },
    /// Its weights are moving to host memory; no leases.
    Offloading(Arc<Slot>),
    /// Warm: weights in host memory, nothing on the device, no leases. A `get` restores it.
    Warm(Arc<Slot>),
    /// Its weights are moving back to the device; callers wait for it as for a load.
    Restoring(Arc<L>, Arc<Slot>),
}

pub(crate) struct Entry<L> {
    /// Distinguishes this entry from a later one of the same name (leases carry it).
    pub(crate) id: u64,
    pub(crate) phase: Phase<L>,
    /// Leases held; while loading, callers waiting for the load (each becomes a lease).
    pub(crate) leases: usize,
    /// LRU clock value of the last lease or return.
    pub(crate) tick: u64,
    pub(crate) last_used: Instant,
    pub(crate) pinned: bool,
    pub(crate) ttl: Option<Duration>,
    /// Weight bytes expected while loading.
    pub(crate) est_bytes: u64,
    /// CUDA device the model will use, while loading.
    pub(crate) target_cuda: Option<usize>,
    /// The weights are on the device (false while warm, and while a warm model is unloaded).
    pub(crate) resident: bool,
    /// Host bytes of the warm copy (offloading, warm, restoring; the weight bytes until the
    /// offload reports the real figure).
    pub(crate) host_bytes: u64,
}

impl<L> Entry<L> {
    /// The model's weight bytes (the estimate while loading), wherever they are.
    pub(crate) fn model_bytes(&self) -> u64 {
        self.slot().map_or(self.est_bytes, |s| s.weight_bytes)
    }

    /// Bytes it holds on its device (what the memory budget counts).
    pub(crate) fn bytes(&self) -> u64 {
        if self.resident {
            self.model_bytes()
        } else {
            0
        }
    }

    /// Host bytes of its warm copy.
    pub(crate) fn host(&self) -> u64 {
        match self.phase {
            Phase::Offloading(_) | Phase::Warm(_) | Phase::Restoring(..) => self.host_bytes,
            Phase::Draining { .. } if !self.resident => self.host_bytes,
            _ => 0,
        }
    }

    pub(crate) fn cuda_index(&self) -> Option<usize> {
        self.slot().map_or(self.target_cuda, |s| s.cuda_index())
    }

    pub(crate) fn slot(&self) -> Option<&Arc<Slot>> {
        match &self.phase {
            Phase::Ready(s) | Phase::Draining { slot: s, .. } | Phase::Offloading(s) | Phase::Warm(s) | Phase::Restoring(_, s) => Some(s),
            Phase::Loading(_) => None,
        }
    }

    fn evictable(&self) -> bool {
        matches!(self.phase, Phase::Ready(_)) && self.leases == 0 && !self.pinned
    }

    /// Its device memory is on its way back (unload or offload under way).
    fn retiring(&self) -> bool {
        self.resident && matches!(self.phase, Phase::Draining { retiring: true, .. } | Phase::Offloading(_))
    }

    fn is_warm(&self) -> bool {
        matches!(self.phase, Phase::Warm(_))
    }

    pub(crate) fn state(&self) -> ModelState {
        match self.phase {
            Phase::Loading(_) => ModelState::Loading,
            Phase::Ready(_) => ModelState::Ready,
            Phase::Draining { .. } => ModelState::Draining,
            Phase::Offloading(_) => ModelState::Offloading,
            Phase::Warm(_) => ModelState::Warm,
            Phase::Restoring(..) => ModelState::Restoring,
        }
    }

    /// Marks the entry as leaving and returns the job that releases it.
    fn retire(&mut self, name: &str, cause: Option<EvictionCause>) -> Retire {
        let slot = self.slot().expect("a loading entry is never retired").clone();
        self.phase = Phase::Draining { slot: slot.clone(), retiring: true };
        Retire { name: name.to_string(), id: self.id, slot, cause, offload: false, counted: false, resident: self.resident }
    }
}

/// A model to release: cleanup runs on a task, then the entry is removed.
pub(crate) struct Retire {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) slot: Arc<Slot>,
    pub(crate) cause: Option<EvictionCause>,
    /// Offload it to the warm tier (the entry stays) instead of releasing it.
    pub(crate) offload: bool,
    /// Its eviction was counted already (a failed offload, released instead).
    pub(crate) counted: bool,
    /// Its weights are on the device (false for a warm model): only then does its release
    /// give device memory back.
    pub(crate) resident: bool,
}

/// A model the caller asked for, resolved against the registry.
pub(crate) struct Wanted {
    pub(crate) name: String,
    pub(crate) spec: ModelSpec,
    pub(crate) pinned: bool,
    pub(crate) ttl: Option<Duration>,
    /// Expected weight bytes before the first load (only computed under a memory budget).
    pub(crate) est_bytes: u64,
    /// CUDA device the model will use (only computed under a memory budget).
    pub(crate) cuda: Option<usize>,
}

pub(crate) enum WaitFor {
    /// Nothing can be evicted now.
    Capacity(Limit),
    /// Releases already under way will make room.
    Releasing(Limit),
    /// The model itself is being unloaded.
    Draining,
}

/// The next step of a `get`.
pub(crate) enum Step<L> {
    Leased(Arc<Slot>, u64),
    /// A load of the model is in flight; the caller is counted as its waiter.
    Join(Arc<L>, u64),
    /// The caller inserted the loading entry and must start the load.
    Start(Arc<L>, u64),
    /// The model was warm: the caller must restore it (callers join through the cell).
    Restore(Arc<L>, u64, Arc<Slot>),
    Evict(Vec<Retire>),
    Wait(WaitFor),
    Fail(PoolError),
}

/// The next step of an `unload`.
pub(crate) enum UnloadStep {
    /// Not (or no longer) in the pool.
    Done,
    Fail(PoolError),
    Retire(Retire),
    /// The entry with this id stopped taking leases for the caller; wait for them to end.
    Drain(u64),
    Wait,
}

/// What became of a load (or restore) that finished with a model, for an entry still in the map.
pub(crate) enum Published {
    /// The model serves; these idle ones go to bring the pool back within its budget.
    Ready(Vec<Retire>),
    /// The pool closed while it loaded (or its restore failed with its service gone): release it.
    Closed(Retire),
    /// The restore failed; the model stays warm.
    Failed,
}

/// One round of `close`.
pub(crate) struct CloseStep {
    pub(crate) retires: Vec<Retire>,
    /// Leases whose model is released anyway (the close timeout passed).
    pub(crate) forced_leases: usize,
    /// Entries in the map, those just retired included.
    pub(crate) left: usize,
}

pub(crate) struct State<L> {
    pub(crate) entries: HashMap<String, Entry<L>>,
    pub(crate) warm: WarmPolicy,
    /// Weight bytes of each model the last time it loaded, for the memory budget.
    known_bytes: HashMap<String, u64>,
    pub(crate) closed: bool,
    next_id: u64,
    clock: u64,
}

impl<L> Default for State<L> {
    fn default() -> Self {
        State { entries: HashMap::new(), warm: WarmPolicy::default(), known_bytes: HashMap::new(), closed: false, next_id: 0, clock: 0 }
    }
}

impl<L: Default> State<L> {
    /// Returns a lease: a map lookup and a counter. True when the model became idle.
    pub(crate) fn release(&mut self, name: &str, id: u64, now: Instant) -> bool {
        match self.entries.get_mut(name).filter(|e| e.id == id) {
            Some(e) => {
                debug_assert!(e.leases > 0, "lease count of {name} underflows");
                e.leases = e.leases.saturating_sub(1);
                self.clock += 1;
                e.tick = self.clock;
                e.last_used = now;
                e.leases == 0
            }
            None => false,
        }
    }

    /// Leases `name` if it is loaded and serving.
    pub(crate) fn hit(&mut self, name: &str, now: Instant) -> Option<(Arc<Slot>, u64)> {
        let e = self.entries.get_mut(name)?;
        let Phase::Ready(slot) = &e.phase else { return None };
        let slot = slot.clone();
        if !slot.service.is_ready() {
            // Cleaned up behind the pool's back (e.g. `cleanup()` called through a lease) or its
            // worker died: forget it, so the caller loads a fresh one.
            tracing::warn!(model = %name, state = %slot.service.state(), "pooled model is no longer ready; reloading it");
            self.entries.remove(name);
            slot.service.begin_cleanup();
            return None;
        }
        e.leases += 1;
        self.clock += 1;
        e.tick = self.clock;
        e.last_used = now;
        Some((slot, e.id))
    }

    /// Decides the next step of a `get`.
    pub(crate) fn plan(
        &mut self,
        config: &PoolConfig,
        w: &Wanted,
        cuda_free: Option<u64>,
        now: Instant,
    ) -> Step<L> {
        if self.closed {
            return Step::Fail(PoolError::Closed { name: w.name.clone() });
        }
        if let Some((slot, id)) = self.hit(&w.name, now) {
            return Step::Leased(slot, id);
        }
        let mut warm = None;
        if let Some(e) = self.entries.get_mut(&w.name) {
            match &e.phase {
                Phase::Loading(cell) | Phase::Restoring(cell, _) => {
                    e.leases += 1;
                    return Step::Join(cell.clone(), e.id);
                }
                Phase::Draining { .. } | Phase::Offloading(_) => return Step::Wait(WaitFor::Draining),
                Phase::Warm(slot) => warm = Some(slot.clone()),
                Phase::Ready(_) => unreachable!("hit() leases or removes ready entries"),
            }
        }

        let budget = config.memory_budget;
        let est = match (&warm, budget) {
            (Some(slot), _) => slot.weight_bytes,
            (None, Some(_)) => self.known_bytes.get(&w.name).copied().unwrap_or(w.est_bytes),
            (None, None) => 0,
        };
        // A warm model restores onto the device it was loaded on.
        let target_cuda = match &warm {
            Some(slot) => slot.cuda_index(),
            None => w.cuda,
        };
        if let Some(budget) = budget.filter(|&b| est > b) {
            return Step::Fail(PoolError::ModelTooLarge { name: w.name.clone(), bytes: est, budget });
        }
        let max = config.max_models.max(1);
        let used: u64 = self.entries.values().map(Entry::bytes).sum();
        // Warm models hold no slot: `max_models` counts models on a device.
        let resident = self.entries.values().filter(|e| e.resident).count();
        let mut need_slots = (resident + 1).saturating_sub(max);
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
                Limit::CudaMemory { device: target_cuda.unwrap_or(0), free: cuda_free.unwrap_or(0) }
            }
        };
        if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
            self.next_id += 1;
            self.clock += 1;
            let (id, tick) = (self.next_id, self.clock);
            let cell = Arc::new(L::default());
            if let Some(slot) = warm {
                let e = self.entries.get_mut(&w.name).expect("the warm entry is in the map");
                // The device memory counts as taken from here on; the host copy until the
                // restore is done.
                e.phase = Phase::Restoring(cell.clone(), slot.clone());
                e.resident = true;
                (e.id, e.leases, e.tick, e.last_used) = (id, 1, tick, now);
                return Step::Restore(cell, id, slot);
            }
            self.entries.insert(
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
                    resident: true,
                    host_bytes: 0,
                },
            );
            return Step::Start(cell, id);
        }

        // Releases already under way count toward what is needed.
        let limit = limit_now(need_slots, need_bytes);
        for e in self.entries.values().filter(|e| e.retiring()) {
            need_slots = need_slots.saturating_sub(1);
            need_bytes = need_bytes.saturating_sub(e.bytes());
            if target_cuda.is_some() && e.cuda_index() == target_cuda {
                need_cuda = need_cuda.saturating_sub(e.bytes());
            }
        }
        if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
            return Step::Wait(WaitFor::Releasing(limit));
        }

        // Least recently used idle models first; take only those that help.
        let mut candidates: Vec<(&String, &Entry<L>)> = self.entries.iter().filter(|(_, e)| e.evictable()).collect();
        candidates.sort_by_key(|(_, e)| e.tick);
        let mut victims = Vec::new();
        for (name, e) in candidates {
            if need_slots == 0 && need_bytes == 0 && need_cuda == 0 {
                break;
            }
            let bytes = e.bytes();
            let same_cuda = target_cuda.is_some() && e.cuda_index() == target_cuda;
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
        let mut retires = Vec::new();
        for (name, cause) in victims {
            // The model asked for may be warm: its own copy is never unloaded to make room.
            self.demote(&name, cause, &mut retires, Some(&w.name));
        }
        Step::Evict(retires)
    }

    /// True while the loading entry `id` of `name` is still in the map.
    pub(crate) fn is_current(&self, name: &str, id: u64) -> bool {
        self.entries.get(name).is_some_and(|e| e.id == id)
    }

    /// A load of the current entry `id` produced `slot`: publish it, or release it if the pool
    /// closed meanwhile.
    pub(crate) fn publish(&mut self, name: &str, id: u64, slot: Arc<Slot>, budget: Option<u64>) -> Published {
        self.known_bytes.insert(name.to_string(), slot.weight_bytes);
        let closed = self.closed;
        let entry = self.entries.get_mut(name).filter(|e| e.id == id).expect("publish() needs the current entry");
        if closed {
            // Closed while loading: release it; waiters get `Closed`. A fresh id so their
            // pending leases do not touch the releasing entry.
            self.next_id += 1;
            entry.id = self.next_id;
            entry.leases = 0;
            entry.phase = Phase::Draining { slot: slot.clone(), retiring: true };
            return Published::Closed(Retire { name: name.to_string(), id: entry.id, slot, cause: None, offload: false, counted: false, resident: true });
        }
        // Waiters become leases here, atomically with publishing the model, so it cannot be
        // evicted before they pick it up.
        entry.phase = Phase::Ready(slot);
        Published::Ready(self.trim_to_budget(budget))
    }

    /// After a model turned out larger than its estimate: evict idle models until the pool is
    /// within its budget again.
    fn trim_to_budget(&mut self, budget: Option<u64>) -> Vec<Retire> {
        let Some(budget) = budget else { return Vec::new() };
        let mut used: u64 = self.entries.values().filter(|e| !e.retiring()).map(Entry::bytes).sum();
        if used <= budget {
            return Vec::new();
        }
        let mut candidates: Vec<(String, u64, u64)> = self
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
            self.demote(&name, EvictionCause::Memory, &mut retires, None);
        }
        retires
    }

    /// Removes the entry `id` of `name` if it is still there; true if it was.
    pub(crate) fn remove(&mut self, name: &str, id: u64) -> bool {
        let ours = self.is_current(name, id);
        if ours {
            self.entries.remove(name);
        }
        ours
    }

    /// Retires every idle, unpinned model whose TTL has passed at `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Retire> {
        if self.closed {
            return Vec::new();
        }
        self.entries
            .iter_mut()
            .filter(|(_, e)| {
                (e.evictable() || (e.is_warm() && !e.pinned))
                    && e.ttl.is_some_and(|ttl| now.saturating_duration_since(e.last_used) >= ttl)
            })
            .map(|(name, e)| e.retire(name, Some(EvictionCause::Ttl)))
            .collect()
    }

    /// Decides the next step of an `unload`. `draining` is the id of the entry this caller
    /// already stopped (see [`UnloadStep::Drain`]).
    pub(crate) fn unload_step(&mut self, name: &str, fail_if_leased: bool, draining: Option<u64>) -> UnloadStep {
        let Some(e) = self.entries.get_mut(name) else { return UnloadStep::Done };
        let ours = draining == Some(e.id);
        let leased = || PoolError::Leased { name: name.to_string(), leases: e.leases };
        match &e.phase {
            Phase::Loading(_) | Phase::Restoring(..) if fail_if_leased && e.leases > 0 => UnloadStep::Fail(leased()),
            Phase::Loading(_) | Phase::Restoring(..) | Phase::Offloading(_) => UnloadStep::Wait,
            Phase::Warm(_) => UnloadStep::Retire(e.retire(name, Some(EvictionCause::Explicit))),
            Phase::Ready(_) if e.leases == 0 => UnloadStep::Retire(e.retire(name, Some(EvictionCause::Explicit))),
            Phase::Ready(_) if fail_if_leased => UnloadStep::Fail(leased()),
            Phase::Ready(slot) => {
                e.phase = Phase::Draining { slot: slot.clone(), retiring: false };
                UnloadStep::Drain(e.id)
            }
            Phase::Draining { retiring: false, .. } if ours && e.leases == 0 => {
                UnloadStep::Retire(e.retire(name, Some(EvictionCause::Explicit)))
            }
            // Leases still held, or another caller is releasing it.
            Phase::Draining { .. } => UnloadStep::Wait,
        }
    }

    /// An `unload(WaitForLeases)` went away before releasing entry `id`: back in service.
    pub(crate) fn undrain(&mut self, name: &str, id: u64) {
        if let Some(e) = self.entries.get_mut(name).filter(|e| e.id == id) {
            if let Phase::Draining { slot, retiring: false } = &e.phase {
                e.phase = Phase::Ready(slot.clone());
            }
        }
    }

    /// One round of `close`: retires idle models, and leased ones too once `force`.
    pub(crate) fn close_step(&mut self, force: bool) -> CloseStep {
        let mut step = CloseStep { retires: Vec::new(), forced_leases: 0, left: self.entries.len() };
        for (name, e) in self.entries.iter_mut() {
            let releasable = matches!(e.phase, Phase::Ready(_) | Phase::Warm(_) | Phase::Draining { retiring: false, .. });
            if releasable && (e.leases == 0 || force) {
                if e.leases > 0 {
                    tracing::warn!(model = %name, leases = e.leases, "close timeout passed; releasing a leased model");
                    step.forced_leases += e.leases;
                }
                step.retires.push(e.retire(name, Some(EvictionCause::Explicit)));
            }
        }
        step
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The decisions alone: no runtime, no tasks, a plain clock.

    use super::*;
    use crate::fakes;

    pub(super) type St = State<()>;

    pub(super) fn wanted(name: &str) -> Wanted {
        Wanted {
            name: name.to_string(),
            spec: ModelSpec::new(format!("fake/{name}")),
            pinned: false,
            ttl: None,
            est_bytes: 0,
            cuda: None,
        }
    }

    pub(super) fn slot(name: &str, bytes: u64) -> Arc<Slot> {
        let service = fakes::service(name, &format!("fake/{name}"), bytes);
        Arc::new(Slot { name: name.to_string(), service, weight_bytes: bytes, device: None, kind: None })
    }

    /// Plans and publishes `w` as a load that produced `bytes`, then returns its lease.
    pub(super) fn load(st: &mut St, config: &PoolConfig, w: &Wanted, bytes: u64, now: Instant) -> Vec<Retire> {
        let Step::Start(_, id) = st.plan(config, w, None, now) else { panic!("expected a load of {}", w.name) };
        let Published::Ready(trimmed) = st.publish(&w.name, id, slot(&w.name, bytes), config.memory_budget) else {
            panic!("pool is open")
        };
        assert!(st.release(&w.name, id, now), "the loader's lease was the only one");
        trimmed
    }

    pub(super) fn names(retires: &[Retire]) -> Vec<(&str, Option<EvictionCause>)> {
        retires.iter().map(|r| (r.name.as_str(), r.cause)).collect()
    }

    #[test]
    fn concurrent_gets_share_one_load() {
        let (mut st, config, now) = (St::default(), PoolConfig::default(), Instant::now());
        let Step::Start(_, id) = st.plan(&config, &wanted("a"), None, now) else { panic!("expected Start") };
        let Step::Join(_, joined) = st.plan(&config, &wanted("a"), None, now) else { panic!("expected Join") };
        assert_eq!(id, joined);
        assert_eq!(st.entries["a"].leases, 2);
        assert_eq!(st.entries["a"].state(), ModelState::Loading);
    }

    #[test]
    fn a_full_pool_evicts_the_least_recently_used_idle_model() {
        let (mut st, now) = (St::default(), Instant::now());
        let config = PoolConfig::default().with_max_models(2);
        load(&mut st, &config, &wanted("a"), 1, now);
        load(&mut st, &config, &wanted("b"), 1, now);
        let (_, id) = st.hit("a", now).expect("a is ready");
        st.release("a", id, now);
        let Step::Evict(retires) = st.plan(&config, &wanted("c"), None, now) else { panic!("expected Evict") };
        assert_eq!(names(&retires), [("b", Some(EvictionCause::Capacity))]);
        // b's release is under way: the next plan waits for it instead of evicting a too.
        assert!(matches!(st.plan(&config, &wanted("c"), None, now), Step::Wait(WaitFor::Releasing(_))));
        assert!(st.remove("b", retires[0].id));
        assert!(matches!(st.plan(&config, &wanted("c"), None, now), Step::Start(..)));
    }

    #[test]
    fn leased_and_pinned_models_are_not_evicted_for_room() {
        let (mut st, now) = (St::default(), Instant::now());
        let config = PoolConfig::default().with_max_models(2);
        load(&mut st, &config, &wanted("a"), 1, now);
        load(&mut st, &config, &Wanted { pinned: true, ..wanted("b") }, 1, now);
        let _lease = st.hit("a", now).expect("a is ready");
        match st.plan(&config, &wanted("c"), None, now) {
            Step::Wait(WaitFor::Capacity(Limit::MaxModels(2))) => {}
            _ => panic!("expected a wait for capacity"),
        }
    }

    #[test]
    fn a_model_larger_than_its_estimate_trims_the_pool_to_budget() {
        let (mut st, now) = (St::default(), Instant::now());
        let config = PoolConfig::default().with_memory_budget(Some(100));
        load(&mut st, &config, &wanted("a"), 60, now);
        let trimmed = load(&mut st, &config, &Wanted { est_bytes: 10, ..wanted("b") }, 60, now);
        assert_eq!(names(&trimmed), [("a", Some(EvictionCause::Memory))]);
        // A model over the whole budget never loads.
        let huge = Wanted { est_bytes: 101, ..wanted("c") };
        assert!(matches!(st.plan(&config, &huge, None, now), Step::Fail(PoolError::ModelTooLarge { .. })));
    }

    #[test]
    fn idle_models_expire_after_their_ttl() {
        let (mut st, config, now) = (St::default(), PoolConfig::default(), Instant::now());
        let ttl = Duration::from_secs(10);
        load(&mut st, &config, &Wanted { ttl: Some(ttl), ..wanted("a") }, 1, now);
        load(&mut st, &config, &wanted("b"), 1, now);
        assert!(st.expire(now + ttl / 2).is_empty());
        assert_eq!(names(&st.expire(now + ttl)), [("a", Some(EvictionCause::Ttl))]);
    }

    #[test]
    fn unload_drains_a_leased_model_and_a_dropped_unload_undrains_it() {
        let (mut st, config, now) = (St::default(), PoolConfig::default(), Instant::now());
        load(&mut st, &config, &wanted("a"), 1, now);
        let (_, lease) = st.hit("a", now).expect("a is ready");
        assert!(matches!(st.unload_step("a", true, None), UnloadStep::Fail(PoolError::Leased { leases: 1, .. })));
        let UnloadStep::Drain(id) = st.unload_step("a", false, None) else { panic!("expected Drain") };
        assert!(st.hit("a", now).is_none(), "a draining model takes no new leases");
        st.undrain("a", id);
        assert!(st.hit("a", now).is_some());
        let UnloadStep::Drain(id) = st.unload_step("a", false, None) else { panic!("expected Drain") };
        st.release("a", lease, now);
        st.release("a", lease, now);
        assert!(matches!(st.unload_step("a", false, Some(id)), UnloadStep::Retire(_)));
    }

    #[test]
    fn close_waits_for_leases_until_forced() {
        let (mut st, config, now) = (St::default(), PoolConfig::default(), Instant::now());
        load(&mut st, &config, &wanted("a"), 1, now);
        load(&mut st, &config, &wanted("b"), 1, now);
        let _lease = st.hit("b", now).expect("b is ready");
        st.closed = true;
        let step = st.close_step(false);
        let released = vec![("a", Some(EvictionCause::Explicit))];
        assert_eq!((names(&step.retires), step.forced_leases, step.left), (released, 0, 2));
        let step = st.close_step(true);
        assert_eq!((names(&step.retires), step.forced_leases), (vec![("b", Some(EvictionCause::Explicit))], 1));
        assert!(matches!(st.plan(&config, &wanted("c"), None, now), Step::Fail(PoolError::Closed { .. })));
    }

}
