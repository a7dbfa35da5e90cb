// Prefill token pruning as a plan handed to the Session: at each pruning layer a selector scores
// the tokens still alive, the top keep_ratio of them (plus the always-kept ones) are gathered with
// their original positions, and every later layer runs on those rows only. The KV cache of a
// layer holds exactly the tokens alive at that layer, so decoding continues correctly afterwards.
// The methods a plan can name are one registry, prune_methods().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sdtp {

struct ModelConfig;
struct Predictor;
class TokenSelector;  // src/prune/selector.h
class Backend;        // src/backend/backend.h

// The dense model's gradient saliency of a prompt `ids` (positions 0..n-1): for each of `layers`, in
// that order, one value per token. The oracle of method "saliency": prune/ only calls it, since the
// backward pass lives in train/; make_saliency_oracle(model) (sdtp/train.h) makes one.
using SaliencyOracle =
    std::function<std::vector<std::vector<float>>(const std::vector<int32_t>& ids, const std::vector<int>& layers)>;

struct PrunePlan {
  // A name of prune_methods() below: "none" (dense), "sdtp" (the learned predictor below),
  // "random" (same ratios, random tokens), "attn" (attention the last token pays at the layer
  // before the pruning layer, averaged over heads), "lazyllm" (attn's scores in prefill, chosen
  // again at every decode step, pruned tokens revived from the aux cache: docs/lazyllm.md),
  // "saliency" (the gradient saliency of the dense model at the pruning layers as an oracle
  // ranking: one backward pass per prefill, for analysis).
  std::string method = "none";
  std::vector<int> layers;         // pruning layers, strictly increasing, in [1, n_layer)
  std::vector<float> keep_ratios;  // per stage, fraction of the tokens alive at that stage, in (0, 1]
  int keep_first = 0;              // the first tokens of the prompt (attention sinks) are always kept
  // keep_first for "not given": complete_prune_plan puts the default there (the predictor's, else 4).
  static constexpr int kKeepFirstUnset = -1;
  // The most recent share of the prompt (the last ceil(keep_recent · n) of a prefill's n tokens)
  // is always kept, as the SDTP paper keeps the last 10%; in [0, 1). Prefill only.
  float keep_recent = 0.0f;
  // keep_recent for "not given": complete_prune_plan puts the predictor's there, else the method's
  // default plan's (0.1 for the paper's schedule, 0 for lazyllm).
  static constexpr float kKeepRecentUnset = -1.0f;
  uint64_t seed = 0;               // for "random"
  // For methods that revive (lazyllm): the most hidden states the aux cache holds, all stages
  // together; 0 = no limit. Over it, the oldest entries (first stored) are dropped and their
  // tokens are never revived (their computed layers stay in the KV cache).
  int64_t aux_budget = 0;
  // For "sdtp": the prediction modules, one per pruning layer (see sdtp/predictor.h).
  std::shared_ptr<const Predictor> predictor;
  // For "saliency": filled by whoever builds the plan (the CLI: make_saliency_oracle(model)).
  SaliencyOracle saliency_oracle;

  // A method that prunes (not "none") and at least one pruning layer.
  bool enabled() const;
  // Throws UsageError naming the bad field (ratio outside (0,1], layers out of range or not
  // increasing, sizes that differ, unknown method).
  void validate(const ModelConfig& c) const;
  // The fraction of prompt tokens alive after the last stage: the product of the keep ratios.
  float final_keep_fraction() const;
  // The rows always kept at the end of an n-token prefill: the recent tail, the last row at least.
  int64_t kept_tail(int64_t n) const;
};

// The SDTP paper's schedule, scaled to the model's depth: the first stage at layer ceil(L/8), one
// more every ceil(3L/32) layers while inside the model (32 layers: 4, 7, ..., 31, ten stages; 30
// layers: 4, 7, ..., 28, nine), each keeping 90% of the tokens alive there (0.9^10: 65% of the
// prompt pruned by the last stage), the first 4 and the most recent 10% of the prompt always kept.
PrunePlan default_sdtp_plan(const ModelConfig& config);

