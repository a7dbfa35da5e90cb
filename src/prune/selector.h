// Token selectors for pruned prefill: each scores the rows alive at a pruning stage (higher =
// more important); select_rows turns scores into the rows to keep. Selectors: random, attn,
// sdtp (the learned predictor of the plan) and saliency (the dense model's gradient saliency as an
// oracle ranking). Which one a plan gets is the registry's choice (prune_methods(), methods.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "sdtp/prune.h"

namespace sdtp {

struct Model;

// What a selector scores at one pruning stage: the rows alive entering the pruning layer, on the
// session's backend.
struct SelectorInput {
  Backend* backend = nullptr;
  int stage = 0;
  int layer = 0;         // the pruning layer (about to run on the kept rows)
  DeviceTensor hidden;   // act [n x d]: residual stream entering `layer`
  DeviceTensor positions;  // i32 [n x 1]: original positions, ascending
  // f32 [n x 1]: the attention the last row paid to each of these rows at layer-1, averaged over
  // heads (only for selectors that need_last_attention()).
  DeviceTensor last_attn;
  int n_past = 0;  // tokens cached before this prefill
};

class TokenSelector {
 public:
  explicit TokenSelector(const PruneMethod& method) : method_(&method) {}
  virtual ~TokenSelector() = default;
  const PruneMethod& method() const { return *method_; }
  // Fills scores (f32 [n x 1], on the backend), higher = more important.
  virtual void score(const SelectorInput& in, const DeviceTensor& scores) = 0;
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

// The selector of a validated plan, computing on `backend` (which must outlive it): its method's
// factory (UsageError for "none" or an unknown name).
std::unique_ptr<TokenSelector> make_selector(const PrunePlan& plan, Backend& backend);

// The factories of the registry's table (PruneMethod::make_selector).
std::unique_ptr<TokenSelector> make_sdtp_selector(const PrunePlan& plan, const PruneMethod& method, Backend& backend);
std::unique_ptr<TokenSelector> make_random_selector(const PrunePlan& plan, const PruneMethod& method, Backend& backend);
std::unique_ptr<TokenSelector> make_attn_selector(const PrunePlan& plan, const PruneMethod& method, Backend& backend);
std::unique_ptr<TokenSelector> make_saliency_selector(const PrunePlan& plan, const PruneMethod& method, Backend& backend);

// How many of n rows a stage keeps: ceil(keep_ratio · n), at least 1, at most n; tolerant of float
// ratios such as 0.6f that sit a hair above their decimal value. The one rounding rule of every
// stage: the Session, select_rows and predictor training all count with it.
int64_t keep_count(float keep_ratio, int64_t n);

// Rows to keep, ascending: the ceil(keep_ratio · n) highest scores, counting the always-kept rows
// (the last row, and rows whose position is below keep_first) first. Ties keep the earlier row.
std::vector<int64_t> select_rows(const std::vector<float>& scores, const int32_t* positions, int64_t n,
                                 float keep_ratio, int keep_first);

}  // namespace sdtp
