//! Helpers that run a body which panics, is cancelled, or repeats, and check what is left.

use std::future::Future;
use std::time::Duration;

use crate::memory::{growth, mib, settled_snapshot, wait_for_no_live_models};

/// Runs `fut` as a task and reports whether it panicked (the panic is caught, its message
/// returned). The task's own cleanup paths run before this returns.
pub async fn run_to_panic<F>(fut: F) -> Option<String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(_) => None,
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            Some(p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default())
        }
        Err(e) => panic!("task failed without panicking: {e}"),
    }
}

/// Drives `fut` until `started` resolves (the body is inside its resource), then drops it:
/// a cancellation at the worst moment.
pub async fn cancel_once_started<F, S>(fut: F, started: S)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: Future,
{
    let task = tokio::spawn(fut);
    started.await;
    task.abort();
    let _ = task.await;
}

/// Asserts that no model is live (waiting up to `timeout` for releases that were only signalled).
///
/// # Panics
/// When a model is still live after `timeout`.
pub fn assert_no_live_models(timeout: Duration) {
    let left = wait_for_no_live_models(timeout);
    assert_eq!(left, 0, "{left} model(s) still live after {timeout:?}");
    assert_eq!(embed_core::memory::live_weight_bytes(), 0, "weight bytes still accounted");
}

/// The anonymous resident memory after each cycle of [`assert_cycles_flat`].
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// Bytes after each cycle, the first being the warm-up.
    pub resident_anon: Vec<u64>,
    /// Worst growth over the level after the first cycle.
    pub worst_growth: f64,
}

/// Runs `body` `cycles` times; after each, returns freed heap to the OS and samples anonymous
/// resident memory. Asserts every later level is within `tolerance` (e.g. 0.05) of the level
/// after the first cycle, and that no model is left live.
pub async fn assert_cycles_flat<F, Fut>(cycles: usize, tolerance: f64, mut body: F) -> CycleReport
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut levels = Vec::with_capacity(cycles);
    let mut worst = 0.0f64;
    for cycle in 0..cycles {
        body(cycle).await;
        assert_no_live_models(Duration::from_secs(10));
        let now = settled_snapshot().resident_anon;
        if let Some(&base) = levels.first() {
            let g = growth(base, now);
            worst = worst.max(g);
            assert!(g <= tolerance, "cycle {cycle}: {:.1} MiB vs {:.1} MiB after cycle 1 (+{:.1}%)", mib(now), mib(base), g * 100.0);
        }
        levels.push(now);
    }
    CycleReport { resident_anon: levels, worst_growth: worst }
}
