//! BERT and the RoBERTa line: RoBERTa, XLM-RoBERTa and CamemBERT have BERT's layers and
//! differ only in their position ids, which start at `pad_token_id + 1`.

use std::cell::Cell;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{no_mask, ArchConfig, Details, Encoder, Family, Fields};
use crate::layers::attention::{key_mask, run_encoder, AttentionPath, Mode, SelfAttention};
use crate::layers::block::PostNormBlock;
use crate::layers::ffn::{Activation, FeedForward, Mlp};
use crate::layers::{embed, BatchInput, LayerNorm, Linear, Weights};
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
        let max_tokens = max_position_embeddings.checked_sub(position_offset as usize).filter(|&n| n >= 2).ok_or_else(|| {
            f.error(format!("max_position_embeddings {max_position_embeddings} leaves no room after the position offset {position_offset}"))
        })?;
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
    layers: Vec<PostNormBlock>,
    attn: SelfAttention,
    position_offset: i64,
    attention: Cell<AttentionPath>,
}

impl Bert {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
        let h = a.hidden_size as i64;
        let inter = a.intermediate_size as i64;
        let eps = c.layer_norm_eps;
        let word = w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?;
        let position = w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?;
        let token_type = if c.type_vocab_size > 0 {
            Some(w.take("embeddings.token_type_embeddings.weight", &[c.type_vocab_size as i64, h])?)
        } else {
            None
        };
        let emb_norm = w.layer_norm("embeddings.LayerNorm", h, eps, true)?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for i in 0..a.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv = ["query", "key", "value"]
                .iter()
                .map(|n| w.linear(&format!("{p}.attention.self.{n}"), h, h, true))
                .collect::<Result<Vec<Linear>>>()?;
            layers.push(PostNormBlock {
                // The separate q/k/v tensors are dropped once fused; the fused copy has the
                // same size, so the byte count taken while loading them stays right.
                qkv: Linear::fuse(qkv),
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
        let attention = AttentionPath::choose(device, kind, h / heads, true);
        let model = Bert {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            attn: SelfAttention { heads, head_dim: h / heads },
            position_offset: c.position_offset,
            attention: Cell::new(attention),
        };
        Ok((model, w.bytes))
    }
}

impl Encoder for Bert {
    fn forward(&self, t: &BatchInput) -> Tensor {
        let mut x = embed(&self.word, &t.ids) + embed(&self.position, &(&t.positions + self.position_offset));
        if let Some(table) = &self.token_type {
            x += embed(table, &t.type_ids);
        }
        let x = self.emb_norm.forward(&x);
        let hidden = self.attn.heads * self.attn.head_dim;
        run_encoder(&self.attention, t, hidden, |mode| {
            let (mut x, mask) = match mode {
                Mode::Packed => (x.shallow_clone(), no_mask()),
                Mode::Padded => (x.narrow(0, 0, t.tokens), key_mask(t)),
            };
            for layer in &self.layers {
                x = layer.forward(&x, &self.attn, t, mode, None, &mask)?;
            }
            Ok(x)
        })
    }

    fn attention_path(&self) -> AttentionPath {
        self.attention.get()
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}
