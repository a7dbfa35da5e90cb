// The ops the CUDA forward pass adds to backend/cuda/ops.h: fused steps of the llama block on the
// layouts the session uses (one fused Q|K|V projection, one fused gate|up projection), the SDTP
// predictor's GELU + fc2, the score fix-ups of pruning, random weight fill, and an attention for
// head sizes the flash kernel lacks.
// Same conventions as ops.h: device pointers, queued on ctx.stream(), checked after each launch.
#pragma once

#include <cstdint>

#include "backend/cuda/device.h"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {

// From fused rows qkv [n x (n_head + 2·n_head_kv)·head_dim] (Q | K | V): q_out [n x n_head·head_dim]
// rotated at `positions` (rotate-half RoPE, inv_freq: head_dim/2 floats), and for every KV head g
// row i's K (rotated) and V into the cache entry len[g] + i of that head (row len[g] + i of its
// head_dim columns of k_cache and v_cache, [cap x n_head_kv·head_dim]) and positions[i] into
// pos_cache[(len[g] + i)·n_head_kv + g]. len (one int32 per KV head) is read on the device, so a
// captured decode step replays with new lengths; the caller makes sure len[g] + n <= cap.
void qkv_rope_append(Context& ctx, const bf16* qkv, int64_t n, int n_head, int n_head_kv, int head_dim,
                     const int32_t* positions, const float* inv_freq, bf16* q_out, bf16* k_cache, bf16* v_cache,
                     int32_t* pos_cache, const int32_t* len);

// out[r, i] = silu(gu[r, i]) · gu[r, n_ff + i] for rows gu [n x 2·n_ff] (gate | up).
void swiglu_fused(Context& ctx, const bf16* gu, int64_t n, int64_t n_ff, bf16* out);

// SDTP predictor tail: scores[r] = b2 + Σ_j w2[j]·GELU_erf(h[r, j]) for h [n x n_hidden] (fc1's
// output, bf16), w2 float32. The rows always kept are forced afterwards (force_rows).
void gelu_dot(Context& ctx, const bf16* h, int64_t n, int n_hidden, const float* w2, float b2, float* scores);

// Per KV head g and entry j < len[g] (len: device, one int32 per head; max_n >= every len sizes the
// grid): v_l1[j · ld_v + g] = Σ_d |v[j, g·head_dim + d]| (the value L1 norm VATP weighs attention
// by) and k_l2[j · ld_k + g] = sqrt(Σ_d k[j, g·head_dim + d]²) (knorm's score), for cache rows k, v
// [>= max_n x n_head_kv·head_dim]. Either output may be null (not computed).
void entry_norms(Context& ctx, const bf16* k, const bf16* v, const int32_t* len, int64_t max_n, int n_head_kv,
                 int head_dim, float* v_l1, int64_t ld_v, float* k_l2, int64_t ld_k);

// Compaction of a per-head cache: for every KV head g and i < dst_len[g] (device; max_n >= every
// one sizes the grid), entry i of head g in dst = entry keep[i · n_head_kv + g] of head g in src:
// its head_dim values of K and V (rows of n_head_kv·head_dim), its position (pos [rows x
// n_head_kv]), and its mass (f32, same layout) where src_mass and dst_mass are both given. A keep
// index outside [0, src_rows) yields zeros. dst must not overlap src.
void gather_entries(Context& ctx, const bf16* src_k, const bf16* src_v, const int32_t* src_pos,
                    const float* src_mass, int64_t src_rows, const int32_t* keep, const int32_t* dst_len,
                    int64_t max_n, int n_head_kv, int head_dim, bf16* dst_k, bf16* dst_v, int32_t* dst_pos,
                    float* dst_mass);

// scores[i] = +inf for rows that are always kept (position < keep_first or >= recent_from, and row n-1).
void force_rows(Context& ctx, float* scores, int64_t n, const int32_t* positions, int keep_first, int32_t recent_from);

// scores[i] = mean over the query heads h of probs[h · ld + offset[h / group] + i], i < n: the
// attention the last row paid to the entries just appended, which sit from len[g] on in each KV
// head g (offset: device, one int32 per KV head).
void mean_over_heads(Context& ctx, const float* probs, int n_head, int group, int64_t ld, const int32_t* offset,
                     int64_t n, float* scores);

