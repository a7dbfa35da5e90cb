// Causal grouped-query attention of the CUDA backend, flash-attention style (Dao et al. 2022,
// FlashAttention-2's split of the query rows over warps). A thread block owns BM query rows of one
// head (16 or 32 rows per warp, see AttnTile); it streams the cache in tiles of BN entries through
// shared memory (cp.async, two stages, so the next tile loads while this one is used), computes
// S = Q K^T and O += P V with bf16 tensor-core MMAs (mma.sync m16n8k16, float32 accumulators) and
// keeps the softmax online (running max and sum per row), so no n x n_kv matrix ever exists.
// The mask is by position, not by index: entry j of the block's KV head is visible to query row i
// iff its position <= q_pos[i]. Every KV head has its own entries and count (KvHeads): a block
// reads its head's count from the device and loads nothing past it. Positions ascend, so a tile
// whose first position is above every row of a warp is skipped by that warp, and one whose last
// position is at most every row's needs no mask.
#include <climits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kv_heads.cuh"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {

using detail::bf;
using detail::block_count_leq;
using detail::check;
using detail::check_kv_heads;
using detail::check_launch;
using detail::kv_count;
using detail::kv_k;
using detail::kv_v;
using detail::kv_pos_of;
using detail::require;

namespace {

struct AttnParams {
  const __nv_bfloat16* q;
  const int32_t* q_pos;
  KvHeads kv;
  __nv_bfloat16* out;
  int64_t n, q_stride, kv_stride;
  int group;         // query heads per kv head
  float scale_log2;  // log2(e) / sqrt(head_dim): the softmax runs in base 2
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; zero-fills when !valid (no global read then).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D[16x8] += A[16x16] (row) · B[16x8] (col), bf16 in, float32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float fast_exp2(float x) {  // MUFU.EX2; exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// A kernel shape: WARPS warps of MT·16 query rows each (BM rows per block), cache tiles of BN.
// More rows per warp reuse each K/V fragment read from shared memory for more MMAs (MT=2 halves
// the shared-memory traffic per flop) at the cost of registers.
template <int HD, int WARPS, int MT, int BN>
struct AttnTile {
  static constexpr int kBM = 16 * MT * WARPS;  // query rows per block
  static constexpr int kLds = HD + 8;          // smem row pitch in elements: 16 bytes of padding, no bank conflicts
  static constexpr size_t kSmemBytes =
      sizeof(__nv_bfloat16) * (static_cast<size_t>(kBM) * kLds + 4 * static_cast<size_t>(BN) * kLds) +
      sizeof(int32_t) * (2 * BN + kBM);
  static_assert(kBM <= 32 * WARPS && BN <= 32 * WARPS && BN % 16 == 0 && HD % 32 == 0);
};

template <int HD, int WARPS, int MT, int BN>
__global__ void __launch_bounds__(WARPS * 32) flash_attention_kernel(const AttnParams p) {
  using Tile = AttnTile<HD, WARPS, MT, BN>;
  constexpr int BM = Tile::kBM, LDS = Tile::kLds, NT = WARPS * 32, CH = HD / 8;  // CH: 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* sK = sQ + BM * LDS;       // [2][BN][LDS]
  __nv_bfloat16* sV = sK + 2 * BN * LDS;   // [2][BN][LDS]
  int32_t* sPos = reinterpret_cast<int32_t*>(sV + 2 * BN * LDS);  // [2][BN]
  int32_t* sQpos = sPos + 2 * BN;                                 // [BM]
  __shared__ int s_qmax;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gq = lane / 4, tq = lane % 4;  // MMA fragment coordinates: row group, thread in group
  // Heaviest query blocks (latest rows) first, so the tail of the grid is short.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * BM;
  const int h = blockIdx.y, kvh = h / p.group;
  const __nv_bfloat16* qh = p.q + static_cast<int64_t>(h) * HD;
  const __nv_bfloat16* kh = kv_k(p.kv) + static_cast<int64_t>(kvh) * HD;
  const __nv_bfloat16* vh = kv_v(p.kv) + static_cast<int64_t>(kvh) * HD;

  // Rows' positions (rows past n see nothing) and the block's largest.
  if (tid == 0) s_qmax = INT_MIN;
  __syncthreads();
  if (tid < BM) {
    const int64_t r = row0 + tid;
    const int32_t qp = r < p.n ? p.q_pos[r] : INT_MIN;
    sQpos[tid] = qp;
    if (r < p.n) atomicMax(&s_qmax, qp);
  }
  __syncthreads();
  const int32_t* kvp = kv_pos_of(p.kv, kvh);
  const int64_t ps = p.kv.pos_stride;
  const int64_t n_keys = block_count_leq(kvp, ps, kv_count(p.kv, kvh), s_qmax);
  const int64_t n_tiles = (n_keys + BN - 1) / BN;

  // This thread's rows: (mt, 0) is row warp·16·MT + mt·16 + gq of the block, (mt, 1) the one 8 below.
  int32_t qp[MT][2];
  int32_t warp_qmax = INT_MIN, warp_qmin = INT_MAX;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      qp[mt][r] = sQpos[warp * 16 * MT + mt * 16 + gq + 8 * r];
      warp_qmax = max(warp_qmax, qp[mt][r]);
      warp_qmin = min(warp_qmin, qp[mt][r]);
    }
  }
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) {
    warp_qmax = max(warp_qmax, __shfl_xor_sync(0xffffffffu, warp_qmax, o));
    warp_qmin = min(warp_qmin, __shfl_xor_sync(0xffffffffu, warp_qmin, o));
  }

