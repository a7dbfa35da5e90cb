// Causal GQA flash attention for Hopper (sm_90a) with warpgroup MMAs (wgmma), head_dim 128: the
// same function as attention() in ops.h (mask by position, rows that see nothing give zeros).
// A thread block of two warpgroups owns 128 query rows of one head (64 per warpgroup). K/V tiles
// of BN cache entries stream through shared memory (cp.async, two stages) in the 128-byte swizzled
// layout wgmma reads; per tile and warpgroup: S = Q·K^T (wgmma, Q and K from shared memory),
// online softmax on S in registers (base 2), O += P·V (wgmma, P from registers as bf16, V from
// shared memory transposed). The default schedule overlaps each warpgroup's softmax with its own
// P·V MMAs (FlashAttention-3's intra-warpgroup pipelining, Shah et al. 2024, §3.2); FA3's producer
// warps (TMA) and ping-pong between warpgroups are not done: all threads load with cp.async and
// the warpgroups meet at a barrier per tile.
// Built only for sm_90a (CMake target sdtp_cuda_sm90a); attention_wgmma_supported() says whether
// the current device can run it.
#include <climits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/model_ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::check;
using detail::check_launch;
using detail::require;

namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SDTP_WGMMA 1
#endif

struct WgArgs {
  const __nv_bfloat16* q;
  const int32_t* q_pos;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const int32_t* kv_pos;
  __nv_bfloat16* out;
  int64_t n, n_kv, q_stride, kv_stride;
  int group;
  float scale_log2;
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// How many of the ascending a[0..n) are <= x, found by the whole block in two rounds of probes.
__device__ int64_t block_count_leq(const int32_t* __restrict__ a, int64_t n, int32_t x) {
  const int T = blockDim.x;
  const int64_t stride = (n + T - 1) / T;
  const int64_t probe = static_cast<int64_t>(threadIdx.x) * stride;
  const int c1 = __syncthreads_count(probe < n && a[probe] <= x);
  if (c1 == 0) return 0;
  const int64_t base = static_cast<int64_t>(c1 - 1) * stride;
  int64_t count = base;
  for (int64_t off = 0; off < stride; off += T) {
    const int64_t i = base + off + threadIdx.x;
    count += __syncthreads_count(off + threadIdx.x < stride && i < n && a[i] <= x);
  }
  return count;
}

// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading
// and stride byte offsets (all >> 4), 128-byte swizzle. Tiles start at 1024-byte boundaries, so
// the base offset is 0.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

#ifdef SDTP_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
// Orders later uses of the accumulators after the wait (the MMAs write them asynchronously).
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}
// D[64 x 128] (+)= A[64 x 16] (shared, K-major) · B[128 x 16]^T (shared, K-major); scale_d 0 overwrites D.
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D[64 x 64] (+)= A[64 x 16] (shared, K-major) · B[64 x 16]^T (shared, K-major); scale_d 0 overwrites D.
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D[64 x 128] (+)= A[64 x 16] (registers: the mma.sync A fragment of each warp's 16 rows) ·
// B[16 x 128] (shared, MN-major: transposed).
__device__ __forceinline__ void wgmma_rs_n128_tb(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                              int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}
#endif  // SDTP_WGMMA

// Offset of a 16-byte chunk in the 128-byte swizzled layout (the TMA / wgmma SWIZZLE_128B
// pattern): row r of 128 bytes, chunk c in [0, 8) lands at chunk c ^ (r % 8).
__device__ __forceinline__ uint32_t swz(int r, int c) { return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4)); }

constexpr int kHd = 128;      // head_dim
constexpr int kBm = 128;      // query rows per block: 2 warpgroups x 64
constexpr int kThreads = 256;
constexpr int kPanelQ = 64 * 128;  // bytes of one 64-column (128-byte) panel of a warpgroup's Q rows

