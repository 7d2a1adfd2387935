//! Routes for every kind of model beside `/embed`, with text-embeddings-inference's shapes:
//! `/rerank` (cross-encoders), `/predict` (classifiers and cross-encoders), `/embed_sparse`
//! (SPLADE), `/embed_all` (per-token vectors), `/decode`, `POST /` and SageMaker's
//! `POST /invocations` (the model's main task, for clients given only a base URL), Vertex AI's
//! `POST /vertex` (a list of those); and Cohere's / Jina's `/v1/rerank` (also `/v2/rerank`).
//!
//! A model asked for another kind's work answers 400 naming its kind and what it can do.

pub(crate) mod types;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use embed_core::{Classified, ClassifyInput, EmbedOptions, ModelKind, Priority};
use embed_pool::Lease;
use serde_json::Value;

use self::types::{
    CohereRerankRequest, CohereRerankResponse, CohereResult, DecodeRequest, DocumentText, MultiRequest, PredictRequest, Prediction,
    Predictions, Rank, RerankRequest, SparseRequest, SparseValue, TaskAnswer, TextsRequest, Usage, VertexRequest, VertexResponse,
};
use super::{check_count, from_value, parse_json, JsonBody};
use crate::error::{ApiError, OpenAiError};
use crate::api::openai::types::{EmbeddingVector, EncodingFormat};
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

/// Scores `(query, text)` pairs with `model`'s reranker (an LLM reranker with `instruction`);
/// `None` texts are an empty list.
async fn score_pairs(state: &AppState, model: &str, query: &str, texts: &[String], truncate: bool, instruction: Option<String>) -> Result<Classified, ApiError> {
    let lease = state.lease(model).await?;
    let mut options = EmbedOptions::default().with_truncate(truncate);
    options.instruction = instruction;
    let queued = state.metrics.queued(model);
    let out = lease.tasks_for("rerank")?.rerank(query, texts, &options).await?;
    drop(queued);
    record(state, &lease, texts.len(), out.total_tokens());
    Ok(out)
}

/// Ranks `texts` by relevance to `query`, best first: sigmoid scores, or the logits with
/// `raw_scores`.
#[utoipa::path(post, path = "/rerank", tag = "text-embeddings-inference", request_body = types::RerankRequest,
    responses((status = 200, description = "The texts' indices and scores, best first", body = Vec<types::Rank>), crate::api::docs::TeiErrors))]
pub(crate) async fn rerank(State(state): State<AppState>, JsonBody(req): JsonBody<RerankRequest>) -> Result<Json<Vec<Rank>>, ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    check_count(req.texts.len(), &state, "texts")?;
    let model = state.config.model_for(req.model);
    let truncate = req.truncate.unwrap_or(state.config.limits.truncate_by_default);
    let out = score_pairs(&state, &model, &req.query, &req.texts, truncate, req.instruction).await?;
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
#[utoipa::path(post, path = "/v1/rerank", tag = "cohere", request_body = types::CohereRerankRequest,
    responses((status = 200, description = "The best `top_n` documents, best first", body = types::CohereRerankResponse), crate::api::docs::OpenAiErrors))]
pub(crate) async fn cohere_rerank(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CohereRerankRequest>,
) -> Result<Json<CohereRerankResponse>, OpenAiError> {
    let texts: Vec<String> = req.documents.into_iter().map(|d| d.0).collect();
    check_count(texts.len(), &state, "documents").map_err(|e| ApiError { status: axum::http::StatusCode::BAD_REQUEST, ..e })?;
    if req.top_n == Some(0) {
        return Err(ApiError::invalid("top_n", "top_n must be at least 1").into());
    }
    let model = state.config.model_for(req.model);
    let out = score_pairs(&state, &model, &req.query, &texts, state.config.limits.truncate_by_default, req.instruction).await?;
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
#[utoipa::path(post, path = "/predict", tag = "text-embeddings-inference", request_body = types::PredictRequest,
    responses((status = 200, description = "Every label's score, best first (a list per input for a batch)", body = types::Predictions), crate::api::docs::TeiErrors))]
pub(crate) async fn predict(State(state): State<AppState>, JsonBody(req): JsonBody<PredictRequest>) -> Result<Json<Predictions>, ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    check_count(req.inputs.items.len(), &state, "inputs")?;
    let model = state.config.model_for(req.model);
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
    let options = EmbedOptions::default().with_truncate(req.truncate.unwrap_or(state.config.limits.truncate_by_default));
    let queued = state.metrics.queued(&model);
    let out = lease.tasks_for("classify")?.classify(&inputs, &options).await?;
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
    Ok(Json(if req.inputs.batch { Predictions::Batch(answers) } else { Predictions::One(answers.remove(0)) }))
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
    let model = state.config.model_for(req.model);
    let lease = state.lease(&model).await?;
    let mut options = EmbedOptions::default().with_truncate(req.truncate.unwrap_or(state.config.limits.truncate_by_default));
    options.prompt_name = req.prompt_name;
    Ok(Prepared { texts, model, lease, options })
}

