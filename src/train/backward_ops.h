// Backward passes (activation gradients only; the weights are frozen) of the CPU ops the
// llama-family block uses (backend/cpu/ops.h): linear, RMSNorm, rotate-half RoPE, SwiGLU and causal
// grouped-query attention. Float32 storage, double accumulators where a reduction runs over a row.
// Used by the gradient saliency of train/saliency.h.
#pragma once

#include <cstdint>

namespace sdtp::train {

// Linear y[n x out] = x[n x in] · W[out x in]^T (+ b): dx = dy · W. Overwrites dx, or adds to it
// when `accumulate`.
void linear_backward(const float* dy, int64_t n, int64_t out, const float* w, int64_t in, float* dx,
                     bool accumulate);

// RMSNorm y = w ⊙ x·r, r = (mean(x²) + eps)^-1/2, per row of d floats:
// dx = r·(w⊙dy) − r³·x·Σ(w⊙dy⊙x)/d, ADDED to dx (the residual branch already holds the skip path).
void rmsnorm_backward_add(const float* x, const float* weight, const float* dy, int64_t n, int64_t d, float eps,
                          float* dx);

// RoPE is a rotation per pair (x[i], x[i+half]) by angle pos·inv_freq[i]; its backward is the
// inverse rotation of the gradient, in place (same layout as cpu::rope).
void rope_backward(float* dy, int64_t n, int64_t stride, int n_heads, int head_dim, const int32_t* positions,
                   const float* inv_freq);

// out = silu(gate)·up: dgate = dout·up·silu'(gate), dup = dout·silu(gate), with
// silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t count, float* dgate,
                     float* dup);

// Causal GQA self-attention over n rows at ascending `positions` (query i sees keys j with
// positions[j] <= positions[i]), O = softmax(scale·Q K^T) V per head, scale = 1/sqrt(head_dim).
// Given q [n x n_head*head_dim], k, v [n x n_head_kv*head_dim] (after RoPE) and dout, writes
// dq, dk, dv (overwritten). The probabilities are recomputed per block of query rows:
//   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),  dQ = scale·dS K,  dK = scale·dSᵀ Q.
// Memory: 2·n·n_head·head_dim floats for per-head dK/dV, plus 2·64·n floats per thread.
void attention_backward(const float* q, const float* k, const float* v, const float* dout, const int32_t* positions,
                        int64_t n, int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv);

}  // namespace sdtp::train
