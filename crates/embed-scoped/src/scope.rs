//! Closure-scoped services.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use embed_core::{DenseEmbeddingService, EmbeddingService, ModelSpec};
use futures::FutureExt;

use crate::{Error, ScopeError, ServiceGuard};

/// Loads `spec` into a fresh service, runs `body` with it, and cleans up afterwards, whatever
/// happens:
///
/// * body returns `Ok` or `Err`: awaited cleanup, then the result (a cleanup failure is
///   reported next to the body's error, never instead of it);
/// * body panics: awaited cleanup, then the panic is resumed (not swallowed);
/// * the returned future is dropped (timeout, `select!`, aborted task): the model's release is
///   started from `Drop` without blocking, and completes on the model's worker thread.
pub async fn scope<F, Fut, T, E>(spec: ModelSpec, body: F) -> Result<T, ScopeError<E>>
where
    F: FnOnce(Arc<DenseEmbeddingService>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    scope_with(DenseEmbeddingService::new(), spec, body).await
}

/// [`scope`] for any [`EmbeddingService`] implementation.
pub async fn scope_with<S, F, Fut, T, E>(service: S, spec: ModelSpec, body: F) -> Result<T, ScopeError<E>>
where
    S: EmbeddingService + 'static,
    F: FnOnce(Arc<S>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let guard = ServiceGuard::from_service(Arc::new(service));
    if let Err(e) = guard.load(spec).await {
        return Err(ScopeError::Load(Error::Core(e)));
    }
    let outcome = AssertUnwindSafe(body(ServiceGuard::service(&guard))).catch_unwind().await;
    let cleanup = guard.close().await.map(drop);
    match outcome {
        Ok(result) => ScopeError::combine(result, cleanup),
        Err(panic) => {
            if let Err(e) = cleanup {
                tracing::error!("cleanup after a panicking scope body failed: {e}");
            }
            std::panic::resume_unwind(panic)
        }
    }
}