/// SPLADE vectors: per input, its non-zero `(index, value)` entries by increasing index; with
/// `return_text`, each entry's vocabulary token as `text`.
#[utoipa::path(post, path = "/embed_sparse", tag = "text-embeddings-inference", request_body = types::SparseRequest,
    responses((status = 200, description = "Per input, its non-zero entries by increasing index (with `text` when `return_text` is set)", body = Vec<Vec<types::SparseValue>>), crate::api::docs::TeiErrors))]
pub(crate) async fn embed_sparse(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<SparseRequest>,
) -> Result<Json<Vec<Vec<SparseValue>>>, ApiError> {
    let (req, return_text) = req.split();
    let Prepared { texts, model, lease, options } = prepare(&state, req).await?;
    let queued = state.metrics.queued(&model);
    let out = lease.tasks_for("embed_sparse")?.embed_sparse(&texts, &options).await?;
    drop(queued);
    record(&state, &lease, texts.len(), out.token_counts.iter().sum());
    // The vocabulary tokens of every index that occurs, looked up once each.
    let tokens: std::collections::HashMap<u32, String> = if return_text {
        let ids: Vec<u32> = out.vectors.iter().flat_map(|v| v.indices.iter().copied()).collect::<std::collections::BTreeSet<u32>>().into_iter().collect();
        let strings = lease.tasks_for("vocab_tokens")?.vocab_tokens(&ids).await?;
        if strings.len() != ids.len() {
            let message = format!("the model gave {} token strings for {} ids", strings.len(), ids.len());
            return Err(ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, message));
        }
        ids.into_iter().zip(strings).collect()
    } else {
        Default::default()
    };
    Ok(Json(
        out.vectors
            .into_iter()
            .map(|v| {
                v.indices
                    .into_iter()
                    .zip(v.values)
                    .map(|(index, value)| SparseValue { index, value, text: tokens.get(&index).cloned() })
                    .collect()
            })
            .collect(),
    ))
}

/// Per input, the vector of every token (special tokens and prompt included), unnormalised.
#[utoipa::path(post, path = "/embed_all", tag = "text-embeddings-inference", request_body = types::TextsRequest,
    responses((status = 200, description = "Per input, one vector per token", body = Vec<Vec<Vec<f32>>>), crate::api::docs::TeiErrors))]
pub(crate) async fn embed_all(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TextsRequest>,
) -> Result<super::EncodedJson, ApiError> {
    let (vectors, priority) = embed_all_vectors(&state, req).await?;
    let size = super::vectors_json_size(vectors.iter().flatten(), 13);
    super::encode_json(priority, size, move || vectors).await
}

/// `/embed_all`'s token vectors, and the priority the request ran at.
pub(crate) async fn embed_all_vectors(state: &AppState, req: TextsRequest) -> Result<(Vec<Vec<Vec<f32>>>, Priority), ApiError> {
    let Prepared { texts, model, lease, options } = prepare(state, req).await?;
    let queued = state.metrics.queued(&model);
    let out = lease.tasks_for("embed_tokens")?.embed_tokens(&texts, &options).await?;
    drop(queued);
    record(state, &lease, texts.len(), out.vectors.iter().map(Vec::len).sum());
    Ok((out.vectors, options.priority_for(texts.len())))
}

/// Per input, its late-interaction token vectors, each L2-normalised: BGE-M3's ColBERT
/// vectors (every token after `[CLS]`), a PyLate / ColBERT model's (a query's every token,
/// `[MASK]` expansion included; a document's without punctuation). As arrays of numbers, or
/// with `encoding_format: "base64"` each vector as its little-endian f32 bytes in base64.
#[utoipa::path(post, path = "/embed_multi", tag = "text-embeddings-inference", request_body = types::MultiRequest,
    responses((status = 200, description = "Per input, one vector per kept token", body = Vec<Vec<crate::api::openai::types::EmbeddingVector>>), crate::api::docs::TeiErrors))]
pub(crate) async fn embed_multi(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<MultiRequest>,
) -> Result<super::EncodedJson, ApiError> {
    let format = req.encoding_format.unwrap_or_default();
    let (vectors, priority) = embed_multi_vectors(&state, req).await?;
    let size = super::vectors_json_size(vectors.iter().flatten(), format.json_chars_per_number());
    super::encode_json(priority, size, move || multi_answer(vectors, format)).await
}

