//! sentence-transformers' Pooling module: token vectors to one vector per input. Normalize
//! (the other parameter-free module) is applied by the worker on the host.

use tch::{Kind, Tensor};

use crate::model_dir::Pooling;

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
