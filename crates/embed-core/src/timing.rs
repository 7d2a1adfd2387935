//! Where a request's time went, measured by the service while it computes: tokenization, the
//! wait in the model's queue for the first batch, and inference (first batch started to last
//! row answered), with the characters and tokens computed (text-embeddings-inference's
//! `x-compute-*`, `x-tokenization-time`, `x-queue-time` and `x-inference-time` headers).
//!
//! [`measure`] runs a future and returns what every service call made inside it (on the same
//! task) measured, summed; outside [`measure`] nothing is recorded. [`measure_phases`] also
//! returns each stage of each call with when it started and ended (for trace spans).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::{Duration, Instant};

use crate::ResolvedDevice;

/// What the service calls of one [`measure`] computed and how long each stage took, summed over
/// the calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Measured {
    /// Service calls that tokenized or computed.
    pub calls: usize,
    /// Turning texts into token ids (prompts and truncation included).
    pub tokenization: Duration,
    /// From queueing the inputs to the start of the first batch holding one of them.
    pub queue: Duration,
    /// From the start of that first batch to the answer (every batch of the request, and
    /// anything the worker did between them).
    pub inference: Duration,
    /// Unicode characters of the texts tokenized (both texts of a pair).
    pub characters: usize,
    /// Tokens computed (special tokens and prompts included, after truncation).
    pub tokens: usize,
    /// The device of the last model call that computed (`None` when none did).
    pub device: Option<ResolvedDevice>,
}

impl Measured {
    /// Tokenization, queue and inference together.
    pub fn compute(&self) -> Duration {
        self.tokenization + self.queue + self.inference
    }
}

/// A stage of a request's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Turning texts into token ids ([`Measured::tokenization`]).
    Tokenization,
    /// Waiting in the model's queue for the first batch ([`Measured::queue`]).
    Queue,
    /// From the first batch to the answer ([`Measured::inference`]).
    Inference,
}

impl Stage {
    /// The stage's name in lower case: `tokenization`, `queue`, `inference`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Tokenization => "tokenization",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
        }
    }
}

/// One stage of one service call, with when it started and ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Phase {
    /// Which stage.
    pub stage: Stage,
    /// When it started.
    pub start: Instant,
    /// When it ended (not before `start`).
    pub end: Instant,
}

/// Most phases one [`measure_phases`] keeps; a request with more calls keeps its first ones
/// (the sums in [`Measured`] still count every call).
pub const MAX_PHASES: usize = 256;

tokio::task_local! {
    static MEASURED: Cell<Measured>;
    static PHASES: RefCell<Vec<Phase>>;
}

/// Runs `fut`, returning its output and what the service calls inside it measured.
pub async fn measure<F: Future>(fut: F) -> (F::Output, Measured) {
    MEASURED
        .scope(Cell::new(Measured::default()), async {
            let out = fut.await;
            (out, MEASURED.with(Cell::get))
        })
        .await
}

/// [`measure`], also returning each stage of each service call inside `fut` in the order they
/// ended (at most [`MAX_PHASES`]).
pub async fn measure_phases<F: Future>(fut: F) -> (F::Output, Measured, Vec<Phase>) {
    let ((out, measured), phases) = PHASES
        .scope(RefCell::new(Vec::new()), async {
            let out = measure(fut).await;
            (out, PHASES.with(|p| p.take()))
        })
        .await;
    (out, measured, phases)
}

/// Adds a phase to the current [`measure_phases`], if any.
fn record_phase(stage: Stage, start: Instant, end: Instant) {
    let _ = PHASES.try_with(|phases| {
        let mut phases = phases.borrow_mut();
        if phases.len() < MAX_PHASES {
            phases.push(Phase { stage, start, end: end.max(start) });
        }
    });
}

/// Adds to the current [`measure`], if any.
pub(crate) fn record(f: impl FnOnce(&mut Measured)) {
    let _ = MEASURED.try_with(|cell| {
        let mut m = cell.get();
        f(&mut m);
        cell.set(m);
    });
}

