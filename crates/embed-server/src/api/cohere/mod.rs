//! Cohere's `POST /v2/embed` (its rerank routes are in `tasks`): `texts`, `input_type` mapped
//! onto the model's prompts, `embedding_types` (float, int8, uint8, binary, ubinary, base64),
//! `truncate`, `output_dimension`. Errors in OpenAI's shape, as on `/v2/rerank`.

mod types;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use embed_core::{EmbedOptions, InputMode, ModelInfo};

use self::types::{binary, int8, ubinary, uint8, ApiVersion, BilledUnits, ByType, EmbedRequest, EmbedResponse, EmbeddingType, InputType, Meta, Truncate};
use super::openai::{EmbeddingVector, EncodingFormat};
use super::{check_count, EncodedJson, JsonBody};
use crate::error::{ApiError, OpenAiError};
use crate::AppState;

static EMBED_IDS: AtomicU64 = AtomicU64::new(0);

/// Embeds `texts` with `model` (default: the server's), normalised, in each requested encoding.
#[utoipa::path(post, path = "/v2/embed", tag = "cohere", operation_id = "cohere_embed", request_body = types::EmbedRequest,
    responses((status = 200, description = "The embeddings in each requested encoding", body = types::EmbedResponse), crate::api::docs::OpenAiErrors))]
pub(crate) async fn embed(State(state): State<AppState>, JsonBody(req): JsonBody<EmbedRequest>) -> Result<EncodedJson, OpenAiError> {
    for (field, given) in [("images", &req.images), ("inputs", &req.inputs)] {
        if given.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(field, format!("`{field}` is not supported: this server embeds text; send `texts`")).into());
        }
    }
    if req.max_tokens.as_ref().is_some_and(|v| !v.is_null()) {
        let why = "`max_tokens` is not supported: texts are cut at the model's own limit (`max_input_length` in /info)";
        return Err(ApiError::invalid("max_tokens", why).into());
    }
    let texts = req.texts.ok_or_else(|| ApiError::invalid("texts", "`texts` is required"))?;
    // Cohere answers every invalid request with 400 (TEI: 413 for too many inputs).
    check_count(texts.len(), &state, "texts").map_err(|e| ApiError { status: StatusCode::BAD_REQUEST, ..e })?;
    let truncate = match req.truncate.unwrap_or(Truncate::End) {
        Truncate::End => true,
        Truncate::None => false,
        Truncate::Start => {
            return Err(ApiError::invalid("truncate", "truncate START is not supported (END cuts a long text's end; NONE refuses it)").into())
        }
    };
    let mut types = req.embedding_types.unwrap_or_else(|| vec![EmbeddingType::Float]);
    if types.is_empty() {
        return Err(ApiError::invalid("embedding_types", "`embedding_types` is empty; ask for at least one (float, int8, uint8, binary, ubinary, base64)").into());
    }
    types.dedup();
    if req.input_type == Some(InputType::Image) {
        return Err(ApiError::invalid("input_type", "input_type \"image\" is not supported: this server embeds text").into());
    }

    let model = state.config.model_for(req.model);
    let lease = state.lease(&model).await?;
    let info = lease.info().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model {model:?} is not ready")))?;
    if let Some(d) = req.output_dimension {
        if !(1..=info.dimension).contains(&d) {
            let why = format!("output_dimension={d}: model {model:?} gives {}-dimensional embeddings; ask for 1 to {0}", info.dimension);
            return Err(ApiError::invalid("output_dimension", why).into());
        }
    }
    let (mode, prompt_name) = prompt_for(req.input_type, &info);
    let mut options = EmbedOptions::default().with_normalize(true).with_truncate(truncate);
    options.mode = mode;
    options.prompt_name = prompt_name;
    options.dimensions = req.output_dimension;
    options.priority = super::asked_priority(None);
    let out = super::tei::embed_on(&state, &lease, &texts, &options).await?;
    let priority = options.priority_for(texts.len());
    // Up to 23 characters a number for floats (as f64), fewer for the other types.
    let size = super::vectors_json_size(&out.vectors, EncodingFormat::Float.json_chars_per_number() * types.len());
    let id = format!("embed-{}", EMBED_IDS.fetch_add(1, Ordering::Relaxed));
    Ok(super::encode_json(priority, size, move || {
        let vectors = &out.vectors;
        let encoded = |format| Some(vectors.iter().map(|v| EmbeddingVector::new(v.clone(), format)).collect());
        let mut embeddings = ByType::default();
        for t in types {
            match t {
                EmbeddingType::Float => embeddings.float = encoded(EncodingFormat::Float),
                EmbeddingType::Int8 => embeddings.int8 = each(vectors, int8),
                EmbeddingType::Uint8 => embeddings.uint8 = each(vectors, uint8),
                EmbeddingType::Binary => embeddings.binary = each(vectors, binary),
                EmbeddingType::Ubinary => embeddings.ubinary = each(vectors, ubinary),
                EmbeddingType::Base64 => embeddings.base64 = encoded(EncodingFormat::Base64),
            }
        }
        EmbedResponse {
            id,
            embeddings,
            texts,
            meta: Meta { api_version: ApiVersion { version: "2" }, billed_units: BilledUnits { input_tokens: out.total_tokens() } },
            response_type: "embeddings_by_type",
        }
    })
    .await?)
}

/// `encode` applied to every vector.
fn each<T>(vectors: &[Vec<f32>], encode: fn(&[f32]) -> Vec<T>) -> Option<Vec<Vec<T>>> {
    Some(vectors.iter().map(|v| encode(v)).collect())
}

/// Cohere's `input_type` as the model's prompts: queries and documents by the query/document
/// mode (the model's `query`, `document` or `passage` prompt); `classification` and
/// `clustering` by the model's prompt of that name (any case) if it has one; otherwise, and
/// without an `input_type`, the model's default prompt.
fn prompt_for(input_type: Option<InputType>, info: &ModelInfo) -> (Option<InputMode>, Option<String>) {
    let named = |name: &str| info.prompts.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned();
    match input_type {
        Some(InputType::SearchQuery) => (Some(InputMode::Query), None),
        Some(InputType::SearchDocument) => (Some(InputMode::Document), None),
        Some(InputType::Classification) => (None, named("classification")),
        Some(InputType::Clustering) => (None, named("clustering")),
        Some(InputType::Image) | None => (None, None),
    }
}
