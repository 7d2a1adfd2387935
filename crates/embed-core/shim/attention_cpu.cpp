// Variable-length self-attention on the CPU: every sequence of a batch attends over its own
// tokens only, read straight from the fused QKV projection's rows, with no padding, no mask
// tensor and no per-shape dispatch. libtorch has no CPU kernel for this (its varlen flash
// attention is CUDA only), and its padded SDPA spends most of a short-text batch on padding,
// masks and the layout copies around it: for MiniLM on short texts the attention stage cost
// about a quarter of an int8 forward pass.
//
// Per (sequence, key-value head), on one thread: K is transposed into a [head_dim, len] scratch
// and V copied to [len, head_dim] (both f32); then for each query head sharing them (one, or a
// group under grouped-query attention) and each query, the scores q.k over the keys in reach
// (the whole sequence, a sliding window, the causal past), plus a learned bias per distance
// where the family has one (MPNet), their softmax in f32 and the weighted sum of V. Every inner loop runs over a contiguous f32 row without a horizontal reduction in the
// dot products, so the compiler vectorizes each for AVX-512, AVX2 and baseline x86-64 (picked
// at load). Inputs f32 or bf16; the output has the input's dtype (bf16 rounded to nearest even,
// as libtorch rounds).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <omp.h>

#include <type_traits>
#include <vector>

#include "common.h"

using namespace embed_shim;

