//! Bodies of the TEI routes, with text-embeddings-inference's field names and shapes; what TEI
//! does not have is marked as an extension.

use std::collections::BTreeMap;

use embed_core::{ModelInfo, ModelKind, TokenizedText};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::api::kind;
use crate::config::Limits;

/// `POST /embed`; unknown fields are refused, as TEI does.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedRequest {
    pub(crate) inputs: StringOrList,
    #[serde(default)]
    pub(crate) normalize: Option<bool>,
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    #[serde(default)]
    pub(crate) prompt_name: Option<String>,
    /// Extension: a literal instruction prefix.
    #[serde(default)]
    pub(crate) instruction: Option<String>,
    /// Extension: `query` or `document` prompting.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "query")]
    pub(crate) mode: Option<embed_core::InputMode>,
    /// Extension: the model to use (default: the server's default model).
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    /// Matryoshka: keep the first N dimensions (re-normalised when normalising).
    #[serde(default)]
    pub(crate) dimensions: Option<usize>,
    /// Extension: `interactive` or `bulk` (default: by size, see `embed_core::Priority`).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "interactive")]
    pub(crate) priority: Option<embed_core::Priority>,
}

/// `POST /similarity`: TEI's body, the Hugging Face Inference API's sentence-similarity task.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimilarityRequest {
    pub(crate) inputs: SimilarityInputs,
    #[serde(default)]
    pub(crate) parameters: Option<SimilarityParameters>,
    /// Extension: the model to use (default: the server's default model).
    #[serde(default)]
    pub(crate) model: Option<String>,
}

/// The sentence to compare the others with, and the others.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimilarityInputs {
    pub(crate) source_sentence: String,
    pub(crate) sentences: Vec<String>,
}

/// `/similarity`'s `parameters`, as in TEI; each means what it means on `/embed`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimilarityParameters {
    #[serde(default)]
    pub(crate) truncate: Option<bool>,
    /// Accepted for compatibility; only `right` is supported.
    #[serde(default)]
    pub(crate) truncation_direction: Option<String>,
    #[serde(default)]
    pub(crate) prompt_name: Option<String>,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    pub(crate) inputs: StringOrList,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) prompt_name: Option<String>,
}

/// One string or a list of strings (TEI's `inputs`).
#[derive(Debug, Clone)]
pub(crate) struct StringOrList(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a string or an array of strings";
        match Value::deserialize(d)? {
            Value::String(s) => Ok(StringOrList(vec![s])),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!("item {i} is {}; {EXPECTED}", kind(&other)))),
                })
                .collect::<Result<_, _>>()
                .map(StringOrList),
            other => Err(D::Error::custom(format!("got {}; {EXPECTED}", kind(&other)))),
        }
    }
}

/// One token of a `/tokenize` answer, which is a list of these per input.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Token {
    pub(crate) id: u32,
    pub(crate) text: String,
}

impl Token {
    /// The tokens of one input, in order.
    pub(crate) fn list(tokenized: TokenizedText) -> Vec<Token> {
        tokenized.ids.into_iter().zip(tokenized.tokens).map(|(id, text)| Token { id, text }).collect()
    }
}

/// `GET /info` answer: the default model as it was last loaded, and the request limits. TEI has
/// `model_id`, `model_type`, `max_input_length`, `max_client_batch_size`,
/// `max_concurrent_requests` and `version`; the other fields are extensions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Info {
    pub(crate) model_id: String,
    /// The hub id (`org/name[@revision]`) it was loaded from, or for a local directory its
    /// configured name: never a host path.
    pub(crate) model_source: String,
    /// The hub commit the model was resolved to (TEI's field), for a model loaded by hub id.
    pub(crate) model_sha: Option<String>,
    model_type: ModelType,
    /// Extension: `embedding`, `reranker`, `classifier` or `sparse`.
    #[schema(value_type = String)]
    pub(crate) kind: ModelKind,
    pub(crate) architecture: String,
    pub(crate) family: String,
    pub(crate) dimension: usize,
    pub(crate) max_input_length: usize,
    pub(crate) max_client_batch_size: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) device: String,
    pub(crate) dtype: String,
    pub(crate) normalize: bool,
    pub(crate) prompts: BTreeMap<String, String>,
    pub(crate) version: &'static str,
}

impl Info {
    /// Describes `info` under this server's `limits`.
    pub(crate) fn new(info: ModelInfo, limits: &Limits) -> Self {
        Info {
            model_type: ModelType::of(&info),
            kind: info.kind,
            family: info.family.to_string(),
            device: info.device.to_string(),
            dtype: info.dtype.to_string(),
            model_sha: embed_core::hub_commit(&info.dir),
            model_source: crate::api::public_source(&info.source, &info.name),
            model_id: info.name,
            architecture: info.architecture,
            dimension: info.dimension,
            max_input_length: info.max_seq_length,
            max_client_batch_size: limits.max_inputs,
            max_concurrent_requests: limits.max_concurrent,
            normalize: info.normalize,
            prompts: info.prompts,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// TEI's `model_type`: `{"embedding": {"pooling": …}}` (`"splade"` for sparse models), or
/// `{"classifier" | "reranker": {"id2label": …, "label2id": …}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum ModelType {
    Embedding { pooling: String },
    Classifier(Labels),
    Reranker(Labels),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Labels {
    id2label: BTreeMap<String, String>,
    label2id: BTreeMap<String, usize>,
}

impl ModelType {
    fn of(info: &ModelInfo) -> ModelType {
        let labels = || Labels {
            id2label: info.labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect(),
            label2id: info.labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect(),
        };
        match info.kind {
            ModelKind::Embedding => ModelType::Embedding { pooling: info.pooling.to_string() },
            ModelKind::Sparse => ModelType::Embedding { pooling: "splade".into() },
            // No TEI counterpart: late interaction scores pairs, as a reranker does.
            ModelKind::MultiVector => ModelType::Reranker(Labels {
                id2label: BTreeMap::from([("0".to_string(), "max_sim".to_string())]),
                label2id: BTreeMap::from([("max_sim".to_string(), 0)]),
            }),
            ModelKind::Classifier => ModelType::Classifier(labels()),
            ModelKind::Reranker => ModelType::Reranker(labels()),
        }
    }
}
