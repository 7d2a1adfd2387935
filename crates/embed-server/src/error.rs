//! API errors and the two shapes they are sent in: TEI's `{"error","error_type"}` (TEI and
//! admin routes) and OpenAI's `{"error":{"message","type","param","code"}}` (`/v1/` and `/v2/`
//! routes, and `/embeddings`).
//!
//! A handler picks the shape by its return type: TEI and admin handlers return [`ApiError`],
//! OpenAI handlers [`OpenAiError`], into which `?` converts every error they meet. Responses
//! made where no handler runs (extractor rejections, fallbacks, middleware) go through
//! [`ApiError::into_response_for`], the one place that picks the shape from the request path.
//!
//! Status codes: malformed JSON 400; wrong types or invalid values 422 on TEI routes and 400 on
//! OpenAI routes (as OpenAI answers); too large a body 413; unknown model 404; a model whose
//! files or settings cannot work (missing directory or weights, dtype the device cannot run)
//! 424 Failed Dependency, without `Retry-After`, because retrying cannot help; overload 429 and
//! loading/draining 503, both with `Retry-After`; out of memory 507; timeout 504; internal 500.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use embed_pool::PoolError;
use serde::Serialize;

/// What went wrong with a request, whichever API it came through. As a response it takes the
/// TEI shape; wrap it in [`OpenAiError`] for OpenAI's.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status (an [`OpenAiError`] sends a 422 as 400).
    pub status: StatusCode,
    /// Human-readable message naming the problem.
    pub message: String,
    /// Seconds for `Retry-After`, for overload errors.
    pub retry_after: Option<u64>,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<Cow<'static, str>>,
    /// A machine-readable code (OpenAI's `code`), such as `model_not_found`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `message` and nothing else set.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), retry_after: None, param: None, code: None }
    }

    /// 422 (400 on OpenAI routes) for a bad value in `param`.
    pub fn invalid(param: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.into()), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message) }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The response for a request to `path` where no handler chose the shape (extractor
    /// rejections, fallbacks, middleware): OpenAI's under `/v1/` and `/v2/` and on
    /// `/embeddings` (TEI's OpenAI route without the prefix), TEI's elsewhere.
    pub(crate) fn into_response_for(self, path: &str) -> Response {
        if path.starts_with("/v1/") || path.starts_with("/v2/") || path == "/embeddings" {
            OpenAiError(self).into_response()
        } else {
            self.into_response()
        }
    }

    fn tei_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "Unauthorized",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            408 | 504 => "Timeout",
            413 | 400 | 415 | 422 => "Validation",
            429 => "Overloaded",
            503 => "Unhealthy",
            507 => "OutOfMemory",
            _ => "Backend",
        }
    }

    /// `body` with `status` (the shapes differ on it) and this error's `Retry-After`.
    fn respond(&self, status: StatusCode, body: impl Serialize) -> Response {
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// TEI's error body (`ErrorResponse` in the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorResponse)]
pub(crate) struct TeiBody<'a> {
    error: &'a str,
    error_type: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(self.status, TeiBody { error: &self.message, error_type: self.tei_type() })
    }
}

/// An [`ApiError`] sent in OpenAI's shape, what the `/v1/` handlers return; `?` converts the
/// errors they meet (pool, model, validation) into it.
#[derive(Debug, Clone)]
pub struct OpenAiError(pub ApiError);

impl OpenAiError {
    /// The status sent: OpenAI answers invalid requests with 400 where TEI uses 422.
    pub fn status(&self) -> StatusCode {
        match self.0.status {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        }
    }

    fn kind(&self) -> &'static str {
        match self.0.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400 | 405 | 409 | 413 | 415 | 422 => "invalid_request_error",
            _ => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        self.0.code.or(match self.0.status.as_u16() {
            401 => Some("invalid_api_key"),
            429 => Some("rate_limit_exceeded"),
            _ => None,
        })
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl From<PoolError> for OpenAiError {
    fn from(e: PoolError) -> Self {
        OpenAiError(e.into())
    }
}

impl From<embed_core::Error> for OpenAiError {
    fn from(e: embed_core::Error) -> Self {
        OpenAiError(e.into())
    }
}

/// TEI's error body as the OpenAPI document describes it.
pub(crate) type TeiErrorDoc = TeiBody<'static>;

/// OpenAI's error body as the OpenAPI document describes it.
pub(crate) type OpenAiErrorDoc = OpenAiBody<'static>;

/// OpenAI's error body (`OpenAiErrorResponse` in the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = OpenAiErrorResponse)]
pub(crate) struct OpenAiBody<'a> {
    error: OpenAiErrorBody<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = OpenAiErrorDetail)]
