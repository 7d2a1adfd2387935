// oneDNN's prepacked float and int8 linear layers on the CPU, the Hadamard transforms int8
// rounds in, and the fused residual + LayerNorm pass: the CPU kernels tch does not bind.
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

// A post-norm block's `LayerNorm(x + residual)` on the CPU in one pass over each row, for f32
// and bf16 activations (LayerNorm's statistics in f32 either way): ATen's add and layer_norm
// read and write the whole tensor two or three times. Same shapes, contiguous rows.
extern "C++" {
namespace {
template <typename T>
__attribute__((always_inline)) inline void add_norm_rows_t(const T* x, const T* res, int64_t rows, int64_t n,
                                                           const T* gamma, const T* beta, float eps, T* out,
                                                           float* row) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    const T* rr = res + r * n;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const float v = as_stored(xr, load_f(xr, j) + load_f(rr, j));
      row[j] = v;
      sum += v;
    }
    const float mean = sum / static_cast<float>(n);
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < n; ++j) {
      const float d = row[j] - mean;
      sq += d * d;
    }
    const float inv = 1.f / std::sqrt(sq / static_cast<float>(n) + eps);
    T* o = out + r * n;
    if (beta != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) store_f(o, j, (row[j] - mean) * inv * load_f(gamma, j) + load_f(beta, j));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) store_f(o, j, (row[j] - mean) * inv * load_f(gamma, j));
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void add_norm_rows_f32(const float* x, const float* res, int64_t rows, int64_t n, const float* gamma, const float* beta,
                       float eps, float* out, float* row) {
  add_norm_rows_t(x, res, rows, n, gamma, beta, eps, out, row);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void add_norm_rows_bf16(const uint16_t* x, const uint16_t* res, int64_t rows, int64_t n, const uint16_t* gamma,
                        const uint16_t* beta, float eps, uint16_t* out, float* row) {
  add_norm_rows_t(x, res, rows, n, gamma, beta, eps, out, row);
}
}  // namespace
}  // extern "C++"

