//! A loaded model as Python sees it: owned by a scope, leased from a pool, or the global one.

use std::sync::{Arc, Mutex, PoisonError};

use embed_core::{DenseEmbeddingService, EmbeddingService, ModelInfo};
use embed_pool::Lease;
use embed_scoped::{GlobalLease, ServiceGuard};
use numpy::ndarray::{Array1, Array2};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{self, InvalidInput, ServiceClosed};
use crate::options;
use crate::runtime::dispatch;

/// Who owns the model behind a [`Service`].
pub(crate) enum Holder {
    /// An embed-scoped guard (`embedding_service_context`, `temporary_model`): `close` releases
    /// the model and waits; dropping the service object releases it too.
    Scoped(Mutex<Option<ServiceGuard>>),
    /// A pool lease, shared with the calls in flight: the model stays leased until `close` and
    /// every call started before it have finished (`close` waits for those calls).
    Leased(Mutex<Option<Arc<Lease>>>),
    /// The process-wide service: each call takes a lease on it for its duration.
    Global,
}

/// What a call holds while it runs.
enum Source {
    Scoped(Arc<DenseEmbeddingService>),
    Leased(Arc<Lease>),
    Global,
}

/// A source with its lease taken: the service to call.
enum Acquired {
    Scoped(Arc<DenseEmbeddingService>),
    Leased(Arc<Lease>),
    Global(GlobalLease),
}

impl Acquired {
    fn service(&self) -> &dyn EmbeddingService {
        match self {
            Acquired::Scoped(s) => &**s,
            Acquired::Leased(l) => &***l,
            Acquired::Global(g) => &**g,
        }
    }
}

impl Source {
    async fn acquire(self) -> PyResult<Acquired> {
        Ok(match self {
            Source::Scoped(s) => Acquired::Scoped(s),
            Source::Leased(l) => Acquired::Leased(l),
            Source::Global => Acquired::Global(embed_scoped::get_embedding_service().await.map_err(errors::scoped)?),
        })
    }
}

/// A model's vectors as one contiguous float32 buffer, handed to NumPy without a copy.
pub(crate) struct Matrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// Packs `vectors` row by row; every row must be `cols` wide (`cols` is the first row's, or
    /// `empty_cols` when there is none).
    fn pack(vectors: Vec<Vec<f32>>, empty_cols: usize) -> PyResult<Matrix> {
        let cols = vectors.first().map_or(empty_cols, Vec::len);
        let mut data = Vec::with_capacity(vectors.len() * cols);
        for (i, v) in vectors.iter().enumerate() {
            if v.len() != cols {
                return Err(errors::InferenceError::new_err(format!("vector {i} has {} dimensions, vector 0 has {cols}", v.len())));
            }
            data.extend_from_slice(v);
        }
        Ok(Matrix { data, rows: vectors.len(), cols })
    }
}

impl<'py> IntoPyObject<'py> for Matrix {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let array = Array2::from_shape_vec((self.rows, self.cols), self.data)
            .map_err(|e| errors::InferenceError::new_err(format!("packing the vectors: {e}")))?;
        // The Vec's allocation becomes the array's buffer (no element is copied or converted).
        Ok(array.into_pyarray(py).into_any())
    }
}

/// One float32 row (a reranker's scores).
struct Vector(Vec<f32>);

impl<'py> IntoPyObject<'py> for Vector {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(Array1::from_vec(self.0).into_pyarray(py).into_any())
    }
}

/// Sparse vectors: a list of `(indices uint32, values float32)` array pairs.
struct Sparse(Vec<embed_core::SparseVector>);

impl<'py> IntoPyObject<'py> for Sparse {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let list = PyList::empty(py);
        for v in self.0 {
            if v.indices.len() != v.values.len() {
                return Err(errors::InferenceError::new_err(format!(
                    "a sparse vector has {} indices and {} values",
                    v.indices.len(),
                    v.values.len()
                )));
            }
            let pair = (v.indices.into_pyarray(py), v.values.into_pyarray(py));
            list.append(pair)?;
        }
        Ok(list.into_any())
    }
}

/// A cleanup report as a dict (`model`, `model_weight_bytes`, `duration_s`).
pub(crate) struct Report(pub(crate) embed_core::CleanupReport);

