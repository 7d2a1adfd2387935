//! The value types of the service API: what to load and how, per-call options, and what comes
//! back (vectors, model info, cleanup reports, batcher counters).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::model_dir::Pooling;
use crate::{DType, DeviceSpec, ResolvedDevice};

/// Test hooks that make real failures happen on demand (public with feature `test-util`, set with
/// `ModelOptions::with_faults`). Off by default; cheap when off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]
pub struct FaultInjection {
    /// Any forward pass whose padded batch exceeds this many tokens performs an impossible
    /// allocation, so libtorch raises a genuine out-of-memory error (exercises batch splitting).
    pub oom_above_batch_tokens: Option<usize>,
    /// A forward pass containing exactly this input text panics inside the worker.
    pub panic_on_text: Option<String>,
    /// Every forward pass sleeps this long first (makes queueing and cancellation observable).
    pub forward_delay: Option<std::time::Duration>,
    /// The worker holds the loaded model (counted in [`memory::live_models`](crate::memory::live_models)) this long before
    /// handing it to `load`, and stops waiting as soon as that `load` is dropped: a load can be
    /// cancelled at a known point, with a model to release, on a machine of any speed.
    pub load_delay: Option<std::time::Duration>,
}

/// How hub models are fetched: the cache directory and the token. Unset fields fall back to the
/// environment (`HF_HOME`, `HF_TOKEN`, `HF_TOKEN_PATH`, the cache's `token` file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubOptions {
    /// The hub cache directory itself (where `models--org--name` folders live), as
    /// `HF_HUB_CACHE` / TEI's `HUGGINGFACE_HUB_CACHE` name it; `None`: `$HF_HOME/hub`.
    pub cache_dir: Option<PathBuf>,
    /// The token sent to the hub; `None`: `HF_TOKEN`, `HF_TOKEN_PATH` or the cache's file.
    pub token: Option<HubToken>,
}

impl HubOptions {
    /// Options with this cache directory and token.
    pub fn new(cache_dir: Option<PathBuf>, token: Option<HubToken>) -> Self {
        HubOptions { cache_dir, token }
    }
}

/// A hub access token. Its `Debug` shows no part of it, so options can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct HubToken(String);

impl HubToken {
    /// Wraps `token`; `None` when it is blank.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let t = token.into().trim().to_string();
        (!t.is_empty()).then_some(HubToken(t))
    }

    /// The token itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubToken(<redacted>)")
    }
}

