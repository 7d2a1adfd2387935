//! Bodies of the task routes: TEI's `/rerank`, `/predict`, `/embed_sparse`, `/embed_all`,
//! `/decode` and `/vertex` with TEI's field names, and the Cohere / Jina rerank shape of
//! `/v1/rerank` that LangChain's and LlamaIndex's rerankers send.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::super::kind;
use super::super::tei::StringOrList;

/// `POST /rerank`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RerankRequest {
    pub(crate) query: String,
    pub(crate) texts: Vec<String>,
    /// Logits instead of sigmoid scores.
    #[serde(default)]
    pub(crate) raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub(crate) return_text: bool,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    /// Extension: the model to use (default: the server's default model).
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// Extension: the instruction of an LLM reranker's prompt (Qwen3-Reranker; its default
    /// when absent). A cross-encoder has none: refused (422) naming `instruction`.
    #[serde(default)]
    pub(crate) instruction: Option<String>,
}

/// One `/rerank` result; the answer lists them best first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Rank {
    pub(crate) index: usize,
    pub(crate) score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
}

/// `POST /v1/rerank` and `/v2/rerank` (Cohere's API; Jina's is the same). Fields the clients
/// send that do not apply here (`rank_fields`, `max_chunks_per_doc`, …) are accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct CohereRerankRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) query: String,
    pub(crate) documents: Vec<Document>,
    /// Only the best N results (all by default).
    #[serde(default)]
    pub(crate) top_n: Option<usize>,
    /// Include each document's text in its result.
    #[serde(default)]
    pub(crate) return_documents: Option<bool>,
    /// The instruction of an LLM reranker's prompt (vLLM and the seed system take it here too);
    /// refused for a cross-encoder.
    #[serde(default)]
    pub(crate) instruction: Option<String>,
}

/// A document to rerank: a string, or an object with a `text` field.
#[derive(Debug)]
pub(crate) struct Document(pub(crate) String);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Document(s)),
            Value::Object(mut o) => match o.remove("text") {
                Some(Value::String(s)) => Ok(Document(s)),
                _ => Err(D::Error::custom("a document object needs a string field `text`")),
            },
            other => Err(D::Error::custom(format!("got {}; expected a string or an object with `text`", kind(&other)))),
        }
    }
}

/// The Cohere / Jina rerank answer: results best first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CohereRerankResponse {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) results: Vec<CohereResult>,
    pub(crate) usage: Usage,
}

/// One result of [`CohereRerankResponse`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CohereResult {
    pub(crate) index: usize,
    pub(crate) relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) document: Option<DocumentText>,
}

/// A returned document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DocumentText {
    pub(crate) text: String,
}

/// Tokens the request cost (Jina's `usage`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CohereUsage)]
pub(crate) struct Usage {
    pub(crate) total_tokens: usize,
}

/// `POST /predict`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PredictRequest {
    pub(crate) inputs: PredictInputs,
    /// Logits instead of probabilities.
    #[serde(default)]
    pub(crate) raw_scores: bool,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
}

/// TEI's `/predict` inputs: `"text"` or `["text"]` (one input), `["a", "b"]` (one pair), or a
/// batch of those, `[["a"], ["b", "c"]]`.
#[derive(Debug)]
pub(crate) struct PredictInputs {
    /// Each input: one text, or a pair.
    pub(crate) items: Vec<(String, Option<String>)>,
    /// Whether a batch was sent (the answer is then a list per input).
    pub(crate) batch: bool,
}

impl<'de> Deserialize<'de> for PredictInputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a string, one or two strings, or a list of those";
        let sequence = |items: Vec<Value>, at: &str| -> Result<(String, Option<String>), D::Error> {
            let mut texts = items.into_iter().map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!("{at} holds {}; {EXPECTED}", kind(&other)))),
            });
            match (texts.next(), texts.next(), texts.next()) {
                (Some(a), None, None) => Ok((a?, None)),
                (Some(a), Some(b), None) => Ok((a?, Some(b?))),
                _ => Err(D::Error::custom(format!("{at} must hold one text or a pair of two"))),
            }
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(PredictInputs { items: vec![(s, None)], batch: false }),
            Value::Array(items) if items.iter().all(Value::is_string) => {
                Ok(PredictInputs { items: vec![sequence(items, "the input")?], batch: false })
            }
            Value::Array(items) => {
                let items = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Array(seq) => sequence(seq, &format!("input {i}")),
                        Value::String(s) => Ok((s, None)),
                        other => Err(D::Error::custom(format!("input {i} is {}; {EXPECTED}", kind(&other)))),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(PredictInputs { items, batch: true })
            }
            other => Err(D::Error::custom(format!("got {}; {EXPECTED}", kind(&other)))),
        }
    }
}

/// One label's score in a `/predict` answer (best first).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Prediction {
    pub(crate) score: f32,
    pub(crate) label: String,
}

