// How a RunConfig is run: the one place that turns the configuration into a session and feeds it
// prompts. Pruning plans and KV policies of later issues are applied here (and serialised in
// run_config.cpp), so the harness and the tasks stay unchanged when a method is added.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "sdtp/eval.h"
#include "sdtp/session.h"

namespace sdtp::eval {

class ConfiguredSession {
 public:
  ConfiguredSession(const Model& model, const RunConfig& config);

  // Prefill of a prompt into an empty cache; logits of the last position [n_vocab].
  const std::vector<float>& prefill(const std::vector<int32_t>& ids);
  // One token after the prompt; its logits [n_vocab].
  const std::vector<float>& decode(int32_t id);
  void reset();
  // Runs one token through prefill and one decode step, then empties the cache: the session's lazy
  // set-up (8-bit decode weights) then does not land in the first sample's timings.
  void warm_up(int32_t token);

  size_t kv_bytes() const { return session_.kv_bytes(); }
  const ForwardStats& last_stats() const { return session_.last_stats(); }
  int n_ctx() const { return session_.n_ctx(); }
  int n_threads() const { return session_.n_threads(); }
  const RunConfig& config() const { return config_; }

 private:
  RunConfig config_;
  Session session_;
};

nlohmann::ordered_json run_config_json(const RunConfig& config);

}  // namespace sdtp::eval
