//! Memory probes, baselines and diffs for leak assertions.

use std::time::{Duration, Instant};

pub use embed_core::memory::{
    accelerator_available, cpu_allocator_in_use_bytes, cuda_memory, live_models, live_weight_bytes,
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
    trim_cpu_heap();
    MemorySnapshot::now()
}

/// Waits (up to `timeout`) until no model is live, for cleanups that were only signalled
/// (guards dropped without `close`). Returns the number still live.
pub fn wait_for_no_live_models(timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = live_models();
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
    /// Live models.
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
