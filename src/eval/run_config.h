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

  // Prefill of a prompt into an empty cache (the KV policy compresses it); logits of the last
  // position [n_vocab].
  const std::vector<float>& prefill(const std::vector<int32_t>& ids);
  // Prefill of more prompt tokens after what the cache holds, without resetting it: the question of
  // a query-aware run after its compressed context (the session appends them uncompressed).
  const std::vector<float>& prefill_continuation(const std::vector<int32_t>& ids);
  // One token after the prompt; its logits [n_vocab].
  const std::vector<float>& decode(int32_t id);
  void reset();
  // Runs one token through prefill and one decode step, then empties the cache: the session's lazy
  // set-up (8-bit decode weights) then does not land in the first sample's timings.
  void warm_up(int32_t token);

  size_t kv_bytes() const { return session_.kv_bytes(); }
  size_t kv_peak_bytes() const { return session_.kv_peak_bytes(); }
  int n_past() const { return session_.n_past(); }
  const ForwardStats& last_stats() const { return session_.last_stats(); }
  int n_ctx() const { return session_.n_ctx(); }
  int n_threads() const { return session_.n_threads(); }
  const RunConfig& config() const { return config_; }

 private:
  RunConfig config_;
  Session session_;
};

// The configuration as JSON; query_aware is the harness's EvalOptions::query_aware.
nlohmann::ordered_json run_config_json(const RunConfig& config, bool query_aware = false);

}  // namespace sdtp::eval
