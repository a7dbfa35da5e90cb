// Fused ops of the CUDA forward pass (see model_ops.h). Memory-bound kernels: each reads its input
// once and writes its output once, with bf16x2 or 16-byte accesses where the shapes allow.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/model_ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::check;
using detail::Bf16x8;
using detail::check_launch;
using detail::grid_for;
using detail::require;

namespace {

constexpr int kThreads = detail::kElementwiseThreads;

// One thread per (row, P consecutive rotation pairs): the P angles are computed once and applied
// to every Q and K head of the row (P = 2: bf16x2 accesses, a warp reads whole 128-byte lines).
template <int P>
__global__ void qkv_rope_kernel(const __nv_bfloat16* __restrict__ qkv, int64_t n, int n_head, int n_head_kv,
                                int head_dim, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                                __nv_bfloat16* __restrict__ q_out, __nv_bfloat16* __restrict__ k_out,
                                const int32_t* __restrict__ k_row = nullptr) {
  const int half = head_dim / 2;
  const int per_row = half / P;
  const int64_t q_dim = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  const int64_t width = q_dim + 2 * kv_dim;
  const int64_t total = n * per_row;
  if (k_row) k_out += static_cast<int64_t>(*k_row) * kv_dim;  // a decode step's cache row, from the device
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
      __nv_bfloat16* d = h < n_head ? q_out + row * q_dim + static_cast<int64_t>(h) * head_dim + i
                                    : k_out + row * kv_dim + static_cast<int64_t>(h - n_head) * head_dim + i;
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

__device__ __forceinline__ bool forced_row(int64_t row, int64_t n, const int32_t* pos, int keep_first) {
  return row == n - 1 || pos[row] < keep_first;
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

// One warp per (KV head, cache row): the L1 norm of that head's value vector.
__global__ void value_l1_kernel(const __nv_bfloat16* __restrict__ v, int64_t n, int n_head_kv, int head_dim,
                                float* __restrict__ out, int64_t ld) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t total = n * n_head_kv;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < total; t += warps) {
    const int64_t j = t / n_head_kv;
    const int h = static_cast<int>(t % n_head_kv);
    const __nv_bfloat16* vr = v + j * n_head_kv * static_cast<int64_t>(head_dim) + static_cast<int64_t>(h) * head_dim;
    float acc = 0.0f;
    for (int d = lane; d < head_dim; d += 32) acc += fabsf(__bfloat162float(vr[d]));
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) out[static_cast<int64_t>(h) * ld + j] = acc;
  }
}

__global__ void force_rows_kernel(float* scores, int64_t n, const int32_t* __restrict__ pos, int keep_first) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (forced_row(i, n, pos, keep_first)) scores[i] = INFINITY;
}

__global__ void mean_over_heads_kernel(const float* __restrict__ probs, int n_head, int64_t n_kv, int64_t offset,
                                       int64_t n, float* __restrict__ scores) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int h = 0; h < n_head; ++h) s += probs[static_cast<int64_t>(h) * n_kv + offset + i];
    scores[i] = s / static_cast<float>(n_head);
  }
}

// Pass 1 of attention_key_mass, one warp per (query row, head): the softmax's max and sum over the
// entries the row sees (lanes split head_dim; entries in order, an online max).
__global__ void key_mass_rows_kernel(const __nv_bfloat16* __restrict__ q, const int32_t* __restrict__ q_pos,
                                     int64_t n, const __nv_bfloat16* __restrict__ k,
                                     const int32_t* __restrict__ kv_pos, int64_t n_kv, int n_head, int group,
                                     int head_dim, float scale, float2* __restrict__ row_stats) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t kv_stride = static_cast<int64_t>(n_head / group) * head_dim;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < n * n_head; t += warps) {
    const int64_t i = t / n_head;
    const int h = static_cast<int>(t % n_head);
    const __nv_bfloat16* qr = q + t * head_dim;
    const __nv_bfloat16* kh = k + static_cast<int64_t>(h / group) * head_dim;
    const int32_t p = q_pos[i];
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j < n_kv; ++j) {
      if (kv_pos[j] > p) continue;
      float dot = 0.0f;
      for (int d = lane; d < head_dim; d += 32) dot += __bfloat162float(qr[d]) * __bfloat162float(kh[j * kv_stride + d]);
      for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      dot *= scale;
      const float m_new = fmaxf(m, dot);
      l = l * expf(m - m_new) + expf(dot - m_new);
      m = m_new;
    }
    if (lane == 0) row_stats[t] = make_float2(m, l);
  }
}

