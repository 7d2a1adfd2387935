//! `config.json` of the modernbert family (see `models/modernbert.rs` for the model).

use serde_json::Value;

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) norm_eps: f64,
    pub(crate) norm_bias: bool,
    pub(crate) attention_bias: bool,
    pub(crate) mlp_bias: bool,
    pub(crate) activation: Activation,
    /// Per layer: true = local (sliding window) attention.
    pub(crate) local: Vec<bool>,
    /// A local layer's query sees keys at most this far away (`local_attention / 2`).
    pub(crate) half_window: i64,
    pub(crate) global_theta: f64,
    pub(crate) local_theta: f64,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let layers = f.usize("num_hidden_layers")?;
        // transformers 5 writes `layer_types` and `rope_parameters`; Hub checkpoints carry the
        // original `global_attn_every_n_layers` and `global_rope_theta` / `local_rope_theta`.
        let local = match f.sliding_layers(layers)? {
            Some(local) => local,
            None => {
                let every = f.usize_or("global_attn_every_n_layers", 3)?.max(1);
                (0..layers).map(|i| i % every != 0).collect()
            }
        };
        let theta = |kind: &str, old: &str, default: f64| -> Result<f64> {
            match f.v.get("rope_parameters").and_then(|p| p.get(kind)).and_then(|p| p.get("rope_theta")) {
                Some(x) => x.as_f64().ok_or_else(|| f.error(format!("rope_parameters.{kind}.rope_theta must be a number"))),
                None => f.f64_or(old, default),
            }
        };
        for kind in ["full_attention", "sliding_attention"] {
            if let Some(t) = f.v.get("rope_parameters").and_then(|p| p.get(kind)).and_then(|p| p.get("rope_type")).and_then(Value::as_str) {
                if t != "default" {
                    return Err(f.error(format!("rope_type {t:?} is not supported (only \"default\")")));
                }
            }
        }
        let c = Config {
            norm_eps: f.f64_or("norm_eps", 1e-5)?,
            norm_bias: f.bool_or("norm_bias", false)?,
            attention_bias: f.bool_or("attention_bias", false)?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            activation: f.activation("hidden_activation", "gelu")?,
            local,
            half_window: (f.usize_or("local_attention", 128)? / 2) as i64,
            global_theta: theta("full_attention", "global_rope_theta", 160_000.0)?,
            local_theta: theta("sliding_attention", "local_rope_theta", 10_000.0)?,
        };
        f.standard(Family::ModernBert, model_type, f.usize_or("max_position_embeddings", 8192)?, Details::ModernBert(c))
    }
}
