//! text-embeddings-inference's gRPC API (package `tei.v1`, from `proto/tei.proto`, the same
//! services, messages and field numbers as TEI's, so its generated clients work): Info, Embed
//! (Embed, EmbedSparse, EmbedAll), Predict (Predict, PredictPair), Rerank, Tokenize (Tokenize,
//! Decode), each unary method with its bidirectional stream twin (Rerank's stream is
//! client-side, as TEI defines it).
//!
//! Every call goes through the HTTP routes' handlers (the same checks, limits, model leases,
//! prompts and metrics) and shares the HTTP server's concurrency limit and API key:
//! - `authorization: Bearer <key>` metadata, else UNAUTHENTICATED;
//! - a unary call over the concurrency limit gets RESOURCE_EXHAUSTED (HTTP's 429); a stream's
//!   messages wait for a slot instead (TEI's behaviour), up to [`STREAM_PARALLELISM`] at once;
//! - `x-embed-priority` metadata sets the priority as the HTTP header does;
//! - the request deadline applies to each call (each stream message): DEADLINE_EXCEEDED;
//! - the calls are counted in `/metrics` under their method path (`/tei.v1.Embed/Embed`) with
//!   the HTTP status they correspond to.
//!
//! Errors take TEI's codes: validation INVALID_ARGUMENT, overload RESOURCE_EXHAUSTED, loading or
//! draining UNAVAILABLE, backend and tokenizer errors FAILED_PRECONDITION, a method the model
//! cannot serve (an embedder asked to rerank) UNIMPLEMENTED; beyond TEI, an unknown model
//! NOT_FOUND and a deadline DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use embed_core::timing::Measured;
use embed_core::Priority;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::tasks::types::{DecodeRequest, Ids, PredictInputs, PredictRequest, Predictions, RerankRequest, SparseRequest, TextsRequest};
use crate::api::tei::types::{EmbedRequest, TokenizeRequest};
use crate::api::tei::StringOrList;
use crate::api::{tasks, tei, JsonBody, PRIORITY_HEADER};
use crate::error::ApiError;
use crate::AppState;

/// The code generated from `proto/tei.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    tonic::include_proto!("tei.v1");
}

use pb::embed_server::{Embed, EmbedServer};
use pb::info_server::{Info, InfoServer};
use pb::predict_server::{Predict, PredictServer};
use pb::rerank_server::{Rerank, RerankServer};
use pb::tokenize_server::{Tokenize, TokenizeServer};

/// How many messages of one stream are computed at once (each also waits for a slot under the
/// server's concurrency limit); answers come back in the order of the requests.
pub const STREAM_PARALLELISM: usize = 64;

/// Serves the gRPC API for `state` on `listener` until `shutdown` resolves, then stops
/// accepting and lets the calls in flight finish. Shares `state`'s pool, limits, API key and
/// metrics with the HTTP server serving the same state; binds nothing itself.
pub async fn serve_grpc(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = GrpcService { state: state.clone() };
    let auth = Auth { key: state.config.api_key.clone().map(|k| Arc::from(k.into_bytes())) };
    let max = state.config.limits.max_body_bytes;
    tonic::transport::Server::builder()
        .add_service(InterceptedService::new(InfoServer::new(service.clone()).max_decoding_message_size(max), auth.clone()))
        .add_service(InterceptedService::new(EmbedServer::new(service.clone()).max_decoding_message_size(max), auth.clone()))
        .add_service(InterceptedService::new(PredictServer::new(service.clone()).max_decoding_message_size(max), auth.clone()))
        .add_service(InterceptedService::new(RerankServer::new(service.clone()).max_decoding_message_size(max), auth.clone()))
        .add_service(InterceptedService::new(TokenizeServer::new(service).max_decoding_message_size(max), auth))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// The API key check: `authorization: Bearer <key>` (any case of the scheme), compared as the
/// HTTP routes compare it.
#[derive(Clone)]
struct Auth {
    key: Option<Arc<[u8]>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(key) = &self.key else { return Ok(req) };
        let given = req.metadata().get("authorization").and_then(|v| crate::app::bearer_token(v.as_bytes()));
        if given.is_some_and(|token| crate::app::key_matches(token, key)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or invalid API key (authorization: Bearer <key>)"))
        }
    }
}

