//! text-embeddings-inference compatible routes: `/embed`, `/tokenize`, `/info`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use embed_core::EmbedOptions;
use embed_pool::Lease;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{check_count, JsonBody, StringOrList};
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedRequest {
    inputs: StringOrList,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    prompt_name: Option<String>,
    /// Extension: a literal instruction prefix.
    #[serde(default)]
    instruction: Option<String>,
    /// Extension: `query` or `document` prompting.
    #[serde(default)]
    mode: Option<embed_core::InputMode>,
    /// Extension: the model to use (default: the server's default model).
    #[serde(default)]
    model: Option<String>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    truncation_direction: Option<String>,
    /// Matryoshka: keep the first N dimensions (re-normalised when normalising).
    #[serde(default)]
    dimensions: Option<usize>,
}

pub(crate) async fn embed(State(state): State<AppState>, JsonBody(req): JsonBody<EmbedRequest>) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    if let Some(dir) = req.truncation_direction.as_deref() {
        if !dir.eq_ignore_ascii_case("right") {
            return Err(ApiError::invalid("truncation_direction", format!("truncation_direction {dir:?} is not supported (only \"right\")")));
        }
    }
    let texts = req.inputs.0;
    check_count(texts.len(), &state, "inputs")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    // The lease lives for the whole request: the model cannot be evicted under it, and a
    // client that disconnects drops this future, the lease and the queued work.
    let lease = state.lease(&model).await?;
    let options = EmbedOptions {
        mode: req.mode,
        prompt_name: req.prompt_name,
        instruction: req.instruction,
        normalize: Some(req.normalize.unwrap_or(true)),
        truncate: req.truncate.unwrap_or(state.config.limits.truncate_by_default),
        dimensions: req.dimensions,
    };
    let queued = state.metrics.queued(&model);
    let out = lease.embed_texts(&texts, &options).await?;
    drop(queued);
    let instance = std::sync::Arc::as_ptr(&Lease::service(&lease)) as *const () as usize;
    state.metrics.record_embedding(Lease::name(&lease), instance, texts.len(), out.total_tokens(), lease.batch_stats());
    Ok(Json(out.vectors))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    inputs: StringOrList,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt_name: Option<String>,
}

pub(crate) async fn tokenize(State(state): State<AppState>, JsonBody(req): JsonBody<TokenizeRequest>) -> Result<Json<Value>, ApiError> {
    let texts = req.inputs.0;
    check_count(texts.len(), &state, "inputs")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let lease = state.lease(&model).await?;
    let options = EmbedOptions { prompt_name: req.prompt_name, ..Default::default() };
    let toks = lease.tokenize(&texts, &options).await?;
    let body: Vec<Value> = toks
        .into_iter()
        .map(|t| Value::Array(t.ids.iter().zip(&t.tokens).map(|(id, text)| json!({"id": id, "text": text})).collect()))
        .collect();
    Ok(Json(Value::Array(body)))
}

/// Describes the default model from what it said when it was last loaded: never loads or
/// evicts anything (503 while it has never been loaded).
pub(crate) async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let name = &state.config.default_model;
    let info = state.known_info(name).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("default model {name:?} has not been loaded yet"))
    })?;
    Ok(Json(json!({
        "model_id": info.name,
        "model_source": info.source,
        "model_type": {"embedding": {"pooling": info.pooling.to_string()}},
        "architecture": info.architecture,
        "family": info.family.to_string(),
        "dimension": info.dimension,
        "max_input_length": info.max_seq_length,
        "max_client_batch_size": state.config.limits.max_inputs,
        "max_concurrent_requests": state.config.limits.max_concurrent,
        "device": info.device.to_string(),
        "dtype": info.dtype.to_string(),
        "normalize": info.normalize,
        "prompts": info.prompts,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}
