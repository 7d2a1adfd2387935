//! A guard that owns a loaded service and releases it on every path.

use std::ops::Deref;
use std::sync::Arc;

use embed_core::{CleanupReport, DenseEmbeddingService, EmbeddingService, ModelOptions, ModelSpec};

use crate::Error;

/// Owns a loaded service. `close().await` releases it and reports what was freed; dropping the
/// guard releases it too, without blocking (the worker is told to free the model and does so on
/// its own thread).
///
/// The service is shared as `Arc<S>` (see [`ServiceGuard::service`]) so it can be handed to
/// tasks; a clone that outlives the guard finds the service closed, never a leaked model.
///
/// ```
/// # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
/// use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
/// use embed_scoped::ServiceGuard;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let guard = ServiceGuard::open(ModelSpec::new(dir.to_string_lossy())).await?;
/// let out = guard.embed_texts(&["kept across calls".to_string()], &EmbedOptions::default()).await?;
/// assert_eq!(out.vectors.len(), 1);
/// let report = guard.close().await?; // awaited release; dropping the guard would release too
/// assert!(report.model_weight_bytes > 0);
/// # Ok::<_, embed_scoped::Error>(()) }).unwrap();
/// ```
#[must_use = "dropping the guard releases the model at once; keep it while you use the model and close().await it"]
pub struct ServiceGuard<S: EmbeddingService + 'static = DenseEmbeddingService> {
    service: Option<Arc<S>>,
}

impl ServiceGuard<DenseEmbeddingService> {
    /// Loads `spec` into a fresh service. A failed load leaves nothing allocated.
    pub async fn open(spec: ModelSpec) -> Result<Self, Error> {
        let guard = ServiceGuard::from_service(Arc::new(DenseEmbeddingService::new()));
        // If this future is dropped during the load, `guard` drops and releases whatever loaded.
        guard.load(spec).await?;
        Ok(guard)
    }
}

impl<S: EmbeddingService + 'static> ServiceGuard<S> {
    /// Takes ownership of `service` (loaded or not): from now on the guard releases it.
    pub fn from_service(service: Arc<S>) -> Self {
        ServiceGuard { service: Some(service) }
    }

    /// A shared handle to the service, e.g. to move into a task.
    pub fn service(this: &Self) -> Arc<S> {
        this.service.clone().expect("service present until close or drop")
    }

    /// Releases the model and waits until it is freed (worker joined, tensors dropped, CUDA
    /// cache emptied).
    pub async fn close(mut self) -> Result<CleanupReport, Error> {
        let service = self.service.take().expect("service present until close or drop");
        // If this future is dropped mid-way, core's cleanup has already signalled the worker;
        // if it is dropped before its first poll, `self` is dropped and Drop signals.
        Ok(service.cleanup().await?)
    }
}

impl<S: EmbeddingService + 'static> Deref for ServiceGuard<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.service.as_deref().expect("service present until close or drop")
    }
}

impl<S: EmbeddingService + 'static> Drop for ServiceGuard<S> {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            if service.begin_cleanup() {
                tracing::debug!("service guard dropped without close(); model release started");
            }
        }
    }
}

impl<S: EmbeddingService + 'static> std::fmt::Debug for ServiceGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceGuard").field("state", &self.service.as_ref().map(|s| s.state())).finish()
    }
}

/// Loads an isolated instance of `source` (a directory or hub id) with `options`. It never
/// touches or replaces the global service, so two models (or one model twice, say in two dtypes)
/// can be compared side by side.
///
/// ```
/// # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
/// # let source = dir.to_string_lossy().into_owned();
/// use embed_core::{DType, EmbedOptions, EmbeddingService, ModelOptions};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let f32 = embed_scoped::temporary_model(&source, ModelOptions::default()).await?;
/// let bf16 = embed_scoped::temporary_model(&source, ModelOptions::default().with_dtype(DType::Bf16)).await?;
/// let t = vec!["compare me".to_string()];
/// let (a, b) = (f32.embed_texts(&t, &EmbedOptions::default()).await?, bf16.embed_texts(&t, &EmbedOptions::default()).await?);
/// assert_eq!(a.vectors[0].len(), b.vectors[0].len());
/// f32.close().await?;
/// bf16.close().await?;
/// # Ok::<_, embed_scoped::Error>(()) }).unwrap();
/// ```
pub async fn temporary_model(source: &str, options: ModelOptions) -> Result<ServiceGuard, Error> {
    ServiceGuard::open(ModelSpec::new(source).with_options(options)).await
}
