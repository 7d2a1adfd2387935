//! embed-core's memory figures, for proving that released models are really gone.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;

/// Models loaded in this process (worker threads that own one).
#[pyfunction]
pub(crate) fn live_models() -> usize {
    embed_core::memory::live_models()
}

/// Weight bytes of every model loaded in this process.
#[pyfunction]
pub(crate) fn live_weight_bytes() -> u64 {
    embed_core::memory::live_weight_bytes()
}

/// Model worker threads not yet exited (loading, serving or freeing).
#[pyfunction]
pub(crate) fn model_threads() -> usize {
    embed_core::memory::model_threads()
}

/// Bytes in use in the C allocator (glibc `mallinfo2`), which holds CPU tensors.
#[pyfunction]
pub(crate) fn cpu_allocator_in_use_bytes() -> u64 {
    embed_core::memory::cpu_allocator_in_use_bytes()
}

/// Returns freed heap memory to the OS (`malloc_trim`).
#[pyfunction]
pub(crate) fn trim_cpu_heap() {
    embed_core::memory::trim_cpu_heap()
}

/// Resident set size of the process.
#[pyfunction]
pub(crate) fn process_resident_bytes() -> u64 {
    embed_core::memory::process_resident_bytes()
}

/// libtorch's CUDA caching-allocator figures for device `index`.
#[pyfunction]
pub(crate) fn cuda_memory<'py>(py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyDict>> {
    let s = embed_core::memory::cuda_memory(index).map_err(errors::core)?;
    let d = PyDict::new(py);
    d.set_item("allocated", s.allocated)?;
    d.set_item("allocated_peak", s.allocated_peak)?;
    d.set_item("reserved", s.reserved)?;
    d.set_item("reserved_peak", s.reserved_peak)?;
    d.set_item("num_ooms", s.num_ooms)?;
    d.set_item("device_free", s.device_free)?;
    d.set_item("device_total", s.device_total)?;
    Ok(d)
}

/// True when libtorch sees a CUDA device.
#[pyfunction]
pub(crate) fn cuda_available() -> bool {
    embed_core::memory::accelerator_available()
}
