//! The warm tier and memory pressure against fake services that report a CUDA device and a
//! fake driver's free memory: residency transitions, the host budget, leased models never
//! moved, pressure levels, restore failures, and a random-sequence state-machine test of the
//! invariants (budgets never exceeded, leased models never moved, history complete).
//! `pool_warm_cpu.rs` runs the warm tier with real models on the CPU; `pool_cuda.rs` on a GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use embed_core::{EmbedOptions, EmbeddingService, ModelSpec, ResolvedDevice};
use embed_pool::{
    DeviceMemory, EvictionCause, HostBudget, Lease, ModelLoader, ModelRegistry, ModelSettings, ModelState, Pool, PoolAction,
    PoolConfig, PoolError, PoolTimeouts, Pressure, PressureLevel, UnloadMode, WarmMode, WarmTier,
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

const NAMES: [&str; 5] = ["m0", "m1", "m2", "m3", "m4"];

#[derive(Debug, Clone)]
enum Op {
    Get(usize),
    Drop(usize),
    Preload(usize),
    Unload(usize),
    /// Device use in percent, then one pressure check.
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

async fn run_case(max: usize, host_budget: u64, budget: Option<u64>, sizes: [u64; 5], ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sized: Vec<(&str, u64)> = NAMES.iter().copied().zip(sizes).collect();
    let loader = Loader::new(&sized);
    let device = FakeDevice::new(1000);
    let cfg = config(max, host_budget).with_memory_budget(budget).with_timeouts(PoolTimeouts { wait: Duration::from_millis(50), ..PoolTimeouts::default() });
    // Exact size hints: the memory budget is enforced on estimates, and these are exact.
    let registry = sized.iter().fold(ModelRegistry::new(), |r, (n, b)| {
        r.with_settings(*n, ModelSpec::new(format!("fake/{n}")), ModelSettings::default().with_weight_bytes_hint(*b))
    });
    let pool = Pool::with_parts(cfg, registry, loader.clone(), device.clone());
    let mut held: Vec<(usize, Lease)> = Vec::new();
    for op in ops {
        match op {
            Op::Get(m) => {
                if let Ok(lease) = pool.get(NAMES[m]).await {
                    // A lease always finds its model on the device.
                    prop_assert_eq!(lease.residency(), Some(embed_core::Residency::Device), "{:?}", op);
                    prop_assert!(lease.embed_texts(&["t".into()], &EmbedOptions::default()).await.is_ok());
                    held.push((m, lease));
                }
            }
            Op::Drop(i) => {
                if !held.is_empty() {
                    drop(held.remove(i % held.len()));
                }
            }
            Op::Preload(m) => {
                let _ = pool.preload(NAMES[m]).await;
            }
            Op::Unload(m) => {
                let _ = pool.unload(NAMES[m], UnloadMode::FailIfLeased).await;
            }
            Op::Pressure(pct) => {
                device.set_used(pct * 10);
                pool.relieve_pressure().await;
            }
            Op::FailMoves(m, fail) => {
                if let Some((_, f)) = loader.made.lock().unwrap().iter().rev().find(|(n, _)| n == NAMES[m]) {
                    f.fail_moves(fail);
                }
            }
        }
        settle(&pool).await;
        let st = pool.status();
        let resident = st.models.iter().filter(|m| m.state != ModelState::Warm).count();
        prop_assert!(resident <= max, "{} models on the device, max {}", resident, max);
        prop_assert!(st.host_bytes <= host_budget, "warm tier holds {} of {} host bytes", st.host_bytes, host_budget);
        prop_assert_eq!(st.host_bytes, fake_host_bytes(), "the pool's host bytes are the fakes'");
        if let Some(b) = budget {
            prop_assert!(st.weight_bytes <= b, "{} device bytes over the budget {}", st.weight_bytes, b);
        }
        for (m, lease) in &held {
            prop_assert_eq!(st.model(NAMES[*m]).map(|s| s.state), Some(ModelState::Ready), "leased {} moved", NAMES[*m]);
            prop_assert_eq!(lease.residency(), Some(embed_core::Residency::Device));
        }
        prop_assert_eq!(live_fakes(), st.models.len(), "each model in the pool holds one service, warm ones too");
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
    prop_assert_eq!(count(PoolAction::Unloaded) as u64 + stats.offloads, stats.evictions.total());
    held.clear();
    pool.close().await;
    prop_assert_eq!((live_fakes(), fake_host_bytes()), (0, 0));
    Ok(())
}

#[test]
fn warm_tier_keeps_its_invariants_under_random_sequences() {
    let _s = embed_testkit::serial_blocking();
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let strategy = (
        1usize..=3,
        0u64..=400,
        prop_oneof![Just(None), (100u64..=400).prop_map(Some)],
        proptest::array::uniform5(1u64..=150),
        proptest::collection::vec(op(), 1..40),
    );
    runner
        .run(&strategy, |(max, host, budget, sizes, ops)| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(run_case(max, host, budget, sizes, ops))
        })
        .unwrap();
}
