//! The post-norm transformer block of BERT and its descendants (RoBERTa, XLM-R, DistilBERT,
//! MPNet, and with rotary positions and a gated feed-forward NomicBERT and GTE): attention,
//! residual, LayerNorm, feed-forward, residual, LayerNorm.

use tch::Tensor;

use super::attention::{key_mask, run_encoder, AttentionPlan, AttentionSupport, Mode, Scores, SelfAttention};
use super::ffn::FeedForward;
use super::rotary::{Rotary, RotaryTable};
use super::{BatchInput, KernelError, LayerNorm, Linear};
use crate::nn::tensor_fields;

pub(crate) struct PostNormBlock {
    /// Q, K and V projections fused into one matmul.
    pub(crate) qkv: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) mlp: FeedForward,
    pub(crate) mlp_norm: LayerNorm,
}

impl PostNormBlock {
    /// `x` is `[n, hidden]` (see [`Mode`]); `rope` rotates Q and K where the family uses rotary
    /// positions; `scores` holds the padded layout's attention mask.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        attn: &SelfAttention,
        t: &BatchInput,
        mode: Mode,
        rope: Option<&RotaryTable>,
        scores: Scores,
    ) -> Result<Tensor, KernelError> {
        let qkv = self.qkv.forward(x);
        let ctx = crate::profile::stage("attention", || attn.forward(&qkv, t, mode, rope, scores))?;
        let a = self.attn_out.forward_add_norm(&ctx, x, &self.attn_norm);
        crate::nn::preempt::within_layer();
        Ok(self.mlp.forward_add_norm(&a, &self.mlp_norm))
    }
}

/// A stack of post-norm blocks with plain attention (optionally rotary), packed where the
/// device allows: the encoder of every family but MPNet (score bias) and ModernBERT (pre-norm,
/// sliding windows).
pub(crate) struct PostNormStack {
    pub(crate) layers: Vec<PostNormBlock>,
    pub(crate) attn: SelfAttention,
    pub(crate) rope: Option<Rotary>,
}

impl PostNormStack {
    /// `heads` of `head_dim` each.
    pub(crate) fn new(layers: Vec<PostNormBlock>, heads: i64, head_dim: i64, rope: Option<Rotary>) -> Self {
        PostNormStack { layers, attn: SelfAttention { heads, head_dim }, rope }
    }

    /// Plain attention under a key mask: packed where the device allows, the CPU's
    /// variable-length kernel, length groups.
    pub(crate) fn attention_support(&self) -> AttentionSupport {
        AttentionSupport { packed_head_dim: Some(self.attn.head_dim), cpu_varlen: true, length_groups: true }
    }

    /// Runs the layers on the embeddings of the whole token stream (`[stream, hidden]`, already
    /// normed); returns the last hidden state padded, `[b, len, hidden]`.
    pub(crate) fn forward(&self, x: &Tensor, t: &BatchInput, plan: &AttentionPlan) -> Tensor {
        let hidden = self.attn.heads * self.attn.head_dim;
        run_encoder(plan, t, hidden, |mode| {
            let (mut x, mask) = match mode {
                Mode::Packed => (x.shallow_clone(), Tensor::new()),
                Mode::Padded => (x.narrow(0, 0, t.tokens), key_mask(t)),
            };
            let rope = self.rope.as_ref().map(|r| r.table(&t.positions, x.size()[0], x.kind()));
            for layer in &self.layers {
                crate::nn::preempt::between_layers();
                x = layer.forward(&x, &self.attn, t, mode, rope.as_ref(), Scores::Keys(&mask))?;
            }
            Ok(x)
        })
    }
}

tensor_fields!(PostNormBlock: qkv, attn_out, attn_norm, mlp, mlp_norm);
tensor_fields!(PostNormStack: layers);
