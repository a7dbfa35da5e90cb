// KV-cache compression: after a prompt's prefill, and every `interval` decode steps, a policy
// scores the cache entries of every layer and KV head and each head keeps a budget of them; the
// rest are removed from the cache (its storage shrinks, so the bytes are really returned), and
// attention runs on each head's own entries. It composes with token pruning (sdtp/prune.h):
// pruning decides which tokens reach a layer, the policy which of their entries stay.
// The policies are one registry, kv_policies().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sdtp {

struct KVPolicyOptions {
  // A name of kv_policies(): "none" (keep everything), "vatp", "h2o", "tova", "snapkv",
  // "pyramidkv", "knorm", "streaming", "random".
  std::string policy = "none";
  // In (0, 1): a fraction of the prompt's entries per head (rounded up), the cache size decoding
  // then holds; 1: everything; an integer >= 16: that many entries per head. Text a later prefill appends (a question after a compressed context, a
  // new chat turn) is added to the budget in full; decoded tokens are not.
  double budget = 1.0;
  int sinks = kDefault;   // the first `sinks` positions are always kept (attention sinks); default 4
  int window = kDefault;  // the most recent `window` entries are always kept (and SnapKV's
                          // observation window); default: the policy's (kv_policies()): half the
                          // budget for h2o and vatp (H2O's heavy/recent split), 64 for snapkv and
                          // pyramidkv, 0 for the rest
  int interval = 1;       // decode steps between evictions; 0: evict after prefill only
  bool adaptive = false;  // AdaKV: one budget per layer spread over its heads by score
  // vatp/h2o: attention accumulated over the last `score_window` queries only (Scissorhands'
  // windowed importance; decode restarts the window every score_window steps); 0: all queries.
  int score_window = 0;
  uint64_t seed = 0;  // "random"
  static constexpr int kDefault = -1;

  bool enabled() const;  // a policy that evicts (not "none")
  // Throws UsageError naming the bad field (unknown policy, budget outside (0, 1] and not an
  // integer >= 16, negative sinks/window/interval, adaptive with a policy that has no scores).
  void validate() const;
  // Entries per head a prompt of n_prompt tokens keeps; INT64_MAX for a budget of exactly 1 (the
  // policy runs, scores are kept, nothing is evicted: bit-identical to "none").
  int64_t budget_entries(int64_t n_prompt) const;
  int sinks_or_default() const;
  // The window for a head budget of `budget` entries (h2o/vatp's default is budget / 2).
  int64_t window_or_default(int64_t budget) const;
  // "vatp 25% (sinks 4, window 64)" for tables and logs.
  std::string describe() const;
};

// One policy of the registry. How each scores an entry of a KV head (higher is kept):
//   vatp      accumulated attention × ‖v‖₁ (Guo et al. 2024)   h2o    accumulated attention
//   tova      the newest query's attention                     snapkv pooled attention of the
//   pyramidkv snapkv's score, budgets shrinking with depth              observation window
//   knorm     -‖k‖₂                                            streaming  position (recent kept)
//   random    a seeded hash
struct KVPolicy {
  std::string name;
  std::string help;            // one line for --help texts
  int default_window = 0;      // --kv-window when not given; kHalfBudget: half the head's budget
  static constexpr int kHalfBudget = -2;
  bool scored = false;         // ranks by a score (adaptive budgets apply)
  bool evicts_in_decode = false;  // also evicts every --kv-interval decode steps (else prefill only)
  // What it scores with and how the cache's attention mass is kept for it: src/kv/ reads these
  // fields, nothing compares policy names.
  enum class Score { none, mass_x_value_l1, mass, neg_key_l2, position, hash, pooled_mass };
  enum class Mass {
    none,        // no attention scores
    accumulate,  // summed over every query (or the last score_window queries)
    newest,      // the newest query's attention only: zeroed before each step
    window,      // the prompt's last `window` queries, at prefill only
  };
  Score score = Score::none;
  Mass mass = Mass::none;
  bool pyramid = false;  // budgets shrinking with depth (PyramidKV)
};

// Every policy, "none" first, in the order help texts list them.
const std::vector<KVPolicy>& kv_policies();
// Throws UsageError "unknown KV policy 'x' (expected none, vatp, ... or random)".
const KVPolicy& find_kv_policy(const std::string& name);
std::string kv_policy_names();

}  // namespace sdtp
