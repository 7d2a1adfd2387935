//! `config.json` of the gte family (see `models/gte.rs` for the model).

use serde_json::Value;

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) type_vocab_size: usize,
    pub(crate) eps: f64,
    pub(crate) activation: Activation,
    pub(crate) rope_theta: f64,
    /// NTK scaling factor (`rope_scaling: {type: ntk, factor}`).
    pub(crate) ntk_factor: Option<f64>,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let pos = f.str_or("position_embedding_type", "rope")?;
        if pos != "rope" {
            return Err(f.error(format!("position_embedding_type {pos:?} is not supported (only \"rope\")")));
        }
        let norm = f.str_or("layer_norm_type", "layer_norm")?;
        if norm != "layer_norm" {
            return Err(f.error(format!("layer_norm_type {norm:?} is not supported (only \"layer_norm\")")));
        }
        if f.bool_or("logn_attention_scale", false)? {
            return Err(f.error("logn_attention_scale true is not supported"));
        }
        let ntk_factor = match f.v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let kind = s.get("type").or_else(|| s.get("rope_type")).and_then(Value::as_str).unwrap_or("");
                let factor = s.get("factor").and_then(Value::as_f64);
                match (kind, factor) {
                    ("ntk", Some(factor)) if factor > 0.0 => Some(factor),
                    _ => return Err(f.error(format!("rope_scaling {s} is not supported (only {{\"type\": \"ntk\", \"factor\": F}})"))),
                }
            }
        };
        let c = Config {
            type_vocab_size: f.usize_or("type_vocab_size", 0)?,
            eps: f.f64_or("layer_norm_eps", 1e-12)?,
            activation: f.activation("hidden_act", "gelu")?,
            rope_theta: f.f64_or("rope_theta", 10_000.0)?,
            ntk_factor,
        };
        f.standard(Family::Gte, model_type, f.usize_or("max_position_embeddings", 8192)?, Details::Gte(c))
    }
}