/// How a model is loaded and run.
///
/// `#[non_exhaustive]`: start from [`ModelOptions::default`] and set what differs with the
/// `with_*` methods or by assigning fields, so that a new option is not a breaking change.
///
/// ```
/// use embed_core::{DType, DeviceSpec, ModelOptions};
///
/// let options = ModelOptions::default().with_device(DeviceSpec::Cpu).with_dtype(DType::Bf16).with_max_batch_tokens(4096);
/// assert_eq!(options.dtype, Some(DType::Bf16));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelOptions {
    /// Device to run on.
    pub device: DeviceSpec,
    /// Weight and activation precision. `None` picks the family's precision for the device
    /// ([`DType::preferred`]): bf16 for decoder LLMs on CUDA, f32 everywhere else;
    /// [`ModelInfo::dtype`] reports what was chosen.
    pub dtype: Option<DType>,
    /// Overrides the model's `max_seq_length` (tokens, including special tokens).
    pub max_seq_length: Option<usize>,
    /// Overrides the pooling configured by the model.
    pub pooling: Option<Pooling>,
    /// Overrides whether outputs are L2-normalised by default.
    pub normalize: Option<bool>,
    /// Prefix for [`InputMode::Query`] inputs (e.g. E5's `"query: "`); overrides the model's prompts.
    pub query_prefix: Option<String>,
    /// Prefix for [`InputMode::Document`] inputs (e.g. E5's `"passage: "`).
    pub document_prefix: Option<String>,
    /// Dynamic-batching budget: padded tokens per forward pass. `None` picks the device's
    /// default: 2048 on CPU (small passes keep activations in cache: measured fastest here),
    /// 16384 on CUDA.
    pub max_batch_tokens: Option<usize>,
    /// Most inputs per forward pass. `None`: 32 on CPU, 256 on CUDA.
    pub max_batch_size: Option<usize>,
    /// libtorch intra-op threads for CPU forward passes, set on the model's worker thread where
    /// they run (OpenMP keeps the count per thread: one set on another thread may not reach
    /// the worker). libtorch also keeps it as a process-wide default for threads that start
    /// later. `None`: libtorch's default. [`ModelInfo::threads`] reports what the worker uses.
    pub threads: Option<usize>,
    /// On the CPU in bf16, reorder the linear layers' weights once at load into oneDNN's
    /// blocked layout (prepacked: no reorder per call, and a following GELU fused into the
    /// matmul). `None` (the default): on for CPU bf16 models where the CPU can (AVX-512 BW/VL/DQ,
    /// see [`crate::cpu_prepack_unsupported_reason`]), off elsewhere; `Some(true)`: on, and a
    /// load on a CPU that cannot fails with [`crate::Error::InvalidOption`]; `Some(false)`: off.
    /// A prepacked model cannot be offloaded (a CPU model gains nothing from it).
    pub cpu_prepack: Option<bool>,
    /// int8 only: the texts to calibrate on (a sample of what the model will embed, tens to a
    /// few hundred), instead of the built-in mix of short texts and passages. Quantization then
    /// fits the activations this model really sees: worth it for a domain or a language the
    /// built-in texts do not cover.
    pub int8_calibration: Option<Vec<String>>,
    /// int8 only: how it computes. `None` picks oneDNN's int8 GEMM on a CPU with VNNI and
    /// weight-only elsewhere (CUDA, other CPUs); `WeightOnly` on such a CPU keeps f32
    /// activations with int8 weights (a quarter of f32's weight memory, no faster than f32; on
    /// all-MiniLM-L6-v2 as close to f32 as oneDNN's int8, worst cosine 0.9992 against 0.9990).
    pub int8_kernel: Option<crate::Int8Kernel>,
    /// Serve [`Priority::Interactive`] work ahead of [`Priority::Bulk`] work (the default).
    /// `Some(false)`: every request in arrival order in full-size batches, whatever its
    /// priority (for comparison; a query then waits behind whatever indexing is queued).
    pub priorities: Option<bool>,
    /// While interactive requests meet bulk work (one arrived in the last second while a bulk
    /// request was in flight, for any model of the process), bulk batches are cut so that each takes about this long, by the worker's
    /// measured speed: a query waits for at most one such batch. `None`: 20 ms on the CPU, 100
    /// ms on CUDA. Without interactive traffic bulk batches use the full token budget.
    pub bulk_batch_ms: Option<u64>,
    /// CPU: a bulk forward pass stops between encoder layers to run waiting interactive
    /// batches to completion, and for another model's waiting interactive pass, so bulk
    /// batches keep their full size and a query waits for about one layer of one (the default,
    /// with priorities on). `Some(false)`: bulk batches are cut to `bulk_batch_ms` instead.
    /// CUDA passes are queued on the device and never stop between layers.
    pub layer_preemption: Option<bool>,
    /// Serve a decoder LLM (a `*ForCausalLM` checkpoint: Qwen3-Reranker) as a
    /// [`ModelKind::Reranker`], scoring each (query, document) pair in this prompt by the logits
    /// of its answer tokens at the last position. For a converted `*ForSequenceClassification`
    /// decoder reranker (a reranker already) it replaces the default prompt
    /// ([`LlmReranker::qwen3`](crate::LlmReranker::qwen3)); any other model refuses it.
    pub llm_reranker: Option<crate::LlmReranker>,
    /// The prompt put before every input a request gives no mode, prompt name or instruction
    /// for, instead of the model's own default prompt (TEI's `--default-prompt`).
    pub default_prompt: Option<String>,
    /// The name of one of the model's prompts (`config_sentence_transformers.json`) to use as
    /// [`ModelOptions::default_prompt`] (TEI's `--default-prompt-name`); a load fails with
    /// [`crate::Error::UnknownPrompt`] when the model has no such prompt.
    pub default_prompt_name: Option<String>,
    /// Where hub models are cached and the token that fetches them.
    pub hub: HubOptions,
    /// The kernels' switches, for comparison and diagnosis (the defaults serve best): how
    /// attention runs on the CPU and on CUDA, int8's Hadamard rounding, the fused CPU
    /// LayerNorm, stage profiling. embed-server sets them from its `EMBED_*` variables
    /// ([`crate::Tuning::from_env`]).
    pub tuning: crate::Tuning,
    /// Failure injection for tests. A private field, present with and without feature
    /// `test-util` (only its setter, `with_faults`, needs the feature): the public field list
    /// does not change when a dev-dependency turns the feature on, and the hooks travel with the
    /// options to every load (a pool's reload included). Always the default without the feature.
    faults: FaultInjection,
}

