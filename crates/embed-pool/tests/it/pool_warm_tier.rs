//! The warm tier and memory pressure against fake services that report a CUDA device and a
//! fake driver's free memory: residency transitions, the host budget, leased models never
//! moved, pressure levels, restore failures, and a random-sequence state-machine test of the
//! invariants (budgets never exceeded, leased models never moved, history complete) against a
//! reference model of the tier. Real models: `embed-core`'s `tests/it/offload.rs` moves their
//! weights on the CPU, `embed-server`'s `tests/it/warm_tier.rs` runs the warm tier through the
//! server on the CPU, and `pool_cuda.rs` runs it on a GPU.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use embed_core::{EmbedOptions, EmbeddingService, ModelSpec, ResolvedDevice};
use embed_pool::{
    DeviceMemory, EvictionCause, HostBudget, Lease, ModelLoader, ModelRegistry, ModelSettings, ModelState, Pool, PoolAction,
    PoolConfig, PoolError, PoolStats, PoolTimeouts, Pressure, PressureLevel, UnloadMode, WarmMode, WarmTier,
};
use embed_testkit::{fake_host_bytes, live_fakes, serial, FakeService};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Loads fakes of `bytes[name]` weight bytes on CUDA device 0 (CPU for names starting with
/// "cpu"), and keeps them so tests can look at their moves.
#[derive(Default)]
struct Loader {
    bytes: HashMap<String, u64>,
    made: Mutex<Vec<(String, Arc<FakeService>)>>,
}

impl Loader {
    fn new(sizes: &[(&str, u64)]) -> Arc<Self> {
        Arc::new(Loader { bytes: sizes.iter().map(|(n, b)| (n.to_string(), *b)).collect(), made: Mutex::default() })
    }

    /// The newest fake made for `name`.
    fn fake(&self, name: &str) -> Arc<FakeService> {
        self.made.lock().unwrap().iter().rev().find(|(n, _)| n == name).map(|(_, f)| f.clone()).expect("made")
    }

    fn all(&self) -> Vec<Arc<FakeService>> {
        self.made.lock().unwrap().iter().map(|(_, f)| f.clone()).collect()
    }
}

#[async_trait]
impl ModelLoader for Loader {
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
        let bytes = self.bytes.get(&spec.name).copied().unwrap_or(1);
        let device = if spec.name.starts_with("cpu") { ResolvedDevice::Cpu } else { ResolvedDevice::Cuda(0) };
        let fake = Arc::new(FakeService::ready(&spec.name, &spec.source, 4, bytes).on_device(device));
        self.made.lock().unwrap().push((spec.name.clone(), fake.clone()));
        Ok(fake)
    }
}

/// A CUDA device whose free memory the test sets.
#[derive(Clone)]
struct FakeDevice(Arc<Mutex<(u64, u64)>>);

impl FakeDevice {
    fn new(total: u64) -> Self {
        FakeDevice(Arc::new(Mutex::new((total, total))))
    }

    fn set_used(&self, used: u64) {
        let mut m = self.0.lock().unwrap();
        m.0 = m.1.saturating_sub(used);
    }
}

impl DeviceMemory for FakeDevice {
    fn free_and_total(&self, index: usize) -> Option<(u64, u64)> {
        (index == 0).then(|| *self.0.lock().unwrap())
    }
}

fn registry(names: &[&str]) -> ModelRegistry {
    names.iter().fold(ModelRegistry::new(), |r, n| r.with_settings(*n, ModelSpec::new(format!("fake/{n}")), ModelSettings::default()))
}

fn config(max: usize, host_budget: u64) -> PoolConfig {
    PoolConfig::default()
        .with_max_models(max)
        .with_warm_tier(WarmTier { mode: WarmMode::Auto, host_budget: HostBudget::Bytes(host_budget) })
        .with_pressure(Pressure { interval: None, ..Pressure::default() })
        .with_maintenance_interval(None)
        .with_timeouts(PoolTimeouts { wait: Duration::from_millis(200), ..PoolTimeouts::default() })
        .with_history_len(10_000)
}

fn state(pool: &Pool, name: &str) -> Option<ModelState> {
    pool.status().model(name).map(|m| m.state)
}

/// Waits until no model is between two states (offloads and releases run on tasks).
async fn settle(pool: &Pool) {
    // Generous: a busy machine may take a while; a pool that never settles still fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let busy = pool.status().models.iter().any(|m| {
            matches!(m.state, ModelState::Offloading | ModelState::Draining | ModelState::Restoring | ModelState::Loading)
        });
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("pool did not settle: {:?}", pool.status().models);
}

