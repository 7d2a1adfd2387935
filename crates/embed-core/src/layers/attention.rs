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
//! `EMBED_CUDA_ATTENTION` overrides the choice for diagnosis and benchmarks: `packed`, `padded`,
//! or `sdpa` (libtorch's own dispatch with nothing switched off: the behaviour before the packed
//! path existed).

use std::os::raw::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

extern "C" {
    fn embed_flash_attention_varlen(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_seqlens: *const c_void,
        max_len: i64,
        scale: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn embed_sdp_disable_cudnn();
}

/// Which attention form a loaded model runs.
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
    /// The path for a model on `device` in `kind` with heads of `head_dim`, honouring
    /// `EMBED_CUDA_ATTENTION`.
    pub(crate) fn choose(device: Device, kind: Kind, head_dim: i64) -> AttentionPath {
        let half = matches!(kind, Kind::Half | Kind::BFloat16);
        if !device.is_cuda() || !half {
            return AttentionPath::Padded;
        }
        // FlashAttention-2's limits on the head size.
        let flash_fits = head_dim % 8 == 0 && head_dim <= 256;
        let requested = std::env::var("EMBED_CUDA_ATTENTION").unwrap_or_default();
        let path = match requested.as_str() {
            "padded" => AttentionPath::Padded,
            "sdpa" => AttentionPath::Sdpa,
            other => {
                if !other.is_empty() && other != "packed" {
                    tracing::warn!("EMBED_CUDA_ATTENTION={other:?} is not packed, padded or sdpa; using the default");
                }
                if flash_fits {
                    AttentionPath::Packed
                } else {
                    AttentionPath::Padded
                }
            }
        };
        path.prepare();
        path
    }

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
) -> std::result::Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: tch tensor handles are `at::Tensor*`; the shim only reads them, catches every C++
    // exception, and on success hands over a new heap-allocated tensor that tch's `Tensor` then
    // owns (and frees with `delete`, as for any tensor libtorch returns).
    let rc = unsafe {
        embed_flash_attention_varlen(
            q.as_ptr().cast(),
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            cu_seqlens.as_ptr().cast(),
            max_len,
            scale,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 && !out.is_null() {
        // SAFETY: see above; `out` is a fresh tensor handle owned by nobody else.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    } else {
        // SAFETY: the shim always NUL-terminates within the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        Err(msg.to_string_lossy().into_owned())
    }
}
