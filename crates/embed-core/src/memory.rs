//! Memory accounting: what the process, the CPU allocator and each CUDA device hold.
//!
//! CUDA figures come from libtorch's caching allocator through a small C++ shim
//! (`shim/accel.cpp`), since tch exposes none of them.

use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{Error, Result};

#[repr(C)]
#[derive(Default)]
struct RawStats {
    allocated_current: i64,
    allocated_peak: i64,
    reserved_current: i64,
    reserved_peak: i64,
    active_current: i64,
    num_ooms: i64,
}

extern "C" {
    fn embed_accel_available() -> c_int;
    fn embed_accel_device_stats(device: c_int, out: *mut RawStats, err: *mut c_char, len: usize) -> c_int;
    fn embed_accel_memory_info(device: c_int, free: *mut u64, total: *mut u64, err: *mut c_char, len: usize)
        -> c_int;
    fn embed_accel_synchronize(device: c_int, err: *mut c_char, len: usize) -> c_int;
    fn embed_accel_empty_cache(err: *mut c_char, len: usize) -> c_int;
    fn embed_accel_empty_host_cache(err: *mut c_char, len: usize) -> c_int;
    fn embed_accel_host_stats(active: *mut i64, allocated: *mut i64, err: *mut c_char, len: usize) -> c_int;
}

fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = [0 as c_char; 512];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        Ok(())
    } else {
        // SAFETY: the shim always NUL-terminates within the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Err(Error::Memory(msg.to_string_lossy().into_owned()))
    }
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

/// Resident set size of this process in bytes (from `/proc/self/statm`).
pub fn process_resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Anonymous resident memory of this process in bytes (`RssAnon` in `/proc/self/status`):
/// heap, stacks and other private data, without the file-backed pages of mapped libraries.
/// This is the figure leak checks compare: touching a new code path in libtorch faults in
/// more of its (shared, file-backed) code pages and raises total RSS without any leak.
pub fn process_anon_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Bytes in use in the C allocator (glibc `mallinfo2`: arena + mmapped in-use bytes).
/// libtorch's CPU tensors are allocated there.
pub fn cpu_allocator_in_use_bytes() -> u64 {
    // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as u64
}

/// Returns freed heap pages to the OS where glibc can (`malloc_trim(0)`), so that resident
/// memory reflects what is really in use.
pub fn trim_cpu_heap() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freezes glibc's mmap and trim thresholds at `bytes` (`mallopt(M_MMAP_THRESHOLD)` and
/// `M_TRIM_THRESHOLD`), so that memory the process frees goes back to the OS at once and
/// resident memory follows what is in use. Returns false where glibc refused.
///
/// By default glibc raises both thresholds as large blocks are freed (up to 32 and 64 MiB), and
/// the top of each thread's arena then keeps that much freed memory resident, which
/// [`trim_cpu_heap`] does not return for arenas other than the main one. Measured in
/// `cargo xtask leak-check`'s core layer (MiniLM loaded, moved and released per cycle; AMD
/// EPYC, 2 cores): anonymous RSS after each cycle moved between 185 and 221 MiB with the
/// default, stayed at 185 MiB in 27 of 27 samples with thresholds frozen at 128 KiB, with
/// the allocator's in-use bytes flat either way. The price is an mmap and page faults for
/// every larger allocation, so this is for measuring processes (leak checks, memory tests),
/// not a default for serving.
pub fn freeze_malloc_thresholds(bytes: usize) -> bool {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes plain integers and has no preconditions.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, v) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, v) == 1 }
}

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

/// The machine's RAM (`MemTotal` of `/proc/meminfo`); 0 where it cannot be read.
pub fn total_ram_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

static LIVE_MODELS: AtomicUsize = AtomicUsize::new(0);
static OFFLOADED_HOST_BYTES: AtomicU64 = AtomicU64::new(0);

/// Host bytes held by the copies of offloaded models' weights (process-wide; see
/// [`crate::EmbeddingService::offload`]). Pinned memory on CUDA. Zero once every offloaded
/// model is restored or released.
pub fn offloaded_host_bytes() -> u64 {
    OFFLOADED_HOST_BYTES.load(Ordering::SeqCst)
}

/// Counts the host bytes of an offloaded copy until dropped.
pub(crate) struct OffloadedBytes(u64);

impl OffloadedBytes {
    pub(crate) fn new(bytes: u64) -> Self {
        OFFLOADED_HOST_BYTES.fetch_add(bytes, Ordering::SeqCst);
        OffloadedBytes(bytes)
    }
}

impl Drop for OffloadedBytes {
    fn drop(&mut self) {
        OFFLOADED_HOST_BYTES.fetch_sub(self.0, Ordering::SeqCst);
    }
}
static LIVE_WEIGHT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Number of model worker threads that still own a loaded model (process-wide).
pub fn live_models() -> usize {
    LIVE_MODELS.load(Ordering::SeqCst)
}

/// Sum of the weight bytes of every model still loaded in this process.
pub fn live_weight_bytes() -> u64 {
    LIVE_WEIGHT_BYTES.load(Ordering::SeqCst)
}

/// Model worker threads that have not exited yet, whether loading, serving or freeing
/// (process-wide). Zero means no load is still under way anywhere, cancelled ones included.
pub fn model_threads() -> usize {
    MODEL_THREADS.load(Ordering::SeqCst)
}

static MODEL_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Counts a model worker thread from before its spawn until the end of its body.
pub(crate) struct ModelThread(());

impl ModelThread {
    pub(crate) fn new() -> Self {
        MODEL_THREADS.fetch_add(1, Ordering::SeqCst);
        ModelThread(())
    }
}

impl Drop for ModelThread {
    fn drop(&mut self) {
        MODEL_THREADS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a loaded model until dropped; held by the worker thread next to the model itself.
pub(crate) struct LiveModel {
    bytes: u64,
}

impl LiveModel {
    pub(crate) fn new(bytes: u64) -> Self {
        LIVE_MODELS.fetch_add(1, Ordering::SeqCst);
        LIVE_WEIGHT_BYTES.fetch_add(bytes, Ordering::SeqCst);
        LiveModel { bytes }
    }
}

impl Drop for LiveModel {
    fn drop(&mut self) {
        LIVE_WEIGHT_BYTES.fetch_sub(self.bytes, Ordering::SeqCst);
        LIVE_MODELS.fetch_sub(1, Ordering::SeqCst);
    }
}
