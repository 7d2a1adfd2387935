//! How the encoder runs attention, and the libtorch entry points tch does not bind.
//!
//! Two shapes of the same computation:
//! * **Packed** (CUDA, f16/bf16): sequences back to back as `[tokens, heads, head_dim]` and
//!   FlashAttention-2's variable-length kernel (`aten::_flash_attention_forward` with
//!   cumulative sequence lengths). Nothing is padded and no mask is built; one kernel whatever
//!   the mix of lengths.
//! * **Padded** (CPU, f32, and any GPU the flash kernel refuses): one sequence per row under a
//!   key mask, through libtorch's `scaled_dot_product_attention`.
//!
//! Why not always the padded form on CUDA: on Hopper with cuDNN newer than 9.15, libtorch
//! 2.11 tries cuDNN's attention first for f16/bf16, and cuDNN builds (and NVRTC-compiles) an
//! execution plan for every new `(batch, length)` shape. Length-sorted dynamic batches almost
//! never repeat a shape, so every batch paid tens of milliseconds of CPU time and the GPU sat
//! 3–12 % busy. The packed path avoids SDPA's dispatch entirely; where the padded path is used
//! for f16/bf16 on CUDA, cuDNN's backend is switched off for the process (flash cannot take a
//! mask, so memory-efficient attention runs instead).
//!
//! The model's `tuning.cuda_attention` (`EMBED_CUDA_ATTENTION` for embed-server) overrides the choice for diagnosis and benchmarks: `packed`, `padded`,
//! or `sdpa` (libtorch's own dispatch with nothing switched off: the behaviour before the packed
//! path existed).

use tch::{Kind, Tensor};

use super::rotary::RotaryTable;
use super::{BatchInput, KernelError, LenGroup};

mod plan;

pub(crate) use plan::{AttentionPlan, AttentionSupport, CpuLayout};
use crate::ffi::{embed_cpu_attention_varlen, embed_flash_attention_varlen, embed_sdp_disable_cudnn};

/// Which attention form a loaded model runs on its device (its [`AttentionPlan`] holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionPath {
    /// Variable-length flash attention over packed sequences.
    Packed,
    /// Padded SDPA under a key mask (cuDNN's backend off when on CUDA in half precision).
    Padded,
    /// Padded SDPA with libtorch's dispatch untouched (diagnostic).
    Sdpa,
}

impl AttentionPath {
    /// Process-wide settings the path needs (CUDA, half precision only).
    pub(crate) fn prepare(self) {
        if self == AttentionPath::Padded {
            // SAFETY: the shim catches every C++ exception.
            unsafe { embed_sdp_disable_cudnn() };
        }
    }
}

/// FlashAttention-2 over packed sequences: `q`, `k`, `v` are `[tokens, heads, head_dim]`
/// (last dimension contiguous), `cu_seqlens` int32 `[batch + 1]` on the same device.
/// Returns `[tokens, heads, head_dim]`, or libtorch's error message.
pub(crate) fn flash_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
    scale: f64,
) -> Result<Tensor, KernelError> {
    // SAFETY: tch tensor handles are `at::Tensor*`; the shim only reads them and catches every
    // C++ exception.
    crate::ffi::shim_tensor(|out, err, len| unsafe {
        embed_flash_attention_varlen(q.as_ptr().cast(), k.as_ptr().cast(), v.as_ptr().cast(), cu_seqlens.as_ptr().cast(), max_len, scale, out, err, len)
    })
}

/// Which keys a query at position `i` of its sequence sees: `i - left ..= i + right` (`None`:
/// unbounded on that side), always within the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reach {
    pub(crate) left: Option<i64>,
    pub(crate) right: Option<i64>,
}

impl Reach {
    /// Every token of the sequence (an encoder's key mask).
    pub(crate) const ALL: Reach = Reach { left: None, right: None };

    /// Keys within `half` positions either way (a bidirectional sliding window).
    pub(crate) fn window(half: i64) -> Reach {
        Reach { left: Some(half), right: Some(half) }
    }