// int8 linear layers on the CPU: weights int8, symmetric per output channel, prepacked once for
// oneDNN (`onednn::qlinear_pointwise`, registered by libtorch_cpu); activations quantized per
// row (per token, asymmetric) to uint8 on every call, which is what oneDNN's fast u8s8 kernels
// take. The op takes one zero point for the whole input, so the GEMM runs with 128 and the
// output pass corrects each row for its own zero point (using the weight's column sums); the
// same pass multiplies each row by its scale and adds the bias. Two transforms of the input,
// both undone by the weight, which carries their inverse from load: a per-channel factor
// (SmoothQuant's smoothing, calibrated at load) moves part of an outlier channel's range into
// the weight's column; and a Hadamard transform over blocks of channels spreads what remains
// of any channel's range over its whole block, so a row's quantization step follows its
// typical value rather than its largest one. Both passes are plain loops, vectorized by the
// compiler for each of AVX-512, AVX2 and baseline x86-64 (picked at load), and run on
// libtorch's OpenMP threads.
extern "C++" {
namespace {
// The four butterfly stages within one vector of 16 (h = 1, 2, 4, 8), in place: lane j's
// partner is j ^ h; the lane with bit h clear takes partner + self, the other partner - self.
__attribute__((always_inline)) inline void butterflies16(v16& x) {
  const v16i p1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  const v16i p2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const v16i p4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
  const v16i p8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
  const v16 s1 = {1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1};
  const v16 s2 = {1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1};
  const v16 s4 = {1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1};
  const v16 s8 = {1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1};
  x = __builtin_shuffle(x, p1) + s1 * x;
  x = __builtin_shuffle(x, p2) + s2 * x;
  x = __builtin_shuffle(x, p4) + s4 * x;
  x = __builtin_shuffle(x, p8) + s8 * x;
}

// v = (x * mul) times the Sylvester Hadamard matrix of order 16 NV, block by block
// (unnormalized: each butterfly stage h maps (a, b) at distance h to (a + b, a - b); the stages
// commute), and [lo, hi] widened to hold every value of v. A block's NV vectors stay in
// registers through all its stages.
template <int NV>
__attribute__((always_inline)) inline void hadamard_row(const float* x, const float* mul, int64_t k, float* v, float& lo,
                                                        float& hi) {
  v16 vlo = {}, vhi = {};
  for (int64_t base = 0; base < k; base += NV * kLanes) {
    v16 r[NV];
    for (int i = 0; i < NV; ++i) {
      r[i] = load16(x + base + i * kLanes) * load16(mul + base + i * kLanes);
      butterflies16(r[i]);
    }
    for (int h = 1; h < NV; h <<= 1)
      for (int i = 0; i < NV; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          const v16 a = r[j], b = r[j + h];
          r[j] = a + b;
          r[j + h] = a - b;
        }
    for (int i = 0; i < NV; ++i) {
      vlo = r[i] < vlo ? r[i] : vlo;
      vhi = r[i] > vhi ? r[i] : vhi;
      store16(v + base + i * kLanes, r[i]);
    }
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    lo = std::min(lo, vlo[j]);
    hi = std::max(hi, vhi[j]);
  }
}

// The same for any power-of-two block, one stage at a time over memory (blocks under 16 or
// over 128, which the Rust side does not pick).
inline void hadamard_row_any(const float* x, const float* mul, int64_t k, int64_t block, float* v, float& lo, float& hi) {
  for (int64_t j = 0; j < k; ++j) v[j] = x[j] * mul[j];
  for (int64_t base = 0; base < k; base += block)
    for (int64_t h = 1; h < block; h <<= 1)
      for (int64_t i = base; i < base + block; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float a = v[j], b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
  for (int64_t j = 0; j < k; ++j) {
    lo = std::min(lo, v[j]);
    hi = std::max(hi, v[j]);
  }
}

// v = x * mul, then (with `block` > 1) v times the block Hadamard matrix; [lo, hi] widened to
// hold every value of v.
__attribute__((always_inline)) inline void transform_row(const float* x, const float* mul, int64_t k, int64_t block,
                                                         float* v, float& lo, float& hi) {
  switch (block) {
    case 0:
    case 1:
#pragma omp simd reduction(min : lo) reduction(max : hi)
      for (int64_t j = 0; j < k; ++j) {
        v[j] = x[j] * mul[j];
        lo = std::min(lo, v[j]);
        hi = std::max(hi, v[j]);
      }
      break;
    case 16: hadamard_row<1>(x, mul, k, v, lo, hi); break;
    case 32: hadamard_row<2>(x, mul, k, v, lo, hi); break;
    case 64: hadamard_row<4>(x, mul, k, v, lo, hi); break;
    case 128: hadamard_row<8>(x, mul, k, v, lo, hi); break;
    default: hadamard_row_any(x, mul, k, block, v, lo, hi);
  }
}

// Each row of x ([rows, k]) times `mul`, then times the block Hadamard matrix, into `out`: what
// a weight's rows go through at load (with `mul` the normalization), the same arithmetic as the
// quantize pass applies to every input row.
__attribute__((target_clones("avx512f", "avx2", "default")))
void hadamard_rows_f32(const float* x, int64_t rows, int64_t k, const float* mul, int64_t block, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float lo = 0.f, hi = 0.f;
    transform_row(x + r * k, mul, k, block, out + r * k, lo, hi);
  }
}

// Row r of int8 `q` ([rows, k]) times scales[r], then times the block Hadamard matrix (`mul`
// its normalization), into f32 `out`: a weight-only int8 weight dequantized and transformed back
// in one pass.
__attribute__((target_clones("avx512f", "avx2", "default")))
void dequant_hadamard_rows(const int8_t* q, int64_t rows, int64_t k, const float* scales, const float* mul, int64_t block,
                           float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * k;
    const int8_t* qr = q + r * k;
    const float s = scales[r];
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) o[j] = static_cast<float>(qr[j]) * s;
    float lo = 0.f, hi = 0.f;
    // In place: each block is loaded whole before it is stored.
    transform_row(o, mul, k, block, o, lo, hi);
  }
}