  const auto load_kv = [&](int64_t t, int stage) {
    __nv_bfloat16* k_dst = sK + stage * BN * LDS;
    __nv_bfloat16* v_dst = sV + stage * BN * LDS;
    for (int c = tid; c < BN * CH; c += NT) {
      const int r = c / CH, col = (c % CH) * 8;
      const int64_t key = t * BN + r;
      const bool valid = key < n_keys;
      const int64_t off = (valid ? key : 0) * p.kv_stride + col;
      cp_async16(k_dst + r * LDS + col, kh + off, valid);
      cp_async16(v_dst + r * LDS + col, vh + off, valid);
    }
    if (tid < BN) {
      const int64_t key = t * BN + tid;
      sPos[stage * BN + tid] = key < n_keys ? kvp[key * ps] : INT_MAX;
    }
  };

  if (n_tiles > 0) {
    for (int c = tid; c < BM * CH; c += NT) {
      const int r = c / CH, col = (c % CH) * 8;
      const bool valid = row0 + r < p.n;
      cp_async16(sQ + r * LDS + col, qh + (valid ? row0 + r : 0) * p.q_stride + col, valid);
    }
    load_kv(0, 0);
  }
  cp_async_commit();

  float o[MT][HD / 8][4];
  float m[MT][2], l[MT][2];  // running max (base-2 scaled) and this thread's part of the running sum
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  const __nv_bfloat16* q_frag_base = sQ + (warp * 16 * MT + (lane % 16)) * LDS + (lane / 16) * 8;