/// Texts whose characters a measurement counts.
pub(crate) trait Characters {
    /// Unicode characters of the text (of both texts of a pair).
    fn characters(&self) -> usize;
}

impl Characters for String {
    fn characters(&self) -> usize {
        self.chars().count()
    }
}

impl Characters for crate::ClassifyInput {
    fn characters(&self) -> usize {
        match self {
            crate::ClassifyInput::Text(a) => a.characters(),
            crate::ClassifyInput::Pair(a, b) => a.characters() + b.characters(),
        }
    }
}

/// Records a tokenization (its time and the characters of `inputs`) when dropped.
#[must_use = "the tokenization is recorded when this is dropped"]
pub(crate) struct Tokenizing {
    started: std::time::Instant,
    characters: usize,
}

impl Tokenizing {
    pub(crate) fn start<T: Characters>(inputs: &[T]) -> Self {
        Tokenizing { started: std::time::Instant::now(), characters: inputs.iter().map(Characters::characters).sum() }
    }
}

impl Drop for Tokenizing {
    fn drop(&mut self) {
        let (elapsed, characters) = (self.started.elapsed(), self.characters);
        record_phase(Stage::Tokenization, self.started, self.started + elapsed);
        record(|m| {
            m.tokenization += elapsed;
            m.characters += characters;
        });
    }
}

/// Records one run through a model's queue on `device`: `tokens` queued at `queued`, whose
/// first batch started at `first_batch` (unset: it never started), answered now.
pub(crate) fn record_run(device: ResolvedDevice, queued: Instant, first_batch: Option<Instant>, tokens: usize) {
    let now = Instant::now();
    let started = first_batch.unwrap_or(now).clamp(queued, now.max(queued));
    record_phase(Stage::Queue, queued, started);
    if first_batch.is_some() {
        record_phase(Stage::Inference, started, now);
    }
    record(|m| {
        m.calls += 1;
        m.queue += started.saturating_duration_since(queued);
        m.inference += now.saturating_duration_since(started);
        m.tokens += tokens;
        m.device = Some(device);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each call's stages come back in order with real, non-overlapping times; `measure` alone
    /// keeps none, and outside both nothing is recorded.
    #[tokio::test]
    async fn phases_carry_their_times() {
        let t0 = Instant::now();
        let ((), measured, phases) = measure_phases(async {
            drop(Tokenizing::start(&["héllo".to_string()]));
            let queued = Instant::now();
            let first = queued + Duration::from_millis(3);
            std::thread::sleep(Duration::from_millis(6));
            record_run(ResolvedDevice::Cpu, queued, Some(first), 7);
            record_run(ResolvedDevice::Cpu, Instant::now(), None, 2);
        })
        .await;
        let stages: Vec<Stage> = phases.iter().map(|p| p.stage).collect();
        assert_eq!(stages, [Stage::Tokenization, Stage::Queue, Stage::Inference, Stage::Queue]);
        assert!(phases.iter().all(|p| p.start >= t0 && p.end >= p.start));
        assert_eq!(phases[1].end - phases[1].start, Duration::from_millis(3), "queued to first batch");
        assert_eq!(phases[2].start, phases[1].end, "inference starts where the queue wait ends");
        assert!(phases[2].end - phases[2].start >= Duration::from_millis(3));
        assert_eq!((measured.calls, measured.tokens, measured.characters), (2, 9, 5));
        assert_eq!(measured.device, Some(ResolvedDevice::Cpu));
        assert_eq!(measured.queue, Duration::from_millis(3) + (phases[3].end - phases[3].start));

        let ((), only) = measure(async { record_run(ResolvedDevice::Cpu, Instant::now(), None, 1) }).await;
        assert_eq!(only.calls, 1);
        record_phase(Stage::Queue, t0, Instant::now()); // outside: nothing to record into
    }
}
