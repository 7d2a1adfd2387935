//! NomicBERT (nomic-embed-text v1 / v1.5) as its Hub checkpoints spell it (remote code
//! `modeling_hf_nomic_bert.py`): BERT's post-norm layers with rotary positions instead of
//! position embeddings, a fused `Wqkv`, and a SwiGLU feed-forward `fc2(fc11(x) * silu(fc12(x)))`.

use std::path::Path;

use tch::{Device, Kind};

use super::PostNorm;
use crate::model_dir::arch::{nomic_bert::Config, ArchConfig};
use crate::nn::block::{PostNormBlock, PostNormStack};
use crate::nn::ffn::{Activation, FeedForward, Glu, Mlp};
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
    let stack = PostNormStack::new(layers, heads, head_dim, Some(rope));
    Ok((PostNorm { emb, stack }, w.bytes))
}
