//! Where a request's time went, measured by the service while it computes: tokenization, the
//! wait in the model's queue for the first batch, and inference (first batch started to last
//! row answered), with the characters and tokens computed (text-embeddings-inference's
//! `x-compute-*`, `x-tokenization-time`, `x-queue-time` and `x-inference-time` headers).
//!
//! [`measure`] runs a future and returns what every service call made inside it (on the same
//! task) measured, summed; outside [`measure`] nothing is recorded.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

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
}

impl Measured {
    /// Tokenization, queue and inference together.
    pub fn compute(&self) -> Duration {
        self.tokenization + self.queue + self.inference
    }
}

tokio::task_local! {
    static MEASURED: Cell<Measured>;
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
        record(|m| {
            m.tokenization += elapsed;
            m.characters += characters;
        });
    }
}

/// Records one run through a model's queue: `tokens` queued at `queued`, whose first batch
/// started at `first_batch` (unset: it never started), answered now.
pub(crate) fn record_run(queued: std::time::Instant, first_batch: Option<std::time::Instant>, tokens: usize) {
    let now = std::time::Instant::now();
    let started = first_batch.unwrap_or(now);
    record(|m| {
        m.calls += 1;
        m.queue += started.saturating_duration_since(queued);
        m.inference += now.saturating_duration_since(started);
        m.tokens += tokens;
    });
}
