//! [`DenseEmbeddingService`]: the libtorch service, its lifecycle state and the trait's methods.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use scopeguard::ScopeGuard;

use super::running::{check_vocabulary, dimensions, move_weights, prepare_off_executor, submit, Running};
use super::tasks::{lexical_weights, multi_vectors, rerank_max_sim, run_classifier};
use super::{EmbeddingService, Offload, RetrievalTasks};
use crate::runtime::{self, Command, Output, RowFinish, Started, WorkerStats};
use crate::text::{to_i64, Seq};
use crate::types::{
    BatchStats, Classified, ClassifyInput, CleanupReport, EmbedOptions, Embeddings, ModelInfo, ModelKind, ModelSpec, MoveReport,
    MultiVectorEmbeddings, PriorityStats, Residency, ServiceState, SparseEmbeddings, SparseVector, TokenEmbeddings, TokenizedText,
};
use crate::{Error, Priority, Result};

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
            preemption_points: s.preemption_points.load(Ordering::Relaxed),
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
        compute_us: s.compute_us[i].load(Ordering::Relaxed),
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

    fn tasks(&self) -> Option<&dyn RetrievalTasks> {
        Some(self)
    }

    fn offloading(&self) -> Option<&dyn Offload> {
        Some(self)
    }

    fn info(&self) -> Option<ModelInfo> {
        self.running().ok().map(|r| r.info.clone())
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

#[async_trait]
impl RetrievalTasks for DenseEmbeddingService {
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
}

#[async_trait]
impl Offload for DenseEmbeddingService {
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
