// Fused ops of the CUDA forward pass (see model_ops.h). Memory-bound kernels: each reads its input
// once and writes its output once, with bf16x2 or 16-byte accesses where the shapes allow.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kv_heads.cuh"
#include "backend/cuda/model_ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::check;
using detail::Bf16x8;
using detail::check_kv_heads;
using detail::check_launch;
using detail::grid_for;
using detail::kv_count;
using detail::kv_k;
using detail::kv_pos_of;
using detail::kv_v;
using detail::require;

namespace {

constexpr int kThreads = detail::kElementwiseThreads;

// One thread per (row, P consecutive rotation pairs): the P angles are computed once and applied
// to every Q and K head of the row (P = 2: bf16x2 accesses, a warp reads whole 128-byte lines);
// the same thread copies V's elements at those offsets. K, V and the position of KV head g go to
// its entry len[g] + row.
template <int P>
__global__ void qkv_rope_append_kernel(const __nv_bfloat16* __restrict__ qkv, int64_t n, int n_head, int n_head_kv,
                                       int head_dim, const int32_t* __restrict__ pos,
                                       const float* __restrict__ inv_freq, __nv_bfloat16* __restrict__ q_out,
                                       __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,
                                       int32_t* __restrict__ pos_cache, const int32_t* __restrict__ len) {
  const int half = head_dim / 2;
  const int per_row = half / P;
  const int64_t q_dim = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  const int64_t width = q_dim + 2 * kv_dim;
  const int64_t total = n * per_row;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t / per_row;
    const int i = static_cast<int>(t % per_row) * P;
    float sn[P], cs[P];
#pragma unroll
    for (int p = 0; p < P; ++p) sincosf(static_cast<float>(pos[row]) * inv_freq[i + p], &sn[p], &cs[p]);
    const __nv_bfloat16* src = qkv + row * width + i;
    for (int h = 0; h < n_head + n_head_kv; ++h) {
      const __nv_bfloat16* s = src + static_cast<int64_t>(h) * head_dim;  // K heads follow the Q heads
      const int g = h - n_head;
      const int64_t entry = g < 0 ? 0 : static_cast<int64_t>(len[g]) + row;
      __nv_bfloat16* d = g < 0 ? q_out + row * q_dim + static_cast<int64_t>(h) * head_dim + i
                               : k_cache + entry * kv_dim + static_cast<int64_t>(g) * head_dim + i;
      if constexpr (P == 2) {
        const float2 x0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s));
        const float2 x1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + half));
        *reinterpret_cast<__nv_bfloat162*>(d) =
            __floats2bfloat162_rn(x0.x * cs[0] - x1.x * sn[0], x0.y * cs[1] - x1.y * sn[1]);
        *reinterpret_cast<__nv_bfloat162*>(d + half) =
            __floats2bfloat162_rn(x1.x * cs[0] + x0.x * sn[0], x1.y * cs[1] + x0.y * sn[1]);
      } else {
        const float x0 = __bfloat162float(s[0]), x1 = __bfloat162float(s[half]);
        d[0] = __float2bfloat16(x0 * cs[0] - x1 * sn[0]);
        d[half] = __float2bfloat16(x1 * cs[0] + x0 * sn[0]);
      }
      if (g >= 0) {
        const __nv_bfloat16* vs = s + kv_dim;  // V heads follow the K heads
        __nv_bfloat16* vd = v_cache + entry * kv_dim + static_cast<int64_t>(g) * head_dim + i;
#pragma unroll
        for (int p = 0; p < P; ++p) {
          vd[p] = vs[p];
          vd[half + p] = vs[half + p];
        }
        if (i == 0) pos_cache[entry * n_head_kv + g] = pos[row];
      }
    }
  }
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

template <bool kVec>
__global__ void swiglu_fused_kernel(const __nv_bfloat16* __restrict__ gu, int64_t n, int64_t n_ff,
                                    __nv_bfloat16* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if constexpr (kVec) {
    const int64_t per_row = n_ff / 8;
    for (int64_t t = first; t < n * per_row; t += stride) {
      const int64_t row = t / per_row, c = t % per_row;
      const __nv_bfloat16* g_ptr = gu + row * 2 * n_ff + c * 8;
      Bf16x8 g = *reinterpret_cast<const Bf16x8*>(g_ptr);
      const Bf16x8 u = *reinterpret_cast<const Bf16x8*>(g_ptr + n_ff);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 gf = __bfloat1622float2(g.v[j]), uf = __bfloat1622float2(u.v[j]);
        g.v[j] = __floats2bfloat162_rn(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
      }
      *reinterpret_cast<Bf16x8*>(out + row * n_ff + c * 8) = g;
    }
  } else {
    for (int64_t t = first; t < n * n_ff; t += stride) {
      const int64_t row = t / n_ff, c = t % n_ff;
      out[t] = __float2bfloat16(silu_mul(__bfloat162float(gu[row * 2 * n_ff + c]),
                                         __bfloat162float(gu[row * 2 * n_ff + n_ff + c])));
    }
  }
}

