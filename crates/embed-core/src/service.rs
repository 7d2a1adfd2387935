//! The embedding-service trait and its libtorch implementation.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use scopeguard::ScopeGuard;
use tokio::sync::oneshot;

use crate::text::{to_i64, Prepared, Seq, TextPrep};
use crate::runtime::{self, Command, ExitReport, Job, Output, RowFinish, Started, WorkerStats};
use crate::types::{
    BatchStats, Classified, ClassifyInput, CleanupReport, EmbedOptions, Embeddings, ModelInfo, ModelKind, ModelSpec,
    MoveReport, MultiVectorEmbeddings, PriorityStats, Residency, ServiceState, SparseEmbeddings, SparseVector, TokenEmbeddings, TokenizedText,
};
use crate::InputMode;
use crate::{Error, Priority, Result};

/// An embedding service: load a model, embed texts, release everything.
///
/// Implementations are shared behind `Arc` and used concurrently; every method takes `&self`.
#[async_trait]
pub trait EmbeddingService: Send + Sync {
    /// Loads `spec`. Fails with [`Error::AlreadyLoaded`] unless the service is unloaded or closed.
    /// A failed load leaves nothing allocated and the service unloaded.
    async fn load(&self, spec: ModelSpec) -> Result<ModelInfo>;

    /// Embeds `texts` (an empty slice gives an empty result).
    async fn embed_texts(&self, texts: &[String], options: &EmbedOptions) -> Result<Embeddings>;

    /// Embeds inputs that are already token ids of the model's vocabulary (special tokens
    /// included as given; no prompt is added). Truncated to the model's limit unless
    /// `options.truncate` is false.
    async fn embed_token_ids(&self, inputs: &[Vec<u32>], options: &EmbedOptions) -> Result<Embeddings> {
        let _ = (inputs, options);
        Err(Error::InvalidOption { name: "input", reason: "this service does not accept token ids".into() })
    }

    /// Runs a sequence-classification model ([`ModelKind::Reranker`] or
    /// [`ModelKind::Classifier`]) on texts or text pairs: raw logits per label, in input
    /// order. Only `options.truncate` and, for an LLM reranker (pairs only), `options.instruction`
    /// apply; a cross-encoder refuses an instruction ([`Error::InvalidOption`]).
    async fn classify(&self, inputs: &[ClassifyInput], options: &EmbedOptions) -> Result<Classified> {
        let _ = (inputs, options);
        Err(unsupported("classify"))
    }

    /// Scores each of `texts` against `query` with a cross-encoder or an LLM reranker
    /// ([`ModelKind::Reranker`]): one logit per text, in input order ([`Classified::scores`]
    /// gives the sigmoid). An LLM reranker (Qwen3-Reranker) puts each pair into its prompt with
    /// `options.instruction` (its default instruction when `None`) and scores it alone (positions
    /// from 0, whatever shares its batch); its logit is `logit(yes) - logit(no)`. A cross-encoder
    /// has no instruction prompt and refuses one ([`Error::InvalidOption`] naming `instruction`).
    async fn rerank(&self, query: &str, texts: &[String], options: &EmbedOptions) -> Result<Classified> {
        let _ = (query, texts, options);
        Err(unsupported("rerank"))
    }

    /// SPLADE vectors of `texts` ([`ModelKind::Sparse`]).
    async fn embed_sparse(&self, texts: &[String], options: &EmbedOptions) -> Result<SparseEmbeddings> {
        let _ = (texts, options);
        Err(unsupported("embed_sparse"))
    }

    /// Late-interaction token vectors of `texts`, each L2-normalised, from a model that gives
    /// them ([`ModelKind::MultiVector`], or BGE-M3's ColBERT head; see
    /// [`ModelInfo::serves`]). For a PyLate model `options.mode` picks the side: queries (the
    /// default, as PyLate's) get the marker and `[MASK]` expansion, documents the marker and
    /// the skiplist. Memory per request is bounded by the token limits, as for `embed_texts`.
    async fn embed_multi(&self, texts: &[String], options: &EmbedOptions) -> Result<MultiVectorEmbeddings> {
        let _ = (texts, options);
        Err(unsupported("embed_multi"))
    }

