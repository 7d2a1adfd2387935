// The two CUDA attention entry points tch does not bind: variable-length flash attention and the
// switch for cuDNN's SDPA backend. ATen's own headers give both without CUDA headers.
// Every entry point catches C++ exceptions: they must never unwind into Rust.
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

#include "common.h"

using namespace embed_shim;

extern "C" {

// Attention over sequences packed back to back, without padding: `q`, `k`, `v` are
// [tokens, heads, head_dim] (last dimension contiguous; f16 or bf16 on CUDA), `cu_seqlens` is
// int32 [batch + 1] on the same device (0, len0, len0 + len1, ...). Writes a new
// [tokens, heads, head_dim] tensor to `*out` (the caller owns it: tch frees it with delete).
// `q`, `k`, `v` and `cu_seqlens` are tch tensor handles, i.e. at::Tensor pointers.
int embed_flash_attention_varlen(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                 const at::Tensor* cu_seqlens, int64_t max_len, double scale,
                                 at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto result = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_len, max_len,
                                               /*dropout_p=*/0.0, /*is_causal=*/false,
                                               /*return_debug_mask=*/false, scale);
    *out = new at::Tensor(std::move(std::get<0>(result)));
  });
}

// Turns libtorch's cuDNN backend of scaled_dot_product_attention off (process-wide).
// On Hopper with cuDNN > 9.15 libtorch tries it first for f16/bf16, and it builds a new
// execution plan for every (batch, length) shape: tens of milliseconds of CPU time per batch.
void embed_sdp_disable_cudnn() {
  try {
    at::globalContext().setSDPUseCuDNN(false);
  } catch (...) {
  }
}

}  // extern "C"