// Fills p[0..count) with uniform values in [-bound, bound] from a counter-based hash of
// (seed, index): the same seed gives the same values whatever the launch shape.
void fill_uniform(Context& ctx, bf16* p, int64_t count, uint64_t seed, float bound);
void fill_value(Context& ctx, float* p, int64_t count, float value);

// Causal GQA attention with the semantics of ops.h's attention for any even head_dim <= 256: one
// warp per (query row, head), online softmax. Slow; for head sizes the flash kernel lacks (the
// tiny test models), not for speed.
void attention_generic(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
                       int n_head_kv, int head_dim, bf16* out);

// Attention of one query row at position q_pos (a decode step) with ops.h's attention semantics,
// split over the cache (flash-decoding): each block reduces one slice of one query head's entries
// to (max, sum, unnormalised output), a second kernel merges the slices. head_dim 32, 64, 128 or
// 256. scratch: attention_decode_scratch(n_head, head_dim) floats.
constexpr int kDecodeMaxSplits = 64;
inline int64_t attention_decode_scratch(int n_head, int head_dim) {
  return static_cast<int64_t>(n_head) * kDecodeMaxSplits * (head_dim + 2);
}
// For CUDA graphs of decode steps: where q_pos_dev is given (a device pointer to one int32) the
// kernel reads q_pos from it, and every head's count comes from kv.len on the device; the host
// kv.max_n only sets the split count, attention_decode_splits(ctx, kv.max_n, n_head), which a graph
// is valid for.
bool attention_decode_supported(int head_dim);
int attention_decode_splits(const Context& ctx, int64_t n_kv, int n_head);
void attention_decode(Context& ctx, const bf16* q, int32_t q_pos, const KvHeads& kv, int n_head, int n_head_kv,
                      int head_dim, bf16* out, float* scratch, const int32_t* q_pos_dev = nullptr);

// Causal GQA attention with the semantics of ops.h's attention, on Hopper warpgroup MMAs
// (attention_sm90a.cu, built for sm_90a only). Needs attention_wgmma_supported(head_dim): a
// compute capability 9.0 device and head_dim 128. variant: 0 = warp-specialised (a TMA producer
// warp, two consumer warpgroups in ping-pong, each pipelining its softmax under its P·V MMAs);
// 1 = the plain schedule, tiles of 128; 2 = the plain schedule, tiles of 64; 3 = the pipelined
// schedule without the producer (all threads load with cp.async, a block barrier per tile).
bool attention_wgmma_supported(int head_dim);
void attention_wgmma(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const KvHeads& kv, int n_head,
                     int n_head_kv, int head_dim, bf16* out, int variant = 0);
inline void attention_wgmma(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, const bf16* k,
                            const bf16* v, const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv,
                            int head_dim, bf16* out, int variant = 0) {
  attention_wgmma(ctx, q, q_pos, n, shared_kv(k, v, kv_pos, n_kv), n_head, n_head_kv, head_dim, out, variant);
}

// Per KV head g and entry j < count(g): mass[j · ld + g] += the attention probability the query
// rows [from, n) of q [n x n_head·head_dim] at q_pos paid entry j (zero where its position is
// above the row's), summed over those rows and the query heads of group g (H2O's accumulated
// attention; SnapKV's window with from = n - window). Accumulates: mass is not zeroed. Two passes,
// no n x n_kv matrix: the softmax max and sum per (row, head) into row_stats (2·(n - from)·n_head
// floats), then the mass per entry. Plain warp dot products: for statistics, not for speed.
void attention_key_mass(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, int64_t from, const KvHeads& kv,
                        int n_head, int n_head_kv, int head_dim, float* row_stats, float* mass, int64_t ld);
// The same sums for many query rows on tensor cores: per query head and chunk of rows, S = scale·Q·K^T
// by cuBLAS into `scratch` (scratch_floats floats: the chunk is as many rows as fit), then the rows'
// softmax stats and the column sums. n_kv: every KV head's entry count on the host (len + appended).
// Not for a captured step (host counts); the Session uses it for prefills.
void attention_key_mass_gemm(Context& ctx, const bf16* q, const int32_t* q_pos, int64_t n, int64_t from,
                             const KvHeads& kv, const int64_t* n_kv, int n_head, int n_head_kv, int head_dim,
                             float* scratch, int64_t scratch_floats, float* mass, int64_t ld);

}  // namespace sdtp::cuda