    /// The last hidden state of every token of `texts` (prompt and special tokens included),
    /// from an embedding model, unnormalised.
    async fn embed_tokens(&self, texts: &[String], options: &EmbedOptions) -> Result<TokenEmbeddings> {
        let _ = (texts, options);
        Err(unsupported("embed_tokens"))
    }

    /// Token ids back to text with the model's tokenizer.
    async fn decode(&self, ids: &[Vec<u32>], skip_special_tokens: bool) -> Result<Vec<String>> {
        let _ = (ids, skip_special_tokens);
        Err(unsupported("decode"))
    }

    /// The vocabulary entry of each id, as the tokenizer stores it (its `id_to_token`:
    /// `##ing` for WordPiece, `Ġthe` for byte-level BPE; the strings [`tokenize`](Self::tokenize)
    /// gives): the token a sparse vector's index stands for
    /// ([`SparseVector::indices`](crate::SparseVector::indices)), as sentence-transformers'
    /// `SparseEncoder.decode` names them. An id of the model's vocabulary that the tokenizer has
    /// no entry for (a padded embedding row) gives an empty string; an id outside the model's
    /// vocabulary is [`Error::InvalidTokens`].
    async fn vocab_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        let _ = ids;
        Err(unsupported("vocab_tokens"))
    }

    /// Dynamic-batching counters, for services that batch.
    fn batch_stats(&self) -> Option<BatchStats> {
        None
    }

    /// Moves the model's weights to host memory (pinned on CUDA) and frees them on the
    /// device; tokenizer, config and worker stay. Requests queued before it finish first; a
    /// request that arrives afterwards restores the weights before it runs. Returns once the
    /// device memory is given back. All or nothing: on an error the model stays on its device.
    ///
    /// On a CPU model this copies the weights into fresh host buffers and frees the old ones:
    /// nothing is gained, which is why `embed-pool` only offloads CUDA models unless told
    /// otherwise; it exercises the same path for tests and the leak check.
    async fn offload(&self) -> Result<MoveReport> {
        Err(unsupported("offload"))
    }

    /// Moves offloaded weights back to the device (the same tensors, bitwise, in the same
    /// dtype) and frees the host copy. A no-op when they are on the device. All or nothing:
    /// if the device has no room, the model stays offloaded and the error says why.
    async fn restore(&self) -> Result<MoveReport> {
        Err(unsupported("restore"))
    }

    /// Where the weights are, for services that can offload them.
    fn residency(&self) -> Option<Residency> {
        None
    }

    /// Tokenizes `texts` the way `embed_texts` would (prompt and truncation applied).
    async fn tokenize(&self, texts: &[String], options: &EmbedOptions) -> Result<Vec<TokenizedText>>;

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

fn unsupported(operation: &str) -> Error {
    Error::InvalidOption { name: "operation", reason: format!("this service does not {operation}") }
}

/// State shared by a ready service's callers: the worker's intake and what tokenization needs.
struct Running {
    intake: Sender<Command>,
    text: Arc<TextPrep>,
    info: ModelInfo,
    stats: Arc<WorkerStats>,
    exit: Mutex<Option<(oneshot::Receiver<ExitReport>, std::thread::JoinHandle<()>)>>,
    /// Tokenization is timed into the stage profile (`tuning.profile_stages`).
    profile: bool,
}

impl Drop for Running {
    /// The last handle gone without `cleanup`: tell the worker to free the model. Never blocks.
    fn drop(&mut self) {
        let _ = self.intake.send(Command::Shutdown);
    }
}

enum State {
    Unloaded,
    Loading,
    Ready(Arc<Running>),
    Closing,
    Closed,
}

impl State {
    fn public(&self) -> ServiceState {
        match self {
            State::Unloaded => ServiceState::Unloaded,
            State::Loading => ServiceState::Loading,
            State::Ready(_) => ServiceState::Ready,
            State::Closing => ServiceState::Closing,
            State::Closed => ServiceState::Closed,
        }
    }
}

/// Dense sentence embeddings from a BERT-family model on libtorch.
///
/// Each loaded model runs on its own worker thread; concurrent callers are merged into
/// length-sorted batches under a token budget. Dropping the service without `cleanup` still
/// frees the model (the worker is told to stop; nothing blocks).
pub struct DenseEmbeddingService {
    state: Mutex<State>,
}