// Per row r: v = x * mul, then (with `block` > 0) v times the block Hadamard matrix (`mul`
// carries its normalization); v's range, widened to hold 0, in 255 steps of s_r from the zero
// point zp_r (asymmetric: a one-sided row, such as a GELU output left untransformed, keeps all 8
// bits). Writes s_r and c_r = 128 - zp_r, what the GEMM's fixed zero point of 128 leaves to
// correct. `v` is scratch of k floats.
__attribute__((target_clones("avx512f", "avx2", "default")))
void quantize_rows(const float* x, int64_t rows, int64_t k, const float* mul, int64_t block, uint8_t* q, float* scales,
                   float* shifts, float* v) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * k;
    float lo = 0.f, hi = 0.f;
    transform_row(xr, mul, k, block, v, lo, hi);
    const float s = hi > lo ? (hi - lo) / 255.f : 1.f;
    const float inv = 1.f / s;
    // An all-zero row sits at the GEMM's own zero point: nothing to correct.
    const float zp = hi > lo ? std::nearbyint(-lo * inv) : 128.f;
    uint8_t* qr = q + r * k;
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) {
      const float c = std::min(std::max(std::nearbyint(v[j] * inv) + zp, 0.f), 255.f);
      qr[j] = static_cast<uint8_t>(static_cast<int32_t>(c));
    }
    scales[r] = s;
    shifts[r] = 128.f - zp;
  }
}

// GELU, exact form 0.5 x (1 + erf(x / sqrt 2)), with erf from Abramowitz and Stegun 7.1.26
// (within 5e-7 of the exact GELU over [-8, 8], measured).
inline float gelu_erf(float x) {
  const float z = std::fabs(x) * 0.707106781f;
  const float t = 1.f / (1.f + 0.3275911f * z);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float erf_abs = 1.f - poly * exp_approx(-z * z);
  return 0.5f * x * (1.f + std::copysign(erf_abs, x));
}

// GELU's tanh form 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), tanh(u) = 1 - 2 / (e^2u + 1).
inline float gelu_tanh(float x) {
  const float u = std::min(std::max(0.797884561f * (x + 0.044715f * x * x * x), -9.f), 9.f);
  return 0.5f * x * (2.f - 2.f / (exp_approx(2.f * u) + 1.f));
}

// y[r, j] = act(s_r * (y[r, j] + c_r * colsum[j]) + bias[j]), with colsum[j] = w_scale_j *
// sum_k W[j, k] (the GEMM's output is already scaled by w_scale) and act none (0), GELU (1) or
// GELU's tanh form (2).
__attribute__((target_clones("avx512f", "avx2", "default")))
void scale_rows(float* y, int64_t rows, int64_t n, const float* scales, const float* shifts, const float* colsum,
                const float* bias, int act) {
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * n;
    const float s = scales[r];
    const float sc = s * shifts[r];
    if (act == 1) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yr[j] = gelu_erf(yr[j] * s + (sc * colsum[j] + bias[j]));
    } else if (act == 2) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yr[j] = gelu_tanh(yr[j] * s + (sc * colsum[j] + bias[j]));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yr[j] = yr[j] * s + (sc * colsum[j] + bias[j]);
    }
  }
}

// Rows per task: enough work per thread to amortize the fork.
constexpr int64_t kRowGrain = 16;

// Whether `block` can be a Hadamard block over k channels: a power of two dividing k.
bool is_block_of(int64_t block, int64_t k) { return block > 0 && (block & (block - 1)) == 0 && k % block == 0; }

