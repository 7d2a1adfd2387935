//! In-process helpers: a router over two tiny models, and one-shot calls without a socket.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use embed_core::{FaultInjection, ModelOptions, ModelSpec};
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_server::{router, AppState, ServerConfig};
use embed_testkit::TinyModel;
use serde_json::Value;
use tower::ServiceExt;

pub struct Fixture {
    pub tmp: Vec<tempfile::TempDir>,
    pub state: AppState,
    pub app: Router,
}

/// Models `tiny` (32-d, with `faults`) and `other` (16-d), plus any `extra` registered by the
/// caller, in a pool of `max_models`.
pub fn fixture(
    max_models: usize,
    config: impl FnOnce(ServerConfig) -> ServerConfig,
    faults: FaultInjection,
    extra: impl FnOnce(ModelRegistry) -> ModelRegistry,
) -> Fixture {
    let (t1, tiny) = TinyModel::default().write_temp();
    let (t2, other) = TinyModel { seed: 9, hidden: 16, heads: 2, ..TinyModel::default() }.write_temp();
    let opts = ModelOptions::default().with_faults(faults);
    let registry = ModelRegistry::new()
        .with("tiny", ModelSpec::new(tiny.to_string_lossy()).named("tiny").with_options(opts))
        .with("other", ModelSpec::new(other.to_string_lossy()).named("other"));
    let pool = Pool::new(PoolConfig::default().with_max_models(max_models), extra(registry));
    let state = AppState::new(pool, config(ServerConfig::new("tiny")));
    Fixture { tmp: vec![t1, t2], app: router(state.clone()), state }
}

/// A request with a raw body and headers; the response body as JSON (or a JSON string).
pub async fn send(app: &Router, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (StatusCode, Value, HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        req = req.header(*k, *v);
    }
    if body.is_some() && !has_type {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v, headers)
}
