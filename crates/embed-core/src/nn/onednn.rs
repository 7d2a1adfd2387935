//! oneDNN's prepacked linear on the CPU, through the C++ shim (`shim/onednn.cpp`): the weight
//! is reordered once, at load, into the blocked layout oneDNN's bf16 GEMM wants, instead of on
//! every call; a following GELU can be fused into the same call. In int8 ([`Int8Weight`]) the
//! weight is quantized per output channel and prepacked for oneDNN's int8 GEMM, and the
//! activations are quantized per row on every call, after a block Hadamard transform that the
//! weight carries the inverse of.

use std::ffi::{c_void, CString};

use tch::Tensor;

use super::{quantize_rows, KernelError, Observed};
use crate::ffi::shim_tensor;
use crate::ffi::{embed_add_layer_norm, embed_hadamard_rows, embed_int8_dequant_hadamard, embed_int8_linear, embed_int8_pack_linear, embed_onednn_linear, embed_onednn_pack_linear};

/// A tensor handle for the shim, or null for an absent optional.
fn ptr(t: Option<&Tensor>) -> *const c_void {
    t.map_or(std::ptr::null(), |t| t.as_ptr().cast())
}

/// `w` (`[out, in]`, contiguous, on the CPU) reordered for oneDNN's GEMM at about `batch` rows.
pub(crate) fn pack(w: &Tensor, batch: i64) -> Result<Tensor, KernelError> {
    // SAFETY (here and in every call below): tch tensor handles are `at::Tensor*`; the shim
    // only reads them, takes null for an absent optional, and catches every C++ exception.
    shim_tensor(|out, err, len| unsafe { embed_onednn_pack_linear(w.as_ptr().cast(), batch, out, err, len) })
}

/// A fused activation after the matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fused {
    None,
    /// Exact GELU (erf).
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
}

/// `x W^T + b` (then the fused activation) on a weight from [`pack`].
pub(crate) fn linear(x: &Tensor, packed: &Tensor, bias: Option<&Tensor>, fused: Fused) -> Tensor {
    let (attr, algorithm) = match fused {
        Fused::None => ("none", None),
        Fused::Gelu => ("gelu", Some("none")),
        Fused::GeluTanh => ("gelu", Some("tanh")),
    };
    let attr = CString::new(attr).expect("no NUL");
    let algorithm = algorithm.map(|a| CString::new(a).expect("no NUL"));
    let algorithm = algorithm.as_ref().map_or(std::ptr::null(), |a| a.as_ptr());
    // SAFETY: as in `pack`; a null algorithm is the op's `None`.
    let y = shim_tensor(|out, err, len| unsafe {
        embed_onednn_linear(x.as_ptr().cast(), packed.as_ptr().cast(), ptr(bias), attr.as_ptr(), algorithm, out, err, len)
    });
    // A failure here is a libtorch error like any other op's: tch panics on those too, and the
    // worker turns a panic into the batch's error.
    y.unwrap_or_else(|e| e.context("oneDNN linear failed").raise())
}

/// `norm(x + residual)` in one pass over each row (f32 or bf16 on the CPU, `norm`'s tensors of
/// the same dtype): a post-norm block's residual and LayerNorm.
pub(crate) fn add_layer_norm(x: &Tensor, residual: &Tensor, norm: &super::LayerNorm) -> Tensor {
    let (w, b) = (norm.weight.as_ptr().cast(), ptr(norm.bias.as_ref()));
    // SAFETY: as in `pack`.
    shim_tensor(|out, err, len| unsafe { embed_add_layer_norm(x.as_ptr().cast(), residual.as_ptr().cast(), w, b, norm.eps, out, err, len) })
        .unwrap_or_else(|e| e.context("fused residual LayerNorm failed").raise())
}

/// Output channels the smoothing candidates are measured on (at most).
const PROBE_CHANNELS: i64 = 256;

