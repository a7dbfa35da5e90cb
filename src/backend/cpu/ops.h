// CPU reference backend: the few ops the transformer block needs, in float32. Matmuls go to
// OpenBLAS; the rest are OpenMP loops written so the compiler vectorises them, except the exp of
// softmax and SwiGLU, which run hand-vectorised kernels chosen for the CPU at run time (isa.h).
// Positions travel with rows: RoPE and the causal mask read each row's own position, so the same
// ops serve dense and pruned (gathered) rows.
#pragma once

#include <cstdint>

namespace sdtp::cpu {

// Threads used by OpenMP loops and OpenBLAS (0 = $OMP_NUM_THREADS, else all hardware threads).
void set_num_threads(int n);
int num_threads();

// y[n x m] = x[n x k] · W[m x k]^T (+ bias[m] when not null). Row-major, contiguous.
void matmul(const float* x, int64_t n, int64_t k, const float* w, int64_t m, const float* bias, float* y);

// y = x / sqrt(mean(x^2) + eps) * weight, per row of d floats (y may alias x).
void rmsnorm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* y);

// Rotary embedding in the rotate-half (NeoX / Hugging Face) convention, in place on rows of
// n_heads * head_dim floats (row stride `stride` floats): for i < head_dim/2 the pair
// (x[i], x[i + head_dim/2]) is rotated by angle positions[row] * inv_freq[i] (by minus that angle
// when inverse: the transpose, which the backward pass needs).
void rope(float* x, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq, bool inverse = false);

// out[i] = silu(gate[i]) * up[i]  (SwiGLU; out may alias gate).
void swiglu(const float* gate, const float* up, int64_t count, float* out);

// x[i] += y[i]
void add(float* x, const float* y, int64_t count);

// Causal grouped-query attention. q: [n x n_head*head_dim] at positions q_pos; k, v: the layer's
// cache, [n_kv x n_head_kv*head_dim] at positions kv_pos (ascending). Query row i attends to the
// cache entries with kv_pos <= q_pos[i]. out: [n x n_head*head_dim]. Scale 1/sqrt(head_dim).
// When last_row_probs is given ([n_head x n_kv]), it receives the softmax probabilities of the
// last query row for every head (what attention-based token selectors score with).
void attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
               const int32_t* kv_pos, int64_t n_kv, int n_head, int n_head_kv, int head_dim, float* out,
               float* last_row_probs = nullptr);
// The general form, every KV head with its own entries (backend.h's KVView): KV head g holds rows
// [0, n_kv[g]) of its columns of k and v, entry j at position kv_pos[j · n_head_kv + g] (ascending
// in j). last_row_probs, when given, is [n_head x probs_ld]: head h's probabilities over its KV
// head's entries [0, n_kv[g]) (the rest of the row untouched). key_mass, when given, is [max_g
// n_kv[g] x n_head_kv]: key_mass[j · n_head_kv + g] += the probability entry j of KV head g
// received, summed over the group's query heads and the query rows [mass_from, n).
void attention(const float* q, const int32_t* q_pos, int64_t n, const float* k, const float* v,
               const int32_t* kv_pos, const int64_t* n_kv, int n_head, int n_head_kv, int head_dim, float* out,
               float* last_row_probs, int64_t probs_ld, float* key_mass = nullptr, int64_t mass_from = 0);

// A KV cache's K and V ([n_kv x n_head_kv*head_dim] each) in float32, or in 16 bits (IEEE half or
// bfloat16), read as float32 by the attention below a block of rows at a time.
enum class KvElem : uint8_t { f32, f16, bf16 };
struct KvData {
  const void* k = nullptr;
  const void* v = nullptr;
  KvElem type = KvElem::f32;
};
void attention(const float* q, const int32_t* q_pos, int64_t n, const KvData& kv, const int32_t* kv_pos,
               const int64_t* n_kv, int n_head, int n_head_kv, int head_dim, float* out, float* last_row_probs,
               int64_t probs_ld, float* key_mass = nullptr, int64_t mass_from = 0);

// Conversions between float32 and the 16-bit KV types (round to nearest even; AVX2 + F16C).
void to_f32(KvElem type, const void* src, int64_t count, float* dst);
void from_f32(KvElem type, const float* src, int64_t count, void* dst);

// exp accurate to a few ulp over the float range, written to vectorise (used by softmax, silu).
float exp_approx(float x);

}  // namespace sdtp::cpu