impl<'py> IntoPyObject<'py> for Report {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("model", self.0.model)?;
        d.set_item("model_weight_bytes", self.0.model_weight_bytes)?;
        d.set_item("duration_s", self.0.duration.as_secs_f64())?;
        d.set_item("cuda_reserved_before", self.0.cuda_reserved_before)?;
        d.set_item("cuda_reserved_after", self.0.cuda_reserved_after)?;
        Ok(d.into_any())
    }
}

/// `ModelInfo` as a dict.
pub(crate) fn info_dict<'py>(py: Python<'py>, i: &ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &i.name)?;
    d.set_item("source", &i.source)?;
    d.set_item("architecture", &i.architecture)?;
    d.set_item("family", i.family.to_string())?;
    d.set_item("kind", i.kind.to_string())?;
    d.set_item("dtype", i.dtype.to_string())?;
    d.set_item("device", i.device.to_string())?;
    d.set_item("dimension", i.dimension)?;
    d.set_item("max_seq_length", i.max_seq_length)?;
    d.set_item("weight_bytes", i.weight_bytes)?;
    d.set_item("normalize", i.normalize)?;
    d.set_item("pooling", i.pooling.to_string())?;
    d.set_item("num_layers", i.num_layers)?;
    d.set_item("threads", i.threads)?;
    d.set_item("labels", i.labels.clone())?;
    d.set_item("load_duration_s", i.load_duration.as_secs_f64())?;
    Ok(d)
}

/// A loaded model. Methods take `blocking`: false returns an awaitable (cancelling the task
/// that awaits it drops the Rust call), true runs the call with the GIL released.
#[pyclass(frozen, module = "embed._native", name = "Service")]
pub(crate) struct Service {
    pub(crate) holder: Holder,
}

impl Service {
    pub(crate) fn scoped(guard: ServiceGuard) -> Self {
        Service { holder: Holder::Scoped(Mutex::new(Some(guard))) }
    }

    pub(crate) fn leased(lease: Lease) -> Self {
        Service { holder: Holder::Leased(Mutex::new(Some(Arc::new(lease)))) }
    }

    pub(crate) fn global() -> Self {
        Service { holder: Holder::Global }
    }

    fn closed() -> PyErr {
        ServiceClosed::new_err("this service was closed: it is used after its `with` / `async with` block ended")
    }

    fn source(&self) -> PyResult<Source> {
        match &self.holder {
            Holder::Scoped(g) => {
                let g = g.lock().unwrap_or_else(PoisonError::into_inner);
                g.as_ref().map(|g| Source::Scoped(ServiceGuard::service(g))).ok_or_else(Self::closed)
            }
            Holder::Leased(l) => {
                l.lock().unwrap_or_else(PoisonError::into_inner).clone().map(Source::Leased).ok_or_else(Self::closed)
            }
            Holder::Global => Ok(Source::Global),
        }
    }
}

#[pymethods]
impl Service {
    /// Dense vectors of `texts`: a float32 array of shape (len(texts), dimension).
    #[pyo3(signature = (texts, *, instruction=None, mode=None, normalize=None, dimensions=None, prompt_name=None, truncate=true, priority=None, blocking=false))]
    #[allow(clippy::too_many_arguments)]
    fn embed_texts(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        instruction: Option<String>,
        mode: Option<&str>,
        normalize: Option<bool>,
        dimensions: Option<usize>,
        prompt_name: Option<String>,
        truncate: bool,
        priority: Option<&str>,
        blocking: bool,
    ) -> PyResult<Py<PyAny>> {
        let opts = options::embed_options(instruction, mode, normalize, dimensions, prompt_name, truncate, priority)?;
        let source = self.source()?;
        dispatch(py, blocking, async move {
            let held = source.acquire().await?;
            let svc = held.service();
            let out = svc.embed_texts(&texts, &opts).await.map_err(errors::core)?;
            if out.vectors.len() != texts.len() {
                return Err(errors::InferenceError::new_err(format!("{} vectors for {} texts", out.vectors.len(), texts.len())));
            }
            let empty_cols = opts.dimensions.or_else(|| svc.dimension()).unwrap_or(0);
            Matrix::pack(out.vectors, empty_cols)
        })
    }