fn actions(pool: &Pool) -> Vec<(String, PoolAction, Option<EvictionCause>)> {
    pool.history().into_iter().map(|e| (e.model, e.action, e.cause)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_cuda_model_goes_warm_and_a_get_restores_it() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let loader = Loader::new(&[("a", 100), ("b", 100)]);
    let pool = Pool::with_parts(config(1, 1000), registry(&["a", "b"]), loader.clone(), FakeDevice::new(1 << 30));
    pool.preload("a").await.unwrap();
    pool.preload("b").await.unwrap(); // one slot: a goes warm
    settle(&pool).await;
    let st = pool.status();
    let a = st.model("a").unwrap();
    assert_eq!((a.state, a.device_bytes, a.host_bytes, a.weight_bytes), (ModelState::Warm, 0, 100, 100));
    assert_eq!((st.weight_bytes, st.host_bytes, fake_host_bytes()), (100, 100, 100));

    // a comes back from the warm tier (no load), and b goes warm in its place.
    let lease = pool.get("a").await.unwrap();
    assert!(lease.embed_texts(&["x".into()], &EmbedOptions::default()).await.is_ok());
    drop(lease);
    settle(&pool).await;
    assert_eq!((state(&pool, "a"), state(&pool, "b")), (Some(ModelState::Ready), Some(ModelState::Warm)));
    let stats = pool.stats();
    assert_eq!((stats.loads, stats.offloads, stats.restores, stats.evictions.capacity), (2, 2, 1, 2));
    assert_eq!(loader.fake("a").moves(), (1, 1, 0), "a: one offload, one restore, never asked to work while offloaded");
    let expected: Vec<(String, PoolAction, Option<EvictionCause>)> = vec![
        ("a".into(), PoolAction::Loaded, None),
        ("a".into(), PoolAction::Offloaded, Some(EvictionCause::Capacity)),
        ("b".into(), PoolAction::Loaded, None),
        ("b".into(), PoolAction::Offloaded, Some(EvictionCause::Capacity)),
        ("a".into(), PoolAction::Restored, None),
    ];
    assert_eq!(actions(&pool), expected);

    pool.close().await;
    assert_eq!((live_fakes(), fake_host_bytes()), (0, 0), "close releases warm models too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_models_are_unloaded_under_auto_and_kept_warm_under_always() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    for (mode, expect) in [(WarmMode::Auto, None), (WarmMode::Always, Some(ModelState::Warm)), (WarmMode::Off, None)] {
        let loader = Loader::new(&[("cpu-a", 10), ("cpu-b", 10)]);
        let cfg = config(1, 1000).with_warm_tier(WarmTier { mode, host_budget: HostBudget::Bytes(1000) });
        let pool = Pool::with_parts(cfg, registry(&["cpu-a", "cpu-b"]), loader, FakeDevice::new(1 << 30));
        pool.preload("cpu-a").await.unwrap();
        pool.preload("cpu-b").await.unwrap();
        settle(&pool).await;
        assert_eq!(state(&pool, "cpu-a"), expect, "{mode:?}");
        let tier = pool.status().warm_tier;
        match mode {
            WarmMode::Off => assert!(!tier.enabled && tier.note.contains("off"), "{tier:?}"),
            WarmMode::Always => assert!(tier.enabled, "{tier:?}"),
            _ => assert_eq!(tier.enabled, embed_core::memory::accelerator_available(), "{tier:?}"),
        }
        pool.close().await;
    }
    assert_eq!((live_fakes(), fake_host_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_budget_unloads_the_least_recently_used_warm_models() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let names = ["a", "b", "c", "d", "huge"];
    let loader = Loader::new(&[("a", 100), ("b", 100), ("c", 100), ("d", 100), ("huge", 300)]);
    let pool = Pool::with_parts(config(1, 250), registry(&names), loader, FakeDevice::new(1 << 30));
    for n in ["a", "b", "c", "d"] {
        pool.preload(n).await.unwrap();
        settle(&pool).await;
        assert!(pool.status().host_bytes <= 250);
    }
    // Room for two warm models: a (the oldest) was unloaded to make room for c.
    let states: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| state(&pool, n)).collect();
    assert_eq!(states, [None, Some(ModelState::Warm), Some(ModelState::Warm), Some(ModelState::Ready)]);
    assert_eq!(pool.stats().evictions.memory, 1);
    // A model larger than the whole host budget is unloaded, not offloaded.
    pool.preload("huge").await.unwrap();
    pool.preload("b").await.unwrap();
    settle(&pool).await;
    assert_eq!(state(&pool, "huge"), None);
    assert!(pool.status().host_bytes <= 250 && fake_host_bytes() == pool.status().host_bytes);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_moves_unload_on_offload_and_stay_warm_on_restore() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let loader = Loader::new(&[("a", 100), ("b", 100)]);
    let pool = Pool::with_parts(config(1, 1000), registry(&["a", "b"]), loader.clone(), FakeDevice::new(1 << 30));
    pool.preload("a").await.unwrap();
    loader.fake("a").fail_moves(true);
    pool.preload("b").await.unwrap(); // a's offload fails: unloaded instead
    settle(&pool).await;
    assert_eq!(state(&pool, "a"), None);
    assert_eq!((pool.stats().offload_failures, pool.stats().evictions.capacity), (1, 1), "the failed offload counts once");

    pool.preload("a").await.unwrap(); // b goes warm
    settle(&pool).await;
    loader.fake("b").fail_moves(true);
    match pool.get("b").await {
        Err(PoolError::Load { name, .. }) => assert_eq!(name, "b"),
        other => panic!("expected the restore's error, got {:?}", other.map(|_| ())),
    }
    settle(&pool).await;
    assert_eq!(state(&pool, "b"), Some(ModelState::Warm), "a failed restore leaves the model warm");
    loader.fake("b").fail_moves(false);
    drop(pool.get("b").await.unwrap());
    assert_eq!(pool.stats().restore_failures, 1);
    assert!(actions(&pool).iter().any(|e| e.0 == "b" && e.1 == PoolAction::RestoreFailed));
    pool.close().await;
    assert_eq!((live_fakes(), fake_host_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_offloads_idle_models_at_high_and_unloads_at_critical_never_leased_ones() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let gib = 1u64 << 30;
    let device = FakeDevice::new(100 * gib);
    let loader = Loader::new(&[("a", 10 * gib), ("b", 10 * gib), ("c", 10 * gib), ("d", 10 * gib)]);
    let pool = Pool::with_parts(config(4, 1000 * gib), registry(&["a", "b", "c", "d"]), loader, device.clone());
    for n in ["a", "b", "c", "d"] {
        pool.preload(n).await.unwrap();
    }
    let leased = pool.get("a").await.unwrap(); // a is the oldest, but leased

    device.set_used(50 * gib);
    assert_eq!(pool.status().pressure[0].level, PressureLevel::Low);
    assert!(pool.relieve_pressure().await.is_empty(), "low: nothing moves");
    device.set_used(80 * gib);
    assert_eq!(pool.status().pressure[0].level, PressureLevel::Moderate);
    assert!(pool.relieve_pressure().await.is_empty(), "moderate: nothing moves");

    // High (92 %): 17 GiB above the moderate threshold (75 %): two idle models go warm, least
    // recently used first, never the leased one.
    device.set_used(92 * gib);
    assert_eq!(pool.status().pressure[0].level, PressureLevel::High);
    let moved = pool.relieve_pressure().await;
    assert_eq!(moved, ["b", "c"]);
    settle(&pool).await;
    assert_eq!(state(&pool, "a"), Some(ModelState::Ready));
    assert_eq!((state(&pool, "b"), state(&pool, "c")), (Some(ModelState::Warm), Some(ModelState::Warm)));

    // Critical: the last idle model on the device is unloaded.
    device.set_used(98 * gib);
    assert_eq!(pool.relieve_pressure().await, ["d"]);
    settle(&pool).await;
    assert_eq!((state(&pool, "a"), state(&pool, "d")), (Some(ModelState::Ready), None));
    assert!(leased.is_ready());
    let p = pool.stats().evictions.pressure;
    assert_eq!(p, 3);
    let mut causes: Vec<_> = actions(&pool).into_iter().filter(|e| e.2 == Some(EvictionCause::Pressure)).map(|e| (e.0, e.1)).collect();
    // b and c move concurrently: their events come in either order.
    causes[..2].sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        causes,
        [("b".to_string(), PoolAction::Offloaded), ("c".to_string(), PoolAction::Offloaded), ("d".to_string(), PoolAction::Unloaded)]
    );
    drop(leased);
    pool.close().await;
}

#[tokio::test(start_paused = true)]
async fn warm_models_expire_after_their_ttl_and_unload_removes_them() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let loader = Loader::new(&[("a", 100), ("b", 100), ("c", 100)]);
    let cfg = config(1, 1000).with_default_ttl(Some(Duration::from_secs(10)));
    let pool = Pool::with_parts(cfg, registry(&["a", "b", "c"]), loader, FakeDevice::new(1 << 30));
    pool.preload("a").await.unwrap();
    pool.preload("b").await.unwrap();
    pool.preload("c").await.unwrap();
    settle(&pool).await;
    assert_eq!(pool.unload("b", UnloadMode::FailIfLeased).await.unwrap().map(|r| r.model_weight_bytes), Some(100));
    tokio::time::advance(Duration::from_secs(11)).await;
    let mut expired = pool.evict_expired().await;
    expired.sort();
    assert_eq!(expired, ["a", "c"], "the warm a and the idle c");
    assert!(pool.status().models.is_empty());
    assert_eq!((live_fakes(), fake_host_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_offload_moves_idle_models_and_says_why_it_cannot() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let loader = Loader::new(&[("a", 100), ("b", 100), ("cpu-c", 10)]);
    let pool = Pool::with_parts(config(3, 150), registry(&["a", "b", "cpu-c"]), loader, FakeDevice::new(1 << 30));
    for n in ["a", "b", "cpu-c"] {
        pool.preload(n).await.unwrap();
    }
    assert!(pool.offload("a").await.unwrap());
    assert_eq!(state(&pool, "a"), Some(ModelState::Warm));
    assert!(!pool.offload("a").await.unwrap(), "warm already");
    assert!(!pool.offload("nobody").await.unwrap(), "not in the pool");
    let reason = |r: Result<bool, PoolError>| match r {
        Err(PoolError::CannotOffload { reason, .. }) => reason,
        other => panic!("expected CannotOffload, got {other:?}"),
    };
    let lease = pool.get("b").await.unwrap();
    assert!(reason(pool.offload("b").await).contains("lease"));
    drop(lease);
    assert!(reason(pool.offload("cpu-c").await).contains("CPU"));
    // b (100) next to the warm a (100) overruns the 150-byte host budget: a is unloaded.
    assert!(pool.offload("b").await.unwrap());
    assert_eq!((state(&pool, "a"), state(&pool, "b")), (None, Some(ModelState::Warm)));
    assert_eq!(pool.stats().evictions.explicit, 2, "a and b, offloaded on request");
    assert_eq!(pool.stats().evictions.memory, 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_warm_model_never_unloads_its_own_copy_to_make_room() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    // One slot, host room for one model: switching between a and b restores each time the
    // model asked for, unloading the other (no room to keep it warm), never reloading.
    let loader = Loader::new(&[("a", 100), ("b", 100)]);
    let pool = Pool::with_parts(config(1, 100), registry(&["a", "b"]), loader.clone(), FakeDevice::new(1 << 30));
    pool.preload("a").await.unwrap();
    pool.preload("b").await.unwrap(); // a goes warm
    settle(&pool).await;
    pool.preload("a").await.unwrap(); // a restores; b cannot go warm beside it: unloaded
    settle(&pool).await;
    assert_eq!((state(&pool, "a"), state(&pool, "b")), (Some(ModelState::Ready), None));
    let stats = pool.stats();
    assert_eq!((stats.loads, stats.restores), (2, 1), "a came back from the warm tier, not from disk");
    assert_eq!(loader.made.lock().unwrap().len(), 2);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_warm_models_are_not_unloaded_for_host_room() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = serial().await;
    let loader = Loader::new(&[("p", 100), ("a", 100), ("b", 100)]);
    let reg = registry(&["a", "b"]).with_settings("p", ModelSpec::new("fake/p"), ModelSettings::default().with_pinned(true));
    let pool = Pool::with_parts(config(2, 150), reg, loader, FakeDevice::new(1 << 30));
    pool.preload("p").await.unwrap();
    assert!(pool.offload("p").await.unwrap(), "a pinned model goes warm on request");
    pool.preload("a").await.unwrap();
    pool.preload("b").await.unwrap();
    pool.offload("a").await.expect_err("no host room beside the pinned warm p");
    assert_eq!(state(&pool, "p"), Some(ModelState::Warm));
    pool.close().await;
}

// ---- The state-machine test ----
//
// Random sequences of get, drop, preload, unload, memory-pressure checks and failing moves, each
// step checked against a reference model of the warm tier written as plainly as possible
// (`Reference`): which models are on the device, warm or gone, their leases and LRU order, what
// each call returns, which models go warm or are unloaded and why, and every counter. A pool that
// refused everything, never offloaded or never restored disagrees with it at the first step that
// should have worked; the test also requires that the cases as a whole leased, offloaded,
// restored, failed moves, ran out of room and relieved pressure, so the reference cannot have
// been agreeing with a pool that did nothing.
//
// Each case runs on one thread on tokio's paused clock, as `pool_state_machine.rs` does: waits for
// room end at once and the pool's tasks run in a fixed order, so every step's outcome is exact.
// The fake driver's figure does not move when the pool frees memory (a real device's does), so
// the device is used only for the length of each pressure check; the free-memory part of a get's
// plan is left to `state.rs`'s unit tests.

const NAMES: [&str; 5] = ["m0", "m1", "m2", "m3", "m4"];
/// The fake device's size: a pressure check at `pct` percent uses `pct * 10` bytes of it.
const DEVICE_BYTES: u64 = 1000;
/// How long a get waits for room (on the paused clock: no real time passes).
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    Get(usize),
    Drop(usize),
    Preload(usize),
    Unload(usize),
    /// Device use in percent, for one pressure check.
    Pressure(u64),
    /// Make the model's moves fail (or work again).
    FailMoves(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..NAMES.len()).prop_map(Op::Get),
        4 => (0usize..16).prop_map(Op::Drop),
        3 => (0..NAMES.len()).prop_map(Op::Preload),
        1 => (0..NAMES.len()).prop_map(Op::Unload),
        2 => (0u64..=100).prop_map(Op::Pressure),
        1 => ((0..NAMES.len()), any::<bool>()).prop_map(|(m, f)| Op::FailMoves(m, f)),
    ]
}

/// Where a model is, in the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Device { leases: usize },
    Warm,
}

#[derive(Debug, Clone)]
struct RefModel {
    at: At,
    /// LRU clock value of its last lease, return, load or restore.
    tick: u64,
    /// Its fake was told to fail moves (a fresh load makes a fresh fake).
    fail_moves: bool,
}

/// The pool's counters that the reference predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    hits: u64,
    misses: u64,
    loads: u64,
    offloads: u64,
    offload_failures: u64,
    restores: u64,
    restore_failures: u64,
    exhausted: u64,
    capacity: u64,
    memory: u64,
    pressure: u64,
    explicit: u64,
}

impl Counts {
    fn of(s: &PoolStats) -> Self {
        let e = s.evictions;
        Counts {
            hits: s.hits,
            misses: s.misses,
            loads: s.loads,
            offloads: s.offloads,
            offload_failures: s.offload_failures,
            restores: s.restores,
            restore_failures: s.restore_failures,
            exhausted: s.exhausted,
            capacity: e.capacity,
            memory: e.memory,
            pressure: e.pressure,
            explicit: e.explicit,
        }
    }
}

/// What a `get` or `preload` should return.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Ok,
    Exhausted,
    TooLarge,
    RestoreFailed,
}