impl Default for DenseEmbeddingService {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DenseEmbeddingService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseEmbeddingService").field("state", &self.state()).finish()
    }
}

/// Sets `state` to `make()` if the future driving a load or cleanup is dropped half-way;
/// defused with `ScopeGuard::into_inner` once the future has set the state itself.
fn reset_on_drop<'a>(state: &'a Mutex<State>, make: fn() -> State) -> ScopeGuard<&'a Mutex<State>, impl FnOnce(&'a Mutex<State>)> {
    scopeguard::guard(state, move |state: &'a Mutex<State>| *lock(state) = make())
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave State inconsistent (assignments only).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DenseEmbeddingService {
    /// An unloaded service.
    pub fn new() -> Self {
        DenseEmbeddingService { state: Mutex::new(State::Unloaded) }
    }

    /// Creates a service and loads `spec` into it.
    pub async fn from_spec(spec: ModelSpec) -> Result<Self> {
        let svc = Self::new();
        svc.load(spec).await?;
        Ok(svc)
    }

    fn running(&self) -> Result<Arc<Running>> {
        match &*lock(&self.state) {
            State::Ready(r) => Ok(r.clone()),
            other => Err(Error::NotReady { state: other.public() }),
        }
    }

    fn batch_stats_impl(&self) -> Option<BatchStats> {
        let r = self.running().ok()?;
        let s = &r.stats;
        Some(BatchStats {
            queued_requests: s.queued_jobs.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            sequences: s.sequences.load(Ordering::Relaxed),
            tokens: s.tokens.load(Ordering::Relaxed),
            padded_tokens: s.padded_tokens.load(Ordering::Relaxed),
            oom_splits: s.oom_splits.load(Ordering::Relaxed),
            packed_attention_batches: s.packed_batches.load(Ordering::Relaxed),
            length_grouped_batches: s.grouped_batches.load(Ordering::Relaxed),
            varlen_attention_batches: s.varlen_batches.load(Ordering::Relaxed),
            offloads: s.offloads.load(Ordering::Relaxed),
            restores: s.restores.load(Ordering::Relaxed),
            auto_restores: s.auto_restores.load(Ordering::Relaxed),
            preempting_batches: s.preemptions.load(Ordering::Relaxed),
            interactive: priority_stats(s, Priority::Interactive),
            bulk: priority_stats(s, Priority::Bulk),
        })
    }
}

fn priority_stats(s: &WorkerStats, p: Priority) -> PriorityStats {
    let i = p as usize;
    PriorityStats {
        queued_requests: s.queued[i].load(Ordering::Relaxed),
        started_requests: s.started[i].load(Ordering::Relaxed),
        first_batch_wait_us: s.first_batch_wait_us[i].load(Ordering::Relaxed),
    }
}

#[async_trait]
impl EmbeddingService for DenseEmbeddingService {
    async fn load(&self, spec: ModelSpec) -> Result<ModelInfo> {
        {
            let mut st = lock(&self.state);
            match &*st {
                State::Unloaded | State::Closed => *st = State::Loading,
                other => return Err(Error::AlreadyLoaded { state: other.public() }),
            }
        }
        let guard = reset_on_drop(&self.state, || State::Unloaded);
        let started = Instant::now();

        let name = spec.name.clone();
        let profile = spec.options.tuning.profile_stages;
        let Started { intake, ready, exit, thread, stats } = runtime::spawn(spec.clone(), started)?;
        let result = ready.await;
        let (info, text) = match result {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                return Err(e);
            }
            Err(_) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                return Err(Error::WorkerPanicked { model: name, message: "worker exited during load".into() });
            }
        };
        let running = Arc::new(Running {
            intake,
            text,
            info: info.clone(),
            stats,
            exit: Mutex::new(Some((exit, thread))),
            profile,
        });
        *lock(&self.state) = State::Ready(running);
        ScopeGuard::into_inner(guard);
        tracing::info!(model = %info.name, device = %info.device, dtype = %info.dtype,
            weight_bytes = info.weight_bytes, load_ms = info.load_duration.as_millis() as u64, "model loaded");
        Ok(info)
    }

    async fn embed_texts(&self, texts: &[String], options: &EmbedOptions) -> Result<Embeddings> {
        let running = self.running()?;
        running.require(&[ModelKind::Embedding], "embed")?;
        if texts.is_empty() {
            return Ok(Embeddings::default());
        }
        let keep = dimensions(options, &running.info)?;
        let prepared = prepare_off_executor(&running, texts, options).await?;
        let normalize = options.normalize.unwrap_or(running.info.normalize);
        let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
        let truncated = prepared.iter().map(|p| p.truncated).collect();
        let priority = options.priority_for(texts.len());
        let finish = RowFinish { keep: Some(keep), normalize };
        let vectors = submit(&running, prepared.into_iter().map(|p| p.seq).collect(), Output::Head, finish, priority).await?;
        Ok(Embeddings { vectors, token_counts, truncated })
    }

    async fn embed_token_ids(&self, inputs: &[Vec<u32>], options: &EmbedOptions) -> Result<Embeddings> {
        let running = self.running()?;
        running.require(&[ModelKind::Embedding], "embed")?;
        if inputs.is_empty() {
            return Ok(Embeddings::default());
        }
        let keep = dimensions(options, &running.info)?;
        let max = running.text.max_seq_length;
        let vocab = running.info.vocab_size;
        let mut seqs = Vec::with_capacity(inputs.len());
        let mut truncated = Vec::with_capacity(inputs.len());
        for (index, ids) in inputs.iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::InvalidTokens { index, reason: "no token ids".into() });
            }
            check_vocabulary(index, ids, vocab)?;
            if ids.len() > max && !options.truncate {
                return Err(Error::InputTooLong { index, tokens: ids.len(), limit: max });
            }
            let kept = &ids[..ids.len().min(max)];
            truncated.push(ids.len() > max);
            seqs.push(Seq { ids: to_i64(kept), type_ids: vec![0; kept.len()], pool_skip: 0, poisoned: false, expansion: 0 });
        }
        let token_counts = seqs.iter().map(|s| s.ids.len()).collect();
        let normalize = options.normalize.unwrap_or(running.info.normalize);
        let priority = options.priority_for(inputs.len());
        let vectors = submit(&running, seqs, Output::Head, RowFinish { keep: Some(keep), normalize }, priority).await?;
        Ok(Embeddings { vectors, token_counts, truncated })
    }

    async fn classify(&self, inputs: &[ClassifyInput], options: &EmbedOptions) -> Result<Classified> {
        let running = self.running()?;
        running.require(&[ModelKind::Reranker, ModelKind::Classifier], "classify")?;
        run_classifier(&running, inputs, options, Priority::for_inputs(inputs.len())).await
    }

    async fn rerank(&self, query: &str, texts: &[String], options: &EmbedOptions) -> Result<Classified> {
        let running = self.running()?;
        if running.info.kind != ModelKind::Reranker && running.info.serves(ModelKind::MultiVector) {
            return rerank_max_sim(&running, query, texts, options).await;
        }
        running.require(&[ModelKind::Reranker], "rerank")?;
        let inputs: Vec<ClassifyInput> = texts.iter().map(|t| ClassifyInput::Pair(query.to_string(), t.clone())).collect();
        // A rerank serves one query, whatever its number of documents: interactive by default.
        run_classifier(&running, &inputs, options, Priority::Interactive).await
    }

    async fn embed_sparse(&self, texts: &[String], options: &EmbedOptions) -> Result<SparseEmbeddings> {
        let running = self.running()?;
        running.require(&[ModelKind::Sparse], "embed_sparse")?;
        if texts.is_empty() {
            return Ok(SparseEmbeddings::default());
        }
        if running.info.kind != ModelKind::Sparse {
            return lexical_weights(&running, texts, options).await;
        }
        let prepared = prepare_off_executor(&running, texts, options).await?;
        let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
        let truncated = prepared.iter().map(|p| p.truncated).collect();
        let priority = options.priority_for(texts.len());
        let rows = submit(&running, prepared.into_iter().map(|p| p.seq).collect(), Output::Head, RowFinish::default(), priority).await?;
        let vectors = rows
            .into_iter()
            .map(|row| {
                let (indices, values) = row.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, v)| (i as u32, *v)).unzip();
                SparseVector { indices, values }
            })
            .collect();
        Ok(SparseEmbeddings { vectors, token_counts, truncated })
    }

    async fn embed_multi(&self, texts: &[String], options: &EmbedOptions) -> Result<MultiVectorEmbeddings> {
        let running = self.running()?;
        running.require(&[ModelKind::MultiVector], "embed_multi")?;
        multi_vectors(&running, texts, options, options.priority_for(texts.len())).await
    }

    async fn embed_tokens(&self, texts: &[String], options: &EmbedOptions) -> Result<TokenEmbeddings> {
        let running = self.running()?;
        running.require(&[ModelKind::Embedding], "embed_tokens")?;
        if texts.is_empty() {
            return Ok(TokenEmbeddings::default());
        }
        let prepared = prepare_off_executor(&running, texts, options).await?;
        let counts: Vec<usize> = prepared.iter().map(|p| p.seq.ids.len()).collect();
        let truncated = prepared.iter().map(|p| p.truncated).collect();
        let priority = options.priority_for(texts.len());
        let rows = submit(&running, prepared.into_iter().map(|p| p.seq).collect(), Output::Tokens, RowFinish::default(), priority).await?;
        let vectors = rows
            .into_iter()
            .zip(counts)
            .map(|(flat, n)| {
                let width = flat.len() / n.max(1);
                flat.chunks(width.max(1)).map(<[f32]>::to_vec).collect()
            })
            .collect();
        Ok(TokenEmbeddings { vectors, truncated })
    }

    async fn decode(&self, ids: &[Vec<u32>], skip_special_tokens: bool) -> Result<Vec<String>> {
        let running = self.running()?;
        let vocab = running.info.vocab_size;
        ids.iter()
            .enumerate()
            .map(|(index, seq)| {
                check_vocabulary(index, seq, vocab)?;
                running.text.decode(seq, skip_special_tokens)
            })
            .collect()
    }

    async fn vocab_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        let running = self.running()?;
        check_vocabulary(0, ids, running.info.vocab_size)?;
        Ok(ids.iter().map(|&id| running.text.token(id)).collect())
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        self.batch_stats_impl()
    }

    async fn tokenize(&self, texts: &[String], options: &EmbedOptions) -> Result<Vec<TokenizedText>> {
        let running = self.running()?;
        let prepared = prepare_off_executor(&running, texts, options).await?;
        Ok(prepared
            .into_iter()
            .map(|p| TokenizedText {
                tokens: p.seq.ids.iter().map(|&id| running.text.token(id as u32)).collect(),
                ids: p.seq.ids.iter().map(|&id| id as u32).collect(),
                truncated: p.truncated,
            })
            .collect())
    }

    fn info(&self) -> Option<ModelInfo> {
        self.running().ok().map(|r| r.info.clone())
    }

    async fn offload(&self) -> Result<MoveReport> {
        move_weights(&self.running()?, Residency::Host).await
    }

    async fn restore(&self) -> Result<MoveReport> {
        move_weights(&self.running()?, Residency::Device).await
    }

    fn residency(&self) -> Option<Residency> {
        let r = self.running().ok()?;
        Some(if r.stats.on_host.load(Ordering::SeqCst) { Residency::Host } else { Residency::Device })
    }

    fn state(&self) -> ServiceState {
        lock(&self.state).public()
    }

    async fn cleanup(&self) -> Result<CleanupReport> {
        let started = Instant::now();
        let running = {
            let mut st = lock(&self.state);
            match std::mem::replace(&mut *st, State::Closing) {
                State::Ready(r) => r,
                State::Loading => {
                    *st = State::Loading;
                    return Err(Error::NotReady { state: ServiceState::Loading });
                }
                other => {
                    *st = other;
                    return Ok(CleanupReport::default());
                }
            }
        };
        // If this future is dropped from here on, the worker still frees the model (the
        // shutdown is already sent); the guard just records the end state.
        let guard = reset_on_drop(&self.state, || State::Closed);
        let _ = running.intake.send(Command::Shutdown);
        let exit = running.exit.lock().unwrap_or_else(|p| p.into_inner()).take();
        let name = running.info.name.clone();
        drop(running);
        let mut report = CleanupReport { model: Some(name.clone()), ..Default::default() };
        if let Some((exit_rx, thread)) = exit {
            if let Ok(r) = exit_rx.await {
                report.model_weight_bytes = r.weight_bytes;
                report.cuda_reserved_before = r.cuda_reserved_before;
                report.cuda_reserved_after = r.cuda_reserved_after;
            }
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(model = %name, "model worker thread panicked during shutdown");
            }
        }
        report.duration = started.elapsed();
        drop(guard);
        tracing::info!(model = %name, weight_bytes = report.model_weight_bytes, ms = report.duration.as_millis() as u64, "model cleaned up");
        Ok(report)
    }

    fn begin_cleanup(&self) -> bool {
        self.begin_cleanup_impl()
    }
}

