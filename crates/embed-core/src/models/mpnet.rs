//! MPNet (all-mpnet-base-v2): BERT's post-norm layers plus a learned relative-position bias
//! on the attention scores, shared by every layer; absolute positions start at 2 as in
//! RoBERTa.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Encoder};
use crate::model_dir::arch::{mpnet::Config, ArchConfig};
use crate::nn::attention::{key_mask, AttentionPlan, AttentionSupport, Mode, Scores, SelfAttention};
use crate::nn::block::PostNormBlock;
use crate::nn::ffn::{FeedForward, Mlp};
use crate::nn::{embed, BatchInput, Embeddings, Weights};
use crate::Result;
use crate::nn::tensor_fields;

/// The farthest relative distance with its own buckets (MPNet's fixed value).
const MAX_DISTANCE: i64 = 128;


pub(crate) struct MPNet {
    emb: Embeddings,
    layers: Vec<PostNormBlock>,
    /// `[buckets, heads]`.
    relative_bias: Tensor,
    attn: SelfAttention,
    buckets: i64,
}

impl MPNet {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embeddings.word_embeddings.weight", device, kind)?;
        let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.layer_norm_eps);
        let heads = a.num_attention_heads as i64;
        let emb = Embeddings {
            word: w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?,
            position: Some((w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?, c.position_offset)),
            token_type: None,
            norm: w.layer_norm("embeddings.LayerNorm", h, eps, true)?,
            word_int8: Default::default(),
        };
        let relative_bias = w.take("encoder.relative_attention_bias.weight", &[c.buckets, heads])?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for i in 0..a.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv = ["q", "k", "v"].map(|n| format!("{p}.attention.attn.{n}"));
            layers.push(PostNormBlock {
                qkv: w.fused_linear(&qkv, h, h, true)?,
                attn_out: w.linear(&format!("{p}.attention.attn.o"), h, h, true)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.LayerNorm"), h, eps, true)?,
                mlp: FeedForward::Mlp(Mlp {
                    up: w.linear(&format!("{p}.intermediate.dense"), inter, h, true)?,
                    down: w.linear(&format!("{p}.output.dense"), h, inter, true)?,
                    act: c.activation,
                }),
                mlp_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps, true)?,
            });
        }
        let model = MPNet { emb, layers, relative_bias, attn: SelfAttention { heads, head_dim: h / heads }, buckets: c.buckets };
        Ok((model, w.bytes))
    }

    /// The additive attention bias of the padded layout, `[b, heads, len, len]`: the learned
    /// bias of each query-key distance, and minus infinity at padding keys.
    fn score_bias(&self, t: &BatchInput, kind: Kind) -> Tensor {
        let pos = Tensor::arange(t.len, (Kind::Int64, Device::Cpu));
        let buckets = relative_buckets(pos.unsqueeze(0) - pos.unsqueeze(1), self.buckets).to_device(self.relative_bias.device());
        // [len, len, heads] -> [1, heads, len, len]
        let bias = embed(&self.relative_bias, &buckets).permute([2, 0, 1]).unsqueeze(0).to_kind(kind);
        bias.masked_fill(&key_mask(t).logical_not(), f64::NEG_INFINITY)
    }

    /// The same bias as the CPU's variable-length attention takes it: per head, one entry per
    /// distance `-(len - 1)..=len - 1` (f32 `[heads, 2 len - 1]`, rounded to the model's kind
    /// first, as the padded path adds it).
    fn distance_table(&self, t: &BatchInput, kind: Kind) -> Tensor {
        let distance = Tensor::arange_start(1 - t.len, t.len, (Kind::Int64, Device::Cpu));
        let buckets = relative_buckets(distance, self.buckets).to_device(self.relative_bias.device());
        embed(&self.relative_bias, &buckets).transpose(0, 1).to_kind(kind).to_kind(Kind::Float).contiguous()
    }
}

/// The bucket of each key - query distance in `relative` (int64, any shape): T5's
/// bidirectional scheme as MPNet uses it (half the buckets per direction, exact below a
/// quarter of them, logarithmic up to `MAX_DISTANCE`). Computed with libtorch's float32 ops in
/// the reference's order, so the rounding at bucket edges is the same.
fn relative_buckets(relative: Tensor, buckets: i64) -> Tensor {
    let half = buckets / 2;
    let n = -relative;
    let negative = n.lt(0).to_kind(Kind::Int64) * half;
    let n = n.abs();
    let max_exact = half / 2;
    let large = (n.to_kind(Kind::Float) / max_exact as f64).log() / ((MAX_DISTANCE as f64) / (max_exact as f64)).ln()
        * (half - max_exact) as f64;
    let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(half - 1);
    negative + n.where_self(&n.lt(max_exact), &large)
}

impl Encoder for MPNet {
    fn forward(&self, t: &BatchInput, _plan: &AttentionPlan) -> Tensor {
        let x = self.emb.forward(t).narrow(0, 0, t.tokens);
        // The CPU's variable-length attention takes the bias per distance; padded attention
        // takes it laid out over the batch.
        let bias;
        let scores = if t.varlen {
            bias = self.distance_table(t, x.kind());
            Scores::Relative(&bias)
        } else {
            bias = self.score_bias(t, x.kind());
            Scores::Bias(&bias)
        };
        let mut x = x;
        for layer in &self.layers {
            crate::nn::preempt::between_layers();
            x = layer.forward(&x, &self.attn, t, Mode::Padded, None, scores).unwrap_or_else(|e| e.raise());
        }
        let hidden = self.attn.heads * self.attn.head_dim;
        t.pad(&x).view([t.b, t.len, hidden])
    }

    fn attention_support(&self) -> AttentionSupport {
        // The score bias rules out the packed kernel: padded attention on CUDA.
        AttentionSupport { packed_head_dim: None, cpu_varlen: true, length_groups: true }
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        self.emb.quantize_words()
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.emb.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}

tensor_fields!(MPNet: emb, layers, relative_bias);