/// A release decided under the pool's lock and done on a task: an unload, or an offload (which
/// unloads the model instead when its fake fails moves).
#[derive(Debug)]
enum Job {
    Unload(usize, EvictionCause),
    Offload(usize, EvictionCause),
}

impl Job {
    fn model(&self) -> usize {
        match *self {
            Job::Unload(m, _) | Job::Offload(m, _) => m,
        }
    }
}

/// What the pool should do, written as plainly as possible.
#[derive(Debug)]
struct Reference {
    max: usize,
    host_budget: u64,
    budget: Option<u64>,
    sizes: [u64; 5],
    clock: u64,
    models: BTreeMap<usize, RefModel>,
    counts: Counts,
    /// Successful gets and preloads, and gets refused as too large: progress, not pool counters.
    leases: u64,
    too_large: u64,
}

impl Reference {
    fn new(max: usize, host_budget: u64, budget: Option<u64>, sizes: [u64; 5]) -> Self {
        Reference { max, host_budget, budget, sizes, clock: 0, models: BTreeMap::new(), counts: Counts::default(), leases: 0, too_large: 0 }
    }

    fn touch(&mut self, m: usize) {
        self.clock += 1;
        self.models.get_mut(&m).expect("touched model is in the reference").tick = self.clock;
    }

