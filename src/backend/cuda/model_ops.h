// The ops the CUDA forward pass adds to backend/cuda/ops.h: fused steps of the llama block on the
// layouts the session uses (one fused Q|K|V projection, one fused gate|up projection), the SDTP
// predictor's GELU + fc2, the score fix-ups of pruning, random weight fill, and an attention for
// head sizes the flash kernel lacks.
// Same conventions as ops.h: device pointers, queued on ctx.stream(), checked after each launch.
#pragma once

#include <cstdint>

#include "backend/cuda/device.h"

namespace sdtp::cuda {

// From fused rows qkv [n x (n_head + 2·n_head_kv)·head_dim] (Q | K | V): q_out [n x n_head·head_dim]
// and k_out [n x n_head_kv·head_dim] rotated at `positions` (rotate-half RoPE, inv_freq:
// head_dim/2 floats), v_out [n x n_head_kv·head_dim] copied. k_out/v_out are the layer's cache rows.
void qkv_rope_split(Context& ctx, const bf16* qkv, int64_t n, int n_head, int n_head_kv, int head_dim,
                    const int32_t* positions, const float* inv_freq, bf16* q_out, bf16* k_out, bf16* v_out);

// out[r, i] = silu(gu[r, i]) · gu[r, n_ff + i] for rows gu [n x 2·n_ff] (gate | up).
void swiglu_fused(Context& ctx, const bf16* gu, int64_t n, int64_t n_ff, bf16* out);

// SDTP predictor tail: scores[r] = b2 + Σ_j w2[j]·GELU_erf(h[r, j]) for h [n x n_hidden] (fc1's
// output, bf16), w2 float32. The rows always kept are forced afterwards (force_rows).
void gelu_dot(Context& ctx, const bf16* h, int64_t n, int n_hidden, const float* w2, float b2, float* scores);

// out[h · ld + j] = Σ_d |v[j, h·head_dim + d]| for cache rows v [n x n_head_kv·head_dim] (ld >= n):
// the value L1 norms VATP weighs attention by.
void value_l1(Context& ctx, const bf16* v, int64_t n, int n_head_kv, int head_dim, float* out, int64_t ld);

// scores[i] = +inf for rows that are always kept (position < keep_first, and row n-1).
void force_rows(Context& ctx, float* scores, int64_t n, const int32_t* positions, int keep_first);

// scores[i] = mean over heads of probs[h · n_kv + offset + i], i < n (the attention the last row
// paid to the rows alive now, which are the cache entries from `offset` on).
void mean_over_heads(Context& ctx, const float* probs, int n_head, int64_t n_kv, int64_t offset, int64_t n,
                     float* scores);

// Fills p[0..count) with uniform values in [-bound, bound] from a counter-based hash of
// (seed, index): the same seed gives the same values whatever the launch shape.
void fill_uniform(Context& ctx, bf16* p, int64_t count, uint64_t seed, float bound);
void fill_value(Context& ctx, float* p, int64_t count, float value);

// Causal GQA attention with the semantics of ops.h's attention for any even head_dim <= 256: one
// warp per (query row, head), online softmax. Slow; for head sizes the flash kernel lacks (the
// tiny test models), not for speed.
void attention_generic(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k, const bf16* v,
                       const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out);

// Attention of one query row at position q_pos (a decode step) with ops.h's attention semantics,
// split over the cache (flash-decoding): each block reduces one slice of one head to (max, sum,
// unnormalised output), a second kernel merges the slices. head_dim 32, 64, 128 or 256.
// scratch: attention_decode_scratch(n_head, head_dim) floats.
constexpr int kDecodeMaxSplits = 64;
inline int64_t attention_decode_scratch(int n_head, int head_dim) {
  return static_cast<int64_t>(n_head) * kDecodeMaxSplits * (head_dim + 2);
}
// For CUDA graphs of decode steps: where q_pos_dev / n_kv_dev are given (device pointers to one
// int32 each), the kernels read q_pos and n_kv from them when they run; the host n_kv then only
// sets the split count, attention_decode_splits(ctx, n_kv, n_head), which a graph is valid for.
bool attention_decode_supported(int head_dim);
int attention_decode_splits(const Context& ctx, int64_t n_kv, int n_head);
void attention_decode(Context& ctx, const bf16* q, int32_t q_pos, const bf16* k, const bf16* v, const int32_t* kv_pos,
                      int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out, float* scratch,
                      const int32_t* q_pos_dev = nullptr, const int32_t* n_kv_dev = nullptr);

// qkv_rope_split for one row (a decode step) whose cache row is read from the device: K (rotated)
// and V go to row *row of k_cache / v_cache, position[0] to pos_cache[*row]; q_out as there.
void qkv_rope_append(Context& ctx, const bf16* qkv, int n_head, int n_head_kv, int head_dim, const int32_t* positions,
                     const float* inv_freq, bf16* q_out, bf16* k_cache, bf16* v_cache, int32_t* pos_cache,
                     const int32_t* row);

// Causal GQA attention with the semantics of ops.h's attention, on Hopper warpgroup MMAs
// (attention_sm90a.cu, built for sm_90a only). Needs attention_wgmma_supported(head_dim): a
// compute capability 9.0 device and head_dim 128. variant: 0 = warp-specialised (a TMA producer
// warp, two consumer warpgroups in ping-pong, each pipelining its softmax under its P·V MMAs);
// 1 = the plain schedule, tiles of 128; 2 = the plain schedule, tiles of 64; 3 = the pipelined
// schedule without the producer (all threads load with cp.async, a block barrier per tile).
bool attention_wgmma_supported(int head_dim);
void attention_wgmma(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k, const bf16* v,
                     const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, bf16* out,
                     int variant = 0);

// Per KV head g and cache entry j: out[g · ld + j] = the attention probability the query rows q
// [n x n_head·head_dim] at q_pos paid entry j (zero where kv_pos[j] > q_pos[i]), summed over the
// rows and the query heads of group g (H2O's accumulated attention). Two passes, no n x n_kv
// matrix: the softmax max and sum per (row, head) into row_stats (2·n·n_head floats), then the
// mass per entry. Plain warp dot products: for statistics, not for speed.
void attention_key_mass(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k,
                        const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim,
                        float* row_stats, float* out, int64_t ld);

}  // namespace sdtp::cuda
