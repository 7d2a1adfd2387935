//! NomicBERT (nomic-embed-text v1 / v1.5) as its Hub checkpoints spell it (remote code
//! `modeling_hf_nomic_bert.py`): BERT's post-norm layers with rotary positions instead of
//! position embeddings, a fused `Wqkv`, and a SwiGLU feed-forward `fc2(fc11(x) * silu(fc12(x)))`.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind};

use super::{ArchConfig, Details, Family, Fields, PostNorm};
use crate::layers::block::{PostNormBlock, PostNormStack};
use crate::layers::ffn::{Activation, FeedForward, Glu, Mlp};
use crate::layers::rotary::Rotary;
use crate::layers::{Embeddings, Linear, Weights};
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    type_vocab_size: usize,
    eps: f64,
    rotary_base: f64,
    qkv_bias: bool,
    fc1_bias: bool,
    fc2_bias: bool,
    /// None: SwiGLU; else a plain MLP with this activation.
    mlp_activation: Option<Activation>,
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

/// Loads the model; returns it and its weight bytes.
pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(PostNorm, u64)> {
    let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
    let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.eps);
    let heads = a.num_attention_heads as i64;
    let emb = Embeddings {
        word: w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?,
        position: None,
        token_type: w.optional_table("embeddings.token_type_embeddings.weight", c.type_vocab_size, h)?,
        norm: w.layer_norm("emb_ln", h, eps, true)?,
        word_int8: Default::default(),
    };
    let mut layers = Vec::with_capacity(a.num_hidden_layers);
    for i in 0..a.num_hidden_layers {
        let p = format!("encoder.layers.{i}");
        let mlp = match c.mlp_activation {
            // SwiGLU: silu(fc12 x) * fc11 x, as one projection with the activated half first.
            None => FeedForward::Glu(Glu {
                up: Linear::fuse(vec![
                    w.linear(&format!("{p}.mlp.fc12"), inter, h, c.fc1_bias)?,
                    w.linear(&format!("{p}.mlp.fc11"), inter, h, c.fc1_bias)?,
                ]),
                down: w.linear(&format!("{p}.mlp.fc2"), h, inter, c.fc2_bias)?,
                act: Activation::Silu,
            }),
            Some(act) => FeedForward::Mlp(Mlp {
                up: w.linear(&format!("{p}.mlp.fc1"), inter, h, c.fc1_bias)?,
                down: w.linear(&format!("{p}.mlp.fc2"), h, inter, c.fc2_bias)?,
                act,
            }),
        };
        layers.push(PostNormBlock {
            qkv: w.linear(&format!("{p}.attn.Wqkv"), 3 * h, h, c.qkv_bias)?,
            attn_out: w.linear(&format!("{p}.attn.out_proj"), h, h, c.qkv_bias)?,
            attn_norm: w.layer_norm(&format!("{p}.norm1"), h, eps, true)?,
            mlp,
            mlp_norm: w.layer_norm(&format!("{p}.norm2"), h, eps, true)?,
        });
    }
    let head_dim = h / heads;
    let rope = Rotary::new(head_dim, c.rotary_base);
    let stack = PostNormStack::new(layers, heads, head_dim, Some(rope), device, kind);
    Ok((PostNorm { emb, stack }, w.bytes))
}
