//! # embed-scoped
//!
//! Lifetimes with guaranteed cleanup for `embed-core` services. Rust has no async `Drop`, so
//! every API here is built so that the model is released on every path: the body returns `Ok`,
//! returns `Err`, panics, or the whole future is dropped (a `select!`, a timeout, a client that
//! went away).
//!
//! | API | use it when |
//! |---|---|
//! | [`scope`] | the work fits in an async closure: load, run the body, always clean up |
//! | [`ServiceGuard`] | the service must outlive one closure: `close().await` when you can, `Drop` releases anyway |
//! | [`temporary_model`] | you need an isolated instance beside the global one (A/B comparisons) |
//! | [`GlobalService`], [`get_embedding_service`] | one process-wide model, lazily loaded, replaceable |
//! | [`blocking`] | programs without an async runtime |
//!
//! With these APIs there is no need to call `EmbeddingService::cleanup` yourself on a shared
//! service: the scope, the guard or the global service owns that call.
//!
//! ```
//! # let (_tmp, dir) = embed_testkit::TinyModel::default().write_temp();
//! # let model_dir = dir.to_string_lossy().into_owned();
//! use embed_core::{EmbedOptions, EmbeddingService, ModelSpec};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dims = embed_scoped::scope(ModelSpec::new(model_dir), |svc| async move {
//!     let out = svc.embed_texts(&["hello world".to_string()], &EmbedOptions::default()).await?;
//!     Ok::<_, embed_core::Error>(out.vectors[0].len())
//! })
//! .await
//! .unwrap();
//! assert_eq!(dims, 32);
//! // The model is already released here.
//! assert_eq!(embed_core::memory::live_models(), 0);
//! # });
//! ```

pub mod blocking;
mod error;
mod global;
mod guard;
mod scope;

pub use error::{Error, ScopeError};
pub use global::{get_embedding_service, global, GlobalLease, GlobalService, GlobalStats};
pub use guard::{temporary_model, ServiceGuard};
pub use scope::{scope, scope_with};

pub use embed_core;