template <int BN>
struct WgTile {
  static constexpr int kPanelKv = BN * 128;  // bytes of one 64-column panel of a K or V tile
  // Q [2 wg][2 panels], K [2 stages][2 panels], V [2 stages][2 panels], positions, alignment slack.
  static constexpr size_t kSmemBytes =
      4 * kPanelQ + 8 * static_cast<size_t>(kPanelKv) + sizeof(int32_t) * (2 * BN + kBm) + 1024;
};

// Online softmax of one tile's scores (FlashAttention-2's update, base 2): scales and masks s by
// position, updates the running max m and sum l of this thread's two rows, returns in alpha the
// factor the output accumulated so far must be multiplied by, and leaves P = exp2(s - m) in s.
template <int BN>
__device__ __forceinline__ void softmax_tile(float (&s)[BN / 8][4], const int32_t* pos_t, const int32_t (&qp)[2],
                                             bool need_mask, float scale_log2, int tq, float (&m)[2], float (&l)[2],
                                             float (&alpha)[2]) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float val = s[j][e] * scale_log2;
      if (need_mask && pos_t[j * 8 + tq * 2 + (e & 1)] > qp[e >> 1]) val = -INFINITY;
      s[j][e] = val;
      mx[e >> 1] = fmaxf(mx[e >> 1], val);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], off));
    const float m_new = fmaxf(m[r], mx[r]);
    // A row that has seen no visible entry yet keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
    const float shift = m_new == -INFINITY ? 0.0f : m_new;
    alpha[r] = fast_exp2(m[r] - shift);
    m[r] = m_new;
    mx[r] = shift;
    l[r] *= alpha[r];
  }
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = fast_exp2(s[j][e] - mx[e >> 1]);
      l[e >> 1] += s[j][e];
    }
  }
}

