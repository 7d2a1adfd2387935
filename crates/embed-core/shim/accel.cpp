// Allocator statistics and cache control for libtorch's current accelerator (CUDA here).
// tch exposes none of this; ATen/DeviceAccelerator.h gives it without CUDA headers.
// Every entry point catches C++ exceptions: they must never unwind into Rust.
#include <ATen/DeviceAccelerator.h>
#include <cstdint>
#include <cstring>
#include <exception>

namespace {
void write_error(char* err, size_t len, const char* msg) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, msg, len - 1);
  err[len - 1] = '\0';
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
  try {
    auto s = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto agg = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    out->allocated_current = s.allocated_bytes[agg].current;
    out->allocated_peak = s.allocated_bytes[agg].peak;
    out->reserved_current = s.reserved_bytes[agg].current;
    out->reserved_peak = s.reserved_bytes[agg].peak;
    out->active_current = s.active_bytes[agg].current;
    out->num_ooms = s.num_ooms;
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return -1;
}

int embed_accel_memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes, char* err,
                            size_t err_len) {
  try {
    auto info = at::accelerator::getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = info.first;
    *total_bytes = info.second;
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return -1;
}

int embed_accel_synchronize(int device, char* err, size_t err_len) {
  try {
    at::accelerator::synchronizeDevice(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return -1;
}

int embed_accel_empty_cache(char* err, size_t err_len) {
  try {
    at::accelerator::emptyCache();
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "unknown C++ exception");
  }
  return -1;
}

}  // extern "C"
