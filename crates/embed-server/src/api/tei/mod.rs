//! text-embeddings-inference compatible routes: `/embed`, `/similarity`, `/tokenize`, `/info`.

pub(crate) mod types;

pub(crate) use self::types::StringOrList;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use embed_core::{EmbedOptions, Embeddings, Priority};
use embed_pool::Lease;

use self::types::{EmbedRequest, Info, SimilarityRequest, Token, TokenizeRequest};
use super::{check_count, EncodedJson, JsonBody};
use crate::error::ApiError;
use crate::AppState;

/// Embeds `inputs` with `model` (default: the server's); the answer is one array of numbers per
/// input, normalised unless `normalize` is false.
#[utoipa::path(post, path = "/embed", tag = "text-embeddings-inference", request_body = types::EmbedRequest,
    responses((status = 200, description = "One vector per input", body = Vec<Vec<f32>>), crate::api::docs::TeiErrors))]
pub(crate) async fn embed(State(state): State<AppState>, JsonBody(req): JsonBody<EmbedRequest>) -> Result<EncodedJson, ApiError> {
    let (vectors, priority) = embed_vectors(&state, req).await?;
    let size = super::vectors_json_size(&vectors, 13);
    super::encode_json(priority, size, move || vectors).await
}

/// `/embed`'s vectors, and the priority the request ran at.
pub(crate) async fn embed_vectors(state: &AppState, req: EmbedRequest) -> Result<(Vec<Vec<f32>>, Priority), ApiError> {
    if let Some(dir) = req.truncation_direction.as_deref() {
        if !dir.eq_ignore_ascii_case("right") {
            return Err(ApiError::invalid("truncation_direction", format!("truncation_direction {dir:?} is not supported (only \"right\")")));
        }
    }
    let texts = req.inputs.0;
    check_count(texts.len(), state, "inputs")?;
    let model = state.config.model_for(req.model);
    // The lease lives for the whole request: the model cannot be evicted under it, and a
    // client that disconnects drops this future, the lease and the queued work.
    let lease = state.lease(&model).await?;
    let mut options = EmbedOptions::default().with_normalize(req.normalize.unwrap_or(true)).with_truncate(req.truncate.unwrap_or(state.config.limits.truncate_by_default));
    options.mode = req.mode;
    options.prompt_name = req.prompt_name;
    options.instruction = req.instruction;
    options.dimensions = req.dimensions;
    options.priority = super::asked_priority(req.priority);
    let vectors = embed_on(state, &lease, &texts, &options).await?.vectors;
    Ok((vectors, options.priority_for(texts.len())))
}

/// Embeds `texts` with the leased model, counted in the metrics while queued and when done.
pub(crate) async fn embed_on(state: &AppState, lease: &Lease, texts: &[String], options: &EmbedOptions) -> Result<Embeddings, ApiError> {
    let _admitted = state.admit(options.priority_for(texts.len()))?;
    let queued = state.metrics.queued(Lease::name(lease));
    let out = lease.embed_texts(texts, options).await?;
    drop(queued);
    let instance = std::sync::Arc::as_ptr(&Lease::service(lease)) as *const () as usize;
    state.metrics.record_embedding(Lease::name(lease), instance, texts.len(), out.total_tokens(), lease.batch_stats());
    Ok(out)
}

/// The cosine similarity of `inputs.source_sentence` to each of `inputs.sentences`, in order.
/// All of them go to the model in one `/embed` request (its checks, limits and prompts apply,
/// the source counting as one input).
#[utoipa::path(post, path = "/similarity", tag = "text-embeddings-inference", request_body = types::SimilarityRequest,
    responses((status = 200, description = "The cosine of the source sentence with each sentence, in order", body = Vec<f32>), crate::api::docs::TeiErrors))]
pub(crate) async fn similarity(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SimilarityRequest>,
) -> Result<Json<Vec<f32>>, ApiError> {
    let SimilarityRequest { inputs, parameters, model } = req;
    if inputs.sentences.is_empty() {
        return Err(ApiError::invalid("inputs", "`inputs.sentences` is an empty list; send at least one sentence to compare"));
    }
    let parameters = parameters.unwrap_or_default();
    let texts = std::iter::once(inputs.source_sentence).chain(inputs.sentences).collect();
    let request = EmbedRequest {
        inputs: StringOrList(texts),
        // Cosine does not need unit vectors; TEI leaves them as pooled too.
        normalize: Some(false),
        truncate: parameters.truncate,
        prompt_name: parameters.prompt_name,
        truncation_direction: parameters.truncation_direction,
        instruction: None,
        mode: None,
        model,
        dimensions: None,
        priority: None,
    };
    let (vectors, _) = embed_vectors(&state, request).await?;
    let (source, others) = vectors.split_first().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model returned no vectors"))?;
    Ok(Json(others.iter().map(|v| cosine(source, v)).collect()))
}

/// Cosine similarity, accumulated in f64; 0 when either vector is zero.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    let norms = (aa * bb).sqrt();
    if norms > 0.0 {
        (dot / norms) as f32
    } else {
        0.0
    }
}

/// Splits each input into tokens as `model` would see them (with the prompt's prefix, if named).
#[utoipa::path(post, path = "/tokenize", tag = "text-embeddings-inference", request_body = types::TokenizeRequest,
    responses((status = 200, description = "Each input's tokens", body = Vec<Vec<types::Token>>), crate::api::docs::TeiErrors))]
pub(crate) async fn tokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<Vec<Vec<Token>>>, ApiError> {
    let texts = req.inputs.0;
    check_count(texts.len(), &state, "inputs")?;
    let model = state.config.model_for(req.model);
    let lease = state.lease(&model).await?;
    let mut options = EmbedOptions::default();
    options.prompt_name = req.prompt_name;
    let tokenized = lease.tokenize(&texts, &options).await?;
    Ok(Json(tokenized.into_iter().map(Token::list).collect()))
}

/// Describes the default model from what it said when it was last loaded: never loads or
/// evicts anything (503 while it has never been loaded).
#[utoipa::path(get, path = "/info", tag = "text-embeddings-inference",
    responses((status = 200, description = "The default model and the request limits", body = types::Info), crate::api::docs::TeiErrors))]
pub(crate) async fn info(State(state): State<AppState>) -> Result<Json<Info>, ApiError> {
    let name = &state.config.default_model;
    let info = state.known_info(name).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("default model {name:?} has not been loaded yet"))
    })?;
    Ok(Json(Info::new(info, &state.config.limits)))
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_ignores_length_and_gives_zero_for_a_zero_vector() {
        assert!((cosine(&[1.0, 0.0], &[3.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-7);
        assert!((cosine(&[1.0, 2.0], &[2.0, 1.0]) - 0.8).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }
}
