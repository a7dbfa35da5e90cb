// Top-k selection of the CUDA backend: the indices of the k largest scores, ascending. One thread
// block does a radix select over 64-bit keys (order-preserving score bits, then the inverted index,
// so ties rank the earlier index higher and every key is distinct), 8 bits per pass; then writes
// the indices whose key is at least the k-th largest, in index order, with a block-wide scan.
// Scores are at most a few tens of thousands (one per alive token), so one block is enough.
#include "backend/cuda/check.cuh"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {

using detail::check_launch;
using detail::require;

namespace {

constexpr int kTopkThreads = 1024;

// Larger score -> larger key; among equal scores, smaller index -> larger key.
__device__ __forceinline__ uint64_t topk_key(float s, int64_t i) {
  uint32_t u = __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

__global__ void __launch_bounds__(kTopkThreads) topk_kernel(const float* __restrict__ scores, int64_t n, int64_t k,
                                                            int32_t* __restrict__ out) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t s_prefix;
  __shared__ int64_t s_remain;
  __shared__ int warp_counts[kTopkThreads / 32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  uint64_t prefix = 0, mask = 0;
  int64_t remain = k;  // how many of the keys matching `prefix` are still to be taken
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < n; base += blockDim.x) {
      const int64_t i = base + tid;
      int digit = 256;  // no bin: outside the array or not under the prefix
      if (i < n) {
        const uint64_t key = topk_key(scores[i], i);
        if ((key & mask) == prefix) digit = static_cast<int>((key >> shift) & 0xff);
      }
      // Lanes with the same digit add once (few bins are hot: scores share their top bits).
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    __syncthreads();
    if (tid == 0) {
      int64_t above = 0;
      for (int dgt = 255; dgt >= 0; --dgt) {
        const int64_t h = hist[dgt];
        if (above + h >= remain) {
          s_prefix = prefix | (static_cast<uint64_t>(dgt) << shift);
          s_remain = remain - above;
          break;
        }
        above += h;
      }
    }
    __syncthreads();
    prefix = s_prefix;
    remain = s_remain;
    mask |= uint64_t{0xff} << shift;
  }
  // prefix is now the k-th largest key: exactly k keys are >= it.
  int64_t written = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + tid;
    const bool take = i < n && topk_key(scores[i], i) >= prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      if (w < warp) before += warp_counts[w];
      total += warp_counts[w];
    }
    if (take) out[written + before + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(i);
    written += total;
    __syncthreads();
  }
}

}  // namespace

void top_k(Context& ctx, const float* scores, int64_t n, int64_t k, int32_t* out_index) {
  require(n >= 0 && n <= INT32_MAX && k >= 0 && k <= n, "top_k",
          "need 0 <= k <= n < 2^31, got n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (k == 0) return;
  topk_kernel<<<1, kTopkThreads, 0, ctx.stream()>>>(scores, n, k, out_index);
  check_launch(ctx, "top_k");
}

}  // namespace sdtp::cuda
