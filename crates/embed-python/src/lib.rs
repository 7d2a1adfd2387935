//! # embed-python
//!
//! The native half (`embed._native`) of the `embed` Python package: embed-scoped's scoped
//! services, temporary models and global service, and embed-pool's leases, exposed to Python
//! without reimplementing their lifetimes. The pure-Python half (`python/embed/`) turns these
//! into async context managers with synchronous twins.
//!
//! * Every call takes `blocking`: `false` returns an asyncio awaitable (pyo3-async-runtimes on a
//!   tokio runtime; the Rust future runs on tokio's threads, so the event loop and the GIL are
//!   free meanwhile, and cancelling the awaiting task drops the Rust future, which releases
//!   its lease or scope); `true` runs it with the GIL released, waking every 50 ms for signals
//!   (Ctrl-C aborts the call the same way).
//! * Results are NumPy arrays built from one contiguous Rust buffer, handed over without a copy.
//! * Errors arrive as typed exceptions ([`errors`]) with the Rust messages.
//!
//! Build it with maturin (`cargo xtask python`); its tests are the pytest suite in `tests/`.

mod errors;
mod global;
mod memory;
mod options;
mod pool;
mod runtime;
mod service;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<service::Service>()?;
    m.add_class::<pool::Pool>()?;
    m.add_function(wrap_pyfunction!(service::open_scoped, m)?)?;
    m.add_function(wrap_pyfunction!(service::rust_api_vectors, m)?)?;
    m.add_function(wrap_pyfunction!(service::rust_api_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(global::global_get, m)?)?;
    m.add_function(wrap_pyfunction!(global::global_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(global::global_is_loaded, m)?)?;
    m.add_function(wrap_pyfunction!(memory::live_models, m)?)?;
    m.add_function(wrap_pyfunction!(memory::live_weight_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory::model_threads, m)?)?;
    m.add_function(wrap_pyfunction!(memory::cpu_allocator_in_use_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory::trim_cpu_heap, m)?)?;
    m.add_function(wrap_pyfunction!(memory::process_resident_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory::cuda_memory, m)?)?;
    m.add_function(wrap_pyfunction!(memory::cuda_available, m)?)?;
    Ok(())
}
