//! Where the pool reads a CUDA device's free memory (for the memory budget and the pressure
//! levels): the driver by default, a fake in tests.

/// Free and total memory of CUDA devices.
pub trait DeviceMemory: Send + Sync + 'static {
    /// `(free, total)` bytes of CUDA device `index`, or `None` when they cannot be read.
    fn free_and_total(&self, index: usize) -> Option<(u64, u64)>;
}

/// The driver's figures (`cudaMemGetInfo` through libtorch), used by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct CudaDriver;

impl DeviceMemory for CudaDriver {
    fn free_and_total(&self, index: usize) -> Option<(u64, u64)> {
        embed_core::memory::cuda_memory(index).ok().map(|m| (m.device_free, m.device_total))
    }
}