/// Each input's vectors in `format`.
fn multi_answer(vectors: Vec<Vec<Vec<f32>>>, format: EncodingFormat) -> Vec<Vec<EmbeddingVector>> {
    vectors.into_iter().map(|vs| vs.into_iter().map(|v| EmbeddingVector::new(v, format)).collect()).collect()
}

/// `/embed_multi`'s vectors (each input's, as numbers), and the priority the request ran at.
pub(crate) async fn embed_multi_vectors(state: &AppState, req: MultiRequest) -> Result<(Vec<Vec<Vec<f32>>>, Priority), ApiError> {
    check_direction(req.truncation_direction.as_deref())?;
    let texts = req.inputs.0;
    check_count(texts.len(), state, "inputs")?;
    let model = state.config.model_for(req.model);
    let lease = state.lease(&model).await?;
    let mut options = EmbedOptions::default();
    options.mode = req.input_type;
    options.truncate = req.truncate.unwrap_or(state.config.limits.truncate_by_default);
    let queued = state.metrics.queued(&model);
    let out = lease.tasks_for("embed_multi")?.embed_multi(&texts, &options).await?;
    drop(queued);
    record(state, &lease, texts.len(), out.total_tokens());
    Ok((out.vectors, options.priority_for(texts.len())))
}

/// Token ids back to text, one string per list of ids.
#[utoipa::path(post, path = "/decode", tag = "text-embeddings-inference", request_body = types::DecodeRequest,
    responses((status = 200, description = "One text per list of ids", body = Vec<String>), crate::api::docs::TeiErrors))]
pub(crate) async fn decode(State(state): State<AppState>, JsonBody(req): JsonBody<DecodeRequest>) -> Result<Json<Vec<String>>, ApiError> {
    check_count(req.ids.0.len(), &state, "ids")?;
    let model = state.config.model_for(req.model);
    let lease = state.lease(&model).await?;
    Ok(Json(lease.tasks_for("decode")?.decode(&req.ids.0, req.skip_special_tokens).await?))
}

/// The route a body for `POST /`, `/invocations` or a `/vertex` instance goes to. TEI picks by
/// the model's kind, except on `/vertex`, where a rerank body (`query` and `texts`) is tried
/// first; here both go by kind and shape alike, and an embedder's body whose `inputs` is an
/// object (`source_sentence`, `sentences`) is a `/similarity` one (TEI needs `TASK` for that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Embed,
    Similarity,
    Rerank,
    Predict,
    EmbedSparse,
    EmbedMulti,
}

impl Task {
    fn of(kind: ModelKind, body: &Value) -> Task {
        if body.get("query").is_some() && body.get("texts").is_some() {
            // Whatever the model: one that cannot rerank answers 400 wrong_model_kind.
            return Task::Rerank;
        }
        match kind {
            ModelKind::Reranker | ModelKind::Classifier => Task::Predict,
            ModelKind::Sparse => Task::EmbedSparse,
            // A rerank body was answered above; anything else asks for its token vectors.
            ModelKind::MultiVector => Task::EmbedMulti,
            ModelKind::Embedding if body.get("inputs").is_some_and(Value::is_object) => Task::Similarity,
            ModelKind::Embedding => Task::Embed,
        }
    }
}

/// Answers `body` with the route that fits the model it names (the default if none) and its
/// shape; the model is loaded first if needed, to learn its kind.
async fn dispatch(state: &AppState, body: Value) -> Result<TaskAnswer, ApiError> {
    let model = state.config.model_for(body.get("model").and_then(Value::as_str).map(String::from));
    let kind = state.lease(&model).await?.info().map_or(ModelKind::Embedding, |i| i.kind);
    let state = State(state.clone());
    Ok(match Task::of(kind, &body) {
        Task::Embed => TaskAnswer::Embed(super::tei::embed_vectors(&state, from_value(body)?).await?.0),
        Task::Similarity => TaskAnswer::Similarity(super::tei::similarity(state, JsonBody(from_value(body)?)).await?.0),
        Task::Rerank => TaskAnswer::Rerank(rerank(state, JsonBody(from_value(body)?)).await?.0),
        Task::Predict => TaskAnswer::Predict(predict(state, JsonBody(from_value(body)?)).await?.0),
        Task::EmbedSparse => TaskAnswer::EmbedSparse(embed_sparse(state, JsonBody(from_value(body)?)).await?.0),
        Task::EmbedMulti => {
            let req: MultiRequest = from_value(body)?;
            let format = req.encoding_format.unwrap_or_default();
            TaskAnswer::EmbedMulti(multi_answer(embed_multi_vectors(&state, req).await?.0, format))
        }
    })
}