/// The gRPC code for an error of the HTTP handlers, as TEI maps its error types.
fn code_of(e: &ApiError) -> Code {
    if e.code == Some("wrong_model_kind") {
        // TEI: a service the model cannot serve answers UNIMPLEMENTED.
        return Code::Unimplemented;
    }
    match e.status.as_u16() {
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        429 | 507 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        // TEI's backend and tokenizer errors (here 424: a model that cannot load; 500).
        _ => Code::FailedPrecondition,
    }
}

fn status_of(e: ApiError) -> Status {
    Status::new(code_of(&e), e.message)
}

/// The metadata key that picks a configured model by name (an extension: TEI serves one
/// model); without it a call goes to the default model, as an HTTP body without `model` does.
pub const MODEL_METADATA: &str = "x-embed-model";

/// What a call's metadata asks for: its priority (`x-embed-priority`) and model
/// ([`MODEL_METADATA`]).
#[derive(Clone, Default)]
struct Cx {
    priority: Option<Priority>,
    model: Option<String>,
}

impl Cx {
    fn of(metadata: &MetadataMap) -> Result<Cx, Status> {
        let priority = match metadata.get(PRIORITY_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(|s| s.parse::<Priority>().ok()).ok_or_else(|| {
                Status::invalid_argument(format!("the {PRIORITY_HEADER} metadata must be \"interactive\" or \"bulk\""))
            })?),
        };
        let model = match metadata.get(MODEL_METADATA) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| Status::invalid_argument(format!("the {MODEL_METADATA} metadata is not ASCII")))?
                    .to_string(),
            ),
        };
        Ok(Cx { priority, model })
    }
}

/// What one call measured: TEI's `Metadata` message and its response headers.
#[derive(Clone, Copy)]
struct Timing {
    measured: Measured,
    total: Duration,
}

impl Timing {
    fn metadata(&self) -> Option<pb::Metadata> {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Some(pb::Metadata {
            compute_chars: count(self.measured.characters),
            compute_tokens: count(self.measured.tokens),
            total_time_ns: ns(self.total),
            tokenization_time_ns: ns(self.measured.tokenization),
            queue_time_ns: ns(self.measured.queue),
            inference_time_ns: ns(self.measured.inference),
        })
    }

    /// The HTTP routes' timing headers (TEI sends them as gRPC response metadata too), for a
    /// call that computed something.
    fn respond<T>(self, message: T) -> Response<T> {
        let mut resp = Response::new(message);
        if self.measured.calls > 0 {
            let ms = |d: Duration| MetadataValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let count = |n: usize| MetadataValue::from(n as u64);
            let m = resp.metadata_mut();
            m.insert("x-compute-time", ms(self.measured.compute()));
            m.insert("x-compute-characters", count(self.measured.characters));
            m.insert("x-compute-tokens", count(self.measured.tokens));
            m.insert("x-total-time", ms(self.total));
            m.insert("x-tokenization-time", ms(self.measured.tokenization));
            m.insert("x-queue-time", ms(self.measured.queue));
            m.insert("x-inference-time", ms(self.measured.inference));
        }
        resp
    }
}

/// Records a call in the metrics when dropped: with its status, or as cancelled (499).
struct CallRecord {
    state: AppState,
    method: &'static str,
    started: Instant,
    status: Option<u16>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.state.metrics.record_request(self.method, self.status.unwrap_or(499), self.started.elapsed());
    }
}

/// How a call waits for a slot under the concurrency limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Refused at once when none is free (a unary call, as HTTP's 429).
    Now,
    /// Waits for one (a stream's message).
    Wait,
}

type Answer<T> = Result<(T, Timing), Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
struct GrpcService {
    state: AppState,
}

