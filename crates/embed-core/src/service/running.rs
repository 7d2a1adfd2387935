//! What a ready service's callers share with its worker, and the steps every call takes:
//! tokenizing off the executor, checking ids and `dimensions`, submitting a job and waiting for
//! its rows, moving the weights.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::runtime::{Command, ExitReport, Job, Output, RowFinish, WorkerStats};
use crate::text::{Prepared, Seq, TextPrep};
use crate::types::{EmbedOptions, ModelInfo, ModelKind, MoveReport, Residency};
use crate::{Error, Priority, Result};

/// State shared by a ready service's callers: the worker's intake and what tokenization needs.
pub(super) struct Running {
    pub(super) intake: Sender<Command>,
    pub(super) text: Arc<TextPrep>,
    pub(super) info: ModelInfo,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) exit: Mutex<Option<(oneshot::Receiver<ExitReport>, std::thread::JoinHandle<()>)>>,
    /// Tokenization is timed into the stage profile (`tuning.profile_stages`).
    pub(super) profile: bool,
}

impl Drop for Running {
    /// The last handle gone without `cleanup`: tell the worker to free the model. Never blocks.
    fn drop(&mut self) {
        let _ = self.intake.send(Command::Shutdown);
    }
}


impl Running {
    /// Fails with [`Error::WrongKind`] unless the model gives one of `kinds`' outputs.
    pub(super) fn require(&self, kinds: &[ModelKind], operation: &'static str) -> Result<()> {
        if kinds.iter().any(|&k| self.info.serves(k)) {
            Ok(())
        } else {
            Err(Error::WrongKind { model: self.info.name.clone(), kind: self.info.kind, operation })
        }
    }
}

/// Asks the worker to move the weights and waits for it. Dropping this future does not stop
/// a move under way: it completes, and the model is where it was asked to go.
pub(super) async fn move_weights(running: &Arc<Running>, to: Residency) -> Result<MoveReport> {
    let (reply, answer) = oneshot::channel();
    let model = running.info.name.clone();
    if running.intake.send(Command::Move { to, reply }).is_err() {
        return Err(Error::ShutDown { model });
    }
    answer.await.map_err(|_| Error::ShutDown { model })?
}

/// Queues `seqs` for the worker and waits for the rows. Dropping this future drops the
/// reply channel; the worker sees that and skips the work.
pub(super) async fn submit(running: &Arc<Running>, seqs: Vec<Seq>, output: Output, finish: RowFinish, priority: Priority) -> Result<Vec<Vec<f32>>> {
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
pub(super) fn dimensions(options: &EmbedOptions, info: &ModelInfo) -> Result<usize> {
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

/// Tokenization is CPU work: `prepare` over `inputs` runs inline for small requests (and outside
/// a runtime); large ones go to the blocking pool, or for bulk work to the lower-priority bulk
/// host pool (`runtime::background`), so tokenizing an indexing request does not take a core
/// from the forward passes.
pub(super) async fn off_executor<T: Clone + Send + 'static + crate::timing::Characters>(
    running: &Arc<Running>,
    inputs: &[T],
    priority: Priority,
    prepare: impl FnOnce(&TextPrep, &[T]) -> Result<Vec<Prepared>> + Send + 'static,
) -> Result<Vec<Prepared>> {
    const INLINE_LIMIT: usize = 16;
    let _measured = crate::timing::Tokenizing::start(inputs);
    if inputs.len() <= INLINE_LIMIT || tokio::runtime::Handle::try_current().is_err() {
        return crate::profile::stage_when(running.profile, "tokenize", || prepare(&running.text, inputs));
    }
    let (r, inputs) = (running.clone(), inputs.to_vec());
    let work = move || crate::profile::stage_when(r.profile, "tokenize", || prepare(&r.text, &inputs));
    let failed = |message: String| Error::Inference { model: running.info.name.clone(), message };
    match priority {
        Priority::Bulk => crate::runtime::run_bulk(work).await.map_err(failed)?,
        Priority::Interactive => tokio::task::spawn_blocking(work).await.map_err(|e| failed(e.to_string()))?,
    }
}

/// Texts tokenized with `options` (prompt and truncation), off the executor when many.
pub(super) async fn prepare_off_executor(running: &Arc<Running>, texts: &[String], options: &EmbedOptions) -> Result<Vec<Prepared>> {
    let priority = options.priority_for(texts.len());
    let options = options.clone();
    off_executor(running, texts, priority, move |text, texts| text.prepare(texts, &options)).await
}

/// Fails with [`Error::InvalidTokens`] for input `index` when an id is outside the vocabulary.
pub(super) fn check_vocabulary(index: usize, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(Error::InvalidTokens { index, reason: format!("token id {bad} is outside the vocabulary of {vocab} tokens") }),
        None => Ok(()),
    }
}
