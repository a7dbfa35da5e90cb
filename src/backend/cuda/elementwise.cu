// Row-wise and element-wise ops of the CUDA backend: rmsnorm, rope, swiglu, add, gather of rows,
// embedding lookup and dtype conversions. All memory-bound: one pass over the data, 16-byte
// accesses where sizes and alignment allow, float32 math on bf16 storage. rmsnorm and embedding
// also read / write the float32 residual stream (templated on the element type).
#include <algorithm>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::Bf16x8;
using detail::check_launch;
using detail::grid_for;
using detail::require;

namespace {

constexpr int kThreads = detail::kElementwiseThreads;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ float block_sum(float x, float* red) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) t += red[w];
  return t;
}

// Element loads as float32: value i, or values [8·i8, 8·i8 + 8) with 16-byte loads.
__device__ __forceinline__ float load1(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float load1(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ void load8(const __nv_bfloat16* p, int64_t i8, float (&f)[8]) {
  const Bf16x8 v = reinterpret_cast<const Bf16x8*>(p)[i8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 t = __bfloat1622float2(v.v[j]);
    f[2 * j] = t.x;
    f[2 * j + 1] = t.y;
  }
}
__device__ __forceinline__ void load8(const float* p, int64_t i8, float (&f)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[2 * i8], b = reinterpret_cast<const float4*>(p)[2 * i8 + 1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

// One block per row: mean of squares, then scale by 1/rms and the weight. x bf16 or float32 (the
// residual stream), y bf16. y may alias x when both are bf16 (each thread rewrites only the
// elements it read).
template <class In, bool kVec>
__global__ void rmsnorm_kernel(const In* __restrict__ x, const float* __restrict__ w, int64_t d, float eps,
                               __nv_bfloat16* y) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const In* xr = x + row * d;
  __nv_bfloat16* yr = y + row * d;
  float ss = 0.0f;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < d / 8; i += blockDim.x) {
      float f[8];
      load8(xr, i, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += f[j] * f[j];
    }
  } else {
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float f = load1(xr, i);
      ss += f * f;
    }
  }
  const float scale = rsqrtf(block_sum(ss, red) / static_cast<float>(d) + eps);
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < d / 8; i += blockDim.x) {
      float f[8];
      load8(xr, i, f);
      Bf16x8 v;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        v.v[j] = __floats2bfloat162_rn(w[i * 8 + 2 * j] * (f[2 * j] * scale),
                                       w[i * 8 + 2 * j + 1] * (f[2 * j + 1] * scale));
      reinterpret_cast<Bf16x8*>(yr)[i] = v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = __float2bfloat16(w[i] * (load1(xr, i) * scale));
  }
}

// One thread per (row, rotation pair i): the angle is computed once and applied to every head.
// Angles as Hugging Face computes them: float32 product of position and inv_freq, accurate sincos.
__global__ void rope_kernel(__nv_bfloat16* x, int64_t n, int64_t stride, int n_heads, int head_dim,
                            const int32_t* __restrict__ pos, const float* __restrict__ inv_freq) {
  const int half = head_dim / 2;
  const int64_t total = n * half;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t / half;
    const int i = static_cast<int>(t % half);
    float sn, cs;
    sincosf(static_cast<float>(pos[row]) * inv_freq[i], &sn, &cs);
    __nv_bfloat16* xr = x + row * stride + i;
    for (int h = 0; h < n_heads; ++h) {
      __nv_bfloat16* v = xr + static_cast<int64_t>(h) * head_dim;
      const float x0 = __bfloat162float(v[0]), x1 = __bfloat162float(v[half]);
      v[0] = __float2bfloat16(x0 * cs - x1 * sn);
      v[half] = __float2bfloat16(x1 * cs + x0 * sn);
    }
  }
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

template <bool kVec>
__global__ void swiglu_kernel(const __nv_bfloat16* gate, const __nv_bfloat16* __restrict__ up, int64_t count,
                              __nv_bfloat16* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if constexpr (kVec) {
    for (int64_t i = first; i < count / 8; i += stride) {
      Bf16x8 g = reinterpret_cast<const Bf16x8*>(gate)[i];
      const Bf16x8 u = reinterpret_cast<const Bf16x8*>(up)[i];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 gf = __bfloat1622float2(g.v[j]), uf = __bfloat1622float2(u.v[j]);
        g.v[j] = __floats2bfloat162_rn(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
      }
      reinterpret_cast<Bf16x8*>(out)[i] = g;
    }
  } else {
    for (int64_t i = first; i < count; i += stride)
      out[i] = __float2bfloat16(silu_mul(__bfloat162float(gate[i]), __bfloat162float(up[i])));
  }
}