impl GrpcService {
    /// Runs one call's `work` (an HTTP handler) under the concurrency limit, the request
    /// deadline and the call's priority, measured; `answer` builds the reply with TEI's
    /// `Metadata`.
    async fn call<O, T>(
        &self,
        method: &'static str,
        priority: Option<Priority>,
        admission: Admission,
        work: impl Future<Output = Result<O, ApiError>>,
        answer: impl FnOnce(O, Option<pb::Metadata>) -> Result<T, ApiError>,
    ) -> Answer<T> {
        let state = &self.state;
        let mut record = CallRecord { state: state.clone(), method, started: Instant::now(), status: None };
        let result = async {
            let _permit = match admission {
                Admission::Wait => state.permits.clone().acquire_owned().await.ok(),
                Admission::Now => Some(state.permits.clone().try_acquire_owned().map_err(|_| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("too many concurrent requests (limit {}); retry shortly", state.config.limits.max_concurrent),
                    )
                })?),
            };
            let started = Instant::now();
            let limit = state.config.timeouts.request;
            let work = crate::api::with_header_priority(priority, embed_core::timing::measure(work));
            let (out, measured) = tokio::time::timeout(limit, work)
                .await
                .map_err(|_| ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("request did not finish within {limit:?}")))?;
            let timing = Timing { measured, total: started.elapsed() };
            Ok::<_, ApiError>((answer(out?, timing.metadata())?, timing))
        }
        .await;
        record.status = Some(match &result {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        });
        result.map_err(status_of)
    }

    /// A bidirectional stream: each request answered by `handle` (a unary method's body, its
    /// messages waiting for slots), up to [`STREAM_PARALLELISM`] at once, answers in request
    /// order. The first error ends the stream with its status, as TEI's streams end.
    fn stream<Req, Res, F, Fut>(&self, request: Request<Streaming<Req>>, handle: F) -> Result<Response<BoxStream<Res>>, Status>
    where
        Req: Send + 'static,
        Res: Send + 'static,
        F: Fn(GrpcService, Req, Cx) -> Fut + Send + 'static,
        Fut: Future<Output = Answer<Res>> + Send + 'static,
    {
        let cx = Cx::of(request.metadata())?;
        let this = self.clone();
        let answers = request
            .into_inner()
            .map(move |msg| match msg {
                Ok(msg) => handle(this.clone(), msg, cx.clone()).map(|r| r.map(|(res, _)| res)).boxed(),
                Err(status) => futures::future::ready(Err(status)).boxed(),
            })
            .buffered(STREAM_PARALLELISM);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn embed_one(self, req: pb::EmbedRequest, cx: Cx, admission: Admission) -> Answer<pb::EmbedResponse> {
        let body = EmbedRequest {
            inputs: StringOrList(vec![req.inputs]),
            normalize: Some(req.normalize),
            truncate: req.truncate.then_some(true),
            prompt_name: req.prompt_name,
            instruction: None,
            mode: None,
            model: cx.model.clone(),
            truncation_direction: direction(req.truncation_direction),
            dimensions: None,
            priority: None,
        };
        let state = self.state.clone();
        let work = async move { tei::embed_vectors(&state, body).await };
        self.call("/tei.v1.Embed/Embed", cx.priority, admission, work, |vectors, metadata| {
            Ok(pb::EmbedResponse { embeddings: only(vectors.0)?, metadata })
        })
        .await
    }

    async fn embed_sparse_one(self, req: pb::EmbedSparseRequest, cx: Cx, admission: Admission) -> Answer<pb::EmbedSparseResponse> {
        let body = texts_request(req.inputs, req.truncate, req.truncation_direction, req.prompt_name, cx.model.clone());
        let work = tasks::embed_sparse(State(self.state.clone()), JsonBody(SparseRequest::without_text(body)));
        self.call("/tei.v1.Embed/EmbedSparse", cx.priority, admission, work, |vectors, metadata| {
            let sparse_embeddings = only(vectors.0)?.into_iter().map(|v| pb::SparseValue { index: v.index, value: v.value }).collect();
            Ok(pb::EmbedSparseResponse { sparse_embeddings, metadata })
        })
        .await
    }

    async fn embed_all_one(self, req: pb::EmbedAllRequest, cx: Cx, admission: Admission) -> Answer<pb::EmbedAllResponse> {
        let body = texts_request(req.inputs, req.truncate, req.truncation_direction, req.prompt_name, cx.model.clone());
        let state = self.state.clone();
        let work = async move { tasks::embed_all_vectors(&state, body).await };
        self.call("/tei.v1.Embed/EmbedAll", cx.priority, admission, work, |vectors, metadata| {
            let token_embeddings = only(vectors.0)?.into_iter().map(|embeddings| pb::TokenEmbedding { embeddings }).collect();
            Ok(pb::EmbedAllResponse { token_embeddings, metadata })
        })
        .await
    }

    async fn predict_one(
        self,
        method: &'static str,
        item: Result<(String, Option<String>), ApiError>,
        truncate: bool,
        raw_scores: bool,
        truncation_direction: i32,
        cx: Cx,
        admission: Admission,
    ) -> Answer<pb::PredictResponse> {
        let (state, model) = (self.state.clone(), cx.model.clone());
        let work = async move {
            let body = PredictRequest {
                inputs: PredictInputs { items: vec![item?], batch: false },
                raw_scores,
                truncate: truncate.then_some(true),
                truncation_direction: direction(truncation_direction),
                model,
            };
            tasks::predict(State(state), JsonBody(body)).await
        };
        self.call(method, cx.priority, admission, work, |answer, metadata| {
            let predictions = match answer.0 {
                Predictions::One(p) => p,
                Predictions::Batch(mut b) if b.len() == 1 => b.remove(0),
                Predictions::Batch(b) => return Err(internal(format!("the model answered {} inputs for one", b.len()))),
            };
            let predictions = predictions.into_iter().map(|p| pb::Prediction { score: p.score, label: p.label }).collect();
            Ok(pb::PredictResponse { predictions, metadata })
        })
        .await
    }

    async fn predict_text(self, req: pb::PredictRequest, cx: Cx, admission: Admission) -> Answer<pb::PredictResponse> {
        let item = Ok((req.inputs, None));
        self.predict_one("/tei.v1.Predict/Predict", item, req.truncate, req.raw_scores, req.truncation_direction, cx, admission).await
    }

    async fn predict_pair(self, req: pb::PredictPairRequest, cx: Cx, admission: Admission) -> Answer<pb::PredictResponse> {
        let n = req.inputs.len();
        let item = match <[String; 2]>::try_from(req.inputs) {
            Ok([a, b]) => Ok((a, Some(b))),
            Err(_) => Err(ApiError::invalid("inputs", format!("`inputs` must have two elements (a pair), got {n}"))),
        };
        self.predict_one("/tei.v1.Predict/PredictPair", item, req.truncate, req.raw_scores, req.truncation_direction, cx, admission).await
    }

    async fn tokenize_one(self, req: pb::EncodeRequest, cx: Cx, admission: Admission) -> Answer<pb::EncodeResponse> {
        let (state, model) = (self.state.clone(), cx.model.clone());
        let work = async move {
            let body = TokenizeRequest { inputs: StringOrList(vec![req.inputs]), model: model.clone(), prompt_name: req.prompt_name };
            let tokens = only(tei::tokenize(State(state.clone()), JsonBody(body)).await?.0)?;
            // Which tokens are special: those the tokenizer drops when decoding without special
            // tokens (and that are not empty when decoded with them).
            let ids: Vec<Vec<u32>> = tokens.iter().map(|t| vec![t.id]).collect();
            let lease = state.lease(&state.config.model_for(model)).await?;
            let tasks = lease.tasks_for("decode")?;
            let plain = tasks.decode(&ids, true).await?;
            let with_special = tasks.decode(&ids, false).await?;
            if plain.len() != tokens.len() || with_special.len() != tokens.len() {
                return Err(internal("the tokenizer decoded a different number of tokens".into()));
            }
            let simple = tokens
                .into_iter()
                .zip(plain.iter().zip(&with_special))
                .map(|(t, (plain, full))| pb::SimpleToken { id: t.id, text: t.text, special: plain.is_empty() && !full.is_empty(), start: None, stop: None })
                .filter(|t| req.add_special_tokens || !t.special)
                .collect();
            Ok(simple)
        };
        self.call("/tei.v1.Tokenize/Tokenize", cx.priority, admission, work, |tokens, _| Ok(pb::EncodeResponse { tokens })).await
    }

    async fn decode_one(self, req: pb::DecodeRequest, cx: Cx, admission: Admission) -> Answer<pb::DecodeResponse> {
        let body = DecodeRequest { ids: Ids(vec![req.ids]), skip_special_tokens: req.skip_special_tokens, model: cx.model.clone() };
        let work = tasks::decode(State(self.state.clone()), JsonBody(body));
        self.call("/tei.v1.Tokenize/Decode", cx.priority, admission, work, |texts, _| Ok(pb::DecodeResponse { text: only(texts.0)? })).await
    }
}