impl DenseEmbeddingService {
    fn begin_cleanup_impl(&self) -> bool {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut *st, State::Closed) {
            State::Ready(running) => {
                let _ = running.intake.send(Command::Shutdown);
                // The worker's exit report and join handle are dropped: the thread finishes
                // freeing the model on its own (detached).
                tracing::debug!(model = %running.info.name, "cleanup started without waiting");
                true
            }
            other => {
                *st = other;
                false
            }
        }
    }
}

impl Running {
    /// Fails with [`Error::WrongKind`] unless the model gives one of `kinds`' outputs.
    fn require(&self, kinds: &[ModelKind], operation: &'static str) -> Result<()> {
        if kinds.iter().any(|&k| self.info.serves(k)) {
            Ok(())
        } else {
            Err(Error::WrongKind { model: self.info.name.clone(), kind: self.info.kind, operation })
        }
    }
}

/// Tokenizes classifier inputs (on the blocking pool when many) and runs them.
/// `default_priority` applies where `options` names none.
async fn run_classifier(running: &Arc<Running>, inputs: &[ClassifyInput], options: &EmbedOptions, default_priority: Priority) -> Result<Classified> {
    if inputs.is_empty() {
        return Ok(Classified::default());
    }
    let (truncate, instruction) = (options.truncate, options.instruction.clone());
    let prepared = off_executor(running, inputs, move |text, inputs| text.prepare_inputs(inputs, truncate, instruction.as_deref())).await?;
    let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let priority = options.priority.unwrap_or(default_priority);
    let logits = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Head, RowFinish::default(), priority).await?;
    Ok(Classified { logits, token_counts, truncated, similarities: false })
}

