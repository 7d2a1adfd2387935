//! Memory probes, baselines and diffs for leak assertions.

use std::time::{Duration, Instant};

pub use embed_core::memory::{
    accelerator_available, cpu_allocator_in_use_bytes, cuda_memory, live_models, live_weight_bytes, model_threads,
    process_resident_bytes, trim_cpu_heap, CudaMemoryStats, MemorySnapshot,
};

/// The gate of the CUDA tests: they are `#[ignore]`d (CPU CI lists them as ignored instead of
/// reporting passes that checked nothing) and call this first when run with `--ignored`.
///
/// # Panics
/// When libtorch sees no CUDA device: a GPU test that was asked to run must not pass without one.
#[track_caller]
pub fn require_cuda() {
    let requested = std::env::var("EMBED_TEST_CUDA").unwrap_or_default();
    let n = embed_core::cuda_device_count();
    assert!(
        n > 0 && accelerator_available(),
        "this test needs a CUDA GPU and libtorch sees none (EMBED_TEST_CUDA={requested:?}); \
         run GPU tests with `scripts/gpu-check.sh` on a machine with a GPU"
    );
}

/// Returns freed heap to the OS and takes a snapshot, so resident figures reflect live data.
pub fn settled_snapshot() -> MemorySnapshot {
    static FROZEN: std::sync::Once = std::sync::Once::new();
    // Resident memory then follows what is in use (see `freeze_malloc_thresholds`); the first
    // snapshot is a warm-up level, taken before later frees trim the arenas.
    FROZEN.call_once(|| {
        embed_core::memory::freeze_malloc_thresholds(128 << 10);
    });
    trim_cpu_heap();
    MemorySnapshot::now()
}

/// Waits (up to `timeout`) until no model is live and no model worker thread remains, for
/// cleanups that were only signalled (guards dropped without `close`) and loads that were
/// cancelled (their worker may not have counted its model yet). Returns the models still live
/// or still loading: the larger of [`live_models`] and [`model_threads`].
pub fn wait_for_no_live_models(timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = live_models().max(model_threads());
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Relative growth of `after` over `base`, e.g. 0.03 for 3 %.
pub fn growth(base: u64, after: u64) -> f64 {
    (after as f64 - base as f64) / base.max(1) as f64
}

/// Mebibytes, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A memory snapshot to compare later figures against.
#[derive(Debug, Clone, Copy)]
pub struct Baseline(pub MemorySnapshot);

/// Signed differences from a [`Baseline`] (positive: more than at the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryDiff {
    /// Anonymous resident bytes.
    pub resident_anon: i64,
    /// C allocator in-use bytes.
    pub cpu_allocator: i64,
    /// Weight bytes of live models.
    pub model_weights: i64,
    /// Change in the number of loaded models (worker threads alive).
    pub live_models: i64,
    /// CUDA allocated bytes (device 0), when CUDA is available at both points.
    pub cuda_allocated: Option<i64>,
    /// CUDA reserved bytes (device 0).
    pub cuda_reserved: Option<i64>,
}

impl Baseline {
    /// Takes a settled snapshot now.
    pub fn take() -> Self {
        Baseline(settled_snapshot())
    }

    /// Differences between a settled snapshot now and the baseline.
    pub fn diff(&self) -> MemoryDiff {
        let now = settled_snapshot();
        let d = |a: u64, b: u64| a as i64 - b as i64;
        let cuda = |f: fn(&CudaMemoryStats) -> u64| match (now.cuda, self.0.cuda) {
            (Some(n), Some(b)) => Some(d(f(&n), f(&b))),
            _ => None,
        };
        MemoryDiff {
            resident_anon: d(now.resident_anon, self.0.resident_anon),
            cpu_allocator: d(now.cpu_allocator, self.0.cpu_allocator),
            model_weights: d(now.model_weights, self.0.model_weights),
            live_models: now.live_models as i64 - self.0.live_models as i64,
            cuda_allocated: cuda(|c| c.allocated),
            cuda_reserved: cuda(|c| c.reserved),
        }
    }
}

/// Room for C-allocator in-use bytes over a post-warm-up level: max(8 MiB, 3 %). The same rule
/// as `cargo xtask leak-check` (xtask/src/leak_check.rs). This is the precise figure: libtorch's
/// CPU tensors live there, so a leaked weight tensor shows in full.
pub fn allocator_slack(base: u64) -> u64 {
    (8u64 << 20).max(base * 3 / 100)
}

