// Gradient saliency of SDTP (Tao et al. 2025, "Saliency-driven Dynamic Token Pruning for Large
// Language Models", arXiv 2504.04514, §3 "ranking-based optimization"): π̂ = (∂T(x)/∂x) · x, where
// x is the hidden state of every token at a pruning layer and T(x) the network's output.
//
// token_saliency() runs the model's own block (model/llama_block.h) on the CPU backend in float32
// over the whole prompt, keeping the residual-stream input of each block from the lowest requested
// layer up (activation checkpointing), then walks back down: each block is run again on its input
// with a BlockTrace to get its activations, and the gradient is pushed through it by the block's
// hand-written backward (activation gradients only: the weights are frozen). The result is
// one saliency number per token and requested layer, the training target of the SDTP predictors and
// the `--prune saliency` oracle.
#pragma once

#include <cstdint>
#include <vector>

#include "sdtp/model.h"

namespace sdtp {

// What T(x) is. The paper only says "the output of the entire network"; see saliency.cpp for why
// the default is the log-probability of the model's own next-token prediction.
enum class SaliencyObjective {
  // T = log softmax(z)[a] with z the logits of the last position and a = argmax z: how much each
  // token supports the next-token prediction that a pruned prefill has to preserve. (Default.)
  kLastTokenLogProb,
  // T = z[a], the raw (unnormalised) top logit of the last position.
  kLastTokenLogit,
  // T = (1/(n-1)) Σ_{i<n-1} log p(ids[i+1] | ids[..i]): mean teacher-forced log-likelihood of the
  // prompt (the negative LM loss). Needs n >= 2.
  kLmLogLikelihood,
};

// How the per-coordinate products g_d·x_d of a token are reduced over the hidden dimension.
enum class SaliencyReduction {
  kSum,     // Σ_d g_d·x_d: the paper's "·" read as the inner product per token (default); signed
  kAbsSum,  // Σ_d |g_d·x_d|
};

struct SaliencyOptions {
  SaliencyObjective objective = SaliencyObjective::kLastTokenLogProb;
  SaliencyReduction reduction = SaliencyReduction::kSum;
  // Also return each requested layer's hidden state and gradient (tests, analysis).
  bool keep_gradients = false;
  // Also return each requested layer's hidden state (predictor training), without the gradient.
  bool keep_hidden = false;
};

struct SaliencyResult {
  std::vector<int> layers;                    // requested layers, ascending, without duplicates
  std::vector<std::vector<float>> per_token;  // [layer][token] saliency
  double objective = 0.0;                     // value of T on this prompt
  int32_t predicted_token = -1;               // argmax of the last position (last-token objectives)
  double elapsed_ms = 0.0;
  std::vector<std::vector<float>> hidden;    // [layer][n x n_embd] block input, if keep_gradients
  std::vector<std::vector<float>> gradient;  // [layer][n x n_embd] ∂T/∂hidden, if keep_gradients
};

// Saliency at the residual-stream input of each block in `layers`: layer 0 is the token
// embeddings entering block 0, layer l the output of block l-1 (Hugging Face's
// output_hidden_states[l]); valid layers are 0..n_layer-1. Positions are 0..n-1 (a fresh prompt).
// Throws UsageError for a random_model() (no host weights), an empty prompt, an id outside the
// vocabulary, no layers or a layer out of range, a prompt longer than the model's training
// context, or kLmLogLikelihood on one token.
//
// Cost: forward + the block run again on each checkpoint (with its trace) + a backward of about
// twice the forward for the blocks from min(layers) up, one forward below: measured ≈ 3x (2.2–3.5x
// over runs on a busy 2-core machine) the CPU time of a dense float32 prefill (SmolLM2-135M, 512
// tokens, backward to layer 0). Memory: the checkpoints, n·n_embd floats per block from min(layers)
// up, plus one block's activations and gradients: its trace n·(4·n_embd + 2·q_dim + 2·kv_dim +
// 3·n_ff), the CPU backend's work tensors, residual stream and one layer of K/V n·(2·n_embd +
// 3·q_dim + 4·kv_dim + 3·n_ff), the backward's n·(n_embd + 2·q_dim + 2·kv_dim + 3·n_ff), plus
// 2·n·q_dim for the per-head attention gradients; nothing quadratic in n beyond 2·64·n floats per
// thread. For SmolLM2-135M: ≈ 70 KB per token of checkpoints (all 30 layers) + ≈ 98 KB per token of
// buffers, ≈ 0.69 GB at 4K tokens.
SaliencyResult token_saliency(const Model& m, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                              const SaliencyOptions& options = {});

SaliencyResult token_saliency(const Model& m, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                              SaliencyObjective obj);

// T evaluated with the hidden state entering block `layer` replaced by `hidden` [n x n_embd]
// (blocks layer..n_layer-1, final norm, lm head, objective). For the last-token objectives the
// predicted token is `predicted_token` when >= 0, else the argmax at this point. Finite-difference
// checks of the gradient use it.
double saliency_objective_from_layer(const Model& m, const std::vector<int32_t>& ids, int layer,
                                     const std::vector<float>& hidden, SaliencyObjective obj,
                                     int32_t predicted_token = -1);

}  // namespace sdtp
