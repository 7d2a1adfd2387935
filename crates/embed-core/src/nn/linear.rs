//! `x W^T + b` in its forms: plain, prepacked for oneDNN (float), int8 (prepacked for oneDNN's
//! int8 GEMM, or weight-only), and what int8's calibration records of each layer's inputs.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::{ffn, onednn, KernelError, LayerNorm};
use crate::profile::stage;

/// `x W^T + b`; the bias is absent in the families that drop it (ModernBERT, NomicBERT).
pub(crate) struct Linear {
    /// `[out, in]`; an empty placeholder once prepacked.
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    /// The weight in oneDNN's layout ([`Linear::prepack`], [`Linear::quantize`]).
    packed: std::cell::OnceCell<Packed>,
}

/// A weight reordered for oneDNN, in the model's float kind or in int8; or int8 weights used
/// as they are (weight-only: dequantized into the activations' kind for each matmul).
enum Packed {
    Float(Tensor),
    Int8(onednn::Int8Weight),
    /// `(q, scales, block)`: int8 `[out, in]`, the per-channel scales `[out]` in the model's
    /// kind, and the Hadamard block its rows were rounded in (0: none; CPU only), which each
    /// dequantization undoes.
    Int8WeightOnly(Tensor, Tensor, i64),
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, packed: std::cell::OnceCell::new() }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        observe(self, x);
        stage("linear", || match self.packed.get() {
            Some(Packed::Float(p)) => onednn::linear(x, p, self.bias.as_ref(), onednn::Fused::None),
            Some(Packed::Int8(w)) => w.linear(x, self.bias.as_ref(), onednn::Fused::None),
            // int8 values are exact in f16, bf16 and f32: the product is the quantized weight's.
            Some(Packed::Int8WeightOnly(q, scales, 0)) => x.linear(&(q.to_kind(x.kind()) * scales.unsqueeze(1)), self.bias.as_ref()),
            Some(Packed::Int8WeightOnly(q, scales, block)) => {
                x.linear(&onednn::dequant_hadamard(q, &scales.to_kind(Kind::Float), *block).to_kind(x.kind()), self.bias.as_ref())
            }
            None => x.linear(&self.weight, self.bias.as_ref()),
        })
    }

    /// `act(x W^T + b)` in one call when the weight is prepacked and `act` is a GELU; `None`
    /// otherwise (the caller applies `act` itself).
    pub(crate) fn forward_fused(&self, x: &Tensor, act: ffn::Activation) -> Option<Tensor> {
        let p = self.packed.get().filter(|p| !matches!(p, Packed::Int8WeightOnly(..)))?;
        let fused = match act {
            ffn::Activation::Gelu => onednn::Fused::Gelu,
            ffn::Activation::GeluTanh => onednn::Fused::GeluTanh,
            _ => return None,
        };
        Some(stage("linear", || match p {
            Packed::Float(p) => onednn::linear(x, p, self.bias.as_ref(), fused),
            Packed::Int8(w) => w.linear(x, self.bias.as_ref(), fused),
            Packed::Int8WeightOnly(..) => unreachable!("filtered above"),
        }))
    }

    /// `norm(x W^T + b + residual)`: a post-norm block's projection, residual and LayerNorm.
    /// For an int8 weight all in the output pass of the matmul; on the CPU in f32 and bf16 the
    /// residual and LayerNorm in one pass after it (`onednn::add_layer_norm`); elsewhere as
    /// libtorch's ops.
    pub(crate) fn forward_add_norm(&self, x: &Tensor, residual: &Tensor, norm: &LayerNorm) -> Tensor {
        if let Some(Packed::Int8(w)) = self.packed.get() {
            // (Never observed: calibration runs before the weight is quantized.)
            return stage("linear", || w.linear_add_norm(x, self.bias.as_ref(), residual, norm));
        }
        let y = self.forward(x);
        if y.device() == Device::Cpu && matches!(y.kind(), Kind::Float | Kind::BFloat16) && fused_cpu_norm() {
            return stage("residual_norm", || onednn::add_layer_norm(&y, residual, norm));
        }
        norm.forward(&stage("residual", || y + residual))
    }

    /// Reorders the weight once into oneDNN's layout for about `batch` rows and frees the
    /// dense copy. CPU only.
    pub(crate) fn prepack(&self, batch: i64) -> Result<(), KernelError> {
        if self.packed.get().is_some() {
            return Ok(());
        }
        let packed = onednn::pack(&self.weight, batch)?;
        self.replace_weight(Packed::Float(packed));
        Ok(())
    }

    /// Quantizes the weight to int8 per output channel, prepacks it for oneDNN's int8 GEMM at
    /// about `batch` rows and frees the dense copy; returns the bytes freed and the bytes the
    /// int8 weight holds. CPU only; the bias stays as it is (f32).
    /// `seen` is what [`observe_inputs`] recorded for this layer, if it ran.
    pub(crate) fn quantize(&self, batch: i64, seen: Option<&Observed>) -> Result<(u64, u64), KernelError> {
        if self.packed.get().is_some() {
            return Err(KernelError::Refused("the weight is already prepacked".into()));
        }
        let (out, inp) = self.weight.size2()?;
        let freed = (self.weight.numel() * self.weight.kind().elt_size_in_bytes()) as u64;
        let q = onednn::Int8Weight::quantize(&self.weight, batch, seen)?;
        let held = q.bytes(out, inp);
        self.replace_weight(Packed::Int8(q));
        Ok((freed, held))
    }

    /// Quantizes the weight to int8 per output channel (symmetric) and keeps it as it is, on
    /// its device, with the scales in the weight's kind; every matmul dequantizes it into the
    /// activations' kind (on the CPU, transformed back where [`onednn::round_weight_only`]
    /// rounded it in the Hadamard basis). For CUDA, and CPUs without VNNI.
    /// Returns the bytes freed and the bytes held.
    pub(crate) fn quantize_weight_only(&self) -> Result<(u64, u64), KernelError> {
        if self.packed.get().is_some() {
            return Err(KernelError::Refused("the weight is already prepacked".into()));
        }
        let kind = self.weight.kind();
        let freed = (self.weight.numel() * kind.elt_size_in_bytes()) as u64;
        let (q, scales, block) = onednn::round_weight_only(&self.weight.to_kind(Kind::Float), self.weight.device() == Device::Cpu);
        let scales = scales.squeeze_dim(1).to_kind(kind);
        let held = (q.numel() + scales.numel() * kind.elt_size_in_bytes()) as u64;
        self.replace_weight(Packed::Int8WeightOnly(q, scales, block));
        Ok((freed, held))
    }

    fn replace_weight(&self, packed: Packed) {
        let _ = self.packed.set(packed);
        // Every handle of the dense weight sees the placeholder: its storage is freed.
        self.weight.shallow_clone().set_data(&Tensor::empty([0], (self.weight.kind(), self.weight.device())));
    }

    /// One matmul for several projections of the same input (Q, K, V): rows stacked.
    pub(crate) fn fuse(parts: Vec<Linear>) -> Linear {
        let weight = Tensor::cat(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>(), 0);
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(Tensor::cat(&parts.iter().filter_map(|p| p.bias.as_ref()).collect::<Vec<_>>(), 0))
        } else {
            None
        };
        Linear::new(weight, bias)
    }
}

