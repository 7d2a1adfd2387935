//! Bodies of Cohere's `POST /v2/embed`, with Cohere's field names, and the quantized outputs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::openai::EmbeddingVector;

/// `POST /v2/embed`. Fields Cohere has that cannot apply here (`images`, `inputs`, `max_tokens`)
/// are refused by name rather than ignored; others are accepted and ignored, as on `/v2/rerank`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CohereEmbedRequest)]
pub(crate) struct EmbedRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) texts: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) input_type: Option<InputType>,
    /// Default: `["float"]`.
    #[serde(default)]
    pub(crate) embedding_types: Option<Vec<EmbeddingType>>,
    /// Matryoshka: the first N dimensions, re-normalised.
    #[serde(default)]
    pub(crate) output_dimension: Option<usize>,
    #[serde(default)]
    pub(crate) truncate: Option<Truncate>,
    #[serde(default)]
    pub(crate) images: Option<Value>,
    #[serde(default)]
    pub(crate) inputs: Option<Value>,
    #[serde(default)]
    pub(crate) max_tokens: Option<Value>,
}

/// What the texts are for, which picks the model's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InputType {
    SearchDocument,
    SearchQuery,
    Classification,
    Clustering,
    Image,
}

/// One of the encodings Cohere returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

/// What to do with a text over the model's limit: Cohere's `END` (the default) drops its end,
/// `NONE` makes it an error; `START` (dropping the beginning) is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[schema(as = CohereTruncate)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Truncate {
    None,
    Start,
    End,
}

/// The `/v2/embed` answer (Cohere's `embeddings_by_type`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CohereEmbedResponse)]
pub(crate) struct EmbedResponse {
    pub(crate) id: String,
    pub(crate) embeddings: ByType,
    pub(crate) texts: Vec<String>,
    pub(crate) meta: Meta,
    pub(crate) response_type: &'static str,
}

/// Each requested encoding of every text, in input order; the others absent.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct ByType {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) float: Option<Vec<EmbeddingVector>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) int8: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uint8: Option<Vec<Vec<u8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) binary: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ubinary: Option<Vec<Vec<u8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) base64: Option<Vec<EmbeddingVector>>,
}

/// Cohere's `meta`: the API version and the tokens read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CohereMeta)]
pub(crate) struct Meta {
    pub(crate) api_version: ApiVersion,
    pub(crate) billed_units: BilledUnits,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiVersion {
    pub(crate) version: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BilledUnits {
    pub(crate) input_tokens: usize,
}

/// `int8`: the vector scaled so its largest magnitude is 127, each value rounded. Cohere's own
/// int8 comes from its training and is not published; this keeps each vector's direction
/// (cosine) and needs no calibration data.
pub(crate) fn int8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return vec![0; v.len()];
    }
    v.iter().map(|x| (x / max * 127.0).round().clamp(-127.0, 127.0) as i8).collect()
}

/// `uint8`: [`int8`] shifted by 128 into 1..=255.
pub(crate) fn uint8(v: &[f32]) -> Vec<u8> {
    int8(v).into_iter().map(|q| (i16::from(q) + 128) as u8).collect()
}

/// `ubinary`: one bit per dimension, 1 where the value is positive, eight to a byte with the
/// first dimension in the highest bit (numpy's `packbits`); the last byte is padded with zeros.
pub(crate) fn ubinary(v: &[f32]) -> Vec<u8> {
    v.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i)))).collect()
}

/// `binary`: [`ubinary`]'s bytes less 128, as signed bytes (sentence-transformers' and vLLM's
/// reading of Cohere's).
pub(crate) fn binary(v: &[f32]) -> Vec<i8> {
    ubinary(v).into_iter().map(|b| (i16::from(b) - 128) as i8).collect()
}

#[cfg(test)]
mod tests {
    use super::{binary, int8, ubinary, uint8};

    #[test]
    fn quantizations() {
        let v = [0.5f32, -1.0, 0.25, 0.0, 0.1, -0.2, 0.3, -0.4, 0.9];
        assert_eq!(int8(&v), [64, -127, 32, 0, 13, -25, 38, -51, 114]);
        assert_eq!(uint8(&v), [192, 1, 160, 128, 141, 103, 166, 77, 242]);
        // 1 0 1 0 1 0 1 0 | 1 (padded)
        assert_eq!(ubinary(&v), [0b1010_1010, 0b1000_0000]);
        assert_eq!(binary(&v), [42, 0]);
        assert_eq!(int8(&[0.0, 0.0]), [0, 0]);
    }
}