    /// The models `keep` accepts, least recently used first.
    fn lru(&self, keep: impl Fn(&RefModel) -> bool) -> Vec<usize> {
        let mut v: Vec<(u64, usize)> = self.models.iter().filter(|(_, r)| keep(r)).map(|(m, r)| (r.tick, *m)).collect();
        v.sort();
        v.into_iter().map(|(_, m)| m).collect()
    }

    fn idle_on_device(r: &RefModel) -> bool {
        r.at == At::Device { leases: 0 }
    }

    /// Models on the device and their bytes.
    fn on_device(&self) -> (usize, u64) {
        let on: Vec<usize> = self.models.iter().filter(|(_, r)| matches!(r.at, At::Device { .. })).map(|(m, _)| *m).collect();
        (on.len(), on.iter().map(|m| self.sizes[*m]).sum())
    }

    fn warm_bytes(&self) -> u64 {
        self.models.iter().filter(|(_, r)| r.at == At::Warm).map(|(m, _)| self.sizes[*m]).sum()
    }

    /// Whether the idle `m` may go warm: `Some(warm models to unload first)`, least recently used
    /// first and never `keep` (a warm model about to be restored), or `None` when it is larger
    /// than the host budget or there is no room even then. Offloads decided earlier in the same
    /// step (`jobs`) hold their host bytes already.
    fn host_room(&self, m: usize, keep: Option<usize>, jobs: &[Job]) -> Option<Vec<usize>> {
        let room = self.host_budget.checked_sub(self.sizes[m])?;
        let offloading: u64 = jobs.iter().filter(|j| matches!(j, Job::Offload(..))).map(|j| self.sizes[j.model()]).sum();
        let mut used = self.warm_bytes() + offloading;
        let mut victims = Vec::new();
        for w in self.lru(|r| r.at == At::Warm) {
            if used <= room {
                break;
            }
            if Some(w) != keep {
                used -= self.sizes[w];
                victims.push(w);
            }
        }
        (used <= room).then_some(victims)
    }