template <bool kVec>
__global__ void add_kernel(__nv_bfloat16* x, const __nv_bfloat16* __restrict__ y, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if constexpr (kVec) {
    for (int64_t i = first; i < count / 8; i += stride) {
      Bf16x8 a = reinterpret_cast<const Bf16x8*>(x)[i];
      const Bf16x8 b = reinterpret_cast<const Bf16x8*>(y)[i];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 af = __bfloat1622float2(a.v[j]), bf2 = __bfloat1622float2(b.v[j]);
        a.v[j] = __floats2bfloat162_rn(af.x + bf2.x, af.y + bf2.y);
      }
      reinterpret_cast<Bf16x8*>(x)[i] = a;
    }
  } else {
    for (int64_t i = first; i < count; i += stride)
      x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(y[i]));
  }
}

template <class Out, class In>
__device__ __forceinline__ Out convert(In v) {
  if constexpr (std::is_same_v<Out, In>) return v;
  else return __bfloat162float(v);  // bf16 -> float32, the only widening gathered
}

// Copies rows in units of sizeof(In) bytes, converted to Out (bf16 embedding rows into the float32
// residual stream); one thread per unit of the output.
template <class In, class Out = In>
__global__ void gather_kernel(const In* __restrict__ in, int64_t n_in, int64_t units_per_row,
                              const int32_t* __restrict__ index, int64_t n_out, Out* __restrict__ out) {
  static_assert(std::is_same_v<Out, In> || (std::is_same_v<In, __nv_bfloat16> && std::is_same_v<Out, float>));
  const int64_t total = n_out * units_per_row;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / units_per_row, c = t % units_per_row;
    const int64_t src = index[r];
    out[t] = (src >= 0 && src < n_in) ? convert<Out>(in[src * units_per_row + c]) : Out{};
  }
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, int64_t count, __nv_bfloat16* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* __restrict__ x, int64_t count, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

template <class In>
void rmsnorm_rows(Context& ctx, const In* x, const float* weight, int64_t n, int64_t d, float eps, bf16* y) {
  require(n >= 0 && d > 0, "rmsnorm", "bad shape n=" + std::to_string(n) + " d=" + std::to_string(d));
  require(n < (int64_t{1} << 31), "rmsnorm", "too many rows: " + std::to_string(n));
  if (n == 0) return;
  const bool vec = d % 8 == 0 && aligned16(x) && aligned16(y);
  const int threads = d >= 2048 ? 256 : 128;
  if (vec)
    rmsnorm_kernel<In, true><<<static_cast<unsigned>(n), threads, 0, ctx.stream()>>>(x, weight, d, eps, bf(y));
  else
    rmsnorm_kernel<In, false><<<static_cast<unsigned>(n), threads, 0, ctx.stream()>>>(x, weight, d, eps, bf(y));
  check_launch(ctx, "rmsnorm");
}

}  // namespace

void rmsnorm(Context& ctx, const bf16* x, const float* weight, int64_t n, int64_t d, float eps, bf16* y) {
  rmsnorm_rows(ctx, bf(x), weight, n, d, eps, y);
}

void rmsnorm(Context& ctx, const float* x, const float* weight, int64_t n, int64_t d, float eps, bf16* y) {
  rmsnorm_rows(ctx, x, weight, n, d, eps, y);
}

void rope(Context& ctx, bf16* x, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq) {
  require(n >= 0 && n_heads > 0 && head_dim > 0 && head_dim % 2 == 0 &&
              stride >= static_cast<int64_t>(n_heads) * head_dim,
          "rope",
          "bad shape n=" + std::to_string(n) + " stride=" + std::to_string(stride) + " n_heads=" +
              std::to_string(n_heads) + " head_dim=" + std::to_string(head_dim));
  if (n == 0) return;
  const int64_t work = n * (head_dim / 2);
  rope_kernel<<<grid_for(ctx, work), kThreads, 0, ctx.stream()>>>(bf(x), n, stride, n_heads, head_dim, positions,
                                                                   inv_freq);
  check_launch(ctx, "rope");
}

