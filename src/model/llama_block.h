// The one transformer block of the llama family (Llama 2/3, Mistral, Qwen2, SmolLM2):
//   x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
//   x += Wdown · (silu(Wgate·norm(x)) * Wup·norm(x))
// It runs on however many rows are alive; each row carries its original position, which RoPE and
// the causal mask use. Pruning changes which rows are passed in, never this code.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_cache.h"
#include "sdtp/model.h"

namespace sdtp {

// Work buffers for one forward pass, sized for the largest row count seen so far.
struct BlockScratch {
  std::vector<float> norm, q, k, v, attn, proj, gate, up;
  void ensure(const ModelConfig& c, int64_t rows);
};

// Runs block `w` on rows x [n x n_embd] (updated in place) at `positions`, appending their keys and
// values to `kv` before attending over it.
void llama_block(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& inv_freq, float* x,
                 const int32_t* positions, int64_t n, LayerKV& kv, BlockScratch& s);

// Matmul FLOPs of one block per row (2 per multiply-add).
double block_matmul_flops_per_row(const ModelConfig& c);

}  // namespace sdtp
