//! What the worker is asked to do and how it is set up: a caller's job and the commands on the
//! model's channel, what each job wants back and how its rows are finished, the inputs as the
//! queue hands them to batches, the worker's settings and the counters it shares with its handle.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model_dir::Pooling;
use crate::text::Seq;
use crate::types::FaultInjection;
use crate::{MoveReport, Priority, Residency, ResolvedDevice, Result};

/// What a job wants back per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// The head's row: the sentence vector, the logits, or the SPLADE vector.
    Head,
    /// The last hidden state of every token, `[tokens × hidden]` flattened.
    Tokens,
    /// The per-token multi-vector head's normalised vectors (after the tokens it leaves out at
    /// the start), `[vectors × dim]` flattened.
    Multi,
    /// The per-token lexical weight (BGE-M3's sparse head), one per token.
    Lexical,
}

/// What happens to each of a job's head rows before it is answered: the first `keep`
/// dimensions are kept (Matryoshka), then the row is L2-normalised when `normalize` says so.
/// The one place either happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RowFinish {
    pub(crate) keep: Option<usize>,
    pub(crate) normalize: bool,
}

/// One caller's request.
pub(crate) struct Job {
    pub(crate) seqs: Vec<Seq>,
    pub(crate) output: Output,
    pub(crate) finish: RowFinish,
    pub(crate) priority: Priority,
    /// When the caller queued it (for the first-batch wait).
    pub(crate) arrived: Instant,
    pub(crate) reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
    /// Set by the queue when the first batch holding one of its inputs starts (the caller's
    /// queue time and inference time, see `crate::timing`).
    pub(crate) first_batch: std::sync::Arc<std::sync::OnceLock<Instant>>,
}

pub(crate) enum Command {
    Embed(Job),
    /// Move the weights between the device and host memory (see `residency`).
    Move { to: Residency, reply: oneshot::Sender<Result<MoveReport>> },
    Shutdown,
}

/// Counters shared between the worker and its handle (for metrics and benchmarks).
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    pub(crate) queued_jobs: AtomicUsize,
    pub(crate) batches: AtomicU64,
    pub(crate) sequences: AtomicU64,
    pub(crate) tokens: AtomicU64,
    pub(crate) padded_tokens: AtomicU64,
    pub(crate) oom_splits: AtomicU64,
    pub(crate) packed_batches: AtomicU64,
    pub(crate) grouped_batches: AtomicU64,
    pub(crate) varlen_batches: AtomicU64,
    pub(crate) offloads: AtomicU64,
    pub(crate) restores: AtomicU64,
    /// Restores a request caused (the weights were on the host when it arrived).
    pub(crate) auto_restores: AtomicU64,
    /// The weights are in host memory.
    pub(crate) on_host: AtomicBool,
    /// Jobs waiting for their first batch, by priority (index `Priority as usize`).
    pub(crate) queued: [AtomicUsize; 2],
    /// Jobs whose first batch has started, by priority.
    pub(crate) started: [AtomicU64; 2],
    /// Their summed waits from arrival to their first batch, microseconds, by priority.
    pub(crate) first_batch_wait_us: [AtomicU64; 2],
    /// Wall time of finished passes, microseconds, by priority (a CPU bulk pass's detours to
    /// interactive work excluded).
    pub(crate) compute_us: [AtomicU64; 2],
    /// Interactive batches run between the layers of a bulk pass.
    pub(crate) preemptions: AtomicU64,
    /// Preemption points bulk passes passed.
    pub(crate) preemption_points: AtomicU64,
}

impl WorkerStats {
    /// Counts a job that is about to be queued (the worker counts it out when its first batch
    /// starts, or when it answers a job that never started).
    pub(crate) fn enqueued(&self, priority: Priority) {
        self.queued_jobs.fetch_add(1, Ordering::SeqCst);
        self.queued[priority as usize].fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back the count of a job that could not be queued.
    pub(crate) fn not_enqueued(&self, priority: Priority) {
        self.queued_jobs.fetch_sub(1, Ordering::SeqCst);
        self.queued[priority as usize].fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct WorkerConfig {
    pub(crate) model_name: String,
    pub(crate) device: ResolvedDevice,
    pub(crate) pooling: Pooling,
    pub(crate) max_batch_tokens: usize,
    pub(crate) max_batch_size: usize,
    pub(crate) faults: FaultInjection,
    pub(crate) stats: Arc<WorkerStats>,
    /// Interactive work ahead of bulk work (`ModelOptions::priorities`).
    pub(crate) priorities: bool,
    /// How long a bulk batch should take while interactive work is about.
    pub(crate) bulk_batch: Duration,
    /// The worker's libtorch threads (its share of the process's CPU budget per pass).
    pub(crate) threads: usize,
    /// CPU bulk passes stop between encoder layers to run waiting interactive work
    /// (`ModelOptions::layer_preemption`), so bulk batches keep their full size.
    pub(crate) preempt: bool,
}

/// One input of a queued job, as batches see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    /// The job's slot in the queue.
    pub(crate) job: usize,
    /// The input's index in its job.
    pub(crate) seq: usize,
    /// Its tokens.
    pub(crate) len: usize,
}
