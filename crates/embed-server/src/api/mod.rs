//! Request handlers, one module per API (`tei`, `openai`, `cohere`, `tasks`, `admin`), each with its handlers in
//! `mod.rs` and its request and response bodies in `types.rs`; here, the extractors and checks
//! they share.

pub(crate) mod admin;
pub(crate) mod cohere;
pub(crate) mod docs;
pub(crate) mod openai;
pub(crate) mod tasks;
pub(crate) mod tei;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;

use embed_core::Priority;

use crate::error::ApiError;
use crate::AppState;

/// The request header that sets a request's priority (`interactive` or `bulk`) for clients
/// that cannot add a body field; a `priority` field in the body wins over it.
pub(crate) const PRIORITY_HEADER: &str = "x-embed-priority";

tokio::task_local! {
    /// The priority header of the request being handled.
    static HEADER_PRIORITY: Option<Priority>;
}

/// Runs `handler` with the request's priority header in scope.
pub(crate) async fn with_header_priority<F: std::future::Future>(priority: Option<Priority>, handler: F) -> F::Output {
    HEADER_PRIORITY.scope(priority, handler).await
}

/// The priority a request asked for: its body's field, else its header; `None`: the default.
pub(crate) fn asked_priority(body: Option<Priority>) -> Option<Priority> {
    body.or_else(|| HEADER_PRIORITY.try_with(|p| *p).ok().flatten())
}

/// JSON body whose rejections render in the route's error shape: malformed JSON 400; a field of
/// the wrong type or value 422 (400 on OpenAI routes) naming the field in the message and in
/// `param`; too large 413; not JSON, or a charset other than UTF-8, 415.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        // Reading the body takes the request; its URI (reference-counted bytes) picks the shape.
        let uri = req.uri().clone();
        read_json(req, state).await.map(JsonBody).map_err(|e| e.into_response_for(uri.path()))
    }
}

/// The body parsed as `T`, or what is wrong with its type, size or content.
async fn read_json<T: DeserializeOwned>(req: Request, state: &AppState) -> Result<T, ApiError> {
    check_content_type(req.headers().get(header::CONTENT_TYPE))?;
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        let message = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("request body is larger than the limit of {} bytes", state.config.limits.max_body_bytes)
            }
            _ => rejection.body_text(),
        };
        ApiError::new(rejection.status(), message)
    })?;
    parse_json(&bytes)
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let unsupported = |why: String| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, why);
    let Some(value) = value else {
        return Err(unsupported("expected a request with `Content-Type: application/json`".into()));
    };
    let value = value.to_str().map_err(|_| unsupported("the Content-Type header is not ASCII".into()))?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(unsupported(format!("Content-Type {essence:?} is not supported; send application/json")));
    }
    for param in parts {
        if let Some((name, charset)) = param.split_once('=') {
            let charset = charset.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset") && !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(format!("charset {charset:?} is not supported; JSON bodies must be UTF-8")));
            }
        }
    }
    Ok(())
}

/// Parses JSON; data errors name the field at fault (`param`) and what it should be.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| json_error(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| json_error(String::new(), e))?;
    Ok(value)
}

/// A JSON value already parsed (a body `POST /` routes by its shape, a `/vertex` instance) as
/// `T`, with the errors [`parse_json`] gives for a body.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| json_error(e.path().to_string(), e.into_inner()))
}

fn json_error(path: String, e: serde_json::Error) -> ApiError {
    let root = path.is_empty() || path == ".";
    match e.classify() {
        serde_json::error::Category::Data if !root => {
            let message = format!("invalid `{path}`: {}", strip_position(&e));
            let field = path.split(['.', '[']).next().unwrap_or(&path).to_string();
            ApiError::invalid(field, message)
        }
        serde_json::error::Category::Data => ApiError::invalid("body", format!("invalid request body: {}", strip_position(&e))),
        _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    }
}

/// serde_json's message without " at line 1 column 13".
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Query parameters whose rejections render in the route's error shape (400, naming them).
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri).map(|q| QueryParams(q.0)).map_err(|e| {
            let why = e.body_text();
            let why = why.trim_start_matches("Failed to deserialize query string: ");
            ApiError::new(StatusCode::BAD_REQUEST, format!("invalid query string {:?}: {why}", parts.uri.query().unwrap_or("")))
                .into_response_for(parts.uri.path())
        })
    }
}

/// Where a model came from, as answers show it: its hub id (with `@revision` when one was
/// given), or for a local directory the model's configured name, never a host path.
pub(crate) fn public_source(source: &str, name: &str) -> String {
    match embed_core::ModelSource::parse(source) {
        Ok(embed_core::ModelSource::Hub { .. }) => source.to_string(),
        _ => name.to_string(),
    }
}

/// What a JSON value is, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rejects empty and oversized input lists, naming the limit.
pub(crate) fn check_count(n: usize, state: &AppState, field: &'static str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(field, format!("`{field}` is an empty list; send at least one input")));
    }
    let max = state.config.limits.max_inputs;
    if n > max {
        return Err(ApiError {
            param: Some(field.into()),
            ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request; the limit (max_inputs) is {max}"))
        });
    }
    Ok(())
}

/// A JSON answer already encoded, sent as `application/json`.
pub(crate) struct EncodedJson(Vec<u8>);

impl axum::response::IntoResponse for EncodedJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"))], self.0).into_response()
    }
}

/// Builds an answer with `make` and encodes it as JSON into a buffer of `size_hint` bytes (so a
/// large answer is not copied through repeated growth). A bulk request's answer is built and
/// encoded on the lower-priority bulk host pool (`embed_core::run_bulk`): encoding 256 vectors
/// takes milliseconds of one core, which at the compute threads' priority would stall whichever
/// forward pass runs then, a query's included. An interactive answer is encoded at once on the
/// calling thread.
pub(crate) async fn encode_json<T, F>(priority: Priority, size_hint: usize, make: F) -> Result<EncodedJson, ApiError>
where
    T: serde::Serialize,
    F: FnOnce() -> T + Send + 'static,
{
    let encode = move || {
        let mut buf = Vec::with_capacity(size_hint.min(1 << 30));
        serde_json::to_writer(&mut buf, &make()).map(|()| EncodedJson(buf))
    };
    let failed = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer failed: {m}"));
    let encoded = match priority {
        Priority::Bulk => embed_core::run_bulk(encode).await.map_err(failed)?,
        Priority::Interactive => encode(),
    };
    encoded.map_err(|e| failed(e.to_string()))
}

/// About how many bytes `rows` take as JSON arrays when a number takes up to `per_number`
/// characters with its comma (an f32 up to 15, most 11 to 13; see also
/// `EncodingFormat::json_chars_per_number`).
pub(crate) fn vectors_json_size<'a>(rows: impl IntoIterator<Item = &'a Vec<f32>>, per_number: usize) -> usize {
    rows.into_iter().map(|r| r.len().saturating_mul(per_number).saturating_add(64)).fold(256, usize::saturating_add)
}
