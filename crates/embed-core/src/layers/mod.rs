//! Building blocks shared by the model families: weights by name, linear, LayerNorm and RMSNorm,
//! the batch as the device sees it, attention, rotary embeddings and the feed-forward blocks.

pub(crate) mod attention;
pub(crate) mod block;
pub(crate) mod ffn;
pub(crate) mod onednn;
pub(crate) mod rotary;
pub(crate) mod torch_pickle;
pub(crate) mod weights;

pub(crate) use weights::Weights;

/// Whether libtorch's message `msg` reports memory running out (CUDA's caching allocator, the
/// CPU allocator): the worker splits such a batch instead of failing it.
pub(crate) fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("can't allocate memory") || m.contains("outofmemory")
}

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::profile::stage;
use crate::Result;

/// Every tensor a part of a loaded model holds, as handles: what moving the model between
/// device and host memory (`crate::models::offload`) must move. A part lists each field that
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
        impl $crate::layers::Tensors for $ty {
            fn tensors<'a>(&'a self, out: &mut Vec<&'a tch::Tensor>) {
                $( $crate::layers::Tensors::tensors(&self.$field, out); )+
            }

            fn linears<'a>(&'a self, out: &mut Vec<&'a $crate::layers::Linear>) {
                $( $crate::layers::Tensors::linears(&self.$field, out); )+
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
    pub(crate) fn prepack(&self, batch: i64) -> std::result::Result<(), String> {
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
    pub(crate) fn quantize(&self, batch: i64, seen: Option<&Observed>) -> std::result::Result<(u64, u64), String> {
        if self.packed.get().is_some() {
            return Err("the weight is already prepacked".into());
        }
        let (out, inp) = self.weight.size2().map_err(|e| e.to_string())?;
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
    pub(crate) fn quantize_weight_only(&self) -> std::result::Result<(u64, u64), String> {
        if self.packed.get().is_some() {
            return Err("the weight is already prepacked".into());
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

/// Whether CPU post-norm blocks fuse the residual into LayerNorm (`EMBED_CPU_FUSED_NORM=0`
/// turns it off, for comparison). Read once.
fn fused_cpu_norm() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBED_CPU_FUSED_NORM").map_or(true, |v| v != "0"))
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

/// Token embeddings: word rows, plus learned positions (counted from an offset) and token
/// types where the family has them, then a LayerNorm.
pub(crate) struct Embeddings {
    pub(crate) word: Tensor,
    /// The position table and the family's offset (RoBERTa-style ids start past padding).
    pub(crate) position: Option<(Tensor, i64)>,
    /// Absent where `type_vocab_size` is 0.
    pub(crate) token_type: Option<Tensor>,
    pub(crate) norm: LayerNorm,
    /// The word table in int8, one symmetric scale per row ([`Embeddings::quantize_words`]):
    /// `(rows [vocab, hidden] int8, scales [vocab, 1] in the table's kind)`; `word` is then an
    /// empty placeholder.
    pub(crate) word_int8: Int8Table,
}

impl Embeddings {
    /// `[stream, hidden]`, normed, for the batch's whole token stream.
    pub(crate) fn forward(&self, t: &BatchInput) -> Tensor {
        stage("embeddings", || self.forward_inner(t))
    }

    fn forward_inner(&self, t: &BatchInput) -> Tensor {
        let mut x = lookup(&self.word, &self.word_int8, &t.ids);
        if let Some((table, offset)) = &self.position {
            x += embed(table, &(&t.positions + *offset));
        }
        if let Some(table) = &self.token_type {
            x += embed(table, &t.type_ids);
        }
        self.norm.forward(&x)
    }
}

impl Embeddings {
    /// Stores the word table in int8 with one scale per row (see [`quantize_table`]).
    /// Positions and token types (small) stay as they are.
    pub(crate) fn quantize_words(&self) -> (u64, u64) {
        quantize_table(&self.word, &self.word_int8)
    }
}

/// Runs a shim entry point that hands over a new tensor: `call(out, err, err_len)` calls it
/// with the slot for the tensor and a buffer for its error message, and returns its code.
pub(crate) fn shim_tensor(call: impl FnOnce(*mut *mut std::ffi::c_void, *mut std::ffi::c_char, usize) -> i32) -> Result<Tensor, String> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    let mut err = [0 as std::ffi::c_char; 1024];
    let rc = call(&mut out, err.as_mut_ptr(), err.len());
    if rc == 0 && !out.is_null() {
        // SAFETY: on success the shim hands over a fresh heap-allocated `at::Tensor`, owned by
        // nobody else; tch's `Tensor` owns it from here (and frees it with `delete`).
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    } else {
        // SAFETY: the shim always NUL-terminates within the buffer.
        Err(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }
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

/// An embedding table's int8 form, once made: `(rows [vocab, hidden] int8, scales [vocab, 1]
/// in the table's kind)`.
pub(crate) type Int8Table = std::cell::OnceCell<(Tensor, Tensor)>;

/// Stores `table` in int8 with one symmetric scale per row in `cell` and frees the float
/// table (its handles see an empty placeholder); returns the bytes freed and the bytes the int8
/// table holds. Not for a table something else shares (a tied decoder).
pub(crate) fn quantize_table(table: &Tensor, cell: &Int8Table) -> (u64, u64) {
    let kind = table.kind();
    let (rows, scales) = quantize_rows(table);
    // Scales in the table's kind: lookups come back in the model's kind.
    let scales = scales.to_kind(kind);
    let freed = (table.numel() * kind.elt_size_in_bytes()) as u64;
    let held = (rows.numel() + scales.numel() * kind.elt_size_in_bytes()) as u64;
    let _ = cell.set((rows, scales));
    table.shallow_clone().set_data(&Tensor::empty([0], (kind, table.device())));
    (freed, held)
}

/// Rows `ids` of `table`, or of its int8 form where [`quantize_table`] made one.
pub(crate) fn lookup(table: &Tensor, int8: &Int8Table, ids: &Tensor) -> Tensor {
    match int8.get() {
        Some((rows, scales)) => embed(rows, ids).to_kind(scales.kind()) * embed(scales, ids),
        None => embed(table, ids),
    }
}

/// Looks up rows of an embedding table.
pub(crate) fn embed(table: &Tensor, ids: &Tensor) -> Tensor {
    Tensor::embedding(table, ids, -1, false, false)
}

/// One batch on the model's device. `b` sequences, the longest `len` tokens; `ids`, `type_ids`
/// and `positions` hold the token stream: the `tokens` real tokens back to back, then possibly
/// a filler sequence (packed attention only) that rounds the stream's length up. Positions
/// count from 0 in every sequence; a family with another scheme adds its offset.
pub(crate) struct BatchInput {
    pub(crate) ids: Tensor,
    pub(crate) type_ids: Tensor,
    pub(crate) positions: Tensor,
    /// Where each real token sits in the padded `[b * len]` layout.
    pub(crate) rows: Tensor,
    /// `[b, len]`, 1 = token.
    pub(crate) mask: Tensor,
    /// int32: 0, len0, len0 + len1, …, through the filler (the packed attention's bounds).
    pub(crate) cu_seqlens: Tensor,
    /// Real tokens (the stream's first rows).
    pub(crate) tokens: i64,
    /// Longest sequence of the stream, filler included.
    pub(crate) max_seqlen: i64,
    pub(crate) b: i64,
    pub(crate) len: i64,
    /// Runs of rows whose padded attention runs on their own length (see [`length_groups`]);
    /// empty: the whole batch at `len`.
    pub(crate) groups: Vec<LenGroup>,
    /// CPU attention runs the variable-length kernel (`attention::cpu_varlen`) where the
    /// scores allow it.
    pub(crate) varlen: bool,
}

/// Consecutive rows `first..first + count` of a padded batch, the longest `len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LenGroup {
    pub(crate) first: i64,
    pub(crate) count: i64,
    pub(crate) len: i64,
}

/// A run ends where the next sequence is shorter than this share of the run's longest.
const GROUP_SPLIT_BELOW: f64 = 0.75;

/// Splits a batch's rows (their lengths in row order; the worker sorts them longest first)
/// into runs of similar length, so that padded attention, whose cost grows with the square of
/// the padded length, is not paid at the longest sequence's length by every short one. One
/// run for the whole batch gives an empty list. Any order is correct: each run is padded to
/// its own longest.
pub(crate) fn length_groups(lens: &[i64]) -> Vec<LenGroup> {
    let mut groups: Vec<LenGroup> = Vec::new();
    for (row, &n) in lens.iter().enumerate() {
        let n = n.max(1);
        match groups.last_mut() {
            Some(g) if (n as f64) >= GROUP_SPLIT_BELOW * g.len as f64 => {
                g.count += 1;
                g.len = g.len.max(n);
            }
            _ => groups.push(LenGroup { first: row as i64, count: 1, len: n }),
        }
    }
    if groups.len() == 1 {
        groups.clear();
    }
    groups
}

impl BatchInput {
    fn is_dense(&self) -> bool {
        self.tokens == self.b * self.len
    }

    /// `[tokens, width]` → `[b * len, width]` with zeros at the padding.
    pub(crate) fn pad(&self, t: &Tensor) -> Tensor {
        if self.is_dense() {
            t.shallow_clone()
        } else {
            let width = t.size()[1];
            stage("index_ops", || Tensor::zeros([self.b * self.len, width], (t.kind(), t.device())).index_copy(0, &self.rows, t))
        }
    }

    /// `[b * len, width]` → `[tokens, width]`.
    pub(crate) fn unpad(&self, t: Tensor) -> Tensor {
        if self.is_dense() {
            t
        } else {
            stage("index_ops", || t.index_select(0, &self.rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{length_groups, LenGroup};

    fn g(first: i64, count: i64, len: i64) -> LenGroup {
        LenGroup { first, count, len }
    }

    #[test]
    fn one_run_of_similar_lengths_is_no_groups() {
        assert!(length_groups(&[]).is_empty());
        assert!(length_groups(&[7]).is_empty());
        assert!(length_groups(&[40, 36, 31, 30]).is_empty());
    }

    #[test]
    fn a_run_ends_below_three_quarters_of_its_longest() {
        // 30 stays with 40 (0.75 exactly), 29 starts a run, 20 < 0.75 * 29 another, 12 < 15
        // another; an empty sequence counts as one token.
        assert_eq!(length_groups(&[40, 30, 29, 22, 20, 12, 10, 0]), vec![g(0, 2, 40), g(2, 2, 29), g(4, 1, 20), g(5, 2, 12), g(7, 1, 1)]);
    }

    #[test]
    fn any_order_covers_every_row_within_its_runs_length() {
        let lens = [3i64, 50, 4, 4, 60, 2, 9];
        let groups = length_groups(&lens);
        let mut next = 0;
        for grp in &groups {
            assert_eq!(grp.first, next, "runs are consecutive");
            for row in grp.first..grp.first + grp.count {
                assert!(lens[row as usize].max(1) <= grp.len, "row {row} is longer than its run");
            }
            next += grp.count;
        }
        assert_eq!(next, lens.len() as i64);
    }
}