impl ModelOptions {
    /// The failure injection in force (none unless a test set it with feature `test-util`).
    pub(crate) fn fault_injection(&self) -> FaultInjection {
        self.faults.clone()
    }

    /// Injects failures into the model these options load (feature `test-util`).
    #[cfg(feature = "test-util")]
    #[must_use]
    pub fn with_faults(mut self, faults: FaultInjection) -> Self {
        self.faults = faults;
        self
    }
}

with_setters!(ModelOptions {
    plain with_device(device: DeviceSpec) "Sets [`ModelOptions::device`].";
    some with_dtype(dtype: DType) "Sets [`ModelOptions::dtype`].";
    some with_max_seq_length(max_seq_length: usize) "Sets [`ModelOptions::max_seq_length`].";
    some with_pooling(pooling: Pooling) "Sets [`ModelOptions::pooling`].";
    some with_normalize(normalize: bool) "Sets [`ModelOptions::normalize`].";
    text with_query_prefix(query_prefix: String) "Sets [`ModelOptions::query_prefix`].";
    text with_document_prefix(document_prefix: String) "Sets [`ModelOptions::document_prefix`].";
    some with_max_batch_tokens(max_batch_tokens: usize) "Sets [`ModelOptions::max_batch_tokens`].";
    some with_max_batch_size(max_batch_size: usize) "Sets [`ModelOptions::max_batch_size`].";
    some with_threads(threads: usize) "Sets [`ModelOptions::threads`].";
    some with_cpu_prepack(cpu_prepack: bool) "Sets [`ModelOptions::cpu_prepack`].";
    some with_int8_calibration(int8_calibration: Vec<String>) "Sets [`ModelOptions::int8_calibration`].";
    some with_int8_kernel(int8_kernel: crate::Int8Kernel) "Sets [`ModelOptions::int8_kernel`].";
    some with_priorities(priorities: bool) "Sets [`ModelOptions::priorities`].";
    some with_bulk_batch_ms(bulk_batch_ms: u64) "Sets [`ModelOptions::bulk_batch_ms`].";
    some with_layer_preemption(layer_preemption: bool) "Sets [`ModelOptions::layer_preemption`].";
    some with_llm_reranker(llm_reranker: crate::LlmReranker) "Sets [`ModelOptions::llm_reranker`].";
    text with_default_prompt(default_prompt: String) "Sets [`ModelOptions::default_prompt`].";
    text with_default_prompt_name(default_prompt_name: String) "Sets [`ModelOptions::default_prompt_name`].";
    plain with_hub(hub: HubOptions) "Sets [`ModelOptions::hub`].";
    plain with_tuning(tuning: crate::Tuning) "Sets [`ModelOptions::tuning`].";
});

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            device: DeviceSpec::Cpu,
            dtype: None,
            max_seq_length: None,
            pooling: None,
            normalize: None,
            query_prefix: None,
            document_prefix: None,
            max_batch_tokens: None,
            max_batch_size: None,
            threads: None,
            cpu_prepack: None,
            int8_calibration: None,
            int8_kernel: None,
            priorities: None,
            bulk_batch_ms: None,
            layer_preemption: None,
            llm_reranker: None,
            default_prompt: None,
            default_prompt_name: None,
            hub: HubOptions::default(),
            tuning: crate::Tuning::DEFAULT,
            faults: FaultInjection::default(),
        }
    }
}

