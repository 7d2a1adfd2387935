//! ModernBERT: pre-norm layers without biases, rotary positions with one theta for global
//! layers and another for local ones, local layers attending within a sliding window, GeGLU
//! feed-forward, and a final norm.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Encoder};
use crate::model_dir::arch::{modernbert::Config, ArchConfig};
use crate::nn::attention::{key_mask, window_mask, AttentionPlan, AttentionSupport, Mode, Scores, SelfAttention};
use crate::nn::ffn::Glu;
use crate::nn::rotary::Rotary;
use crate::nn::{BatchInput, LayerNorm, Linear, Weights};
use crate::Result;
use crate::nn::tensor_fields;


struct Layer {
    /// Absent in the first layer (the embeddings' norm precedes it).
    attn_norm: Option<LayerNorm>,
    qkv: Linear,
    attn_out: Linear,
    mlp_norm: LayerNorm,
    mlp: Glu,
    local: bool,
}

pub(crate) struct ModernBert {
    word: Tensor,
    /// The word table in int8 (int8 models).
    word_int8: crate::nn::Int8Table,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    attn: SelfAttention,
    global_rope: Rotary,
    local_rope: Rotary,
    half_window: i64,
}

impl ModernBert {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embeddings.tok_embeddings.weight", device, kind)?;
        let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.norm_eps);
        let heads = a.num_attention_heads as i64;
        let word = w.take("embeddings.tok_embeddings.weight", &[a.vocab_size as i64, h])?;
        let emb_norm = w.layer_norm("embeddings.norm", h, eps, c.norm_bias)?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for (i, &local) in c.local.iter().enumerate() {
            let p = format!("layers.{i}");
            layers.push(Layer {
                attn_norm: if i == 0 { None } else { Some(w.layer_norm(&format!("{p}.attn_norm"), h, eps, c.norm_bias)?) },
                qkv: w.linear(&format!("{p}.attn.Wqkv"), 3 * h, h, c.attention_bias)?,
                attn_out: w.linear(&format!("{p}.attn.Wo"), h, h, c.attention_bias)?,
                mlp_norm: w.layer_norm(&format!("{p}.mlp_norm"), h, eps, c.norm_bias)?,
                mlp: Glu {
                    up: w.linear(&format!("{p}.mlp.Wi"), 2 * inter, h, c.mlp_bias)?,
                    down: w.linear(&format!("{p}.mlp.Wo"), h, inter, c.mlp_bias)?,
                    act: c.activation,
                },
                local,
            });
        }
        let final_norm = w.layer_norm("final_norm", h, eps, c.norm_bias)?;
        let head_dim = h / heads;
        let model = ModernBert {
            word,
            word_int8: Default::default(),
            emb_norm,
            layers,
            final_norm,
            attn: SelfAttention { heads, head_dim },
            global_rope: Rotary::new(head_dim, c.global_theta),
            local_rope: Rotary::new(head_dim, c.local_theta),
            half_window: c.half_window,
        };
        Ok((model, w.bytes))
    }
}

impl Encoder for ModernBert {
    fn forward(&self, t: &BatchInput, _plan: &AttentionPlan) -> Tensor {
        let mut x = self.emb_norm.forward(&crate::nn::lookup(&self.word, &self.word_int8, &t.ids).narrow(0, 0, t.tokens));
        let kind = x.kind();
        let global = (self.global_rope.table(&t.positions, t.tokens, kind), key_mask(t));
        let local = (self.local_rope.table(&t.positions, t.tokens, kind), window_mask(t, self.half_window));
        for layer in &self.layers {
            crate::nn::preempt::between_layers();
            let (rope, scores) = if layer.local {
                (&local.0, Scores::Window(&local.1, self.half_window))
            } else {
                (&global.0, Scores::Keys(&global.1))
            };
            let h = match &layer.attn_norm {
                Some(norm) => norm.forward(&x),
                None => x.shallow_clone(),
            };
            let ctx = self
                .attn
                .forward(&layer.qkv.forward(&h), t, Mode::Padded, Some(rope), scores)
                .unwrap_or_else(|e| e.raise());
            x += layer.attn_out.forward(&ctx);
            crate::nn::preempt::within_layer();
            x = &x + layer.mlp.forward(&layer.mlp_norm.forward(&x));
        }
        let hidden = self.attn.heads * self.attn.head_dim;
        t.pad(&self.final_norm.forward(&x)).view([t.b, t.len, hidden])
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        crate::nn::quantize_table(&self.word, &self.word_int8)
    }

    fn attention_support(&self) -> AttentionSupport {
        // Local layers need a sliding window the packed kernel is not given: padded attention on CUDA.
        AttentionSupport { packed_head_dim: None, cpu_varlen: true, length_groups: true }
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}

tensor_fields!(Layer: attn_norm, qkv, attn_out, mlp_norm, mlp);
tensor_fields!(ModernBert: word, emb_norm, layers, final_norm);
