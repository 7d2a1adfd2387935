//! The warm tier's decisions, taken under the pool's lock like the rest of [`super`]: which
//! idle model goes to host memory instead of being unloaded, what makes room in the host
//! budget, what a finished offload or restore leaves, explicit offloads, and memory pressure.

use super::{Entry, Phase, Published, Retire, State};
use crate::{EvictionCause, PoolError, PressureLevel, WarmMode};

/// The warm tier as the decisions see it: when a model may go warm, and the host budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WarmPolicy {
    pub(crate) mode: WarmMode,
    pub(crate) host_budget: u64,
}

impl Default for WarmPolicy {
    fn default() -> Self {
        WarmPolicy { mode: WarmMode::Off, host_budget: 0 }
    }
}

impl WarmPolicy {
    /// Whether `slot` may be offloaded instead of unloaded.
    pub(super) fn allows(&self, slot: &super::Slot) -> bool {
        let device_ok = match self.mode {
            WarmMode::Off => false,
            WarmMode::Auto => slot.cuda_index().is_some(),
            WarmMode::Always => true,
        };
        // A CPU model prepacked for oneDNN refuses to offload: do not even try.
        let prepacked = || slot.service.info().is_some_and(|i| i.cpu_prepacked);
        device_ok && slot.weight_bytes <= self.host_budget && slot.service.offloading().and_then(|o| o.residency()).is_some() && !prepacked()
    }
}

impl<L: Default> State<L> {
    /// Host bytes the warm tier holds or is about to hold (offloads under way and restores not
    /// finished included), less those of warm models already being released: what the host
    /// budget is checked against. (A release under way holds its bytes a moment longer.)
    pub(crate) fn host_used(&self) -> u64 {
        self.entries.values().filter(|e| !matches!(e.phase, Phase::Draining { .. })).map(Entry::host).sum()
    }

    /// Takes the idle model `name` off its device: to the warm tier when the policy allows it
    /// and the host budget has room (made by unloading the least recently used warm models),
    /// else unloaded. Pushes the jobs to `out`.
    pub(super) fn demote(&mut self, name: &str, cause: EvictionCause, out: &mut Vec<Retire>, keep: Option<&str>) {
        let Some(warm_victims) = self.host_room(name, keep) else {
            let e = self.entries.get_mut(name).expect("demoted model is in the map");
            out.push(e.retire(name, Some(cause)));
            return;
        };
        for n in warm_victims {
            let e = self.entries.get_mut(&n).expect("warm victim is in the map");
            out.push(e.retire(&n, Some(EvictionCause::Memory)));
        }
        let e = self.entries.get_mut(name).expect("demoted model is in the map");
        let slot = e.slot().expect("only loaded models are demoted").clone();
        e.phase = Phase::Offloading(slot.clone());
        e.host_bytes = slot.weight_bytes;
        out.push(Retire { name: name.to_string(), id: e.id, slot, cause: Some(cause), offload: true, counted: false, resident: true });
    }

    /// Whether `name` may go warm: `Some(warm models to unload first)` when the policy allows
    /// it and the host budget has (or can be given) room for it, least recently used first.
    /// Pinned warm models and `keep` (a warm model about to be restored) are never unloaded.
    fn host_room(&self, name: &str, keep: Option<&str>) -> Option<Vec<String>> {
        let slot = self.entries.get(name).and_then(Entry::slot)?;
        if !self.warm.allows(slot) {
            return None;
        }
        let room = self.warm.host_budget.checked_sub(slot.weight_bytes)?;
        let (victims, used) = self.warm_victims(&[Some(name), keep], self.host_used(), room);
        (used <= room).then_some(victims)
    }

    /// The least recently used warm models to unload, pinned ones and `except` never, until
    /// `used` host bytes are at most `limit`; with the bytes left in use.
    fn warm_victims(&self, except: &[Option<&str>], mut used: u64, limit: u64) -> (Vec<String>, u64) {
        let mut warm: Vec<(&String, &Entry<L>)> =
            self.entries.iter().filter(|(n, e)| e.is_warm() && !e.pinned && !except.contains(&Some(n.as_str()))).collect();
        warm.sort_by_key(|(_, e)| e.tick);
        let mut victims = Vec::new();
        for (n, e) in warm {
            if used <= limit {
                break;
            }
            used -= e.host();
            victims.push(n.clone());
        }
        (victims, used)
    }

