//! The BERT encoder forward pass on libtorch, weights loaded by name from safetensors.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::attention::{flash_varlen, AttentionPath};
use crate::config::{Activation, BertConfig, Pooling};
use crate::{Error, Result};

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let width = self.weight.size()[0];
        x.layer_norm([width], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Layer {
    /// Q, K and V projections fused into one matmul.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// A loaded BERT encoder. Owns every tensor of the model.
pub(crate) struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
    head_dim: i64,
    activation: Activation,
    device: Device,
    /// Packed or padded attention; falls back to padded for good if the packed kernel refuses.
    attention: Cell<AttentionPath>,
    /// Bytes held by the weights on the model's device.
    pub(crate) weight_bytes: u64,
}

/// One batch on the model's device. `b` sequences, the longest `len` tokens; `ids`, `type_ids`
/// and `positions` hold the token stream: the `tokens` real tokens back to back, then possibly
/// a filler sequence (packed attention only) that rounds the stream's length up.
pub(crate) struct BatchInput {
    pub(crate) ids: Tensor,
    pub(crate) type_ids: Tensor,
    pub(crate) positions: Tensor,
    /// Where each real token sits in the padded `[b * len]` layout.
    pub(crate) rows: Tensor,
    /// `[b, len]`, 1 = token.
    pub(crate) mask: Tensor,
    /// int32: 0, len0, len0 + len1, …, through the filler (the packed attention's bounds).
    pub(crate) cu_seqlens: Tensor,
    /// Real tokens (the stream's first rows).
    pub(crate) tokens: i64,
    /// Longest sequence of the stream, filler included.
    pub(crate) max_seqlen: i64,
    pub(crate) b: i64,
    pub(crate) len: i64,
}

impl BatchInput {
    fn is_dense(&self) -> bool {
        self.tokens == self.b * self.len
    }

    /// `[tokens, width]` → `[b * len, width]` with zeros at the padding.
    fn pad(&self, t: &Tensor) -> Tensor {
        if self.is_dense() {
            t.shallow_clone()
        } else {
            let width = t.size()[1];
            Tensor::zeros([self.b * self.len, width], (t.kind(), t.device())).index_copy(0, &self.rows, t)
        }
    }

    /// `[b * len, width]` → `[tokens, width]`.
    fn unpad(&self, t: Tensor) -> Tensor {
        if self.is_dense() {
            t
        } else {
            t.index_select(0, &self.rows)
        }
    }
}

/// Reads every tensor of `path` into a name → tensor map (CPU), with a common prefix
/// (`bert.`, `model.`) stripped.
fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| Error::InvalidWeights { path: path.into(), reason: e.to_string() })?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            let name = name
                .strip_prefix("bert.")
                .or_else(|| name.strip_prefix("model."))
                .map(str::to_string)
                .unwrap_or(name);
            (name, t)
        })
        .collect())
}

struct Loader<'a> {
    weights: HashMap<String, Tensor>,
    path: &'a Path,
    device: Device,
    kind: Kind,
    bytes: u64,
}

impl Loader<'_> {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.weights.remove(name).ok_or_else(|| Error::WeightsMismatch {
            path: self.path.into(),
            reason: format!("tensor {name:?} is missing"),
        })?;
        if t.size() != shape {
            return Err(Error::WeightsMismatch {
                path: self.path.into(),
                reason: format!("tensor {name:?} has shape {:?}, the config implies {shape:?}", t.size()),
            });
        }
        if !t.is_floating_point() {
            return Err(Error::WeightsMismatch {
                path: self.path.into(),
                reason: format!("tensor {name:?} has non-float dtype {:?}", t.kind()),
            });
        }
        let t = t.to_device(self.device).to_kind(self.kind).contiguous();
        self.bytes += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        Ok(t)
    }

    fn linear(&mut self, prefix: &str, out: i64, inp: i64) -> Result<Linear> {
        Ok(Linear {
            weight: self.take(&format!("{prefix}.weight"), &[out, inp])?,
            bias: self.take(&format!("{prefix}.bias"), &[out])?,
        })
    }

    fn norm(&mut self, prefix: &str, width: i64, eps: f64) -> Result<LayerNorm> {
        // Old checkpoints call the parameters gamma/beta.
        let (w, b) = if self.weights.contains_key(&format!("{prefix}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.{w}"), &[width])?,
            bias: self.take(&format!("{prefix}.{b}"), &[width])?,
            eps,
        })
    }
}

