// Variable-length self-attention on the CPU: every sequence of a batch attends over its own
// tokens only, read straight from the fused QKV projection's rows, with no padding, no mask
// tensor and no per-shape dispatch. libtorch has no CPU kernel for this (its varlen flash
// attention is CUDA only), and its padded SDPA spends most of a short-text batch on padding,
// masks and the layout copies around it: for MiniLM on short texts the attention stage cost
// about a quarter of an int8 forward pass.
//
// Per (sequence, head), on one thread: K is transposed into a [head_dim, len] scratch and V
// copied to [len, head_dim] (both f32), then for each query the scores q.k over the keys in
// reach (all of the sequence, or a sliding window), plus a learned bias per distance where the
// family has one (MPNet), their softmax in f32 and the weighted sum of V. Every inner loop runs over a contiguous f32 row without a horizontal reduction in the
// dot products, so the compiler vectorizes each for AVX-512, AVX2 and baseline x86-64 (picked
// at load). Inputs f32 or bf16; the output has the input's dtype (bf16 rounded to nearest even,
// as libtorch rounds).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <omp.h>

#include <vector>

#include "common.h"

using namespace embed_shim;

namespace {
// Key positions are laid out in whole vectors of this many floats (one AVX-512 register): the
// score loops then run full vectors only, which matters when a sequence is shorter than one.
constexpr int64_t kLanes = 16;

int64_t padded_len(int64_t len) { return (len + kLanes - 1) / kLanes * kLanes; }

// Sixteen floats as one value: GCC's generic vectors, compiled for each clone's ISA (one zmm,
// two ymm, four xmm). Accumulators of this type stay in registers across the reduction loops.
typedef float v16 __attribute__((vector_size(kLanes * sizeof(float))));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Queries handled together: their accumulators are independent, so the FMAs overlap instead of
// waiting on each other, and each row of K and V loaded serves all of them.
constexpr int64_t kQueries = 4;

// Floats of scratch one thread needs for sequences up to `max_len` tokens.
int64_t scratch_floats(int64_t max_len, int64_t d) {
  const int64_t lp = padded_len(max_len);
  const int64_t dp = padded_len(d);
  return d * lp + lp * dp + kQueries * (lp + d);
}

template <typename T>
__attribute__((always_inline)) inline void attend_t(const T* qkv, int64_t start, int64_t len, int64_t h,
                                                    int64_t heads, int64_t d, float scale, int64_t half_window,
                                                    const float* bias, int64_t center, T* out, float* scratch) {
  const int64_t hidden = heads * d;
  const int64_t stride = 3 * hidden;
  const int64_t lp = padded_len(len);
  const int64_t dp = padded_len(d);
  float* kt = scratch;             // [d, lp]: K transposed, zeros past len
  float* v = kt + d * lp;          // [len, dp]: V, zeros past d
  float* p = v + lp * dp;          // [kQueries, lp]: the queries' scores, then their weights
  float* qs = p + kQueries * lp;   // [kQueries, d]: the queries, scaled
  for (int64_t j = 0; j < len; ++j) {
    const T* row = qkv + (start + j) * stride;
    const T* kr = row + hidden + h * d;
    const T* vr = row + 2 * hidden + h * d;
    for (int64_t c = 0; c < d; ++c) kt[c * lp + j] = load_f(kr, c);
    for (int64_t c = 0; c < d; ++c) v[j * dp + c] = load_f(vr, c);
    for (int64_t c = d; c < dp; ++c) v[j * dp + c] = 0.f;
  }
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = len; j < lp; ++j) kt[c * lp + j] = 0.f;
  }
  for (int64_t i0 = 0; i0 < len; i0 += kQueries) {
    // Past the sequence's end the last query is computed again and not stored.
    int64_t qi[kQueries], lo[kQueries], hi[kQueries];
    for (int64_t k = 0; k < kQueries; ++k) {
      qi[k] = std::min(i0 + k, len - 1);
      // The keys query qi sees: [lo, hi).
      lo[k] = half_window < 0 ? 0 : std::max<int64_t>(0, qi[k] - half_window);
      hi[k] = half_window < 0 ? len : std::min<int64_t>(len, qi[k] + half_window + 1);
      const T* qr = qkv + (start + qi[k]) * stride + h * d;
      for (int64_t c = 0; c < d; ++c) qs[k * d + c] = load_f(qr, c) * scale;
    }
    // Scores, sixteen keys at a time, summed over the head's dimensions in registers.
    for (int64_t jb = 0; jb < lp; jb += kLanes) {
      v16 acc[kQueries] = {};
      for (int64_t c = 0; c < d; ++c) {
        const v16 kc = load16(kt + c * lp + jb);
        for (int64_t k = 0; k < kQueries; ++k) acc[k] += qs[k * d + c] * kc;
      }
      for (int64_t k = 0; k < kQueries; ++k) store16(p + k * lp + jb, acc[k]);
    }
    // A learned bias per query-key distance (MPNet): row h of the table, distance j - i at
    // center + j - i.
    if (bias != nullptr) {
      for (int64_t k = 0; k < kQueries; ++k) {
        float* pk = p + k * lp;
        const float* bk = bias + h * (2 * center + 1) + center - qi[k];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) pk[j] += bk[j];
      }
    }
    float inv[kQueries];
    int64_t from = len, to = 0;
    for (int64_t k = 0; k < kQueries; ++k) {
      float* pk = p + k * lp;
      const int64_t l = lo[k], u = hi[k];
      float m = -INFINITY;
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < lp; ++j) m = std::max(m, (j >= l && j < u) ? pk[j] : -INFINITY);
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < lp; ++j) {
        const float e = (j >= l && j < u) ? exp_approx(pk[j] - m) : 0.f;
        pk[j] = e;
        sum += e;
      }
      inv[k] = 1.f / sum;
      from = std::min(from, l);
      to = std::max(to, u);
    }
    // The weighted sums of V, sixteen dimensions at a time in registers (a query's weight is
    // zero outside its own keys).
    const int64_t valid = std::min(kQueries, len - i0);
    for (int64_t cb = 0; cb < dp; cb += kLanes) {
      v16 acc[kQueries] = {};
      for (int64_t j = from; j < to; ++j) {
        const v16 vj = load16(v + j * dp + cb);
        for (int64_t k = 0; k < kQueries; ++k) acc[k] += p[k * lp + j] * vj;
      }
      const int64_t width = std::min(kLanes, d - cb);
      for (int64_t k = 0; k < valid; ++k) {
        const v16 r = acc[k] * inv[k];
        T* o = out + (start + i0 + k) * hidden + h * d + cb;
        for (int64_t c = 0; c < width; ++c) store_f(o, c, r[c]);
      }
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_f32(const float* qkv, int64_t start, int64_t len, int64_t h, int64_t heads, int64_t d, float scale,
                int64_t half_window, const float* bias, int64_t center, float* out, float* scratch) {
  attend_t(qkv, start, len, h, heads, d, scale, half_window, bias, center, out, scratch);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_bf16(const uint16_t* qkv, int64_t start, int64_t len, int64_t h, int64_t heads, int64_t d, float scale,
                 int64_t half_window, const float* bias, int64_t center, uint16_t* out, float* scratch) {
  attend_t(qkv, start, len, h, heads, d, scale, half_window, bias, center, out, scratch);
}
}  // namespace

extern "C" {

// Self-attention of `batch` sequences packed back to back in `qkv` ([tokens, 3 * heads *
// head_dim]: each row Q, K, V, heads contiguous within each; f32 or bf16, CPU), sequence s on
// rows cu_seqlens[s] .. cu_seqlens[s + 1] (`cu_seqlens` int32, at least batch + 1 entries, the
// last of them equal to tokens). `half_window` >= 0 restricts query i to keys j with
// |i - j| <= half_window; -1 lets it see its whole sequence. `rel_bias` (or null), f32 [heads,
// 2 c + 1] with c >= the longest sequence's length - 1, is added to the scaled scores: entry
// c + j - i for query i and key j. Writes a new [tokens, heads * head_dim] tensor of qkv's dtype
// to `*out`.
int embed_cpu_attention_varlen(const at::Tensor* qkv, const at::Tensor* cu_seqlens, int64_t batch, int64_t heads,
                               int64_t half_window, const at::Tensor* rel_bias, double scale, at::Tensor** out,
                               char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    const auto kind = qkv->scalar_type();
    TORCH_CHECK(qkv->device().is_cpu() && qkv->dim() == 2, "cpu attention: qkv must be a 2-D CPU tensor");
    TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16, "cpu attention: f32 or bf16, got ", kind);
    TORCH_CHECK(heads > 0 && qkv->size(1) % (3 * heads) == 0, "cpu attention: ", qkv->size(1),
                " columns are not Q, K and V of ", heads, " heads");
    TORCH_CHECK(cu_seqlens->device().is_cpu() && cu_seqlens->scalar_type() == at::kInt &&
                    cu_seqlens->dim() == 1 && cu_seqlens->numel() > batch,
                "cpu attention: cu_seqlens must be int32 [>= batch + 1] on the CPU");
    const int64_t tokens = qkv->size(0);
    const int64_t d = qkv->size(1) / (3 * heads);
    const auto cc = cu_seqlens->contiguous();
    const int32_t* cu = cc.const_data_ptr<int32_t>();
    int64_t max_len = 0;
    for (int64_t s = 0; s < batch; ++s) {
      TORCH_CHECK(cu[s] >= 0 && cu[s + 1] >= cu[s], "cpu attention: cu_seqlens must be non-decreasing from 0");
      max_len = std::max<int64_t>(max_len, cu[s + 1] - cu[s]);
    }
    TORCH_CHECK(cu[0] == 0 && cu[batch] == tokens, "cpu attention: cu_seqlens spans ", cu[batch], " rows, qkv has ",
                tokens);
    at::Tensor bc;
    int64_t center = 0;
    if (rel_bias != nullptr) {
      bc = rel_bias->contiguous();
      TORCH_CHECK(bc.device().is_cpu() && bc.scalar_type() == at::kFloat && bc.dim() == 2 && bc.size(0) == heads &&
                      bc.size(1) % 2 == 1 && bc.size(1) >= 2 * max_len - 1,
                  "cpu attention: rel_bias must be f32 [", heads, ", odd >= ", 2 * max_len - 1, "], got ", bc.sizes());
      center = (bc.size(1) - 1) / 2;
    }
    const float* bp = rel_bias != nullptr ? bc.const_data_ptr<float>() : nullptr;
    const auto x = qkv->contiguous();
    auto y = at::empty({tokens, heads * d}, x.options());
    const float fscale = static_cast<float>(scale);
    const int threads = std::max(1, at::get_num_threads());
    const int64_t per_thread = scratch_floats(max_len, d);
    std::vector<float> scratch(static_cast<size_t>(per_thread * threads));
    const void* in = x.const_data_ptr();
    void* o = y.mutable_data_ptr();
    // Sequences arrive longest first and cost the square of their length: hand out one at a
    // time so that the threads finish together. A sequence's heads run one after another on
    // its rows, read once from memory and then from cache.
#pragma omp parallel num_threads(threads)
    {
      float* mine = scratch.data() + per_thread * omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
      for (int64_t s = 0; s < batch; ++s) {
        const int64_t start = cu[s];
        const int64_t len = cu[s + 1] - start;
        for (int64_t h = 0; h < heads && len > 0; ++h) {
          if (kind == at::kFloat) {
            attend_f32(static_cast<const float*>(in), start, len, h, heads, d, fscale, half_window, bp, center,
                       static_cast<float*>(o), mine);
          } else {
            attend_bf16(static_cast<const uint16_t*>(in), start, len, h, heads, d, fscale, half_window, bp, center,
                        static_cast<uint16_t*>(o), mine);
          }
        }
      }
    }
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