__device__ __forceinline__ bool forced_row(int64_t row, int64_t n, const int32_t* pos, int keep_first,
                                           int32_t recent_from) {
  return row == n - 1 || pos[row] < keep_first || pos[row] >= recent_from;
}

// One warp per row: the fc2 dot product of GELU(h row) with w2.
__global__ void gelu_dot_kernel(const __nv_bfloat16* __restrict__ h, int64_t n, int n_hidden,
                                const float* __restrict__ w2, float b2, float* __restrict__ scores) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; row < n; row += warps) {
    const __nv_bfloat16* hr = h + row * n_hidden;
    float acc = 0.0f;
    for (int j = lane; j < n_hidden; j += 32) {
      const float x = __bfloat162float(hr[j]);
      // GELU, exact erf form (torch.nn.GELU()).
      acc += w2[j] * (0.5f * x * (1.0f + erff(x * 0.70710678118654752f)));
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) scores[row] = acc + b2;
  }
}

// One warp per (entry, KV head): the L1 norm of the head's value vector and the L2 norm of its key.
__global__ void entry_norms_kernel(const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                                   const int32_t* __restrict__ len, int64_t max_n, int n_head_kv, int head_dim,
                                   float* __restrict__ v_l1, int64_t ld_v, float* __restrict__ k_l2, int64_t ld_k) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t total = max_n * n_head_kv;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < total; t += warps) {
    const int64_t j = t / n_head_kv;
    const int g = static_cast<int>(t % n_head_kv);
    if (j >= len[g]) continue;  // uniform in the warp
    const int64_t off = j * n_head_kv * static_cast<int64_t>(head_dim) + static_cast<int64_t>(g) * head_dim;
    float l1 = 0.0f, sq = 0.0f;
    for (int d = lane; d < head_dim; d += 32) {
      if (v_l1) l1 += fabsf(__bfloat162float(v[off + d]));
      if (k_l2) {
        const float x = __bfloat162float(k[off + d]);
        sq += x * x;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      l1 += __shfl_xor_sync(0xffffffffu, l1, o);
      sq += __shfl_xor_sync(0xffffffffu, sq, o);
    }
    if (lane == 0) {
      if (v_l1) v_l1[j * ld_v + g] = l1;
      if (k_l2) k_l2[j * ld_k + g] = sqrtf(sq);
    }
  }
}

// One thread per (KV head, kept entry, W values of head_dim): K and V values, and (the first of
// the entry's threads) its position and mass. W = 8: 16-byte accesses.
template <int W>
__global__ void gather_entries_kernel(const __nv_bfloat16* __restrict__ src_k, const __nv_bfloat16* __restrict__ src_v,
                                      const int32_t* __restrict__ src_pos, const float* __restrict__ src_mass,
                                      int64_t src_rows, const int32_t* __restrict__ keep,
                                      const int32_t* __restrict__ dst_len, int64_t max_n, int n_head_kv, int head_dim,
                                      __nv_bfloat16* __restrict__ dst_k, __nv_bfloat16* __restrict__ dst_v,
                                      int32_t* __restrict__ dst_pos, float* __restrict__ dst_mass) {
  using Vec = std::conditional_t<W == 8, uint4, __nv_bfloat16>;
  const int per_entry = head_dim / W;
  const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  const int64_t total = max_n * n_head_kv * per_entry;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t item = t / per_entry;  // (i, g), the layout of keep
    const int c = static_cast<int>(t % per_entry) * W;
    const int64_t i = item / n_head_kv;
    const int g = static_cast<int>(item % n_head_kv);
    if (i >= dst_len[g]) continue;
    const int64_t j = keep[item];
    const bool in = j >= 0 && j < src_rows;
    const int64_t from = (in ? j : 0) * kv_dim + static_cast<int64_t>(g) * head_dim + c;
    const int64_t to = i * kv_dim + static_cast<int64_t>(g) * head_dim + c;
    Vec zero{};
    *reinterpret_cast<Vec*>(dst_k + to) = in ? *reinterpret_cast<const Vec*>(src_k + from) : zero;
    *reinterpret_cast<Vec*>(dst_v + to) = in ? *reinterpret_cast<const Vec*>(src_v + from) : zero;
    if (c == 0) {
      dst_pos[item] = in ? src_pos[j * n_head_kv + g] : 0;
      if (src_mass && dst_mass) dst_mass[item] = in ? src_mass[j * n_head_kv + g] : 0.0f;
    }
  }
}

__global__ void force_rows_kernel(float* scores, int64_t n, const int32_t* __restrict__ pos, int keep_first,
                                  int32_t recent_from) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (forced_row(i, n, pos, keep_first, recent_from)) scores[i] = INFINITY;
}