/// The multi-vector head's token vectors of `texts`: one job, then each input's rows cut into
/// vectors (a document's skiplist tokens dropped for a PyLate model).
async fn multi_vectors(running: &Arc<Running>, texts: &[String], options: &EmbedOptions, priority: Priority) -> Result<MultiVectorEmbeddings> {
    if texts.is_empty() {
        return Ok(MultiVectorEmbeddings::default());
    }
    let prepared = prepare_off_executor(running, texts, options).await?;
    let token_counts: Vec<usize> = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let ids: Vec<Vec<i64>> = prepared.iter().map(|p| p.seq.ids.clone()).collect();
    let rows = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Multi, RowFinish::default(), priority).await?;
    if rows.len() != ids.len() {
        return Err(Error::Inference { model: running.info.name.clone(), message: format!("{} multi-vector rows for {} inputs", rows.len(), ids.len()) });
    }
    let query = options.mode != Some(InputMode::Document);
    let mut vectors = Vec::with_capacity(rows.len());
    for (flat, ids) in rows.into_iter().zip(&ids) {
        // BGE-M3 leaves out [CLS]: the rows are the last `count` tokens.
        let count = flat.len().checked_div(running.info.dimension).unwrap_or(0);
        let kept = &ids[ids.len().saturating_sub(count)..];
        if count == 0 || kept.len() != count || flat.len() != count * running.info.dimension {
            vectors.push(Vec::new());
            continue;
        }
        vectors.push(
            flat.chunks(running.info.dimension)
                .zip(kept)
                .filter(|(_, &id)| running.text.keeps_vector(id as u32, query))
                .map(|(v, _)| v.to_vec())
                .collect(),
        );
    }
    Ok(MultiVectorEmbeddings { vectors, token_counts, truncated })
}

