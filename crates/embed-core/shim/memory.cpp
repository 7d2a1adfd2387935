// Allocator statistics and cache control for libtorch's current accelerator (CUDA here), which
// tch does not bind. ATen's own headers give all of it without CUDA headers.
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

}  // extern "C"