__global__ void mean_over_heads_kernel(const float* __restrict__ probs, int n_head, int group, int64_t ld,
                                       const int32_t* __restrict__ offset, int64_t n, float* __restrict__ scores) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int h = 0; h < n_head; ++h) s += probs[static_cast<int64_t>(h) * ld + offset[h / group] + i];
    scores[i] = s / static_cast<float>(n_head);
  }
}

// Pass 1 of attention_key_mass, one block per (query row >= from, head): the softmax's max and sum
// over the entries of its KV head the row sees. Threads split the entries (a decode step's one row
// has thousands; a warp scanning them in order took 1.7 ms per layer of Llama-2-7B at 2K), each
// keeps an online max and sum, and the block combines them.
__global__ void key_mass_rows_kernel(const __nv_bfloat16* __restrict__ q, const int32_t* __restrict__ q_pos,
                                     int64_t n, int64_t from, const KvHeads kv, int n_head, int group, int head_dim,
                                     float scale, float2* __restrict__ row_stats) {
  __shared__ float sm[32], sl[32];
  const int64_t kv_stride = static_cast<int64_t>(n_head / group) * head_dim;
  for (int64_t t = blockIdx.x; t < (n - from) * n_head; t += gridDim.x) {
    const int64_t i = from + t / n_head;
    const int h = static_cast<int>(t % n_head), g = h / group;
    const __nv_bfloat16* qr = q + (i * n_head + h) * head_dim;
    const __nv_bfloat16* kh = kv_k(kv) + static_cast<int64_t>(g) * head_dim;
    const int32_t* kp = kv_pos_of(kv, g);
    const int64_t n_kv = kv_count(kv, g);
    const int32_t p = q_pos[i];
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = threadIdx.x; j < n_kv; j += blockDim.x) {
      if (kp[j * kv.pos_stride] > p) continue;
      const __nv_bfloat16* kr = kh + j * kv_stride;
      float dot = 0.0f;
      for (int d = 0; d < head_dim; ++d) dot += __bfloat162float(qr[d]) * __bfloat162float(kr[d]);
      dot *= scale;
      const float m_new = fmaxf(m, dot);
      l = l * __expf(m - m_new) + __expf(dot - m_new);
      m = m_new;
    }
    // (m, l) pairs combine as m = max, l = l1·e^(m1-m) + l2·e^(m2-m): within warps, then across.
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
      const float mm = fmaxf(m, m2);
      l = (m == -INFINITY ? 0.0f : l * __expf(m - mm)) + (m2 == -INFINITY ? 0.0f : l2 * __expf(m2 - mm));
      m = mm;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) sm[warp] = m, sl[warp] = l;
    __syncthreads();
    if (threadIdx.x == 0) {
      float mt = -INFINITY, lt = 0.0f;
      for (int w = 0; w < warps; ++w) {
        const float mm = fmaxf(mt, sm[w]);
        lt = (mt == -INFINITY ? 0.0f : lt * __expf(mt - mm)) + (sm[w] == -INFINITY ? 0.0f : sl[w] * __expf(sm[w] - mm));
        mt = mm;
      }
      row_stats[t] = make_float2(mt, lt);
    }
    __syncthreads();
  }
}

// Pass 2, one warp per (entry, KV head): Σ over the query rows >= from that see the entry and the
// query heads of the group of exp(s - max) / sum, the probability each paid it, added to mass.
__global__ void key_mass_kernel(const __nv_bfloat16* __restrict__ q, const int32_t* __restrict__ q_pos, int64_t n,
                                int64_t from, const KvHeads kv, int n_head, int group, int head_dim, float scale,
                                const float2* __restrict__ row_stats, float* __restrict__ mass, int64_t ld) {
  const int lane = threadIdx.x % 32;
  const int n_head_kv = n_head / group;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < kv.max_n * n_head_kv;
       t += warps) {
    const int64_t j = t / n_head_kv;
    const int g = static_cast<int>(t % n_head_kv);
    if (j >= kv_count(kv, g)) continue;  // uniform in the warp
    const __nv_bfloat16* kr = kv_k(kv) + j * kv_stride + static_cast<int64_t>(g) * head_dim;
    const int32_t pj = kv_pos_of(kv, g)[j * kv.pos_stride];
    float sum = 0.0f;
    for (int64_t i = from; i < n; ++i) {
      if (q_pos[i] < pj) continue;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const __nv_bfloat16* qr = q + (i * n_head + h) * head_dim;
        float dot = 0.0f;
        for (int d = lane; d < head_dim; d += 32) dot += __bfloat162float(qr[d]) * __bfloat162float(kr[d]);
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float2 st = row_stats[(i - from) * n_head + h];
        sum += expf(dot * scale - st.x) / st.y;
      }
    }
    if (lane == 0) mass[j * ld + g] += sum;
  }
}

