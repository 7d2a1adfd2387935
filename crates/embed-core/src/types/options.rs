//! What to load and how: hub access, [`ModelOptions`], [`ModelSpec`], and the per-call
//! [`EmbedOptions`] with its [`InputMode`] and [`Priority`]; the test hooks of `test-util`.

use std::fmt;
use std::path::PathBuf;

use crate::model_dir::Pooling;
use crate::{DType, DeviceSpec};

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
