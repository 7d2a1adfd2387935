//! `config.json` of the decoder family (see `models/decoder.rs` for the model).

use serde_json::Value;

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) qkv_bias: bool,
    pub(crate) o_bias: bool,
    pub(crate) mlp_bias: bool,
    pub(crate) qk_norm: bool,
    pub(crate) activation: Activation,
    /// Mistral's causal sliding window: a query sees at most this many keys (itself included).
    pub(crate) sliding_window: Option<i64>,
    /// `is_causal: false` (bidirectional embedders such as gte-Qwen2-7B-instruct): every token
    /// sees every other real token.
    pub(crate) causal: bool,
    /// The LM head is the word embeddings (read only when the model is a causal-LM reranker).
    pub(crate) tie_word_embeddings: bool,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let hidden = f.usize("hidden_size")?;
        let heads = f.usize("num_attention_heads")?;
        let kv_heads = f.kv_heads(heads)?;
        let head_dim = f.usize_or("head_dim", hidden / heads.max(1))?;
        // transformers 5 writes `rope_parameters`; earlier configs `rope_theta` and `rope_scaling`.
        let rope = f.v.get("rope_parameters").filter(|v| !v.is_null()).or_else(|| f.v.get("rope_scaling").filter(|v| !v.is_null()));
        if let Some(r) = rope {
            let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(f.error(format!("rope type {kind:?} is not supported (only \"default\")")));
            }
        }
        let rope_theta = match f.v.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Value::as_f64) {
            Some(t) => t,
            None => f.f64_or("rope_theta", 10_000.0)?,
        };
        let attention_bias = f.bool_or("attention_bias", false)?;
        let sliding_window = match model_type.as_str() {
            // Qwen2/Qwen3 window only with use_sliding_window, which their embedders leave off.
            "qwen2" | "qwen3" if !f.bool_or("use_sliding_window", false)? => None,
            _ => f.v.get("sliding_window").and_then(Value::as_u64).map(|w| w as i64),
        };
        let c = Config {
            kv_heads,
            head_dim,
            eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            // Qwen2 always has Q/K/V biases (and none on the output projection).
            qkv_bias: model_type == "qwen2" || attention_bias,
            o_bias: attention_bias,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            qk_norm: model_type == "qwen3",
            activation: f.activation("hidden_act", "silu")?,
            sliding_window,
            causal: f.bool_or("is_causal", true)?,
            // Qwen2/Qwen3/Mistral/Llama configs default to an untied head.
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        };
        if !c.causal && c.sliding_window.is_some() {
            return Err(f.error("a bidirectional (is_causal false) model with a sliding window is not supported"));
        }
        f.standard(Family::Decoder, model_type, f.usize_or("max_position_embeddings", 32_768)?, Details::Decoder(c))
    }
}
