//! Application state, the router with its middleware, and the serve loop.

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use embed_pool::{CloseReport, Pool};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::api::{admin, openai, tei};
use crate::error::{ApiError, Flavor};
use crate::metrics::Metrics;
use crate::ServerConfig;

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) pool: Pool,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
}

impl AppState {
    /// State over `pool` (which decides which model names resolve) with `config`.
    pub fn new(pool: Pool, config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.limits.max_concurrent.max(1)));
        AppState { pool, config: Arc::new(config), metrics: Arc::new(Metrics::default()), ready: Arc::new(AtomicBool::new(false)), permits }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The config.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Whether `/ready` reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sets readiness (done by [`serve`] after preloading, and cleared at shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Loads the configured preload models; ready afterwards.
    pub async fn preload(&self) -> Result<(), embed_pool::PoolError> {
        for name in &self.config.preload {
            self.pool.preload(name).await?;
            tracing::info!(model = %name, "preloaded");
        }
        self.set_ready(true);
        Ok(())
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API as a `Router` to serve or to `nest` in your own app.
pub fn router<S: Clone + Send + Sync + 'static>(state: AppState) -> Router<S> {
    let limited = Router::new()
        .route("/embed", post(tei::embed))
        .route("/tokenize", post(tei::tokenize))
        .route("/v1/embeddings", post(openai::embeddings))
        .layer(middleware::from_fn_with_state(state.clone(), overload))
        .layer(middleware::from_fn_with_state(state.clone(), deadline));
    let protected = Router::new()
        .merge(limited)
        .route("/info", get(tei::info))
        .route("/v1/models", get(openai::models))
        .route("/models", get(admin::models))
        .route("/models/{name}/load", post(admin::load))
        .route("/models/{name}/unload", post(admin::unload))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let open = Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics));
    Router::new()
        .merge(protected)
        .merge(open)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    let path = req.uri().path().to_string();
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {path}", req.method())).flavor(Flavor::of_path(&path))
}

fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!("handler panicked: {msg}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error: the request handler panicked (logged)").into_response()
}

/// Records status and latency per matched route.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.record_request(&route, resp.status().as_u16(), started.elapsed());
    resp
}

/// Bearer-token check in constant time; `/health`, `/ready`, `/metrics` are outside it.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else { return next.run(req).await };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        next.run(req).await
    } else {
        let flavor = Flavor::of_path(req.uri().path());
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer <key>)")
            .flavor(flavor)
            .into_response()
    }
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
/// (The length of the configured key is not treated as secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..b.len() {
        diff |= a.get(i).copied().unwrap_or(0) ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

/// At most `max_concurrent` requests at once; the rest get 429 with Retry-After.
async fn overload(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(_) => {
            let flavor = Flavor::of_path(req.uri().path());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many concurrent requests (limit {}); retry shortly", state.config.limits.max_concurrent),
            )
            .retry_after(1)
            .flavor(flavor)
            .into_response()
        }
    }
}

/// Whole-request deadline; dropping the handler future releases its lease and queued work.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.limits.request_timeout;
    let flavor = Flavor::of_path(req.uri().path());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("request did not finish within {limit:?}"))
            .flavor(flavor)
            .into_response(),
    }
}

/// What [`serve`] did on the way out.
#[derive(Debug)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether in-flight requests all finished before the deadline.
    pub drained: bool,
    /// What closing the pool released.
    pub pool: CloseReport,
}

/// Serves `state` on `listener` until `shutdown` resolves: preloads (then `/ready` is 200),
/// serves, and at shutdown stops accepting, lets in-flight requests finish within
/// `config.shutdown_deadline`, then closes the pool so every model's memory is released.
/// Binds nothing and installs no signal handler: both are the caller's.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<ShutdownReport> {
    let app = router::<()>(state.clone());
    let preload_state = state.clone();
    let preload = tokio::spawn(async move {
        if let Err(e) = preload_state.preload().await {
            tracing::error!("preloading failed: {e}; /ready stays 503");
        }
    });
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let not_ready = state.clone();
    let graceful = async move {
        shutdown.await;
        not_ready.set_ready(false);
        tracing::info!("shutdown requested: no new connections; draining in-flight requests");
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let deadline = state.config.shutdown_deadline;
    let drained = tokio::select! {
        r = server.into_future() => { r?; true }
        _ = async { let _ = fired_rx.await; tokio::time::sleep(deadline).await } => {
            tracing::warn!("in-flight requests did not finish within {deadline:?}; closing anyway");
            false
        }
    };
    preload.abort();
    let pool = state.pool.close().await;
    tracing::info!(released = pool.released, "pool closed; models released");
    Ok(ShutdownReport { drained, pool })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
    }
}

