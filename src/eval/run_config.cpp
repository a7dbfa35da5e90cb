// RunConfig: dense/reference logic, its JSON form (the "config" field of every result row), and
// ConfiguredSession, which runs prompts under the configuration.
#include "eval/run_config.h"

namespace sdtp {

// Nothing prunes or evicts yet; pruning/KV options added to RunConfig must be checked here.
bool RunConfig::is_dense() const {
  return !session.prune.enabled();
}

RunConfig RunConfig::dense_reference() const {
  RunConfig dense;
  dense.session = session;
  dense.session.prune = PrunePlan{};
  dense.label = "dense";
  return dense;
}

std::string RunConfig::to_json() const {
  return eval::run_config_json(*this).dump();
}

namespace eval {

nlohmann::ordered_json run_config_json(const RunConfig& c) {
  nlohmann::ordered_json j;
  j["label"] = c.label;
  j["method"] = c.is_dense() ? "dense" : c.session.prune.method;
  if (!c.is_dense()) {
    j["prune_layers"] = c.session.prune.layers;
    j["keep_ratios"] = c.session.prune.keep_ratios;
    j["keep_first"] = c.session.prune.keep_first;
    // Fraction of prompt tokens alive after the last stage: the x axis of accuracy-vs-keep-ratio.
    j["keep_ratio"] = c.session.prune.final_keep_fraction();
  }
  j["n_ctx"] = c.session.n_ctx;
  j["device"] = c.session.device;
  j["n_threads"] = c.session.n_threads;
  j["decode_q8"] = c.session.decode_q8;
  return j;
}

ConfiguredSession::ConfiguredSession(const Model& model, const RunConfig& config)
    : config_(config), session_(model, config.session) {}

const std::vector<float>& ConfiguredSession::prefill(const std::vector<int32_t>& ids) {
  session_.reset();
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
