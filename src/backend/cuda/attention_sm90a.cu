// Causal GQA flash attention for Hopper (sm_90a) with warpgroup MMAs (wgmma), head_dim 128: the
// same function as attention() in ops.h (mask by position, rows that see nothing give zeros).
// A thread block of two warpgroups owns 128 query rows of one head (64 per warpgroup). K/V tiles
// of BN cache entries stream through shared memory (cp.async, two stages) in the 128-byte swizzled
// layout wgmma reads; per tile and warpgroup: S = Q·K^T (wgmma, Q and K from shared memory),
// online softmax on S in registers (base 2), O += P·V (wgmma, P from registers as bf16, V from
// shared memory transposed). Variant 0 (the default) is warp-specialised as in FlashAttention-3
// (Shah et al. 2024, §3.1-3.2): a producer warp loads the tiles with TMA and mbarriers, two
// consumer warpgroups take turns at the tensor cores (ping-pong) and each runs its softmax under
// its own P·V MMAs. Variants 1-3 are the earlier schedules (all threads load with cp.async and the
// warpgroups meet at a barrier per tile): 1 and 2 plain, 3 pipelined within each warpgroup.
// Built only for sm_90a (CMake target sdtp_cuda_sm90a); attention_wgmma_supported() says whether
// the current device can run it.
#include <cuda.h>

#include <climits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kv_heads.cuh"
#include "backend/cuda/model_ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::block_count_leq;
using detail::check;
using detail::check_kv_heads;
using detail::check_launch;
using detail::kv_count;
using detail::kv_k;
using detail::kv_pos_of;
using detail::kv_v;
using detail::require;

namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SDTP_WGMMA 1
#endif

struct WgArgs {
  const __nv_bfloat16* q;
  const int32_t* q_pos;
  KvHeads kv;  // every KV head its own count and positions (ops.h)
  __nv_bfloat16* out;
  int64_t n, q_stride, kv_stride;
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
                                           int h, int row_group) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __nv_bfloat16* out_h = p.out + static_cast<int64_t>(h) * kHd + (lane % 4) * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t row = row0 + row_group * 64 + (warp % 4) * 16 + lane / 4 + 8 * r;
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
  const __nv_bfloat16* kh = kv_k(p.kv) + static_cast<int64_t>(kvh) * kHd;
  const __nv_bfloat16* vh = kv_v(p.kv) + static_cast<int64_t>(kvh) * kHd;
  const int32_t* kvp = kv_pos_of(p.kv, kvh);
  const int64_t ps = p.kv.pos_stride;

  if (tid == 0) s_qmax = INT_MIN;
  __syncthreads();
  if (tid < kBm) {
    const int64_t r = row0 + tid;
    const int32_t qp = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qp;
    if (r < p.n) atomicMax(&s_qmax, qp);
  }
  __syncthreads();
  const int64_t n_keys = block_count_leq(kvp, ps, kv_count(p.kv, kvh), s_qmax);
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
      sPos[stage * BN + tid] = key < n_keys ? kvp[key * ps] : INT_MAX;
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
  store_rows(p, o, l, row0, h, (threadIdx.x / 32) / 4);
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
  const __nv_bfloat16* kh = kv_k(p.kv) + static_cast<int64_t>(kvh) * kHd;
  const __nv_bfloat16* vh = kv_v(p.kv) + static_cast<int64_t>(kvh) * kHd;
  const int32_t* kvp = kv_pos_of(p.kv, kvh);
  const int64_t ps = p.kv.pos_stride;

  if (tid == 0) s_qmax = INT_MIN;
  __syncthreads();
  if (tid < kBm) {
    const int64_t r = row0 + tid;
    const int32_t qp = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qp;
    if (r < p.n) atomicMax(&s_qmax, qp);
  }
  __syncthreads();
  const int64_t n_keys = block_count_leq(kvp, ps, kv_count(p.kv, kvh), s_qmax);
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
      sPos[b * BN + tid] = key < n_keys ? kvp[key * ps] : INT_MAX;
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
  store_rows(p, o, l, row0, h, (threadIdx.x / 32) / 4);
#endif  // SDTP_WGMMA
}