/// A model to load: a display name, where it comes from, and how to run it. Built with
/// [`ModelSpec::new`] and its `named`/`with_options` (`#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelSpec {
    /// Name reported in [`ModelInfo`] and errors (a registry name, or the source itself).
    pub name: String,
    /// A local directory or a hub id (see [`crate::ModelSource::parse`]).
    pub source: String,
    /// Device, precision, limits and batching for this model.
    pub options: ModelOptions,
}

impl ModelSpec {
    /// A spec named after its source, with default options.
    pub fn new(source: impl Into<String>) -> Self {
        let source = source.into();
        ModelSpec { name: source.clone(), source, options: ModelOptions::default() }
    }

    /// Sets the display name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the options.
    pub fn with_options(mut self, options: ModelOptions) -> Self {
        self.options = options;
        self
    }
}

/// Whether an input is a search query or a document being indexed (asymmetric models such as
/// E5 and BGE prefix them differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// A search query.
    Query,
    /// A document / passage.
    Document,
}

/// Per-call options of [`EmbeddingService::embed_texts`](crate::EmbeddingService::embed_texts).
///
/// `#[non_exhaustive]`: start from [`EmbedOptions::default`] (or [`EmbedOptions::query`],
/// [`EmbedOptions::document`]) and set what differs with the `with_*` methods or by assigning
/// fields.
///
/// ```
/// use embed_core::{EmbedOptions, Priority};
///
/// let options = EmbedOptions::query().with_dimensions(256).with_priority(Priority::Bulk);
/// assert_eq!(options.dimensions, Some(256));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmbedOptions {
    /// Query or document prefixing; `None` applies the model's default prompt, if any.
    pub mode: Option<InputMode>,
    /// A prompt defined by the model (`config_sentence_transformers.json`), by name.
    pub prompt_name: Option<String>,
    /// A literal instruction prefix; wins over `prompt_name` and `mode`.
    pub instruction: Option<String>,
    /// L2-normalise the outputs; `None` follows the model's configuration.
    pub normalize: Option<bool>,
    /// Truncate inputs longer than the model's limit (default); when false they are an error.
    pub truncate: bool,
    /// Matryoshka: keep the first N dimensions (1 ≤ N ≤ the model's), re-normalised when the
    /// outputs are normalised. `None` keeps them all.
    pub dimensions: Option<usize>,
    /// How urgent the request is; `None` picks by size ([`Priority::for_inputs`]).
    pub priority: Option<Priority>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions { mode: None, prompt_name: None, instruction: None, normalize: None, truncate: true, dimensions: None, priority: None }
    }
}

/// How urgent a request is. A model's worker batches interactive work first; bulk work gets
/// at least one batch in every few while interactive work keeps coming (it cannot starve), and
/// while interactive requests are about its batches are cut short (see
/// [`ModelOptions::bulk_batch_ms`]) so that a query waits for at most one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// A user is waiting: search queries, a single document.
    Interactive,
    /// Throughput over latency: indexing, backfills.
    Bulk,
}

impl Priority {
    /// Requests of at most this many inputs default to [`Priority::Interactive`], larger ones to
    /// [`Priority::Bulk`].
    pub const INTERACTIVE_MAX_INPUTS: usize = 8;

    /// The priority of a request of `inputs` inputs that names none.
    pub fn for_inputs(inputs: usize) -> Priority {
        if inputs <= Self::INTERACTIVE_MAX_INPUTS {
            Priority::Interactive
        } else {
            Priority::Bulk
        }
    }

