// What the shim's translation units share: the exception guard every entry point runs its body
// in, scalar helpers the compiler vectorizes (bf16 loads and stores, e^x), and a vector of
// sixteen floats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>

namespace embed_shim {
inline void write_error(char* err, size_t len, const char* msg) {
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

inline float load_f(const float* p, int64_t j) { return p[j]; }
inline float load_f(const uint16_t* p, int64_t j) {
  const uint32_t bits = static_cast<uint32_t>(p[j]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store_f(float* p, int64_t j, float v) { p[j] = v; }
// The value as the activation dtype holds it: a bf16 sum is rounded before LayerNorm sees it,
// as libtorch's separate add would round it (the numerics stay those of the unfused ops).
inline float as_stored(const float*, float v) { return v; }
inline float as_stored(const uint16_t*, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = ((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store_f(uint16_t* p, int64_t j, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  // Round to nearest even, as libtorch converts f32 to bf16.
  p[j] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// e^x for x <= 88 (below -87 it flushes towards 0), as plain arithmetic the compiler can
// vectorize: x = (n + f) ln 2 with n the nearest integer, 2^f from its Taylor series to degree
// 6 (relative error < 1e-6 for |f| <= 1/2), 2^n put in the exponent bits. (std::floor would
// not vectorize without -fno-trapping-math; nearbyint does.)
inline float exp_approx(float x) {
  const float t = std::max(x, -87.f) * 1.44269504f;
  const float n = std::nearbyint(t);
  const float f = t - n;
  const float p = 1.f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f + f * (0.00961812911f +
                  f * (0.00133335581f + f * 0.000154035304f)))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// Floats in one AVX-512 register. (Attention lays key positions out in whole vectors of this
// many, so its score loops run full vectors only, which matters when a sequence is shorter than
// one.)
constexpr int64_t kLanes = 16;

// Sixteen floats as one value: GCC's generic vectors, compiled for each clone's ISA (one zmm,
// two ymm, four xmm). Accumulators of this type stay in registers across the reduction loops.
typedef float v16 __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t v16i __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store16(float* p, const v16& v) { std::memcpy(p, &v, sizeof v); }

}  // namespace embed_shim