pub(crate) struct OpenAiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let error = OpenAiErrorBody { message: &self.0.message, kind: self.kind(), param: self.0.param.as_deref(), code: self.code() };
        self.0.respond(self.status(), OpenAiBody { error })
    }
}

/// A message for a load error that cannot go away by retrying, without host paths; `None` for
/// errors that may be transient. The full error (with paths) goes to the log.
fn permanent_load_error(e: &embed_core::Error) -> Option<String> {
    use embed_core::Error as E;
    let file = |p: &std::path::Path| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    Some(match e {
        E::InvalidSource { .. } => "its source is not an existing directory nor a hub id".into(),
        E::MissingFile { path, .. } => format!("model file {} is missing", file(path)),
        E::Io { path, .. } => format!("model file {} cannot be read", file(path)),
        E::InvalidConfig { path, .. } => format!("config {} is invalid", file(path)),
        E::UnsupportedArchitecture { model_type, supported, .. } => {
            format!("model family {model_type:?} is not supported (supported model_type values: {supported})")
        }
        E::InvalidWeights { path, .. } => format!("weights {} are invalid", file(path)),
        E::WeightsMismatch { path, .. } => format!("weights {} do not match its config", file(path)),
        E::PickleRefused { path, .. } => format!("weights {} are a torch pickle holding more than tensors, which is refused", file(path)),
        E::LegacyTorchFormat { path } => format!("weights {} are in torch's legacy format; convert them to safetensors", file(path)),
        E::Tokenizer { path, .. } => format!("tokenizer {} cannot be loaded", file(path)),
        E::InvalidDevice(_)
        | E::InvalidDtype(_)
        | E::UnsupportedDtype { .. }
        | E::DeviceUnavailable { .. }
        | E::InvalidOption { .. } => e.to_string(),
        _ => return None,
    })
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let msg = e.to_string();
        match &e {
            PoolError::UnknownModel { .. } | PoolError::InvalidSource { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, msg).code("model_not_found")
            }
            PoolError::Exhausted { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
            PoolError::ModelTooLarge { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg),
            PoolError::Leased { .. } | PoolError::CannotOffload { .. } => ApiError::new(StatusCode::CONFLICT, msg),
            PoolError::Load { source, .. } if source.is_out_of_memory() => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg)
            }
            PoolError::Load { name, source } => match permanent_load_error(source) {
                Some(why) => {
                    tracing::error!(model = %name, "model cannot be loaded: {source}");
                    ApiError::new(
                        StatusCode::FAILED_DEPENDENCY,
                        format!("model {name:?} cannot be loaded: {why} (details in the server log)"),
                    )
                    .code("model_load_failed")
                }
                None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
            },
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
        }
    }
}

impl From<embed_core::Error> for ApiError {
    fn from(e: embed_core::Error) -> Self {
        use embed_core::Error as E;
        let msg = e.to_string();
        match &e {
            E::InputTooLong { .. } => ApiError::invalid("input", msg),
            E::UnknownPrompt { .. } => ApiError::invalid("prompt_name", msg),
            E::InvalidTokens { .. } => ApiError::invalid("input", msg),
            E::InvalidOption { name, .. } => ApiError::invalid(*name, msg),
            E::OutOfMemory { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg),
            E::WrongKind { .. } => ApiError { param: Some("model".into()), ..ApiError::new(StatusCode::BAD_REQUEST, msg) }.code("wrong_model_kind"),
            E::NotReady { .. } | E::ShutDown { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
            _ => {
                tracing::error!("internal error: {msg}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
        }
    }
}

/// Why [`crate::serve`] stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A model in `config.preload` could not be loaded (and `allow_degraded_start` is off).
    #[error("preloading failed: {0}")]
    Preload(#[from] PoolError),
}
