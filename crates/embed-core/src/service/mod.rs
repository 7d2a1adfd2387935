//! The embedding-service API and its libtorch implementation, in three rooms: this file holds
//! the [`EmbeddingService`] trait (what every service offers); `dense` the
//! [`DenseEmbeddingService`] and its lifecycle (unloaded → loading → ready → closing → closed);
//! `running` what a ready service's callers share with its worker (the intake, tokenization,
//! submitting a job and waiting for its rows); `tasks` the outputs built from several rows or
//! jobs (classifier logits, multi-vectors, BGE-M3's lexical weights, MaxSim reranking).

use async_trait::async_trait;

use crate::types::{
    BatchStats, Classified, ClassifyInput, CleanupReport, EmbedOptions, Embeddings, ModelInfo, ModelSpec, MoveReport, MultiVectorEmbeddings,
    Residency, ServiceState, SparseEmbeddings, TokenEmbeddings, TokenizedText,
};
use crate::{Error, Result};

mod dense;
mod running;
mod tasks;

pub use dense::DenseEmbeddingService;


/// An embedding service: load a model, embed texts, release everything.
///
/// Implementations are shared behind `Arc` and used concurrently; every method takes `&self`.
/// What a service offers beyond dense vectors it says through capabilities, not through
/// methods that fail: [`tasks`](Self::tasks) gives the other retrieval tasks
/// ([`RetrievalTasks`]: rerank, classify, sparse, multi-vector, token states, token ids,
/// decoding) and [`offloading`](Self::offloading) moving the weights to host memory and back
/// ([`Offload`]). A generic caller asks for one with [`tasks_for`](dyn EmbeddingService::tasks_for)
/// or [`offload_for`](dyn EmbeddingService::offload_for), which name the operation in the error.
#[async_trait]
pub trait EmbeddingService: Send + Sync {
    /// Loads `spec`. Fails with [`Error::AlreadyLoaded`] unless the service is unloaded or closed.
    /// A failed load leaves nothing allocated and the service unloaded.
    async fn load(&self, spec: ModelSpec) -> Result<ModelInfo>;

    /// Embeds `texts` (an empty slice gives an empty result).
    async fn embed_texts(&self, texts: &[String], options: &EmbedOptions) -> Result<Embeddings>;

    /// Tokenizes `texts` the way `embed_texts` would (prompt and truncation applied).
    async fn tokenize(&self, texts: &[String], options: &EmbedOptions) -> Result<Vec<TokenizedText>>;

    /// The retrieval tasks beyond dense vectors, for a service that runs them; `None` for one
    /// that only embeds. Which of them a loaded model answers depends on its kind
    /// ([`ModelInfo::serves`]); the others fail with [`Error::WrongKind`].
    fn tasks(&self) -> Option<&dyn RetrievalTasks> {
        None
    }

    /// Moving the weights between the device and host memory, for a service that can.
    fn offloading(&self) -> Option<&dyn Offload> {
        None
    }

    /// Dynamic-batching counters, for services that batch.
    fn batch_stats(&self) -> Option<BatchStats> {
        None
    }

    /// Information on the loaded model.
    fn info(&self) -> Option<ModelInfo>;

    /// Output dimension of the loaded model.
    fn dimension(&self) -> Option<usize> {
        self.info().map(|i| i.dimension)
    }

    /// The lifecycle state.
    fn state(&self) -> ServiceState;

    /// True when requests can be served.
    fn is_ready(&self) -> bool {
        self.state() == ServiceState::Ready
    }

    /// Stops intake, finishes queued work, joins the worker, frees every tensor (and on CUDA
    /// synchronises and empties the caching allocator). Idempotent.
    async fn cleanup(&self) -> Result<CleanupReport>;

    /// Starts releasing the model without waiting: intake stops at once; the worker finishes
    /// what is queued, then frees everything. Never blocks, so it is safe in `Drop` and on an
    /// async executor thread. Returns false when no model was loaded.
    fn begin_cleanup(&self) -> bool;
}

impl dyn EmbeddingService + '_ {
    /// [`tasks`](EmbeddingService::tasks), or [`Error::InvalidOption`] naming `operation` for a
    /// service that only embeds.
    pub fn tasks_for(&self, operation: &str) -> Result<&dyn RetrievalTasks> {
        self.tasks().ok_or_else(|| unsupported(operation))
    }

    /// [`offloading`](EmbeddingService::offloading), or [`Error::InvalidOption`] naming
    /// `operation` for a service that cannot move its weights.
    pub fn offload_for(&self, operation: &str) -> Result<&dyn Offload> {
        self.offloading().ok_or_else(|| unsupported(operation))
    }
}