// ---------------------------------------------------------------------------------------------
// Warp-specialised kernel (variant 0; FlashAttention-3's schedule, Shah et al. 2024, §3.1-3.2):
// three warpgroups. Warpgroup 0 is the producer: one warp loads Q once and the K/V tiles with the
// bulk tensor copy engine (TMA, 128-byte swizzle) into two stages each, completing on mbarriers,
// and writes each K tile's positions; it waits on "empty" mbarriers before reusing a stage.
// Warpgroups 1 and 2 are consumers of 64 query rows each: the intra-warpgroup pipeline of the
// pipelined kernel above (S_t and P_(t-1)·V_(t-1) issued together, softmax of S_t under the
// P·V MMAs), plus ping-pong between the two consumers: named barriers make them take turns
// issuing their MMAs, so one warpgroup's softmax runs under the other's MMAs. No block-wide
// barrier in the main loop. The causal mask is applied only on tiles that hold a position above
// the warpgroup's lowest row position (kv positions ascend); exp2 with the scale folded into an FMA.
// setmaxnreg gives the consumers 240 registers and the producer 24.
constexpr int kWsThreads = 384;
constexpr int kWsBn = 128;
struct WsSmem {
  static constexpr int kPanelKv = kWsBn * 128;
  static constexpr uint32_t kQ = 0;                    // [2 row groups][2 col panels] of kPanelQ
  static constexpr uint32_t kK = 4 * kPanelQ;          // [2 stages][2 panels] of kPanelKv
  static constexpr uint32_t kV = kK + 4 * kPanelKv;    // [2 stages][2 panels]
  static constexpr uint32_t kPos = kV + 4 * kPanelKv;  // int32 [2][kWsBn]
  static constexpr uint32_t kQpos = kPos + 2 * kWsBn * 4;  // int32 [kBm]
  static constexpr uint32_t kBar = kQpos + kBm * 4;    // 9 mbarriers: q, full_k[2], full_v[2], empty_k[2], empty_v[2]
  static constexpr size_t kBytes = kBar + 9 * 8 + 1024;
};

#ifdef SDTP_WGMMA
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Arrive only where pred holds, without a branch (a branch between a wgmma's issue and its wait
// makes ptxas serialise the MMAs).
__device__ __forceinline__ void mbar_arrive_if(uint32_t bar, bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
      "r"(static_cast<int>(pred))
      : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t c0, int32_t c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void named_bar_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void named_bar_arrive_if(int id, bool pred) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p bar.arrive %0, 256;\n}\n" ::"r"(id),
               "r"(static_cast<int>(pred))
               : "memory");
}
#endif  // SDTP_WGMMA

