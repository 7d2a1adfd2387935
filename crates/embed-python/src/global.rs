//! embed-scoped's process-wide service for Python.

use embed_core::{EmbeddingService, ModelSpec};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, InvalidInput};
use crate::options;
use crate::runtime::dispatch;
use crate::service::{Report, Service};

/// Loads the global model if needed and returns a handle whose calls each lease it. With a
/// `source`, the spec is configured first; a loaded model from another source is an error
/// (release it with `global_shutdown` first), never a silent swap.
#[pyfunction]
#[pyo3(signature = (source=None, options=None, *, blocking=false))]
pub(crate) fn global_get(
    py: Python<'_>,
    source: Option<String>,
    options: Option<&Bound<'_, PyDict>>,
    blocking: bool,
) -> PyResult<Py<PyAny>> {
    let opts = options::model_options(options)?;
    let wanted = source.clone();
    if let Some(source) = source {
        if !embed_scoped::global().is_loaded() {
            embed_scoped::global().configure(ModelSpec::new(source).with_options(opts));
        }
    }
    dispatch(py, blocking, async move {
        let lease = embed_scoped::get_embedding_service().await.map_err(errors::scoped)?;
        if let (Some(wanted), Some(info)) = (wanted, lease.info()) {
            if info.source != wanted {
                return Err(InvalidInput::new_err(format!(
                    "the global embedding service already serves {:?}, not {wanted:?}; call cleanup() first to switch models",
                    info.source
                )));
            }
        }
        Ok(Service::global())
    })
}

/// Releases the global model once its in-flight calls end (after 30 s anyway) and waits until
/// it is freed. Returns the cleanup report; the next `global_get` loads again.
#[pyfunction]
#[pyo3(signature = (*, blocking=false))]
pub(crate) fn global_shutdown(py: Python<'_>, blocking: bool) -> PyResult<Py<PyAny>> {
    dispatch(py, blocking, async move { embed_scoped::global().shutdown().await.map(Report).map_err(errors::scoped) })
}

/// True while the global model is loaded.
#[pyfunction]
pub(crate) fn global_is_loaded() -> bool {
    embed_scoped::global().is_loaded()
}