/// TEI's truncation direction as the HTTP body's field: right is the default, left is refused
/// by the handler with a message (only right truncation is supported).
fn direction(value: i32) -> Option<String> {
    match pb::TruncationDirection::try_from(value) {
        Ok(pb::TruncationDirection::Right) => None,
        Ok(pb::TruncationDirection::Left) => Some("left".into()),
        Err(_) => Some(format!("unknown ({value})")),
    }
}

fn texts_request(inputs: String, truncate: bool, truncation_direction: i32, prompt_name: Option<String>, model: Option<String>) -> TextsRequest {
    TextsRequest {
        inputs: StringOrList(vec![inputs]),
        truncate: truncate.then_some(true),
        truncation_direction: direction(truncation_direction),
        prompt_name,
        model,
    }
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// The one answer of a one-input request.
fn only<T>(mut answers: Vec<T>) -> Result<T, ApiError> {
    match answers.len() {
        1 => Ok(answers.remove(0)),
        n => Err(internal(format!("expected one answer for one input, got {n}"))),
    }
}

#[tonic::async_trait]
impl Info for GrpcService {
    async fn info(&self, _request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let info = tei::info(State(self.state.clone())).await.map_err(status_of)?.0;
        let model_type = match info.kind {
            embed_core::ModelKind::Classifier => pb::ModelType::Classifier,
            embed_core::ModelKind::Reranker => pb::ModelType::Reranker,
            _ => pb::ModelType::Embedding,
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::InfoResponse {
            version: info.version.to_string(),
            sha: None,
            docker_label: None,
            model_id: info.model_source,
            model_sha: info.model_sha,
            model_dtype: info.dtype,
            model_type: model_type.into(),
            max_concurrent_requests: count(info.max_concurrent_requests),
            max_input_length: count(info.max_input_length),
            // Batches are sized by embed-core's dynamic batcher, not by a token budget fixed here.
            max_batch_tokens: 0,
            max_batch_requests: None,
            max_client_batch_size: count(info.max_client_batch_size),
            // Tokenization runs on each model's own threads: no worker pool to report.
            tokenization_workers: 0,
        }))
    }
}

