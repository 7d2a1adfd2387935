//! # embed-core
//!
//! Sentence embeddings from encoder models on libtorch — BERT (all-MiniLM-L6-v2, BGE, E5, …),
//! RoBERTa / XLM-RoBERTa / CamemBERT, DistilBERT, MPNet, ModernBERT, NomicBERT and GTE — with
//! results matching sentence-transformers, and a lifecycle that frees every byte it allocated.
//!
//! * [`EmbeddingService`] is the async trait the other crates build on (load, embed, tokenize,
//!   clean up), with two capabilities a service may offer: [`RetrievalTasks`] (rerank,
//!   classify, sparse, multi-vector, token states) and [`Offload`] (weights to host memory and
//!   back); [`DenseEmbeddingService`] implements all three on `tch`. Each family is written here on libtorch ops (`models/`, one file
//!   per family, over the shared building blocks of `nn/`: fused projections on the real tokens only, packed or
//!   padded scaled-dot-product attention, rotary positions, MLP and gated feed-forwards); the
//!   family comes from `config.json` ([`Family`], [`supported_model_types`]); weights are read
//!   by name from `model.safetensors`, text goes through `tokenizers`, and pooling, `Dense` and
//!   normalisation follow the model's sentence-transformers modules.
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
//! Besides embedders, models of the other retrieval kinds load ([`ModelKind`]): cross-encoders,
//! classifiers and SPLADE encoders of the BERT line, and decoder LLM rerankers (Qwen3-Reranker:
//! a `*ForCausalLM` served as a reranker by [`ModelOptions::llm_reranker`], or its converted
//! `*ForSequenceClassification`, recognised from its config), which score each (query, document)
//! pair in their prompt by the "yes" and "no" logits at the last position:
//!
//! ```no_run
//! use embed_core::{DenseEmbeddingService, EmbedOptions, EmbeddingService, LlmReranker, ModelOptions, ModelSpec, RetrievalTasks};
//!
//! # async fn demo() -> embed_core::Result<()> {
//! let options = ModelOptions::default().with_llm_reranker(LlmReranker::qwen3());
//! let reranker = DenseEmbeddingService::from_spec(ModelSpec::new("Qwen/Qwen3-Reranker-0.6B").with_options(options)).await?;
//! let docs = ["Paris is the capital of France.".to_string(), "Rust has no garbage collector.".to_string()];
//! let ask = EmbedOptions::default().with_instruction("Find the passage that answers the question");
//! let scores = reranker.rerank("What is the capital of France?", &docs, &ask).await?.scores();
//! assert!(scores[0][0] > scores[1][0]);
//! reranker.cleanup().await?;
//! # Ok(()) }
//! ```
//!
//! Higher layers (`embed-scoped`, `embed-pool`) make sure `cleanup` always runs; dropping a
//! service also frees its model, without blocking.

#[macro_use]
mod setters;
mod device;
mod error;
mod ffi;
mod model_dir;
mod nn;
pub mod memory;
pub mod profile;
mod models;
mod rerank;
mod service;
mod source;
mod text;
pub mod timing;
mod types;
mod runtime;

pub use model_dir::arch::{supported_model_types, Family};
pub use model_dir::Pooling;
pub use device::{cpu_prepack_unsupported_reason, cuda_device_count, int8_unsupported_reason, DType, DeviceSpec, Int8Kernel, ResolvedDevice};
pub use error::{panic_message, Error, Result};
pub use rerank::LlmReranker;
pub use service::{DenseEmbeddingService, EmbeddingService, Offload, RetrievalTasks};
pub use nn::tuning::{CpuAttention, CudaAttention, Tuning};
pub use runtime::{bulk_host_stats, cpu_compute_stats, run_bulk, set_cpu_thread_budget, BulkHostStats, CpuComputeStats, BULK_NICE};
pub use types::{
    BatchStats, Classified, ClassifyInput, CleanupReport, EmbedOptions, Embeddings, HubOptions, HubToken, InputMode, ModelInfo, ModelKind,
    ModelOptions, ModelSpec, MoveReport, Priority, PriorityStats, Residency, ServiceState, SparseEmbeddings, SparseVector, TokenEmbeddings,
    TokenizedText, MultiVectorEmbeddings, max_sim,
};
pub use source::{estimate_weight_bytes, hub_commit, is_hub_id, ModelSource};
/// Test hooks (feature `test-util`): failures on demand.
#[cfg(feature = "test-util")]
pub use types::FaultInjection;

