//! `config.json` of the gemma3 family (see `models/gemma3.rs` for the model).

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
    pub(crate) global_theta: f64,
    pub(crate) local_theta: f64,
    /// Per layer: true = sliding-window attention.
    pub(crate) sliding: Vec<bool>,
    pub(crate) window: i64,
    pub(crate) query_scale: f64,
    pub(crate) activation: Activation,
    pub(crate) bidirectional: bool,
    pub(crate) attention_bias: bool,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let layers = f.usize("num_hidden_layers")?;
        let heads = f.usize("num_attention_heads")?;
        let kv_heads = f.kv_heads(heads)?;
        let head_dim = f.usize_or("head_dim", 256)?;
        if f.v.get("attn_logit_softcapping").is_some_and(|v| !v.is_null()) {
            return Err(f.error("attn_logit_softcapping is not supported"));
        }
        // `layer_types` (transformers >= 4.53) or the older `sliding_window_pattern`: every
        // pattern-th layer is global.
        let sliding = match f.sliding_layers(layers)? {
            Some(sliding) => sliding,
            None => {
                let pattern = f.usize_or("sliding_window_pattern", 6)?.max(1);
                (0..layers).map(|i| (i + 1) % pattern != 0).collect()
            }
        };
        let rope = |kind: &str| f.v.get("rope_parameters").and_then(|p| p.get(kind)).and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
        let c = Config {
            kv_heads,
            head_dim,
            eps: f.f64_or("rms_norm_eps", 1e-6)?,
            global_theta: match rope("full_attention") {
                Some(t) => t,
                None => f.f64_or("rope_theta", 1_000_000.0)?,
            },
            local_theta: match rope("sliding_attention") {
                Some(t) => t,
                None => f.f64_or("rope_local_base_freq", 10_000.0)?,
            },
            sliding,
            window: f.usize_or("sliding_window", 512)? as i64,
            query_scale: f.f64_or("query_pre_attn_scalar", head_dim as f64)?.powf(-0.5),
            activation: f.activation("hidden_activation", "gelu_pytorch_tanh")?,
            bidirectional: f.bool_or("use_bidirectional_attention", false)?,
            attention_bias: f.bool_or("attention_bias", false)?,
        };
        f.standard(Family::Gemma3, model_type, f.usize_or("max_position_embeddings", 2048)?, Details::Gemma3(c))
    }
}
