//! The encoder's architecture as `config.json` describes it: the family table (`model_type`
//! → [`Family`]), the common shape ([`ArchConfig`]) and each family's own settings (one file
//! per family, named as in `models/`). No tensors: the models read these when they load.

pub(crate) mod bert;
pub(crate) mod decoder;
pub(crate) mod distilbert;
mod fields;
pub(crate) mod gemma3;
pub(crate) mod gte;
pub(crate) mod modernbert;
pub(crate) mod mpnet;
pub(crate) mod nomic_bert;

use std::fmt;
use std::path::Path;

use serde_json::Value;

pub(crate) use fields::Fields;
use crate::{Error, Result};

/// The hidden activation, as `config.json` names it (`hidden_act`, `activation`,
/// `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    Relu,
    /// SiLU / swish.
    Silu,
}

impl Activation {
    pub(crate) fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// The architectures embed-core implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// BERT and the RoBERTa line (RoBERTa, XLM-RoBERTa, CamemBERT): same layers, different
    /// position ids.
    Bert,
    /// DistilBERT: BERT's layers without token types or pooler, under other tensor names.
    DistilBert,
    /// MPNet (all-mpnet-base-v2).
    MPNet,
    /// ModernBERT: pre-norm, rotary, GeGLU, global and sliding-window layers.
    ModernBert,
    /// NomicBERT (nomic-embed-text).
    NomicBert,
    /// GTE v1.5 / multilingual (`model_type` "new").
    Gte,
    /// Decoder LLMs used as embedders: Qwen3, Qwen2, Mistral, Llama.
    Decoder,
    /// Gemma 3 text models (EmbeddingGemma).
    Gemma3,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::MPNet => "mpnet",
            Family::ModernBert => "modernbert",
            Family::NomicBert => "nomic_bert",
            Family::Gte => "gte",
            Family::Decoder => "decoder",
            Family::Gemma3 => "gemma3",
        })
    }
}

/// `model_type` values that load, and their family.
const MODEL_TYPES: &[(&str, Family)] = &[
    ("bert", Family::Bert),
    ("roberta", Family::Bert),
    ("xlm-roberta", Family::Bert),
    ("camembert", Family::Bert),
    ("distilbert", Family::DistilBert),
    ("mpnet", Family::MPNet),
    ("modernbert", Family::ModernBert),
    ("nomic_bert", Family::NomicBert),
    ("new", Family::Gte),
    ("qwen3", Family::Decoder),
    ("qwen2", Family::Decoder),
    ("mistral", Family::Decoder),
    ("llama", Family::Decoder),
    ("gemma3_text", Family::Gemma3),
];

/// Architecture class names (`architectures` in config.json) for configs without `model_type`.
const ARCHITECTURES: &[(&str, &str)] = &[
    ("Bert", "bert"),
    ("XLMRoberta", "xlm-roberta"),
    ("Roberta", "roberta"),
    ("Camembert", "camembert"),
    ("DistilBert", "distilbert"),
    ("MPNet", "mpnet"),
    ("ModernBert", "modernbert"),
    ("NomicBert", "nomic_bert"),
    ("NewModel", "new"),
    ("Qwen3", "qwen3"),
    ("Qwen2", "qwen2"),
    ("Mistral", "mistral"),
    ("Llama", "llama"),
    ("Gemma3Text", "gemma3_text"),
];

/// The `model_type` values embed-core loads, comma-separated (for error messages).
pub fn supported_model_types() -> String {
    MODEL_TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
}

/// The encoder's shape as read from `config.json`, whatever the family.
#[derive(Debug, Clone)]
pub(crate) struct ArchConfig {
    /// The family that implements it.
    pub(crate) family: Family,
    /// `model_type` (or the one implied by `architectures`).
    pub(crate) model_type: String,
    /// Vocabulary size.
    pub(crate) vocab_size: usize,
    /// Width of the hidden states (the embedding dimension before any projection).
    pub(crate) hidden_size: usize,
    /// Encoder layers.
    pub(crate) num_hidden_layers: usize,
    /// Attention heads per layer.
    pub(crate) num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub(crate) intermediate_size: usize,
    /// Tokens one input may have: the position table less the family's position offset.
    pub(crate) max_tokens: usize,
    pub(crate) details: Details,
}

/// What each family needs beyond the common fields.
#[derive(Debug, Clone)]
pub(crate) enum Details {
    Bert(bert::Config),
    DistilBert(distilbert::Config),
    MPNet(mpnet::Config),
    ModernBert(modernbert::Config),
    NomicBert(nomic_bert::Config),
    Gte(gte::Config),
    Decoder(decoder::Config),
    Gemma3(gemma3::Config),
}

impl ArchConfig {
    /// Reads the architecture from a parsed `config.json` at `path`.
    pub(crate) fn parse(v: &Value, path: &Path) -> Result<ArchConfig> {
        let f = Fields { v, path };
        let model_type = match v.get("model_type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => {
                let arch = v.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
                match arch {
                    Some(a) => ARCHITECTURES
                        .iter()
                        .find(|(prefix, _)| a.starts_with(prefix))
                        .map(|(_, t)| t.to_string())
                        .unwrap_or_else(|| a.to_string()),
                    None => return Err(f.error("missing field \"model_type\" (and no \"architectures\")")),
                }
            }
        };
        let Some(&(_, family)) = MODEL_TYPES.iter().find(|(t, _)| *t == model_type) else {
            return Err(Error::UnsupportedArchitecture {
                model_type,
                path: path.into(),
                supported: supported_model_types(),
            });
        };
        let cfg = match family {
            Family::Bert => bert::Config::parse(&f, model_type)?,
            Family::DistilBert => distilbert::Config::parse(&f, model_type)?,
            Family::MPNet => mpnet::Config::parse(&f, model_type)?,
            Family::ModernBert => modernbert::Config::parse(&f, model_type)?,
            Family::NomicBert => nomic_bert::Config::parse(&f, model_type)?,
            Family::Gte => gte::Config::parse(&f, model_type)?,
            Family::Decoder => decoder::Config::parse(&f, model_type)?,
            Family::Gemma3 => gemma3::Config::parse(&f, model_type)?,
        };
        f.heads_divide(cfg.hidden_size, cfg.num_attention_heads)?;
        Ok(cfg)
    }
}