    /// Takes the idle `m` off the device: warm when the host budget has (or can be given) room,
    /// else unloaded.
    fn demote(&mut self, m: usize, cause: EvictionCause, keep: Option<usize>, jobs: &mut Vec<Job>) {
        match self.host_room(m, keep, jobs) {
            Some(victims) => {
                for w in victims {
                    self.models.remove(&w);
                    jobs.push(Job::Unload(w, EvictionCause::Memory));
                }
                jobs.push(Job::Offload(m, cause));
            }
            None => {
                self.models.remove(&m);
                jobs.push(Job::Unload(m, cause));
            }
        }
    }

    /// The pool's tasks do the jobs: each is one eviction of its cause.
    fn run(&mut self, jobs: &[Job]) {
        for job in jobs {
            let (Job::Unload(_, cause) | Job::Offload(_, cause)) = *job;
            match cause {
                EvictionCause::Capacity => self.counts.capacity += 1,
                EvictionCause::Memory => self.counts.memory += 1,
                EvictionCause::Pressure => self.counts.pressure += 1,
                EvictionCause::Explicit => self.counts.explicit += 1,
                other => panic!("the reference never evicts for {other:?}"),
            }
            if let Job::Offload(m, _) = *job {
                if self.models[&m].fail_moves {
                    self.counts.offload_failures += 1;
                    self.models.remove(&m);
                } else {
                    self.counts.offloads += 1;
                    self.models.get_mut(&m).expect("offloaded model").at = At::Warm;
                }
            }
        }
    }

