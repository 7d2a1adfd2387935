//! Rotary position embeddings (RoPE), in the "rotate half" layout: the head's first and second
//! halves form the pairs that are rotated together.

use tch::{Kind, Tensor};

/// The inverse frequencies of one rotary setting: `1 / theta^(2i / dim)`, f32 on the device.
pub(crate) struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    pub(crate) fn new(head_dim: i64, theta: f64, device: tch::Device) -> Rotary {
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponent).reciprocal();
        Rotary { inv_freq }
    }

    /// Linear scaling: every frequency divided by `factor` (positions stretched by it).
    pub(crate) fn scaled(self, factor: f64) -> Rotary {
        Rotary { inv_freq: self.inv_freq / factor }
    }

    /// cos and sin for the first `n` positions of the batch's stream, in `kind`.
    pub(crate) fn table(&self, positions: &Tensor, n: i64, kind: Kind) -> RotaryTable {
        let pos = positions.narrow(0, 0, n).to_kind(Kind::Float);
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let angles = Tensor::cat(&[&freqs, &freqs], 1);
        RotaryTable { cos: angles.cos().to_kind(kind).unsqueeze(1), sin: angles.sin().to_kind(kind).unsqueeze(1) }
    }
}

/// cos and sin per token, `[n, 1, head_dim]` (broadcast over heads).
pub(crate) struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    /// Rotates `x` (`[n, heads, head_dim]`).
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[2] / 2;
        let rotated = Tensor::cat(&[x.narrow(2, half, half).neg(), x.narrow(2, 0, half)], 2);
        x * &self.cos + rotated * &self.sin
    }
}
