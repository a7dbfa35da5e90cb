// The one transformer block of the llama family (Llama 2/3, Mistral, Qwen2, SmolLM2), written once
// against the backend interface (backend/backend.h) and run by every backend:
//   x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
//   x += Wdown · (silu(Wgate·norm(x)) * Wup·norm(x))
// It runs on however many rows are alive; each row carries its original position, which RoPE and
// the causal mask use. Pruning, revival and eviction change which rows and cache entries exist,
// never this code.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "sdtp/model.h"

namespace sdtp {

// Work tensors of one forward pass, each with at least as many rows as the block runs on.
struct BlockBuffers {
  DeviceTensor xn, qkv, q, att, gu, act;
  int64_t rows = 0;
  // (Re)allocates for `rows` rows when fewer are held (frees the old ones first).
  void ensure(Backend& be, const ModelConfig& c, int64_t rows);
};

// Intermediate values of the block for one call, read back to the host when asked (gradient
// saliency's backward pass needs them; nothing else does): each [n x width] float32. q and k are
// after RoPE; k and v are the rows this call appended to the cache (traced only when every head
// of the cache holds the same number of entries).
struct BlockTrace {
  std::vector<float> x_in, attn_norm, q, k, v, att, x_mid, ffn_norm, gu, act;
};

// Runs block `w` on rows x [n x n_embd] (updated in place) at `positions` (i32 [n x 1]): their K
// and V are appended to every head of `cache` (after its len entries), attention runs over each
// head's entries and them. The caller counts the n new entries (KVCache::grow). `placed`, when
// given, runs between the append and the attention: rows at positions below cached ones (revived
// tokens) are moved into position order there (KVCache::place_appended), since attention reads
// each head's entries as ascending positions.
void llama_block(Backend& be, const ModelConfig& c, const DeviceLayer& w, const DeviceTensor& inv_freq,
                 const DeviceTensor& x, const DeviceTensor& positions, const KVView& cache, BlockBuffers& b,
                 AttentionStats* stats = nullptr, BlockTrace* trace = nullptr,
                 const std::function<void()>& placed = nullptr);

// Matmul FLOPs of one block per row (2 per multiply-add).
double block_matmul_flops_per_row(const ModelConfig& c);

}  // namespace sdtp
