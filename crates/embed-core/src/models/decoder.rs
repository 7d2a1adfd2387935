//! Decoder LLMs used as embedders — Qwen3 (Qwen3-Embedding), Qwen2 (gte-Qwen2), Mistral and
//! Llama (e5-mistral): pre-norm layers with RMSNorm, grouped-query causal attention with rotary
//! positions (Qwen3 also RMS-normalises each query and key head), a SwiGLU feed-forward, and a
//! final norm. Pooled by their last token (the EOS their tokenizer appends). Configs with
//! `is_causal: false` (bidirectional embedders) attend both ways.

use tch::{Kind, Tensor};

use super::{Encoder};
use crate::model_dir::arch::{decoder::Config, ArchConfig};
use crate::nn::attention::{key_mask, split_heads, AttentionPlan, AttentionSupport, Reach};
use crate::nn::ffn::Glu;
use crate::nn::rotary::Rotary;
use crate::nn::{BatchInput, Linear, RmsNorm, Weights};
use crate::Result;
use crate::nn::tensor_fields;


struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    mlp: Glu,
}

pub(crate) struct Decoder {
    word: Tensor,
    /// The word table in int8 (int8 models).
    word_int8: crate::nn::Int8Table,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rope: Rotary,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    hidden: i64,
    sliding_window: Option<i64>,
    causal: bool,
}

impl Decoder {
    /// The tensors every decoder checkpoint has under its prefix (`model.` in a
    /// `*ForCausalLM` or `*ForSequenceClassification` one).
    pub(crate) const ANCHOR: &'static str = "embed_tokens.weight";

    /// Reads the decoder from `w` (opened at [`Decoder::ANCHOR`]); a head beside it (LM head,
    /// score) is left in `w` for the caller.
    pub(crate) fn load(w: &mut Weights<'_>, a: &ArchConfig, c: &Config) -> Result<Self> {
        let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.eps);
        let (heads, kv_heads, head_dim) = (a.num_attention_heads as i64, c.kv_heads as i64, c.head_dim as i64);
        let word = w.take("embed_tokens.weight", &[a.vocab_size as i64, h])?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for i in 0..a.num_hidden_layers {
            let p = format!("layers.{i}");
            let (qk_norm_q, qk_norm_k) = if c.qk_norm {
                (Some(w.rms_norm(&format!("{p}.self_attn.q_norm"), head_dim, eps)?), Some(w.rms_norm(&format!("{p}.self_attn.k_norm"), head_dim, eps)?))
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: w.rms_norm(&format!("{p}.input_layernorm"), h, eps)?,
                q: w.linear(&format!("{p}.self_attn.q_proj"), heads * head_dim, h, c.qkv_bias)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), kv_heads * head_dim, h, c.qkv_bias)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), kv_heads * head_dim, h, c.qkv_bias)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), h, heads * head_dim, c.o_bias)?,
                q_norm: qk_norm_q,
                k_norm: qk_norm_k,
                mlp_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), h, eps)?,
                // SwiGLU: down(act(gate x) * up x), as one projection with the gate first.
                mlp: Glu {
                    up: w.fused_linear(&[format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj")], inter, h, c.mlp_bias)?,
                    down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
                    act: c.activation,
                },
            });
        }
        let norm = w.rms_norm("norm", h, eps)?;
        let model = Decoder {
            word,
            word_int8: Default::default(),
            layers,
            norm,
            rope: Rotary::new(head_dim, c.rope_theta),
            heads,
            kv_heads,
            head_dim,
            hidden: h,
            sliding_window: c.sliding_window,
            causal: c.causal,
        };
        Ok(model)
    }

    /// The word embeddings (a tied LM head's rows).
    pub(crate) fn word(&self) -> &Tensor {
        &self.word
    }
}

impl Encoder for Decoder {
    fn forward(&self, t: &BatchInput, _plan: &AttentionPlan) -> Tensor {
        let n = t.tokens;
        let mut x = crate::nn::lookup(&self.word, &self.word_int8, &t.ids).narrow(0, 0, n);
        let rope = self.rope.table(&t.positions, n, x.kind());
        // Right padding: causal attention never lets a real token see padding. A sliding
        // window narrows it further (key j visible from query i when i - window < j <= i); a
        // bidirectional model sees every real token (the key mask).
        let mask = if self.causal {
            self.sliding_window.filter(|&w| w < t.len).map(|w| {
                let pos = Tensor::arange(t.len, (Kind::Int64, x.device()));
                let d = pos.unsqueeze(1) - pos.unsqueeze(0);
                d.ge(0).logical_and(&d.lt(w)).view([1, 1, t.len, t.len])
            })
        } else {
            Some(key_mask(t))
        };
        let reach = if self.causal { Reach::causal(self.sliding_window) } else { Reach::ALL };
        for layer in &self.layers {
            crate::nn::preempt::between_layers();
            let h = layer.attn_norm.forward(&x);
            let mut q = layer.q.forward(&h).view([n, self.heads, self.head_dim]);
            let mut k = layer.k.forward(&h).view([n, self.kv_heads, self.head_dim]);
            let v = layer.v.forward(&h).view([n, self.kv_heads, self.head_dim]);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = qn.forward(&q);
                k = kn.forward(&k);
            }
            let (q, k) = (rope.apply(&q), rope.apply(&k));
            let ctx = split_heads(&q, &k, &v, t, reach, mask.as_ref(), None);
            x += layer.o.forward(&ctx);
            crate::nn::preempt::within_layer();
            x = &x + layer.mlp.forward(&layer.mlp_norm.forward(&x));
        }
        t.pad(&self.norm.forward(&x)).view([t.b, t.len, self.hidden])
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        crate::nn::quantize_table(&self.word, &self.word_int8)
    }

    fn attention_support(&self) -> AttentionSupport {
        // Causal attention is not given to the packed kernel: padded attention on CUDA.
        AttentionSupport { packed_head_dim: None, cpu_varlen: true, length_groups: false }
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)))
    }
}

tensor_fields!(Layer: attn_norm, q, k, v, o, q_norm, k_norm, mlp_norm, mlp);
tensor_fields!(Decoder: word, layers, norm);
