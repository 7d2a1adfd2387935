//! Rotary position embeddings (RoPE), in the "rotate half" layout: the head's first and second
//! halves form the pairs that are rotated together.

use tch::{Kind, Tensor};

/// One rotary setting. Its inverse frequencies, `1 / theta^(2i / dim)` (divided by a linear
/// scaling factor), are computed on the batch's device with each table: the model holds no
/// tensor for them, so everything it holds on the device is a weight (and moves with the
/// weights when the model is offloaded).
pub(crate) struct Rotary {
    head_dim: i64,
    theta: f64,
    factor: Option<f64>,
}

impl Rotary {
    pub(crate) fn new(head_dim: i64, theta: f64) -> Rotary {
        Rotary { head_dim, theta, factor: None }
    }

    /// Linear scaling: every frequency divided by `factor` (positions stretched by it).
    pub(crate) fn scaled(self, factor: f64) -> Rotary {
        Rotary { factor: Some(factor), ..self }
    }

    fn inv_freq(&self, device: tch::Device) -> Tensor {
        let exponent = Tensor::arange_start_step(0, self.head_dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / self.head_dim as f64;
        let inv_freq = Tensor::pow_scalar(self.theta, &exponent).reciprocal();
        match self.factor {
            Some(f) => inv_freq / f,
            None => inv_freq,
        }
    }

    /// cos and sin for the first `n` positions of the batch's stream, in `kind`.
    pub(crate) fn table(&self, positions: &Tensor, n: i64, kind: Kind) -> RotaryTable {
        let pos = positions.narrow(0, 0, n).to_kind(Kind::Float);
        let freqs = pos.unsqueeze(1) * self.inv_freq(positions.device()).unsqueeze(0);
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