// The key mass of many query rows through tensor cores (attention_key_mass_gemm): S = scale·Q·K^T
// of a chunk of rows of one query head, by cuBLAS, then these two passes over S [rows x n_kv].
// Pass 1, one warp per row: the softmax's max and sum over the entries the row sees (a prefix:
// positions ascend).
__global__ void key_mass_gemm_rows_kernel(const float* __restrict__ s, int64_t rows, int64_t n_kv,
                                          const int32_t* __restrict__ q_pos, const int32_t* __restrict__ kp,
                                          int64_t pos_stride, float2* __restrict__ stats) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; i < rows; i += warps) {
    const int32_t p = q_pos[i];
    int64_t lo = 0, hi = n_kv;  // visible = #entries with pos <= p
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (kp[mid * pos_stride] <= p) lo = mid + 1;
      else hi = mid;
    }
    const float* row = s + i * n_kv;
    float m = -INFINITY;
    for (int64_t j = lane; j < lo; j += 32) m = fmaxf(m, row[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.0f;
    for (int64_t j = lane; j < lo; j += 32) l += __expf(row[j] - m);
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) stats[i] = make_float2(m, l > 0.0f ? 1.0f / l : 0.0f);
  }
}

// Pass 2: Σ over the chunk's rows that see entry j of exp(s - max) / sum, added to mass[j · ld + g].
// Threads over entries (coalesced rows of S), blockIdx.y over slices of rows, so that thousands of
// rows are summed in parallel; the slices meet in atomics.
__global__ void key_mass_gemm_cols_kernel(const float* __restrict__ s, int64_t rows, int64_t n_kv,
                                          const int32_t* __restrict__ q_pos, const int32_t* __restrict__ kp,
                                          int64_t pos_stride, const float2* __restrict__ stats,
                                          float* __restrict__ mass, int64_t ld, int g, int64_t rows_per_slice) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n_kv) return;
  const int32_t pj = kp[j * pos_stride];
  const int64_t i0 = blockIdx.y * rows_per_slice, i1 = min(rows, i0 + rows_per_slice);
  float sum = 0.0f;
  for (int64_t i = i0; i < i1; ++i) {
    const float2 st = stats[i];
    const float e = __expf(s[i * n_kv + j] - st.x) * st.y;
    sum += q_pos[i] >= pj ? e : 0.0f;
  }
  if (sum != 0.0f) atomicAdd(mass + j * ld + g, sum);
}

// splitmix64 finaliser: a good 64-bit mix of (seed, index).
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void fill_uniform_kernel(__nv_bfloat16* p, int64_t count, uint64_t seed, float bound) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i));
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
    p[i] = __float2bfloat16((2.0f * u - 1.0f) * bound);
  }
}

__global__ void fill_value_kernel(float* p, int64_t count, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

// One warp per (row, head); lane l holds dimensions l, l+32, ... of q and of the output.
constexpr int kGenericMaxDim = 256;
__global__ void attention_generic_kernel(const __nv_bfloat16* __restrict__ q, const int32_t* __restrict__ q_pos,
                                         int64_t n, const KvHeads kv, int n_head, int group, int head_dim,
                                         float scale, __nv_bfloat16* __restrict__ out) {
  constexpr int T = kGenericMaxDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (item >= n * n_head) return;
  const int64_t row = item / n_head;
  const int h = static_cast<int>(item % n_head);
  const int64_t q_stride = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_stride = static_cast<int64_t>(n_head / group) * head_dim;
  const __nv_bfloat16* qr = q + row * q_stride + static_cast<int64_t>(h) * head_dim;
  const int g = h / group;
  const int64_t kv_off = static_cast<int64_t>(g) * head_dim;
  const __nv_bfloat16* k = kv_k(kv);
  const __nv_bfloat16* v = kv_v(kv);
  const int32_t* kv_pos = kv_pos_of(kv, g);
  const int64_t n_kv = kv_count(kv, g);
  float qv[T], o[T];
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int d = lane + 32 * t;
    qv[t] = d < head_dim ? __bfloat162float(qr[d]) * scale : 0.0f;
    o[t] = 0.0f;
  }
  const int32_t qp = q_pos[row];
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < n_kv && kv_pos[j * kv.pos_stride] <= qp; ++j) {
    const __nv_bfloat16* kr = k + j * kv_stride + kv_off;
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int d = lane + 32 * t;
      if (d < head_dim) s += qv[t] * __bfloat162float(kr[d]);
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    const float m_new = fmaxf(m, s);
    const float alpha = __expf(m - m_new), e = __expf(s - m_new);
    l = l * alpha + e;
    const __nv_bfloat16* vr = v + j * kv_stride + kv_off;
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const int d = lane + 32 * t;
      o[t] = o[t] * alpha + (d < head_dim ? e * __bfloat162float(vr[d]) : 0.0f);
    }
    m = m_new;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  __nv_bfloat16* orow = out + row * q_stride + static_cast<int64_t>(h) * head_dim;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int d = lane + 32 * t;
    if (d < head_dim) orow[d] = __float2bfloat16(o[t] * inv);
  }
}

// Decode attention, part 1: block (head, split) reduces cache entries [j0, j1) of its slice. Each
// warp takes every 4th entry, 4 at a time (loads first, then the dot products); lane l holds
// dimensions [l·D, l·D + D). Results: m (base-2 max), l (sum), o[head_dim] (unnormalised).
constexpr int kDecodeThreads = 128;

