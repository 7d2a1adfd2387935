//! # embed-core
//!
//! Sentence embeddings from BERT-family models (all-MiniLM-L6-v2, BGE, E5, …) on libtorch, with
//! results matching sentence-transformers, and a lifecycle that frees every byte it allocated.
//!
//! * [`EmbeddingService`] is the async trait the other crates build on; [`DenseEmbeddingService`]
//!   implements it on [`tch`]: the BERT encoder is written here on libtorch ops (fused QKV
//!   projection, libtorch's fused scaled-dot-product attention), weights are read by name from
//!   `model.safetensors`, text goes through `tokenizers`, pooling and normalisation follow the
//!   model's sentence-transformers configuration.
//! * Each loaded model lives on its own worker thread (tensors are not `Sync`, grad mode is
//!   thread-local). Concurrent callers are merged into length-sorted batches under a token budget
//!   ([`ModelOptions::max_batch_tokens`]). A batch that runs out of memory is split and retried
//!   down to single inputs before [`Error::OutOfMemory`] is returned.
//! * [`memory`] reports what the process, the CPU allocator and each CUDA device hold (CUDA
//!   figures through a small C++ shim over `ATen/DeviceAccelerator.h`).
//! * Models come from a local directory or a hub id ([`ModelSource`]).
//!
//! Devices: `cpu`, `cuda`, `cuda:N`, `auto` ([`DeviceSpec`]); asking for CUDA where there is
//! none is an error, never a silent CPU fallback. Dtypes: f32 (default), f16 (CUDA), bf16.
//!
//! ```no_run
//! use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelSpec};
//!
//! # async fn demo() -> embed_core::Result<()> {
//! let service = DenseEmbeddingService::from_spec(ModelSpec::new("sentence-transformers/all-MiniLM-L6-v2")).await?;
//! let out = service.embed_texts(&["hello world".to_string()], &EmbedOptions::default()).await?;
//! assert_eq!(out.vectors[0].len(), 384);
//! let report = service.cleanup().await?;
//! println!("released a model of {} weight bytes", report.model_weight_bytes);
//! # Ok(()) }
//! ```
//!
//! Higher layers (`embed-scoped`, `embed-pool`) make sure `cleanup` always runs; dropping a
//! service also frees its model, without blocking.

mod config;
mod device;
mod error;
mod layers;
pub mod memory;
mod models;
mod pooling;
mod service;
mod source;
mod text;
mod types;
mod worker;

pub use config::{DenseActivation, DenseModule, ModelDir, Pooling};
pub use models::{supported_model_types, ArchConfig, Family};
pub use device::{cuda_device_count, DType, DeviceSpec, ResolvedDevice};
pub use error::{Error, Result};
pub use service::{DenseEmbeddingService, EmbeddingService};
pub use types::{
    BatchStats, CleanupReport, EmbedOptions, Embeddings, FaultInjection, InputMode, ModelInfo, ModelOptions, ModelSpec,
    ServiceState, TokenizedText,
};
pub use source::{is_hub_id, ModelSource};

/// Re-exported so dependents can use the same libtorch bindings.
pub use tch;