    /// Relevance of each document to `query` (a reranker model): float32 array, input order;
    /// the sigmoid of the logit unless `raw_scores`.
    #[pyo3(signature = (query, documents, *, instruction=None, truncate=true, raw_scores=false, blocking=false))]
    #[allow(clippy::too_many_arguments)]
    fn rerank(
        &self,
        py: Python<'_>,
        query: String,
        documents: Vec<String>,
        instruction: Option<String>,
        truncate: bool,
        raw_scores: bool,
        blocking: bool,
    ) -> PyResult<Py<PyAny>> {
        let mut opts = embed_core::EmbedOptions::default().with_truncate(truncate);
        opts.instruction = instruction;
        let source = self.source()?;
        dispatch(py, blocking, async move {
            let held = source.acquire().await?;
            let out = held.service().tasks_for("rerank").map_err(errors::core)?.rerank(&query, &documents, &opts).await.map_err(errors::core)?;
            let rows = if raw_scores { out.logits } else { out.scores() };
            if rows.len() != documents.len() || rows.iter().any(|r| r.len() != 1) {
                return Err(errors::InferenceError::new_err(format!(
                    "expected one score for each of {} documents, got {} rows",
                    documents.len(),
                    rows.len()
                )));
            }
            Ok(Vector(rows.into_iter().map(|r| r[0]).collect()))
        })
    }

    /// SPLADE vectors: a list of (indices uint32, values float32) pairs.
    #[pyo3(signature = (texts, *, truncate=true, blocking=false))]
    fn embed_sparse(&self, py: Python<'_>, texts: Vec<String>, truncate: bool, blocking: bool) -> PyResult<Py<PyAny>> {
        let opts = embed_core::EmbedOptions::default().with_truncate(truncate);
        let source = self.source()?;
        dispatch(py, blocking, async move {
            let held = source.acquire().await?;
            let out = held.service().tasks_for("embed_sparse").map_err(errors::core)?.embed_sparse(&texts, &opts).await.map_err(errors::core)?;
            if out.vectors.len() != texts.len() {
                return Err(errors::InferenceError::new_err(format!("{} vectors for {} texts", out.vectors.len(), texts.len())));
            }
            Ok(Sparse(out.vectors))
        })
    }

    /// The loaded model (dict), or None when the service is closed (the global one: not loaded).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let info = match &self.holder {
            Holder::Scoped(g) => g.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|g| g.info()),
            Holder::Leased(l) => l.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|l| l.info()),
            Holder::Global => {
                if embed_scoped::global().is_loaded() {
                    // Taking a lease never loads when a model is loaded already.
                    let lease = crate::runtime::block_on(py, async {
                        embed_scoped::get_embedding_service().await.map_err(errors::scoped)
                    })?;
                    lease.info()
                } else {
                    None
                }
            }
        };
        info.map(|i| info_dict(py, &i)).transpose()
    }

    /// Ends this handle's hold on the model: a scope's model is released and waited for
    /// (returns its cleanup report), a pool lease is returned (returns None), the global
    /// service is left alone (`cleanup()` releases it). Idempotent.
    #[pyo3(signature = (*, blocking=false))]
    fn close(&self, py: Python<'_>, blocking: bool) -> PyResult<Py<PyAny>> {
        match &self.holder {
            Holder::Scoped(g) => {
                let guard = g.lock().unwrap_or_else(PoisonError::into_inner).take();
                // If the awaitable is dropped before it runs, dropping `guard` releases the model.
                dispatch(py, blocking, async move {
                    match guard {
                        Some(guard) => guard.close().await.map(|r| Some(Report(r))).map_err(errors::scoped),
                        None => Ok(None),
                    }
                })
            }
            Holder::Leased(l) => {
                let lease = l.lock().unwrap_or_else(PoisonError::into_inner).take();
                // Returns once the lease is back in the pool: calls still holding it (a cancelled
                // call is dropped by the runtime a moment after its task saw CancelledError)
                // finish first. Dropped early, this future drops its share and the last call
                // returns the lease.
                dispatch(py, blocking, async move {
                    let mut lease = lease;
                    while let Some(shared) = lease.take() {
                        match Arc::try_unwrap(shared) {
                            Ok(last) => drop(last),
                            Err(shared) => {
                                lease = Some(shared);
                                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                            }
                        }
                    }
                    Ok(None::<Report>)
                })
            }
            Holder::Global => dispatch(py, blocking, async { Ok(None::<Report>) }),
        }
    }

    /// "scoped", "leased" or "global".
    #[getter]
    fn kind(&self) -> &'static str {
        match self.holder {
            Holder::Scoped(_) => "scoped",
            Holder::Leased(_) => "leased",
            Holder::Global => "global",
        }
    }
}

