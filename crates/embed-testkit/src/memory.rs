//! Memory probes, baselines and diffs for leak assertions.

use std::time::{Duration, Instant};

pub use embed_core::memory::{
    accelerator_available, cpu_allocator_in_use_bytes, cuda_memory, live_models, live_weight_bytes,
    process_resident_bytes, trim_cpu_heap, CudaMemoryStats, MemorySnapshot,
};

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
