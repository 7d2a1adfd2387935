//! BERT and the RoBERTa line: RoBERTa, XLM-RoBERTa and CamemBERT have BERT's layers and
//! differ only in their position ids, which start at `pad_token_id + 1`.

use super::PostNorm;
use crate::model_dir::arch::{bert::Config, ArchConfig};
use crate::nn::block::{PostNormBlock, PostNormStack};
use crate::nn::ffn::{Activation, FeedForward, Mlp};
use crate::nn::{Embeddings, Weights};
use crate::Result;


/// The activation and LayerNorm epsilon a task head on this encoder uses (the masked-LM
/// head's transform follows the encoder's `hidden_act` and `layer_norm_eps`).
pub(crate) fn head_settings(c: &Config) -> (Activation, f64) {
    (c.activation, c.layer_norm_eps)
}

/// The tensor whose name gives a BERT-line checkpoint's prefix (`bert.`, `roberta.`, none).
pub(crate) const ANCHOR: &str = "embeddings.word_embeddings.weight";

/// Loads BERT or a RoBERTa-line encoder from `w` (read with [`ANCHOR`]); what it takes is
/// counted in `w.bytes`, and a task head may take its own tensors from `w` afterwards.
pub(crate) fn load(w: &mut Weights, a: &ArchConfig, c: &Config) -> Result<PostNorm> {
    let h = a.hidden_size as i64;
    let inter = a.intermediate_size as i64;
    let eps = c.layer_norm_eps;
    let emb = Embeddings {
        word: w.take("embeddings.word_embeddings.weight", &[a.vocab_size as i64, h])?,
        position: Some((w.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings as i64, h])?, c.position_offset)),
        token_type: w.optional_table("embeddings.token_type_embeddings.weight", c.type_vocab_size, h)?,
        norm: w.layer_norm("embeddings.LayerNorm", h, eps, true)?,
        word_int8: Default::default(),
    };
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
    let stack = PostNormStack::new(layers, heads, h / heads, None);
    Ok(PostNorm { emb, stack })
}
