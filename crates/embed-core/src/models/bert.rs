//! BERT and the RoBERTa line: RoBERTa, XLM-RoBERTa and CamemBERT have BERT's layers and
//! differ only in their position ids, which start at `pad_token_id + 1`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{ArchConfig, Details, Encoder, Family, Fields};
use crate::layers::attention::AttentionPath;
use crate::layers::block::{PostNormBlock, PostNormStack};
use crate::layers::ffn::{Activation, FeedForward, Mlp};
use crate::layers::{embed, BatchInput, LayerNorm, Weights};
use crate::Result;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    activation: Activation,
    /// Added to the 0-based position of every token.
    position_offset: i64,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let kind = f.str_or("position_embedding_type", "absolute")?;
        if kind != "absolute" {
            return Err(f.error(format!("position_embedding_type {kind:?} is not supported (only \"absolute\")")));
        }
        let roberta_positions = model_type != "bert";
        let position_offset = if roberta_positions { f.usize_or("pad_token_id", 1)? as i64 + 1 } else { 0 };
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        let max_tokens = f.positions_after(max_position_embeddings, position_offset)?;
        let c = Config {
            max_position_embeddings,
            type_vocab_size: f.usize_or("type_vocab_size", 2)?,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-12)?,
            activation: f.activation("hidden_act", "gelu")?,
            position_offset,
        };
        Ok(ArchConfig {
            family: Family::Bert,
            model_type,
            vocab_size: f.usize("vocab_size")?,
            hidden_size: f.usize("hidden_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads: f.usize("num_attention_heads")?,
            intermediate_size: f.usize("intermediate_size")?,
            max_tokens,
            details: Details::Bert(c),
        })
    }
}

pub(crate) struct Bert {
    word: Tensor,
    position: Tensor,
    /// Absent where `type_vocab_size` is 0.
    token_type: Option<Tensor>,
    emb_norm: LayerNorm,
    stack: PostNormStack,
    position_offset: i64,
}

impl Bert {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
        let h = a.hidden_size as i64;
        let inter = a.intermediate_size as i64;
        let eps = c.layer_norm_eps;
        let word = w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?;
        let position = w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?;
        let token_type = w.optional_table("embeddings.token_type_embeddings.weight", c.type_vocab_size, h)?;
        let emb_norm = w.layer_norm("embeddings.LayerNorm", h, eps, true)?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for i in 0..a.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
            layers.push(PostNormBlock {
                qkv: w.fused_linear(&qkv, h, h, true)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h, true)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps, true)?,
                mlp: FeedForward::Mlp(Mlp {
                    up: w.linear(&format!("{p}.intermediate.dense"), inter, h, true)?,
                    down: w.linear(&format!("{p}.output.dense"), h, inter, true)?,
                    act: c.activation,
                }),
                mlp_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps, true)?,
            });
        }
        let heads = a.num_attention_heads as i64;
        let stack = PostNormStack::new(layers, heads, h / heads, None, device, kind);
        let model = Bert { word, position, token_type, emb_norm, stack, position_offset: c.position_offset };
        Ok((model, w.bytes))
    }
}

impl Encoder for Bert {
    fn forward(&self, t: &BatchInput) -> Tensor {
        let mut x = embed(&self.word, &t.ids) + embed(&self.position, &(&t.positions + self.position_offset));
        if let Some(table) = &self.token_type {
            x += embed(table, &t.type_ids);
        }
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
