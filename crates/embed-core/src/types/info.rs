//! What the service reports about a model: its kind, [`ModelInfo`], cleanup and move reports,
//! its lifecycle state, and the batcher's counters.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::model_dir::Pooling;
use crate::{DType, ResolvedDevice};

/// What a loaded model computes, read from its directory: `*ForSequenceClassification`
/// checkpoints are cross-encoders, SPLADE directories (a `SpladePooling` module, or a
/// `*ForMaskedLM` checkpoint without sentence-transformers modules) sparse encoders, the rest
/// sentence embedders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Dense sentence vectors ([`EmbeddingService::embed_texts`](crate::EmbeddingService::embed_texts)).
    Embedding,
    /// A cross-encoder with one output: a relevance score per (query, passage) pair
    /// ([`RetrievalTasks::rerank`](crate::RetrievalTasks::rerank)).
    Reranker,
    /// A sequence classifier with several labels
    /// ([`RetrievalTasks::classify`](crate::RetrievalTasks::classify)).
    Classifier,
    /// SPLADE: one weight per vocabulary entry, mostly zero
    /// ([`RetrievalTasks::embed_sparse`](crate::RetrievalTasks::embed_sparse)).
    Sparse,
    /// Late interaction (ColBERT, PyLate checkpoints): one normalised vector per token
    /// ([`RetrievalTasks::embed_multi`](crate::RetrievalTasks::embed_multi)); it reranks by
    /// MaxSim.
    MultiVector,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Reranker => "reranker",
            ModelKind::Classifier => "classifier",
            ModelKind::Sparse => "sparse",
            ModelKind::MultiVector => "multi_vector",
        })
    }
}
/// What is loaded, where, and how big it is (`#[non_exhaustive]`: the service builds it; read
/// its fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ModelInfo {
    /// Display name.
    pub name: String,
    /// The source string as given.
    pub source: String,
    /// The directory the files were read from.
    pub dir: PathBuf,
    /// `model_type` from config.json.
    pub architecture: String,
    /// The family implementing it (`bert` also serves RoBERTa, XLM-R and CamemBERT).
    pub family: crate::Family,
    /// What the model computes.
    pub kind: ModelKind,
    /// Output dimension: the embedding width; the number of labels (classifiers, rerankers);
    /// the vocabulary size (sparse).
    pub dimension: usize,
    /// Label names by output index (classifiers and rerankers; empty otherwise).
    pub labels: Vec<String>,
    /// Token limit per input.
    pub max_seq_length: usize,
    /// Pooling used.
    pub pooling: Pooling,
    /// Whether outputs are normalised by default.
    pub normalize: bool,
    /// Device in use.
    pub device: ResolvedDevice,
    /// How the device was chosen, when `auto` was asked for.
    pub device_note: Option<String>,
    /// Precision in use.
    pub dtype: DType,
    /// Bytes held by the weights on `device`.
    pub weight_bytes: u64,
    /// Encoder layers.
    pub num_layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Named prompts the model defines.
    pub prompts: BTreeMap<String, String>,
    /// Wall time of the load.
    pub load_duration: Duration,
    /// Intra-op threads of the worker's forward passes, as libtorch reports them on the worker
    /// thread (see [`ModelOptions::threads`]).
    pub threads: usize,
    /// The linear layers' weights are prepacked for oneDNN (CPU bf16; see
    /// [`ModelOptions::cpu_prepack`]).
    pub cpu_prepacked: bool,
    /// For an int8 model, how it computes: oneDNN's int8 GEMM or weight-only.
    pub int8_kernel: Option<crate::Int8Kernel>,
    /// Outputs beside its kind's own: BGE-M3 (an embedder) also gives
    /// [`ModelKind::Sparse`] lexical weights and [`ModelKind::MultiVector`] ColBERT vectors.
    pub extra_outputs: Vec<ModelKind>,
}

impl ModelInfo {
    /// Whether the model gives `kind`'s output (its own kind, or one of `extra_outputs`).
    pub fn serves(&self, kind: ModelKind) -> bool {
        self.kind == kind || self.extra_outputs.contains(&kind)
    }
}

#[cfg(feature = "test-util")]
impl ModelInfo {
    /// The description a fake service gives (feature `test-util`): a ready CPU f32 embedder
    /// named `name` with `dimension`-wide vectors and `weight_bytes` of weights; everything
    /// else plain. Tests change what they need by assigning fields.
    pub fn fake(name: &str, source: &str, dimension: usize, weight_bytes: u64) -> ModelInfo {
        ModelInfo {
            name: name.to_string(),
            source: source.to_string(),
            dir: PathBuf::from(source),
            architecture: "fake".into(),
            family: crate::Family::Bert,
            kind: ModelKind::Embedding,
            dimension,
            labels: Vec::new(),
            max_seq_length: 512,
            pooling: Pooling::Mean,
            normalize: false,
            device: ResolvedDevice::Cpu,
            device_note: None,
            dtype: DType::F32,
            weight_bytes,
            num_layers: 1,
            vocab_size: 256,
            prompts: BTreeMap::new(),
            load_duration: Duration::ZERO,
            threads: 1,
            cpu_prepacked: false,
            int8_kernel: None,
            extra_outputs: Vec::new(),
        }
    }
}