  for (int64_t t = 0; t < n_tiles; ++t) {
    const int st = static_cast<int>(t & 1);
    if (t + 1 < n_tiles) {
      load_kv(t + 1, st ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* k_t = sK + st * BN * LDS;
    const __nv_bfloat16* v_t = sV + st * BN * LDS;
    const int32_t* pos_t = sPos + st * BN;
    if (pos_t[0] <= warp_qmax) {
      // S[16·MT x BN] = Q K^T for this warp's rows.
      float s[MT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 32; ++kk) {
        uint32_t qa[MT][4], qb[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          ldmatrix_x4(qa[mt], q_frag_base + mt * 16 * LDS + kk * 32);
          ldmatrix_x4(qb[mt], q_frag_base + mt * 16 * LDS + kk * 32 + 16);
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          uint32_t b[4];
          ldmatrix_x4(b, k_t + (j * 8 + (lane % 8)) * LDS + kk * 32 + (lane / 8) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(s[mt][j], qa[mt], b[0], b[1]);
            mma_bf16(s[mt][j], qb[mt], b[2], b[3]);
          }
        }
      }
      // Scale, mask by position, online softmax.
      const bool need_mask = pos_t[BN - 1] > warp_qmin;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float val = s[mt][j][e] * p.scale_log2;
            if (need_mask && pos_t[j * 8 + tq * 2 + (e & 1)] > qp[mt][e >> 1]) val = -INFINITY;
            s[mt][j][e] = val;
            mx[e >> 1] = fmaxf(mx[e >> 1], val);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
          for (int off = 1; off < 4; off <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], off));
          const float m_new = fmaxf(m[mt][r], mx[r]);
          // A row that has seen no visible entry yet keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
          const float shift = m_new == -INFINITY ? 0.0f : m_new;
          const float alpha = fast_exp2(m[mt][r] - shift);
          m[mt][r] = m_new;
          mx[r] = shift;  // reused below as the row's shift
          l[mt][r] *= alpha;
#pragma unroll
          for (int j = 0; j < HD / 8; ++j) {
            o[mt][j][2 * r] *= alpha;
            o[mt][j][2 * r + 1] *= alpha;
          }
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][j][e] = fast_exp2(s[mt][j][e] - mx[e >> 1]);
            l[mt][e >> 1] += s[mt][j][e];
          }
        }
      }
      // O += P V: the S accumulators of two adjacent 8-entry tiles are the A fragment of 16 entries.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int jp = 0; jp < HD / 16; ++jp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, v_t + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + jp * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(o[mt][2 * jp], pa[mt], b[0], b[1]);
            mma_bf16(o[mt][2 * jp + 1], pa[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // this stage is reloaded by the next iteration's prefetch
  }

  // A row with no visible entry gets zeros, as the CPU op does.
  __nv_bfloat16* out_h = p.out + static_cast<int64_t>(h) * HD + tq * 2;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[mt][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int64_t row = row0 + warp * 16 * MT + mt * 16 + gq + 8 * r;
      if (row < p.n) {
#pragma unroll
        for (int j = 0; j < HD / 8; ++j)
          *reinterpret_cast<__nv_bfloat162*>(out_h + row * p.q_stride + j * 8) =
              __floats2bfloat162_rn(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      }
    }
  }
}

template <int HD, int WARPS, int MT, int BN>
void launch_flash(Context& ctx, const AttnParams& p, int n_head) {
  using Tile = AttnTile<HD, WARPS, MT, BN>;
  auto kernel = flash_attention_kernel<HD, WARPS, MT, BN>;
  // Above 48 KB a kernel's dynamic shared memory must be allowed explicitly (once per kernel).
  static const cudaError_t attr_status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tile::kSmemBytes));
  check(attr_status, "attention", "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  const int64_t m_blocks = (p.n + Tile::kBM - 1) / Tile::kBM;
  require(m_blocks <= INT32_MAX && n_head <= 65535, "attention", "grid too large");
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(n_head));
  kernel<<<grid, WARPS * 32, Tile::kSmemBytes, ctx.stream()>>>(p);
  check_launch(ctx, "attention");
}

template <int HD>
void launch_variant(Context& ctx, const AttnParams& p, int n_head, int variant) {
  switch (variant) {
    case 1: return launch_flash<HD, 4, 1, 64>(ctx, p, n_head);
    case 2: return launch_flash<HD, 8, 1, 64>(ctx, p, n_head);
    case 3: return launch_flash<HD, 4, 2, 32>(ctx, p, n_head);
    default: return launch_flash<HD, 4, 2, 64>(ctx, p, n_head);
  }
}

// Probabilities of one query row per head: one block per head, a warp per cache entry for the
// scores, then the block's max and sum.
__global__ void row_probs_kernel(const __nv_bfloat16* __restrict__ q, int32_t q_pos, const KvHeads kv,
                                 int64_t kv_stride, int group, int head_dim, float scale, float* __restrict__ probs,
                                 int64_t ld, const int32_t* __restrict__ q_pos_dev) {
  if (q_pos_dev) q_pos = *q_pos_dev;
  extern __shared__ float sq[];  // [head_dim]
  __shared__ float red[32];
  const int h = blockIdx.x, g = h / group, lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const __nv_bfloat16* kh = kv_k(kv) + static_cast<int64_t>(g) * head_dim;
  const int64_t n_kv = kv_count(kv, g);
  float* ph = probs + static_cast<int64_t>(h) * ld;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    sq[d] = __bfloat162float(q[static_cast<int64_t>(h) * head_dim + d]);
  const int64_t visible = block_count_leq(kv_pos_of(kv, g), kv.pos_stride, n_kv, q_pos);  // syncs the block
  float mx = -INFINITY;
  for (int64_t j = warp; j < visible; j += warps) {
    const __nv_bfloat16* kr = kh + j * kv_stride;
    float dot = 0.0f;
    for (int d = lane; d < head_dim; d += 32) dot += sq[d] * __bfloat162float(kr[d]);
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    dot *= scale;
    if (lane == 0) ph[j] = dot;
    mx = fmaxf(mx, dot);
  }
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = -INFINITY;
  for (int w = 0; w < warps; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) {
    const float e = __expf(ph[j] - mx);
    ph[j] = e;
    sum += e;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int w = 0; w < warps; ++w) sum += red[w];
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int64_t j = threadIdx.x; j < n_kv; j += blockDim.x) ph[j] = j < visible ? ph[j] * inv : 0.0f;
}

}  // namespace