// The per-channel multiplier that normalizes the block Hadamard transform of k channels.
std::vector<float> hadamard_normalization(int64_t k, int64_t block) {
  return std::vector<float>(static_cast<size_t>(k), static_cast<float>(1.0 / std::sqrt(static_cast<double>(block))));
}
}  // namespace
}  // extern "C++"

// Prepacks an int8 weight ([out, in], values in [-127, 127]) for about `batch` rows of input.
int embed_int8_pack_linear(const at::Tensor* w, int64_t batch, at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_prepack", "");
    torch::jit::Stack stack;
    stack.emplace_back(*w);
    stack.emplace_back(std::vector<int64_t>{batch, w->size(1)});
    op.callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
  });
}

// The rows of f32 `x` ([rows, k], any layout) times the block-diagonal Hadamard
// matrix of order-`block` blocks (a power of two dividing k), normalized by 1 / sqrt(block):
// orthogonal and symmetric, its own inverse. A new f32 tensor in `*out`.
int embed_hadamard_rows(const at::Tensor* x, int64_t block, at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(x->scalar_type() == at::kFloat && x->dim() == 2 && x->device().is_cpu(),
                "Hadamard rows: input must be 2-D f32 on the CPU, got ", x->scalar_type(), " with ", x->dim(),
                " dimensions on ", x->device());
    const int64_t k = x->size(1);
    TORCH_CHECK(is_block_of(block, k), "Hadamard rows: block ", block, " is not a power of two dividing ", k);
    const auto xc = x->contiguous();
    auto y = at::empty({xc.size(0), k}, xc.options());
    const auto mul = hadamard_normalization(k, block);
    const float* xp = xc.const_data_ptr<float>();
    const float* mp = mul.data();
    float* yp = y.mutable_data_ptr<float>();
    at::parallel_for(0, xc.size(0), kRowGrain, [&](int64_t b, int64_t e) {
      hadamard_rows_f32(xp + b * k, e - b, k, mp, block, yp + b * k);
    });
    *out = new at::Tensor(y);
  });
}

// int8 `q` ([out, in], contiguous) times its f32 per-row `scales` ([out]), then each row times
// the block Hadamard matrix of order `block` (normalized; a power of two dividing in): a
// weight-only int8 weight rounded in the Hadamard basis, back in f32 in one pass.
int embed_int8_dequant_hadamard(const at::Tensor* q, const at::Tensor* scales, int64_t block, at::Tensor** out, char* err,
                                size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(q->scalar_type() == at::kChar && q->dim() == 2 && q->is_contiguous() && q->device().is_cpu(),
                "int8 dequantize: weight must be contiguous 2-D int8 on the CPU");
    TORCH_CHECK(scales->device().is_cpu(), "int8 dequantize: scales must be on the CPU");
    const int64_t rows = q->size(0), k = q->size(1);
    TORCH_CHECK(scales->scalar_type() == at::kFloat && scales->is_contiguous() && scales->numel() == rows,
                "int8 dequantize: scales must be contiguous f32 [", rows, "]");
    TORCH_CHECK(is_block_of(block, k), "int8 dequantize: block ", block, " is not a power of two dividing ", k);
    auto y = at::empty({rows, k}, scales->options());
    const auto mul = hadamard_normalization(k, block);
    const int8_t* qp = q->const_data_ptr<int8_t>();
    const float* sp = scales->const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t b, int64_t e) {
      dequant_hadamard_rows(qp + b * k, e - b, k, sp + b, mul.data(), block, yp + b * k);
    });
    *out = new at::Tensor(y);
  });
}

