// RunConfig: dense/reference logic, its JSON form (the "config" field of every result row), and
// ConfiguredSession, which runs prompts under the configuration.
#include "eval/run_config.h"

#include "sdtp/prune.h"

namespace sdtp {

// Pruning/KV options added to RunConfig must be checked here.
bool RunConfig::is_dense() const {
  return !session.prune.enabled() && !session.kv.enabled();
}

RunConfig RunConfig::dense_reference() const {
  RunConfig dense;
  dense.session = session;
  dense.session.prune = PrunePlan{};
  dense.session.kv = KVPolicyOptions{};
  dense.label = "dense";
  return dense;
}

std::string RunConfig::to_json() const {
  return eval::run_config_json(*this).dump();
}

namespace eval {

nlohmann::ordered_json run_config_json(const RunConfig& c, bool query_aware) {
  const PrunePlan& prune = c.session.prune;
  const KVPolicyOptions& kv = c.session.kv;
  nlohmann::ordered_json j;
  j["label"] = c.label;
  // The pruning method: "dense" when nothing prunes or evicts, "none" when only the KV policy does.
  j["method"] = prune.enabled() ? prune.method : c.is_dense() ? "dense" : "none";
  if (prune.enabled()) {
    j["prune_layers"] = prune.layers;
    j["keep_ratios"] = prune.keep_ratios;
    j["keep_first"] = prune.keep_first;
    j["keep_recent"] = prune.keep_recent;
    // Fraction of prompt tokens alive after the last stage: the x axis of accuracy-vs-keep-ratio.
    j["keep_ratio"] = prune.final_keep_fraction();
    // Methods that revive pruned tokens: the aux cache's budget in hidden states (0 = no limit).
    if (find_prune_method(prune.method).revives) j["aux_budget"] = prune.aux_budget;
  }
  if (kv.enabled()) {
    j["kv_policy"] = kv.policy;
    j["kv_budget"] = kv.budget;  // a fraction of the prompt's entries, or entries per head when >= 16
    j["kv_sinks"] = kv.sinks_or_default();
    // The window as a number of entries, or "budget/2" (h2o/vatp's default: half each head's budget).
    if (kv.window == KVPolicyOptions::kDefault && find_kv_policy(kv.policy).default_window == KVPolicy::kHalfBudget)
      j["kv_window"] = "budget/2";
    else
      j["kv_window"] = kv.window_or_default(0);
    j["kv_interval"] = kv.interval;
    j["kv_adaptive"] = kv.adaptive;
    j["kv_score_window"] = kv.score_window;
    if (find_kv_policy(kv.policy).score == KVPolicy::Score::hash) j["kv_seed"] = kv.seed;  // random
    j["kv"] = kv.describe();
  }
  j["query_aware"] = query_aware;
  j["n_ctx"] = c.session.n_ctx;
  j["device"] = c.session.device;
  j["n_threads"] = c.session.n_threads;
  j["decode_q8"] = c.session.decode_q8;
  j["kv_type"] = c.session.kv_type;
  return j;
}

ConfiguredSession::ConfiguredSession(const Model& model, const RunConfig& config)
    : config_(config), session_(model, config.session) {}

const std::vector<float>& ConfiguredSession::prefill(const std::vector<int32_t>& ids) {
  session_.reset();
  return session_.prefill(ids, false);
}

const std::vector<float>& ConfiguredSession::prefill_continuation(const std::vector<int32_t>& ids) {
  return session_.prefill(ids, false);
}

const std::vector<float>& ConfiguredSession::decode(int32_t id) {
  return session_.decode(id);
}

void ConfiguredSession::reset() {
  session_.reset();
}

void ConfiguredSession::warm_up(int32_t token) {
  session_.reset();
  if (session_.n_ctx() >= 2) {
    session_.prefill({token}, false);
    session_.decode(token);
  }
  session_.reset();
}

}  // namespace eval
}  // namespace sdtp
