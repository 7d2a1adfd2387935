//! A stage profile of the forward pass, for finding where CPU time goes (`EMBED_PROFILE_STAGES=1`;
//! `examples/stage_profile.rs` prints it for f32 beside bf16).
//!
//! Off unless the variable is set when the first stage runs: then each stage is one
//! thread-local flag check. On, every stage (each linear layer, attention, norms, activations,
//! residual adds, the padding-free index ops, the batch upload, pooling and head, the output
//! copy) adds its wall time to a process-wide table. On the CPU every libtorch op runs
//! synchronously, so the times are the ops' own; on CUDA they would only be launch times, so
//! the profile is a CPU tool.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

static ENABLED: OnceLock<bool> = OnceLock::new();
static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn enabled() -> bool {
    *ENABLED.get_or_init(|| std::env::var("EMBED_PROFILE_STAGES").is_ok_and(|v| v == "1"))
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

/// Whether profiling is on (`EMBED_PROFILE_STAGES=1` in the environment).
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
