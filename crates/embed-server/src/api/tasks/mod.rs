//! Routes for every kind of model beside `/embed`, with text-embeddings-inference's shapes:
//! `/rerank` (cross-encoders), `/predict` (classifiers and cross-encoders), `/embed_sparse`
//! (SPLADE), `/embed_all` (per-token vectors), `/decode`, `POST /` (the model's main task, for
//! clients given only a base URL); and Cohere's / Jina's `/v1/rerank` (also `/v2/rerank`).
//!
//! A model asked for another kind's work answers 400 naming its kind and what it can do.

mod types;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use embed_core::{Classified, ClassifyInput, EmbedOptions, ModelKind};
use embed_pool::Lease;

use self::types::{
    CohereRerankRequest, CohereRerankResponse, CohereResult, DecodeRequest, DocumentText, PredictRequest, Prediction, Rank,
    RerankRequest, SparseValue, TextsRequest, Usage,
};
use super::{check_count, parse_json, JsonBody};
use crate::error::{ApiError, OpenAiError};
use crate::AppState;

fn check_direction(direction: Option<&str>) -> Result<(), ApiError> {
    match direction {
        Some(d) if !d.eq_ignore_ascii_case("right") => {
            Err(ApiError::invalid("truncation_direction", format!("truncation_direction {d:?} is not supported (only \"right\")")))
        }
        _ => Ok(()),
    }
}

fn record(state: &AppState, lease: &Lease, inputs: usize, tokens: usize) {
    let instance = std::sync::Arc::as_ptr(&Lease::service(lease)) as *const () as usize;
    state.metrics.record_embedding(Lease::name(lease), instance, inputs, tokens, lease.batch_stats());
}

/// Scores `(query, text)` pairs with `model`'s cross-encoder; `None` texts are an empty list.
async fn score_pairs(state: &AppState, model: &str, query: &str, texts: &[String], truncate: bool) -> Result<Classified, ApiError> {
    let lease = state.lease(model).await?;
    let options = EmbedOptions { truncate, ..Default::default() };
    let queued = state.metrics.queued(model);
    let out = lease.rerank(query, texts, &options).await?;
    drop(queued);
    record(state, &lease, texts.len(), out.total_tokens());
    Ok(out)
}

/// Ranks `texts` by relevance to `query`, best first: sigmoid scores, or the logits with
/// `raw_scores`.
pub(crate) async fn rerank(State(state): State<AppState>, JsonBody(req): JsonBody<RerankRequest>) -> Result<Json<Vec<Rank>>, ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    check_count(req.texts.len(), &state, "texts")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let truncate = req.truncate.unwrap_or(state.config.limits.truncate_by_default);
    let out = score_pairs(&state, &model, &req.query, &req.texts, truncate).await?;
    let scores = if req.raw_scores { out.logits.clone() } else { out.scores() };
    let mut ranks: Vec<Rank> = scores
        .into_iter()
        .enumerate()
        .map(|(index, s)| Rank { index, score: s[0], text: req.return_text.then(|| req.texts[index].clone()) })
        .collect();
    ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    Ok(Json(ranks))
}

static RERANK_IDS: AtomicU64 = AtomicU64::new(0);

/// Cohere's / Jina's rerank: `documents` (strings or `{text}` objects) ranked by relevance to
/// `query`, the best `top_n`, with sigmoid scores as `relevance_score`.
pub(crate) async fn cohere_rerank(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CohereRerankRequest>,
) -> Result<Json<CohereRerankResponse>, OpenAiError> {
    let texts: Vec<String> = req.documents.into_iter().map(|d| d.0).collect();
    check_count(texts.len(), &state, "documents").map_err(|e| ApiError { status: axum::http::StatusCode::BAD_REQUEST, ..e })?;
    if req.top_n == Some(0) {
        return Err(ApiError::invalid("top_n", "top_n must be at least 1").into());
    }
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let out = score_pairs(&state, &model, &req.query, &texts, state.config.limits.truncate_by_default).await?;
    let mut results: Vec<CohereResult> = out
        .scores()
        .into_iter()
        .enumerate()
        .map(|(index, s)| CohereResult {
            index,
            relevance_score: s[0],
            document: req.return_documents.unwrap_or(false).then(|| DocumentText { text: texts[index].clone() }),
        })
        .collect();
    results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score).then(a.index.cmp(&b.index)));
    results.truncate(req.top_n.unwrap_or(usize::MAX));
    let id = format!("rerank-{}", RERANK_IDS.fetch_add(1, Ordering::Relaxed));
    Ok(Json(CohereRerankResponse { id, model, results, usage: Usage { total_tokens: out.total_tokens() } }))
}

