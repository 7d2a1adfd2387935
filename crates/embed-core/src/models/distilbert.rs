//! DistilBERT: BERT's post-norm layers under other names, no token types, positions from 0.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{ArchConfig, Details, Encoder, Family, Fields};
use crate::layers::attention::AttentionPath;
use crate::layers::block::{PostNormBlock, PostNormStack};
use crate::layers::ffn::{Activation, FeedForward, Mlp};
use crate::layers::{embed, BatchInput, LayerNorm, Weights};
use crate::Result;

/// DistilBERT's LayerNorms use a fixed epsilon (not in its config).
const LAYER_NORM_EPS: f64 = 1e-12;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    max_position_embeddings: usize,
    activation: Activation,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        Ok(ArchConfig {
            family: Family::DistilBert,
            model_type,
            vocab_size: f.usize("vocab_size")?,
            hidden_size: f.usize("dim")?,
            num_hidden_layers: f.usize("n_layers")?,
            num_attention_heads: f.usize("n_heads")?,
            intermediate_size: f.usize("hidden_dim")?,
            max_tokens: max_position_embeddings,
            details: Details::DistilBert(Config { max_position_embeddings, activation: f.activation("activation", "gelu")? }),
        })
    }
}

pub(crate) struct DistilBert {
    word: Tensor,
    position: Tensor,
    emb_norm: LayerNorm,
    stack: PostNormStack,
}

impl DistilBert {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
        let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, LAYER_NORM_EPS);
        let word = w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?;
        let position = w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?;
        let emb_norm = w.layer_norm("embeddings.LayerNorm", h, eps, true)?;
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
        let stack = PostNormStack::new(layers, heads, h / heads, None, device, kind);
        let model = DistilBert { word, position, emb_norm, stack };
        Ok((model, w.bytes))
    }
}

impl Encoder for DistilBert {
    fn forward(&self, t: &BatchInput) -> Tensor {
        let x = embed(&self.word, &t.ids) + embed(&self.position, &t.positions);
        self.stack.forward(&self.emb_norm.forward(&x), t)
    }

    fn attention_path(&self) -> AttentionPath {
        self.stack.attention_path()
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}
