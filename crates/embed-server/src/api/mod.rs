//! Request handlers, grouped by API.

pub(crate) mod admin;
pub(crate) mod openai;
pub(crate) mod tei;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Flavor};
use crate::AppState;

/// JSON body whose rejections (malformed JSON 400, wrong types 422, too large 413, wrong
/// content type 415) render in the route's error shape.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let flavor = Flavor::of_path(req.uri().path());
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = rejection.status();
                let message = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => format!(
                        "request body is larger than the limit of {} bytes",
                        state.config.limits.max_body_bytes
                    ),
                    _ => rejection.body_text(),
                };
                Err(ApiError::new(status, message).flavor(flavor))
            }
        }
    }
}

/// One string or a list of strings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
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
            param: Some(field),
            ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request; the limit (max_inputs) is {max}"))
        });
    }
    Ok(())
}
