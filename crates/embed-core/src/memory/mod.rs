//! Memory accounting: what the process, the CPU allocator and each CUDA device hold.
//!
//! * `cuda`: CUDA figures from libtorch's caching allocator, through the shim.
//! * `process`: resident memory, the C allocator, the machine's RAM.
//! * `live`: the models this process holds, counted as they load and free.

mod cuda;
mod live;
mod process;

pub use cuda::{accelerator_available, cuda_memory, cuda_synchronize, empty_cache, empty_pinned_host_cache, pinned_host_memory, CudaMemoryStats};
pub(crate) use live::{LiveModel, ModelThread, OffloadedBytes};
pub use live::{live_models, live_weight_bytes, model_threads, offloaded_host_bytes};
pub use process::{
    cpu_allocator_in_use_bytes, freeze_malloc_thresholds, process_anon_resident_bytes, process_resident_bytes, total_ram_bytes, trim_cpu_heap,
};

/// A point-in-time view of the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MemorySnapshot {
    /// Resident set size (total, file-backed library pages included).
    pub resident: u64,
    /// Anonymous resident memory (see [`process_anon_resident_bytes`]).
    pub resident_anon: u64,
    /// C allocator in-use bytes.
    pub cpu_allocator: u64,
    /// Weight bytes of all models currently loaded by this process (see [`live_weight_bytes`]).
    pub model_weights: u64,
    /// Models currently loaded (worker threads alive).
    pub live_models: usize,
    /// CUDA device 0 allocator figures, when CUDA is available.
    pub cuda: Option<CudaMemoryStats>,
}

impl MemorySnapshot {
    /// Takes a snapshot now.
    pub fn now() -> Self {
        MemorySnapshot {
            resident: process_resident_bytes(),
            resident_anon: process_anon_resident_bytes(),
            cpu_allocator: cpu_allocator_in_use_bytes(),
            model_weights: live_weight_bytes(),
            live_models: live_models(),
            cuda: accelerator_available().then(|| cuda_memory(0).ok()).flatten(),
        }
    }
}