#[tonic::async_trait]
impl Embed for GrpcService {
    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, timing) = self.clone().embed_one(request.into_inner(), cx, Admission::Now).await?;
        Ok(timing.respond(res))
    }

    type EmbedStreamStream = BoxStream<pb::EmbedResponse>;

    async fn embed_stream(&self, request: Request<Streaming<pb::EmbedRequest>>) -> Result<Response<Self::EmbedStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.embed_one(req, cx, Admission::Wait))
    }

    async fn embed_sparse(&self, request: Request<pb::EmbedSparseRequest>) -> Result<Response<pb::EmbedSparseResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, timing) = self.clone().embed_sparse_one(request.into_inner(), cx, Admission::Now).await?;
        Ok(timing.respond(res))
    }

    type EmbedSparseStreamStream = BoxStream<pb::EmbedSparseResponse>;

    async fn embed_sparse_stream(
        &self,
        request: Request<Streaming<pb::EmbedSparseRequest>>,
    ) -> Result<Response<Self::EmbedSparseStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.embed_sparse_one(req, cx, Admission::Wait))
    }

    async fn embed_all(&self, request: Request<pb::EmbedAllRequest>) -> Result<Response<pb::EmbedAllResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, timing) = self.clone().embed_all_one(request.into_inner(), cx, Admission::Now).await?;
        Ok(timing.respond(res))
    }

    type EmbedAllStreamStream = BoxStream<pb::EmbedAllResponse>;

    async fn embed_all_stream(&self, request: Request<Streaming<pb::EmbedAllRequest>>) -> Result<Response<Self::EmbedAllStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.embed_all_one(req, cx, Admission::Wait))
    }
}

