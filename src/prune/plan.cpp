// PrunePlan: the defaults of what a plan leaves open (default_sdtp_plan, complete_prune_plan),
// validation against the model, and the kept fraction (see include/sdtp/prune.h).
#include <algorithm>
#include <cmath>
#include <sstream>

#include "prune/methods.h"
#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/prune.h"

namespace sdtp {

namespace {

// The paper's schedule: keep 90% of the alive tokens at each stage, the first 4 tokens of the
// prompt (attention sinks) and its most recent 10% always.
constexpr float kDefaultKeepRatio = 0.9f;
constexpr int kDefaultKeepFirst = 4;
constexpr float kDefaultKeepRecent = 0.1f;
// The quarters schedule's ratio (sdtp's default before the paper's).
constexpr float kQuartersKeepRatio = 0.7f;

int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace

PrunePlan default_sdtp_plan(const ModelConfig& config) {
  PrunePlan plan;
  plan.method = "sdtp";
  plan.keep_first = kDefaultKeepFirst;
  plan.keep_recent = kDefaultKeepRecent;
  if (config.n_layer < 2) return plan;  // nothing after layer 0 to prune at
  // Paper (32 layers): first pruning layer 4, one stage every 3 layers.
  const int first = std::max(1, ceil_div(config.n_layer, 8)), step = std::max(1, ceil_div(3 * config.n_layer, 32));
  for (int layer = first; layer < config.n_layer; layer += step) {
    plan.layers.push_back(layer);
    plan.keep_ratios.push_back(kDefaultKeepRatio);
  }
  return plan;
}

PrunePlan quarters_prune_plan(const ModelConfig& config) {
  PrunePlan plan;
  plan.method = "sdtp";
  plan.keep_first = kDefaultKeepFirst;
  if (config.n_layer < 2) return plan;
  for (int q = 1; q <= 3; ++q) {
    // round(n_layer · q/4), kept inside [1, n_layer); shallow models get fewer, distinct stages.
    const int layer = std::clamp(static_cast<int>(std::lround(config.n_layer * q / 4.0)), 1, config.n_layer - 1);
    if (layer < 1 || (!plan.layers.empty() && layer <= plan.layers.back())) continue;
    plan.layers.push_back(layer);
    plan.keep_ratios.push_back(kQuartersKeepRatio);
  }
  return plan;
}

PrunePlan named_prune_schedule(const std::string& name, const ModelConfig& config) {
  if (name == "paper") return default_sdtp_plan(config);
  if (name == "quarters") return quarters_prune_plan(config);
  if (name == "lazyllm") return default_lazyllm_plan(config);
  throw UsageError("unknown pruning schedule '" + name + "' (expected " + prune_schedule_names() + ")");
}

std::string prune_schedule_names() { return "paper, quarters or lazyllm"; }

PrunePlan default_lazyllm_plan(const ModelConfig& config) {
  PrunePlan plan = quarters_prune_plan(config);
  plan.method = "lazyllm";
  static constexpr float kRatios[] = {0.8f, 0.7f, 0.6f};
  for (size_t s = 0; s < plan.keep_ratios.size(); ++s) plan.keep_ratios[s] = kRatios[std::min<size_t>(s, 2)];
  return plan;
}

void complete_prune_plan_from_predictor(PrunePlan& plan) {
  if (!plan.predictor) return;
  const PrunePlan& trained = plan.predictor->plan;
  if (plan.layers.empty()) plan.layers = trained.layers;
  if (plan.keep_ratios.empty()) {
    // The trained ratio of each chosen layer (check_plan below rejects layers it has no module for).
    for (int layer : plan.layers) {
      float r = kDefaultKeepRatio;
      for (size_t s = 0; s < trained.layers.size(); ++s)
        if (trained.layers[s] == layer) r = trained.keep_ratios[s];
      plan.keep_ratios.push_back(r);
    }
  }
  if (plan.keep_first == PrunePlan::kKeepFirstUnset) plan.keep_first = trained.keep_first;
  if (plan.keep_recent == PrunePlan::kKeepRecentUnset) plan.keep_recent = trained.keep_recent;
  plan.predictor->check_plan(plan);
}

void complete_prune_plan(const ModelConfig& c, PrunePlan& plan) {
  if (!find_prune_method(plan.method).prunes()) return;
  complete_prune_plan_from_predictor(plan);
  const PrunePlan d = find_prune_method(plan.method).revives ? default_lazyllm_plan(c) : default_sdtp_plan(c);
  if (plan.layers.empty()) {
    plan.layers = d.layers;
    if (plan.keep_ratios.empty()) plan.keep_ratios = d.keep_ratios;
  }
  if (plan.keep_ratios.empty()) plan.keep_ratios.assign(plan.layers.size(), kDefaultKeepRatio);
  // One ratio for every stage.
  if (plan.keep_ratios.size() == 1 && plan.layers.size() > 1) plan.keep_ratios.resize(plan.layers.size(), plan.keep_ratios[0]);
  if (plan.keep_first == PrunePlan::kKeepFirstUnset) plan.keep_first = kDefaultKeepFirst;
  if (plan.keep_recent == PrunePlan::kKeepRecentUnset) plan.keep_recent = d.keep_recent;
  if (plan.layers.empty())
    throw UsageError("pruning method '" + plan.method + "': a " + std::to_string(c.n_layer) +
                     "-layer model has no layer to prune at");
  plan.validate(c);
}

bool PrunePlan::enabled() const {
  const PruneMethod* m = lookup_prune_method(method);
  return !layers.empty() && (!m || m->prunes());  // an unknown method is validate's to refuse
}

void PrunePlan::validate(const ModelConfig& c) const {
  if (!find_prune_method(method).prunes()) return;
  if (layers.empty()) throw UsageError("pruning method '" + method + "' needs at least one pruning layer");
  if (layers.size() != keep_ratios.size()) {
    throw UsageError("pruning plan has " + std::to_string(layers.size()) + " layers but " +
                     std::to_string(keep_ratios.size()) + " keep ratios");
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 1 || layers[i] >= c.n_layer) {
      throw UsageError("pruning layer " + std::to_string(layers[i]) + " is outside [1, " + std::to_string(c.n_layer) +
                       ") for this " + std::to_string(c.n_layer) + "-layer model");
    }
    if (i > 0 && layers[i] <= layers[i - 1]) {
      throw UsageError("pruning layers must be strictly increasing, got " + std::to_string(layers[i - 1]) +
                       " then " + std::to_string(layers[i]));
    }
    const float r = keep_ratios[i];
    if (!(r > 0.0f && r <= 1.0f)) {
      std::ostringstream os;
      os << "keep ratio " << r << " of stage " << i << " is outside (0, 1]";
      throw UsageError(os.str());
    }
  }
  if (keep_first < 0) throw UsageError("keep-first must be >= 0, got " + std::to_string(keep_first));
  if (!(keep_recent >= 0.0f && keep_recent < 1.0f)) {
    std::ostringstream os;
    os << "keep-recent must be in [0, 1), got " << keep_recent;
    throw UsageError(os.str());
  }
  if (aux_budget < 0) throw UsageError("aux budget must be >= 0 hidden states, got " + std::to_string(aux_budget));
}

int64_t PrunePlan::kept_tail(int64_t n) const { return keep_recent > 0.0f ? keep_count(keep_recent, n) : 1; }

float PrunePlan::final_keep_fraction() const {
  float f = 1.0f;
  if (enabled())
    for (float r : keep_ratios) f *= r;
  return f;
}

}  // namespace sdtp
