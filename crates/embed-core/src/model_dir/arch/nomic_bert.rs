//! `config.json` of the nomic_bert family (see `models/nomic_bert.rs` for the model).

use serde_json::Value;

use super::Activation;
use super::{ArchConfig, Details, Family};
use super::fields::Fields;
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) type_vocab_size: usize,
    pub(crate) eps: f64,
    pub(crate) rotary_base: f64,
    pub(crate) qkv_bias: bool,
    pub(crate) fc1_bias: bool,
    pub(crate) fc2_bias: bool,
    /// None: SwiGLU; else a plain MLP with this activation.
    pub(crate) mlp_activation: Option<Activation>,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        // The Hub's GPT-2-style keys, or the plain ones.
        let size = |hub: &str, plain: &str| if f.v.get(hub).is_some() { f.usize(hub) } else { f.usize(plain) };
        if f.bool_or("prenorm", false)? {
            return Err(f.error("prenorm NomicBERT is not supported (only the post-norm form nomic-embed-text uses)"));
        }
        if f.bool_or("rotary_emb_interleaved", false)? {
            return Err(f.error("rotary_emb_interleaved true is not supported"));
        }
        let fraction = f.f64_or("rotary_emb_fraction", 1.0)?;
        if fraction != 1.0 {
            return Err(f.error(format!("rotary_emb_fraction {fraction} is not supported (only 1.0)")));
        }
        if f.v.get("rotary_scaling_factor").is_some_and(|v| !v.is_null()) {
            return Err(f.error("rotary_scaling_factor (dynamic NTK past max_trained_positions) is not supported"));
        }
        if f.bool_or("use_rms_norm", false)? || f.bool_or("parallel_block", false)? {
            return Err(f.error("use_rms_norm / parallel_block NomicBERT variants are not supported"));
        }
        let mlp_activation = match f.str_or("activation_function", "swiglu")? {
            "swiglu" => None,
            other => Some(Activation::parse(other).ok_or_else(|| {
                f.error(format!("activation_function {other:?} is not supported (swiglu, gelu, relu, silu)"))
            })?),
        };
        let c = Config {
            type_vocab_size: f.usize_or("type_vocab_size", 2)?,
            eps: if f.v.get("layer_norm_epsilon").is_some() { f.f64_or("layer_norm_epsilon", 1e-12)? } else { f.f64_or("layer_norm_eps", 1e-12)? },
            rotary_base: f.f64_or("rotary_emb_base", 1000.0)?,
            qkv_bias: f.bool_or("qkv_proj_bias", false)?,
            fc1_bias: f.bool_or("mlp_fc1_bias", false)?,
            fc2_bias: f.bool_or("mlp_fc2_bias", false)?,
            mlp_activation,
        };
        let max_tokens = match f.v.get("n_positions").and_then(Value::as_u64) {
            Some(n) => n as usize,
            None => f.usize_or("max_position_embeddings", 2048)?,
        };
        Ok(ArchConfig {
            family: Family::NomicBert,
            model_type,
            vocab_size: f.usize("vocab_size")?,
            hidden_size: size("n_embd", "hidden_size")?,
            num_hidden_layers: size("n_layer", "num_hidden_layers")?,
            num_attention_heads: size("n_head", "num_attention_heads")?,
            intermediate_size: size("n_inner", "intermediate_size")?,
            max_tokens,
            details: Details::NomicBert(c),
        })
    }
}