__global__ void __launch_bounds__(kWsThreads, 1)
    attention_wgmma_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, const WgArgs p) {
#ifdef SDTP_WGMMA
  constexpr int BN = kWsBn;
  constexpr int kPanelKv = WsSmem::kPanelKv;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023) & ~1023u) - raw);  // 1024-byte aligned (128-byte swizzle)
  const uint32_t base = smem_u32(smem);
  const uint32_t sQ = base + WsSmem::kQ, sK = base + WsSmem::kK, sV = base + WsSmem::kV;
  int32_t* sPos = reinterpret_cast<int32_t*>(smem + WsSmem::kPos);
  int32_t* sQpos = reinterpret_cast<int32_t*>(smem + WsSmem::kQpos);
  const uint32_t bar_q = base + WsSmem::kBar;
  const auto bar_full_k = [&](int s) { return bar_q + 8 * (1 + s); };
  const auto bar_full_v = [&](int s) { return bar_q + 8 * (3 + s); };
  const auto bar_empty_k = [&](int s) { return bar_q + 8 * (5 + s); };
  const auto bar_empty_v = [&](int s) { return bar_q + 8 * (7 + s); };
  __shared__ int s_qmax;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4, wq = warp % 4;
  const int gq = lane / 4, tq = lane % 4;
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kBm;  // heaviest blocks first
  const int h = blockIdx.y, kvh = h / p.group;

  if (tid == 0) {
    s_qmax = INT_MIN;
    mbar_init(bar_q, 1);
    for (int s = 0; s < 2; ++s) {
      mbar_init(bar_full_k(s), 1);
      mbar_init(bar_full_v(s), 1);
      mbar_init(bar_empty_k(s), 8);  // one arrival per consumer warp
      mbar_init(bar_empty_v(s), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (tid < kBm) {
    const int64_t r = row0 + tid;
    const int32_t qpos = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qpos;
    if (r < p.n) atomicMax(&s_qmax, qpos);
  }
  __syncthreads();
  // 32-bit from here (the launch checks rows <= INT32_MAX): the producer runs in 24 registers.
  const int n_keys = static_cast<int>(block_count_leq(kv_pos_of(p.kv, kvh), p.kv.pos_stride, kv_count(p.kv, kvh), s_qmax));
  const int n_tiles = (n_keys + BN - 1) / BN;
  constexpr uint32_t kTileBytes = 2 * kPanelKv;

  if (wg == 0) {
    // Producer.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp == 0 && n_tiles > 0) {
      const int32_t kcol = kvh * kHd;
      if (lane == 0) {
        mbar_expect_tx(bar_q, 4 * kPanelQ);
#pragma unroll
        for (int g = 0; g < 2; ++g)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            tma_load_2d(sQ + (g * 2 + c) * kPanelQ, &tm_q, h * kHd + c * 64, static_cast<int32_t>(row0) + g * 64, bar_q);
      }
      const auto load_v = [&](int t) {
        const int s = t & 1;
        mbar_wait(bar_empty_v(s), ((t >> 1) & 1) ^ 1);
        if (lane == 0) {
          mbar_expect_tx(bar_full_v(s), kTileBytes);
          tma_load_2d(sV + (s * 2) * kPanelKv, &tm_v, kcol, t * BN, bar_full_v(s));
          tma_load_2d(sV + (s * 2 + 1) * kPanelKv, &tm_v, kcol + 64, t * BN, bar_full_v(s));
        }
      };
      const int32_t* kvp = kv_pos_of(p.kv, kvh);
      const int ps = static_cast<int>(p.kv.pos_stride);
      for (int t = 0; t < n_tiles; ++t) {
        const int s = t & 1;
        mbar_wait(bar_empty_k(s), ((t >> 1) & 1) ^ 1);
        for (int i = lane; i < BN; i += 32) {
          const int key = t * BN + i;
          sPos[s * BN + i] = key < n_keys ? kvp[static_cast<int64_t>(key) * ps] : INT_MAX;
        }
        __syncwarp();
        if (lane == 0) {
          mbar_expect_tx(bar_full_k(s), kTileBytes);  // release: orders the position stores before it
          tma_load_2d(sK + (s * 2) * kPanelKv, &tm_k, kcol, t * BN, bar_full_k(s));
          tma_load_2d(sK + (s * 2 + 1) * kPanelKv, &tm_k, kcol + 64, t * BN, bar_full_k(s));
        }
        if (t > 0) load_v(t - 1);
      }
      load_v(n_tiles - 1);
    }
  } else {
    // Consumers.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
    const int cw = wg - 1;
    int32_t qp[2];
    qp[0] = sQpos[cw * 64 + wq * 16 + gq];
    qp[1] = sQpos[cw * 64 + wq * 16 + gq + 8];
    int32_t wg_qmin = INT_MAX;
    for (int i = 0; i < 64; ++i) wg_qmin = min(wg_qmin, sQpos[cw * 64 + i]);
    const float scale = p.scale_log2;

    float o[kHd / 8][4];
#pragma unroll
    for (int j = 0; j < kHd / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    uint32_t pa[BN / 16][4];
    const uint32_t q_base = sQ + cw * 2 * kPanelQ;
    const int my_bar = 1 + cw, other_bar = 2 - cw;

    const auto issue_s = [&](int t, float (&s)[BN / 8][4]) {
      const uint32_t k_base = sK + static_cast<uint32_t>(t & 1) * 2 * kPanelKv;
#pragma unroll
      for (int kk = 0; kk < kHd / 16; ++kk)
        wgmma_ss_n128(s, make_desc(q_base + (kk / 4) * kPanelQ + (kk % 4) * 32, 16, 1024),
                      make_desc(k_base + (kk / 4) * kPanelKv + (kk % 4) * 32, 16, 1024), kk > 0);
      wgmma_commit();
    };
    const auto issue_pv = [&](int t) {
      const uint32_t v_base = sV + static_cast<uint32_t>(t & 1) * 2 * kPanelKv;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
        wgmma_rs_n128_tb(o, pa[kk], make_desc(v_base + kk * 16 * 128, kPanelKv, 1024), 1);
      wgmma_commit();
    };
    const auto keep_pa = [&]() {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pa[kk][i])::"memory");
    };
    // Softmax of S_t (raw scores): mask where needed, running max in scaled units, P = exp2(s·scale − m).
    const auto softmax = [&](float (&s)[BN / 8][4], int t, float (&alpha)[2]) {
      const int32_t* pos_t = sPos + (t & 1) * BN;
      if (pos_t[BN - 1] > wg_qmin) {  // uniform in the warpgroup
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int2 kp = *reinterpret_cast<const int2*>(pos_t + j * 8 + tq * 2);
          s[j][0] = kp.x > qp[0] ? -INFINITY : s[j][0];
          s[j][1] = kp.y > qp[0] ? -INFINITY : s[j][1];
          s[j][2] = kp.x > qp[1] ? -INFINITY : s[j][2];
          s[j][3] = kp.y > qp[1] ? -INFINITY : s[j][3];
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
      }
      float shift[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], off));
        const float m_new = fmaxf(m[r], mx[r] * scale);
        shift[r] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[r] = fast_exp2(m[r] - shift[r]);
        m[r] = m_new;
        l[r] *= alpha[r];
      }
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = fast_exp2(fmaf(s[j][e], scale, -shift[e >> 1]));
          l[e >> 1] += s[j][e];
        }
      }
    };

    if (n_tiles > 0) {
      named_bar_arrive_if(1, cw == 1);  // consumer 0 issues first
      mbar_wait(bar_q, 0);
      mbar_wait(bar_full_k(0), 0);
      float s[BN / 8][4], alpha[2];
      named_bar_sync(my_bar);
      wgmma_fence();
      issue_s(0, s);
      named_bar_arrive_if(other_bar, cw == 0 || n_tiles > 1);
      wgmma_wait0();
      fence_regs(s);
      softmax(s, 0, alpha);
      __syncwarp();
      mbar_arrive_if(bar_empty_k(0), lane == 0);
      pack_p<BN>(s, pa);
    }
    for (int t = 1; t < n_tiles; ++t) {
      mbar_wait(bar_full_k(t & 1), (t >> 1) & 1);
      mbar_wait(bar_full_v((t - 1) & 1), ((t - 1) >> 1) & 1);
      float s[BN / 8][4], alpha[2];
      named_bar_sync(my_bar);
      wgmma_fence();
      issue_s(t, s);
      issue_pv(t - 1);
      named_bar_arrive_if(other_bar, cw == 0 || t + 1 < n_tiles);
      wgmma_wait1();
      fence_regs(s);
      softmax(s, t, alpha);
      __syncwarp();
      mbar_arrive_if(bar_empty_k(t & 1), lane == 0);
      wgmma_wait0();
      fence_regs(o);
      keep_pa();
      __syncwarp();
      mbar_arrive_if(bar_empty_v((t - 1) & 1), lane == 0);
#pragma unroll
      for (int j = 0; j < kHd / 8; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }
      pack_p<BN>(s, pa);
    }
    if (n_tiles > 0) {
      const int last = (n_tiles - 1) & 1;
      mbar_wait(bar_full_v(last), ((n_tiles - 1) >> 1) & 1);
      // The TMA reads up to the cache's allocated rows, so the last tile's rows past this head's
      // count hold whatever the cache has there: P is 0 on them, but 0 · NaN is not. Both
      // consumers zero half of them (uniform branch: n_keys is the block's).
      const int valid = n_keys - (n_tiles - 1) * BN;
      if (valid < BN) {
        unsigned char* v_last = smem + WsSmem::kV + last * 2 * kPanelKv;
        for (int c = tid - 128; c < (BN - valid) * 16; c += 256) {
          const int r = valid + c / 16;  // a whole 128-byte row of each panel: the swizzle stays inside it
          *reinterpret_cast<uint4*>(v_last + ((c % 16) / 8) * kPanelKv + r * 128 + (c % 8) * 16) = make_uint4(0, 0, 0, 0);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        named_bar_sync(3);
      }
      wgmma_fence();
      issue_pv(n_tiles - 1);
      wgmma_wait0();
      fence_regs(o);
      keep_pa();
    }
    store_rows(p, o, l, row0, h, cw);
  }