// D consecutive bf16 (2·D bytes, aligned to that) as floats, in one load.
template <int D>
__device__ __forceinline__ void load_bf16(const __nv_bfloat16* p, float (&out)[D]) {
  if constexpr (D == 1) {
    out[0] = __bfloat162float(*p);
  } else {
    using Vec = std::conditional_t<D == 2, uint32_t, std::conditional_t<D == 4, uint2, uint4>>;
    const Vec raw = *reinterpret_cast<const Vec*>(p);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < D / 2; ++i) {
      const float2 f = __bfloat1622float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_kernel(
    const __nv_bfloat16* __restrict__ q, int32_t q_pos, const KvHeads kv, int group, int64_t kv_stride, int splits,
    float scale_log2, float* __restrict__ scratch, const int32_t* __restrict__ q_pos_dev) {
  constexpr int HD = 32 * D, W = kDecodeThreads / 32;
  if (q_pos_dev) q_pos = *q_pos_dev;
  __shared__ float s_m[W], s_l[W], s_o[W][HD];
  __shared__ int64_t s_vis;
  const int h = blockIdx.x, split = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = h / group;
  const __nv_bfloat16* k = kv_k(kv);
  const __nv_bfloat16* v = kv_v(kv);
  if (threadIdx.x == 0) {  // entries of the head visible to the row: positions ascend, binary search
    const int32_t* kv_pos = kv_pos_of(kv, g);
    int64_t lo = 0, hi = kv_count(kv, g);
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (kv_pos[mid * kv.pos_stride] <= q_pos) lo = mid + 1;
      else hi = mid;
    }
    s_vis = lo;
  }
  __syncthreads();
  const int64_t vis = s_vis, per = (vis + splits - 1) / splits;
  const int64_t j0 = split * per, j1 = min(vis, j0 + per);
  const int64_t off = static_cast<int64_t>(g) * HD + lane * D;
  float qv[D], o[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    qv[d] = __bfloat162float(q[static_cast<int64_t>(h) * HD + lane * D + d]) * scale_log2;
    o[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = j0 + warp; j < j1; j += 4 * W) {
    float kr[4][D], vr[4][D], sc[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t jj = min(j + b * W, j1 - 1);  // past the slice: a valid row, masked below
      load_bf16<D>(k + jj * kv_stride + off, kr[b]);
      load_bf16<D>(v + jj * kv_stride + off, vr[b]);
    }
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      float dot = 0.0f;
#pragma unroll
      for (int d = 0; d < D; ++d) dot += qv[d] * kr[b][d];
      sc[b] = dot;
    }
#pragma unroll
    for (int off2 = 16; off2 > 0; off2 >>= 1)
#pragma unroll
      for (int b = 0; b < 4; ++b) sc[b] += __shfl_xor_sync(0xffffffffu, sc[b], off2);
    float mx = m;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      if (j + b * W >= j1) sc[b] = -INFINITY;
      mx = fmaxf(mx, sc[b]);
    }
    const float alpha = exp2f(m - mx);  // m = -inf at first: 0
    l *= alpha;
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] *= alpha;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const float pb = exp2f(sc[b] - mx);
      l += pb;
#pragma unroll
      for (int d = 0; d < D; ++d) o[d] += pb * vr[b][d];
    }
    m = mx;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int d = 0; d < D; ++d) s_o[warp][lane * D + d] = o[d];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < W; ++w) M = fmaxf(M, s_m[w]);
  float* dst = scratch + (static_cast<int64_t>(h) * splits + split) * (HD + 2);
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float acc = 0.0f;
    for (int w = 0; w < W; ++w)
      if (s_m[w] != -INFINITY) acc += s_o[w][d] * exp2f(s_m[w] - M);
    dst[2 + d] = acc;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < W; ++w)
      if (s_m[w] != -INFINITY) L += s_l[w] * exp2f(s_m[w] - M);
    dst[0] = M;
    dst[1] = L;
  }
}

// Decode attention, part 2: merge the splits of each head.
__global__ void attention_decode_merge_kernel(const float* __restrict__ scratch, int splits, int head_dim,
                                              __nv_bfloat16* __restrict__ out) {
  const int h = blockIdx.x;
  const float* base = scratch + static_cast<int64_t>(h) * splits * (head_dim + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, base[s * (head_dim + 2)]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = base[s * (head_dim + 2)];
    if (ms != -INFINITY) L += base[s * (head_dim + 2) + 1] * exp2f(ms - M);
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = base[s * (head_dim + 2)];
      if (ms != -INFINITY) acc += base[s * (head_dim + 2) + 2 + d] * exp2f(ms - M);
    }
    out[static_cast<int64_t>(h) * head_dim + d] = __float2bfloat16(acc * inv);
  }
}

}  // namespace

bool attention_decode_supported(int head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
}