/// Room for anonymous resident memory over a post-warm-up level: max(24 MiB, 5 %), as
/// `cargo xtask leak-check`. RSS also holds thread stacks and per-thread malloc arenas that
/// grow lazily and stay (bounded, not leaks), so it gets an absolute allowance besides the
/// fraction; a leak of model weights still shows in the allocator figure.
pub fn resident_slack(base: u64) -> u64 {
    (24u64 << 20).max(base / 20)
}

/// Asserts that releasing a model freed its weights: C-allocator in-use bytes fell by at least
/// 90 % of `weight_bytes` between `loaded` (model loaded) and `released` (after the release,
/// settled). Proves freeing from the allocator, not from the service's own report: a weight
/// tensor kept alive after cleanup (embed-core's `planted-leak` build) fails it.
///
/// # Panics
/// When less than that was freed.
#[track_caller]
pub fn assert_weights_freed(what: &str, loaded: &MemorySnapshot, released: &MemorySnapshot, weight_bytes: u64) {
    let freed = loaded.cpu_allocator.saturating_sub(released.cpu_allocator);
    assert!(
        freed as f64 >= 0.9 * weight_bytes as f64,
        "{what}: C-allocator in-use bytes fell {:.1} MiB ({:.1} -> {:.1} MiB) across the release of a model with \
         {:.1} MiB of weights: the weights were not freed",
        mib(freed),
        mib(loaded.cpu_allocator),
        mib(released.cpu_allocator),
        mib(weight_bytes)
    );
}

/// Memory levels after each cycle of a load / use / release loop, checked against the level
/// after the first cycle (the warm-up): allocator in-use bytes within [`allocator_slack`],
/// anonymous RSS within [`resident_slack`], no model live.
#[derive(Debug, Default, Clone)]
pub struct CycleLevels {
    /// Settled snapshots, one per recorded cycle.
    pub snapshots: Vec<MemorySnapshot>,
}

impl CycleLevels {
    /// No cycle recorded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a settled snapshot after `cycle` and asserts it against the first one.
    ///
    /// # Panics
    /// When a model is live or a figure exceeds its allowance.
    #[track_caller]
    pub fn record(&mut self, cycle: usize) -> MemorySnapshot {
        let now = settled_snapshot();
        assert_eq!((now.live_models, now.model_weights), (0, 0), "cycle {cycle}: a model is still live");
        if let Some(base) = self.snapshots.first() {
            let grew = |a: u64, b: u64| a.saturating_sub(b);
            let alloc = grew(now.cpu_allocator, base.cpu_allocator);
            assert!(
                alloc <= allocator_slack(base.cpu_allocator),
                "cycle {cycle}: C-allocator in-use bytes {:.1} MiB vs {:.1} MiB after the first cycle (+{:.1} MiB, \
                 allowed {:.1} MiB)",
                mib(now.cpu_allocator),
                mib(base.cpu_allocator),
                mib(alloc),
                mib(allocator_slack(base.cpu_allocator))
            );
            let rss = grew(now.resident_anon, base.resident_anon);
            assert!(
                rss <= resident_slack(base.resident_anon),
                "cycle {cycle}: anonymous resident {:.1} MiB vs {:.1} MiB after the first cycle (+{:.1} MiB, allowed \
                 {:.1} MiB; allocator in use {:.1} -> {:.1} MiB)",
                mib(now.resident_anon),
                mib(base.resident_anon),
                mib(rss),
                mib(resident_slack(base.resident_anon)),
                mib(base.cpu_allocator),
                mib(now.cpu_allocator)
            );
        }
        self.snapshots.push(now);
        now
    }

    /// One line: the allocator and RSS levels per cycle, in MiB.
    pub fn summary(&self) -> String {
        let list = |f: fn(&MemorySnapshot) -> u64| {
            self.snapshots.iter().map(|s| format!("{:.1}", mib(f(s)))).collect::<Vec<_>>().join(" ")
        };
        format!("allocator MiB per cycle: [{}]; anonymous resident MiB: [{}]", list(|s| s.cpu_allocator), list(|s| s.resident_anon))
    }
}
