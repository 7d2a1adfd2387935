//! CUDA's figures and cache control, from libtorch's caching allocator through the shim
//! (`shim/memory.cpp`), since tch exposes none of them.

use std::os::raw::{c_char, c_int};

use crate::ffi::{RawStats, embed_accel_available, embed_accel_device_stats, embed_accel_empty_cache, embed_accel_empty_host_cache, embed_accel_host_stats, embed_accel_memory_info, embed_accel_synchronize};
use crate::{Error, Result};

fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    crate::ffi::status(f).map_err(|e| Error::Memory(e.to_string()))
}

/// Caching-allocator statistics of one CUDA device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CudaMemoryStats {
    /// Bytes in live tensors.
    pub allocated: u64,
    /// Peak of `allocated` since process start.
    pub allocated_peak: u64,
    /// Bytes the caching allocator holds from the driver (allocated + cached).
    pub reserved: u64,
    /// Highest `reserved` since the allocator's peak statistics were last reset.
    pub reserved_peak: u64,
    /// Out-of-memory events the allocator has seen.
    pub num_ooms: u64,
    /// Free bytes on the device as the driver reports them.
    pub device_free: u64,
    /// Total bytes on the device.
    pub device_total: u64,
}

/// True when libtorch has a usable accelerator (CUDA here).
pub fn accelerator_available() -> bool {
    // SAFETY: no arguments; the shim catches every C++ exception.
    unsafe { embed_accel_available() == 1 }
}

/// Allocator and driver figures for CUDA device `index`.
pub fn cuda_memory(index: usize) -> Result<CudaMemoryStats> {
    if !accelerator_available() {
        return Err(Error::Memory("no CUDA device is available".into()));
    }
    let dev = index as c_int;
    let mut raw = RawStats::default();
    // SAFETY: `raw` is a valid out-pointer of the layout the shim writes.
    let stats = |raw: &mut RawStats| call(|e, n| unsafe { embed_accel_device_stats(dev, raw, e, n) });
    if stats(&mut raw).is_err() {
        // The caching allocator answers only once CUDA is initialised on the device ("Invalid
        // device argument" before that). Initialise it with a one-element tensor and ask again.
        if index >= crate::cuda_device_count() {
            return Err(Error::Memory(format!("cuda:{index} does not exist")));
        }
        drop(tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cuda(index))));
        stats(&mut raw)?;
    }
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: valid out-pointers.
    call(|e, n| unsafe { embed_accel_memory_info(dev, &mut free, &mut total, e, n) })?;
    let u = |v: i64| v.max(0) as u64;
    Ok(CudaMemoryStats {
        allocated: u(raw.allocated_current),
        allocated_peak: u(raw.allocated_peak),
        reserved: u(raw.reserved_current),
        reserved_peak: u(raw.reserved_peak),
        num_ooms: u(raw.num_ooms),
        device_free: free,
        device_total: total,
    })
}

/// Waits for all work on CUDA device `index` to finish.
pub fn cuda_synchronize(index: usize) -> Result<()> {
    // SAFETY: the shim catches every C++ exception.
    call(|e, n| unsafe { embed_accel_synchronize(index as c_int, e, n) })
}

/// Returns the caching allocator's unused blocks to the driver. A no-op without an accelerator.
pub fn empty_cache() -> Result<()> {
    if !accelerator_available() {
        return Ok(());
    }
    // SAFETY: the shim catches every C++ exception.
    call(|e, n| unsafe { embed_accel_empty_cache(e, n) })
}

/// Returns the pinned host blocks that libtorch's CUDA host allocator keeps cached (CUDA input
/// uploads are staged in pinned memory) to the driver. A no-op without an accelerator.
pub fn empty_pinned_host_cache() -> Result<()> {
    if !accelerator_available() {
        return Ok(());
    }
    // SAFETY: the shim catches every C++ exception.
    call(|e, n| unsafe { embed_accel_empty_host_cache(e, n) })
}

/// libtorch's CUDA pinned host memory: `(active, held)` bytes, those in blocks handed out now
/// and those taken from the driver (handed out or cached; [`empty_pinned_host_cache`] gives
/// the cached ones back). Offloaded models' host copies live there. An error without an
/// accelerator.
pub fn pinned_host_memory() -> Result<(u64, u64)> {
    if !accelerator_available() {
        return Err(Error::Memory("no CUDA device: no pinned host allocator".into()));
    }
    let (mut active, mut held) = (0i64, 0i64);
    call(|e, n| unsafe { embed_accel_host_stats(&mut active, &mut held, e, n) })?;
    Ok((active.max(0) as u64, held.max(0) as u64))
}
