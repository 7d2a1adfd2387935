//! OpenAI-compatible routes: `/v1/embeddings`, `/v1/models`.

use axum::extract::State;
use axum::Json;
use base64::Engine;
use embed_core::EmbedOptions;
use embed_pool::Lease;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{check_count, JsonBody};
use crate::error::{ApiError, Flavor};
use crate::AppState;

/// `input`: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    #[serde(default)]
    dimensions: Option<usize>,
    /// Accepted and logged; not used otherwise.
    #[serde(default)]
    user: Option<String>,
}

fn oai(e: impl Into<ApiError>) -> ApiError {
    e.into().flavor(Flavor::OpenAi)
}

pub(crate) async fn embeddings(State(state): State<AppState>, JsonBody(req): JsonBody<EmbeddingsRequest>) -> Result<Json<Value>, ApiError> {
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    if let Some(user) = &req.user {
        tracing::debug!(user = %user, "embeddings request");
    }
    let n = match &req.input {
        Input::Text(_) | Input::Tokens(_) => 1,
        Input::Texts(v) => v.len(),
        Input::TokenLists(v) => v.len(),
    };
    check_count(n, &state, "input").map_err(oai)?;
    let lease = state.pool.get(&model).await.map_err(oai)?;
    let info = lease.info().ok_or_else(|| oai(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("model {model:?} is not ready"))))?;
    if let Some(d) = req.dimensions {
        if d != info.dimension {
            return Err(oai(ApiError::invalid(
                "dimensions",
                format!("model {model:?} produces {}-dimensional embeddings and does not support dimensions={d}", info.dimension),
            )));
        }
    }
    let options = EmbedOptions { truncate: state.config.limits.truncate_by_default, ..Default::default() };
    let out = match req.input {
        Input::Text(t) => lease.embed_texts(&[t], &options).await,
        Input::Texts(v) => lease.embed_texts(&v, &options).await,
        Input::Tokens(ids) => lease.embed_token_ids(&[ids], &options).await,
        Input::TokenLists(v) => lease.embed_token_ids(&v, &options).await,
    }
    .map_err(oai)?;
    let tokens = out.total_tokens();
    state.metrics.record_embedding(Lease::name(&lease), n, tokens, lease.batch_stats());
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match req.encoding_format {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state.pool.registry().names().map(String::from).collect();
    let data: Vec<Value> =
        names.iter().map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "embed"})).collect();
    Json(json!({"object": "list", "data": data}))
}