/// BGE-M3's lexical weights, as FlagEmbedding's `_process_token_weights`: each token's
/// `relu(sparse_linear(h))`, the largest per token id, weights above 0 only, the tokenizer's
/// cls / eos / pad / unk tokens left out; by increasing id.
async fn lexical_weights(running: &Arc<Running>, texts: &[String], options: &EmbedOptions) -> Result<SparseEmbeddings> {
    let prepared = prepare_off_executor(running, texts, options).await?;
    let token_counts = prepared.iter().map(|p| p.seq.ids.len()).collect();
    let truncated = prepared.iter().map(|p| p.truncated).collect();
    let ids: Vec<Vec<i64>> = prepared.iter().map(|p| p.seq.ids.clone()).collect();
    let priority = options.priority_for(texts.len());
    let rows = submit(running, prepared.into_iter().map(|p| p.seq).collect(), Output::Lexical, RowFinish::default(), priority).await?;
    let unused = &running.text.lexical_unused;
    let mut vectors = Vec::with_capacity(rows.len());
    for (weights, ids) in rows.iter().zip(&ids) {
        if weights.len() != ids.len() {
            return Err(Error::Inference { model: running.info.name.clone(), message: format!("{} lexical weights for {} tokens", weights.len(), ids.len()) });
        }
        let mut best = std::collections::BTreeMap::<u32, f32>::new();
        for (&w, &id) in weights.iter().zip(ids) {
            let id = id as u32;
            if w > 0.0 && !unused.contains(&id) {
                let e = best.entry(id).or_insert(w);
                if w > *e {
                    *e = w;
                }
            }
        }
        let (indices, values) = best.into_iter().unzip();
        vectors.push(SparseVector { indices, values });
    }
    Ok(SparseEmbeddings { vectors, token_counts, truncated })
}