// Pass 2, one warp per (KV head, entry): Σ over the query rows that see the entry and the query
// heads of the group of exp(s - max) / sum, the probability each paid it.
__global__ void key_mass_kernel(const __nv_bfloat16* __restrict__ q, const int32_t* __restrict__ q_pos, int64_t n,
                                const __nv_bfloat16* __restrict__ k, const int32_t* __restrict__ kv_pos, int64_t n_kv,
                                int n_head, int group, int head_dim, float scale,
                                const float2* __restrict__ row_stats, float* __restrict__ out, int64_t ld) {
  const int lane = threadIdx.x % 32;
  const int n_head_kv = n_head / group;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; t < n_kv * n_head_kv;
       t += warps) {
    const int g = static_cast<int>(t / n_kv);
    const int64_t j = t % n_kv;
    const __nv_bfloat16* kr = k + j * kv_stride + static_cast<int64_t>(g) * head_dim;
    const int32_t pj = kv_pos[j];
    float mass = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (q_pos[i] < pj) continue;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const __nv_bfloat16* qr = q + (i * n_head + h) * head_dim;
        float dot = 0.0f;
        for (int d = lane; d < head_dim; d += 32) dot += __bfloat162float(qr[d]) * __bfloat162float(kr[d]);
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float2 st = row_stats[i * n_head + h];
        mass += expf(dot * scale - st.x) / st.y;
      }
    }
    if (lane == 0) out[static_cast<int64_t>(g) * ld + j] = mass;
  }
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
                                         int64_t n, const __nv_bfloat16* __restrict__ k,
                                         const __nv_bfloat16* __restrict__ v, const int32_t* __restrict__ kv_pos,
                                         int64_t n_kv, int n_head, int group, int head_dim, float scale,
                                         __nv_bfloat16* __restrict__ out) {
  constexpr int T = kGenericMaxDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (item >= n * n_head) return;
  const int64_t row = item / n_head;
  const int h = static_cast<int>(item % n_head);
  const int64_t q_stride = static_cast<int64_t>(n_head) * head_dim;
  const int64_t kv_stride = static_cast<int64_t>(n_head / group) * head_dim;
  const __nv_bfloat16* qr = q + row * q_stride + static_cast<int64_t>(h) * head_dim;
  const int64_t kv_off = static_cast<int64_t>(h / group) * head_dim;
  float qv[T], o[T];
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int d = lane + 32 * t;
    qv[t] = d < head_dim ? __bfloat162float(qr[d]) * scale : 0.0f;
    o[t] = 0.0f;
  }
  const int32_t qp = q_pos[row];
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < n_kv && kv_pos[j] <= qp; ++j) {
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
    const __nv_bfloat16* __restrict__ q, int32_t q_pos, const __nv_bfloat16* __restrict__ k,
    const __nv_bfloat16* __restrict__ v, const int32_t* __restrict__ kv_pos, int64_t n_kv, int group,
    int64_t kv_stride, int splits, float scale_log2, float* __restrict__ scratch, const int32_t* __restrict__ q_pos_dev,
    const int32_t* __restrict__ n_kv_dev) {
  constexpr int HD = 32 * D, W = kDecodeThreads / 32;
  if (q_pos_dev) q_pos = *q_pos_dev;
  if (n_kv_dev) n_kv = *n_kv_dev;
  __shared__ float s_m[W], s_l[W], s_o[W][HD];
  __shared__ int64_t s_vis;
  const int h = blockIdx.x, split = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {  // entries visible to the row: kv_pos ascending, binary search
    int64_t lo = 0, hi = n_kv;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (kv_pos[mid] <= q_pos) lo = mid + 1;
      else hi = mid;
    }
    s_vis = lo;
  }
  __syncthreads();
  const int64_t vis = s_vis, per = (vis + splits - 1) / splits;
  const int64_t j0 = split * per, j1 = min(vis, j0 + per);
  const int64_t off = static_cast<int64_t>(h / group) * HD + lane * D;
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

