//! Gemma 3 text models used as embedders (EmbeddingGemma): Gemma's RMSNorm (`1 + weight`),
//! embeddings scaled by `sqrt(hidden)`, norms before and after both attention and feed-forward,
//! per-head q/k norms, grouped-query attention scaled by `query_pre_attn_scalar`, sliding-window
//! layers with their own rotary base between global ones, and a GELU-tanh gated feed-forward.
//! Bidirectional when the config says `use_bidirectional_attention` (EmbeddingGemma), causal
//! otherwise.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Encoder};
use crate::model_dir::arch::{gemma3::Config, ArchConfig};
use crate::nn::attention::{key_mask, split_heads, window_mask, AttentionPlan, AttentionSupport, Reach};
use crate::nn::ffn::Glu;
use crate::nn::rotary::{Rotary, RotaryTable};
use crate::nn::{BatchInput, Linear, RmsNorm, Weights};
use crate::Result;
use crate::nn::tensor_fields;


struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_mlp_norm: RmsNorm,
    mlp: Glu,
    post_mlp_norm: RmsNorm,
    sliding: bool,
}

pub(crate) struct Gemma3 {
    word: Tensor,
    /// The word table in int8 (int8 models).
    word_int8: crate::nn::Int8Table,
    layers: Vec<Layer>,
    norm: RmsNorm,
    global_rope: Rotary,
    local_rope: Rotary,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    hidden: i64,
    window: i64,
    query_scale: f64,
    bidirectional: bool,
}