void swiglu(Context& ctx, const bf16* gate, const bf16* up, int64_t count, bf16* out) {
  require(count >= 0, "swiglu", "bad count " + std::to_string(count));
  if (count == 0) return;
  const bool vec = count % 8 == 0 && aligned16(gate) && aligned16(up) && aligned16(out);
  if (vec)
    swiglu_kernel<true><<<grid_for(ctx, count / 8), kThreads, 0, ctx.stream()>>>(bf(gate), bf(up), count, bf(out));
  else
    swiglu_kernel<false><<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(bf(gate), bf(up), count, bf(out));
  check_launch(ctx, "swiglu");
}

void add(Context& ctx, bf16* x, const bf16* y, int64_t count) {
  require(count >= 0, "add", "bad count " + std::to_string(count));
  if (count == 0) return;
  const bool vec = count % 8 == 0 && aligned16(x) && aligned16(y);
  if (vec)
    add_kernel<true><<<grid_for(ctx, count / 8), kThreads, 0, ctx.stream()>>>(bf(x), bf(y), count);
  else
    add_kernel<false><<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(bf(x), bf(y), count);
  check_launch(ctx, "add");
}

void gather_rows(Context& ctx, const void* in, int64_t n_in, int64_t row_bytes, const int32_t* index,
                 int64_t n_out, void* out) {
  require(n_in >= 0 && row_bytes > 0 && n_out >= 0, "gather_rows",
          "bad shape n_in=" + std::to_string(n_in) + " row_bytes=" + std::to_string(row_bytes) +
              " n_out=" + std::to_string(n_out));
  if (n_out == 0) return;
  const auto a = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  if (row_bytes % 16 == 0 && (a & 15u) == 0) {
    const int64_t upr = row_bytes / 16;
    gather_kernel<int4><<<grid_for(ctx, n_out * upr), kThreads, 0, ctx.stream()>>>(
        static_cast<const int4*>(in), n_in, upr, index, n_out, static_cast<int4*>(out));
  } else if (row_bytes % 4 == 0 && (a & 3u) == 0) {
    const int64_t upr = row_bytes / 4;
    gather_kernel<uint32_t><<<grid_for(ctx, n_out * upr), kThreads, 0, ctx.stream()>>>(
        static_cast<const uint32_t*>(in), n_in, upr, index, n_out, static_cast<uint32_t*>(out));
  } else {
    gather_kernel<unsigned char><<<grid_for(ctx, n_out * row_bytes), kThreads, 0, ctx.stream()>>>(
        static_cast<const unsigned char*>(in), n_in, row_bytes, index, n_out, static_cast<unsigned char*>(out));
  }
  check_launch(ctx, "gather_rows");
}

void embedding(Context& ctx, const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, bf16* out) {
  require(vocab > 0 && d > 0 && n >= 0, "embedding",
          "bad shape vocab=" + std::to_string(vocab) + " d=" + std::to_string(d) + " n=" + std::to_string(n));
  gather_rows(ctx, table, vocab, d * static_cast<int64_t>(sizeof(bf16)), ids, n, out);
}

void embedding(Context& ctx, const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, float* out) {
  require(vocab > 0 && d > 0 && n >= 0, "embedding",
          "bad shape vocab=" + std::to_string(vocab) + " d=" + std::to_string(d) + " n=" + std::to_string(n));
  if (n == 0) return;
  gather_kernel<__nv_bfloat16, float>
      <<<grid_for(ctx, n * d), kThreads, 0, ctx.stream()>>>(bf(table), vocab, d, ids, n, out);
  check_launch(ctx, "embedding");
}

void f32_to_bf16(Context& ctx, const float* x, int64_t count, bf16* y) {
  require(count >= 0, "f32_to_bf16", "bad count " + std::to_string(count));
  if (count == 0) return;
  f32_to_bf16_kernel<<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(x, count, bf(y));
  check_launch(ctx, "f32_to_bf16");
}

void bf16_to_f32(Context& ctx, const bf16* x, int64_t count, float* y) {
  require(count >= 0, "bf16_to_f32", "bad count " + std::to_string(count));
  if (count == 0) return;
  bf16_to_f32_kernel<<<grid_for(ctx, count), kThreads, 0, ctx.stream()>>>(bf(x), count, y);
  check_launch(ctx, "bf16_to_f32");
}

}  // namespace sdtp::cuda
