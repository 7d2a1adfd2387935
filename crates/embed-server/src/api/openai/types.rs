//! Bodies of the OpenAI routes, as OpenAI's API reference names and nests their fields.

use base64::Engine;
use embed_core::ModelKind;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::api::kind;

/// `input`: text, texts, token ids, or lists of token ids.
#[derive(Debug)]
pub(crate) enum Input {
    Text(String),
    Texts(Vec<String>),
    /// One input, already tokenized.
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Input {
    /// How many inputs this is.
    pub(crate) fn len(&self) -> usize {
        match self {
            Input::Text(_) | Input::Tokens(_) => 1,
            Input::Texts(v) => v.len(),
            Input::TokenLists(v) => v.len(),
        }
    }
}

const INPUT_EXPECTED: &str = "expected a string, an array of strings, an array of token ids or an array of token-id arrays";

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn token_list(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?.iter().map(token_id).collect()
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let items = match Value::deserialize(d)? {
            Value::String(s) => return Ok(Input::Text(s)),
            Value::Array(items) => items,
            other => return Err(D::Error::custom(format!("got {}; {INPUT_EXPECTED}", kind(&other)))),
        };
        let Some(first) = items.first() else { return Ok(Input::Texts(Vec::new())) };
        // The first item decides the shape; every other item must have the same one.
        let bad = |i: usize, v: &Value, what: &str| D::Error::custom(format!("item {i} is {}; expected {what} like item 0", kind(v)));
        match first {
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(String::from).ok_or_else(|| bad(i, v, "a string")))
                .collect::<Result<_, _>>()
                .map(Input::Texts),
            Value::Number(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token_id(v).ok_or_else(|| bad(i, v, "a token id (an integer from 0 to 4294967295)")))
                .collect::<Result<_, _>>()
                .map(Input::Tokens),
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| token_list(v).ok_or_else(|| bad(i, v, "an array of token ids")))
                .collect::<Result<_, _>>()
                .map(Input::TokenLists),
            other => Err(D::Error::custom(format!("item 0 is {}; {INPUT_EXPECTED}", kind(other)))),
        }
    }
}

/// How `/v1/embeddings` writes each vector.
#[derive(Debug, Deserialize, Default, PartialEq, Eq, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EncodingFormat {
    /// An array of numbers.
    #[default]
    Float,
    /// The little-endian f32 bytes, base64-encoded.
    Base64,
}

impl EncodingFormat {
    /// Characters a number takes at most in the answer: a float prints as the f64 equal to the
    /// f32 (`-0.012345678918361664,`), base64 takes 4 characters per 3 bytes.
    pub(crate) fn json_chars_per_number(self) -> usize {
        match self {
            EncodingFormat::Float => 23,
            EncodingFormat::Base64 => 6,
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct EmbeddingsRequest {
    pub(crate) input: Input,
    /// Default: the server's default model.
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// `null` means the default, as in OpenAI's API.
    #[serde(default)]
    pub(crate) encoding_format: Option<EncodingFormat>,
    /// Matryoshka: keep the first N dimensions.
    #[serde(default)]
    pub(crate) dimensions: Option<usize>,
    /// Accepted and logged; not used otherwise.
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// Extension: `interactive` or `bulk` (default: by size, see `embed_core::Priority`).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "interactive")]
    pub(crate) priority: Option<embed_core::Priority>,
}

/// `POST /v1/embeddings` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EmbeddingList {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

impl EmbeddingList {
    /// The answer for `vectors` (in input order) from `model`, which read `tokens` tokens.
    pub(crate) fn new(model: String, vectors: Vec<Vec<f32>>, format: EncodingFormat, tokens: usize) -> Self {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| Embedding { object: "embedding", index, embedding: EmbeddingVector::new(v, format) })
            .collect();
        EmbeddingList { object: "list", data, model, usage: Usage { prompt_tokens: tokens, total_tokens: tokens } }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OpenAiEmbedding)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingVector,
}

/// One vector in the requested [`EncodingFormat`] (also Cohere's `float` and `base64`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum EmbeddingVector {
    /// Each number is written as the f64 equal to the f32 (`0.10000000149011612`, not `0.1`),
    /// so a client reading doubles gets exactly the model's values, as from base64.
    Float(#[serde(serialize_with = "f32s_as_f64s")] Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    pub(crate) fn new(v: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => EmbeddingVector::Float(v),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

fn f32s_as_f64s<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|&x| f64::from(x)))
}

/// Tokens read; embeddings have no completion tokens, so both counts are the same.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OpenAiUsage)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

impl ModelList {
    /// Lists the registered models, loaded or not, with the kind of those that have been loaded.
    pub(crate) fn new<'a>(models: impl IntoIterator<Item = (&'a str, Option<ModelKind>)>) -> Self {
        let data =
            models.into_iter().map(|(n, kind)| Model { id: n.to_string(), object: "model", created: 0, owned_by: "embed", kind }).collect();
        ModelList { object: "list", data }
    }
}

/// A model card; the registry keeps no creation time, so `created` is 0.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = OpenAiModel)]
struct Model {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// Extension: what the model computes, once it has been loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    kind: Option<ModelKind>,
}

#[cfg(test)]
mod tests {
    use super::{EmbeddingList, EncodingFormat};

    #[test]
    fn floats_are_written_as_the_f64_equal_to_each_f32() {
        let list = EmbeddingList::new("m".into(), vec![vec![0.1, -2.5]], EncodingFormat::Float, 3);
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(
            text,
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.10000000149011612,-2.5]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}"#
        );
    }

    #[test]
    fn base64_is_the_little_endian_f32_bytes() {
        let list = EmbeddingList::new("m".into(), vec![vec![1.0]], EncodingFormat::Base64, 1);
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["data"][0]["embedding"], "AACAPw==");
    }
}