    /// `"interactive"` or `"bulk"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Bulk => "bulk",
        }
    }

    /// Both, most urgent first.
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Bulk];
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "interactive" => Ok(Priority::Interactive),
            "bulk" => Ok(Priority::Bulk),
            other => Err(crate::Error::InvalidOption {
                name: "priority",
                reason: format!("{other:?} is not \"interactive\" or \"bulk\""),
            }),
        }
    }
}

impl EmbedOptions {
    /// Options for queries.
    pub fn query() -> Self {
        EmbedOptions { mode: Some(InputMode::Query), ..Default::default() }
    }

    /// Options for documents.
    pub fn document() -> Self {
        EmbedOptions { mode: Some(InputMode::Document), ..Default::default() }
    }

    /// The priority of a request of `inputs` inputs under these options: the one asked for, else
    /// the default by size ([`Priority::for_inputs`]).
    pub fn priority_for(&self, inputs: usize) -> Priority {
        self.priority.unwrap_or(Priority::for_inputs(inputs))
    }
}

with_setters!(EmbedOptions {
    some with_mode(mode: InputMode) "Sets [`EmbedOptions::mode`].";
    text with_prompt_name(prompt_name: String) "Sets [`EmbedOptions::prompt_name`].";
    text with_instruction(instruction: String) "Sets [`EmbedOptions::instruction`].";
    some with_normalize(normalize: bool) "Sets [`EmbedOptions::normalize`].";
    plain with_truncate(truncate: bool) "Sets [`EmbedOptions::truncate`].";
    some with_dimensions(dimensions: usize) "Sets [`EmbedOptions::dimensions`].";
    some with_priority(priority: Priority) "Sets [`EmbedOptions::priority`].";
});

/// The result of [`EmbeddingService::embed_texts`](crate::EmbeddingService::embed_texts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per input after truncation, special tokens and prompt included.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

impl Embeddings {
    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

/// One input after tokenization.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenizedText {
    /// Token ids fed to the model.
    pub ids: Vec<u32>,
    /// Token strings.
    pub tokens: Vec<String>,
    /// Whether the input was truncated to the limit.
    pub truncated: bool,
}

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
    /// ([`EmbeddingService::rerank`](crate::EmbeddingService::rerank)).
    Reranker,
    /// A sequence classifier with several labels
    /// ([`EmbeddingService::classify`](crate::EmbeddingService::classify)).
    Classifier,
    /// SPLADE: one weight per vocabulary entry, mostly zero
    /// ([`EmbeddingService::embed_sparse`](crate::EmbeddingService::embed_sparse)).
    Sparse,
    /// Late interaction (ColBERT, PyLate checkpoints): one normalised vector per token
    /// ([`EmbeddingService::embed_multi`](crate::EmbeddingService::embed_multi)); it reranks by
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

/// One input of [`EmbeddingService::classify`](crate::EmbeddingService::classify): a text, or a
/// pair encoded with the tokenizer's pair template (a query and a passage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyInput {
    /// One text.
    Text(String),
    /// Two texts; the second is truncated first when the pair is too long.
    Pair(String, String),
}

/// Per-token logits turned into scores the way sentence-transformers' CrossEncoder and TEI do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Classified {
    /// Raw logits per input, one per label, in input order.
    pub logits: Vec<Vec<f32>>,
    /// Tokens per input after truncation, special tokens included.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
    /// The `logits` are similarities already (a multi-vector model's MaxSim), which
    /// [`Classified::scores`] returns unchanged.
    pub similarities: bool,
}

