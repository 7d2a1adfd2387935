//! OpenAI-compatible routes: `/v1/embeddings` (also `/embeddings`, as TEI serves it), `/v1/models`.

pub(crate) mod types;

pub(crate) use self::types::{EmbeddingVector, EncodingFormat};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use embed_core::EmbedOptions;
use embed_pool::Lease;

use self::types::{EmbeddingList, EmbeddingsRequest, Input, ModelList};
use super::{check_count, EncodedJson, JsonBody};
use crate::error::{ApiError, OpenAiError};
use crate::AppState;

/// Embeds `input` (texts or token ids) with `model`, answering in OpenAI's list shape.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = types::EmbeddingsRequest,
    responses((status = 200, description = "The embeddings in OpenAI's list shape", body = types::EmbeddingList), crate::api::docs::OpenAiErrors))]
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<EncodedJson, OpenAiError> {
    let model = state.config.model_for(req.model);
    if let Some(user) = &req.user {
        tracing::debug!(user = %user, "embeddings request");
    }
    let n = req.input.len();
    // OpenAI answers too many inputs with 400 like any other invalid input (TEI: 413).
    check_count(n, &state, "input").map_err(|e| ApiError { status: StatusCode::BAD_REQUEST, ..e })?;
    check_not_empty(&req.input)?;
    let encoding_format = req.encoding_format.unwrap_or_default();
    let lease = state.lease(&model).await?;
    // `dimensions` is checked by the model's service (one check for every API): an invalid
    // value is `InvalidOption`, a 400 naming the parameter.
    let mut options = EmbedOptions::default().with_truncate(state.config.limits.truncate_by_default);
    options.dimensions = req.dimensions;
    options.priority = super::asked_priority(req.priority);
    let priority = options.priority_for(n);
    let _admitted = state.admit(priority)?;
    let queued = state.metrics.queued(&model);
    let out = match req.input {
        Input::Text(t) => lease.embed_texts(&[t], &options).await,
        Input::Texts(v) => lease.embed_texts(&v, &options).await,
        Input::Tokens(ids) => lease.tasks_for("embed token ids")?.embed_token_ids(&[ids], &options).await,
        Input::TokenLists(v) => lease.tasks_for("embed token ids")?.embed_token_ids(&v, &options).await,
    }?;
    drop(queued);
    let tokens = out.total_tokens();
    let instance = std::sync::Arc::as_ptr(&Lease::service(&lease)) as *const () as usize;
    state.metrics.record_embedding(Lease::name(&lease), instance, n, tokens, lease.batch_stats());
    let size = super::vectors_json_size(&out.vectors, encoding_format.json_chars_per_number());
    Ok(super::encode_json(priority, size, move || EmbeddingList::new(model, out.vectors, encoding_format, tokens)).await?)
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

/// Lists the registered models, loaded or not; loads nothing.
#[utoipa::path(get, path = "/v1/models", tag = "openai", operation_id = "openai_models",
    responses((status = 200, description = "The registered models", body = types::ModelList), crate::api::docs::OpenAiErrors))]
pub(crate) async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList::new(state.pool.registry().names().map(|n| (n, state.known_info(n).map(|i| i.kind)))))
}

/// OpenAI's embeddings route without `/v1` (text-embeddings-inference has both; the same
/// handler): documented under its own path.
#[utoipa::path(post, path = "/embeddings", tag = "openai", request_body = types::EmbeddingsRequest,
    responses((status = 200, description = "The embeddings in OpenAI's list shape", body = types::EmbeddingList), crate::api::docs::OpenAiErrors))]
#[allow(dead_code)] // a documentation entry: the route is served by `embeddings`
pub(crate) fn embeddings_without_v1() {}
