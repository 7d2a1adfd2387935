//! The building blocks the model families are made of, on libtorch: linear layers (plain,
//! prepacked for oneDNN, int8), norms, embeddings, attention and rotary positions, the
//! feed-forward and post-norm blocks, and weights read by name from a checkpoint. Nothing
//! here knows a family, a worker or a request: `models/` composes these, `runtime/` runs them.

pub(crate) mod attention;
pub(crate) mod batch;
pub(crate) mod block;
pub(crate) mod embedding;
pub(crate) mod ffn;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod onednn;
pub(crate) mod preempt;
pub(crate) mod rotary;
pub(crate) mod torch_pickle;
pub(crate) mod tuning;
pub(crate) mod weights;

pub(crate) use batch::{length_groups, BatchInput, LenGroup};
pub(crate) use embedding::{embed, lookup, quantize_table, Embeddings, Int8Table};
pub(crate) use linear::{observe_inputs, quantize_rows, Calibration, Linear, Observed};
pub(crate) use norm::{LayerNorm, RmsNorm};
pub(crate) use weights::Weights;
/// How a kernel fails (shared with the runtime, which splits a batch on `OutOfMemory`).
pub(crate) use crate::error::KernelError;

use tch::Tensor;


/// Every tensor a part of a loaded model holds, as handles: what moving the model between
/// device and host memory (`crate::runtime::offload`) must move. A part lists each field that
/// holds a tensor; the offload tests check the handles cover `weight_bytes` exactly.
pub(crate) trait Tensors {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>);
    /// The linear layers among them whose weight is theirs alone (prepacking replaces it).
    fn linears<'a>(&'a self, _out: &mut Vec<&'a Linear>) {}
}

impl Tensors for Tensor {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        out.push(self);
    }
}

impl<T: Tensors> Tensors for Option<T> {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        if let Some(t) = self {
            t.tensors(out);
        }
    }

    fn linears<'a>(&'a self, out: &mut Vec<&'a Linear>) {
        if let Some(t) = self {
            t.linears(out);
        }
    }
}

impl<T: Tensors> Tensors for Vec<T> {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        for t in self {
            t.tensors(out);
        }
    }

    fn linears<'a>(&'a self, out: &mut Vec<&'a Linear>) {
        for t in self {
            t.linears(out);
        }
    }
}

/// `impl Tensors` for a struct from the fields that hold tensors.
macro_rules! tensor_fields {
    ($ty:ty: $($field:ident),+) => {
        impl $crate::nn::Tensors for $ty {
            fn tensors<'a>(&'a self, out: &mut Vec<&'a tch::Tensor>) {
                $( $crate::nn::Tensors::tensors(&self.$field, out); )+
            }

            fn linears<'a>(&'a self, out: &mut Vec<&'a $crate::nn::Linear>) {
                $( $crate::nn::Tensors::linears(&self.$field, out); )+
            }
        }
    };
}
pub(crate) use tensor_fields;

impl Tensors for Linear {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        self.weight.tensors(out);
        self.bias.tensors(out);
    }

    fn linears<'a>(&'a self, out: &mut Vec<&'a Linear>) {
        out.push(self);
    }
}
tensor_fields!(LayerNorm: weight, bias);
tensor_fields!(RmsNorm: weight);

impl Tensors for Embeddings {
    fn tensors<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        self.word.tensors(out);
        if let Some((table, _)) = &self.position {
            table.tensors(out);
        }
        self.token_type.tensors(out);
        self.norm.tensors(out);
    }
}