/// Loads `source` into a fresh service owned by the returned [`Service`] (embed-scoped's
/// `ServiceGuard::open`, or `temporary_model` for `temporary = true`: the same guard, never the
/// global model). Cancelling the load releases whatever was loaded.
#[pyfunction]
#[pyo3(signature = (source, options=None, *, name=None, temporary=false, blocking=false))]
pub(crate) fn open_scoped(
    py: Python<'_>,
    source: String,
    options: Option<&Bound<'_, PyDict>>,
    name: Option<String>,
    temporary: bool,
    blocking: bool,
) -> PyResult<Py<PyAny>> {
    let opts = options::model_options(options)?;
    if source.trim().is_empty() {
        return Err(InvalidInput::new_err("model_name is empty"));
    }
    dispatch(py, blocking, async move {
        let guard = if temporary && name.is_none() {
            embed_scoped::temporary_model(&source, opts).await
        } else {
            let mut spec = embed_core::ModelSpec::new(source).with_options(opts);
            if let Some(n) = name {
                spec = spec.named(n);
            }
            ServiceGuard::open(spec).await
        };
        guard.map(Service::scoped).map_err(errors::scoped)
    })
}

/// The Rust API's vectors for `texts`: `DenseEmbeddingService::from_spec` then `embed_texts`
/// with default options and `cleanup`, as a Rust program calls them, returned as nested lists
/// converted element by element. The parity test's reference for the NumPy hand-over.
#[pyfunction]
pub(crate) fn rust_api_vectors(py: Python<'_>, source: String, texts: Vec<String>) -> PyResult<Vec<Vec<f32>>> {
    crate::runtime::block_on(py, async move {
        let svc = DenseEmbeddingService::from_spec(embed_core::ModelSpec::new(source)).await.map_err(errors::core)?;
        let out = svc.embed_texts(&texts, &embed_core::EmbedOptions::default()).await;
        svc.cleanup().await.map_err(errors::core)?;
        Ok(out.map_err(errors::core)?.vectors)
    })
}

/// The Rust API's speed in this process, for `cargo xtask bench --python`: loads `source` with
/// `threads` intra-op threads, embeds the first 64 texts once (the warm-up of the other sides),
/// then per round embeds all `texts` with default options — in one call, or in sequential calls
/// of `batch` texts — and returns each round's seconds. No Python runs inside the timing.
#[pyfunction]
#[pyo3(signature = (source, texts, rounds, threads, batch=None))]
pub(crate) fn rust_api_seconds(
    py: Python<'_>,
    source: String,
    texts: Vec<String>,
    rounds: usize,
    threads: usize,
    batch: Option<usize>,
) -> PyResult<Vec<f64>> {
    if batch == Some(0) || texts.is_empty() {
        return Err(InvalidInput::new_err("batch must be at least 1 and texts non-empty"));
    }
    crate::runtime::block_on(py, async move {
        let options = embed_core::ModelOptions::default().with_threads(threads);
        let spec = embed_core::ModelSpec::new(source).with_options(options);
        let svc = DenseEmbeddingService::from_spec(spec).await.map_err(errors::core)?;
        let opts = embed_core::EmbedOptions::default();
        let run = async {
            svc.embed_texts(&texts[..texts.len().min(64)], &opts).await?;
            let mut seconds = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = std::time::Instant::now();
                for chunk in texts.chunks(batch.unwrap_or(texts.len())) {
                    svc.embed_texts(chunk, &opts).await?;
                }
                seconds.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, embed_core::Error>(seconds)
        };
        let out = run.await;
        svc.cleanup().await.map_err(errors::core)?;
        out.map_err(errors::core)
    })
}
