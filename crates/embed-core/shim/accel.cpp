// Allocator statistics and cache control for libtorch's current accelerator (CUDA here), and the
// two attention entry points tch does not bind: variable-length flash attention and the switch
// for cuDNN's SDPA backend. ATen's own headers give all of it without CUDA headers.
// Every entry point catches C++ exceptions: they must never unwind into Rust.
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <cstdint>
#include <cstring>
#include <exception>

namespace {
void write_error(char* err, size_t len, const char* msg) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, msg, len - 1);
  err[len - 1] = '\0';
}

// Runs `body`; returns 0, or -1 with the exception's message in `err`.
template <typename F>
int guarded(char* err, size_t err_len, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return -1;
}
}  // namespace

extern "C" {

struct EmbedAccelStats {
  int64_t allocated_current;
  int64_t allocated_peak;
  int64_t reserved_current;
  int64_t reserved_peak;
  int64_t active_current;
  int64_t num_ooms;
};

// 1 when libtorch has an accelerator with at least one device, else 0.
int embed_accel_available() {
  try {
    auto acc = at::accelerator::getAccelerator(false);
    return acc.has_value() && at::accelerator::deviceCount() > 0 ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// Returns 0 on success, -1 with a message in `err` otherwise.
int embed_accel_device_stats(int device, EmbedAccelStats* out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto s = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto agg = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    out->allocated_current = s.allocated_bytes[agg].current;
    out->allocated_peak = s.allocated_bytes[agg].peak;
    out->reserved_current = s.reserved_bytes[agg].current;
    out->reserved_peak = s.reserved_bytes[agg].peak;
    out->active_current = s.active_bytes[agg].current;
    out->num_ooms = s.num_ooms;
  });
}

int embed_accel_memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes, char* err,
                            size_t err_len) {
  return guarded(err, err_len, [&] {
    auto info = at::accelerator::getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = info.first;
    *total_bytes = info.second;
  });
}

int embed_accel_synchronize(int device, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    at::accelerator::synchronizeDevice(static_cast<c10::DeviceIndex>(device));
  });
}

int embed_accel_empty_cache(char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    at::accelerator::emptyCache();
  });
}

// Frees the pinned host blocks libtorch's CUDA host allocator keeps cached (input uploads use
// pinned memory). Returns 0 on success, -1 with a message in `err` otherwise.
int embed_accel_empty_host_cache(char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    at::getHostAllocator(at::kCUDA)->empty_cache();
  });
}

// The CUDA host (pinned) allocator's figures: bytes in blocks handed out now, and bytes it holds
// from the driver (handed out or cached). Returns 0 on success, -1 with a message in `err`.
int embed_accel_host_stats(int64_t* active_bytes, int64_t* allocated_bytes, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto s = at::getHostAllocator(at::kCUDA)->get_stats();
    *active_bytes = s.active_bytes.current;
    *allocated_bytes = s.allocated_bytes.current;
  });
}

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

// oneDNN's prepacked linear on the CPU (the ops PyTorch's own CPU freezing uses; registered by
// libtorch_cpu under the `mkldnn` namespace, not bound by tch, so called through the
// dispatcher, boxed). `embed_onednn_pack_linear` reorders a [out, in] weight once into the
// blocked layout oneDNN's GEMM wants for about `batch` rows (an opaque oneDNN tensor);
// `embed_onednn_linear` runs x W^T + b on it, with `attr` "none" or a fused activation such as
// "gelu" (`algorithm` "none" or "tanh" for GELU, else null), so no reorder happens per call.
int embed_onednn_pack_linear(const at::Tensor* w, int64_t batch, at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
    torch::jit::Stack stack;
    stack.emplace_back(*w);
    stack.emplace_back(batch);
    op.callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
  });
}

int embed_onednn_linear(const at::Tensor* x, const at::Tensor* w, const at::Tensor* bias, const char* attr,
                        const char* algorithm, at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack;
    stack.emplace_back(*x);
    stack.emplace_back(*w);
    stack.emplace_back(bias != nullptr ? c10::IValue(*bias) : c10::IValue());
    stack.emplace_back(std::string(attr));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(algorithm != nullptr ? c10::IValue(std::string(algorithm)) : c10::IValue());
    op.callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
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
