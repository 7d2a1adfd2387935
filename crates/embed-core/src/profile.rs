//! A stage profile of the forward pass, for finding where CPU time goes
//! ([`Tuning::profile_stages`](crate::Tuning::profile_stages); `examples/stage_profile.rs`
//! prints it for f32 beside bf16).
//!
//! Off unless the model's options turn it on: then each stage is one thread-local flag check. On, every stage (each linear layer, attention, norms, activations,
//! residual adds, the padding-free index ops, the batch upload, pooling and head, the output
//! copy) adds its wall time to a process-wide table. On the CPU every libtorch op runs
//! synchronously, so the times are the ops' own; on CUDA they would only be launch times, so
//! the profile is a CPU tool.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Whether stages run on this thread are timed (a model's worker thread, from its tuning).
    static ENABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn enabled() -> bool {
    ENABLED.with(std::cell::Cell::get)
}

/// Turns timing on or off for the stages the calling thread runs.
pub(crate) fn set_on_this_thread(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// Runs `f` as stage `name`, timed when `on` (for work a model does off its worker thread:
/// tokenization).
pub(crate) fn stage_when<T>(on: bool, name: &'static str, f: impl FnOnce() -> T) -> T {
    if on {
        let was = enabled();
        set_on_this_thread(true);
        let out = stage(name, f);
        set_on_this_thread(was);
        out
    } else {
        f()
    }
}

/// Runs `f` as stage `name`, timing it when profiling is on.
#[inline]
pub(crate) fn stage<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let e = table.entry(name).or_default();
    e.0 += took;
    e.1 += 1;
    out
}

/// One stage of [`take`]: its name, total time and number of calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `forward` (the encoder, everything below in it), `linear`, `attention` (its own
    /// index ops included), `layer_norm`, `rms_norm`, `activation`, `residual`, `embeddings`,
    /// `index_ops`; and outside the encoder `upload`, `head` (pooling and what follows),
    /// `output` (the copy out). Only the stages this model's forward pass has.
    pub name: &'static str,
    /// Total wall time.
    pub total: Duration,
    /// Calls.
    pub calls: u64,
}

/// Whether profiling is on for the calling thread (a model's worker thread, where its
/// `tuning.profile_stages` turned it on).
pub fn is_enabled() -> bool {
    enabled()
}

/// The stages timed since the last call, largest first, and a reset.
pub fn take() -> Vec<Stage> {
    let table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(PoisonError::into_inner));
    let mut out: Vec<Stage> = table.into_iter().map(|(name, (total, calls))| Stage { name, total, calls }).collect();
    out.sort_by(|a, b| b.total.cmp(&a.total));
    out
}