void attention_decode(Context& ctx, const bf16* q, int32_t q_pos, const bf16* k, const bf16* v, const int32_t* kv_pos,
                      int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out, float* scratch,
                      const int32_t* q_pos_dev, const int32_t* n_kv_dev) {
  require(n_kv >= 0 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && attention_decode_supported(head_dim),
          "attention_decode",
          "bad shape n_kv=" + std::to_string(n_kv) + " n_head=" + std::to_string(n_head) + " n_head_kv=" +
              std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  const int splits = attention_decode_splits(ctx, n_kv, n_head);
  const dim3 grid(static_cast<unsigned>(n_head), static_cast<unsigned>(splits));
  const int64_t kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  const int group = n_head / n_head_kv;
  const float scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
  switch (head_dim) {
    case 32:
      attention_decode_kernel<1><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, bf(k), bf(v), kv_pos, n_kv,
                                                                            group, kv_stride, splits, scale_log2, scratch,
                                                                            q_pos_dev, n_kv_dev);
      break;
    case 64:
      attention_decode_kernel<2><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, bf(k), bf(v), kv_pos, n_kv,
                                                                            group, kv_stride, splits, scale_log2, scratch,
                                                                            q_pos_dev, n_kv_dev);
      break;
    case 128:
      attention_decode_kernel<4><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, bf(k), bf(v), kv_pos, n_kv,
                                                                            group, kv_stride, splits, scale_log2, scratch,
                                                                            q_pos_dev, n_kv_dev);
      break;
    default:
      attention_decode_kernel<8><<<grid, kDecodeThreads, 0, ctx.stream()>>>(bf(q), q_pos, bf(k), bf(v), kv_pos, n_kv,
                                                                            group, kv_stride, splits, scale_log2, scratch,
                                                                            q_pos_dev, n_kv_dev);
      break;
  }
  check_launch(ctx, "attention_decode");
  attention_decode_merge_kernel<<<n_head, 128, 0, ctx.stream()>>>(scratch, splits, head_dim, bf(out));
  check_launch(ctx, "attention_decode (merge)");
}

void qkv_rope_split(Context& ctx, const bf16* qkv, int64_t n, int n_head, int n_head_kv, int head_dim,
                    const int32_t* positions, const float* inv_freq, bf16* q_out, bf16* k_out, bf16* v_out) {
  require(n >= 0 && n_head > 0 && n_head_kv > 0 && head_dim > 0 && head_dim % 2 == 0, "qkv_rope_split",
          "bad shape n=" + std::to_string(n) + " n_head=" + std::to_string(n_head) + " n_head_kv=" +
              std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  if (n == 0) return;
  const int half = head_dim / 2;
  const auto addr = reinterpret_cast<uintptr_t>(qkv) | reinterpret_cast<uintptr_t>(q_out) |
                    reinterpret_cast<uintptr_t>(k_out);
  if (half % 2 == 0 && (addr & 3u) == 0) {
    qkv_rope_kernel<2><<<grid_for(ctx, n * (half / 2)), kThreads, 0, ctx.stream()>>>(
        bf(qkv), n, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_out));
  } else {
    qkv_rope_kernel<1><<<grid_for(ctx, n * half), kThreads, 0, ctx.stream()>>>(
        bf(qkv), n, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_out));
  }
  check_launch(ctx, "qkv_rope_split");
  const int64_t q_dim = static_cast<int64_t>(n_head) * head_dim, kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  const size_t row_bytes = sizeof(bf16) * static_cast<size_t>(kv_dim);
  SDTP_CUDA_CHECK(cudaMemcpy2DAsync(v_out, row_bytes, qkv + q_dim + kv_dim, sizeof(bf16) * (q_dim + 2 * kv_dim),
                                    row_bytes, static_cast<size_t>(n), cudaMemcpyDeviceToDevice, ctx.stream()),
                  "qkv_rope_split (V rows)");
}

namespace {
// A decode step's V row and position into the cache row *row.
__global__ void append_v_pos_kernel(const __nv_bfloat16* __restrict__ v_src, int64_t kv_dim,
                                    __nv_bfloat16* __restrict__ v_cache, const int32_t* __restrict__ pos,
                                    int32_t* __restrict__ pos_cache, const int32_t* __restrict__ row) {
  const int64_t r = *row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < kv_dim;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    v_cache[r * kv_dim + i] = v_src[i];
  if (blockIdx.x == 0 && threadIdx.x == 0) pos_cache[r] = pos[0];
}
}  // namespace

void qkv_rope_append(Context& ctx, const bf16* qkv, int n_head, int n_head_kv, int head_dim, const int32_t* positions,
                     const float* inv_freq, bf16* q_out, bf16* k_cache, bf16* v_cache, int32_t* pos_cache,
                     const int32_t* row) {
  require(n_head > 0 && n_head_kv > 0 && head_dim > 0 && head_dim % 2 == 0 && row, "qkv_rope_append",
          "bad shape n_head=" + std::to_string(n_head) + " n_head_kv=" + std::to_string(n_head_kv) +
              " head_dim=" + std::to_string(head_dim));
  const int half = head_dim / 2;
  const auto addr = reinterpret_cast<uintptr_t>(qkv) | reinterpret_cast<uintptr_t>(q_out) |
                    reinterpret_cast<uintptr_t>(k_cache);
  if (half % 2 == 0 && (addr & 3u) == 0 && (static_cast<int64_t>(n_head_kv) * head_dim) % 2 == 0) {
    qkv_rope_kernel<2><<<grid_for(ctx, half / 2), kThreads, 0, ctx.stream()>>>(
        bf(qkv), 1, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_cache), row);
  } else {
    qkv_rope_kernel<1><<<grid_for(ctx, half), kThreads, 0, ctx.stream()>>>(
        bf(qkv), 1, n_head, n_head_kv, head_dim, positions, inv_freq, bf(q_out), bf(k_cache), row);
  }
  check_launch(ctx, "qkv_rope_append");
  const int64_t q_dim = static_cast<int64_t>(n_head) * head_dim, kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  append_v_pos_kernel<<<grid_for(ctx, kv_dim), kThreads, 0, ctx.stream()>>>(bf(qkv + q_dim + kv_dim), kv_dim,
                                                                            bf(v_cache), positions, pos_cache, row);
  check_launch(ctx, "qkv_rope_append (V row)");
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

