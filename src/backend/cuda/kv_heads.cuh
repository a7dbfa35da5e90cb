// Device-side reading of a KvHeads (ops.h): each KV head's entry count and positions, and the
// block-wide count of visible entries the attention kernels share (attention.cu, attention_sm90a.cu,
// model_ops.cu).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/ops.h"

namespace sdtp::cuda::detail {

// Host-side check of a KvHeads' shape for `op` (attention.cu): throws naming the values.
void check_kv_heads(const KvHeads& kv, int n_head, int n_head_kv, const char* op);

// Entries of KV head g: len[g] + appended from the device, or max_n where there is no len.
__device__ __forceinline__ int64_t kv_count(const KvHeads& kv, int g) {
  return kv.len ? static_cast<int64_t>(kv.len[g]) + kv.appended : kv.max_n;
}
// The cache rows as CUDA's bf16 (bf16 is its storage twin, device.h).
__device__ __forceinline__ const __nv_bfloat16* kv_k(const KvHeads& kv) {
  return reinterpret_cast<const __nv_bfloat16*>(kv.k);
}
__device__ __forceinline__ const __nv_bfloat16* kv_v(const KvHeads& kv) {
  return reinterpret_cast<const __nv_bfloat16*>(kv.v);
}
// Head g's positions: entry j at kv_pos_of(kv, g)[j · kv.pos_stride].
__device__ __forceinline__ const int32_t* kv_pos_of(const KvHeads& kv, int g) {
  return kv.pos + static_cast<int64_t>(g) * kv.pos_head_stride;
}

// How many of the ascending a[0], a[stride], ... a[(n-1)·stride] are <= x, found by the whole
// block in two rounds of probes (every thread must call it; it synchronizes the block).
__device__ inline int64_t block_count_leq(const int32_t* __restrict__ a, int64_t stride, int64_t n, int32_t x) {
  const int T = blockDim.x;
  const int64_t step = (n + T - 1) / T;
  const int64_t probe = static_cast<int64_t>(threadIdx.x) * step;
  const int c1 = __syncthreads_count(probe < n && a[probe * stride] <= x);
  if (c1 == 0) return 0;
  // a[(c1-1)·step] <= x and a[c1·step] > x (or past the end): count inside that stretch.
  const int64_t base = static_cast<int64_t>(c1 - 1) * step;
  int64_t count = base;
  for (int64_t off = 0; off < step; off += T) {
    const int64_t i = base + off + threadIdx.x;
    count += __syncthreads_count(off + threadIdx.x < step && i < n && a[i * stride] <= x);
  }
  return count;
}

}  // namespace sdtp::cuda::detail