/// The retrieval tasks beyond dense vectors ([`EmbeddingService::tasks`]). Each fails with
/// [`Error::WrongKind`] on a model whose kind does not give its output.
#[async_trait]
pub trait RetrievalTasks: Send + Sync {
    /// Embeds inputs that are already token ids of the model's vocabulary (special tokens
    /// included as given; no prompt is added). Truncated to the model's limit unless
    /// `options.truncate` is false.
    async fn embed_token_ids(&self, inputs: &[Vec<u32>], options: &EmbedOptions) -> Result<Embeddings>;

    /// Runs a sequence-classification model ([`ModelKind::Reranker`](crate::ModelKind::Reranker) or
    /// [`ModelKind::Classifier`](crate::ModelKind::Classifier)) on texts or text pairs: raw logits per label, in input
    /// order. Only `options.truncate` and, for an LLM reranker (pairs only), `options.instruction`
    /// apply; a cross-encoder refuses an instruction ([`Error::InvalidOption`]).
    async fn classify(&self, inputs: &[ClassifyInput], options: &EmbedOptions) -> Result<Classified>;

    /// Scores each of `texts` against `query` with a cross-encoder or an LLM reranker
    /// ([`ModelKind::Reranker`](crate::ModelKind::Reranker)): one logit per text, in input order ([`Classified::scores`]
    /// gives the sigmoid). An LLM reranker (Qwen3-Reranker) puts each pair into its prompt with
    /// `options.instruction` (its default instruction when `None`) and scores it alone (positions
    /// from 0, whatever shares its batch); its logit is `logit(yes) - logit(no)`. A cross-encoder
    /// has no instruction prompt and refuses one ([`Error::InvalidOption`] naming `instruction`).
    /// A multi-vector model scores by MaxSim.
    async fn rerank(&self, query: &str, texts: &[String], options: &EmbedOptions) -> Result<Classified>;

    /// SPLADE vectors of `texts` ([`ModelKind::Sparse`](crate::ModelKind::Sparse)), or BGE-M3's lexical weights.
    async fn embed_sparse(&self, texts: &[String], options: &EmbedOptions) -> Result<SparseEmbeddings>;

    /// Late-interaction token vectors of `texts`, each L2-normalised, from a model that gives
    /// them ([`ModelKind::MultiVector`](crate::ModelKind::MultiVector), or BGE-M3's ColBERT head; see
    /// [`ModelInfo::serves`]). For a PyLate model `options.mode` picks the side: queries (the
    /// default, as PyLate's) get the marker and `[MASK]` expansion, documents the marker and
    /// the skiplist. Memory per request is bounded by the token limits, as for `embed_texts`.
    async fn embed_multi(&self, texts: &[String], options: &EmbedOptions) -> Result<MultiVectorEmbeddings>;

    /// The last hidden state of every token of `texts` (prompt and special tokens included),
    /// from an embedding model, unnormalised.
    async fn embed_tokens(&self, texts: &[String], options: &EmbedOptions) -> Result<TokenEmbeddings>;

    /// Token ids back to text with the model's tokenizer.
    async fn decode(&self, ids: &[Vec<u32>], skip_special_tokens: bool) -> Result<Vec<String>>;

    /// The vocabulary entry of each id, as the tokenizer stores it (its `id_to_token`:
    /// `##ing` for WordPiece, `Ġthe` for byte-level BPE; the strings
    /// [`tokenize`](EmbeddingService::tokenize) gives): the token a sparse vector's index stands for
    /// ([`SparseVector::indices`](crate::SparseVector::indices)), as sentence-transformers'
    /// `SparseEncoder.decode` names them. An id of the model's vocabulary that the tokenizer has
    /// no entry for (a padded embedding row) gives an empty string; an id outside the model's
    /// vocabulary is [`Error::InvalidTokens`].
    async fn vocab_tokens(&self, ids: &[u32]) -> Result<Vec<String>>;
}

/// Moving a model's weights between its device and host memory
/// ([`EmbeddingService::offloading`]), as the pool's warm tier does.
#[async_trait]
pub trait Offload: Send + Sync {
    /// Moves the model's weights to host memory (pinned on CUDA) and frees them on the
    /// device; tokenizer, config and worker stay. Requests queued before it finish first; a
    /// request that arrives afterwards restores the weights before it runs. Returns once the
    /// device memory is given back. All or nothing: on an error the model stays on its device.
    ///
    /// On a CPU model this copies the weights into fresh host buffers and frees the old ones:
    /// nothing is gained, which is why `embed-pool` only offloads CUDA models unless told
    /// otherwise; it exercises the same path for tests and the leak check.
    async fn offload(&self) -> Result<MoveReport>;

    /// Moves offloaded weights back to the device (the same tensors, bitwise, in the same
    /// dtype) and frees the host copy. A no-op when they are on the device. All or nothing:
    /// if the device has no room, the model stays offloaded and the error says why.
    async fn restore(&self) -> Result<MoveReport>;

    /// Where the weights are; `None` when no model is loaded.
    fn residency(&self) -> Option<Residency>;
}

fn unsupported(operation: &str) -> Error {
    Error::InvalidOption { name: "operation", reason: format!("this service does not {operation}") }
}