// y = x W^T + b for f32 `x` ([..., in]) on a weight from `embed_int8_pack_linear` with its f32
// per-channel scales `w_scales`, int64 zero points `w_zeros` and f32 `colsum` (w_scale times the
// int8 row's sum) ([out]); `x_mul` (f32 [in]) multiplies each input channel and `block` (0, or
// a power of two dividing in) names the Hadamard transform then applied to the row before it is
// quantized (the weight carries their inverse); `bias` f32 [out] or null; `gelu` 0 for none, 1
// for exact GELU, 2 for its tanh approximation (fused into the output pass). With `residual`
// (f32, x's rows by out) and
// `ln_weight` (f32 [out]) the output pass instead adds the residual and applies LayerNorm with
// `ln_weight`, `ln_bias` (f32 [out] or null) and `eps`: a post-norm block's
// `LayerNorm(x W^T + b + residual)` in one pass over the output.
int embed_int8_linear(const at::Tensor* x, const at::Tensor* x_mul, int64_t block, const at::Tensor* w,
                      const at::Tensor* w_scales, const at::Tensor* w_zeros, const at::Tensor* colsum, const at::Tensor* bias, int gelu,
                      const at::Tensor* residual, const at::Tensor* ln_weight, const at::Tensor* ln_bias, double eps, at::Tensor** out,
                      char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(x->scalar_type() == at::kFloat, "int8 linear: input must be f32, got ", x->scalar_type());
    const int64_t k = x->size(-1);
    const auto xc = x->contiguous();
    const int64_t rows = k == 0 ? 0 : xc.numel() / k;
    TORCH_CHECK(x_mul->scalar_type() == at::kFloat && x_mul->is_contiguous() && x_mul->numel() == k,
                "int8 linear: x_mul must be contiguous f32 [", k, "]");
    TORCH_CHECK(block == 0 || is_block_of(block, k), "int8 linear: Hadamard block ", block,
                " is not a power of two dividing ", k);
    const float* mp = x_mul->const_data_ptr<float>();
    auto q = at::empty({rows, k}, xc.options().dtype(at::kByte));
    auto sx = at::empty({rows}, xc.options());
    auto cx = at::empty({rows}, xc.options());
    const float* xp = xc.const_data_ptr<float>();
    uint8_t* qp = q.mutable_data_ptr<uint8_t>();
    float* sp = sx.mutable_data_ptr<float>();
    float* cp = cx.mutable_data_ptr<float>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t b, int64_t e) {
      std::vector<float> v(static_cast<size_t>(k));
      quantize_rows(xp + b * k, e - b, k, mp, block, qp + b * k, sp + b, cp + b, v.data());
    });
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
    torch::jit::Stack stack;
    stack.emplace_back(q);
    stack.emplace_back(1.0);
    stack.emplace_back(static_cast<int64_t>(128));
    stack.emplace_back(*w);
    stack.emplace_back(*w_scales);
    stack.emplace_back(*w_zeros);
    stack.emplace_back(c10::IValue());
    stack.emplace_back(1.0);
    stack.emplace_back(static_cast<int64_t>(0));
    stack.emplace_back(c10::IValue(at::kFloat));
    stack.emplace_back(std::string("none"));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(""));
    op.callBoxed(&stack);
    auto y = stack.at(0).toTensor();
    TORCH_CHECK(y.is_contiguous() && y.scalar_type() == at::kFloat, "int8 linear: unexpected GEMM output");
    const int64_t n = y.size(-1);
    TORCH_CHECK(colsum->scalar_type() == at::kFloat && colsum->is_contiguous() && colsum->numel() == n,
                "int8 linear: colsum must be contiguous f32 [", n, "]");
    const float* csp = colsum->const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    // No bias is a zero bias: one branch-free loop vectorizes.
    const at::Tensor bc = bias != nullptr ? bias->contiguous() : at::zeros({n}, y.options());
    TORCH_CHECK(bc.scalar_type() == at::kFloat && bc.numel() == n, "int8 linear: bias must be f32 [", n, "]");
    const float* bp = bc.const_data_ptr<float>();
    if (residual != nullptr && ln_weight != nullptr) {
      TORCH_CHECK(gelu == 0, "int8 linear: an activation and a residual LayerNorm together");
      const auto rc = residual->contiguous();
      TORCH_CHECK(rc.scalar_type() == at::kFloat && rc.numel() == rows * n, "int8 linear: residual must be f32 with the output's shape");
      const auto gc = ln_weight->contiguous();
      const auto betac = ln_bias != nullptr ? ln_bias->contiguous() : at::Tensor();
      TORCH_CHECK(gc.scalar_type() == at::kFloat && gc.numel() == n, "int8 linear: LayerNorm weight must be f32 [", n, "]");
      TORCH_CHECK(ln_bias == nullptr || (betac.scalar_type() == at::kFloat && betac.numel() == n),
                  "int8 linear: LayerNorm bias must be f32 [", n, "]");
      const float* rp = rc.const_data_ptr<float>();
      const float* gp = gc.const_data_ptr<float>();
      const float* betap = ln_bias != nullptr ? betac.const_data_ptr<float>() : nullptr;
      const float feps = static_cast<float>(eps);
      at::parallel_for(0, rows, kRowGrain, [&](int64_t b, int64_t e) {
        std::vector<float> row(static_cast<size_t>(n));
        // Row by row, while each is in cache: scale and bias, then residual and LayerNorm.
        for (int64_t r = b; r < e; ++r) {
          scale_rows(yp + r * n, 1, n, sp + r, cp + r, csp, bp, 0);
          add_norm_rows_f32(yp + r * n, rp + r * n, 1, n, gp, betap, feps, yp + r * n, row.data());
        }
      });
    } else {
      at::parallel_for(0, rows, kRowGrain, [&](int64_t b, int64_t e) {
        scale_rows(yp + b * n, e - b, n, sp + b, cp + b, csp, bp, gelu);
      });
    }
    auto sizes = x->sizes().vec();
    sizes.back() = n;
    *out = new at::Tensor(y.view(sizes));
  });
}


