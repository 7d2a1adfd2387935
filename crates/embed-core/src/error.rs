//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout `embed-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or embedding text.
///
/// Messages name the file, model or field at fault so that an operator can act on them.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model source string is neither an existing directory nor a valid hub id.
    #[error("invalid model source {source_str:?}: {reason}")]
    InvalidSource {
        /// The string the caller gave.
        source_str: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A hub id that is not in the local Hugging Face cache and cannot be downloaded.
    #[error(
        "model {id:?} is not in the local Hugging Face cache ({cache}) and could not be downloaded: {reason}. \
         Download it on a connected machine (e.g. `huggingface-cli download {id}`) or pass a local model directory"
    )]
    ModelNotAvailable {
        /// The hub id.
        id: String,
        /// The cache directory that was searched.
        cache: PathBuf,
        /// What the download attempt said (or that the hub is offline).
        reason: String,
    },
    /// A file the model needs is missing.
    #[error("model file {path} is missing{hint}")]
    MissingFile {
        /// The expected path.
        path: PathBuf,
        /// Extra guidance (may be empty).
        hint: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The OS error (shared: the error is `Clone`, so that every waiter of a failed batch
        /// gets it whole).
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// A JSON config file is malformed or has a field of the wrong type.
    #[error("invalid config {path}: {reason}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The config names an architecture this crate does not implement.
    #[error("unsupported model family: model_type {model_type:?} in {path} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The `model_type` found.
        model_type: String,
        /// The config file.
        path: PathBuf,
        /// The `model_type` values that load, comma-separated.
        supported: String,
    },
    /// The weights file is corrupt or unreadable.
    #[error("invalid weights {path}: {reason}")]
    InvalidWeights {
        /// The safetensors file.
        path: PathBuf,
        /// What libtorch/safetensors said.
        reason: String,
    },
    /// A `pytorch_model.bin` / `.pt` pickle that holds more than a state dict of tensors (a
    /// global that is code or a custom class, a value that is not a tensor). Nothing in it was
    /// run.
    #[error("refusing weights {path}: {reason}; only a dict of tensor names to tensors is read from a torch pickle (convert the checkpoint to safetensors)")]
    PickleRefused {
        /// The pickle file.
        path: PathBuf,
        /// What it holds that is not a tensor or a dict of tensors.
        reason: String,
    },
    /// A torch checkpoint in the legacy (before torch 1.6, not zip) serialization.
    #[error(
        "weights {path} are in torch's legacy (pre-1.6, non-zip) format, which is not read: re-save them with a current \
         torch (`torch.save(torch.load(path), path)`) or convert them to safetensors \
         (`safetensors.torch.save_file(torch.load(path), \"model.safetensors\")`)"
    )]
    LegacyTorchFormat {
        /// The file.
        path: PathBuf,
    },
    /// The weights do not fit the config (missing tensor or wrong shape).
    #[error("weights {path} do not match the config: {reason}")]
    WeightsMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor at fault.
        reason: String,
    },
    /// The tokenizer file cannot be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizers crate said.
        reason: String,
    },
    /// A device string that does not parse.
    #[error("invalid device {0:?} (expected cpu, cuda, cuda:N or auto)")]
    InvalidDevice(String),
    /// A dtype string that does not parse.
    #[error("invalid dtype {0:?} (expected f32, f16, bf16 or int8)")]
    InvalidDtype(String),
    /// CUDA was asked for explicitly but is not usable. Never silently replaced by CPU.
    #[error("device {requested} was requested but {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A dtype that the chosen device cannot run.
    #[error("dtype {dtype} is not supported on {device}: {reason}")]
    UnsupportedDtype {
        /// The precision asked for (`f16`, …).
        dtype: String,
        /// The device it was asked for on (`cpu`, `cuda:0`, …).
        device: String,
        /// Why.
        reason: String,
    },
    /// An option value outside its range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option's (or request field's) name, e.g. `max_seq_length` or `dimensions`.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A prompt name that the model's config does not define.
    #[error("model {model} has no prompt named {name:?} (known: {known})")]
    UnknownPrompt {
        /// The model's display name (`ModelSpec::name`).
        model: String,
        /// The prompt name asked for.
        name: String,
        /// The prompts the model defines.
        known: String,
    },
    /// An input longer than the model's limit while truncation was disabled.
    #[error("input {index} has {tokens} tokens, more than the limit of {limit} (truncation is off)")]
    InputTooLong {
        /// Index of the input in the request.
        index: usize,
        /// Its token count.
        tokens: usize,
        /// The model's limit.
        limit: usize,
    },
    /// A pre-tokenized input holds an id outside the model's vocabulary, or no ids at all.
    #[error("input {index}: {reason}")]
    InvalidTokens {
        /// Index of the input in the request.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The operation is not what the loaded model computes (e.g. reranking with a sentence
    /// embedder, or embedding with a cross-encoder).
    #[error("model {model:?} is a{} {kind} model and cannot {operation}{}", if matches!(kind, crate::ModelKind::Embedding) { "n" } else { "" }, kind_hint(*kind))]
    WrongKind {
        /// The model's display name (`ModelSpec::name`).
        model: String,
        /// What it computes.
        kind: crate::ModelKind,
        /// What was asked (e.g. "rerank").
        operation: &'static str,
    },
    /// The model ran out of memory even for a single input.
    #[error("out of memory on {device} while embedding {inputs} input(s) of up to {max_tokens} tokens: {detail}")]
    OutOfMemory {
        /// The device whose memory ran out (`cpu`, `cuda:0`, …).
        device: String,
        /// How many inputs were in the smallest batch tried.
        inputs: usize,
        /// Longest input in tokens.
        max_tokens: usize,
        /// libtorch's message.
        detail: String,
    },
    /// The service has no model loaded (never loaded, failed to load, or cleaned up).
    #[error("embedding service is not ready: {state}")]
    NotReady {
        /// The lifecycle state it is in.
        state: crate::ServiceState,
    },
    /// The service was shut down while this request was queued or running.
    #[error("embedding service for {model} was shut down before the request completed")]
    ShutDown {
        /// The model's display name (`ModelSpec::name`).
        model: String,
    },
    /// `load` was called on a service that already has a model or is loading one.
    #[error("embedding service is {state}; call cleanup() before loading another model")]
    AlreadyLoaded {
        /// The state it is in.
        state: crate::ServiceState,
    },
    /// The model's worker thread panicked while running the request.
    #[error("model worker for {model} panicked: {message}")]
    WorkerPanicked {
        /// The model's display name (`ModelSpec::name`).
        model: String,
        /// The panic message.
        message: String,
    },
    /// libtorch reported an error during the forward pass.
    #[error("inference failed for {model}: {message}")]
    Inference {
        /// The model's display name (`ModelSpec::name`).
        model: String,
        /// libtorch's message.
        message: String,
    },
    /// A memory probe failed (e.g. the accelerator shim reported an error).
    #[error("memory probe failed: {0}")]
    Memory(String),
}