int attention_decode_splits(const Context& ctx, int64_t n_kv, int n_head) {
  // Enough blocks to fill the device about four times over, slices of at least 64 entries.
  const int64_t want = std::max<int64_t>(1, 4 * static_cast<int64_t>(ctx.sm_count()) / std::max(1, n_head));
  return static_cast<int>(std::clamp<int64_t>(std::min(want, (n_kv + 63) / 64), 1, kDecodeMaxSplits));
}

void attention_decode(Context& ctx, const bf16* q, int32_t q_pos, const KvHeads& kv, int n_head, int n_head_kv,
                      int head_dim, bf16* out, float* scratch, const int32_t* q_pos_dev) {
  check_kv_heads(kv, n_head, n_head_kv, "attention_decode");
  require(attention_decode_supported(head_dim), "attention_decode", "head_dim " + std::to_string(head_dim));
  const int splits = attention_decode_splits(ctx, kv.max_n, n_head);
  const dim3 grid(static_cast<unsigned>(n_head), static_cast<unsigned>(splits));
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  const int group = n_head / n_head_kv;
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
  switch (head_dim) {
    case 32:
      attention_decode_kernel<1><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, kv, group, kv_stride, splits,
                                                                            scale_log2, scratch, q_pos_dev);
      break;
    case 64:
      attention_decode_kernel<2><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, kv, group, kv_stride, splits,
                                                                            scale_log2, scratch, q_pos_dev);
      break;
    case 128:
      attention_decode_kernel<4><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, kv, group, kv_stride, splits,
                                                                            scale_log2, scratch, q_pos_dev);
      break;
    default:
      attention_decode_kernel<8><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, kv, group, kv_stride, splits,
                                                                            scale_log2, scratch, q_pos_dev);
      break;
  }
  check_launch(ctx, "attention_decode");
  attention_decode_merge_kernel<<<n_head, 128, 0, ctx.stream()>>>(scratch, splits, head_dim, bf(out));
  check_launch(ctx, "attention_decode (merge)");
}

void qkv_rope_append(Context& ctx, const bf16* qkv, int64_t n, int n_head, int n_head_kv, int head_dim,
                     const int32_t* positions, const float* inv_freq, bf16* q_out, bf16* k_cache, bf16* v_cache,
                     int32_t* pos_cache, const int32_t* len) {
  require(n >= 0 && n_head > 0 && n_head_kv > 0 && head_dim > 0 && head_dim % 2 == 0 && len, "qkv_rope_append",
          "bad shape n=" + std::to_string(n) + " n_head=" + std::to_string(n_head) + " n_head_kv=" +
              std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  if (n == 0) return;
  const int half = head_dim / 2;
  const auto addr = reinterpret_cast<uintptr_t>(qkv) | reinterpret_cast<uintptr_t>(q_out) |
                    reinterpret_cast<uintptr_t>(k_cache);
  // bf16x2 accesses: every offset is even (head_dim, i even), so 4-byte aligned bases suffice.
  if (half % 2 == 0 && (addr & 3u) == 0) {
    qkv_rope_append_kernel<2><<<grid_for(ctx, n * (half / 2)), kThreads, 0, ctx.stream()>>>(
        bf(qkv), n, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_cache), bf(v_cache), pos_cache,
        len);
  } else {
    qkv_rope_append_kernel<1><<<grid_for(ctx, n * half), kThreads, 0, ctx.stream()>>>(
        bf(qkv), n, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_cache), bf(v_cache), pos_cache,
        len);
  }
  check_launch(ctx, "qkv_rope_append");
}

void swiglu_fused(Context& ctx, const bf16* gu, int64_t n, int64_t n_ff, bf16* out) {
  require(n >= 0 && n_ff > 0, "swiglu_fused", "bad shape n=" + std::to_string(n) + " n_ff=" + std::to_string(n_ff));
  if (n == 0) return;
  const auto addr = reinterpret_cast<uintptr_t>(gu) | reinterpret_cast<uintptr_t>(out);
  if (n_ff % 8 == 0 && (addr & 15u) == 0)
    swiglu_fused_kernel<true><<<grid_for(ctx, n * n_ff / 8), kThreads, 0, ctx.stream()>>>(bf(gu), n, n_ff, bf(out));
  else
    swiglu_fused_kernel<false><<<grid_for(ctx, n * n_ff), kThreads, 0, ctx.stream()>>>(bf(gu), n, n_ff, bf(out));
  check_launch(ctx, "swiglu_fused");
}

void gelu_dot(Context& ctx, const bf16* h, int64_t n, int n_hidden, const float* w2, float b2, float* scores) {
  require(n >= 0 && n_hidden > 0, "gelu_dot", "bad shape n=" + std::to_string(n) + " n_hidden=" + std::to_string(n_hidden));
  if (n == 0) return;
  gelu_dot_kernel<<<grid_for(ctx, n * 32), kThreads, 0, ctx.stream()>>>(bf(h), n, n_hidden, w2, b2, scores);
  check_launch(ctx, "gelu_dot");
}