/// What a cleanup released.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct CleanupReport {
    /// The model that was released (`None` if nothing was loaded).
    pub model: Option<String>,
    /// Weight bytes of the released model: its size as loaded ([`ModelInfo::weight_bytes`]),
    /// reported once its worker thread has exited; 0 when nothing was loaded. Not a measurement
    /// of freed memory: [`memory::cpu_allocator_in_use_bytes`](crate::memory::cpu_allocator_in_use_bytes) and [`memory::cuda_memory`](crate::memory::cuda_memory) are.
    pub model_weight_bytes: u64,
    /// CUDA caching-allocator reserved bytes before / after emptying the cache (CUDA only).
    pub cuda_reserved_before: Option<u64>,
    /// See `cuda_reserved_before`.
    pub cuda_reserved_after: Option<u64>,
    /// Time from the cleanup request to the worker thread having exited.
    pub duration: Duration,
}

/// Where a loaded model's weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// On the model's device, serving.
    Device,
    /// Offloaded to host memory ([`Offload::offload`](crate::Offload::offload)):
    /// tokenizer, config and worker kept, no weight on the device. The next request, or
    /// [`Offload::restore`](crate::Offload::restore), brings them back.
    Host,
}

impl std::fmt::Display for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Residency::Device => "device",
            Residency::Host => "host",
        })
    }
}

/// What moving a model's weights did ([`Offload::offload`](crate::Offload::offload)
/// and [`Offload::restore`](crate::Offload::restore)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MoveReport {
    /// Where the weights are now.
    pub residency: Residency,
    /// False when they already were there (nothing was copied).
    pub moved: bool,
    /// Bytes of the tensors copied (the model's weight bytes).
    pub tensor_bytes: u64,
    /// Host memory the offloaded copy holds (pinned on CUDA): the tensors packed back to back
    /// in 64 MiB buffers, so a little above `tensor_bytes`. Before a restore, what it freed.
    pub host_bytes: u64,
    /// Time on the worker thread: the copies, and freeing the memory left behind.
    pub duration: Duration,
}

/// Lifecycle of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Nothing loaded yet (or the last load failed).
    Unloaded,
    /// A load is in progress.
    Loading,
    /// Serving requests.
    Ready,
    /// Cleanup in progress: intake stopped.
    Closing,
    /// Cleaned up; every tensor released. `load` may be called again.
    Closed,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Unloaded => "no model is loaded",
            ServiceState::Loading => "a model is loading",
            ServiceState::Ready => "ready",
            ServiceState::Closing => "cleanup is in progress",
            ServiceState::Closed => "the service was cleaned up",
        })
    }
}

/// Counters of the dynamic batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BatchStats {
    /// Requests waiting for their first batch.
    pub queued_requests: usize,
    /// Forward passes run.
    pub batches: u64,
    /// Inputs embedded.
    pub sequences: u64,
    /// Real tokens processed.
    pub tokens: u64,
    /// Tokens processed including padding.
    pub padded_tokens: u64,
    /// Times a batch was split after running out of memory.
    pub oom_splits: u64,
    /// Forward passes whose attention ran packed (variable-length flash attention, no
    /// padding: CUDA in f16/bf16); the others ran padded attention.
    pub packed_attention_batches: u64,
    /// Forward passes whose padded attention ran in several runs of similar length, each at
    /// its own padded length (CPU encoders with `tuning.cpu_attention` `Grouped`).
    pub length_grouped_batches: u64,
    /// Forward passes whose attention ran on the CPU without padding, each sequence over its
    /// own tokens (every encoder family by default; `tuning.cpu_attention` `Grouped` or `Padded`
    /// turns it off).
    pub varlen_attention_batches: u64,
    /// Times the weights were offloaded to host memory.
    pub offloads: u64,
    /// Times they were restored to the device (asked for, or caused by a request).
    pub restores: u64,
    /// Restores a request caused: it arrived while the weights were in host memory.
    pub auto_restores: u64,
    /// Interactive batches run between the encoder layers of a bulk pass (CPU,
    /// [`ModelOptions::layer_preemption`]).
    pub preempting_batches: u64,
    /// Preemption points that CPU bulk passes passed, where waiting interactive work could run:
    /// three per encoder layer (before it, after its attention half, between its feed-forward's
    /// two projections).
    pub preemption_points: u64,
    /// Interactive requests' queue and waits.
    pub interactive: PriorityStats,
    /// Bulk requests' queue and waits.
    pub bulk: PriorityStats,
}

/// The queue of one priority (see [`Priority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PriorityStats {
    /// Requests waiting for their first batch.
    pub queued_requests: usize,
    /// Requests whose first batch has started.
    pub started_requests: u64,
    /// Their summed waits from arrival to their first batch, microseconds (divide by
    /// `started_requests` for the mean).
    pub first_batch_wait_us: u64,
    /// Wall time of this priority's forward passes, microseconds, from launch to read-back (a
    /// CPU bulk pass's detours to interactive work counted as interactive). A CPU pass holds
    /// its worker's threads, so with one model using the whole budget this over a span of time
    /// is the share of the CPU the priority took; CUDA passes overlap in flight.
    pub compute_us: u64,
}

