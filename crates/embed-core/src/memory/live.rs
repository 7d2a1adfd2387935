//! Live-model accounting: models loaded, their weight bytes, worker threads and offloaded host
//! copies, process-wide.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static LIVE_MODELS: AtomicUsize = AtomicUsize::new(0);
static OFFLOADED_HOST_BYTES: AtomicU64 = AtomicU64::new(0);

/// Host bytes held by the copies of offloaded models' weights (process-wide; see
/// [`crate::Offload::offload`]). Pinned memory on CUDA. Zero once every offloaded
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