impl Classified {
    /// Scores per input: the sigmoid of the logit for one-label models (rerankers), the
    /// softmax over the labels otherwise; MaxSim similarities as they are.
    pub fn scores(&self) -> Vec<Vec<f32>> {
        if self.similarities {
            return self.logits.clone();
        }
        self.logits.iter().map(|l| activate(l)).collect()
    }

    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

fn activate(logits: &[f32]) -> Vec<f32> {
    if logits.len() == 1 {
        return vec![(1.0 / (1.0 + (-f64::from(logits[0])).exp())) as f32];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// A sparse vector: the non-zero entries of a vocabulary-sized vector, by increasing index.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct SparseVector {
    /// Vocabulary ids with a non-zero weight, increasing.
    pub indices: Vec<u32>,
    /// Their weights.
    pub values: Vec<f32>,
}

/// The result of [`EmbeddingService::embed_sparse`](crate::EmbeddingService::embed_sparse).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseEmbeddings {
    /// One sparse vector per input, in input order.
    pub vectors: Vec<SparseVector>,
    /// Tokens per input after truncation.
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

/// The result of [`EmbeddingService::embed_multi`](crate::EmbeddingService::embed_multi): per
/// input, its token vectors, each L2-normalised (BGE-M3's ColBERT vectors: every token after
/// `[CLS]`; a PyLate model's: a query's every token, expansion included, a document's without
/// its skiplist's punctuation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiVectorEmbeddings {
    /// Per input, one vector per kept token.
    pub vectors: Vec<Vec<Vec<f32>>>,
    /// Tokens per input after truncation (the model's input, special tokens and markers included).
    pub token_counts: Vec<usize>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
}

impl MultiVectorEmbeddings {
    /// Sum of `token_counts`.
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

/// Late interaction's score: for each query vector the best dot product with a document
/// vector, summed. A NaN product is never the best; a query vector against an empty document
/// adds 0. `None` when the vectors' widths differ.
pub fn max_sim(query: &[Vec<f32>], document: &[Vec<f32>]) -> Option<f32> {
    let width = query.first().or(document.first()).map_or(0, Vec::len);
    if query.iter().chain(document).any(|v| v.len() != width) {
        return None;
    }
    let mut total = 0.0f32;
    for q in query {
        let mut best: Option<f32> = None;
        for d in document {
            let x: f32 = q.iter().zip(d).map(|(a, b)| a * b).sum();
            if !x.is_nan() && best.is_none_or(|b| x > b) {
                best = Some(x);
            }
        }
        total += best.unwrap_or(0.0);
    }
    Some(total)
}

/// The result of [`EmbeddingService::embed_tokens`](crate::EmbeddingService::embed_tokens): the
/// last hidden state of every token (ColBERT-style use, late chunking).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenEmbeddings {
    /// Per input, one vector per token (special tokens and prompt included).
    pub vectors: Vec<Vec<Vec<f32>>>,
    /// Whether each input was truncated.
    pub truncated: Vec<bool>,
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
    /// Offloaded to host memory ([`EmbeddingService::offload`](crate::EmbeddingService::offload)):
    /// tokenizer, config and worker kept, no weight on the device. The next request, or
    /// [`EmbeddingService::restore`](crate::EmbeddingService::restore), brings them back.
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

/// What moving a model's weights did ([`EmbeddingService::offload`](crate::EmbeddingService::offload)
/// and [`EmbeddingService::restore`](crate::EmbeddingService::restore)).
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
}

#[cfg(test)]
mod tests {
    use super::max_sim;

    #[test]
    fn max_sim_sums_each_query_vectors_best_match() {
        let q = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let d = vec![vec![0.5, 0.5], vec![0.9, 0.1], vec![0.2, 0.7]];
        // Best for [1, 0]: 0.9; for [0, 1]: 0.7.
        assert!((max_sim(&q, &d).unwrap() - 1.6).abs() < 1e-6);
        // A NaN product is never the best; an empty document adds 0 per query vector.
        let with_nan = vec![vec![f32::NAN, 0.0], vec![0.9, 0.1]];
        assert!((max_sim(&q[..1], &with_nan).unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(max_sim(&q, &[]), Some(0.0));
        // Widths must agree.
        assert_eq!(max_sim(&q, &[vec![1.0, 0.0, 0.0]]), None);
    }
}