#[tonic::async_trait]
impl Predict for GrpcService {
    async fn predict(&self, request: Request<pb::PredictRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, timing) = self.clone().predict_text(request.into_inner(), cx, Admission::Now).await?;
        Ok(timing.respond(res))
    }

    async fn predict_pair(&self, request: Request<pb::PredictPairRequest>) -> Result<Response<pb::PredictResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, timing) = self.clone().predict_pair(request.into_inner(), cx, Admission::Now).await?;
        Ok(timing.respond(res))
    }

    type PredictStreamStream = BoxStream<pb::PredictResponse>;

    async fn predict_stream(&self, request: Request<Streaming<pb::PredictRequest>>) -> Result<Response<Self::PredictStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.predict_text(req, cx, Admission::Wait))
    }

    type PredictPairStreamStream = BoxStream<pb::PredictResponse>;

    async fn predict_pair_stream(
        &self,
        request: Request<Streaming<pb::PredictPairRequest>>,
    ) -> Result<Response<Self::PredictPairStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.predict_pair(req, cx, Admission::Wait))
    }
}

#[tonic::async_trait]
impl Rerank for GrpcService {
    async fn rerank(&self, request: Request<pb::RerankRequest>) -> Result<Response<pb::RerankResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let req = request.into_inner();
        let body = RerankRequest {
            query: req.query,
            texts: req.texts,
            raw_scores: req.raw_scores,
            return_text: req.return_text,
            truncate: req.truncate.then_some(true),
            truncation_direction: direction(req.truncation_direction),
            model: cx.model.clone(),
            instruction: None,
        };
        let work = tasks::rerank(State(self.state.clone()), JsonBody(body));
        let (res, timing) = self
            .call("/tei.v1.Rerank/Rerank", cx.priority, Admission::Now, work, |ranks, metadata| Ok(pb::RerankResponse { ranks: ranks_of(ranks.0)?, metadata }))
            .await?;
        Ok(timing.respond(res))
    }

    /// A client stream of `(query, text)` pairs answered once, ranked best first with the
    /// pairs' indices in the stream: pairs that share a query (and `truncate`) are ranked in one
    /// rerank call, so a stream with one query is exactly `Rerank` of its texts. `raw_scores`,
    /// `return_text` and `truncation_direction` are taken from the first message (TEI reads
    /// the first two from it).
    async fn rerank_stream(&self, request: Request<Streaming<pb::RerankStreamRequest>>) -> Result<Response<pb::RerankResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let messages: Vec<pb::RerankStreamRequest> = request.into_inner().try_collect().await?;
        let (state, model) = (self.state.clone(), cx.model.clone());
        let work = async move {
            let Some(first) = messages.first() else {
                return Err(ApiError::invalid("texts", "the stream sent no pair; send at least one (query, text)"));
            };
            let (raw_scores, return_text, truncation_direction) = (first.raw_scores, first.return_text, first.truncation_direction);
            // Groups of (query, truncate) with their texts and those texts' stream indices.
            let mut groups: Vec<((String, bool), Vec<String>, Vec<usize>)> = Vec::new();
            for (i, m) in messages.into_iter().enumerate() {
                let key = (m.query, m.truncate);
                match groups.iter_mut().find(|g| g.0 == key) {
                    Some(g) => {
                        g.1.push(m.text);
                        g.2.push(i);
                    }
                    None => groups.push((key, vec![m.text], vec![i])),
                }
            }
            let total: usize = groups.iter().map(|g| g.2.len()).sum();
            let mut ranks = Vec::with_capacity(total);
            for ((query, truncate), texts, indices) in groups {
                let body = RerankRequest {
                    query,
                    texts,
                    raw_scores,
                    return_text,
                    truncate: truncate.then_some(true),
                    truncation_direction: direction(truncation_direction),
                    model: model.clone(),
                    instruction: None,
                };
                for mut rank in tasks::rerank(State(state.clone()), JsonBody(body)).await?.0 {
                    rank.index = *indices.get(rank.index).ok_or_else(|| internal(format!("rerank answered index {} of {}", rank.index, indices.len())))?;
                    ranks.push(rank);
                }
            }
            if ranks.len() != total {
                return Err(internal(format!("rerank answered {} of {total} pairs", ranks.len())));
            }
            ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            Ok(ranks)
        };
        let (res, timing) = self
            .call("/tei.v1.Rerank/RerankStream", cx.priority, Admission::Now, work, |ranks, metadata| Ok(pb::RerankResponse { ranks: ranks_of(ranks)?, metadata }))
            .await?;
        Ok(timing.respond(res))
    }
}