namespace {
int64_t padded_len(int64_t len) { return (len + kLanes - 1) / kLanes * kLanes; }

// Queries handled together: their accumulators are independent, so the FMAs overlap instead of
// waiting on each other, and each row of K and V loaded serves all of them.
constexpr int64_t kQueries = 4;

// Floats of scratch one thread needs for sequences up to `max_len` tokens.
int64_t scratch_floats(int64_t max_len, int64_t d) {
  const int64_t lp = padded_len(max_len);
  const int64_t dp = padded_len(d);
  return d * lp + lp * dp + kQueries * (lp + d);
}

// One attention call: Q, K and V rows (any row stride, each head's `d` values contiguous),
// `heads` query heads sharing each of `heads / group` key-value heads in groups of `group`
// (grouped-query attention; 1 for plain multi-head), and what query i sees of its sequence:
// keys i - left ..= i + right (-1: unbounded on that side), plus a distance bias or not.
template <typename T>
struct Job {
  const T* q;
  const T* k;
  const T* v;
  int64_t q_stride, k_stride, v_stride;
  T* out;  // [tokens, heads * d]
  int64_t heads, group, d;
  float scale;
  int64_t left, right;
  const float* bias;  // [heads, 2 center + 1] or null
  int64_t center;
};

// Sequence rows start .. start + len, key-value head kh and its group of query heads.
template <typename T>
__attribute__((always_inline)) inline void attend_t(const Job<T>& job, int64_t start, int64_t len, int64_t kh,
                                                    float* scratch) {
  const int64_t d = job.d;
  const int64_t lp = padded_len(len);
  const int64_t dp = padded_len(d);
  float* kt = scratch;             // [d, lp]: K transposed, zeros past len
  float* v = kt + d * lp;          // [len, dp]: V, zeros past d
  float* p = v + lp * dp;          // [kQueries, lp]: the queries' scores, then their weights
  float* qs = p + kQueries * lp;   // [kQueries, d]: the queries, scaled
  for (int64_t j = 0; j < len; ++j) {
    const T* kr = job.k + (start + j) * job.k_stride + kh * d;
    const T* vr = job.v + (start + j) * job.v_stride + kh * d;
    for (int64_t c = 0; c < d; ++c) kt[c * lp + j] = load_f(kr, c);
    for (int64_t c = 0; c < d; ++c) v[j * dp + c] = load_f(vr, c);
    for (int64_t c = d; c < dp; ++c) v[j * dp + c] = 0.f;
  }
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = len; j < lp; ++j) kt[c * lp + j] = 0.f;
  }
  for (int64_t h = kh * job.group; h < (kh + 1) * job.group; ++h) {
    for (int64_t i0 = 0; i0 < len; i0 += kQueries) {
      // Past the sequence's end the last query is computed again and not stored.
      int64_t qi[kQueries], lo[kQueries], hi[kQueries];
      int64_t from = len, to = 0;
      for (int64_t k = 0; k < kQueries; ++k) {
        qi[k] = std::min(i0 + k, len - 1);
        // The keys query qi sees: [lo, hi).
        lo[k] = job.left < 0 ? 0 : std::max<int64_t>(0, qi[k] - job.left);
        hi[k] = job.right < 0 ? len : std::min<int64_t>(len, qi[k] + job.right + 1);
        from = std::min(from, lo[k]);
        to = std::max(to, hi[k]);
        const T* qr = job.q + (start + qi[k]) * job.q_stride + h * d;
        for (int64_t c = 0; c < d; ++c) qs[k * d + c] = load_f(qr, c) * job.scale;
      }
      // Only the blocks of keys some of these queries see (a causal query sees none after
      // itself, a window none outside it).
      const int64_t jfirst = from / kLanes * kLanes;
      const int64_t jend = padded_len(to);
      // Scores, sixteen keys at a time, summed over the head's dimensions in registers.
      for (int64_t jb = jfirst; jb < jend; jb += kLanes) {
        v16 acc[kQueries] = {};
        for (int64_t c = 0; c < d; ++c) {
          const v16 kc = load16(kt + c * lp + jb);
          for (int64_t k = 0; k < kQueries; ++k) acc[k] += qs[k * d + c] * kc;
        }
        for (int64_t k = 0; k < kQueries; ++k) store16(p + k * lp + jb, acc[k]);
      }
      // A learned bias per query-key distance (MPNet): row h of the table, distance j - i at
      // center + j - i.
      if (job.bias != nullptr) {
        for (int64_t k = 0; k < kQueries; ++k) {
          float* pk = p + k * lp;
          const float* bk = job.bias + h * (2 * job.center + 1) + job.center - qi[k];
#pragma omp simd
          for (int64_t j = from; j < to; ++j) pk[j] += bk[j];
        }
      }
      float inv[kQueries];
      for (int64_t k = 0; k < kQueries; ++k) {
        float* pk = p + k * lp;
        const int64_t l = lo[k], u = hi[k];
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t j = jfirst; j < jend; ++j) m = std::max(m, (j >= l && j < u) ? pk[j] : -INFINITY);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = jfirst; j < jend; ++j) {
          const float e = (j >= l && j < u) ? exp_approx(pk[j] - m) : 0.f;
          pk[j] = e;
          sum += e;
        }
        inv[k] = 1.f / sum;
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
          T* o = job.out + (start + i0 + k) * job.heads * d + h * d + cb;
          for (int64_t c = 0; c < width; ++c) store_f(o, c, r[c]);
        }
      }
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_f32(const Job<float>& job, int64_t start, int64_t len, int64_t kh, float* scratch) {
  attend_t(job, start, len, kh, scratch);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_bf16(const Job<uint16_t>& job, int64_t start, int64_t len, int64_t kh, float* scratch) {
  attend_t(job, start, len, kh, scratch);
}

// Runs `job` over every sequence and key-value head.
template <typename T>
void run(const Job<T>& job, const int32_t* cu, int64_t batch, int64_t max_len) {
  const int threads = std::max(1, at::get_num_threads());
  const int64_t per_thread = scratch_floats(max_len, job.d);
  std::vector<float> scratch(static_cast<size_t>(per_thread * threads));
  const int64_t kv_heads = job.heads / job.group;
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
      for (int64_t kh = 0; kh < kv_heads && len > 0; ++kh) {
        if constexpr (std::is_same_v<T, float>) {
          attend_f32(job, start, len, kh, mine);
        } else {
          attend_bf16(job, start, len, kh, mine);
        }
      }
    }
  }
}