/// Largest Hadamard block: each doubling costs one more butterfly pass, and in a simulation on
/// MiniLM (whose width 384 allows no power of two above 128) a full-width transform (a 3-point
/// DCT times blocks of 128; not checked in) did no better than blocks of 128.
const HADAMARD_MAX: i64 = 128;
/// Smallest Hadamard block worth running: below it a block spreads an outlier over too few
/// channels to matter.
const HADAMARD_MIN: i64 = 16;

/// The Hadamard block for an input of `k` channels ([`block_for`]), or 0 where the model's
/// `tuning.int8_hadamard` turns the transform off (for comparison).
pub(crate) fn hadamard_block(k: i64) -> i64 {
    if super::tuning::Tuning::current().int8_hadamard {
        block_for(k)
    } else {
        0
    }
}

/// The largest power of two up to [`HADAMARD_MAX`] dividing `k`, or 0 (none) below
/// [`HADAMARD_MIN`].
fn block_for(k: i64) -> i64 {
    let b = if k > 0 { (k & -k).min(HADAMARD_MAX) } else { 0 };
    if b >= HADAMARD_MIN { b } else { 0 }
}

/// The rows of `x` (`[rows, k]`, f32) times the block-diagonal Hadamard matrix of order-`block`
/// blocks, normalized (orthogonal and symmetric, so its own inverse): what the shim applies to
/// each input row (with the normalization in `x_mul`), and what a weight's rows go through so
/// that the product is unchanged. Computed by the shim's own butterflies (7 additions per value
/// for blocks of 128). `block` 0 returns `x`.
pub(crate) fn hadamard_rows(x: &Tensor, block: i64) -> Tensor {
    if block == 0 {
        return x.shallow_clone();
    }
    // SAFETY: as in `pack`.
    shim_tensor(|out, err, len| unsafe { embed_hadamard_rows(x.as_ptr().cast(), block, out, err, len) })
        .unwrap_or_else(|e| e.context("Hadamard transform failed").raise())
}

/// `w` (f32 `[out, in]`) rounded for weight-only int8: `(q, scales [out, 1], block)`, with `w`
/// ≈ `hadamard_rows(q * scales, block)`. On the CPU (`cpu`) the rows are rounded after the block
/// Hadamard transform where that keeps the weight closer than rounding it as it is: a trained
/// layer's heavy-tailed rows round finer transformed, rows as flat as a uniform draw finer as
/// they are (the transform makes them Gaussian). Undoing it per matmul is the shim's
/// butterflies, a few additions per weight against the matmul's `rows` products.
pub(crate) fn round_weight_only(w: &Tensor, cpu: bool) -> (Tensor, Tensor, i64) {
    let block = if cpu { hadamard_block(w.size()[1]) } else { 0 };
    if block == 0 {
        let (q, scales) = quantize_rows(w);
        return (q, scales, 0);
    }
    let rounded = |block| {
        let rows = hadamard_rows(w, block);
        let (q, scales) = quantize_rows(&rows);
        // The transform is orthogonal: the rounding error is the same in either basis.
        let err = f64::try_from((q.to_kind(tch::Kind::Float) * &scales - rows).norm()).unwrap_or(f64::INFINITY);
        (q, scales, block, err)
    };
    let (plain, transformed) = (rounded(0), rounded(block));
    let (q, scales, block, _) = if transformed.3 < plain.3 { transformed } else { plain };
    (q, scales, block)
}

/// The f32 weight a [`round_weight_only`] rounding with `block` > 0 stands for:
/// `hadamard_rows(q * scales, block)` (`q` int8 `[out, in]` contiguous, `scales` f32 `[out]`),
/// in one pass of the shim.
pub(crate) fn dequant_hadamard(q: &Tensor, scales: &Tensor, block: i64) -> Tensor {
    // SAFETY: as in `pack`.
    shim_tensor(|out, err, len| unsafe { embed_int8_dequant_hadamard(q.as_ptr().cast(), scales.as_ptr().cast(), block, out, err, len) })
        .unwrap_or_else(|e| e.context("int8 dequantization failed").raise())
}