void entry_norms(Context& ctx, const bf16* k, const bf16* v, const int32_t* len, int64_t max_n, int n_head_kv,
                 int head_dim, float* v_l1, int64_t ld_v, float* k_l2, int64_t ld_k) {
  require(max_n >= 0 && n_head_kv > 0 && head_dim > 0 && len && (!v_l1 || (v && ld_v >= n_head_kv)) &&
              (!k_l2 || (k && ld_k >= n_head_kv)),
          "entry_norms",
          "bad shape max_n=" + std::to_string(max_n) + " n_head_kv=" + std::to_string(n_head_kv) + " head_dim=" +
              std::to_string(head_dim) + " ld_v=" + std::to_string(ld_v) + " ld_k=" + std::to_string(ld_k));
  if (max_n == 0 || (!v_l1 && !k_l2)) return;
  entry_norms_kernel<<<grid_for(ctx, max_n * n_head_kv * 32), kThreads, 0, ctx.stream()>>>(
      bf(k), bf(v), len, max_n, n_head_kv, head_dim, v_l1, ld_v, k_l2, ld_k);
  check_launch(ctx, "entry_norms");
}

void gather_entries(Context& ctx, const bf16* src_k, const bf16* src_v, const int32_t* src_pos,
                    const float* src_mass, int64_t src_rows, const int32_t* keep, const int32_t* dst_len,
                    int64_t max_n, int n_head_kv, int head_dim, bf16* dst_k, bf16* dst_v, int32_t* dst_pos,
                    float* dst_mass) {
  require(max_n >= 0 && src_rows >= 0 && n_head_kv > 0 && head_dim > 0 && dst_len && (max_n == 0 || keep),
          "gather_entries",
          "bad shape max_n=" + std::to_string(max_n) + " src_rows=" + std::to_string(src_rows) + " n_head_kv=" +
              std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  if (max_n == 0) return;
  const auto addr = reinterpret_cast<uintptr_t>(src_k) | reinterpret_cast<uintptr_t>(src_v) |
                    reinterpret_cast<uintptr_t>(dst_k) | reinterpret_cast<uintptr_t>(dst_v);
  // 16-byte accesses when every head's slice is whole 16-byte chunks.
  if (head_dim % 8 == 0 && (addr & 15u) == 0) {
    gather_entries_kernel<8><<<grid_for(ctx, max_n * n_head_kv * (head_dim / 8)), kThreads, 0, ctx.stream()>>>(
        bf(src_k), bf(src_v), src_pos, src_mass, src_rows, keep, dst_len, max_n, n_head_kv, head_dim, bf(dst_k),
        bf(dst_v), dst_pos, dst_mass);
  } else {
    gather_entries_kernel<1><<<grid_for(ctx, max_n * n_head_kv * head_dim), kThreads, 0, ctx.stream()>>>(
        bf(src_k), bf(src_v), src_pos, src_mass, src_rows, keep, dst_len, max_n, n_head_kv, head_dim, bf(dst_k),
        bf(dst_v), dst_pos, dst_mass);
  }
  check_launch(ctx, "gather_entries");
}

void force_rows(Context& ctx, float* scores, int64_t n, const int32_t* positions, int keep_first, int32_t recent_from) {
  if (n <= 0) return;
  force_rows_kernel<<<grid_for(ctx, n), kThreads, 0, ctx.stream()>>>(scores, n, positions, keep_first, recent_from);
  check_launch(ctx, "force_rows");
}

void mean_over_heads(Context& ctx, const float* probs, int n_head, int group, int64_t ld, const int32_t* offset,
                     int64_t n, float* scores) {
  require(n_head > 0 && group > 0 && n_head % group == 0 && n >= 0 && ld >= n && offset, "mean_over_heads",
          "bad shape n_head=" + std::to_string(n_head) + " group=" + std::to_string(group) + " ld=" +
              std::to_string(ld) + " n=" + std::to_string(n));
  if (n == 0) return;
  mean_over_heads_kernel<<<grid_for(ctx, n), kThreads, 0, ctx.stream()>>>(probs, n_head, group, ld, offset, n, scores);
  check_launch(ctx, "mean_over_heads");
}

void fill_uniform(Context& ctx, bf16* p, int64_t count, uint64_t seed, float bound) {
  if (count <= 0) return;
  fill_uniform_kernel<<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(bf(p), count, seed, bound);
  check_launch(ctx, "fill_uniform");
}

void fill_value(Context& ctx, float* p, int64_t count, float value) {
  if (count <= 0) return;
  fill_value_kernel<<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(p, count, value);
  check_launch(ctx, "fill_value");
}

void attention_generic(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
                       int n_head_kv, int head_dim, bf16* out) {
  check_kv_heads(kv, n_head, n_head_kv, "attention_generic");
  require(n >= 0 && head_dim > 0 && head_dim <= kGenericMaxDim, "attention_generic",
          "bad shape n=" + std::to_string(n) + " head_dim=" + std::to_string(head_dim));
  if (n == 0) return;
  const int64_t warps = n * n_head;
  constexpr int kWarpsPerBlock = 4;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  require(blocks <= INT32_MAX, "attention_generic", "grid too large");
  attention_generic_kernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0, ctx.stream()>>>(
      bf(q), q_pos, n, kv, n_head, n_head / n_head_kv, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim)),
      bf(out));
  check_launch(ctx, "attention_generic");
}