fn ranks_of(ranks: Vec<tasks::types::Rank>) -> Result<Vec<pb::Rank>, ApiError> {
    ranks
        .into_iter()
        .map(|r| {
            let index = u32::try_from(r.index).map_err(|_| internal(format!("rank index {} does not fit a uint32", r.index)))?;
            Ok(pb::Rank { index, text: r.text, score: r.score })
        })
        .collect()
}

#[tonic::async_trait]
impl Tokenize for GrpcService {
    async fn tokenize(&self, request: Request<pb::EncodeRequest>) -> Result<Response<pb::EncodeResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, _) = self.clone().tokenize_one(request.into_inner(), cx, Admission::Now).await?;
        Ok(Response::new(res))
    }

    type TokenizeStreamStream = BoxStream<pb::EncodeResponse>;

    async fn tokenize_stream(&self, request: Request<Streaming<pb::EncodeRequest>>) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.tokenize_one(req, cx, Admission::Wait))
    }

    async fn decode(&self, request: Request<pb::DecodeRequest>) -> Result<Response<pb::DecodeResponse>, Status> {
        let cx = Cx::of(request.metadata())?;
        let (res, _) = self.clone().decode_one(request.into_inner(), cx, Admission::Now).await?;
        Ok(Response::new(res))
    }

    type DecodeStreamStream = BoxStream<pb::DecodeResponse>;

    async fn decode_stream(&self, request: Request<Streaming<pb::DecodeRequest>>) -> Result<Response<Self::DecodeStreamStream>, Status> {
        self.stream(request, |this, req, cx| this.decode_one(req, cx, Admission::Wait))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use tonic::Code;

    use super::{code_of, direction};
    use crate::error::ApiError;

    #[test]
    fn errors_take_teis_codes() {
        let code = |status: u16| code_of(&ApiError::new(StatusCode::from_u16(status).unwrap(), "x"));
        assert_eq!(code(422), Code::InvalidArgument);
        assert_eq!(code(413), Code::InvalidArgument, "too many inputs is TEI's validation error");
        assert_eq!(code(429), Code::ResourceExhausted);
        assert_eq!(code(503), Code::Unavailable);
        assert_eq!(code(500), Code::FailedPrecondition, "TEI's backend error");
        assert_eq!(code(424), Code::FailedPrecondition);
        assert_eq!(code(404), Code::NotFound);
        assert_eq!(code(504), Code::DeadlineExceeded);
        let wrong_kind = ApiError::new(StatusCode::BAD_REQUEST, "x").code("wrong_model_kind");
        assert_eq!(code_of(&wrong_kind), Code::Unimplemented);
    }

    #[test]
    fn truncation_directions() {
        assert_eq!(direction(0), None);
        assert_eq!(direction(1).as_deref(), Some("left"));
        assert_eq!(direction(7).as_deref(), Some("unknown (7)"));
    }
}