/// `w` rounded as its int8 form holds it (per output channel, symmetric), in f32.
fn simulate_weight(w: &Tensor) -> Tensor {
    let (q, scales) = quantize_rows(w);
    q.to_kind(tch::Kind::Float) * scales
}

/// `x` rounded as the int8 linear quantizes its input rows (per row, asymmetric, 255 steps
/// over the row's range widened to hold 0), in f32: what `shim/onednn.cpp` computes.
fn simulate_activations(x: &Tensor) -> Tensor {
    let lo = x.amin([1], true).clamp_max(0.0);
    let hi = x.amax([1], true).clamp_min(0.0);
    let step = ((&hi - &lo) / 255.0).clamp_min(1e-30);
    let zero = (-&lo / &step).round();
    (((x / &step).round() + &zero).clamp(0, 255) - zero) * step
}

/// `x W^T` as the int8 linear computes it with smoothing `s` and Hadamard `block`, in f32 ops.
fn simulate(x: &Tensor, w: &Tensor, s: &Tensor, block: i64) -> Tensor {
    simulate_activations(&hadamard_rows(&(x / s), block)).matmul(&simulate_weight(&hadamard_rows(&(w * s), block)).tr())
}

/// A linear layer's weight in int8: symmetric per output channel (`w ≈ q * scale`, `q` in
/// [-127, 127]), prepacked for oneDNN's int8 GEMM.
pub(crate) struct Int8Weight {
    packed: Tensor,
    /// f32 `[in]`: multiplies each input channel before the Hadamard transform and the
    /// quantization (the inverse of the smoothing factor the weight's columns were multiplied
    /// by, ones without calibration; times the transform's normalization `1 / sqrt(block)`).
    x_mul: Tensor,
    /// The Hadamard block (0: none) the input rows go through before they are quantized; the
    /// weight's rows went through the same transform.
    block: i64,
    /// f32 `[out]`.
    scales: Tensor,
    /// int64 zeros `[out]` (the op takes per-channel zero points).
    zeros: Tensor,
    /// f32 `[out]`: each output channel's scale times the sum of its int8 weights, which
    /// corrects the GEMM for each input row's own zero point.
    colsum: Tensor,
}

impl Int8Weight {
    /// Quantizes `w` (`[out, in]`, any float kind, on the CPU) and prepacks it for about
    /// `batch` rows of input.
    ///
    /// Two transforms of the input make its per-row quantization finer, each undone exactly by
    /// the weight (up to the weight's own rounding):
    /// - smoothing, as in SmoothQuant: channel c of the input is divided by
    ///   `s_c = (amax_x_c)^α / (amax_w_c)^(1-α)` and column c of the weight multiplied by it, so
    ///   one loud channel no longer sets every token's quantization step alone;
    /// - a Hadamard transform over blocks of [`hadamard_block`] channels (input rows and weight
    ///   rows alike), which spreads what remains of any channel's range over its block: a row's
    ///   step then follows its typical magnitude. It cut the f32-to-int8 error (1 − mean
    ///   cosine) 2.5-fold on all-MiniLM-L6-v2's corpus texts, 6.6-fold on all-mpnet-base-v2's.
    ///
    /// With calibration inputs (`seen`) α (none, 0.25, 0.5, 0.75) and the transform (on, off)
    /// are chosen per layer, as the pair whose quantized output is closest to the f32 output on
    /// the calibration rows. Without them there is no smoothing and the transform is on.
    pub(crate) fn quantize(w: &Tensor, batch: i64, seen: Option<&Observed>) -> Result<Int8Weight, KernelError> {
        let w = w.to_kind(tch::Kind::Float);
        let inp = w.size()[1];
        let ones = || Tensor::ones([inp], (tch::Kind::Float, tch::Device::Cpu));
        let rotation = hadamard_block(inp);
        let (s, block) = match seen {
            Some(seen) => {
                // Each output channel is quantized on its own, so a spread of them (every
                // step-th row, across fused Q, K and V alike) measures the candidates.
                let out = w.size()[0];
                let probe = w.slice(0, 0, out, (out / PROBE_CHANNELS).max(1));
                let exact = seen.rows.matmul(&probe.tr());
                let norm = f64::try_from(exact.norm()).unwrap_or(0.0).max(1e-30);
                let w_amax = w.abs().amax([0], false).clamp_min(1e-5);
                let x_amax = seen.amax.clamp_min(1e-5);
                let mut best: Option<(f64, Tensor, i64)> = None;
                for block in if rotation > 0 { vec![rotation, 0] } else { vec![0] } {
                    for alpha in [0.0, 0.25, 0.5, 0.75] {
                        let s = if alpha == 0.0 { ones() } else { x_amax.pow_tensor_scalar(alpha) / w_amax.pow_tensor_scalar(1.0 - alpha) };
                        let got = simulate(&seen.rows, &probe, &s, block);
                        let err = f64::try_from((got - &exact).norm()).unwrap_or(f64::INFINITY) / norm;
                        if best.as_ref().is_none_or(|(e, ..)| err < *e) {
                            best = Some((err, s, block));
                        }
                    }
                }
                let (err, s, block) = best.expect("at least four candidates");
                tracing::debug!(inputs = inp, outputs = out, block, smoothing_mean = f64::try_from(s.mean(tch::Kind::Float)).unwrap_or(f64::NAN), err, "int8 layer quantized");
                (s, block)
            }
            None => (ones(), rotation),
        };
        Self::quantize_as(&w, batch, &s, block)
    }

