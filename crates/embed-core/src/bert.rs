//! The BERT encoder forward pass on libtorch, weights loaded by name from safetensors.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

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
    /// Bytes held by the weights on the model's device.
    pub(crate) weight_bytes: u64,
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

    /// Runs the encoder on a batch without computing on padding.
    ///
    /// The batch is `b` sequences padded to `len`; `ids`, `type_ids` and `positions` hold only
    /// the real tokens (`[tokens]`, sequences back to back), and `rows` says where each real
    /// token sits in the padded `[b * len]` layout. Every projection and feed-forward matmul
    /// (nearly all the FLOPs) runs on the real tokens alone; only attention, which needs one
    /// sequence per row, sees the padded layout, with `mask` (`[b, len]`, 1 = token) keeping
    /// padding out of the keys. Returns the last hidden state padded, `[b, len, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        mask: &Tensor,
        b: i64,
        len: i64,
    ) -> Tensor {
        let tokens = ids.size()[0];
        let dense = tokens == b * len;
        let hidden = self.heads * self.head_dim;
        let x = ids.embedding_with(&self.word) + positions.embedding_with(&self.position) + type_ids.embedding_with(&self.token_type);
        let mut x = self.emb_norm.forward(&x);
        // Boolean key mask, broadcast over heads and query positions: true = attend.
        let attn_mask = mask.to_kind(Kind::Bool).view([b, 1, 1, len]);
        let pad = |t: &Tensor| -> Tensor {
            if dense {
                t.shallow_clone()
            } else {
                let width = t.size()[1];
                Tensor::zeros([b * len, width], (t.kind(), t.device())).index_copy(0, rows, t)
            }
        };
        let unpad = |t: Tensor| -> Tensor { if dense { t } else { t.index_select(0, rows) } };
        for layer in &self.layers {
            let qkv = pad(&layer.qkv.forward(&x)).view([b, len, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&attn_mask), 0.0, false, None, false)
                .transpose(1, 2)
                .reshape([b * len, hidden]);
            let ctx = unpad(ctx);
            let a = layer.attn_norm.forward(&(layer.attn_out.forward(&ctx) + &x));
            let f = layer.ffn_in.forward(&a);
            let f = match self.activation {
                Activation::Gelu => f.gelu("none"),
                Activation::GeluTanh => f.gelu("tanh"),
                Activation::Relu => f.relu(),
            };
            x = layer.ffn_norm.forward(&(layer.ffn_out.forward(&f) + a));
        }
        pad(&x).view([b, len, hidden])
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