impl Bert {
    /// Loads the encoder from `path` onto `device` in `kind`. On any error, every tensor read
    /// so far is dropped before returning.
    pub(crate) fn load(path: &Path, cfg: &BertConfig, device: Device, kind: Kind) -> Result<Self> {
        let weights = read_weights(path)?;
        let mut l = Loader { weights, path, device, kind, bytes: 0 };
        let h = cfg.hidden_size as i64;
        let inter = cfg.intermediate_size as i64;
        let eps = cfg.layer_norm_eps;
        let word = l.take("embeddings.word_embeddings.weight", &[cfg.vocab_size as i64, h])?;
        let position =
            l.take("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings as i64, h])?;
        let token_type =
            l.take("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size as i64, h])?;
        let emb_norm = l.norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = l.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = l.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = l.linear(&format!("{p}.attention.self.value"), h, h)?;
            let qkv = Linear {
                weight: Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0),
                bias: Tensor::cat(&[&q.bias, &k.bias, &v.bias], 0),
            };
            // The separate q/k/v tensors are dropped here; the fused copy has the same size, so
            // the byte count taken while loading them stays right.
            drop((q, k, v));
            layers.push(Layer {
                qkv,
                attn_out: l.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: l.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                ffn_in: l.linear(&format!("{p}.intermediate.dense"), inter, h)?,
                ffn_out: l.linear(&format!("{p}.output.dense"), h, inter)?,
                ffn_norm: l.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        let heads = cfg.num_attention_heads as i64;
        let attention = AttentionPath::choose(device, kind, h / heads);
        Ok(Bert {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads,
            head_dim: h / heads,
            activation: cfg.activation,
            device,
            attention: Cell::new(attention),
            weight_bytes: l.bytes,
        })
    }

    /// The largest tensor (the word embeddings), for the planted-leak test build.
    #[cfg(feature = "planted-leak")]
    pub(crate) fn take_largest_tensor(&mut self) -> Tensor {
        std::mem::replace(&mut self.word, Tensor::zeros([1], (Kind::Float, Device::Cpu)))
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    /// The attention form the next forward pass runs (after a pass: the form it ran).
    pub(crate) fn attention_path(&self) -> AttentionPath {
        self.attention.get()
    }

    /// Runs the encoder on a batch without computing on padding; returns the last hidden state
    /// padded, `[b, len, hidden]`.
    ///
    /// Every projection and feed-forward matmul (nearly all the FLOPs) runs on the real tokens
    /// alone. Attention runs packed (no padding at all) where the flash kernel serves the
    /// model's device and dtype, else on the padded layout with `mask` keeping padding out of
    /// the keys (see [`crate::attention`]).
    pub(crate) fn forward(&self, t: &BatchInput) -> Tensor {
        let hidden = self.heads * self.head_dim;
        let x = t.ids.embedding_with(&self.word)
            + t.positions.embedding_with(&self.position)
            + t.type_ids.embedding_with(&self.token_type);
        let x = self.emb_norm.forward(&x);
        if self.attention.get() == AttentionPath::Packed {
            match self.encode_packed(&x, t) {
                Ok(h) => return t.pad(&h.narrow(0, 0, t.tokens)).view([t.b, t.len, hidden]),
                // Out of memory is not the kernel refusing: the batch is split and retried.
                Err(msg) if crate::worker::is_out_of_memory(&msg) => panic!("{msg}"),
                Err(msg) => {
                    tracing::warn!("packed flash attention failed, using padded attention from now on: {msg}");
                    self.attention.set(AttentionPath::Padded);
                    AttentionPath::Padded.prepare();
                }
            }
        }
        t.pad(&self.encode_padded(x.narrow(0, 0, t.tokens), t)).view([t.b, t.len, hidden])
    }

    /// The layers with packed attention; `Err` carries libtorch's message when the flash
    /// kernel refuses (a GPU or dtype it does not support).
    fn encode_packed(&self, x: &Tensor, t: &BatchInput) -> std::result::Result<Tensor, String> {
        let tokens = x.size()[0];
        let hidden = self.heads * self.head_dim;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x).view([tokens, 3, self.heads, self.head_dim]);
            let ctx = flash_varlen(&qkv.select(1, 0), &qkv.select(1, 1), &qkv.select(1, 2), &t.cu_seqlens, t.max_seqlen, scale)?
                .reshape([tokens, hidden]);
            x = self.feed_forward(layer, &ctx, &x);
        }
        Ok(x)
    }

    /// The layers with padded attention under the key mask; returns `[tokens, hidden]`.
    fn encode_padded(&self, mut x: Tensor, t: &BatchInput) -> Tensor {
        let (b, len) = (t.b, t.len);
        let hidden = self.heads * self.head_dim;
        // Boolean key mask, broadcast over heads and query positions: true = attend.
        let attn_mask = t.mask.to_kind(Kind::Bool).view([b, 1, 1, len]);
        for layer in &self.layers {
            let qkv = t.pad(&layer.qkv.forward(&x)).view([b, len, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&attn_mask), 0.0, false, None, false)
                .transpose(1, 2)
                .reshape([b * len, hidden]);
            x = self.feed_forward(layer, &t.unpad(ctx), &x);
        }
        x
    }

    /// Attention output projection, residual, norm, feed-forward, residual, norm.
    fn feed_forward(&self, layer: &Layer, ctx: &Tensor, x: &Tensor) -> Tensor {
        let a = layer.attn_norm.forward(&(layer.attn_out.forward(ctx) + x));
        let f = layer.ffn_in.forward(&a);
        let f = match self.activation {
            Activation::Gelu => f.gelu("none"),
            Activation::GeluTanh => f.gelu("tanh"),
            Activation::Relu => f.relu(),
        };
        layer.ffn_norm.forward(&(layer.ffn_out.forward(&f) + a))
    }
}

trait EmbeddingExt {
    fn embedding_with(&self, table: &Tensor) -> Tensor;
}

impl EmbeddingExt for Tensor {
    fn embedding_with(&self, table: &Tensor) -> Tensor {
        Tensor::embedding(table, self, -1, false, false)
    }
}

/// Pools `[batch, len, hidden]` states under `mask` (`[batch, len]`, 1 = token) into
/// `[batch, hidden]` f32 vectors.
pub(crate) fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Tensor {
    let hidden = hidden.to_kind(Kind::Float);
    match pooling {
        Pooling::Mean => {
            let m = mask.to_kind(Kind::Float).unsqueeze(-1);
            let sum = (&hidden * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let count = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).clamp_min(1e-9);
            sum / count
        }
        Pooling::Cls => hidden.select(1, 0),
        Pooling::Max => {
            let pad = mask.eq(0).unsqueeze(-1);
            hidden.masked_fill(&pad, f64::NEG_INFINITY).amax([1i64].as_slice(), false)
        }
        Pooling::LastToken => {
            // Right padding: the last real token sits at (number of tokens - 1).
            let last = (mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64) - 1).clamp_min(0);
            let (_, _, h) = hidden.size3().expect("hidden is 3-D");
            let idx = last.view([-1, 1, 1]).expand([-1, 1, h], false);
            hidden.gather(1, &idx, false).squeeze_dim(1)
        }
    }
}