// `LayerNorm(x + residual)` over the last dimension with `weight` and `bias` (or null), all of
// one dtype (f32 or bf16) on the CPU; a new tensor of x's shape in `*out`.
int embed_add_layer_norm(const at::Tensor* x, const at::Tensor* residual, const at::Tensor* weight,
                         const at::Tensor* bias, double eps, at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    const auto kind = x->scalar_type();
    TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16, "add_layer_norm: f32 or bf16, got ", kind);
    TORCH_CHECK(x->device().is_cpu() && residual->sizes() == x->sizes() && residual->scalar_type() == kind,
                "add_layer_norm: residual must match x on the CPU");
    const int64_t n = x->size(-1);
    TORCH_CHECK(weight->numel() == n && weight->scalar_type() == kind, "add_layer_norm: weight must be [", n, "] of x's dtype");
    TORCH_CHECK(bias == nullptr || (bias->numel() == n && bias->scalar_type() == kind), "add_layer_norm: bias must be [", n, "] of x's dtype");
    const auto xc = x->contiguous();
    const auto rc = residual->contiguous();
    const auto wc = weight->contiguous();
    const auto bc = bias != nullptr ? bias->contiguous() : at::Tensor();
    auto y = at::empty(x->sizes(), xc.options());
    const int64_t rows = n == 0 ? 0 : xc.numel() / n;
    const float feps = static_cast<float>(eps);
    at::parallel_for(0, rows, kRowGrain, [&](int64_t b, int64_t e) {
      std::vector<float> row(static_cast<size_t>(n));
      if (kind == at::kFloat) {
        add_norm_rows_f32(xc.const_data_ptr<float>() + b * n, rc.const_data_ptr<float>() + b * n, e - b, n,
                          wc.const_data_ptr<float>(), bias != nullptr ? bc.const_data_ptr<float>() : nullptr, feps,
                          y.mutable_data_ptr<float>() + b * n, row.data());
      } else {
        auto p = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.const_data_ptr()); };
        add_norm_rows_bf16(p(xc) + b * n, p(rc) + b * n, e - b, n, p(wc), bias != nullptr ? p(bc) : nullptr, feps,
                           reinterpret_cast<uint16_t*>(y.mutable_data_ptr()) + b * n, row.data());
      }
    });
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
