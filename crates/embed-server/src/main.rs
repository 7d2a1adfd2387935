//! `embed-server`: serve embedding models over HTTP (TEI- and OpenAI-compatible).
//!
//! Configuration comes from flags, `EMBED_*` environment variables and an optional TOML file
//! (`--config`), in that order of precedence. See `embed-server --help`.

mod cli;
mod telemetry;

use anyhow::{Context, Result};
use clap::Parser;
use embed_pool::Pool;
use embed_server::{metrics_router, AppState, Limits};

use cli::{build, Args};


/// Blocks SIGINT and SIGTERM before libtorch's static initialisers run (they take a good part of
/// a second, before `main`): a signal that arrives meanwhile stays pending instead of killing
/// the process silently, and is delivered once `main` has its handlers ([`Signals::install`]).
/// `.preinit_array` entries run before the initialisers of shared libraries.
#[cfg(not(test))]
#[used]
#[link_section = ".preinit_array"]
static BLOCK_SHUTDOWN_SIGNALS_EARLY: extern "C" fn() = block_shutdown_signals;

#[cfg_attr(test, allow(dead_code))]
extern "C" fn block_shutdown_signals() {
    set_shutdown_signals_blocked(true);
}

fn set_shutdown_signals_blocked(blocked: bool) {
    // SAFETY: sigemptyset/sigaddset initialise a local set; pthread_sigmask only changes this
    // thread's mask (threads started later inherit it).
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut());
    }
}

/// SIGINT and SIGTERM, caught from the first moments of `main` on: a signal that arrives while
/// the server is still starting is kept and handled as soon as serving begins.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers, then unblocks the signals on this (the main) thread, where one
    /// that arrived before is delivered now. The runtime's worker threads, started before,
    /// keep them blocked; the kernel delivers to a thread that does not block them.
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        };
        set_shutdown_signals_blocked(false);
        Ok(signals)
    }

    /// Resolves on the first signal; a second one exits the process at once.
    async fn shutdown(mut self) {
        tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
        tracing::info!("signal received; shutting down gracefully (send it again to force exit)");
        tokio::spawn(async move {
            tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
            eprintln!("second signal: forcing exit");
            // _exit, not exit: running atexit handlers and libtorch's static destructors while a
            // forward pass is still on the worker thread can crash instead of exiting.
            // SAFETY: _exit has no preconditions; it ends the process at once.
            unsafe { libc::_exit(130) }
        });
    }
}

/// Raises the soft limit on open files to the hard one and fits `max_connections` under it,
/// leaving room for model files, libtorch and the listener.
fn fit_connections_to_fd_limit(limits: &mut Limits) {
    const RESERVED_FDS: u64 = 64;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let fit = usize::try_from(lim.rlim_cur.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if limits.max_connections > fit {
        tracing::warn!(
            requested = limits.max_connections,
            max_connections = fit,
            fd_limit = lim.rlim_cur,
            "max_connections lowered to fit the open-file limit"
        );
        limits.max_connections = fit;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse().with_tei_env(|k| std::env::var(k).ok()).with_config_file_tei_keys()?;
    let telemetry = telemetry::init(&args.telemetry()?)?;
    // Before anything slow: from here on SIGTERM is logged and handled, never fatal.
    let signals = Signals::install()?;
    let prometheus_port = args.prometheus_port();
    let grpc_port = args.grpc_port()?;
    let (pool_config, registry, mut config, bind) = build(args)?;
    fit_connections_to_fd_limit(&mut config.limits);
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    let default_model = config.default_model.clone();
    let state = AppState::new(Pool::new(pool_config, registry), config);
    if let Some(port) = prometheus_port {
        let at = std::net::SocketAddr::new(bind.ip(), port);
        let metrics = tokio::net::TcpListener::bind(at).await.with_context(|| format!("binding {at} (--prometheus-port)"))?;
        let at = metrics.local_addr()?;
        tracing::info!(%at, "metrics listening");
        println!("metrics on http://{at}/metrics");
        // Ends with the process: scrapes hold no leases and leave nothing to drain.
        let app = metrics_router(state.clone());
        tokio::spawn(async move { axum::serve(metrics, app).await });
    }
    // One shutdown signal for both servers: the gRPC one stops accepting and drains its calls
    // while the HTTP one drains; the pool closes after the HTTP drain and waits (up to its close
    // timeout) for the leases gRPC calls still hold.
    let shutdown = futures::FutureExt::shared(signals.shutdown());
    let grpc = match grpc_port {
        Some(port) => {
            let at = std::net::SocketAddr::new(bind.ip(), port);
            let listener = tokio::net::TcpListener::bind(at).await.with_context(|| format!("binding {at} (--grpc-port)"))?;
            let at = listener.local_addr()?;
            tracing::info!(%at, "gRPC listening");
            println!("gRPC (tei.v1) on {at}");
            // After the shutdown delay, as the HTTP listener: balancers see both stop together.
            let (signal, delay) = (shutdown.clone(), state.config().timeouts.shutdown_delay);
            let stop = async move {
                signal.await;
                tokio::time::sleep(delay).await;
            };
            Some(tokio::spawn(embed_server::serve_grpc(listener, state.clone(), stop)))
        }
        None => None,
    };
    tracing::info!(%addr, "listening");
    println!("embed-server listening on http://{addr}  (default model: {default_model})");
    println!("try: curl -s http://{addr}/embed -H 'Content-Type: application/json' -d '{{\"inputs\": \"Hello world\"}}'");
    let shutdown_deadline = state.config().timeouts.shutdown;
    let report = embed_server::serve(listener, state, shutdown)
        .await
        .context("the server stopped because a model could not be preloaded (pass --allow-degraded-start to serve anyway)")?;
    if let Some(grpc) = grpc {
        match tokio::time::timeout(shutdown_deadline, grpc).await {
            Ok(Ok(Ok(()))) => tracing::info!("gRPC server stopped"),
            Ok(Ok(Err(e))) => tracing::error!("gRPC server failed: {e}"),
            Ok(Err(e)) => tracing::error!("gRPC server task failed: {e}"),
            Err(_) => tracing::warn!("gRPC calls still running after {shutdown_deadline:?}; cut short"),
        }
    }
    tracing::info!(
        drained = report.drained,
        cut_short = report.cut_short,
        released = report.pool.released,
        live_models = embed_core::memory::live_models(),
        "stopped"
    );
    // Before any exit: the spans of the last requests are still in the exporter's batch.
    telemetry.shutdown();
    if !report.pool_closed {
        // A model's worker may still be in a forward pass: skip the static destructors.
        // SAFETY: _exit has no preconditions; it ends the process at once.
        unsafe { libc::_exit(0) }
    }
    Ok(())
}
