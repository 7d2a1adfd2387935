//! The accept loop and the shutdown sequence.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use embed_pool::CloseReport;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn::serve_connection;
use crate::error::ServeError;
use crate::{router, AppState};

/// How long releasing the models may take after the drain deadline: the whole shutdown ends
/// within `Timeouts::shutdown + CLOSE_MARGIN` (plus the moment it takes to abort connections).
pub const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// What [`serve`] did on the way out.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether in-flight requests all finished before the deadline.
    pub drained: bool,
    /// Requests still running at the deadline; their connections were closed.
    pub cut_short: usize,
    /// What closing the pool released.
    pub pool: CloseReport,
    /// Whether closing the pool finished within [`CLOSE_MARGIN`]. When false, models may still
    /// hold memory and worker threads may still run (see [`CloseReport::models_left`]).
    pub pool_closed: bool,
}

/// Serves `state` on `listener` until `shutdown` resolves: preloads (then `/ready` is 200),
/// serves, and at shutdown (after `config.timeouts.shutdown_delay`, during which it serves on
/// unready) stops accepting, closes idle connections, lets in-flight requests finish within
/// `config.timeouts.shutdown`, closes the connections still open after it, then releases every
/// model within [`CLOSE_MARGIN`].
///
/// Connections: at most `limits.max_connections` are open; at the cap the server stops
/// accepting and new clients wait in the listen backlog. See [`crate::Limits`] for the timeouts.
///
/// Fails with [`ServeError::Preload`] (after the same shutdown) when a preload fails, unless
/// `config.allow_degraded_start`. Binds nothing and installs no signal handler.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ShutdownReport, ServeError> {
    let app = router::<()>(state.clone());
    let config = state.config.clone();
    let (preload_tx, preload_rx) = tokio::sync::oneshot::channel();
    let preload_state = state.clone();
    let preload = tokio::spawn(async move {
        let r = preload_state.preload().await;
        if let Err(e) = &r {
            tracing::error!("preloading failed: {e}");
        }
        let _ = preload_tx.send(r);
    });
    let degraded = config.allow_degraded_start;
    let preload_failed = async move {
        match preload_rx.await {
            Ok(Err(e)) if !degraded => e,
            Ok(Err(_)) => {
                tracing::warn!("starting degraded (allow_degraded_start): /ready stays 503");
                std::future::pending().await
            }
            _ => std::future::pending().await,
        }
    };
    // With a shutdown delay, the server first turns unready and asks clients to close their
    // connections, serving on while balancers move away; the accept loop stops after it.
    let delay = config.timeouts.shutdown_delay;
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        if !delay.is_zero() {
            closing.begin_closing();
            tracing::info!("shutdown: /ready is 503 and connections close after their next response; still serving for {delay:?}");
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(shutdown, preload_failed);

    let timeouts = config.timeouts;
    let max_connections = config.limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut at_cap_logged = false;
    let mut accept_errors = 0u32;

    let failure = loop {
        while connections.try_join_next().is_some() {}
        // A slot first, then accept: at the cap, new clients wait in the kernel's backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap_logged {
                    tracing::warn!(max_connections, "connection cap reached; new connections wait in the listen backlog");
                    at_cap_logged = true;
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break None,
                    e = &mut preload_failed => break Some(e),
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break None,
            e = &mut preload_failed => break Some(e),
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // back off instead of spinning, and say so once in a while.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(errors = accept_errors, "accept failed: {e}; backing off");
                    }
                    let pause = Duration::from_millis(10u64 << accept_errors.min(6));
                    tokio::select! {
                        _ = &mut shutdown => break None,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        accept_errors = 0;
        at_cap_logged = false;
        let conn = serve_connection(stream, app.clone(), timeouts, &graceful, stop_rx.clone(), in_flight.clone());
        connections.spawn(async move {
            conn.await;
            drop(slot);
        });
    };

    // Stop accepting: close the listening socket so balancers see refused connections.
    drop(listener);
    state.begin_closing();
    let open = max_connections - slots.available_permits();
    tracing::info!(
        connections = open,
        requests = in_flight.load(Ordering::Relaxed),
        "shutdown: no new connections; closing idle ones and draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    let deadline = config.timeouts.shutdown;
    let drained = tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok();
    let mut cut_short = 0;
    if !drained {
        cut_short = in_flight.load(Ordering::Relaxed);
        tracing::warn!(
            requests = cut_short,
            connections = max_connections - slots.available_permits(),
            "shutdown deadline of {deadline:?} passed: cutting short the requests still running and closing their connections"
        );
    }
    // Dropping a connection drops its handlers, their leases and their queued work.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    preload.abort();

    let (pool, pool_closed) = match tokio::time::timeout(CLOSE_MARGIN, state.pool.close()).await {
        Ok(report) => {
            tracing::info!(released = report.released, forced_leases = report.forced_leases, "pool closed; models released");
            (report, true)
        }
        Err(_) => {
            let left: Vec<String> = state.pool.status().models.into_iter().map(|m| m.name).collect();
            tracing::warn!(models = ?left, "releasing the models did not finish within {CLOSE_MARGIN:?}; cut short");
            let mut report = CloseReport::default();
            report.models_left = left.len();
            (report, false)
        }
    };
    match failure {
        Some(e) => Err(ServeError::Preload(e)),
        None => Ok(ShutdownReport { drained, cut_short, pool, pool_closed }),
    }
}
