//! ModernBERT: pre-norm layers without biases, rotary positions with one theta for global
//! layers and another for local ones, local layers attending within a sliding window, GeGLU
//! feed-forward, and a final norm.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::{ArchConfig, Details, Encoder, Family, Fields};
use crate::layers::attention::{key_mask, window_mask, AttentionPath, Mode, Scores, SelfAttention};
use crate::layers::ffn::{Activation, Glu};
use crate::layers::rotary::Rotary;
use crate::layers::{BatchInput, LayerNorm, Linear, Weights};
use crate::Result;
use crate::layers::tensor_fields;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    norm_eps: f64,
    norm_bias: bool,
    attention_bias: bool,
    mlp_bias: bool,
    activation: Activation,
    /// Per layer: true = local (sliding window) attention.
    local: Vec<bool>,
    /// A local layer's query sees keys at most this far away (`local_attention / 2`).
    half_window: i64,
    global_theta: f64,
    local_theta: f64,
}

impl Config {
    pub(crate) fn parse(f: &Fields, model_type: String) -> Result<ArchConfig> {
        let layers = f.usize("num_hidden_layers")?;
        // transformers 5 writes `layer_types` and `rope_parameters`; Hub checkpoints carry the
        // original `global_attn_every_n_layers` and `global_rope_theta` / `local_rope_theta`.
        let local = match f.sliding_layers(layers)? {
            Some(local) => local,
            None => {
                let every = f.usize_or("global_attn_every_n_layers", 3)?.max(1);
                (0..layers).map(|i| i % every != 0).collect()
            }
        };
        let theta = |kind: &str, old: &str, default: f64| -> Result<f64> {
            match f.v.get("rope_parameters").and_then(|p| p.get(kind)).and_then(|p| p.get("rope_theta")) {
                Some(x) => x.as_f64().ok_or_else(|| f.error(format!("rope_parameters.{kind}.rope_theta must be a number"))),
                None => f.f64_or(old, default),
            }
        };
        for kind in ["full_attention", "sliding_attention"] {
            if let Some(t) = f.v.get("rope_parameters").and_then(|p| p.get(kind)).and_then(|p| p.get("rope_type")).and_then(Value::as_str) {
                if t != "default" {
                    return Err(f.error(format!("rope_type {t:?} is not supported (only \"default\")")));
                }
            }
        }
        let c = Config {
            norm_eps: f.f64_or("norm_eps", 1e-5)?,
            norm_bias: f.bool_or("norm_bias", false)?,
            attention_bias: f.bool_or("attention_bias", false)?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            activation: f.activation("hidden_activation", "gelu")?,
            local,
            half_window: (f.usize_or("local_attention", 128)? / 2) as i64,
            global_theta: theta("full_attention", "global_rope_theta", 160_000.0)?,
            local_theta: theta("sliding_attention", "local_rope_theta", 10_000.0)?,
        };
        f.standard(Family::ModernBert, model_type, f.usize_or("max_position_embeddings", 8192)?, Details::ModernBert(c))
    }
}

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
    word_int8: crate::layers::Int8Table,
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
        // Local layers need a sliding window the packed kernel is not given: padded attention.
        AttentionPath::choose(device, kind, head_dim, false);
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
    fn forward(&self, t: &BatchInput) -> Tensor {
        let mut x = self.emb_norm.forward(&crate::layers::lookup(&self.word, &self.word_int8, &t.ids).narrow(0, 0, t.tokens));
        let kind = x.kind();
        let global = (self.global_rope.table(&t.positions, t.tokens, kind), key_mask(t));
        let local = (self.local_rope.table(&t.positions, t.tokens, kind), window_mask(t, self.half_window));
        for layer in &self.layers {
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
                .unwrap_or_else(|msg| panic!("{msg}"));
            x += layer.attn_out.forward(&ctx);
            x = &x + layer.mlp.forward(&layer.mlp_norm.forward(&x));
        }
        let hidden = self.attn.heads * self.attn.head_dim;
        t.pad(&self.final_norm.forward(&x)).view([t.b, t.len, hidden])
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        crate::layers::quantize_table(&self.word, &self.word_int8)
    }

    fn attention_path(&self) -> AttentionPath {
        AttentionPath::Padded
    }

    fn groups_by_length(&self) -> bool {
        true
    }

    fn varlen_attention(&self) -> bool {
        true
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}

tensor_fields!(Layer: attn_norm, qkv, attn_out, mlp_norm, mlp);
tensor_fields!(ModernBert: word, emb_norm, layers, final_norm);