impl Gemma3 {
    pub(crate) fn load(path: &Path, a: &ArchConfig, c: &Config, device: Device, kind: Kind) -> Result<(Self, u64)> {
        let mut w = Weights::read(path, "embed_tokens.weight", device, kind)?;
        let (h, inter, eps) = (a.hidden_size as i64, a.intermediate_size as i64, c.eps);
        let (heads, kv_heads, head_dim) = (a.num_attention_heads as i64, c.kv_heads as i64, c.head_dim as i64);
        let norm = |w: &mut Weights, name: String, width: i64| -> Result<RmsNorm> {
            Ok(RmsNorm { gemma: true, ..w.rms_norm(&name, width, eps)? })
        };
        let word = w.take("embed_tokens.weight", &[a.vocab_size as i64, h])?;
        let mut layers = Vec::with_capacity(a.num_hidden_layers);
        for (i, &sliding) in c.sliding.iter().enumerate() {
            let p = format!("layers.{i}");
            let b = c.attention_bias;
            layers.push(Layer {
                input_norm: norm(&mut w, format!("{p}.input_layernorm"), h)?,
                q: w.linear(&format!("{p}.self_attn.q_proj"), heads * head_dim, h, b)?,
                k: w.linear(&format!("{p}.self_attn.k_proj"), kv_heads * head_dim, h, b)?,
                v: w.linear(&format!("{p}.self_attn.v_proj"), kv_heads * head_dim, h, b)?,
                o: w.linear(&format!("{p}.self_attn.o_proj"), h, heads * head_dim, b)?,
                q_norm: norm(&mut w, format!("{p}.self_attn.q_norm"), head_dim)?,
                k_norm: norm(&mut w, format!("{p}.self_attn.k_norm"), head_dim)?,
                post_attn_norm: norm(&mut w, format!("{p}.post_attention_layernorm"), h)?,
                pre_mlp_norm: norm(&mut w, format!("{p}.pre_feedforward_layernorm"), h)?,
                mlp: Glu {
                    up: w.fused_linear(&[format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj")], inter, h, false)?,
                    down: w.linear(&format!("{p}.mlp.down_proj"), h, inter, false)?,
                    act: c.activation,
                },
                post_mlp_norm: norm(&mut w, format!("{p}.post_feedforward_layernorm"), h)?,
                sliding,
            });
        }
        let final_norm = norm(&mut w, "norm".to_string(), h)?;
        let model = Gemma3 {
            word,
            word_int8: Default::default(),
            layers,
            norm: final_norm,
            global_rope: Rotary::new(head_dim, c.global_theta),
            local_rope: Rotary::new(head_dim, c.local_theta),
            heads,
            kv_heads,
            head_dim,
            hidden: h,
            window: c.window,
            query_scale: c.query_scale,
            bidirectional: c.bidirectional,
        };
        Ok((model, w.bytes))
    }

    /// The attention mask of a global or a sliding layer, never showing a padding key. A
    /// sliding layer with window W lets query i see key j when `|i - j| <= W / 2`
    /// (bidirectional, as transformers halves the window then) or `0 <= i - j < W` (causal).
    fn mask(&self, t: &BatchInput, sliding: bool) -> Tensor {
        match (self.bidirectional, sliding) {
            (true, false) => key_mask(t),
            (true, true) => window_mask(t, self.window / 2),
            (false, _) => {
                let pos = Tensor::arange(t.len, (Kind::Int64, t.mask.device()));
                let d = pos.unsqueeze(1) - pos.unsqueeze(0); // query - key
                let causal = if sliding { d.ge(0).logical_and(&d.lt(self.window)) } else { d.ge(0) };
                causal.view([1, 1, t.len, t.len]).logical_and(&key_mask(t))
            }
        }
    }

    /// What [`Gemma3::mask`] lets a query see, as the CPU's variable-length kernel takes it.
    fn reach(&self, sliding: bool) -> Reach {
        match (self.bidirectional, sliding) {
            (true, false) => Reach::ALL,
            (true, true) => Reach::window(self.window / 2),
            (false, sliding) => Reach::causal(sliding.then_some(self.window)),
        }
    }
}

impl Encoder for Gemma3 {
    fn forward(&self, t: &BatchInput, _plan: &AttentionPlan) -> Tensor {
        let n = t.tokens;
        let e = crate::nn::lookup(&self.word, &self.word_int8, &t.ids).narrow(0, 0, n);
        let kind = e.kind();
        // The scale rounded to the weights' dtype first, as the reference does.
        let scale = Tensor::from((self.hidden as f64).sqrt() as f32).to_kind(kind).to_device(e.device());
        let mut x = e * scale;
        let global: (RotaryTable, Tensor) = (self.global_rope.table(&t.positions, n, kind), self.mask(t, false));
        let local: (RotaryTable, Tensor) = (self.local_rope.table(&t.positions, n, kind), self.mask(t, true));
        for layer in &self.layers {
            crate::nn::preempt::between_layers();
            let (rope, mask) = if layer.sliding { (&local.0, &local.1) } else { (&global.0, &global.1) };
            let reach = self.reach(layer.sliding);
            let h = layer.input_norm.forward(&x);
            let q = layer.q_norm.forward(&layer.q.forward(&h).view([n, self.heads, self.head_dim]));
            let k = layer.k_norm.forward(&layer.k.forward(&h).view([n, self.kv_heads, self.head_dim]));
            let v = layer.v.forward(&h).view([n, self.kv_heads, self.head_dim]);
            let (q, k) = (rope.apply(&q), rope.apply(&k));
            let ctx = split_heads(&q, &k, &v, t, reach, Some(mask), Some(self.query_scale));
            x += layer.post_attn_norm.forward(&layer.o.forward(&ctx));
            crate::nn::preempt::within_layer();
            x = &x + layer.post_mlp_norm.forward(&layer.mlp.forward(&layer.pre_mlp_norm.forward(&x)));
        }
        t.pad(&self.norm.forward(&x)).view([t.b, t.len, self.hidden])
    }

    fn quantize_word_table(&self) -> (u64, u64) {
        crate::nn::quantize_table(&self.word, &self.word_int8)
    }

    fn attention_support(&self) -> AttentionSupport {
        // Sliding windows and a custom score scale: padded attention on CUDA.
        AttentionSupport { packed_head_dim: None, cpu_varlen: true, length_groups: false }
    }

    #[cfg(feature = "planted-leak")]
    fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }
}

tensor_fields!(Layer: input_norm, q, k, v, o, q_norm, k_norm, post_attn_norm, pre_mlp_norm, mlp, post_mlp_norm);
tensor_fields!(Gemma3: word, layers, norm);
