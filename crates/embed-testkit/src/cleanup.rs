//! Helpers that run a body which panics, is cancelled, or repeats, and check what is left.

use std::future::Future;
use std::time::Duration;

use crate::memory::{wait_for_no_live_models, CycleLevels};

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

/// Runs `body` `cycles` times and checks the memory after each cycle against the level after
/// the first with [`CycleLevels`] (allocator bytes precise, RSS with a bounded allowance, no
/// model left live). Returns the levels.
pub async fn assert_cycles_flat<F, Fut>(cycles: usize, mut body: F) -> CycleLevels
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut levels = CycleLevels::new();
    for cycle in 0..cycles {
        body(cycle).await;
        assert_no_live_models(Duration::from_secs(10));
        levels.record(cycle);
    }
    levels
}