void attention_key_mass(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, int64_t from, const KvHeads& kv,
                        int n_head, int n_head_kv, int head_dim, float* row_stats, float* mass, int64_t ld) {
  check_kv_heads(kv, n_head, n_head_kv, "attention_key_mass");
  require(n >= 0 && from >= 0 && head_dim > 0 && ld >= n_head_kv, "attention_key_mass",
          "bad shape n=" + std::to_string(n) + " from=" + std::to_string(from) + " head_dim=" +
              std::to_string(head_dim) + " ld=" + std::to_string(ld));
  if (kv.max_n == 0 || from >= n) return;  // no row adds anything
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int group = n_head / n_head_kv;
  key_mass_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>((n - from) * n_head, 65535)), 256, 0, ctx.stream()>>>(
      bf(q), q_pos, n, from, kv, n_head, group, head_dim, scale, reinterpret_cast<float2*>(row_stats));
  check_launch(ctx, "attention_key_mass (rows)");
  key_mass_kernel<<<grid_for(ctx, kv.max_n * n_head_kv * 32), kThreads, 0, ctx.stream()>>>(
      bf(q), q_pos, n, from, kv, n_head, group, head_dim, scale, reinterpret_cast<const float2*>(row_stats), mass, ld);
  check_launch(ctx, "attention_key_mass");
}

}  // namespace sdtp::cuda

namespace sdtp::cuda {

void attention_key_mass_gemm(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, int64_t from,
                             const KvHeads& kv, const int64_t* n_kv, int n_head, int n_head_kv, int head_dim,
                             float* scratch, int64_t scratch_floats, float* mass, int64_t ld) {
  require(n >= 0 && from >= 0 && head_dim > 0 && ld >= n_head_kv && n_head % n_head_kv == 0, "attention_key_mass_gemm",
          "bad shape n=" + std::to_string(n) + " from=" + std::to_string(from));
  const int group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim)), zero = 0.0f;
  const int64_t q_stride = static_cast<int64_t>(n_head) * head_dim, kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  auto h = static_cast<cublasHandle_t>(ctx.cublas());
  SDTP_CUBLAS_CHECK(cublasSetStream(h, ctx.stream()), "attention_key_mass_gemm");
  for (int g = 0; g < n_head_kv; ++g) {
    const int64_t nk = n_kv[g];
    if (nk == 0) continue;
    // Rows per chunk: the scores [rows x nk] and the rows' stats in the scratch.
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n - from, (scratch_floats - 4) / (nk + 2)));
    float* s = scratch;
    auto* stats = reinterpret_cast<float2*>(scratch + (chunk * nk + 3) / 4 * 4);  // float2: 8-byte aligned
    const int32_t* kp = kv.pos + static_cast<int64_t>(g) * kv.pos_head_stride;
    for (int hh = 0; hh < group; ++hh) {
      const int head = g * group + hh;
      for (int64_t i0 = from; i0 < n; i0 += chunk) {
        const int64_t rows = std::min(chunk, n - i0);
        // Column-major: S^T [nk x rows] = K_g [nk x d] · Q_h^T [d x rows].
        SDTP_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nk), static_cast<int>(rows),
                                       head_dim, &scale, kv.k + static_cast<int64_t>(g) * head_dim, CUDA_R_16BF,
                                       static_cast<int>(kv_stride), q + i0 * q_stride + static_cast<int64_t>(head) * head_dim,
                                       CUDA_R_16BF, static_cast<int>(q_stride), &zero, s, CUDA_R_32F, static_cast<int>(nk),
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                          "attention_key_mass_gemm");
        key_mass_gemm_rows_kernel<<<grid_for(ctx, rows * 32), kThreads, 0, ctx.stream()>>>(s, rows, nk, q_pos + i0, kp,
                                                                                         kv.pos_stride, stats);
        check_launch(ctx, "attention_key_mass_gemm (rows)");
        const int64_t per_slice = 64, slices = (rows + per_slice - 1) / per_slice;
        const dim3 grid(static_cast<unsigned>((nk + kThreads - 1) / kThreads), static_cast<unsigned>(slices));
        key_mass_gemm_cols_kernel<<<grid, kThreads, 0, ctx.stream()>>>(s, rows, nk, q_pos + i0, kp, kv.pos_stride,
                                                                       stats, mass, ld, g, per_slice);
        check_launch(ctx, "attention_key_mass_gemm (columns)");
      }
    }
  }
}

}  // namespace sdtp::cuda
