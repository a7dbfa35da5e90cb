// The one transformer block of the llama family (Llama 2/3, Mistral, Qwen2, SmolLM2):
//   x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
//   x += Wdown · (silu(Wgate·norm(x)) * Wup·norm(x))
// It runs on however many rows are alive; each row carries its original position, which RoPE and
// the causal mask use. Pruning changes which rows are passed in, never this code.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cpu/q8.h"
#include "kv/kv_cache.h"
#include "sdtp/model.h"

namespace sdtp {

// Work buffers for one forward pass, sized for the largest row count seen so far.
struct BlockScratch {
  std::vector<float> norm, q, k, v, attn, proj, gate, up, head_probs;
  void ensure(const ModelConfig& c, int64_t rows);
};

// 8-bit copies of a layer's projections for decode (see backend/cpu/q8.h); used when few rows run.
struct LayerQ8 {
  cpu::QuantMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
};
// The decode layout of one weight: its GGUF blocks when kept (Q4_1, Q8_0), else Q8_0 of the floats.
cpu::QuantMatrix decode_matrix(const Tensor& t);
LayerQ8 quantize_layer_q8(const ModelConfig& c, const LayerWeights& w);  // empty if a width is not a multiple of 32
// Row counts up to this use the 8-bit weights when they are passed in.
constexpr int64_t kQ8MaxRows = 4;

// Runs block `w` on rows x [n x n_embd] (updated in place) at `positions`, appending their keys and
// values to `kv` before attending over it. When last_attn is given it receives the attention the
// last row paid to each of kv's entries, averaged over heads ([kv.n]).
void llama_block(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& inv_freq, float* x,
                 const int32_t* positions, int64_t n, LayerKV& kv, BlockScratch& s, const LayerQ8* q8 = nullptr,
                 std::vector<float>* last_attn = nullptr);

// Matmul FLOPs of one block per row (2 per multiply-add).
double block_matmul_flops_per_row(const ModelConfig& c);

}  // namespace sdtp