/// Reranks by late interaction: the query's vectors (query side) against each text's
/// (document side), MaxSim. BGE-M3's score is divided by the query's vector count, as
/// FlagEmbedding's `colbert_score`; a PyLate model's is the plain sum, as PyLate's
/// `colbert_scores`. An instruction is refused (these models have no instruction prompt).
async fn rerank_max_sim(running: &Arc<Running>, query: &str, texts: &[String], options: &EmbedOptions) -> Result<Classified> {
    if options.instruction.is_some() {
        return Err(Error::InvalidOption { name: "instruction", reason: format!("model {} is a multi-vector model without an instruction prompt", running.info.name) });
    }
    if texts.is_empty() {
        return Ok(Classified { similarities: true, ..Classified::default() });
    }
    let priority = options.priority.unwrap_or(Priority::Interactive);
    let q_options = EmbedOptions { mode: Some(InputMode::Query), ..options.clone() };
    let d_options = EmbedOptions { mode: Some(InputMode::Document), ..options.clone() };
    let q = multi_vectors(running, &[query.to_string()], &q_options, priority).await?;
    let d = multi_vectors(running, texts, &d_options, priority).await?;
    let q_vectors = q.vectors.first().ok_or_else(|| Error::Inference { model: running.info.name.clone(), message: "no query vectors".into() })?;
    let per_query = if running.text.is_colbert() { 1.0 } else { q_vectors.len().max(1) as f32 };
    let logits = d
        .vectors
        .iter()
        .map(|doc| {
            crate::types::max_sim(q_vectors, doc)
                .map(|s| vec![s / per_query])
                .ok_or_else(|| Error::Inference { model: running.info.name.clone(), message: "query and document vectors differ in width".into() })
        })
        .collect::<Result<Vec<_>>>()?;
    // The query is encoded once: its tokens are counted with the first document's.
    let mut token_counts = d.token_counts.clone();
    if let (Some(first), Some(q_tokens)) = (token_counts.first_mut(), q.token_counts.first()) {
        *first += q_tokens;
    }
    let truncated = d.truncated.iter().map(|&t| t || q.truncated.first().copied().unwrap_or(false)).collect();
    Ok(Classified { logits, token_counts, truncated, similarities: true })
}