/// Classifies each input (a text or a pair): every label's probability (softmax; sigmoid for
/// a one-label cross-encoder), or the logits with `raw_scores`, best first. A batch gets one
/// list per input.
pub(crate) async fn predict(State(state): State<AppState>, JsonBody(req): JsonBody<PredictRequest>) -> Result<Response, ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    check_count(req.inputs.items.len(), &state, "inputs")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let lease = state.lease(&model).await?;
    let labels = lease.info().map(|i| i.labels).unwrap_or_default();
    let inputs: Vec<ClassifyInput> = req
        .inputs
        .items
        .into_iter()
        .map(|(a, b)| match b {
            Some(b) => ClassifyInput::Pair(a, b),
            None => ClassifyInput::Text(a),
        })
        .collect();
    let options = EmbedOptions { truncate: req.truncate.unwrap_or(state.config.limits.truncate_by_default), ..Default::default() };
    let queued = state.metrics.queued(&model);
    let out = lease.classify(&inputs, &options).await?;
    drop(queued);
    record(&state, &lease, inputs.len(), out.total_tokens());
    let scores = if req.raw_scores { out.logits.clone() } else { out.scores() };
    let mut answers: Vec<Vec<Prediction>> = scores
        .into_iter()
        .map(|row| {
            let mut p: Vec<Prediction> = row
                .into_iter()
                .enumerate()
                .map(|(i, score)| Prediction { score, label: labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}")) })
                .collect();
            p.sort_by(|a, b| b.score.total_cmp(&a.score));
            p
        })
        .collect();
    Ok(if req.inputs.batch { Json(answers).into_response() } else { Json(answers.remove(0)).into_response() })
}

/// A texts request checked and leased: its texts, the model's lease and the options to use.
struct Prepared {
    texts: Vec<String>,
    model: String,
    lease: Lease,
    options: EmbedOptions,
}

async fn prepare(state: &AppState, req: TextsRequest) -> Result<Prepared, ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    let texts = req.inputs.0;
    check_count(texts.len(), state, "inputs")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let lease = state.lease(&model).await?;
    let options = EmbedOptions {
        prompt_name: req.prompt_name,
        truncate: req.truncate.unwrap_or(state.config.limits.truncate_by_default),
        ..Default::default()
    };
    Ok(Prepared { texts, model, lease, options })
}

/// SPLADE vectors: per input, its non-zero `(index, value)` entries by increasing index.
pub(crate) async fn embed_sparse(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TextsRequest>,
) -> Result<Json<Vec<Vec<SparseValue>>>, ApiError> {
    let Prepared { texts, model, lease, options } = prepare(&state, req).await?;
    let queued = state.metrics.queued(&model);
    let out = lease.embed_sparse(&texts, &options).await?;
    drop(queued);
    record(&state, &lease, texts.len(), out.token_counts.iter().sum());
    Ok(Json(
        out.vectors
            .into_iter()
            .map(|v| v.indices.into_iter().zip(v.values).map(|(index, value)| SparseValue { index, value }).collect())
            .collect(),
    ))
}

/// Per input, the vector of every token (special tokens and prompt included), unnormalised.
pub(crate) async fn embed_all(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TextsRequest>,
) -> Result<Json<Vec<Vec<Vec<f32>>>>, ApiError> {
    let Prepared { texts, model, lease, options } = prepare(&state, req).await?;
    let queued = state.metrics.queued(&model);
    let out = lease.embed_tokens(&texts, &options).await?;
    drop(queued);
    record(&state, &lease, texts.len(), out.vectors.iter().map(Vec::len).sum());
    Ok(Json(out.vectors))
}

/// Token ids back to text, one string per list of ids.
pub(crate) async fn decode(State(state): State<AppState>, JsonBody(req): JsonBody<DecodeRequest>) -> Result<Json<Vec<String>>, ApiError> {
    check_count(req.ids.0.len(), &state, "ids")?;
    let model = req.model.unwrap_or_else(|| state.config.default_model.clone());
    let lease = state.lease(&model).await?;
    Ok(Json(lease.decode(&req.ids.0, req.skip_special_tokens).await?))
}

/// `POST /`: what the model (the body's `model`, else the default) is for: `/embed` for an
/// embedder, `/rerank` for a cross-encoder, `/predict` for a classifier, `/embed_sparse` for
/// SPLADE, with that route's body.
pub(crate) async fn root(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let named: serde_json::Value = parse_json(&body)?;
    let model = named.get("model").and_then(|m| m.as_str()).map(String::from).unwrap_or_else(|| state.config.default_model.clone());
    let kind = state.lease(&model).await?.info().map_or(ModelKind::Embedding, |i| i.kind);
    Ok(match kind {
        ModelKind::Embedding => super::tei::embed(State(state), JsonBody(parse_json(&body)?)).await?.into_response(),
        ModelKind::Reranker => rerank(State(state), JsonBody(parse_json(&body)?)).await?.into_response(),
        ModelKind::Classifier => predict(State(state), JsonBody(parse_json(&body)?)).await?,
        ModelKind::Sparse => embed_sparse(State(state), JsonBody(parse_json(&body)?)).await?.into_response(),
    })
}