// The schedule sdtp used before the paper's (`--prune-schedule quarters`): three stages at 1/4,
// 1/2 and 3/4 of the layers keeping 70% each (0.7^3: 65.7% pruned), the first 4 tokens kept, no
// recent tail.
PrunePlan quarters_prune_plan(const ModelConfig& config);

// The named schedules a front end offers (`--prune-schedule NAME`): "paper" (default_sdtp_plan),
// "quarters" (quarters_prune_plan) and "lazyllm" (default_lazyllm_plan). UsageError naming them
// for another name. The method of the result is left to the caller.
PrunePlan named_prune_schedule(const std::string& name, const ModelConfig& config);
std::string prune_schedule_names();  // "paper, quarters or lazyllm"

// LazyLLM's default schedule (docs/lazyllm.md has the sweep it was chosen by): stages at 1/4, 1/2
// and 3/4 of the layers keeping 80%, 70% and 60% of the tokens alive there (more kept early, fewer
// late), the first 4 tokens always kept, no recent tail.
PrunePlan default_lazyllm_plan(const ModelConfig& config);

// The defaults of what a plan leaves open, one set for every front end (CLI, eval, server, Python):
//  1. from plan.predictor, if any (complete_prune_plan_from_predictor);
//  2. no layers: the method's default plan's layers and ratios (default_lazyllm_plan for lazyllm,
//     else default_sdtp_plan); no ratios: 0.9 at every layer; one ratio
//     for several layers: that ratio at each; keep_first kKeepFirstUnset: 4; keep_recent
//     kKeepRecentUnset: the default plan's (0.1; 0 for lazyllm);
// then validates the plan against the model (UsageError). A plan with method "none" is left as is.
void complete_prune_plan(const ModelConfig& config, PrunePlan& plan);
// Step 1 alone, which needs no model (a front end runs it before reading the model, to fail fast):
// no layers: the predictor's; no ratios: the ratio it was trained with at each layer (0.9 where it
// was not trained); keep_first / keep_recent unset: the predictor's. Then UsageError when it has no
// module for a layer of the plan. Does nothing without a predictor.
void complete_prune_plan_from_predictor(PrunePlan& plan);

// One pruning method of the registry: its name, what a plan with it needs, and how its selector
// is made. Method names are looked up here, never compared elsewhere: plan validation, the CLI's
// --prune help and checks, make_selector and the reports all read this table.
struct PruneMethod {
  std::string name;
  std::string help;                    // one line for --help texts, e.g. "last token's attention"
  bool needs_predictor = false;        // PrunePlan::predictor (sdtp)
  bool needs_last_attention = false;   // the last row's attention at the layer before each stage (attn)
  bool needs_saliency_oracle = false;  // PrunePlan::saliency_oracle (saliency)
  // Chooses again at every decode step from the new token's attention at the layer before each
  // stage and revives pruned tokens from the aux cache (lazyllm; sdtp/session.h's ForwardStats
  // counts what it computed).
  bool revives = false;
  // The selector of a validated plan with this method; null for "none". Engine-internal: sessions
  // call make_selector(plan) (src/prune/selector.h).
  std::unique_ptr<TokenSelector> (*make_selector)(const PrunePlan& plan, const PruneMethod& method, Backend& backend) = nullptr;

  bool prunes() const { return make_selector != nullptr; }  // false for "none" (dense)
};

// Every method, "none" first, in the order help texts list them.
const std::vector<PruneMethod>& prune_methods();
// Throws UsageError "unknown pruning method 'x' (expected none, sdtp, random, attn, lazyllm or saliency)".
const PruneMethod& find_prune_method(const std::string& name);
// The names for help texts and messages: "none, sdtp, random, attn, lazyllm or saliency".
std::string prune_method_names();

}  // namespace sdtp
