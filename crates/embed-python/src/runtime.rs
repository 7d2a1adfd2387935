//! Running Rust futures for Python: as asyncio awaitables, or blocking with the GIL released.

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

/// The tokio runtime every future of the package runs on (pyo3-async-runtimes' global
/// multi-threaded one). Pools and their background tasks live on it too.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// How often a blocking call wakes up to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `fut` on the runtime and waits for it with the GIL released. A signal handler that
/// raises (KeyboardInterrupt) aborts the task, which drops the future: a lease or a scope it
/// held is released exactly as when an asyncio task is cancelled.
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime();
    let mut task = rt.spawn(fut);
    loop {
        let waited = py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut task).await }));
        match waited {
            Ok(Ok(result)) => return result,
            Ok(Err(join)) => {
                let what = if join.is_panic() { embed_core::panic_message(&*join.into_panic()) } else { "cancelled".into() };
                return Err(crate::errors::EmbedError::new_err(format!("the Rust task panicked: {what}")));
            }
            Err(_elapsed) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
        }
    }
}

/// `fut` as an asyncio awaitable (`blocking = false`: cancelling the awaiting task drops the
/// Rust future) or its result (`blocking = true`: see [`block_on`]).
pub(crate) fn dispatch<F, T>(py: Python<'_>, blocking: bool, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    if blocking {
        block_on(py, fut)?.into_py_any(py)
    } else {
        Ok(pyo3_async_runtimes::tokio::future_into_py(py, fut)?.unbind())
    }
}