    /// `w` (f32) quantized with smoothing `s` (f32 `[in]`) and Hadamard `block`, prepacked.
    fn quantize_as(w: &Tensor, batch: i64, s: &Tensor, block: i64) -> Result<Int8Weight, KernelError> {
        let w = hadamard_rows(&(w * s), block);
        let x_mul = if block > 0 { s.reciprocal() / (block as f64).sqrt() } else { s.reciprocal() };
        let (q, scales) = quantize_rows(&w);
        let scales = scales.squeeze_dim(1);
        // SAFETY: as in `pack`.
        let packed = shim_tensor(|out, err, len| unsafe { embed_int8_pack_linear(q.as_ptr().cast(), batch, out, err, len) })?;
        let zeros = Tensor::zeros(scales.size(), (tch::Kind::Int64, tch::Device::Cpu));
        let colsum = q.to_kind(tch::Kind::Float).sum_dim_intlist(&[1i64][..], false, tch::Kind::Float) * &scales;
        Ok(Int8Weight { packed, x_mul: x_mul.contiguous(), block, scales, zeros, colsum })
    }

    /// The Hadamard block its inputs go through (0: none).
    #[cfg(test)]
    pub(crate) fn block(&self) -> i64 {
        self.block
    }

    /// Bytes it holds: one per weight, plus each output channel's scale, zero point and column
    /// sum and each input channel's multiplier.
    pub(crate) fn bytes(&self, out: i64, inp: i64) -> u64 {
        (out * inp + out * (4 + 8 + 4) + inp * 4) as u64
    }

    /// `act(x W^T + b)` for f32 `x`; the bias is f32 too.
    pub(crate) fn linear(&self, x: &Tensor, bias: Option<&Tensor>, fused: Fused) -> Tensor {
        let gelu = match fused {
            Fused::None => 0,
            Fused::Gelu => 1,
            Fused::GeluTanh => 2,
        };
        self.call(x, bias, gelu, None)
    }

    /// `norm(x W^T + b + residual)` in one output pass: a post-norm block's residual and
    /// LayerNorm fused into the linear layer before them. All f32; `residual` has the output's
    /// shape.
    pub(crate) fn linear_add_norm(&self, x: &Tensor, bias: Option<&Tensor>, residual: &Tensor, norm: &super::LayerNorm) -> Tensor {
        self.call(x, bias, 0, Some((residual, norm)))
    }