    /// The query and the keys before it; with `window`, only the last `window` of them
    /// (`i - window < j <= i`).
    pub(crate) fn causal(window: Option<i64>) -> Reach {
        Reach { left: window.map(|w| w - 1), right: Some(0) }
    }
}

/// Self-attention of the batch's sequences on the CPU, each over its own tokens only (the
/// shim's variable-length kernel). `q` is `[tokens, heads * head_dim]`, `k` and `v` `[tokens,
/// kv_heads * head_dim]` (`kv_heads` dividing `heads`: grouped-query attention), f32 or bf16,
/// each row's values contiguous (views of one fused projection will do); sequence `s` of `b` on
/// rows `cu_seqlens[s]..cu_seqlens[s + 1]` (int32). `rel_bias` (f32 `[heads, 2c + 1]`, see
/// [`Scores::Relative`]) is added to the scaled scores. Returns `[tokens, heads * head_dim]` in
/// q's kind.
pub(crate) fn cpu_varlen(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (heads, kv_heads): (i64, i64),
    cu_seqlens: &Tensor,
    b: i64,
    reach: Reach,
    rel_bias: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor, KernelError> {
    let bias = rel_bias.map_or(std::ptr::null(), |t| t.as_ptr().cast());
    let (left, right) = (reach.left.unwrap_or(-1), reach.right.unwrap_or(-1));
    // SAFETY: tch tensor handles are `at::Tensor*`; the shim only reads them, checks every
    // shape, stride and bound, and catches every C++ exception.
    crate::ffi::shim_tensor(|out, err, len| unsafe {
        embed_cpu_attention_varlen(
            q.as_ptr().cast(),
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            cu_seqlens.as_ptr().cast(),
            b,
            heads,
            kv_heads,
            left,
            right,
            bias,
            scale,
            out,
            err,
            len,
        )
    })
}

/// [`cpu_varlen`] on one fused projection `[tokens, 3 * hidden]` (Q, K, V in that order).
fn cpu_varlen_fused(qkv: &Tensor, heads: i64, t: &BatchInput, reach: Reach, rel_bias: Option<&Tensor>, scale: f64) -> Result<Tensor, KernelError> {
    let hidden = qkv.size()[1] / 3;
    let part = |i: i64| qkv.narrow(1, i * hidden, hidden);
    cpu_varlen((&part(0), &part(1), &part(2)), (heads, heads), &t.cu_seqlens, t.b, reach, rel_bias, scale)
}

/// Attention over separate Q `[n, heads, head_dim]` and K, V `[n, kv_heads, head_dim]` (the
/// decoder families' layout, grouped-query where `kv_heads < heads`), `n` the real tokens:
/// the CPU's variable-length kernel over `reach` on a batch marked `varlen`, else padded SDPA
/// under `mask` (`None`: causal). `scale` defaults to `1 / sqrt(head_dim)`. Returns
/// `[n, heads * head_dim]`.
pub(crate) fn split_heads(q: &Tensor, k: &Tensor, v: &Tensor, t: &BatchInput, reach: Reach, mask: Option<&Tensor>, scale: Option<f64>) -> Tensor {
    crate::profile::stage("attention", || {
        let (n, heads, d) = (q.size()[0], q.size()[1], q.size()[2]);
        let kv_heads = k.size()[1];
        if t.varlen {
            let flat = |x: &Tensor| x.reshape([n, -1]);
            let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
            return cpu_varlen((&flat(q), &flat(k), &flat(v)), (heads, kv_heads), &t.cu_seqlens, t.b, reach, None, scale).unwrap_or_else(|e| e.raise());
        }
        let (q, k, v) = (heads_padded(q, t), heads_padded(k, t), heads_padded(v, t));
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, mask.is_none(), scale, heads != kv_heads)
            .transpose(1, 2)
            .reshape([t.b * t.len, heads * d]);
        t.unpad(ctx)
    })
}