    fn get(&mut self, m: usize) -> Expect {
        let expect = self.plan_get(m);
        match expect {
            Expect::Ok => self.leases += 1,
            Expect::TooLarge => self.too_large += 1,
            _ => {}
        }
        expect
    }

    fn plan_get(&mut self, m: usize) -> Expect {
        if let Some(RefModel { at: At::Device { leases }, .. }) = self.models.get_mut(&m) {
            *leases += 1;
            self.counts.hits += 1;
            self.touch(m);
            return Expect::Ok;
        }
        let warm = self.models.contains_key(&m);
        // What the plan counts for it: its warm copy's size, or under a memory budget its
        // (exact) size hint; nothing otherwise.
        let est = if warm || self.budget.is_some() { self.sizes[m] } else { 0 };
        if self.budget.is_some_and(|b| est > b) {
            return Expect::TooLarge;
        }
        loop {
            let (resident, used) = self.on_device();
            let mut need_slots = (resident + 1).saturating_sub(self.max);
            let mut need_bytes = self.budget.map_or(0, |b| (used + est).saturating_sub(b));
            if need_slots == 0 && need_bytes == 0 {
                break;
            }
            let mut victims = Vec::new();
            for v in self.lru(Self::idle_on_device) {
                if need_slots == 0 && need_bytes == 0 {
                    break;
                }
                let cause = if need_slots > 0 { EvictionCause::Capacity } else { EvictionCause::Memory };
                need_slots = need_slots.saturating_sub(1);
                need_bytes = need_bytes.saturating_sub(self.sizes[v]);
                victims.push((v, cause));
            }
            if need_slots > 0 || need_bytes > 0 {
                // Evicting what is idle would not make room: the pool waits for leases, which
                // nobody returns here, and gives up.
                self.counts.exhausted += 1;
                return Expect::Exhausted;
            }
            let mut jobs = Vec::new();
            for (v, cause) in victims {
                self.demote(v, cause, Some(m), &mut jobs);
            }
            self.run(&jobs);
        }
        self.counts.misses += 1;
        if warm {
            self.touch(m);
            if self.models[&m].fail_moves {
                // The restore failed: the model stays warm.
                self.counts.restore_failures += 1;
                return Expect::RestoreFailed;
            }
            self.models.get_mut(&m).expect("restored model").at = At::Device { leases: 1 };
            self.counts.restores += 1;
        } else {
            self.models.insert(m, RefModel { at: At::Device { leases: 1 }, tick: 0, fail_moves: false });
            self.touch(m);
            self.counts.loads += 1;
        }
        Expect::Ok
    }

    fn release(&mut self, m: usize) {
        match &mut self.models.get_mut(&m).expect("leased model").at {
            At::Device { leases } => *leases -= 1,
            At::Warm => panic!("leased model {m} is warm in the reference"),
        }
        self.touch(m);
    }

    /// `unload(FailIfLeased)`: `Ok(true)` released, `Ok(false)` not in the pool, `Err(leases)`.
    fn unload(&mut self, m: usize) -> Result<bool, usize> {
        match self.models.get(&m).map(|r| r.at) {
            None => Ok(false),
            Some(At::Device { leases }) if leases > 0 => Err(leases),
            Some(_) => {
                self.models.remove(&m);
                self.counts.explicit += 1;
                Ok(true)
            }
        }
    }

    /// One pressure check with `used` bytes of the device in use: the models it moves, in the
    /// pool's order (warm models unloaded for host room before the model that needed it).
    fn pressure(&mut self, used: u64) -> Vec<usize> {
        let thresholds = Pressure::default();
        let level = thresholds.level(DEVICE_BYTES - used, DEVICE_BYTES);
        let mut need = used.saturating_sub((thresholds.moderate * DEVICE_BYTES as f64) as u64);
        if level < PressureLevel::High || need == 0 {
            return Vec::new();
        }
        let mut jobs = Vec::new();
        for v in self.lru(Self::idle_on_device) {
            if need == 0 {
                break;
            }
            if level == PressureLevel::Critical {
                self.models.remove(&v);
                jobs.push(Job::Unload(v, EvictionCause::Pressure));
            } else if self.host_room(v, None, &jobs).is_some() {
                self.demote(v, EvictionCause::Pressure, None, &mut jobs);
            } else {
                // High, but it cannot go warm: unloading waits for the critical level.
                continue;
            }
            need = need.saturating_sub(self.sizes[v]);
        }
        self.run(&jobs);
        jobs.iter().map(Job::model).collect()
    }
}