/// Whether CPU post-norm blocks fuse the residual into LayerNorm (the model's
/// `tuning.cpu_fused_norm`; off for comparison).
fn fused_cpu_norm() -> bool {
    super::tuning::Tuning::current().cpu_fused_norm
}

/// What a linear layer saw as input during int8's calibration ([`observe_inputs`]).
pub(crate) struct Observed {
    /// f32 `[in]`: each input channel's largest magnitude.
    pub(crate) amax: Tensor,
    /// f32 `[rows, in]`: input rows spread over the calibration batch (at most about
    /// [`OBSERVED_ROWS`]), to measure candidate quantizations on.
    pub(crate) rows: Tensor,
}

/// Input rows kept per layer in calibration.
const OBSERVED_ROWS: i64 = 256;

/// [`Observed`] per linear layer, keyed by the layer's address.
pub(crate) type Calibration = HashMap<usize, Observed>;

thread_local! {
    /// Set while [`observe_inputs`] runs on this thread.
    static OBSERVED: std::cell::RefCell<Option<Calibration>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns what every [`Linear`] it called saw as input: int8's calibration. The
/// layers must not move before the map is used.
pub(crate) fn observe_inputs<T>(f: impl FnOnce() -> T) -> (T, Calibration) {
    OBSERVED.with(|o| *o.borrow_mut() = Some(HashMap::new()));
    // Cleared also when `f` panics.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            OBSERVED.with(|o| o.borrow_mut().take());
        }
    }
    let reset = Reset;
    let out = f();
    let seen = OBSERVED.with(|o| o.borrow_mut().take()).unwrap_or_default();
    drop(reset);
    (out, seen)
}

fn observe(linear: &Linear, x: &Tensor) {
    OBSERVED.with(|o| {
        if let Some(seen) = o.borrow_mut().as_mut() {
            let k = x.size().last().copied().unwrap_or(0);
            let x = x.detach().to_kind(Kind::Float).reshape([-1, k]);
            let amax = x.abs().amax([0], false);
            // Rows spread over the whole batch (it is sorted by length), not its first ones.
            let n = x.size()[0];
            let x = x.slice(0, 0, n, (n / OBSERVED_ROWS).max(1));
            let key = linear as *const Linear as usize;
            let merged = match seen.remove(&key) {
                Some(prev) => {
                    let room = (OBSERVED_ROWS - prev.rows.size()[0]).clamp(0, x.size()[0]);
                    let rows = if room > 0 { Tensor::cat(&[prev.rows, x.narrow(0, 0, room)], 0) } else { prev.rows };
                    Observed { amax: prev.amax.maximum(&amax), rows }
                }
                None => Observed { amax, rows: x.narrow(0, 0, x.size()[0].min(OBSERVED_ROWS)).copy() },
            };
            seen.insert(key, merged);
        }
    });
}


/// The rows of `w` (`[rows, cols]`, any float kind) in int8, symmetric, one scale per row:
/// `(q int8 [rows, cols], scales f32 [rows, 1])` with `w ≈ q * scales` and `q` in [-127, 127].
/// The one rounding that every int8 weight and table (and its simulation) goes through.
pub(crate) fn quantize_rows(w: &Tensor) -> (Tensor, Tensor) {
    let w = w.to_kind(Kind::Float);
    let scales = w.abs().amax([1], true).clamp_min(1e-12) / 127.0;
    let q = (&w / &scales).round().clamp(-127, 127).to_kind(Kind::Int8);
    (q, scales)
}
