//! Status and admin routes: `/models`, `/models/{name}/load`, `/models/{name}/unload`,
//! `/health`, `/ready`, `/metrics`.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use embed_pool::UnloadMode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::QueryParams;
use crate::error::ApiError;
use crate::AppState;

pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    let status = state.pool.status();
    let registry = state.pool.registry();
    let now = tokio::time::Instant::now();
    let loaded: Vec<Value> = status
        .models
        .iter()
        .map(|m| {
            let info = state.known_info(&m.name);
            json!({
                "name": m.name,
                "architecture": info.as_ref().map(|i| i.architecture.clone()),
                "family": info.as_ref().map(|i| i.family.to_string()),
                "dimension": info.as_ref().map(|i| i.dimension),
                "state": format!("{:?}", m.state).to_lowercase(),
                "weight_bytes": m.weight_bytes,
                "leases": m.leases,
                "pinned": m.pinned,
                "device": m.device.map(|d| d.to_string()),
                "dtype": info.as_ref().map(|i| i.dtype.to_string()),
                "idle_seconds": now.saturating_duration_since(m.last_used).as_secs_f64(),
            })
        })
        .collect();
    let registered: Vec<Value> = registry
        .names()
        .map(|n| {
            let r = registry.get(n).expect("name from the registry");
            json!({"name": n, "source": r.spec.source, "device": r.spec.options.device.to_string(), "dtype": r.spec.options.dtype.map_or_else(|| "auto".to_string(), |d| d.to_string())})
        })
        .collect();
    Json(json!({
        "loaded": loaded,
        "registered": registered,
        "max_models": status.max_models,
        "memory_budget": status.memory_budget,
        "weight_bytes": status.weight_bytes,
    }))
}

pub(crate) async fn load(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    drop(state.lease(&name).await?);
    Ok(Json(json!({"model": name, "loaded": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnloadQuery {
    /// Fail with 409 instead of waiting for leases to end.
    #[serde(default)]
    force_fail_if_leased: bool,
}

pub(crate) async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<UnloadQuery>,
) -> Result<Json<Value>, ApiError> {
    if !state.pool.registry().contains(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name:?}: it is not registered")));
    }
    let mode = if q.force_fail_if_leased { UnloadMode::FailIfLeased } else { UnloadMode::WaitForLeases };
    let report = state.pool.unload(&name, mode).await?;
    Ok(Json(json!({
        "model": name,
        "unloaded": report.is_some(),
        "model_weight_bytes": report.map(|r| r.model_weight_bytes).unwrap_or(0),
    })))
}

pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting", "error": "models are still loading (or the server is shutting down)"})))
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render())
}
