//! The post-norm transformer block of BERT and its descendants (RoBERTa, XLM-R, DistilBERT,
//! MPNet, and with rotary positions and a gated feed-forward NomicBERT and GTE): attention,
//! residual, LayerNorm, feed-forward, residual, LayerNorm.

use tch::Tensor;

use super::attention::{Mode, SelfAttention};
use super::ffn::FeedForward;
use super::rotary::RotaryTable;
use super::{BatchInput, LayerNorm, Linear};

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
    /// positions; `mask` is the padded layout's attention mask.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        attn: &SelfAttention,
        t: &BatchInput,
        mode: Mode,
        rope: Option<&RotaryTable>,
        mask: &Tensor,
    ) -> std::result::Result<Tensor, String> {
        let ctx = attn.forward(&self.qkv.forward(x), t, mode, rope, mask)?;
        let a = self.attn_norm.forward(&(self.attn_out.forward(&ctx) + x));
        Ok(self.mlp_norm.forward(&(self.mlp.forward(&a) + a)))
    }
}