    fn call(&self, x: &Tensor, bias: Option<&Tensor>, gelu: i32, add_norm: Option<(&Tensor, &super::LayerNorm)>) -> Tensor {
        let (residual, ln_weight, ln_bias, eps) = match add_norm {
            Some((r, n)) => (Some(r), Some(&n.weight), n.bias.as_ref(), n.eps),
            None => (None, None, None, 0.0),
        };
        // SAFETY: as in `pack`.
        let y = shim_tensor(|out, err, len| unsafe {
            embed_int8_linear(
                x.as_ptr().cast(),
                self.x_mul.as_ptr().cast(),
                self.block,
                self.packed.as_ptr().cast(),
                self.scales.as_ptr().cast(),
                self.zeros.as_ptr().cast(),
                self.colsum.as_ptr().cast(),
                ptr(bias),
                gelu,
                ptr(residual),
                ptr(ln_weight),
                ptr(ln_bias),
                eps,
                out,
                err,
                len,
            )
        });
        y.unwrap_or_else(|e| e.context("oneDNN int8 linear failed").raise())
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    /// Inputs with what int8 must survive: an outlier channel, a one-sided row, a zero row.
    fn inputs(rows: i64, k: i64) -> Tensor {
        tch::manual_seed(7);
        let x = Tensor::randn([rows, k], (Kind::Float, tch::Device::Cpu));
        let _ = x.narrow(1, 3, 1).g_mul_scalar_(40.0);
        let _ = x.narrow(0, 1, 1).abs_();
        let _ = x.narrow(0, 2, 1).zero_();
        x
    }

    #[test]
    #[cfg_attr(not(embed_cpu_vnni), ignore = "oneDNN int8 GEMM needs VNNI, which the CPU that built these tests lacks")]
    fn int8_linear_computes_what_its_rounding_says() {
        let (rows, k, n) = (37, 64, 96);
        let x = inputs(rows, k);
        let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)) * 0.1;
        let b = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
        let q = Int8Weight::quantize(&w, rows, None).unwrap();
        let got = q.linear(&x, Some(&b), Fused::None);
        assert_eq!(got.size(), [rows, n]);
        // The kernel's passes (zero points, row scales, column sums) against the same rounding
        // done in f32 ops: only float summation order differs.
        assert_eq!(q.block(), hadamard_block(64), "64 input channels: one Hadamard block (unless turned off)");
        let ones = Tensor::ones([k], (Kind::Float, tch::Device::Cpu));
        let expected = simulate(&x, &w, &ones, q.block()) + &b;
        let tol = 1e-4 * f64::try_from(expected.abs().max()).unwrap();
        assert!(max_abs(&got, &expected) <= tol, "kernel vs simulation: {}", max_abs(&got, &expected));
        // The zero row gives the bias alone; without a bias the same output less the bias.
        assert!(max_abs(&got.get(2), &b) <= 1e-6);
        let unbiased = q.linear(&x, None, Fused::None);
        assert!(max_abs(&(unbiased + &b), &got) <= 1e-4);
        // And int8 is near the exact product: per-token rounding of 255 steps.
        let exact = x.matmul(&w.tr()) + &b;
        let rel = max_abs(&got, &exact) / f64::try_from(exact.abs().max()).unwrap();
        assert!(rel < 0.02, "int8 vs exact: {rel}");
    }

    #[test]
    #[cfg_attr(not(embed_cpu_vnni), ignore = "oneDNN int8 GEMM needs VNNI, which the CPU that built these tests lacks")]
    fn calibrated_smoothing_never_does_worse_on_its_calibration_rows() {
        let (rows, k, n) = (64, 128, 48);
        let x = inputs(rows, k);
        let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)) * 0.1;
        let exact = x.matmul(&w.tr());
        let err = |q: &Int8Weight| f64::try_from((q.linear(&x, None, Fused::None) - &exact).norm()).unwrap();
        let plain = Int8Weight::quantize(&w, rows, None).unwrap();
        let seen = Observed { amax: x.abs().amax([0], false), rows: x.copy() };
        let smoothed = Int8Weight::quantize(&w, rows, Some(&seen)).unwrap();
        assert!(err(&smoothed) <= err(&plain) * 1.0001, "smoothed {} vs plain {}", err(&smoothed), err(&plain));
        // With an outlier channel 40x the others, smoothing is chosen and helps.
        assert!(err(&smoothed) < 0.8 * err(&plain), "smoothed {} vs plain {}", err(&smoothed), err(&plain));
    }

    #[test]
    fn fused_gelu_is_gelu_of_the_output() {
        let x = inputs(33, 64) * 0.2;
        let w = Tensor::randn([80, 64], (Kind::Float, tch::Device::Cpu)) * 0.3;
        let b = Tensor::randn([80], (Kind::Float, tch::Device::Cpu));
        let q = Int8Weight::quantize(&w, 33, None).unwrap();
        let y = q.linear(&x, Some(&b), Fused::None);
        for (fused, approximate) in [(Fused::Gelu, "none"), (Fused::GeluTanh, "tanh")] {
            let got = q.linear(&x, Some(&b), fused);
            let d = max_abs(&got, &y.gelu(approximate));
            assert!(d <= 2e-6 * f64::try_from(y.abs().max()).unwrap().max(1.0), "{approximate}: {d}");
        }
    }

    #[test]
    fn fused_residual_layer_norm_is_layer_norm_of_the_sum() {
        let (rows, k, n) = (29, 64, 48);
        let x = inputs(rows, k);
        let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)) * 0.2;
        let b = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
        let residual = Tensor::randn([rows, n], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let q = Int8Weight::quantize(&w, rows, None).unwrap();
        for bias in [Some(Tensor::randn([n], (Kind::Float, tch::Device::Cpu))), None] {
            let norm = super::super::LayerNorm { weight: Tensor::rand([n], (Kind::Float, tch::Device::Cpu)) + 0.5, bias, eps: 1e-12 };
            let got = q.linear_add_norm(&x, Some(&b), &residual, &norm);
            let expected = (q.linear(&x, Some(&b), Fused::None) + &residual).layer_norm([n], Some(&norm.weight), norm.bias.as_ref(), norm.eps, false);
            assert!(max_abs(&got, &expected) <= 1e-5, "{}", max_abs(&got, &expected));
        }
    }

    #[test]
    fn fused_add_layer_norm_matches_libtorch_in_f32_and_bf16() {
        tch::manual_seed(3);
        let (rows, n) = (19, 96);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = (Tensor::randn([rows, n], (Kind::Float, tch::Device::Cpu)) * 4.0).to_kind(kind);
            let r = Tensor::randn([rows, n], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
            for bias in [Some(Tensor::randn([n], (Kind::Float, tch::Device::Cpu)).to_kind(kind)), None] {
                let norm = super::super::LayerNorm { weight: (Tensor::rand([n], (Kind::Float, tch::Device::Cpu)) + 0.5).to_kind(kind), bias, eps: 1e-5 };
                let got = add_layer_norm(&x, &r, &norm).to_kind(Kind::Float);
                let expected = (&x + &r).layer_norm([n], Some(&norm.weight), norm.bias.as_ref(), norm.eps, false).to_kind(Kind::Float);
                // f32: summation order only; bf16: at most one rounding step of the output.
                let tol = if kind == Kind::Float { 1e-5 } else { 0.02 };
                assert!(max_abs(&got, &expected) <= tol, "{kind:?}: {}", max_abs(&got, &expected));
            }
        }
    }

    #[test]
    fn hadamard_blocks_are_their_own_inverse_and_keep_the_product() {
        assert_eq!([block_for(384), block_for(1536), block_for(96), block_for(1152)], [128, 128, 32, 128]);
        assert_eq!([block_for(37), block_for(8), block_for(24), block_for(0)], [0, 0, 0, 0]);
        let x = Tensor::randn([5, 96], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([7, 96], (Kind::Float, tch::Device::Cpu));
        let (hx, hw) = (hadamard_rows(&x, 32), hadamard_rows(&w, 32));
        assert!(max_abs(&hadamard_rows(&hx, 32), &x) <= 1e-5);
        assert!(max_abs(&hx.matmul(&hw.tr()), &x.matmul(&w.tr())) <= 1e-4);
        // Against the dense Sylvester matrix, for every path of the shim (scalar butterflies
        // under 16, lane shuffles at 16, whole vectors above).
        for block in [2i64, 8, 16, 32, 64, 128] {
            let mut h = Tensor::ones([1, 1], (Kind::Float, tch::Device::Cpu));
            while h.size()[0] < block {
                h = Tensor::cat(&[Tensor::cat(&[&h, &h], 1), Tensor::cat(&[&h, &(-&h)], 1)], 0);
            }
            let x = Tensor::randn([3, 2 * block], (Kind::Float, tch::Device::Cpu));
            let dense = x.reshape([3, 2, block]).matmul(&h).reshape([3, 2 * block]) / (block as f64).sqrt();
            assert!(max_abs(&hadamard_rows(&x, block), &dense) <= 1e-5, "block {block}");
        }
        let e = shim_tensor(|out, err, len| unsafe { embed_hadamard_rows(x.as_ptr().cast(), 64, out, err, len) }).unwrap_err().to_string();
        assert!(e.contains("block 64 is not a power of two dividing 96"), "{e}");
        // Dequantizing in the shim's one pass is scaling, then the same transform.
        let (q, scales) = quantize_rows(&w);
        let d = dequant_hadamard(&q, &scales.squeeze_dim(1), 32);
        assert!(max_abs(&d, &hadamard_rows(&(q.to_kind(Kind::Float) * &scales), 32)) <= 1e-5);
        // Block by block: the second block of the output depends on the second block only.
        let y = hadamard_rows(&x.narrow(1, 32, 32).contiguous(), 32);
        assert!(max_abs(&hx.narrow(1, 32, 32), &y) <= 1e-6);
    }

    #[test]
    fn the_hadamard_transform_makes_int8_closer_to_exact() {
        // Rows like a LayerNorm's output: most channels near one, a few loud ones.
        let (rows, k, n) = (48, 256, 64);
        let x = inputs(rows, k);
        let _ = x.narrow(1, 100, 1).g_mul_scalar_(15.0);
        let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu)) * 0.1;
        let exact = x.matmul(&w.tr());
        let ones = Tensor::ones([k], (Kind::Float, tch::Device::Cpu));
        let err = |block| {
            let q = Int8Weight::quantize_as(&w, rows, &ones, block).unwrap();
            f64::try_from((q.linear(&x, None, Fused::None) - &exact).norm()).unwrap()
        };
        let (plain, rotated) = (err(0), err(128));
        assert!(rotated < 0.5 * plain, "rotated {rotated} vs plain {plain}");
    }

    #[test]
    fn weight_only_rounds_in_the_basis_that_keeps_the_weight_closer() {
        let x = Tensor::randn([16, 128], (Kind::Float, tch::Device::Cpu));
        // `w` rounded as it is: what weight-only int8 computes without the transform.
        let plain = |w: &Tensor| x.matmul(&simulate_weight(w).tr());
        let weight_only = |w: &Tensor| {
            let l = super::super::Linear::new(w.copy(), None);
            l.quantize_weight_only().unwrap();
            l.forward(&x)
        };
        // Heavy-tailed rows, as a trained layer's: a few large weights per row set its step.
        tch::manual_seed(11);
        let heavy = Tensor::randn([32, 128], (Kind::Float, tch::Device::Cpu)) * 0.05;
        let _ = heavy.narrow(1, 7, 2).g_mul_scalar_(12.0);
        let exact = x.matmul(&heavy.tr());
        let (got, base) = (weight_only(&heavy), plain(&heavy));
        let err = |y: &Tensor| f64::try_from((y - &exact).norm()).unwrap();
        if hadamard_block(128) > 0 {
            assert!(err(&got) < 0.5 * err(&base), "transformed {} vs plain {}", err(&got), err(&base));
        } else {
            assert!(max_abs(&got, &base) <= 1e-5, "EMBED_INT8_HADAMARD=0: plain rounding");
        }
        // Flat rows (a uniform draw) round finer as they are: the weight is left untransformed.
        let flat = Tensor::rand([32, 128], (Kind::Float, tch::Device::Cpu)) - 0.5;
        assert!(max_abs(&weight_only(&flat), &plain(&flat)) <= 1e-5);
    }

    #[test]
    fn a_block_that_does_not_divide_the_input_is_refused() {
        let w = Tensor::randn([8, 48], (Kind::Float, tch::Device::Cpu));
        let q = Int8Weight::quantize_as(&w, 4, &Tensor::ones([48], (Kind::Float, tch::Device::Cpu)), 0).unwrap();
        let bad = Int8Weight { block: 32, ..q };
        let x = Tensor::randn([4, 48], (Kind::Float, tch::Device::Cpu));
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bad.linear(&x, None, Fused::None))).unwrap_err();
        let msg = crate::panic_message(e.as_ref());
        assert!(msg.contains("Hadamard block 32 is not a power of two dividing 48"), "{msg}");
    }

    #[test]
    #[cfg_attr(not(embed_cpu_vnni), ignore = "oneDNN int8 GEMM needs VNNI, which the CPU that built these tests lacks")]
    fn odd_shapes_and_a_single_row() {
        // Widths no SIMD lane or oneDNN block divides, one row, and a 3-D input; inputs of three
        // Hadamard blocks of 128 and of 16.
        for (rows, k, n) in [(1, 37, 29), (5, 3, 130), (17, 129, 1), (3, 384, 20), (9, 48, 5)] {
            let x = Tensor::randn([rows, k], (Kind::Float, tch::Device::Cpu));
            let w = Tensor::randn([n, k], (Kind::Float, tch::Device::Cpu));
            let b = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
            let q = Int8Weight::quantize(&w, rows, None).unwrap();
            let got = q.linear(&x, Some(&b), Fused::None);
            let ones = Tensor::ones([k], (Kind::Float, tch::Device::Cpu));
            assert_eq!(q.block(), hadamard_block(k));
            let expected = simulate(&x, &w, &ones, q.block()) + &b;
            let tol = 1e-4 * f64::try_from(expected.abs().max()).unwrap().max(1.0);
            assert!(max_abs(&got, &expected) <= tol, "{rows}x{k}->{n}: {}", max_abs(&got, &expected));
        }
        // Blocks under one vector of 16 take the shim's scalar butterflies.
        let (x, w) = (Tensor::randn([6, 24], (Kind::Float, tch::Device::Cpu)), Tensor::randn([10, 24], (Kind::Float, tch::Device::Cpu)));
        let ones = Tensor::ones([24], (Kind::Float, tch::Device::Cpu));
        for block in [2, 8] {
            let got = Int8Weight::quantize_as(&w, 6, &ones, block).unwrap().linear(&x, None, Fused::None);
            let expected = simulate(&x, &w, &ones, block);
            let tol = 1e-4 * f64::try_from(expected.abs().max()).unwrap().max(1.0);
            assert!(max_abs(&got, &expected) <= tol, "block {block}: {}", max_abs(&got, &expected));
        }
        let x = Tensor::randn([2, 3, 16], (Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([8, 16], (Kind::Float, tch::Device::Cpu));
        let q = Int8Weight::quantize(&w, 6, None).unwrap();
        let got = q.linear(&x, None, Fused::None);
        assert_eq!(got.size(), [2, 3, 8]);
        assert!(max_abs(&got.reshape([6, 8]), &q.linear(&x.reshape([6, 16]), None, Fused::None)) == 0.0);
    }
}
