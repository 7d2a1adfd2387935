//! Every entry point of the C++ shim (`shim/`: `memory.cpp`, `onednn.cpp`, `attention_cuda.cpp`,
//! `attention_cpu.cpp`), declared once, and the one way their error buffer is read. Each entry
//! point catches every C++ exception and reports failure as a non-zero code with a
//! NUL-terminated message in the caller's buffer.

use std::ffi::{c_char, c_int, c_void};

use tch::Tensor;

use crate::error::KernelError;

/// Bytes of the buffer each call gets for its error message.
const ERROR_BUFFER: usize = 1024;

/// Runs a shim entry point that reports only success: `call(err, err_len)` gets a buffer for
/// its error message and returns its code (0: success). On failure its message, classified.
pub(crate) fn status(call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), KernelError> {
    let mut err = [0 as c_char; ERROR_BUFFER];
    if call(err.as_mut_ptr(), err.len()) == 0 {
        Ok(())
    } else {
        // SAFETY: the shim always NUL-terminates within the buffer (and it starts zeroed).
        Err(KernelError::from_message(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned()))
    }
}

/// Writes `msg` into an error buffer as the shim does (truncated, NUL-terminated).
fn write_message(err: *mut c_char, len: usize, msg: &str) {
    if len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `err` is a buffer of `len` bytes (from `status`), and n < len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr().cast::<c_char>(), err, n);
        *err.add(n) = 0;
    }
}

/// Runs a shim entry point that hands over a new tensor: `call(out, err, err_len)` calls it
/// with the slot for the tensor and a buffer for its error message, and returns its code.
pub(crate) fn shim_tensor(call: impl FnOnce(*mut *mut c_void, *mut c_char, usize) -> i32) -> Result<Tensor, KernelError> {
    let mut out: *mut c_void = std::ptr::null_mut();
    status(|err, len| {
        let rc = call(&mut out, err, len);
        if rc == 0 && out.is_null() {
            write_message(err, len, "the shim reported success but handed over no tensor");
            return -1;
        }
        rc
    })?;
    // SAFETY: on success the shim hands over a fresh heap-allocated `at::Tensor`, owned by
    // nobody else; tch's `Tensor` owns it from here (and frees it with `delete`).
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}


#[repr(C)]
#[derive(Default)]
pub(crate) struct RawStats {
    pub(crate) allocated_current: i64,
    pub(crate) allocated_peak: i64,
    pub(crate) reserved_current: i64,
    pub(crate) reserved_peak: i64,
    pub(crate) active_current: i64,
    pub(crate) num_ooms: i64,
}

extern "C" {
    // shim/memory.cpp: allocator figures and cache control (`crate::memory`).
    pub(crate) fn embed_accel_available() -> c_int;
    pub(crate) fn embed_accel_device_stats(device: c_int, out: *mut RawStats, err: *mut c_char, len: usize) -> c_int;
    pub(crate) fn embed_accel_memory_info(device: c_int, free: *mut u64, total: *mut u64, err: *mut c_char, len: usize)
        -> c_int;
    pub(crate) fn embed_accel_synchronize(device: c_int, err: *mut c_char, len: usize) -> c_int;
    pub(crate) fn embed_accel_empty_cache(err: *mut c_char, len: usize) -> c_int;
    pub(crate) fn embed_accel_empty_host_cache(err: *mut c_char, len: usize) -> c_int;
    pub(crate) fn embed_accel_host_stats(active: *mut i64, allocated: *mut i64, err: *mut c_char, len: usize) -> c_int;

    // shim/attention_cuda.cpp and shim/attention_cpu.cpp: attention (`crate::nn::attention`).
    pub(crate) fn embed_flash_attention_varlen(
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
    pub(crate) fn embed_sdp_disable_cudnn();
    pub(crate) fn embed_cpu_attention_varlen(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_seqlens: *const c_void,
        batch: i64,
        heads: i64,
        kv_heads: i64,
        left: i64,
        right: i64,
        rel_bias: *const c_void,
        scale: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> c_int;

    // shim/onednn.cpp: oneDNN's prepacked and int8 linear, fused LayerNorm (`crate::nn::onednn`).
    pub(crate) fn embed_add_layer_norm(
        x: *const c_void,
        residual: *const c_void,
        weight: *const c_void,
        bias: *const c_void,
        eps: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    pub(crate) fn embed_int8_dequant_hadamard(q: *const c_void, scales: *const c_void, block: i64, out: *mut *mut c_void, err: *mut c_char, len: usize) -> i32;
    pub(crate) fn embed_hadamard_rows(x: *const c_void, block: i64, out: *mut *mut c_void, err: *mut c_char, len: usize) -> i32;
    pub(crate) fn embed_int8_pack_linear(w: *const c_void, batch: i64, out: *mut *mut c_void, err: *mut c_char, len: usize) -> i32;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn embed_int8_linear(
        x: *const c_void,
        x_mul: *const c_void,
        block: i64,
        w: *const c_void,
        w_scales: *const c_void,
        w_zeros: *const c_void,
        colsum: *const c_void,
        bias: *const c_void,
        gelu: i32,
        residual: *const c_void,
        ln_weight: *const c_void,
        ln_bias: *const c_void,
        eps: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    pub(crate) fn embed_onednn_pack_linear(w: *const c_void, batch: i64, out: *mut *mut c_void, err: *mut c_char, len: usize) -> i32;
    pub(crate) fn embed_onednn_linear(
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
