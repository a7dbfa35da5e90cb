// Prefill token pruning as a plan handed to the Session: at each pruning layer a selector scores
// the tokens still alive, the top keep_ratio of them (plus the always-kept ones) are gathered with
// their original positions, and every later layer runs on those rows only. The KV cache of a
// layer holds exactly the tokens alive at that layer, so decoding continues correctly afterwards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sdtp {

struct ModelConfig;
struct Predictor;

struct PrunePlan {
  // "none" (dense), "sdtp" (the learned predictor below), "random" (same ratios, random tokens),
  // "attn" (attention the last token pays at the layer before the pruning layer, averaged over
  // heads), "saliency" (the gradient saliency of the dense model at the pruning layers as an
  // oracle ranking: one backward pass per prefill, for analysis).
  std::string method = "none";
  std::vector<int> layers;         // pruning layers, strictly increasing, in [1, n_layer)
  std::vector<float> keep_ratios;  // per stage, fraction of the tokens alive at that stage, in (0, 1]
  int keep_first = 0;              // the first tokens of the prompt (attention sinks) are always kept
  uint64_t seed = 0;               // for "random"
  // For "sdtp": the prediction modules, one per pruning layer (see sdtp/predictor.h).
  std::shared_ptr<const Predictor> predictor;

  bool enabled() const { return method != "none" && !layers.empty(); }
  // Throws UsageError naming the bad field (ratio outside (0,1], layers out of range or not
  // increasing, sizes that differ, unknown method).
  void validate(const ModelConfig& c) const;
  // The fraction of prompt tokens alive after the last stage: the product of the keep ratios.
  float final_keep_fraction() const;
};


}  // namespace sdtp
