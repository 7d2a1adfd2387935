//! DistilBERT: BERT's post-norm layers under other names, no token types, positions from 0.

use std::path::Path;

use tch::{Device, Kind};

use super::PostNorm;
use crate::model_dir::arch::{distilbert::Config, ArchConfig};
use crate::nn::block::{PostNormBlock, PostNormStack};
use crate::nn::ffn::{FeedForward, Mlp};
use crate::nn::{Embeddings, Weights};
use crate::Result;

/// DistilBERT's LayerNorms use a fixed epsilon (not in its config).
const LAYER_NORM_EPS: f64 = 1e-12;


/// Loads a DistilBERT; returns it and its weight bytes.
pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(PostNorm, u64)> {
    let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
    let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, LAYER_NORM_EPS);
    let emb = Embeddings {
        word: w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?,
        position: Some((w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?, 0)),
        token_type: None,
        norm: w.layer_norm("embeddings.LayerNorm", h, eps, true)?,
        word_int8: Default::default(),
    };
    let mut layers = Vec::with_capacity(a.num_hidden_layers);
    for i in 0..a.num_hidden_layers {
        let p = format!("transformer.layer.{i}");
        let qkv = ["q_lin", "k_lin", "v_lin"].map(|n| format!("{p}.attention.{n}"));
        layers.push(PostNormBlock {
            qkv: w.fused_linear(&qkv, h, h, true)?,
            attn_out: w.linear(&format!("{p}.attention.out_lin"), h, h, true)?,
            attn_norm: w.layer_norm(&format!("{p}.sa_layer_norm"), h, eps, true)?,
            mlp: FeedForward::Mlp(Mlp {
                up: w.linear(&format!("{p}.ffn.lin1"), inter, h, true)?,
                down: w.linear(&format!("{p}.ffn.lin2"), h, inter, true)?,
                act: c.activation,
            }),
            mlp_norm: w.layer_norm(&format!("{p}.output_layer_norm"), h, eps, true)?,
        });
    }
    let heads = a.num_attention_heads as i64;
    let stack = PostNormStack::new(layers, heads, h / heads, None);
    Ok((PostNorm { emb, stack }, w.bytes))
}
