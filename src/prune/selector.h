// Token selectors for pruned prefill: each scores the rows alive at a pruning stage (higher =
// more important); select_rows turns scores into the rows to keep. Selectors: random, attn,
// sdtp (the learned predictor of the plan) and saliency (the dense model's gradient saliency as an
// oracle ranking). Which one a plan gets is the registry's choice (prune_methods(), methods.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "sdtp/prune.h"

namespace sdtp {

struct Model;

struct SelectorInput {
  int stage = 0;
  int layer = 0;                 // the pruning layer (about to run on the kept rows)
  const float* hidden = nullptr;  // [n x d] residual stream entering `layer`
  int64_t n = 0, d = 0;
  const int32_t* positions = nullptr;  // [n] original positions, ascending
  // Attention the last row paid at layer-1, averaged over heads, over that layer's cache entries.
  const float* last_attn = nullptr;
  const int32_t* kv_pos = nullptr;  // positions of those cache entries (ascending)
  int64_t n_kv = 0;
};

class TokenSelector {
 public:
  explicit TokenSelector(const PruneMethod& method) : method_(&method) {}
  virtual ~TokenSelector() = default;
  const PruneMethod& method() const { return *method_; }
  // Fills scores[0..n).
  virtual void score(const SelectorInput& in, std::vector<float>& scores) = 0;
  // Whether score() needs SelectorInput::last_attn (the method's entry in the registry says).
  bool needs_last_attention() const { return method_->needs_last_attention; }
  // Called once before every pruned prefill with the new tokens, which sit at positions
  // n_past..n_past+ids.size()-1 (selectors that look at the whole prompt first, like saliency).
  virtual void begin_prefill(const Model& model, const std::vector<int32_t>& ids, int n_past) {
    (void)model, (void)ids, (void)n_past;
  }

 private:
  const PruneMethod* method_;  // a row of prune_methods(), which lives as long as the program
};

// The selector of a validated plan: its method's factory (UsageError for "none" or an unknown name).
std::unique_ptr<TokenSelector> make_selector(const PrunePlan& plan);

// The factories of the registry's table (PruneMethod::make_selector).
std::unique_ptr<TokenSelector> make_sdtp_selector(const PrunePlan& plan, const PruneMethod& method);
std::unique_ptr<TokenSelector> make_random_selector(const PrunePlan& plan, const PruneMethod& method);
std::unique_ptr<TokenSelector> make_attn_selector(const PrunePlan& plan, const PruneMethod& method);
std::unique_ptr<TokenSelector> make_saliency_selector(const PrunePlan& plan, const PruneMethod& method);

// Rows to keep, ascending: the ceil(keep_ratio · n) highest scores, counting the always-kept rows
// (the last row, and rows whose position is below keep_first) first. Ties keep the earlier row.
std::vector<int64_t> select_rows(const std::vector<float>& scores, const int32_t* positions, int64_t n,
                                 float keep_ratio, int keep_first);

}  // namespace sdtp