/// A get's or preload's result against the reference's; the value when both succeeded.
fn outcome<T>(op: &Op, expected: Expect, got: Result<T, PoolError>) -> Result<Option<T>, TestCaseError> {
    let agrees = matches!(
        (&expected, &got),
        (Expect::Ok, Ok(_))
            | (Expect::Exhausted, Err(PoolError::Exhausted { .. }))
            | (Expect::TooLarge, Err(PoolError::ModelTooLarge { .. }))
            | (Expect::RestoreFailed, Err(PoolError::Load { .. }))
    );
    prop_assert!(agrees, "{:?}: expected {:?}, got {:?}", op, expected, got.as_ref().map(|_| ()));
    Ok(got.ok())
}

/// The pool after a step against the reference, and the invariants that hold whatever the step.
fn check(pool: &Pool, r: &Reference, held: &[(usize, Lease)], budget: Option<u64>) -> Result<(), TestCaseError> {
    let st = pool.status();
    let got: Vec<(String, ModelState, usize)> = st.models.iter().map(|m| (m.name.clone(), m.state, m.leases)).collect();
    let want: Vec<(String, ModelState, usize)> = r
        .lru(|_| true)
        .into_iter()
        .map(|m| match r.models[&m].at {
            At::Device { leases } => (NAMES[m].to_string(), ModelState::Ready, leases),
            At::Warm => (NAMES[m].to_string(), ModelState::Warm, 0),
        })
        .collect();
    prop_assert_eq!(got, want, "models, their states, leases or LRU order differ from the reference");
    let stats = pool.stats();
    prop_assert_eq!(Counts::of(&stats), r.counts, "counters differ from the reference");
    prop_assert_eq!((stats.load_failures, stats.evictions.ttl), (0, 0));
    prop_assert_eq!((st.weight_bytes, st.host_bytes), (r.on_device().1, r.warm_bytes()), "device and host bytes");

    // The invariants, whatever the reference says.
    let resident = st.models.iter().filter(|m| m.state != ModelState::Warm).count();
    prop_assert!(resident <= r.max, "{} models on the device, max {}", resident, r.max);
    prop_assert!(st.host_bytes <= r.host_budget, "warm tier holds {} of {} host bytes", st.host_bytes, r.host_budget);
    prop_assert_eq!(st.host_bytes, fake_host_bytes(), "the pool's host bytes are the fakes'");
    if let Some(b) = budget {
        prop_assert!(st.weight_bytes <= b, "{} device bytes over the budget {}", st.weight_bytes, b);
    }
    for (m, lease) in held {
        prop_assert_eq!(st.model(NAMES[*m]).map(|s| s.state), Some(ModelState::Ready), "leased {} moved", NAMES[*m]);
        prop_assert_eq!(lease.offload_for("residency").unwrap().residency(), Some(embed_core::Residency::Device));
    }
    prop_assert_eq!(live_fakes(), st.models.len(), "each model in the pool holds one service, warm ones too");
    Ok(())
}

