//! Application state and the router with its middleware.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use embed_core::{ModelInfo, Priority};
use embed_pool::{Lease, Pool};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer, ExposeHeaders};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::api::{admin, cohere, docs, openai, tasks, tei};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ServerConfig;

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) pool: Pool,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// Set when shutdown starts: responses ask clients to close their connections.
    closing: Arc<AtomicBool>,
    pub(crate) permits: Arc<Semaphore>,
    /// Bulk requests' share of `permits` (see `Limits::max_concurrent_bulk`).
    bulk_permits: Arc<Semaphore>,
    /// What each model said about itself when it was last leased, so read-only routes such as
    /// `/info` never need a lease (which could load one model and evict another).
    infos: Arc<Mutex<HashMap<String, ModelInfo>>>,
}

impl AppState {
    /// State over `pool` (which decides which model names resolve) with `config`.
    pub fn new(pool: Pool, config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.limits.max_concurrent.max(1)));
        let bulk_permits = Arc::new(Semaphore::new(config.limits.bulk_limit()));
        AppState {
            metrics: Arc::new(Metrics::new(pool.clone())),
            pool,
            config: Arc::new(config),
            ready: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(AtomicBool::new(false)),
            permits,
            bulk_permits,
            infos: Arc::default(),
        }
    }

    /// The pool that owns the models (for embedding the server in an application that also
    /// leases models itself).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The settings the server was built with (default model, limits, timeouts, API key).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Whether `/ready` reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sets readiness (done by [`crate::serve`] after preloading, and cleared at shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Marks the server as shutting down: `/ready` answers 503 and every response carries
    /// `Connection: close` (see `Timeouts::shutdown_delay`).
    pub(crate) fn begin_closing(&self) {
        self.set_ready(false);
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Loads the configured preload models; ready afterwards.
    pub async fn preload(&self) -> Result<(), embed_pool::PoolError> {
        for name in &self.config.preload {
            drop(self.lease(name).await?);
            tracing::info!(model = %name, "preloaded");
        }
        self.set_ready(true);
        Ok(())
    }

    /// A lease on `name` (loading it if needed), remembering the model's info.
    pub(crate) async fn lease(&self, name: &str) -> Result<Lease, embed_pool::PoolError> {
        let lease = self.pool.get(name).await?;
        let known = self.infos.lock().unwrap_or_else(PoisonError::into_inner).contains_key(name);
        if !known {
            if let Some(info) = lease.info() {
                self.infos.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), info);
            }
        }
        Ok(lease)
    }

    /// The info `name` gave when it was last loaded, without touching the pool.
    pub(crate) fn known_info(&self, name: &str) -> Option<ModelInfo> {
        self.infos.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes as they are added, with the list of what they serve (`(method, path)`): the router and
/// [`route_table`] come from the same calls, so the OpenAPI test checks the document against
/// what is really served.
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes { router: Router::new(), table: Vec::new() }
    }

    fn post<H: Handler<T, AppState>, T: 'static>(mut self, path: &'static str, handler: H) -> Self {
        self.router = self.router.route(path, post(handler));
        self.table.push(("post", path));
        self
    }

    fn get<H: Handler<T, AppState>, T: 'static>(mut self, path: &'static str, handler: H) -> Self {
        self.router = self.router.route(path, get(handler));
        self.table.push(("get", path));
        self
    }
}

/// Routes that compute: under the concurrency limit and the request deadline.
fn limited_routes() -> Routes {
    Routes::new()
        .post("/embed", tei::embed)
        .post("/", tasks::root)
        .post("/rerank", tasks::rerank)
        .post("/predict", tasks::predict)
        .post("/embed_sparse", tasks::embed_sparse)
        .post("/embed_all", tasks::embed_all)
        .post("/embed_multi", tasks::embed_multi)
        .post("/decode", tasks::decode)
        .post("/v1/rerank", tasks::cohere_rerank)
        .post("/v2/rerank", tasks::cohere_rerank)
        .post("/v2/embed", cohere::embed)
        .post("/tokenize", tei::tokenize)
        .post("/v1/embeddings", openai::embeddings)
        // text-embeddings-inference's other routes: SageMaker's, Vertex AI's, OpenAI's without `/v1`.
        .post("/similarity", tei::similarity)
        .post("/invocations", tasks::root)
        .post("/vertex", tasks::vertex)
        .post("/embeddings", openai::embeddings)
}

/// Routes that read or administer: behind the API key, without the concurrency limit.
fn protected_routes() -> Routes {
    Routes::new()
        .get("/info", tei::info)
        .get("/v1/models", openai::models)
        .get("/models", admin::models)
        .get("/models/events", admin::events)
        .post("/models/{name}/load", admin::load)
        .post("/models/{name}/unload", admin::unload)
        .post("/models/{name}/offload", admin::offload)
}

/// Routes without the API key: health, readiness, metrics and the API's description.
fn open_routes() -> Routes {
    Routes::new()
        .get("/health", admin::health)
        .get("/ready", admin::ready)
        // SageMaker's health check: 200 once it may send requests, as TEI (which only listens
        // once its model is loaded) answers it.
        .get("/ping", admin::ready)
        .get("/metrics", admin::metrics)
        .get("/openapi.json", docs::openapi_json)
        .get("/docs", docs::docs_page)
}