#endif  // SDTP_WGMMA
}

// A 2-D tensor map over rows of `width` bf16 elements, `row_stride` elements apart, read in boxes
// of 64 columns (128 bytes, 128-byte swizzle) x box_rows rows; rows past `rows` read as zeros.
CUtensorMap make_tensor_map(const void* ptr, int64_t width, int64_t rows, int64_t row_stride, int box_rows) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<Encode>(fn);
  }();
  if (!encode) throw UnsupportedError("cuda: attention_wgmma: the driver has no cuTensorMapEncodeTiled");
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(width), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(ptr), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error("cuda: attention_wgmma: cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r)) +
                       ") for width " + std::to_string(width) + ", rows " + std::to_string(rows));
  return map;
}

void launch_wgmma_ws(Context& ctx, const WgArgs& p, int n_head, int n_head_kv) {
  static const cudaError_t attr_status = cudaFuncSetAttribute(
      attention_wgmma_ws_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(WsSmem::kBytes));
  check(attr_status, "attention_wgmma", "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  const int64_t m_blocks = (p.n + kBm - 1) / kBm;
  require(m_blocks <= INT32_MAX && n_head <= 65535 && p.n <= INT32_MAX && p.kv.rows <= INT32_MAX, "attention_wgmma",
          "grid too large");
  const CUtensorMap tq = make_tensor_map(p.q, static_cast<int64_t>(n_head) * kHd, p.n, p.q_stride, 64);
  // K and V over all allocated rows (no host count in the maps): each block stops at its head's
  // count, read on the device.
  const CUtensorMap tk = make_tensor_map(p.kv.k, static_cast<int64_t>(n_head_kv) * kHd, p.kv.rows, p.kv_stride, kWsBn);
  const CUtensorMap tv = make_tensor_map(p.kv.v, static_cast<int64_t>(n_head_kv) * kHd, p.kv.rows, p.kv_stride, kWsBn);
  attention_wgmma_ws_kernel<<<dim3(static_cast<unsigned>(m_blocks), static_cast<unsigned>(n_head)), kWsThreads,
                              WsSmem::kBytes, ctx.stream()>>>(tq, tk, tv, p);
  check_launch(ctx, "attention_wgmma");
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

void attention_wgmma(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
                     int n_head_kv, int head_dim, bf16* out, int variant) {
  check_kv_heads(kv, n_head, n_head_kv, "attention_wgmma");
  require(n >= 0, "attention_wgmma", "bad row count n=" + std::to_string(n));
  if (!attention_wgmma_supported(head_dim))
    throw UnsupportedError("cuda: attention_wgmma: needs a compute capability 9.0 device and head_dim 128, got " +
                           std::to_string(head_dim));
  const auto a = reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(kv.k) |
                 reinterpret_cast<uintptr_t>(kv.v) | reinterpret_cast<uintptr_t>(out);
  require((a & 15u) == 0, "attention_wgmma", "q, k, v and out must be 16-byte aligned");
  if (n == 0) return;
  WgArgs p{};
  p.q = bf(q);
  p.q_pos = q_pos;
  p.kv = kv;
  p.out = bf(out);
  p.n = n;
  p.q_stride = static_cast<int64_t>(n_head) * head_dim;
  p.kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  p.group = n_head / n_head_kv;
  p.scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
  switch (variant) {
    case 1: return launch_wgmma<128, false>(ctx, p, n_head);
    case 2: return launch_wgmma<64, false>(ctx, p, n_head);
    case 3: return launch_wgmma<128, true>(ctx, p, n_head);
    default:
      if (kv.max_n == 0) return launch_wgmma<128, true>(ctx, p, n_head);  // nothing to load: zeros
      return launch_wgmma_ws(ctx, p, n_head, n_head_kv);
  }
}

}  // namespace sdtp::cuda