namespace detail {
void check_kv_heads(const KvHeads& kv, int n_head, int n_head_kv, const char* op) {
  require(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && kv.max_n >= 0 && kv.appended >= 0 &&
              kv.max_n <= kv.rows && kv.pos_stride >= 0 && kv.pos_head_stride >= 0 &&
              (kv.max_n == 0 || (kv.k && kv.pos)),
          op,
          "bad shape max_n=" + std::to_string(kv.max_n) + " rows=" + std::to_string(kv.rows) + " appended=" +
              std::to_string(kv.appended) + " n_head=" + std::to_string(n_head) + " n_head_kv=" +
              std::to_string(n_head_kv));
}
}  // namespace detail

const char* attention_variant_name(int variant) {
  switch (variant) {
    case 1: return "4 warps x 16 rows, tiles of 64";
    case 2: return "8 warps x 16 rows, tiles of 64";
    case 3: return "4 warps x 32 rows, tiles of 32";
    case 4: return "4 warps x 32 rows, tiles of 64";
    default: return "?";
  }
}

void attention(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
               int n_head_kv, int head_dim, bf16* out, int variant) {
  check_kv_heads(kv, n_head, n_head_kv, "attention");
  require(n >= 0, "attention", "bad row count n=" + std::to_string(n));
  if (head_dim != 64 && head_dim != 128)
    throw UnsupportedError("cuda: attention: head_dim " + std::to_string(head_dim) + " (supported: 64, 128)");
  if (variant == 0) variant = head_dim == 64 ? 4 : 3;  // fastest on the H100 (docs/cuda.md)
  require(variant >= 1 && variant <= kAttentionVariants, "attention", "variant " + std::to_string(variant));
  const auto a = reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(kv.k) |
                 reinterpret_cast<uintptr_t>(kv.v) | reinterpret_cast<uintptr_t>(out);
  require((a & 15u) == 0, "attention", "q, k, v and out must be 16-byte aligned");
  if (n == 0) return;
  AttnParams p{};
  p.q = bf(q);
  p.q_pos = q_pos;
  p.kv = kv;
  p.out = bf(out);
  p.n = n;
  p.q_stride = static_cast<int64_t>(n_head) * head_dim;
  p.kv_stride = static_cast<int64_t>(n_head_kv) * head_dim;
  p.group = n_head / n_head_kv;
  p.scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(head_dim));
  if (head_dim == 64) launch_variant<64>(ctx, p, n_head, variant);
  else launch_variant<128>(ctx, p, n_head, variant);
}

void attention_row_probs(Context& ctx, const bf16* q_row, int32_t q_pos, const KvHeads& kv, int n_head,
                         int n_head_kv, int head_dim, float* probs, int64_t ld, const int32_t* q_pos_dev) {
  check_kv_heads(kv, n_head, n_head_kv, "attention_row_probs");
  require(head_dim > 0 && head_dim <= 1024 && ld >= kv.max_n, "attention_row_probs",
          "bad shape head_dim=" + std::to_string(head_dim) + " ld=" + std::to_string(ld) + " for max_n=" +
              std::to_string(kv.max_n));
  if (kv.max_n == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  row_probs_kernel<<<n_head, 256, sizeof(float) * head_dim, ctx.stream()>>>(
      bf(q_row), q_pos, kv, static_cast<int64_t>(n_head_kv) * head_dim, n_head / n_head_kv, head_dim, scale, probs,
      ld, q_pos_dev);
  check_launch(ctx, "attention_row_probs");
}

}  // namespace sdtp::cuda