// P as bf16 A fragments of the P·V MMAs: the S accumulators of two adjacent 8-entry tiles are
// the fragment of 16 entries.
template <int BN>
__device__ __forceinline__ void pack_p(const float (&s)[BN / 8][4], uint32_t (&pa)[BN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    pa[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    pa[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    pa[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// This thread's rows' output, normalised by the row sums (rows that saw nothing: zeros).
__device__ __forceinline__ void store_rows(const WgArgs& p, float (&o)[kHd / 8][4], const float (&l)[2], int64_t row0,
                                           int h) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __nv_bfloat16* out_h = p.out + static_cast<int64_t>(h) * kHd + (lane % 4) * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t row = row0 + (warp / 4) * 64 + (warp % 4) * 16 + lane / 4 + 8 * r;
    if (row < p.n) {
#pragma unroll
      for (int j = 0; j < kHd / 8; ++j)
        *reinterpret_cast<__nv_bfloat162*>(out_h + row * p.q_stride + j * 8) =
            __floats2bfloat162_rn(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
  }
}

// The plain schedule: per tile, S = Q K^T, softmax, O += P V, each waited for (variants 1, 2).
template <int BN>
__global__ void __launch_bounds__(kThreads, 1) attention_wgmma_kernel(const WgArgs p) {
#ifdef SDTP_WGMMA
  using Tile = WgTile<BN>;
  constexpr int kPanelKv = Tile::kPanelKv;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023) & ~1023u) - raw);  // 1024-byte aligned
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + 4 * kPanelQ;
  const uint32_t sV = sK + 4 * kPanelKv;
  int32_t* sPos = reinterpret_cast<int32_t*>(smem + 4 * kPanelQ + 8 * kPanelKv);  // [2][BN]
  int32_t* sQpos = sPos + 2 * BN;                                                  // [kBm]
  __shared__ int s_qmax;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4, wq = warp % 4;  // warpgroup, warp within it
  const int gq = lane / 4, tq = lane % 4;
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBm;  // heaviest blocks first
  const int h = blockIdx.y, kvh = h / p.group;
  const __nv_bfloat16* qh = p.q + static_cast<int64_t>(h) * kHd;
  const __nv_bfloat16* kh = p.k + static_cast<int64_t>(kvh) * kHd;
  const __nv_bfloat16* vh = p.v + static_cast<int64_t>(kvh) * kHd;

  if (tid == 0) s_qmax = INT_MIN;
  __syncthreads();
  if (tid < kBm) {
    const int64_t r = row0 + tid;
    const int32_t qp = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qp;
    if (r < p.n) atomicMax(&s_qmax, qp);
  }
  __syncthreads();
  const int64_t n_keys = block_count_leq(p.kv_pos, p.n_kv, s_qmax);
  const int64_t n_tiles = (n_keys + BN - 1) / BN;

  // This thread's two rows (g and g+8 of its warp's 16), and its warpgroup's position range.
  int32_t qp[2];
  qp[0] = sQpos[wg * 64 + wq * 16 + gq];
  qp[1] = sQpos[wg * 64 + wq * 16 + gq + 8];
  int32_t wg_qmax = INT_MIN, wg_qmin = INT_MAX;
  for (int i = 0; i < 64; ++i) {
    const int32_t v = sQpos[wg * 64 + i];
    wg_qmax = max(wg_qmax, v);
    wg_qmin = min(wg_qmin, v);
  }

  const auto load_kv = [&](int64_t t, int stage) {
    for (int c = tid; c < BN * 16; c += kThreads) {
      const int r = c / 16, ch = c % 16;
      const int64_t key = t * BN + r;
      const bool valid = key < n_keys;
      const int64_t off = (valid ? key : 0) * p.kv_stride + ch * 8;
      const uint32_t at = (stage * 2 + ch / 8) * kPanelKv + swz(r, ch % 8);
      cp_async16(sK + at, kh + off, valid);
      cp_async16(sV + at, vh + off, valid);
    }
    if (tid < BN) {
      const int64_t key = t * BN + tid;
      sPos[stage * BN + tid] = key < n_keys ? p.kv_pos[key] : INT_MAX;
    }
  };

  if (n_tiles > 0) {
    for (int c = tid; c < kBm * 16; c += kThreads) {
      const int r = c / 16, ch = c % 16;
      const bool valid = row0 + r < p.n;
      const uint32_t at = ((r / 64) * 2 + ch / 8) * kPanelQ + swz(r % 64, ch % 8);
      cp_async16(sQ + at, qh + (valid ? row0 + r : 0) * p.q_stride + ch * 8, valid);
    }
    load_kv(0, 0);
  }
  cp_async_commit();

  float o[kHd / 8][4];
#pragma unroll
  for (int j = 0; j < kHd / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const uint32_t q_base = sQ + wg * 2 * kPanelQ;

  for (int64_t t = 0; t < n_tiles; ++t) {
    const int st = static_cast<int>(t & 1);
    if (t + 1 < n_tiles) {
      load_kv(t + 1, st ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    // The tiles were written through the generic proxy; wgmma reads them through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const int32_t* pos_t = sPos + st * BN;
    if (pos_t[0] <= wg_qmax) {  // uniform in the warpgroup
      const uint32_t k_base = sK + st * 2 * kPanelKv, v_base = sV + st * 2 * kPanelKv;
      float s[BN / 8][4];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kHd / 16; ++kk) {
        const uint64_t da = make_desc(q_base + (kk / 4) * kPanelQ + (kk % 4) * 32, 16, 1024);
        const uint64_t db = make_desc(k_base + (kk / 4) * kPanelKv + (kk % 4) * 32, 16, 1024);
        if constexpr (BN == 128) wgmma_ss_n128(s, da, db, kk > 0);
        else wgmma_ss_n64(s, da, db, kk > 0);
      }
      wgmma_commit();
      wgmma_wait0();
      fence_regs(s);

      float alpha[2];
      uint32_t pa[BN / 16][4];
      softmax_tile<BN>(s, pos_t, qp, pos_t[BN - 1] > wg_qmin, p.scale_log2, tq, m, l, alpha);
      pack_p<BN>(s, pa);
#pragma unroll
      for (int j = 0; j < kHd / 8; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }
      // O += P V: V [BN keys x 128] is B, MN-major: panels of 64 columns (LBO apart), 8-key groups
      // of 1024 bytes (SBO apart); 16 keys a step.
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint32_t addr = v_base + kk * 16 * 128;
        const uint64_t dv = make_desc(addr, kPanelKv, 1024);
        wgmma_rs_n128_tb(o, pa[kk], dv, 1);
      }
      wgmma_commit();
      wgmma_wait0();
      fence_regs(o);
      // P stays in its registers until the MMAs that read it are done.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
    }
    __syncthreads();  // this stage is reloaded by the next iteration's prefetch
  }
  store_rows(p, o, l, row0, h);
#endif  // SDTP_WGMMA
}

// The pipelined schedule (FlashAttention-3's intra-warpgroup overlap, variant 0): in iteration t a
// warpgroup issues S_t = Q K_t^T and O += P_(t-1) V_(t-1) together, waits for S_t only, and runs
// the softmax of S_t while the P·V MMAs are in flight; O is rescaled once they are done. K runs
// one tile ahead of V: iteration t reads K_t and V_(t-1), and its loads (K_(t+2), V_(t+1)) go to
// the buffers iteration t has just finished with, a whole iteration before they are needed.
// No branch may separate an MMA's issue from its wait (ptxas would serialise every wgmma, C7520),
// so both warpgroups run every tile of the block (the mask zeroes what a row must not see; in a
// dense prefill both need the same tiles anyway) and the mask is applied without a branch.
__global__ void __launch_bounds__(kThreads, 1) attention_wgmma_pipelined_kernel(const WgArgs p) {
#ifdef SDTP_WGMMA
  constexpr int BN = 128;
  using Tile = WgTile<BN>;
  constexpr int kPanelKv = Tile::kPanelKv;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023) & ~1023u) - raw);  // 1024-byte aligned
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + 4 * kPanelQ;    // [2 buffers][2 panels]
  const uint32_t sV = sK + 4 * kPanelKv;   // [2 buffers][2 panels]
  int32_t* sPos = reinterpret_cast<int32_t*>(smem + 4 * kPanelQ + 8 * kPanelKv);  // [2][BN], with K
  int32_t* sQpos = sPos + 2 * BN;                                                  // [kBm]
  __shared__ int s_qmax;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4, wq = warp % 4;
  const int gq = lane / 4, tq = lane % 4;
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBm;  // heaviest blocks first
  const int h = blockIdx.y, kvh = h / p.group;
  const __nv_bfloat16* qh = p.q + static_cast<int64_t>(h) * kHd;
  const __nv_bfloat16* kh = p.k + static_cast<int64_t>(kvh) * kHd;
  const __nv_bfloat16* vh = p.v + static_cast<int64_t>(kvh) * kHd;

  if (tid == 0) s_qmax = INT_MIN;
  __syncthreads();
  if (tid < kBm) {
    const int64_t r = row0 + tid;
    const int32_t qp = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qp;
    if (r < p.n) atomicMax(&s_qmax, qp);
  }
  __syncthreads();
  const int64_t n_keys = block_count_leq(p.kv_pos, p.n_kv, s_qmax);
  const int64_t n_tiles = (n_keys + BN - 1) / BN;
  int32_t qp[2];
  qp[0] = sQpos[wg * 64 + wq * 16 + gq];
  qp[1] = sQpos[wg * 64 + wq * 16 + gq + 8];

  const auto load_k = [&](int64_t t) {
    const int b = static_cast<int>(t & 1);
    for (int c = tid; c < BN * 16; c += kThreads) {
      const int r = c / 16, ch = c % 16;
      const int64_t key = t * BN + r;
      const bool valid = key < n_keys;
      cp_async16(sK + (b * 2 + ch / 8) * kPanelKv + swz(r, ch % 8), kh + (valid ? key : 0) * p.kv_stride + ch * 8,
                 valid);
    }
    if (tid < BN) {
      const int64_t key = t * BN + tid;
      sPos[b * BN + tid] = key < n_keys ? p.kv_pos[key] : INT_MAX;
    }
  };
  const auto load_v = [&](int64_t t) {
    const int b = static_cast<int>(t & 1);
    for (int c = tid; c < BN * 16; c += kThreads) {
      const int r = c / 16, ch = c % 16;
      const int64_t key = t * BN + r;
      const bool valid = key < n_keys;
      cp_async16(sV + (b * 2 + ch / 8) * kPanelKv + swz(r, ch % 8), vh + (valid ? key : 0) * p.kv_stride + ch * 8,
                 valid);
    }
  };
  const auto tiles_ready = [&]() {  // this thread's copies landed; everyone's visible to wgmma
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
  };

  // Prologue: group {Q, K_0}, then group {K_1, V_0}.
  if (n_tiles > 0) {
    for (int c = tid; c < kBm * 16; c += kThreads) {
      const int r = c / 16, ch = c % 16;
      const bool valid = row0 + r < p.n;
      cp_async16(sQ + ((r / 64) * 2 + ch / 8) * kPanelQ + swz(r % 64, ch % 8),
                 qh + (valid ? row0 + r : 0) * p.q_stride + ch * 8, valid);
    }
    load_k(0);
  }
  cp_async_commit();
  if (n_tiles > 1) load_k(1);
  if (n_tiles > 0) load_v(0);
  cp_async_commit();

  float o[kHd / 8][4];
#pragma unroll
  for (int j = 0; j < kHd / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t pa[BN / 16][4];  // P of the previous tile, waiting for its P·V
  const uint32_t q_base = sQ + wg * 2 * kPanelQ;
  const auto issue_s = [&](int64_t t, float (&s)[BN / 8][4]) {  // S = Q K_t^T
    const uint32_t k_base = sK + static_cast<uint32_t>(t & 1) * 2 * kPanelKv;
#pragma unroll
    for (int kk = 0; kk < kHd / 16; ++kk)
      wgmma_ss_n128(s, make_desc(q_base + (kk / 4) * kPanelQ + (kk % 4) * 32, 16, 1024),
                    make_desc(k_base + (kk / 4) * kPanelKv + (kk % 4) * 32, 16, 1024), kk > 0);
    wgmma_commit();
  };
  const auto issue_pv = [&](int64_t t) {  // O += P V_t
    const uint32_t v_base = sV + static_cast<uint32_t>(t & 1) * 2 * kPanelKv;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs_n128_tb(o, pa[kk], make_desc(v_base + kk * 16 * 128, kPanelKv, 1024), 1);
    wgmma_commit();
  };
  const auto keep_pa = [&]() {  // P stays in its registers until the MMAs that read it are done
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
  };
  const auto softmax = [&](float (&s)[BN / 8][4], int64_t t, float (&alpha)[2]) {
    // Mask by position without a branch: entry (j, e) is hidden from row e/2 if its position is
    // above the row's.
    const int32_t* pos_t = sPos + (t & 1) * BN;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int2 kp = *reinterpret_cast<const int2*>(pos_t + j * 8 + tq * 2);
      s[j][0] = kp.x > qp[0] ? -INFINITY : s[j][0];
      s[j][1] = kp.y > qp[0] ? -INFINITY : s[j][1];
      s[j][2] = kp.x > qp[1] ? -INFINITY : s[j][2];
      s[j][3] = kp.y > qp[1] ? -INFINITY : s[j][3];
    }
    softmax_tile<BN>(s, pos_t, qp, false, p.scale_log2, tq, m, l, alpha);
  };

  // Tile 0: S_0 and its softmax (no P·V before it).
  cp_async_wait<1>();
  tiles_ready();
  if (n_tiles > 0) {
    float s[BN / 8][4], alpha[2];
    wgmma_fence();
    issue_s(0, s);
    wgmma_wait0();
    fence_regs(s);
    softmax(s, 0, alpha);
    pack_p<BN>(s, pa);
  }
  __syncthreads();  // K_0 is free
  if (n_tiles > 2) load_k(2);
  if (n_tiles > 1) load_v(1);
  cp_async_commit();

  for (int64_t t = 1; t < n_tiles; ++t) {
    cp_async_wait<1>();  // {K_t, V_(t-1)} has landed; {K_(t+1), V_t} may still be in flight
    tiles_ready();
    float s[BN / 8][4], alpha[2];
    wgmma_fence();
    issue_s(t, s);
    issue_pv(t - 1);
    wgmma_wait1();  // S_t done; P_(t-1) V_(t-1) may still run
    fence_regs(s);
    // The softmax runs under the P·V MMAs. P is packed only after they are done: defining a wgmma's
    // input registers while one is in flight makes ptxas serialise them all (C7513).
    softmax(s, t, alpha);
    wgmma_wait0();
    fence_regs(o);
    keep_pa();
#pragma unroll
    for (int j = 0; j < kHd / 8; ++j) {
      o[j][0] *= alpha[0];
      o[j][1] *= alpha[0];
      o[j][2] *= alpha[1];
      o[j][3] *= alpha[1];
    }
    pack_p<BN>(s, pa);
    __syncthreads();  // K_t and V_(t-1) are free: refill them with K_(t+2) and V_(t+1)
    if (t + 2 < n_tiles) load_k(t + 2);
    if (t + 1 < n_tiles) load_v(t + 1);
    cp_async_commit();
  }
  // The last tile's P·V (every thread waits: V_last was loaded by both warpgroups).
  cp_async_wait<0>();
  tiles_ready();
  if (n_tiles > 0) {
    wgmma_fence();
    issue_pv(n_tiles - 1);
    wgmma_wait0();
    fence_regs(o);
    keep_pa();
  }
  store_rows(p, o, l, row0, h);
#endif  // SDTP_WGMMA
}

