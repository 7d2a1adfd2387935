//! LayerNorm and RMSNorm over the last dimension.

use tch::{Kind, Tensor};

use crate::profile::stage;

/// LayerNorm over the last dimension, with or without a bias.
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let width = self.weight.size()[0];
        stage("layer_norm", || x.layer_norm([width], Some(&self.weight), self.bias.as_ref(), self.eps, true))
    }
}

/// RMSNorm over the last dimension, computed in f32 and scaled in the input's dtype (as the
/// Llama-line reference implementations do).
pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f64,
    /// Gemma's form: scale by `1 + weight` in f32, then cast (the Llama line casts, then
    /// scales by `weight`).
    pub(crate) gemma: bool,
}

impl RmsNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        stage("rms_norm", || self.forward_inner(x))
    }

    fn forward_inner(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim([-1i64].as_slice(), true, Kind::Float);
        let normed = xf * (var + self.eps).rsqrt();
        if self.gemma {
            (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
        } else {
            &self.weight * normed.to_kind(kind)
        }
    }
}