void value_l1(Context& ctx, const bf16* v, int64_t n, int n_head_kv, int head_dim, float* out, int64_t ld) {
  require(n >= 0 && n_head_kv > 0 && head_dim > 0 && ld >= n, "value_l1",
          "bad shape n=" + std::to_string(n) + " n_head_kv=" + std::to_string(n_head_kv) + " head_dim=" +
              std::to_string(head_dim));
  if (n == 0) return;
  value_l1_kernel<<<grid_for(ctx, n * n_head_kv * 32), kThreads, 0, ctx.stream()>>>(bf(v), n, n_head_kv, head_dim,
                                                                                    out, ld);
  check_launch(ctx, "value_l1");
}

void force_rows(Context& ctx, float* scores, int64_t n, const int32_t* positions, int keep_first) {
  if (n <= 0) return;
  force_rows_kernel<<<grid_for(ctx, n), kThreads, 0, ctx.stream()>>>(scores, n, positions, keep_first);
  check_launch(ctx, "force_rows");
}

void mean_over_heads(Context& ctx, const float* probs, int n_head, int64_t n_kv, int64_t offset, int64_t n,
                     float* scores) {
  require(n_head > 0 && offset >= 0 && n >= 0 && offset + n <= n_kv, "mean_over_heads",
          "bad shape n_kv=" + std::to_string(n_kv) + " offset=" + std::to_string(offset) + " n=" + std::to_string(n));
  if (n == 0) return;
  mean_over_heads_kernel<<<grid_for(ctx, n), kThreads, 0, ctx.stream()>>>(probs, n_head, n_kv, offset, n, scores);
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

void attention_generic(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k, const bf16* v,
                       const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out) {
  require(n >= 0 && n_kv >= 0 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && head_dim > 0 &&
              head_dim <= kGenericMaxDim,
          "attention_generic",
          "bad shape n=" + std::to_string(n) + " n_kv=" + std::to_string(n_kv) + " n_head=" + std::to_string(n_head) +
              " n_head_kv=" + std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  if (n == 0) return;
  const int64_t warps = n * n_head;
  constexpr int kWarpsPerBlock = 4;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  require(blocks <= INT32_MAX, "attention_generic", "grid too large");
  attention_generic_kernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0, ctx.stream()>>>(
      bf(q), q_pos, n, bf(k), bf(v), kv_pos, n_kv, n_head, n_head / n_head_kv, head_dim,
      1.0f / std::sqrt(static_cast<float>(head_dim)), bf(out));
  check_launch(ctx, "attention_generic");
}

void attention_key_mass(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k,
                        const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim,
                        float* row_stats, float* out, int64_t ld) {
  require(n >= 0 && n_kv >= 0 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && head_dim > 0 && ld >= n_kv,
          "attention_key_mass",
          "bad shape n=" + std::to_string(n) + " n_kv=" + std::to_string(n_kv) + " n_head=" + std::to_string(n_head) +
              " n_head_kv=" + std::to_string(n_head_kv) + " head_dim=" + std::to_string(head_dim));
  if (n_kv == 0) return;
  if (n == 0) {
    for (int g = 0; g < n_head_kv; ++g) fill_value(ctx, out + static_cast<int64_t>(g) * ld, n_kv, 0.0f);
    return;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int group = n_head / n_head_kv;
  key_mass_rows_kernel<<<grid_for(ctx, n * n_head * 32), kThreads, 0, ctx.stream()>>>(
      bf(q), q_pos, n, bf(k), kv_pos, n_kv, n_head, group, head_dim, scale, reinterpret_cast<float2*>(row_stats));
  check_launch(ctx, "attention_key_mass (rows)");
  key_mass_kernel<<<grid_for(ctx, n_kv * n_head_kv * 32), kThreads, 0, ctx.stream()>>>(
      bf(q), q_pos, n, bf(k), kv_pos, n_kv, n_head, group, head_dim, scale,
      reinterpret_cast<const float2*>(row_stats), out, ld);
  check_launch(ctx, "attention_key_mass");
}

}  // namespace sdtp::cuda