/// Asks the worker to move the weights and waits for it. Dropping this future does not stop
/// a move under way: it completes, and the model is where it was asked to go.
async fn move_weights(running: &Arc<Running>, to: Residency) -> Result<MoveReport> {
    let (reply, answer) = oneshot::channel();
    let model = running.info.name.clone();
    if running.intake.send(Command::Move { to, reply }).is_err() {
        return Err(Error::ShutDown { model });
    }
    answer.await.map_err(|_| Error::ShutDown { model })?
}

/// Queues `seqs` for the worker and waits for the rows. Dropping this future drops the
/// reply channel; the worker sees that and skips the work.
async fn submit(running: &Arc<Running>, seqs: Vec<Seq>, output: Output, finish: RowFinish, priority: Priority) -> Result<Vec<Vec<f32>>> {
    let (reply, answer) = oneshot::channel();
    // Held until this future ends (answered, failed or dropped).
    let _bulk = (priority == Priority::Bulk).then(crate::runtime::BulkInFlight::new);
    if priority == Priority::Interactive {
        crate::runtime::note_interactive();
    }
    running.stats.enqueued(priority);
    let tokens = seqs.iter().map(|s| s.ids.len()).sum();
    let (arrived, first_batch) = (Instant::now(), Arc::default());
    let job = Job { seqs, output, finish, priority, arrived, reply, first_batch: Arc::clone(&first_batch) };
    if running.intake.send(Command::Embed(job)).is_err() {
        running.stats.not_enqueued(priority);
        return Err(Error::ShutDown { model: running.info.name.clone() });
    }
    let model = running.info.name.clone();
    let rows = answer.await.map_err(|_| Error::ShutDown { model })?;
    crate::timing::record_run(running.info.device, arrived, first_batch.get().copied(), tokens);
    rows
}

/// The dimensions to keep: `options.dimensions` checked against the model's dimension. The one
/// check of Matryoshka's `dimensions` (front ends pass the request's value through); its
/// message names the value, the model and the range, for a client to read as it is.
fn dimensions(options: &EmbedOptions, info: &ModelInfo) -> Result<usize> {
    let dimension = info.dimension;
    match options.dimensions {
        None => Ok(dimension),
        Some(n) if (1..=dimension).contains(&n) => Ok(n),
        Some(n) => Err(Error::InvalidOption {
            name: "dimensions",
            reason: format!("dimensions={n}: model {:?} gives {dimension}-dimensional embeddings; ask for 1 to {dimension}", info.name),
        }),
    }
}

/// Tokenization is CPU work: `prepare` over `inputs` runs on the blocking pool for large
/// requests, inline for small ones (and outside a runtime).
async fn off_executor<T: Clone + Send + 'static + crate::timing::Characters>(
    running: &Arc<Running>,
    inputs: &[T],
    prepare: impl FnOnce(&TextPrep, &[T]) -> Result<Vec<Prepared>> + Send + 'static,
) -> Result<Vec<Prepared>> {
    const INLINE_LIMIT: usize = 16;
    let _measured = crate::timing::Tokenizing::start(inputs);
    if inputs.len() <= INLINE_LIMIT || tokio::runtime::Handle::try_current().is_err() {
        return crate::profile::stage_when(running.profile, "tokenize", || prepare(&running.text, inputs));
    }
    let (r, inputs) = (running.clone(), inputs.to_vec());
    tokio::task::spawn_blocking(move || crate::profile::stage_when(r.profile, "tokenize", || prepare(&r.text, &inputs)))
        .await
        .map_err(|e| Error::Inference { model: running.info.name.clone(), message: e.to_string() })?
}

/// Texts tokenized with `options` (prompt and truncation), off the executor when many.
async fn prepare_off_executor(running: &Arc<Running>, texts: &[String], options: &EmbedOptions) -> Result<Vec<Prepared>> {
    let options = options.clone();
    off_executor(running, texts, move |text, texts| text.prepare(texts, &options)).await
}

/// Fails with [`Error::InvalidTokens`] for input `index` when an id is outside the vocabulary.
fn check_vocabulary(index: usize, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(Error::InvalidTokens { index, reason: format!("token id {bad} is outside the vocabulary of {vocab} tokens") }),
        None => Ok(()),
    }
}