template <int BN, bool kPipelined>
void launch_wgmma(Context& ctx, const WgArgs& p, int n_head) {
  using Tile = WgTile<BN>;
  auto kernel = kPipelined ? attention_wgmma_pipelined_kernel : attention_wgmma_kernel<BN>;
  static const cudaError_t attr_status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tile::kSmemBytes));
  check(attr_status, "attention_wgmma", "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  const int64_t m_blocks = (p.n + kBm - 1) / kBm;
  require(m_blocks <= INT32_MAX && n_head <= 65535, "attention_wgmma", "grid too large");
  kernel<<<dim3(static_cast<unsigned>(m_blocks), static_cast<unsigned>(n_head)), kThreads, Tile::kSmemBytes,
           ctx.stream()>>>(p);
  check_launch(ctx, "attention_wgmma");
}

}  // namespace

bool attention_wgmma_supported(int head_dim) {
  static const bool hopper = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
    return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
  }();
  return hopper && head_dim == kHd;
}

void attention_wgmma(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k, const bf16* v,
                     const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out,
                     int variant) {
  require(n >= 0 && n_kv >= 0 && n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, "attention_wgmma",
          "bad shape n=" + std::to_string(n) + " n_kv=" + std::to_string(n_kv) + " n_head=" +
              std::to_string(n_head) + " n_head_kv=" + std::to_string(n_head_kv));
  if (!attention_wgmma_supported(head_dim))
    throw UnsupportedError("cuda: attention_wgmma: needs a compute capability 9.0 device and head_dim 128, got " +
                           std::to_string(head_dim));
  const auto a = reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
                 reinterpret_cast<uintptr_t>(out);
  require((a & 15u) == 0, "attention_wgmma", "q, k, v and out must be 16-byte aligned");
  if (n == 0) return;
  WgArgs p{};
  p.q = bf(q);
  p.q_pos = q_pos;
  p.k = bf(k);
  p.v = bf(v);
  p.kv_pos = kv_pos;
  p.out = bf(out);
  p.n = n;
  p.n_kv = n_kv;
  p.q_stride = static_cast<int64_t>(n_head) * head_dim;
  p.kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  p.group = n_head / n_head_kv;
  p.scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
  switch (variant) {
    case 1: return launch_wgmma<128, false>(ctx, p, n_head);
    case 2: return launch_wgmma<64, false>(ctx, p, n_head);
    default: return launch_wgmma<128, true>(ctx, p, n_head);
  }
}

}  // namespace sdtp::cuda