/// What a model of `kind` can do instead, for [`Error::WrongKind`]'s message.
fn kind_hint(kind: crate::ModelKind) -> &'static str {
    match kind {
        crate::ModelKind::Embedding => " (it embeds: use embed, embed_all or /v1/embeddings)",
        crate::ModelKind::Reranker => " (it scores query/passage pairs: use rerank or predict)",
        crate::ModelKind::Classifier => " (it classifies: use predict)",
        crate::ModelKind::Sparse => " (it returns sparse vectors: use embed_sparse)",
        crate::ModelKind::MultiVector => " (it returns token vectors: use embed_multi or rerank)",
    }
}

impl Error {
    /// True for [`Error::OutOfMemory`].
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source: std::sync::Arc::new(source) }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { path: path.into(), reason: reason.into() }
    }
}

/// The message of a caught panic (`catch_unwind`, a task's `JoinError`): its `&str` or
/// `String` payload, or a placeholder for any other payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = payload.downcast_ref::<KernelError>() {
        e.to_string()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Why a kernel failed: a libtorch op, a shim entry point, a layer of `nn`. Kernels return it
/// where they can; inside a forward pass (whose ops panic, as tch's infallible API does) it is
/// raised as the panic's payload ([`KernelError::raise`]) and the runtime takes it back typed
/// ([`KernelError::from_panic`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KernelError {
    /// Memory ran out on the device (CUDA's caching allocator or the CPU allocator): the
    /// runtime splits the batch and retries. libtorch's message.
    #[error("{0}")]
    OutOfMemory(String),
    /// The kernel refused the inputs (a device, dtype or shape it does not support), or
    /// libtorch failed for another reason. Its message.
    #[error("{0}")]
    Refused(String),
}

impl KernelError {
    /// Classifies a failure libtorch reported as text (its C++ exceptions reach Rust only as
    /// messages, through tch and through the shim): the one place such text is read.
    pub(crate) fn from_message(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        let m = msg.to_ascii_lowercase();
        if m.contains("out of memory") || m.contains("can't allocate memory") || m.contains("outofmemory") {
            KernelError::OutOfMemory(msg)
        } else {
            KernelError::Refused(msg)
        }
    }

    /// The error of a caught panic: a raised `KernelError` as it was, a libtorch panic (tch's
    /// `String` payload) classified by [`KernelError::from_message`].
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        match payload.downcast_ref::<KernelError>() {
            Some(e) => e.clone(),
            None => KernelError::from_message(panic_message(payload)),
        }
    }

    /// Unwinds out of a forward pass with this error as the payload (see
    /// [`KernelError::from_panic`]).
    pub(crate) fn raise(self) -> ! {
        std::panic::panic_any(self)
    }

    /// The same error, its message prefixed with what was being done.
    pub(crate) fn context(self, what: &str) -> Self {
        match self {
            KernelError::OutOfMemory(m) => KernelError::OutOfMemory(format!("{what}: {m}")),
            KernelError::Refused(m) => KernelError::Refused(format!("{what}: {m}")),
        }
    }
}

impl From<tch::TchError> for KernelError {
    fn from(e: tch::TchError) -> Self {
        KernelError::from_message(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::KernelError;

    #[test]
    fn libtorch_messages_are_classified_once() {
        let oom = |msg: &str| matches!(KernelError::from_message(msg), KernelError::OutOfMemory(_));
        assert!(oom("CUDA out of memory. Tried to allocate 2.00 GiB"));
        assert!(oom("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"));
        assert_eq!(KernelError::from_message("shape mismatch"), KernelError::Refused("shape mismatch".into()));
    }

    #[test]
    fn a_raised_error_comes_back_typed_and_a_string_panic_classified() {
        let raised = std::panic::catch_unwind(|| KernelError::OutOfMemory("no room".into()).raise()).unwrap_err();
        assert_eq!(KernelError::from_panic(raised.as_ref()), KernelError::OutOfMemory("no room".into()));
        assert_eq!(super::panic_message(raised.as_ref()), "no room");
        let tch_style = std::panic::catch_unwind(|| panic!("{}", "CUDA out of memory. Tried to allocate 8 MiB")).unwrap_err();
        assert!(matches!(KernelError::from_panic(tch_style.as_ref()), KernelError::OutOfMemory(_)));
    }
}