/// `POST /` and SageMaker's `POST /invocations`: what the model (the body's `model`, else the
/// default) is for, with that route's body: `/embed` (or `/similarity`) for an embedder,
/// `/rerank` or `/predict` for a cross-encoder, `/predict` for a classifier, `/embed_sparse` for
/// SPLADE, `/rerank` or `/embed_multi` for a multi-vector model.
#[utoipa::path(post, path = "/", tag = "text-embeddings-inference",
    request_body(content = serde_json::Value, description = "The body of the model's own route: `/embed` (or `/similarity`) for an embedder, `/rerank` or `/predict` for a cross-encoder, `/predict` for a classifier, `/embed_sparse` for SPLADE"),
    responses((status = 200, description = "That route's answer", body = types::TaskAnswer), crate::api::docs::TeiErrors))]
pub(crate) async fn root(State(state): State<AppState>, body: Bytes) -> Result<Json<TaskAnswer>, ApiError> {
    dispatch(&state, parse_json(&body)?).await.map(Json)
}

/// Vertex AI's `POST /vertex`: each of `instances` answered as `POST /` would answer it (run
/// together, so the model batches them), as `predictions` in order. The first failing instance
/// fails the request, its message and `param` naming it.
#[utoipa::path(post, path = "/vertex", tag = "text-embeddings-inference", request_body = types::VertexRequest,
    responses((status = 200, description = "Each instance's answer, in order", body = types::VertexResponse), crate::api::docs::TeiErrors))]
pub(crate) async fn vertex(State(state): State<AppState>, JsonBody(req): JsonBody<VertexRequest>) -> Result<Json<VertexResponse>, ApiError> {
    check_count(req.instances.len(), &state, "instances")?;
    let answers = req.instances.into_iter().enumerate().map(|(i, instance)| {
        let state = &state;
        async move {
            dispatch(state, instance).await.map_err(|e| ApiError {
                message: format!("instances[{i}]: {}", e.message),
                param: Some(e.param.map_or_else(|| format!("instances[{i}]"), |p| format!("instances[{i}].{p}")).into()),
                ..e
            })
        }
    });
    let predictions = futures::future::try_join_all(answers).await?;
    Ok(Json(VertexResponse { predictions }))
}

/// SageMaker's name for `POST /` (the same handler): documented under its own path.
#[utoipa::path(post, path = "/invocations", tag = "text-embeddings-inference",
    request_body(content = serde_json::Value, description = "As `POST /`"),
    responses((status = 200, description = "As `POST /`", body = types::TaskAnswer), crate::api::docs::TeiErrors))]
#[allow(dead_code)] // a documentation entry: the route is served by `root`
pub(crate) fn invocations() {}

/// Cohere's v2 path of `/v1/rerank` (the same handler): documented under its own path.
#[utoipa::path(post, path = "/v2/rerank", tag = "cohere", request_body = types::CohereRerankRequest,
    responses((status = 200, description = "The best `top_n` documents, best first", body = types::CohereRerankResponse), crate::api::docs::OpenAiErrors))]
#[allow(dead_code)] // a documentation entry: the route is served by `cohere_rerank`
pub(crate) fn cohere_rerank_v2() {}

#[cfg(test)]
mod tests {
    use embed_core::ModelKind;
    use serde_json::json;

    use super::Task;

    #[test]
    fn bodies_go_by_kind_and_shape() {
        let embed = json!({"inputs": ["a", "b"]});
        let similarity = json!({"inputs": {"source_sentence": "a", "sentences": ["b"]}});
        let rerank = json!({"query": "q", "texts": ["a"]});
        let predict = json!({"inputs": [["a", "b"]]});
        assert_eq!(Task::of(ModelKind::Embedding, &embed), Task::Embed);
        assert_eq!(Task::of(ModelKind::Embedding, &similarity), Task::Similarity);
        assert_eq!(Task::of(ModelKind::Embedding, &rerank), Task::Rerank, "refused by rerank with wrong_model_kind");
        assert_eq!(Task::of(ModelKind::Reranker, &rerank), Task::Rerank);
        assert_eq!(Task::of(ModelKind::Reranker, &predict), Task::Predict);
        assert_eq!(Task::of(ModelKind::Classifier, &predict), Task::Predict);
        assert_eq!(Task::of(ModelKind::Classifier, &rerank), Task::Rerank);
        assert_eq!(Task::of(ModelKind::Sparse, &embed), Task::EmbedSparse);
        assert_eq!(Task::of(ModelKind::Sparse, &json!("not an object")), Task::EmbedSparse);
        assert_eq!(Task::of(ModelKind::MultiVector, &rerank), Task::Rerank);
        assert_eq!(Task::of(ModelKind::MultiVector, &embed), Task::EmbedMulti);
    }
}
