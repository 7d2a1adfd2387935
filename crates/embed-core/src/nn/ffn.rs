//! Feed-forward blocks: the classic two-layer MLP and the gated (GLU) variants.

use tch::Tensor;

pub(crate) use crate::model_dir::arch::Activation;

use super::{LayerNorm, Linear};
use crate::nn::tensor_fields;

impl Activation {
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// `out(act(in(x)))`.
pub(crate) struct Mlp {
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) act: Activation,
}

impl Mlp {
    fn hidden(&self, x: &Tensor) -> Tensor {
        match self.up.forward_fused(x, self.act) {
            Some(a) => a,
            None => {
                let h = self.up.forward(x);
                crate::profile::stage("activation", || self.act.apply(&h))
            }
        }
    }
}

/// Gated feed-forward: `out(act(a) * g)` where `[a, g]` is one projection of `x` split in
/// two halves (GeGLU with GELU, SwiGLU with SiLU).
pub(crate) struct Glu {
    /// `[2 * inter, hidden]`: the activated half's rows first, then the gate's.
    pub(crate) up: Linear,
    pub(crate) down: Linear,
    pub(crate) act: Activation,
}

impl Glu {
    /// A preemption point (`nn::preempt`) sits between the two projections.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.hidden(x);
        crate::nn::preempt::within_layer();
        self.down.forward(&h)
    }

    fn hidden(&self, x: &Tensor) -> Tensor {
        let h = self.up.forward(x);
        let inter = h.size()[1] / 2;
        crate::profile::stage("activation", || self.act.apply(&h.narrow(1, 0, inter)) * h.narrow(1, inter, inter))
    }
}

/// Either feed-forward form, for blocks shared by families that differ only there.
pub(crate) enum FeedForward {
    Mlp(Mlp),
    Glu(Glu),
}

impl FeedForward {
    /// `norm(ffn(x) + x)`, the post-norm block's second half (fused where the down
    /// projection is int8; see [`Linear::forward_add_norm`]).
    /// A preemption point (`nn::preempt`) sits between the two projections.
    pub(crate) fn forward_add_norm(&self, x: &Tensor, norm: &LayerNorm) -> Tensor {
        let (h, down) = match self {
            FeedForward::Mlp(m) => (m.hidden(x), &m.down),
            FeedForward::Glu(g) => (g.hidden(x), &g.down),
        };
        crate::nn::preempt::within_layer();
        down.forward_add_norm(&h, x, norm)
    }
}

tensor_fields!(Mlp: up, down);
tensor_fields!(Glu: up, down);
impl crate::nn::Tensors for FeedForward {
    fn linears<'a>(&'a self, out: &mut Vec<&'a crate::nn::Linear>) {
        match self {
            FeedForward::Mlp(m) => m.linears(out),
            FeedForward::Glu(g) => g.linears(out),
        }
    }

    fn tensors<'a>(&'a self, out: &mut Vec<&'a tch::Tensor>) {
        match self {
            FeedForward::Mlp(m) => m.tensors(out),
            FeedForward::Glu(g) => g.tensors(out),
        }
    }
}