/// A `/predict` answer: one list of labels for one input, a list of them for a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum Predictions {
    One(Vec<Prediction>),
    Batch(Vec<Vec<Prediction>>),
}

/// What `POST /`, `POST /invocations` and each `/vertex` instance answer: the body of the route
/// the request went to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum TaskAnswer {
    Embed(Vec<Vec<f32>>),
    Similarity(Vec<f32>),
    Rerank(Vec<Rank>),
    Predict(Predictions),
    EmbedSparse(Vec<Vec<SparseValue>>),
    EmbedMulti(Vec<Vec<crate::api::openai::types::EmbeddingVector>>),
}

/// `POST /vertex`: Vertex AI's envelope, each instance a body for `POST /`. Vertex's
/// `parameters` is accepted and ignored, as TEI does.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct VertexRequest {
    pub(crate) instances: Vec<Value>,
}

/// The `/vertex` answer: one prediction per instance, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct VertexResponse {
    pub(crate) predictions: Vec<TaskAnswer>,
}

/// `POST /embed_all` (and `POST /embed_sparse`, as [`SparseRequest`]).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextsRequest {
    pub(crate) inputs: StringOrList,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    #[serde(default)]
    pub(crate) prompt_name: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
}

/// `POST /embed_sparse`: [`TextsRequest`]'s fields and `return_text`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SparseRequest {
    pub(crate) inputs: StringOrList,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    #[serde(default)]
    pub(crate) prompt_name: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// Give each entry the vocabulary token its index stands for (`text`), as the tokenizer
    /// stores it (`##ing` for WordPiece), as sentence-transformers' `SparseEncoder.decode` does.
    #[serde(default)]
    #[schema(default = false)]
    pub(crate) return_text: bool,
}

impl SparseRequest {
    /// A texts request without token strings (gRPC's `EmbedSparse`, which has no such field).
    pub(crate) fn without_text(t: TextsRequest) -> Self {
        let TextsRequest { inputs, truncate, truncation_direction, prompt_name, model } = t;
        SparseRequest { inputs, truncate, truncation_direction, prompt_name, model, return_text: false }
    }

    /// The texts request and whether token strings are wanted.
    pub(crate) fn split(self) -> (TextsRequest, bool) {
        let SparseRequest { inputs, truncate, truncation_direction, prompt_name, model, return_text } = self;
        (TextsRequest { inputs, truncate, truncation_direction, prompt_name, model }, return_text)
    }
}

/// `POST /embed_multi`: late-interaction token vectors.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MultiRequest {
    pub(crate) inputs: StringOrList,
    /// `query` (the default, as PyLate's) or `document`: a PyLate / ColBERT model marks and
    /// pads queries (`[Q]`, `[MASK]` expansion) and drops punctuation from documents; BGE-M3
    /// treats both alike.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "document")]
    pub(crate) input_type: Option<embed_core::InputMode>,
    /// `float` (default): each vector an array of numbers; `base64`: each vector its
    /// little-endian f32 bytes, base64-encoded.
    #[serde(default)]
    pub(crate) encoding_format: Option<crate::api::openai::types::EncodingFormat>,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
}

/// One non-zero entry of a sparse vector.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SparseValue {
    pub(crate) index: u32,
    pub(crate) value: f32,
    /// The vocabulary token of `index` (`return_text: true` only; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "##ing")]
    pub(crate) text: Option<String>,
}

/// `POST /decode`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecodeRequest {
    pub(crate) ids: Ids,
    /// Leave special tokens out (TEI's default).
    #[serde(default = "yes")]
    pub(crate) skip_special_tokens: bool,
    #[serde(default)]
    pub(crate) model: Option<String>,
}

fn yes() -> bool {
    true
}

/// One list of token ids or a list of them.
#[derive(Debug)]
pub(crate) struct Ids(pub(crate) Vec<Vec<u32>>);

impl<'de> Deserialize<'de> for Ids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a list of token ids or a list of such lists";
        let id = |v: &Value| v.as_u64().filter(|&n| n <= u64::from(u32::MAX)).map(|n| n as u32);
        let list = |items: &[Value], at: &str| -> Result<Vec<u32>, D::Error> {
            items.iter().map(|v| id(v).ok_or_else(|| D::Error::custom(format!("{at}: {v} is not a token id; {EXPECTED}")))).collect()
        };
        match Value::deserialize(d)? {
            Value::Array(items) if items.iter().all(Value::is_array) && !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| list(v.as_array().expect("checked"), &format!("list {i}")))
                .collect::<Result<_, _>>()
                .map(Ids),
            Value::Array(items) => Ok(Ids(vec![list(&items, "ids")?])),
            other => Err(D::Error::custom(format!("got {}; {EXPECTED}", kind(&other)))),
        }
    }
}