/// What a padded attention call masks its scores with.
#[derive(Clone, Copy)]
pub(crate) enum Scores<'a> {
    /// The key mask (`key_mask`): each sequence sees all of its own tokens.
    Keys(&'a Tensor),
    /// A sliding window (`window_mask`) of this half width within each sequence.
    Window(&'a Tensor, i64),
    /// An additive float bias (`-inf` at masked keys): padded SDPA only.
    Bias(&'a Tensor),
    /// A learned bias per query-key distance, f32 `[heads, 2c + 1]`: entry `c + j - i` for
    /// query `i` and key `j` (`c` at least the longest sequence's length - 1). The
    /// variable-length kernel's form of a distance bias; a batch not marked `varlen` is given
    /// [`Scores::Bias`] instead.
    Relative(&'a Tensor),
}

impl Scores<'_> {
    fn mask(&self) -> &Tensor {
        match self {
            Scores::Keys(m) | Scores::Window(m, _) | Scores::Bias(m) | Scores::Relative(m) => m,
        }
    }

    /// What the variable-length kernel takes, `(reach, distance bias)`; `None` where it cannot
    /// take the scores.
    fn varlen(&self) -> Option<(Reach, Option<&Tensor>)> {
        match self {
            Scores::Keys(_) => Some((Reach::ALL, None)),
            Scores::Window(_, w) => Some((Reach::window(*w), None)),
            Scores::Relative(table) => Some((Reach::ALL, Some(table))),
            Scores::Bias(_) => None,
        }
    }
}

/// The layout one forward pass runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The whole token stream, filler included; attention through the varlen kernel.
    Packed,
    /// The real tokens only; attention on the padded layout under a mask.
    Padded,
}

/// Runs an encoder over a batch and returns the last hidden state padded, `[b, len, hidden]`.
///
/// `encode(mode)` gets the layout and returns `[n, hidden]`: `n` is the stream (packed) or the
/// real tokens (padded). Packed runs where `plan` says so; if the kernel refuses (a GPU or
/// dtype it does not support), the plan turns padded for good and the batch is rerun.
/// Out of memory is not the kernel refusing: it is raised ([`KernelError::raise`]), and the
/// runtime splits the batch.
pub(crate) fn run_encoder(
    plan: &AttentionPlan,
    t: &BatchInput,
    hidden: i64,
    encode: impl Fn(Mode) -> Result<Tensor, KernelError>,
) -> Tensor {
    if plan.packed() && !t.masked_keys {
        match encode(Mode::Packed) {
            Ok(h) => return t.pad(&h.narrow(0, 0, t.tokens)).view([t.b, t.len, hidden]),
            Err(e @ KernelError::OutOfMemory(_)) => e.raise(),
            Err(KernelError::Refused(msg)) => plan.fall_back_to_padded(&msg),
        }
    }
    match encode(Mode::Padded) {
        Ok(h) => t.pad(&h).view([t.b, t.len, hidden]),
        Err(e) => e.raise(),
    }
}

/// The boolean key mask of the padded layout, `[b, 1, 1, len]`: true = attend.
pub(crate) fn key_mask(t: &BatchInput) -> Tensor {
    t.mask.to_kind(Kind::Bool).view([t.b, 1, 1, t.len])
}

/// The key mask restricted to a sliding window, `[b, 1, len, len]`: a query at `i` sees the
/// keys `j` with `|i - j| <= half_window`.
pub(crate) fn window_mask(t: &BatchInput, half_window: i64) -> Tensor {
    let pos = Tensor::arange(t.len, (Kind::Int64, t.mask.device()));
    let distance = (pos.unsqueeze(1) - pos.unsqueeze(0)).abs();
    distance.le(half_window).view([1, 1, t.len, t.len]).logical_and(&key_mask(t))
}

/// `[n, heads, head_dim]` token rows → `[b, heads, len, head_dim]` on the padded layout (zeros
/// at the padding), as SDPA takes them.
pub(crate) fn heads_padded(x: &Tensor, t: &BatchInput) -> Tensor {
    let (heads, head_dim) = (x.size()[1], x.size()[2]);
    t.pad(&x.reshape([-1, heads * head_dim])).view([t.b, t.len, heads, head_dim]).transpose(1, 2)
}

/// A padded batch's attention mask (broadcast to `[b, heads, len, len]`: a key mask, a window
/// or a float bias) cut to one run of rows and its length.
fn group_mask(mask: &Tensor, b: i64, len: i64, g: &LenGroup) -> Tensor {
    let size = mask.size();
    let mut m = mask.shallow_clone();
    if size.len() == 4 {
        if size[0] == b {
            m = m.narrow(0, g.first, g.count);
        }
        for dim in [2, 3] {
            if size[dim] == len {
                m = m.narrow(dim as i64, 0, g.len);
            }
        }
    }
    m
}

/// Multi-head self-attention over fused `[n, 3 * hidden]` projections (Q, K, V in that order).
pub(crate) struct SelfAttention {
    pub(crate) heads: i64,
    pub(crate) head_dim: i64,
}

impl SelfAttention {
    /// Returns the context `[n, hidden]`. `rope` rotates Q and K; `scores` (padded mode only)
    /// holds a boolean mask or an additive float bias broadcast to `[b, heads, len, len]`. On
    /// the CPU a batch marked `varlen` runs key masks and windows without padding.
    pub(crate) fn forward(
        &self,
        qkv: &Tensor,
        t: &BatchInput,
        mode: Mode,
        rope: Option<&RotaryTable>,
        scores: Scores,
    ) -> Result<Tensor, KernelError> {
        let mask = scores.mask();
        let n = qkv.size()[0];
        let hidden = self.heads * self.head_dim;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let qkv = match rope {
            None => qkv.shallow_clone(),
            Some(r) => {
                let qkv = qkv.view([n, 3, self.heads, self.head_dim]);
                let (q, k) = (r.apply(&qkv.select(1, 0)), r.apply(&qkv.select(1, 1)));
                Tensor::stack(&[q, k, qkv.select(1, 2)], 1).view([n, 3 * hidden])
            }
        };
        match mode {
            Mode::Packed => {
                let qkv = qkv.view([n, 3, self.heads, self.head_dim]);
                let ctx = flash_varlen(&qkv.select(1, 0), &qkv.select(1, 1), &qkv.select(1, 2), &t.cu_seqlens, t.max_seqlen, scale)?;
                Ok(ctx.reshape([n, hidden]))
            }
            Mode::Padded => {
                if let (true, Some((reach, bias))) = (t.varlen, scores.varlen()) {
                    return cpu_varlen_fused(&qkv, self.heads, t, reach, bias, scale);
                }
                if let Scores::Relative(_) = scores {
                    return Err(KernelError::Refused("a distance-bias table reached padded attention (the batch is not varlen)".into()));
                }
                let (b, len) = (t.b, t.len);
                let qkv = t.pad(&qkv).view([b, len, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
                let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
                let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor| {
                    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, Some(scale), false)
                };
                if t.groups.is_empty() {
                    let ctx = sdpa(&q, &k, &v, mask).transpose(1, 2).reshape([b * len, hidden]);
                    return Ok(t.unpad(ctx));
                }
                // Each run of similar lengths on its own padded length. Every real token lies
                // inside its run's length, so the rows unpad reads are all written.
                let ctx = Tensor::empty([b, len, self.heads, self.head_dim], (q.kind(), q.device()));
                for g in &t.groups {
                    let part = |x: &Tensor| x.narrow(0, g.first, g.count).narrow(2, 0, g.len);
                    let c = sdpa(&part(&q), &part(&k), &part(&v), &group_mask(mask, b, len, g));
                    ctx.narrow(0, g.first, g.count).narrow(1, 0, g.len).copy_(&c.transpose(1, 2));
                }
                Ok(t.unpad(ctx.view([b * len, hidden])))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Reference: each sequence alone through libtorch's SDPA under an explicit mask (and the
    /// distance bias as a float mask), key-value heads repeated for their query heads.
    fn sdpa_reference((q, k, v): (&Tensor, &Tensor, &Tensor), lens: &[i64], (heads, kv_heads): (i64, i64), reach: Reach, rel: Option<&Tensor>, scale: f64) -> Tensor {
        let d = q.size()[1] / heads;
        let mut out = Vec::new();
        let mut start = 0;
        for &len in lens {
            let rows = |x: &Tensor, h: i64| {
                let x = x.narrow(0, start, len).to_kind(Kind::Float).view([len, h, d]).transpose(0, 1);
                x.repeat_interleave_self_int(heads / h, Some(0), None)
            };
            let pos = Tensor::arange(len, (Kind::Int64, Device::Cpu));
            let ahead = pos.unsqueeze(0) - pos.unsqueeze(1); // [i, j] = j - i
            let mut mask = Tensor::ones([len, len], (Kind::Bool, Device::Cpu));
            if let Some(l) = reach.left {
                mask = mask.logical_and(&(-&ahead).le(l));
            }
            if let Some(r) = reach.right {
                mask = mask.logical_and(&ahead.le(r));
            }
            let mut mask = mask.view([1, len, len]);
            if let Some(table) = rel {
                // [heads, len, len]: entry c + j - i of each head's row, -inf out of reach.
                let c = (table.size()[1] - 1) / 2;
                let bias = table.index_select(1, &(&ahead + c).flatten(0, 1)).view([heads, len, len]);
                mask = bias.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
            }
            let ctx = Tensor::scaled_dot_product_attention(&rows(q, heads), &rows(k, kv_heads), &rows(v, kv_heads), Some(&mask), 0.0, false, Some(scale), false);
            out.push(ctx.transpose(0, 1).reshape([len, heads * d]));
            start += len;
        }
        Tensor::cat(&out, 0)
    }

    fn cu_seqlens(lens: &[i64]) -> Tensor {
        let mut cu = vec![0i32];
        for &l in lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        Tensor::from_slice(&cu)
    }

    /// `q`, `k`, `v` through the kernel and through SDPA, in f32 and in bf16.
    fn check((q, k, v): (&Tensor, &Tensor, &Tensor), lens: &[i64], heads: (i64, i64), reach: Reach, rel: Option<&Tensor>, what: &str) {
        let d = q.size()[1] / heads.0;
        let scale = 1.0 / (d as f64).sqrt();
        let cu = cu_seqlens(lens);
        let b = lens.len() as i64;
        let expected = sdpa_reference((q, k, v), lens, heads, reach, rel, scale);
        let got = cpu_varlen((q, k, v), heads, &cu, b, reach, rel, scale).unwrap();
        assert_eq!(got.size(), expected.size());
        let diff = (&got - &expected).abs().max().double_value(&[]);
        assert!(diff <= 2e-5, "f32, {what}: max difference {diff}");

        let half = |x: &Tensor| x.to_kind(Kind::BFloat16);
        let (q, k, v) = (half(q), half(k), half(v));
        let expected = sdpa_reference((&q, &k, &v), lens, heads, reach, rel, scale);
        let got = cpu_varlen((&q, &k, &v), heads, &cu, b, reach, rel, scale).unwrap();
        assert_eq!(got.kind(), Kind::BFloat16);
        // Two bf16 steps (2^-8 of the largest output each): the output's own rounding and the
        // sums' different order.
        let diff = (got.to_kind(Kind::Float) - &expected).abs().max().double_value(&[]);
        let bound = expected.abs().max().double_value(&[]) / 128.0;
        assert!(diff <= bound, "bf16, {what}: max difference {diff} > {bound}");
    }

    /// The kernel against SDPA on one fused QKV projection (the encoders' layout, read through
    /// strided views): lengths below, at and past one vector of keys (16), head sizes that are
    /// and are not a multiple of 16, whole sequences, sliding windows, a distance bias.
    #[test]
    fn cpu_varlen_matches_sdpa_on_a_fused_projection() {
        tch::manual_seed(7);
        let lens = [40i64, 17, 16, 5, 1, 23];
        let tokens: i64 = lens.iter().sum();
        for (heads, d) in [(3i64, 20i64), (2, 32), (1, 64)] {
            let qkv = Tensor::randn([tokens, 3 * heads * d], (Kind::Float, Device::Cpu)) * 2.0;
            let part = |i: i64| qkv.narrow(1, i * heads * d, heads * d);
            // A distance bias as MPNet's (wider than needed: c = 41 for sequences up to 40).
            let table = Tensor::randn([heads, 83], (Kind::Float, Device::Cpu));
            for (reach, rel) in [(Reach::ALL, None), (Reach::window(3), None), (Reach::window(0), None), (Reach::ALL, Some(&table))] {
                let what = format!("heads {heads}, head size {d}, {reach:?}, distance bias {}", rel.is_some());
                check((&part(0), &part(1), &part(2)), &lens, (heads, heads), reach, rel, &what);
            }
        }
    }

    /// Decoders' layout: separate Q, K and V, four query heads on two key-value heads, causal
    /// with and without a window, and bidirectional.
    #[test]
    fn cpu_varlen_matches_sdpa_with_grouped_query_heads() {
        tch::manual_seed(11);
        let lens = [33i64, 16, 9, 1];
        let tokens: i64 = lens.iter().sum();
        let (heads, kv_heads, d) = (4i64, 2i64, 24i64);
        let q = Tensor::randn([tokens, heads * d], (Kind::Float, Device::Cpu)) * 2.0;
        let k = Tensor::randn([tokens, kv_heads * d], (Kind::Float, Device::Cpu)) * 2.0;
        let v = Tensor::randn([tokens, kv_heads * d], (Kind::Float, Device::Cpu));
        for reach in [Reach::causal(None), Reach::causal(Some(4)), Reach::causal(Some(1)), Reach::ALL] {
            check((&q, &k, &v), &lens, (heads, kv_heads), reach, None, &format!("{reach:?}"));
        }
    }

    #[test]
    fn cpu_varlen_refuses_what_does_not_fit() {
        let zeros = |n: i64, w: i64| Tensor::zeros([n, w], (Kind::Float, Device::Cpu));
        let (q, kv) = (zeros(10, 16), zeros(10, 16));
        let run = |q: &Tensor, k: &Tensor, heads, lens: &[i64], rel: Option<&Tensor>| {
            cpu_varlen((q, k, k), heads, &cu_seqlens(lens), lens.len() as i64, Reach::ALL, rel, 1.0).unwrap_err().to_string()
        };
        let err = run(&q, &kv, (2, 2), &[4, 7], None);
        assert!(err.contains("cu_seqlens spans 11 rows, q has 10"), "{err}");
        let err = run(&q, &kv, (5, 5), &[4, 6], None);
        assert!(err.contains("16 query columns are not 5 heads sharing 5 key-value heads"), "{err}");
        let err = run(&q, &zeros(10, 24), (2, 2), &[4, 6], None);
        assert!(err.contains("k and v must have 2 heads of 8"), "{err}");
        let err = run(&q, &zeros(9, 16), (2, 2), &[4, 6], None);
        assert!(err.contains("one dtype and row count"), "{err}");
        let err = run(&q.to_kind(Kind::Double), &kv.to_kind(Kind::Double), (2, 2), &[4, 6], None);
        assert!(err.contains("f32 or bf16"), "{err}");
        // A distance table too narrow for the longest sequence (6 tokens need 11 entries).
        let err = run(&q, &kv, (2, 2), &[4, 6], Some(&zeros(2, 9)));
        assert!(err.contains("rel_bias must be f32 [2, odd >= 11]"), "{err}");
    }
}