    /// The offload of entry `id` of `name` finished: with the host bytes it holds, or `None`
    /// when it failed. Returns what to release: the model itself if its offload failed or the
    /// pool closed meanwhile, and warm models if the real host copy overran the budget.
    pub(crate) fn offloaded(&mut self, name: &str, id: u64, host_bytes: Option<u64>, cause: Option<EvictionCause>) -> Vec<Retire> {
        let closed = self.closed;
        let Some(e) = self.entries.get_mut(name).filter(|e| e.id == id) else { return Vec::new() };
        let Phase::Offloading(slot) = &e.phase else { return Vec::new() };
        let slot = slot.clone();
        match host_bytes {
            Some(host) if !closed => {
                e.phase = Phase::Warm(slot);
                e.resident = false;
                e.host_bytes = host;
                let budget = self.warm.host_budget;
                let (victims, used) = self.warm_victims(&[Some(name)], self.host_used(), budget);
                let mut out: Vec<Retire> = victims
                    .iter()
                    .map(|n| self.entries.get_mut(n).expect("warm model is in the map").retire(n, Some(EvictionCause::Memory)))
                    .collect();
                if used > budget {
                    // Its real copy (alignment, the pinned allocator's rounding) overran a
                    // budget nothing else can give back: it goes too.
                    let e = self.entries.get_mut(name).expect("offloaded model is in the map");
                    out.push(Retire { counted: true, ..e.retire(name, cause) });
                }
                out
            }
            Some(host) => {
                // Closed while offloading: release it (from the host).
                e.phase = Phase::Warm(slot);
                e.resident = false;
                e.host_bytes = host;
                vec![Retire { counted: true, ..e.retire(name, cause) }]
            }
            None => {
                e.phase = Phase::Ready(slot);
                vec![Retire { counted: true, ..e.retire(name, cause) }]
            }
        }
    }

    /// The restore of entry `id` of `name` finished (`ok`) or failed. On success the waiters
    /// become leases; on failure the model stays warm (or is released, if its service died
    /// or the pool closed).
    pub(crate) fn restored(&mut self, name: &str, id: u64, ok: bool) -> Published {
        let closed = self.closed;
        let e = self.entries.get_mut(name).filter(|e| e.id == id).expect("restored() needs the current entry");
        let Phase::Restoring(_, slot) = &e.phase else { unreachable!("restored() needs a restoring entry") };
        let slot = slot.clone();
        if ok && !closed {
            e.host_bytes = 0;
            e.phase = Phase::Ready(slot);
            return Published::Ready(Vec::new());
        }
        // Waiters get the failure; a fresh id so their pending leases do not touch the entry.
        self.next_id += 1;
        e.id = self.next_id;
        e.leases = 0;
        if ok {
            e.host_bytes = 0;
        } else {
            e.resident = false;
            if !closed && slot.service.is_ready() {
                e.phase = Phase::Warm(slot);
                return Published::Failed;
            }
        }
        e.phase = Phase::Draining { slot: slot.clone(), retiring: true };
        Published::Closed(Retire { name: name.to_string(), id: e.id, slot, cause: None, offload: false, counted: false, resident: e.resident })
    }

    /// Decides an explicit offload of `name` (`Pool::offload`): the jobs (warm models unloaded
    /// for room, then the model's offload); none when it is warm already or not in the pool.
    pub(crate) fn offload_step(&mut self, name: &str) -> Result<Vec<Retire>, PoolError> {
        let fail = |reason: String| Err(PoolError::CannotOffload { name: name.to_string(), reason });
        let Some(e) = self.entries.get(name) else { return Ok(Vec::new()) };
        match &e.phase {
            Phase::Warm(_) => return Ok(Vec::new()),
            Phase::Ready(_) if e.leases > 0 => return fail(format!("it has {} active lease(s)", e.leases)),
            Phase::Ready(slot) if !self.warm.allows(slot) => {
                return fail(match self.warm.mode {
                    WarmMode::Off => "the warm tier is off".to_string(),
                    WarmMode::Auto if slot.cuda_index().is_none() => "it runs on the CPU (its weights are in host memory already)".to_string(),
                    _ => format!("its {} weight bytes exceed the host budget of {} bytes", slot.weight_bytes, self.warm.host_budget),
                })
            }
            Phase::Ready(_) => {}
            _ => return fail(format!("it is {}", e.state().as_str())),
        }
        if self.host_room(name, None).is_none() {
            return fail(format!("the host budget of {} bytes has no room for it (warm models in use)", self.warm.host_budget));
        }
        let mut out = Vec::new();
        self.demote(name, EvictionCause::Explicit, &mut out, None);
        Ok(out)
    }