template <typename T>
Job<T> job_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out) {
  Job<T> job{};
  job.q = static_cast<const T*>(q.const_data_ptr());
  job.k = static_cast<const T*>(k.const_data_ptr());
  job.v = static_cast<const T*>(v.const_data_ptr());
  job.q_stride = q.stride(0);
  job.k_stride = k.stride(0);
  job.v_stride = v.stride(0);
  job.out = static_cast<T*>(out.mutable_data_ptr());
  return job;
}
}  // namespace

extern "C" {

// Self-attention of `batch` sequences packed back to back, sequence s on rows cu_seqlens[s] ..
// cu_seqlens[s + 1] (`cu_seqlens` int32, at least batch + 1 entries, the last of them equal to
// the number of rows). `q` is [tokens, heads * head_dim], `k` and `v` [tokens, kv_heads *
// head_dim] (kv_heads dividing heads: grouped-query attention), all f32 or all bf16 on the CPU,
// each row's values contiguous (any row stride: views of one fused QKV projection do). Query i
// sees keys i - left ..= i + right of its sequence (-1: unbounded on that side). `rel_bias`
// (or null), f32 [heads, 2 c + 1] with c >= the longest sequence's length - 1, is added to the
// scaled scores: entry c + j - i for query i and key j. Writes a new [tokens, heads * head_dim]
// tensor of q's dtype to `*out`.
int embed_cpu_attention_varlen(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                               const at::Tensor* cu_seqlens, int64_t batch, int64_t heads, int64_t kv_heads,
                               int64_t left, int64_t right, const at::Tensor* rel_bias, double scale,
                               at::Tensor** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    const auto kind = q->scalar_type();
    TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16, "cpu attention: f32 or bf16, got ", kind);
    for (const at::Tensor* t : {q, k, v}) {
      TORCH_CHECK(t->device().is_cpu() && t->dim() == 2 && t->scalar_type() == kind && t->stride(1) == 1 &&
                      t->size(0) == q->size(0),
                  "cpu attention: q, k and v must be 2-D CPU tensors of one dtype and row count, each row contiguous");
    }
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && q->size(1) % heads == 0, "cpu attention: ",
                q->size(1), " query columns are not ", heads, " heads sharing ", kv_heads, " key-value heads");
    const int64_t d = q->size(1) / heads;
    TORCH_CHECK(k->size(1) == kv_heads * d && v->size(1) == kv_heads * d, "cpu attention: k and v must have ",
                kv_heads, " heads of ", d);
    TORCH_CHECK(cu_seqlens->device().is_cpu() && cu_seqlens->scalar_type() == at::kInt &&
                    cu_seqlens->dim() == 1 && cu_seqlens->numel() > batch,
                "cpu attention: cu_seqlens must be int32 [>= batch + 1] on the CPU");
    const int64_t tokens = q->size(0);
    const auto cc = cu_seqlens->contiguous();
    const int32_t* cu = cc.const_data_ptr<int32_t>();
    int64_t max_len = 0;
    for (int64_t s = 0; s < batch; ++s) {
      TORCH_CHECK(cu[s] >= 0 && cu[s + 1] >= cu[s], "cpu attention: cu_seqlens must be non-decreasing from 0");
      max_len = std::max<int64_t>(max_len, cu[s + 1] - cu[s]);
    }
    TORCH_CHECK(cu[0] == 0 && cu[batch] == tokens, "cpu attention: cu_seqlens spans ", cu[batch], " rows, q has ",
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
    auto y = at::empty({tokens, heads * d}, q->options());
    auto fill = [&](auto job) {
      job.heads = heads;
      job.group = heads / kv_heads;
      job.d = d;
      job.scale = static_cast<float>(scale);
      job.left = left;
      job.right = right;
      job.bias = rel_bias != nullptr ? bc.const_data_ptr<float>() : nullptr;
      job.center = center;
      run(job, cu, batch, max_len);
    };
    if (kind == at::kFloat) {
      fill(job_of<float>(*q, *k, *v, y));
    } else {
      fill(job_of<uint16_t>(*q, *k, *v, y));
    }
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
