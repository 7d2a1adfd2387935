//! GTE v1.5 / multilingual (Alibaba-NLP's "new" architecture) as its Hub checkpoints spell it:
//! BERT's post-norm layers with rotary positions (optionally NTK-scaled), a fused `qkv_proj`,
//! and a gated feed-forward `down(up * gelu(gate))` from one `up_gate_proj`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::PostNorm;
use crate::model_dir::arch::{gte::Config, ArchConfig};
use crate::nn::block::{PostNormBlock, PostNormStack};
use crate::nn::ffn::{FeedForward, Glu};
use crate::nn::rotary::Rotary;
use crate::nn::{Embeddings, Linear, Weights};
use crate::Result;


/// Loads the model; returns it and its weight bytes.
pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(PostNorm, u64)> {
    let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
    let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.eps);
    let heads = a.num_attention_heads as i64;
    let emb = Embeddings {
        word: w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?,
        position: None,
        token_type: w.optional_table("embeddings.token_type_embeddings.weight", c.type_vocab_size, h)?,
        norm: w.layer_norm("embeddings.LayerNorm", h, eps, true)?,
        word_int8: Default::default(),
    };
    let mut layers = Vec::with_capacity(a.num_hidden_layers);
    for i in 0..a.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        // `up_gate_proj` rows are [up; gate] and the gate is activated: swap the halves so
        // the activated one comes first, as `Glu` expects (same bytes, one copy at load).
        let up_gate = w.linear(&format!("{p}.mlp.up_gate_proj"), 2 * inter, h, false)?;
        let up = Linear::new(Tensor::cat(&[up_gate.weight.narrow(0, inter, inter), up_gate.weight.narrow(0, 0, inter)], 0), None);
        layers.push(PostNormBlock {
            qkv: w.linear(&format!("{p}.attention.qkv_proj"), 3 * h, h, true)?,
            attn_out: w.linear(&format!("{p}.attention.o_proj"), h, h, true)?,
            attn_norm: w.layer_norm(&format!("{p}.attn_ln"), h, eps, true)?,
            mlp: FeedForward::Glu(Glu { up, down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, true)?, act: c.activation }),
            mlp_norm: w.layer_norm(&format!("{p}.mlp_ln"), h, eps, true)?,
        });
    }
    let head_dim = h / heads;
    // NTK scaling as GTE's remote code does it: the base times the factor, and every
    // frequency divided by factor^(2 / head_dim).
    let rope = match c.ntk_factor {
        None => Rotary::new(head_dim, c.rope_theta),
        Some(f) => Rotary::new(head_dim, c.rope_theta * f).scaled(f.powf(2.0 / head_dim as f64)),
    };
    let stack = PostNormStack::new(layers, heads, head_dim, Some(rope));
    Ok((PostNorm { emb, stack }, w.bytes))
}
