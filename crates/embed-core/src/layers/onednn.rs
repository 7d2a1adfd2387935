//! oneDNN's prepacked linear on the CPU, through the C++ shim (`shim/accel.cpp`): the weight
//! is reordered once, at load, into the blocked layout oneDNN's bf16 GEMM wants, instead of on
//! every call; a following GELU can be fused into the same call.

use std::ffi::{c_char, c_void, CString};

use tch::Tensor;

extern "C" {
    fn embed_onednn_pack_linear(w: *const c_void, batch: i64, out: *mut *mut c_void, err: *mut c_char, len: usize) -> i32;
    fn embed_onednn_linear(
        x: *const c_void,
        w: *const c_void,
        bias: *const c_void,
        attr: *const c_char,
        algorithm: *const c_char,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// Takes the tensor the shim handed over, or its error message.
fn finish(rc: i32, out: *mut c_void, err: &[c_char]) -> Result<Tensor, String> {
    if rc == 0 && !out.is_null() {
        // SAFETY: on success the shim hands over a fresh heap-allocated `at::Tensor`, owned by
        // nobody else; tch's `Tensor` owns it from here (and frees it with `delete`).
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    } else {
        // SAFETY: the shim always NUL-terminates within the buffer.
        Err(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }
}

/// `w` (`[out, in]`, contiguous, on the CPU) reordered for oneDNN's GEMM at about `batch` rows.
pub(crate) fn pack(w: &Tensor, batch: i64) -> Result<Tensor, String> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: tch tensor handles are `at::Tensor*`; the shim only reads them and catches every
    // C++ exception.
    let rc = unsafe { embed_onednn_pack_linear(w.as_ptr().cast(), batch, &mut out, err.as_mut_ptr(), err.len()) };
    finish(rc, out, &err)
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
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: as in `pack`; a null bias or algorithm is the op's `None`.
    let rc = unsafe {
        embed_onednn_linear(
            x.as_ptr().cast(),
            packed.as_ptr().cast(),
            bias.map_or(std::ptr::null(), |b| b.as_ptr().cast()),
            attr.as_ptr(),
            algorithm.as_ref().map_or(std::ptr::null(), |a| a.as_ptr()),
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    // A failure here is a libtorch error like any other op's: tch panics on those too, and the
    // worker turns a panic into the batch's error.
    finish(rc, out, &err).unwrap_or_else(|e| panic!("oneDNN linear failed: {e}"))
}