/// The routes that compute, as [`route_table`] lists them: their successful answers carry the
/// timing headers ([`TIMING_HEADERS`]).
pub(crate) fn timed_routes() -> Vec<(&'static str, &'static str)> {
    limited_routes().table
}

/// The response headers of a successful answer of a computing route, with what each says (see
/// [`timing_headers`]): exposed to browsers under CORS and listed in the OpenAPI document.
pub(crate) const TIMING_HEADERS: [(&str, &str); 8] = [
    ("x-compute-type", "Where the work ran: `cpu` or `gpu`"),
    ("x-compute-time", "Milliseconds of tokenization, queue wait and inference together"),
    ("x-compute-characters", "Unicode characters of the inputs computed"),
    ("x-compute-tokens", "Tokens computed (special tokens and prompts included, after truncation)"),
    ("x-total-time", "Milliseconds from the handler's start to the answer (parsing and model lease included)"),
    ("x-tokenization-time", "Milliseconds spent tokenizing"),
    ("x-queue-time", "Milliseconds in the model's queue before the first batch holding an input started"),
    ("x-inference-time", "Milliseconds from that first batch to the answer"),
];

/// Every route [`router`] serves, as `(method, path)` with the method in lower case and path
/// parameters as `{name}` (OpenAPI's form).
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    [limited_routes(), protected_routes(), open_routes()].into_iter().flat_map(|r| r.table).collect()
}

/// The API as a `Router` to serve or to `nest` in your own app.
pub fn router<S: Clone + Send + Sync + 'static>(state: AppState) -> Router<S> {
    let limited = limited_routes()
        .router
        .layer(middleware::from_fn(timing_headers))
        .layer(middleware::from_fn_with_state(state.clone(), overload))
        .layer(middleware::from_fn_with_state(state.clone(), deadline));
    let protected = protected_routes()
        .router
        .merge(limited)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let open = open_routes().router;
    let app = Router::new()
        .merge(protected)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), body_size))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
                    let span = tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                        otel.name = tracing::field::Empty,
                        otel.kind = tracing::field::Empty,
                    );
                    crate::otel::describe_request(&span, req);
                    span
                })
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    // Outermost, so a browser's preflight is answered before authentication asks for a key.
    let app = match cors(&state.config.cors_allow_origin) {
        Some(layer) => app.layer(layer),
        None => app,
    };
    app.with_state(state)
}

/// `GET /metrics` alone, for a listener of its own (TEI's `--prometheus-port`): scrapers reach
/// the metrics there without the API's routes, and the main port keeps its `/metrics` too.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(state: AppState) -> Router<S> {
    Router::new().route("/metrics", get(admin::metrics)).fallback(not_found).with_state(state)
}

/// The CORS layer for `origins` (`*`: any), TEI's: GET and POST, with `Content-Type`, and here
/// also `Authorization` so a page can send the API key; the timing headers and `x-request-id`
/// are exposed, so a page's script can read them. `None` without origins.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") { AllowOrigin::any() } else { AllowOrigin::list(origins.iter().cloned()) };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers(ExposeHeaders::list(TIMING_HEADERS.iter().map(|&(name, _)| HeaderName::from_static(name)).chain([REQUEST_ID]))),
    )
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {path}", req.method())).into_response_for(path)
}

async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("method {} is not allowed on {path}", req.method()))
        .into_response_for(path)
}

/// Refuses a body whose declared length is over the limit before reading any of it, so a
/// client that sent `Expect: 100-continue` gets 413 instead of `100 Continue`.
async fn body_size(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.limits.max_body_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than the limit of {limit} bytes"))
                .into_response_for(req.uri().path())
        }
        _ => next.run(req).await,
    }
}

fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = embed_core::panic_message(payload.as_ref());
    tracing::error!("handler panicked: {msg}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error: the request handler panicked (logged)").into_response()
}

/// Records status and latency per matched route; a request whose client went away before the
/// response is counted with status `499` (nginx's "client closed request").
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let guard = RequestRecord { metrics: state.metrics.clone(), route, started: Instant::now(), status: None };
    let mut resp = next.run(req).await;
    RequestRecord::finish(guard, resp.status().as_u16());
    if state.closing.load(Ordering::SeqCst) {
        // Shutting down: the client's next request goes to a new connection (another replica).
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

/// Records the request when dropped: with its status, or as cancelled.
#[must_use = "the request is recorded when this is dropped"]
struct RequestRecord {
    metrics: Arc<Metrics>,
    route: String,
    started: Instant,
    status: Option<u16>,
}

impl RequestRecord {
    fn finish(mut this: Self, status: u16) {
        this.status = Some(status);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.metrics.record_request(&self.route, self.status.unwrap_or(499), self.started.elapsed());
    }
}

/// Bearer-token check; `/health`, `/ready`, `/ping`, `/metrics` are outside it. The scheme is
/// case-insensitive (RFC 9110); a 401 carries `WWW-Authenticate: Bearer` (RFC 6750).
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()));
    if given.is_some_and(|token| key_matches(token, key.as_bytes())) {
        next.run(req).await
    } else {
        let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer <key>)")
            .into_response_for(req.uri().path());
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        resp
    }
}