    /// One memory-pressure check of CUDA device `device` at `level`, `need` bytes above the
    /// moderate threshold: idle models on it (least recently used first) go warm at `High`,
    /// are unloaded at `Critical`, until `need` is covered. Releases under way count.
    pub(crate) fn relieve(&mut self, device: usize, level: PressureLevel, need: u64) -> Vec<Retire> {
        if self.closed || level < PressureLevel::High || need == 0 {
            return Vec::new();
        }
        let on_device = |e: &Entry<L>| e.cuda_index() == Some(device);
        let under_way: u64 = self.entries.values().filter(|e| e.retiring() && on_device(e)).map(Entry::bytes).sum();
        let mut need = need.saturating_sub(under_way);
        let mut candidates: Vec<(String, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.evictable() && on_device(e) && e.bytes() > 0)
            .map(|(n, e)| (n.clone(), e.tick))
            .collect();
        candidates.sort_by_key(|c| c.1);
        let mut out = Vec::new();
        for (name, _) in candidates {
            if need == 0 {
                break;
            }
            let bytes = self.entries[&name].bytes();
            if level == PressureLevel::Critical {
                let e = self.entries.get_mut(&name).expect("candidate is in the map");
                out.push(e.retire(&name, Some(EvictionCause::Pressure)));
            } else if self.host_room(&name, None).is_some() {
                self.demote(&name, EvictionCause::Pressure, &mut out, None);
            } else {
                // High but it cannot go warm: unloading waits for the critical level.
                continue;
            }
            need = need.saturating_sub(bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::tests::{load, names, wanted, St};
    use super::super::{Slot, Step, WaitFor, Wanted};
    use super::*;
    use crate::{ModelState, PoolConfig};
    use embed_core::ResolvedDevice;

    fn warm(st: &mut St, host_budget: u64) {
        st.warm = WarmPolicy { mode: WarmMode::Always, host_budget };
    }

    #[test]
    fn an_evicted_model_goes_warm_holds_no_slot_and_restores_through_a_cell() {
        let (mut st, now) = (St::default(), Instant::now());
        let config = PoolConfig::default().with_max_models(1);
        warm(&mut st, 1000);
        load(&mut st, &config, &wanted("a"), 100, now);
        let Step::Evict(jobs) = st.plan(&config, &wanted("b"), None, now) else { panic!("expected an eviction") };
        assert_eq!((jobs.len(), jobs[0].name.as_str(), jobs[0].offload, jobs[0].cause), (1, "a", true, Some(EvictionCause::Capacity)));
        assert_eq!(st.entries["a"].state(), ModelState::Offloading);
        assert!(matches!(st.plan(&config, &wanted("b"), None, now), Step::Wait(WaitFor::Releasing(_))), "the offload is the room");
        assert!(st.offloaded("a", jobs[0].id, Some(120), jobs[0].cause).is_empty());
        assert_eq!((st.entries["a"].state(), st.entries["a"].bytes(), st.host_used()), (ModelState::Warm, 0, 120));
        // Warm models hold no slot: b loads beside it.
        load(&mut st, &config, &wanted("b"), 100, now);
        // Asking for a again evicts b (offloaded too), then restores a through a cell others join.
        let Step::Evict(jobs) = st.plan(&config, &wanted("a"), None, now) else { panic!("expected an eviction") };
        assert_eq!(names(&jobs), [("b", Some(EvictionCause::Capacity))]);
        st.offloaded("b", jobs[0].id, Some(100), jobs[0].cause);
        let Step::Restore(_, id, _) = st.plan(&config, &wanted("a"), None, now) else { panic!("expected a restore") };
        let Step::Join(_, joined) = st.plan(&config, &wanted("a"), None, now) else { panic!("expected to join the restore") };
        assert_eq!(id, joined);
        assert!(matches!(st.restored("a", id, true), Published::Ready(_)));
        assert_eq!((st.entries["a"].state(), st.entries["a"].leases, st.entries["a"].bytes()), (ModelState::Ready, 2, 100));
        assert_eq!(st.host_used(), 100, "b's copy only");
    }

    #[test]
    fn host_room_unloads_the_oldest_unpinned_warm_models_and_never_the_one_asked_for() {
        let (mut st, now) = (St::default(), Instant::now());
        let config = PoolConfig::default().with_max_models(1);
        warm(&mut st, 250);
        let apply = |st: &mut St, jobs: Vec<Retire>| {
            for j in jobs {
                if j.offload {
                    st.offloaded(&j.name, j.id, Some(100), j.cause);
                } else {
                    st.remove(&j.name, j.id);
                }
            }
        };
        // p is pinned: never evicted for room, but it goes warm on request.
        load(&mut st, &config, &Wanted { pinned: true, ..wanted("p") }, 100, now);
        let jobs = st.offload_step("p").unwrap();
        apply(&mut st, jobs);
        for n in ["a", "b"] {
            load(&mut st, &config, &wanted(n), 100, now);
            let Step::Evict(jobs) = st.plan(&config, &wanted("next"), None, now) else { panic!("expected an eviction") };
            apply(&mut st, jobs);
        }
        // p (pinned) and b are warm; a, the oldest unpinned, was unloaded to make room for b.
        let state = |st: &St, n: &str| st.entries.get(n).map(Entry::state);
        assert_eq!((state(&st, "p"), state(&st, "a"), state(&st, "b")), (Some(ModelState::Warm), None, Some(ModelState::Warm)));
        // Restoring b while "next" must leave: "next" cannot go warm without unloading b itself,
        // which is never done, nor p (pinned): it is unloaded instead.
        load(&mut st, &config, &wanted("next"), 100, now);
        let Step::Evict(jobs) = st.plan(&config, &wanted("b"), None, now) else { panic!("expected an eviction") };
        assert_eq!((names(&jobs), jobs[0].offload), (vec![("next", Some(EvictionCause::Capacity))], false));
    }

    #[test]
    fn pressure_moves_only_idle_unpinned_models_offloading_at_high_and_unloading_at_critical() {
        let (mut st, config, now) = (St::default(), PoolConfig::default(), Instant::now());
        warm(&mut st, 1000);
        let on_cuda = |st: &mut St, n: &str| {
            let e = st.entries.get_mut(n).unwrap();
            let slot = e.slot().unwrap().clone();
            let cuda = Arc::new(Slot { device: Some(ResolvedDevice::Cuda(0)), name: slot.name.clone(), service: slot.service.clone(), weight_bytes: slot.weight_bytes, kind: None });
            e.phase = Phase::Ready(cuda);
        };
        for (n, pinned) in [("leased", false), ("pinned", false), ("idle1", false), ("idle2", false)] {
            load(&mut st, &config, &Wanted { pinned, ..wanted(n) }, 100, now);
            on_cuda(&mut st, n);
        }
        st.entries.get_mut("pinned").unwrap().pinned = true;
        assert!(st.hit("leased", now).is_some());
        assert!(st.relieve(0, PressureLevel::Moderate, 500).is_empty(), "moderate: nothing moves");
        let jobs = st.relieve(0, PressureLevel::High, 150);
        assert_eq!(jobs.iter().map(|j| (j.name.as_str(), j.offload)).collect::<Vec<_>>(), [("idle1", true), ("idle2", true)]);
        assert!(st.relieve(0, PressureLevel::High, 150).is_empty(), "offloads under way count");
        assert!(st.relieve(1, PressureLevel::Critical, 500).is_empty(), "another device");
        for j in jobs {
            st.offloaded(&j.name, j.id, Some(100), j.cause);
        }
        assert!(st.relieve(0, PressureLevel::Critical, 500).is_empty(), "only the leased and the pinned are left");
    }
}
