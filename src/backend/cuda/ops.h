// CUDA backend ops: the ops of backend/cpu/ops.h (and the few the pruned prefill adds) on device
// memory, bf16 storage with float32 accumulation. Same conventions as the CPU ops: row-major,
// contiguous rows, positions travel with rows (RoPE and the causal mask read each row's own
// position). Every pointer is a device pointer unless named host_*; every op is queued on
// ctx.stream() and checked after its launch (errors name the op).
#pragma once

#include <cstdint>

#include "backend/cuda/device.h"

namespace sdtp::cuda {

// y[n x m] = x[n x k] · W[m x k]^T (+ bias[m] when not null), cuBLASLt, float32 accumulation.
void matmul(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, const bf16* bias, bf16* y);
// Same with a float32 result (logits); bias is float32 here.
void matmul_f32(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, const float* bias,
                float* y);
// y[n x m] += x[n x k] · W[m x k]^T (beta = 1): the residual add of the attention output and MLP
// down projections, fused into the matmul. y bf16, or float32 (the residual stream the session keeps).
void matmul_residual(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, bf16* y);
void matmul_residual(Context& ctx, const bf16* x, int64_t n, int64_t k, const bf16* w, int64_t m, float* y);

// y = x / sqrt(mean(x^2) + eps) * weight, per row of d values. weight is float32; x bf16 (y may
// alias it) or float32 (the residual stream).
void rmsnorm(Context& ctx, const bf16* x, const float* weight, int64_t n, int64_t d, float eps, bf16* y);
void rmsnorm(Context& ctx, const float* x, const float* weight, int64_t n, int64_t d, float eps, bf16* y);

// Rotary embedding, rotate-half convention, in place on rows of n_heads*head_dim values with row
// stride `stride` elements: the pair (x[i], x[i + head_dim/2]) of each head is rotated by the angle
// positions[row] * inv_freq[i] (inv_freq: head_dim/2 floats on the device).
void rope(Context& ctx, bf16* x, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq);

// out[i] = silu(gate[i]) * up[i] (out may alias gate).
void swiglu(Context& ctx, const bf16* gate, const bf16* up, int64_t count, bf16* out);

// x[i] += y[i]
void add(Context& ctx, bf16* x, const bf16* y, int64_t count);

// out row r = in row index[r], for n_out rows of row_bytes bytes each (bf16 hidden rows, float
// rows or int32 positions alike). An index outside [0, n_in) yields a zero row.
void gather_rows(Context& ctx, const void* in, int64_t n_in, int64_t row_bytes, const int32_t* index,
                 int64_t n_out, void* out);

// out row i = table row ids[i] ([vocab x d] bf16); an id outside [0, vocab) yields a zero row.
// out bf16, or float32 (the residual stream; the rows widened exactly).
void embedding(Context& ctx, const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, bf16* out);
void embedding(Context& ctx, const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, float* out);

// The indices of the k largest of scores[0..n), in ascending index order (ties: the earlier index
// ranks higher, as select_rows does). Requires 0 <= k <= n.
void top_k(Context& ctx, const float* scores, int64_t n, int64_t k, int32_t* out_index);

// A layer's KV cache as the attention kernels read it (backend.h's KVView): k and v [rows x
// n_head_kv·head_dim]; KV head g holds entries [0, count(g)) with count(g) = len[g] + appended,
// len on the device (one int32 per KV head, read when the kernel runs, so a captured CUDA graph
// replays with new lengths), or count(g) = max_n for every head where len is null. Entry j of head
// g is row j of its head_dim columns of k and v, at position pos[j·pos_stride + g·pos_head_stride],
// ascending in j: the KVView layout is (n_head_kv, 1), one position list shared by all heads (1, 0).
struct KvHeads {
  const bf16* k = nullptr;
  const bf16* v = nullptr;
  const int32_t* pos = nullptr;
  int64_t pos_stride = 1, pos_head_stride = 0;
  const int32_t* len = nullptr;
  int64_t appended = 0;
  int64_t max_n = 0;  // host: >= every head's count (max_g len[g] + appended); sizes grids
  int64_t rows = 0;   // rows of k and v allocated (>= max_n): how far a kernel may read
};
// Every head holding the same n_kv entries at kv_pos[0..n_kv) (the layout before per-head caches).
inline KvHeads shared_kv(const bf16* k, const bf16* v, const int32_t* kv_pos, int64_t n_kv) {
  KvHeads kv;
  kv.k = k;
  kv.v = v;
  kv.pos = kv_pos;
  kv.max_n = kv.rows = n_kv;
  return kv;
}

// Causal grouped-query attention, flash-attention style (tiles in shared memory, online softmax,
// float32 accumulators, no n x n_kv matrix in memory). q: [n x n_head*head_dim] at positions q_pos;
// query head h attends to the entries of KV head g = h / (n_head / n_head_kv) with position <=
// q_pos[i] (none: a zero row). out: [n x n_head*head_dim]. Scale 1/sqrt(head_dim). head_dim 64 or
// 128 (others throw UnsupportedError). `variant` picks the kernel shape (1..kAttentionVariants, see
// attention_variant_name; 0 = the fastest measured on the H100: 3 for head_dim 128, 4 for
// head_dim 64), for tests and benchmarks.
void attention(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
               int n_head_kv, int head_dim, bf16* out, int variant = 0);
inline void attention(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k, const bf16* v,
                      const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out,
                      int variant = 0) {
  attention(ctx, q, q_pos, n, shared_kv(k, v, kv_pos, n_kv), n_head, n_head_kv, head_dim, out, variant);
}
inline constexpr int kAttentionVariants = 4;
const char* attention_variant_name(int variant);

// Softmax probabilities of one query row (q_row: n_head*head_dim values at position q_pos) over
// its KV head's entries, per head: probs [n_head x ld] float32 (ld >= kv.max_n), head h's row
// holding entries [0, count(g)) of its KV head g, zero where pos > q_pos (the rest of the row
// untouched). What the attention-based token selectors score with (cpu::attention's
// last_row_probs). Where q_pos_dev is given (a device pointer to one int32), the kernel reads the
// position from there.
void attention_row_probs(Context& ctx, const bf16* q_row, int32_t q_pos, const KvHeads& kv, int n_head,
                         int n_head_kv, int head_dim, float* probs, int64_t ld, const int32_t* q_pos_dev = nullptr);

// Element type conversions (weights dequantised to float on the host go up as bf16).
void f32_to_bf16(Context& ctx, const float* x, int64_t count, bf16* y);
void bf16_to_f32(Context& ctx, const bf16* x, int64_t count, float* y);

}  // namespace sdtp::cuda
