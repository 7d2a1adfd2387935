//! API errors, rendered in the shape of the route's API: TEI's `{"error","error_type"}` or
//! OpenAI's `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use embed_pool::PoolError;
use serde_json::json;

/// Which API's error shape to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// text-embeddings-inference.
    Tei,
    /// OpenAI.
    OpenAi,
}

impl Flavor {
    /// The flavor of a request path.
    pub fn of_path(path: &str) -> Flavor {
        if path.starts_with("/v1/") {
            Flavor::OpenAi
        } else {
            Flavor::Tei
        }
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message naming the problem.
    pub message: String,
    /// Seconds for `Retry-After`, for overload errors.
    pub retry_after: Option<u64>,
    /// The shape to render.
    pub flavor: Flavor,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A new error in the TEI shape.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), retry_after: None, flavor: Flavor::Tei, param: None }
    }

    /// 422 for a bad value in `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message) }
    }

    /// Renders in `flavor`'s shape.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn tei_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "Unauthorized",
            404 => "NotFound",
            408 | 504 => "Timeout",
            413 | 400 | 415 | 422 => "Validation",
            429 => "Overloaded",
            503 => "Unhealthy",
            507 => "OutOfMemory",
            _ => "Backend",
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_exceeded",
            400 | 409 | 413 | 415 | 422 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.flavor {
            Flavor::Tei => json!({ "error": self.message, "error_type": self.tei_type() }),
            Flavor::OpenAi => json!({ "error": {
                "message": self.message, "type": self.openai_type(), "param": self.param,
                "code": self.status.as_u16().to_string(),
            }}),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let msg = e.to_string();
        match &e {
            PoolError::UnknownModel { .. } | PoolError::InvalidSource { .. } => ApiError::new(StatusCode::NOT_FOUND, msg),
            PoolError::Exhausted { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
            PoolError::ModelTooLarge { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg),
            PoolError::Leased { .. } => ApiError::new(StatusCode::CONFLICT, msg),
            PoolError::Load { source, .. } if source.is_out_of_memory() => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg)
            }
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
            E::InvalidOption { .. } => ApiError::invalid("input", msg),
            E::OutOfMemory { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, msg),
            E::NotReady { .. } | E::ShutDown { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(1),
            _ => {
                tracing::error!("internal error: {msg}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
        }
    }
}
