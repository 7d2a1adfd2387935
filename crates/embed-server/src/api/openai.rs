//! OpenAI-compatible routes: `/v1/embeddings`, `/v1/models`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use embed_core::EmbedOptions;
use embed_pool::Lease;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{check_count, kind, JsonBody};
use crate::error::{ApiError, Flavor};
use crate::AppState;

/// `input`: text, texts, token ids, or lists of token ids.
#[derive(Debug)]
pub(crate) enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

const INPUT_EXPECTED: &str = "expected a string, an array of strings, an array of token ids or an array of token-id arrays";

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn token_list(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?.iter().map(token_id).collect()
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let items = match Value::deserialize(d)? {
            Value::String(s) => return Ok(Input::Text(s)),
            Value::Array(items) => items,
            other => return Err(D::Error::custom(format!("got {}; {INPUT_EXPECTED}", kind(&other)))),
        };
        let Some(first) = items.first() else { return Ok(Input::Texts(Vec::new())) };
        // The first item decides the shape; every other item must have the same one.
        let bad = |i: usize, v: &Value, what: &str| D::Error::custom(format!("item {i} is {}; expected {what} like item 0", kind(v)));
        match first {
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(String::from).ok_or_else(|| bad(i, v, "a string")))
                .collect::<Result<_, _>>()
                .map(Input::Texts),
            Value::Number(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token_id(v).ok_or_else(|| bad(i, v, "a token id (an integer from 0 to 4294967295)")))
                .collect::<Result<_, _>>()
                .map(Input::Tokens),
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token_list(v).ok_or_else(|| bad(i, v, "an array of token ids")))
                .collect::<Result<_, _>>()
                .map(Input::TokenLists),
            other => Err(D::Error::custom(format!("item 0 is {}; {INPUT_EXPECTED}", kind(other)))),
        }
    }
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
    /// `null` means the default, as in OpenAI's API.
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
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
    // OpenAI answers too many inputs with 400 like any other invalid input.
    check_count(n, &state, "input").map_err(|e| ApiError { status: StatusCode::BAD_REQUEST, ..oai(e) })?;
    check_not_empty(&req.input).map_err(oai)?;
    let encoding_format = req.encoding_format.unwrap_or_default();
    let lease = state.lease(&model).await.map_err(oai)?;
    let info = lease.info().ok_or_else(|| oai(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model {model:?} is not ready"))))?;
    if let Some(d) = req.dimensions {
        if !(1..=info.dimension).contains(&d) {
            return Err(oai(ApiError::invalid(
                "dimensions",
                format!("dimensions={d}: model {model:?} gives {}-dimensional embeddings; ask for 1 to {0}", info.dimension),
            )));
        }
    }
    let options = EmbedOptions { truncate: state.config.limits.truncate_by_default, dimensions: req.dimensions, ..Default::default() };
    let queued = state.metrics.queued(&model);
    let out = match req.input {
        Input::Text(t) => lease.embed_texts(&[t], &options).await,
        Input::Texts(v) => lease.embed_texts(&v, &options).await,
        Input::Tokens(ids) => lease.embed_token_ids(&[ids], &options).await,
        Input::TokenLists(v) => lease.embed_token_ids(&v, &options).await,
    }
    .map_err(oai)?;
    drop(queued);
    let tokens = out.total_tokens();
    let instance = std::sync::Arc::as_ptr(&Lease::service(&lease)) as *const () as usize;
    state.metrics.record_embedding(Lease::name(&lease), instance, n, tokens, lease.batch_stats());
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match encoding_format {
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

/// OpenAI rejects empty strings and empty token lists.
fn check_not_empty(input: &Input) -> Result<(), ApiError> {
    let empty = match input {
        Input::Text(t) => t.is_empty().then_some(None),
        Input::Texts(v) => v.iter().position(String::is_empty).map(Some),
        Input::Tokens(ids) => ids.is_empty().then_some(None),
        Input::TokenLists(v) => v.iter().position(Vec::is_empty).map(Some),
    };
    match empty {
        None => Ok(()),
        Some(None) => Err(ApiError::invalid("input", "`input` is empty; send a non-empty string or token list")),
        Some(Some(i)) => Err(ApiError::invalid("input", format!("`input[{i}]` is empty; every input must be non-empty"))),
    }
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state.pool.registry().names().map(String::from).collect();
    let data: Vec<Value> =
        names.iter().map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "embed"})).collect();
    Json(json!({"object": "list", "data": data}))
}