/// The token of an `Authorization: Bearer <token>` value, any case of the scheme.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether `given` is exactly `key`. The bytes are compared in constant time; a different
/// length fails at once (the length of the configured key is not treated as secret).
pub(crate) fn key_matches(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && bool::from(given.ct_eq(key))
}

/// At most `max_concurrent` requests at once; the rest get 429 with Retry-After. Also reads
/// the request's `X-Embed-Priority` header (a validation error when it is neither priority).
async fn overload(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let priority = match req.headers().get(crate::api::PRIORITY_HEADER).map(|v| v.to_str().ok().map(str::parse::<Priority>)) {
        None => None,
        Some(Some(Ok(p))) => Some(p),
        Some(_) => {
            return ApiError::invalid("priority", format!("the {} header must be \"interactive\" or \"bulk\"", crate::api::PRIORITY_HEADER))
                .into_response_for(req.uri().path())
        }
    };
    match state.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let resp = crate::api::with_header_priority(priority, next.run(req)).await;
            drop(permit);
            resp
        }
        Err(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many concurrent requests (limit {}); retry shortly", state.config.limits.max_concurrent),
        )
        .retry_after(1)
        .into_response_for(req.uri().path()),
    }
}

impl AppState {
    /// Admits a request of `priority`: a bulk one takes one of the bulk permits (429 when none
    /// is left, while interactive requests are still served), held until it is dropped.
    pub(crate) fn admit(&self, priority: Priority) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if priority != Priority::Bulk {
            return Ok(None);
        }
        self.bulk_permits.clone().try_acquire_owned().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many concurrent bulk requests (limit {}); interactive requests are still served; retry shortly",
                    self.config.limits.bulk_limit()
                ),
            )
            .retry_after(1)
        })
    }
}

/// text-embeddings-inference's timing headers on a successful answer that computed something,
/// from what embed-core measured while the handler ran (`embed_core::timing`), in whole
/// milliseconds as TEI sends them: `x-tokenization-time`, `x-queue-time` (until the first batch
/// holding one of the inputs started), `x-inference-time` (from then to the answer),
/// `x-compute-time` (those three together), `x-total-time` (the handler, parsing and model
/// lease included), `x-compute-characters` and `x-compute-tokens` (the tokens computed, special
/// tokens and prompts included). Where a request makes several model calls (`/vertex`), the
/// figures are their sums.
///
/// Also `x-compute-type`, where the work ran: `cpu` or `gpu` (TEI always says `gpu+optimized`),
/// and, under OpenTelemetry, a child span of the request's per stage with its real times.
async fn timing_headers(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut resp, measured, phases) = embed_core::timing::measure_phases(next.run(req)).await;
    crate::otel::export_phases(&tracing::Span::current(), &phases);
    if measured.calls > 0 && resp.status().is_success() {
        let total = started.elapsed();
        let ms = |d: std::time::Duration| HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let count = |n: usize| HeaderValue::from(n as u64);
        let headers = resp.headers_mut();
        headers.insert(HeaderName::from_static("x-compute-time"), ms(measured.compute()));
        headers.insert(HeaderName::from_static("x-compute-characters"), count(measured.characters));
        headers.insert(HeaderName::from_static("x-compute-tokens"), count(measured.tokens));
        headers.insert(HeaderName::from_static("x-total-time"), ms(total));
        headers.insert(HeaderName::from_static("x-tokenization-time"), ms(measured.tokenization));
        headers.insert(HeaderName::from_static("x-queue-time"), ms(measured.queue));
        headers.insert(HeaderName::from_static("x-inference-time"), ms(measured.inference));
        if let Some(device) = measured.device {
            let kind = if matches!(device, embed_core::ResolvedDevice::Cpu) { "cpu" } else { "gpu" };
            headers.insert(HeaderName::from_static("x-compute-type"), HeaderValue::from_static(kind));
        }
    }
    resp
}

/// Whole-request deadline; dropping the handler future releases its lease and queued work.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.timeouts.request;
    // The handler takes the request; its URI (reference-counted bytes) picks the error shape.
    let uri = req.uri().clone();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("request did not finish within {limit:?}"))
            .into_response_for(uri.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, key_matches};

    #[test]
    fn keys_compare_exactly() {
        assert!(key_matches(b"secret", b"secret"));
        assert!(!key_matches(b"secreT", b"secret"));
        assert!(!key_matches(b"secret-longer", b"secret"));
        assert!(!key_matches(b"", b"secret"));
        assert!(!key_matches(b"sec", b"secret"));
        let long = [b"secret".as_slice(), &[0u8; 65_536]].concat();
        assert!(!key_matches(&long, b"secret"), "a length difference of 2^16 is still a difference");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(b"abc".as_slice()));
        assert_eq!(bearer_token(b"bearer abc"), Some(b"abc".as_slice()));
        assert_eq!(bearer_token(b"BEARER  abc "), Some(b"abc".as_slice()));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }
}