async fn run_case(max: usize, host_budget: u64, budget: Option<u64>, sizes: [u64; 5], ops: Vec<Op>) -> Result<Reference, TestCaseError> {
    let sized: Vec<(&str, u64)> = NAMES.iter().copied().zip(sizes).collect();
    let loader = Loader::new(&sized);
    let device = FakeDevice::new(DEVICE_BYTES);
    let cfg = config(max, host_budget).with_memory_budget(budget).with_timeouts(PoolTimeouts { wait: WAIT, ..PoolTimeouts::default() });
    // Exact size hints: the memory budget is enforced on estimates, and these are exact.
    let registry = sized.iter().fold(ModelRegistry::new(), |r, (n, b)| {
        r.with_settings(*n, ModelSpec::new(format!("fake/{n}")), ModelSettings::default().with_weight_bytes_hint(*b))
    });
    let pool = Pool::with_parts(cfg, registry, loader.clone(), device.clone());
    let mut r = Reference::new(max, host_budget, budget, sizes);
    let mut held: Vec<(usize, Lease)> = Vec::new();
    for op in &ops {
        match *op {
            Op::Get(m) => {
                let expected = r.get(m);
                if let Some(lease) = outcome(op, expected, pool.get(NAMES[m]).await)? {
                    // A lease always finds its model on the device.
                    prop_assert_eq!(lease.offload_for("residency").unwrap().residency(), Some(embed_core::Residency::Device), "{:?}", op);
                    prop_assert!(lease.embed_texts(&["t".into()], &EmbedOptions::default()).await.is_ok());
                    held.push((m, lease));
                }
            }
            Op::Drop(i) => {
                if !held.is_empty() {
                    let (m, lease) = held.remove(i % held.len());
                    drop(lease);
                    r.release(m);
                }
            }
            Op::Preload(m) => {
                // A preload is a get whose lease is returned at once.
                let expected = r.get(m);
                if outcome(op, expected, pool.preload(NAMES[m]).await)?.is_some() {
                    r.release(m);
                }
            }
            Op::Unload(m) => {
                let got = pool.unload(NAMES[m], UnloadMode::FailIfLeased).await;
                let agrees = match r.unload(m) {
                    Ok(true) => matches!(got, Ok(Some(_))),
                    Ok(false) => matches!(got, Ok(None)),
                    Err(n) => matches!(got, Err(PoolError::Leased { leases, .. }) if leases == n),
                };
                prop_assert!(agrees, "{:?}: got {:?}", op, got.map(|r| r.is_some()));
            }
            Op::Pressure(pct) => {
                device.set_used(pct * DEVICE_BYTES / 100);
                let moved = pool.relieve_pressure().await;
                device.set_used(0);
                let expected: Vec<&str> = r.pressure(pct * DEVICE_BYTES / 100).into_iter().map(|m| NAMES[m]).collect();
                prop_assert_eq!(moved, expected, "{:?}: models moved", op);
            }
            Op::FailMoves(m, fail) => {
                if let Some((_, f)) = loader.made.lock().unwrap().iter().rev().find(|(n, _)| n == NAMES[m]) {
                    f.fail_moves(fail);
                }
                if let Some(x) = r.models.get_mut(&m) {
                    x.fail_moves = fail;
                }
            }
        }
        settle(&pool).await;
        check(&pool, &r, &held, budget)?;
    }
    // Nobody was ever asked to work while offloaded: the pool restored before leasing.
    for f in loader.all() {
        prop_assert_eq!(f.moves().2, 0);
    }
    // The history has every load, offload, restore and release, and agrees with the counters.
    let h = pool.history();
    let count = |a: PoolAction| h.iter().filter(|e| e.action == a).count() as u64;
    let stats = pool.stats();
    prop_assert_eq!(count(PoolAction::Loaded), stats.loads);
    prop_assert_eq!(count(PoolAction::Offloaded), stats.offloads);
    prop_assert_eq!(count(PoolAction::Restored), stats.restores);
    prop_assert_eq!(count(PoolAction::RestoreFailed), stats.restore_failures);
    prop_assert_eq!(count(PoolAction::Unloaded) + stats.offloads, stats.evictions.total());
    held.clear();
    pool.close().await;
    prop_assert_eq!((live_fakes(), fake_host_bytes()), (0, 0));
    Ok(r)
}

#[test]
fn warm_tier_keeps_its_invariants_under_random_sequences() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial_blocking();
    const CASES: u32 = 1000;
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let strategy = (
        1usize..=3,
        0u64..=400,
        prop_oneof![Just(None), (100u64..=400).prop_map(Some)],
        proptest::array::uniform5(1u64..=150),
        proptest::collection::vec(op(), 1..40),
    );
    // What the cases did, summed.
    let total = Mutex::new((Counts::default(), 0u64, 0u64));
    runner
        .run(&strategy, |(max, host, budget, sizes, ops)| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            let r = rt.block_on(run_case(max, host, budget, sizes, ops))?;
            let mut t = total.lock().unwrap();
            let c = &mut t.0;
            for (sum, n) in [
                (&mut c.offloads, r.counts.offloads),
                (&mut c.offload_failures, r.counts.offload_failures),
                (&mut c.restores, r.counts.restores),
                (&mut c.restore_failures, r.counts.restore_failures),
                (&mut c.exhausted, r.counts.exhausted),
                (&mut c.capacity, r.counts.capacity),
                (&mut c.memory, r.counts.memory),
                (&mut c.pressure, r.counts.pressure),
                (&mut c.explicit, r.counts.explicit),
            ] {
                *sum += n;
            }
            t.1 += r.leases;
            t.2 += r.too_large;
            Ok(())
        })
        .unwrap();
    // Every kind of step the invariants are about happened, and the pool did what the
    // reference said each time.
    let (c, leases, too_large) = total.into_inner().unwrap();
    println!("{CASES} cases: {leases} leases, {too_large} refused as too large, {c:?}");
    for (what, n) in [
        ("successful gets and preloads", leases),
        ("gets refused as larger than the memory budget", too_large),
        ("offloads", c.offloads),
        ("failed offloads", c.offload_failures),
        ("restores", c.restores),
        ("failed restores", c.restore_failures),
        ("gets that found no room", c.exhausted),
        ("capacity evictions", c.capacity),
        ("memory evictions (budget or host room)", c.memory),
        ("pressure evictions", c.pressure),
        ("explicit unloads", c.explicit),
    ] {
        assert!(n > 0, "no {what} in {CASES} cases: the sequences did not exercise the warm tier");
    }
}
