//! Status and admin routes: `/models`, `/models/events`, `/models/{name}/load`, `/models/{name}/unload`,
//! `/models/{name}/offload`, `/health`, `/ready`, `/metrics`.

mod types;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use embed_pool::UnloadMode;

use self::types::{Events, Loaded, Models, Offloaded, ServerStatus, UnloadQuery, Unloaded};
use super::QueryParams;
use crate::error::ApiError;
use crate::AppState;

/// The pool's state: loaded models with what they said at load time, and the registry. Reads
/// only; loads nothing.
#[utoipa::path(get, path = "/models", tag = "admin",
    responses((status = 200, description = "Loaded and registered models", body = types::Models), crate::api::docs::TeiErrors))]
pub(crate) async fn models(State(state): State<AppState>) -> Json<Models> {
    let now = tokio::time::Instant::now();
    Json(Models::new(state.pool.status(), &state.pool.registry(), |name| state.known_info(name), now))
}

/// The pool's recent history, oldest first: loads, failed loads and releases with their cause,
/// size, time and duration (why a request had to wait).
#[utoipa::path(get, path = "/models/events", tag = "admin",
    responses((status = 200, description = "The pool's recent events, oldest first", body = types::Events), crate::api::docs::TeiErrors))]
pub(crate) async fn events(State(state): State<AppState>) -> Json<Events> {
    Json(Events::new(state.pool.history()))
}

/// Loads `name` if it is not loaded yet, and answers once it is ready.
#[utoipa::path(post, path = "/models/{name}/load", tag = "admin", params(("name" = String, Path, description = "A registered model")),
    responses((status = 200, description = "Loaded and ready", body = types::Loaded), crate::api::docs::TeiErrors))]
pub(crate) async fn load(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Loaded>, ApiError> {
    drop(state.lease(&name).await?);
    Ok(Json(Loaded { model: name, loaded: true }))
}

/// Unloads `name`, by default after its leases end (`?force_fail_if_leased=true`: 409 instead).
#[utoipa::path(post, path = "/models/{name}/unload", tag = "admin", params(("name" = String, Path, description = "A registered model"), types::UnloadQuery),
    responses((status = 200, description = "Unloaded, or not loaded", body = types::Unloaded), crate::api::docs::TeiErrors))]
pub(crate) async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<UnloadQuery>,
) -> Result<Json<Unloaded>, ApiError> {
    if !state.pool.registry().contains(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name:?}: it is not registered")));
    }
    let mode = if q.force_fail_if_leased { UnloadMode::FailIfLeased } else { UnloadMode::WaitForLeases };
    let report = state.pool.unload(&name, mode).await?;
    Ok(Json(Unloaded {
        model: name,
        unloaded: report.is_some(),
        model_weight_bytes: report.map(|r| r.model_weight_bytes).unwrap_or(0),
    }))
}

/// Moves the idle model `name` to the warm tier (host memory) now; 409 when it cannot go
/// (leased, busy, a CPU model, the tier off, no host room). A request for it restores it.
#[utoipa::path(post, path = "/models/{name}/offload", tag = "admin", params(("name" = String, Path, description = "A registered model")),
    responses((status = 200, description = "Moved to host memory, or nothing to move", body = types::Offloaded), crate::api::docs::TeiErrors))]
pub(crate) async fn offload(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Offloaded>, ApiError> {
    if !state.pool.registry().contains(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name:?}: it is not registered")));
    }
    let offloaded = state.pool.offload(&name).await?;
    let host_bytes = state.pool.status().model(&name).map_or(0, |m| m.host_bytes);
    Ok(Json(Offloaded { model: name, offloaded, host_bytes }))
}

/// Liveness: answers whenever the server can answer at all.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The server answers", body = types::ServerStatus)))]
pub(crate) async fn health() -> Json<ServerStatus> {
    Json(ServerStatus { status: "ok", error: None })
}

/// Readiness: 200 once the preloaded models are up, 503 before that and while shutting down.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "Ready: the preloaded models are up", body = types::ServerStatus),
        (status = 503, description = "Models still loading, or shutting down", body = types::ServerStatus)))]
pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, Json(ServerStatus { status: "ready", error: None }))
    } else {
        let why = "models are still loading (or the server is shutting down)";
        (StatusCode::SERVICE_UNAVAILABLE, Json(ServerStatus { status: "starting", error: Some(why) }))
    }
}

/// Prometheus text exposition of [`crate::Metrics`].
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render())
}

/// SageMaker's health check (`GET /ping`, the same handler as `/ready`): documented under its
/// own path.
#[utoipa::path(get, path = "/ping", tag = "health",
    responses((status = 200, description = "Ready", body = types::ServerStatus),
        (status = 503, description = "Models still loading, or shutting down", body = types::ServerStatus)))]
#[allow(dead_code)] // a documentation entry: the route is served by `ready`
pub(crate) fn ping() {}
