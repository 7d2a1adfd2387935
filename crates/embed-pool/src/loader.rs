//! How the pool turns a [`ModelSpec`] into a loaded service.

use std::sync::Arc;

use async_trait::async_trait;
use embed_core::{DenseEmbeddingService, EmbeddingService, ModelSpec};

/// Loads models for a [`crate::Pool`] (the pool's "manager", in deadpool's terms).
///
/// The pool calls `load` at most once at a time per model name (single-flight) and never while
/// holding a lock. A returned service must be ready; the pool releases it with
/// [`EmbeddingService::cleanup`] (or [`EmbeddingService::begin_cleanup`] when it cannot wait).
/// If the future is dropped (load timeout, pool dropped), whatever it loaded must be released.
#[async_trait]
pub trait ModelLoader: Send + Sync + 'static {
    /// Loads `spec` (its `name` is the pool's name for the model).
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error>;
}

/// The default loader: a [`DenseEmbeddingService`] per model.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseLoader;

#[async_trait]
impl ModelLoader for DenseLoader {
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
        Ok(Arc::new(DenseEmbeddingService::from_spec(spec.clone()).await?))
    }
}

#[async_trait]
impl<L: ModelLoader + ?Sized> ModelLoader for Arc<L> {
    async fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn EmbeddingService>, embed_core::Error> {
        (**self).load(spec).await
    }
}
