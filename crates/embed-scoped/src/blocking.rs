//! The scoped API for programs without an async runtime.
//!
//! Each [`BlockingService`] drives its model through a private single-threaded runtime. Calling
//! these functions from inside an async runtime is refused with [`Error::InsideAsyncRuntime`]
//! (blocking there would stall the executor).
//!
//! ```
//! # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
//! use embed_core::{EmbedOptions, ModelSpec};
//!
//! let n = embed_scoped::blocking::scope(ModelSpec::new(dir.to_string_lossy()), |svc| {
//!     let out = svc.embed_texts(&["hello".to_string()], &EmbedOptions::default())?;
//!     Ok::<_, embed_scoped::Error>(out.vectors.len())
//! })
//! .unwrap();
//! assert_eq!(n, 1);
//! ```

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use embed_core::{CleanupReport, EmbedOptions, EmbeddingService, Embeddings, ModelInfo, ModelSpec, TokenizedText};

use crate::{Error, ScopeError, ServiceGuard};

/// A loaded service driven synchronously. `close()` releases it and waits; dropping releases it
/// without waiting.
#[must_use = "dropping it releases the model at once"]
pub struct BlockingService {
    // Field order matters: the guard (and its release signal) goes before the runtime.
    guard: Option<ServiceGuard>,
    runtime: tokio::runtime::Runtime,
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InsideAsyncRuntime);
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)
}

impl BlockingService {
    /// Loads `spec`.
    pub fn open(spec: ModelSpec) -> Result<Self, Error> {
        let runtime = runtime()?;
        let guard = runtime.block_on(ServiceGuard::open(spec))?;
        Ok(BlockingService { guard: Some(guard), runtime })
    }

    fn guard(&self) -> &ServiceGuard {
        self.guard.as_ref().expect("present until close")
    }

    /// Embeds `texts`.
    pub fn embed_texts(&self, texts: &[String], options: &EmbedOptions) -> Result<Embeddings, Error> {
        Ok(self.runtime.block_on(self.guard().embed_texts(texts, options))?)
    }

    /// Tokenizes `texts`.
    pub fn tokenize(&self, texts: &[String], options: &EmbedOptions) -> Result<Vec<TokenizedText>, Error> {
        Ok(self.runtime.block_on(self.guard().tokenize(texts, options))?)
    }

    /// The loaded model.
    pub fn info(&self) -> Option<ModelInfo> {
        self.guard().info()
    }

    /// Releases the model and waits until it is freed.
    pub fn close(mut self) -> Result<CleanupReport, Error> {
        let guard = self.guard.take().expect("present until close");
        self.runtime.block_on(guard.close())
    }
}

/// Loads `spec`, runs `body`, cleans up on return and on panic (the panic is resumed after).
pub fn scope<T, E>(spec: ModelSpec, body: impl FnOnce(&BlockingService) -> Result<T, E>) -> Result<T, ScopeError<E>> {
    let service = BlockingService::open(spec).map_err(ScopeError::Load)?;
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&service)));
    let cleanup = service.close().map(drop);
    match outcome {
        Ok(result) => ScopeError::combine(result, cleanup),
        Err(panic) => resume_unwind(panic),
    }
}
