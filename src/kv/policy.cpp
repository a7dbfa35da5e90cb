// KV policies: the registry (sdtp/kv.h), their scores and the per-head selection (kv/policy.h).
#include "kv/policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <climits>
#include <numeric>

#include "sdtp/error.h"

namespace sdtp {

const std::vector<KVPolicy>& kv_policies() {
  using S = KVPolicy::Score;
  using M = KVPolicy::Mass;
  constexpr int kHalf = KVPolicy::kHalfBudget;
  // name, help, default window, scored, evicts in decode, score, mass kept, pyramid budgets
  static const std::vector<KVPolicy> all = {
      {"none", "keep every entry", 0, false, false, S::none, M::none, false},
      {"vatp", "accumulated attention x value L1 norm (VATP)", kHalf, true, true, S::mass_x_value_l1, M::accumulate, false},
      {"h2o", "accumulated attention (H2O heavy hitters)", kHalf, true, true, S::mass, M::accumulate, false},
      {"tova", "the newest query's attention (TOVA)", 0, true, true, S::mass, M::newest, false},
      {"snapkv", "pooled attention of the last prompt queries (SnapKV), at prefill", 64, true, false, S::pooled_mass,
       M::window, false},
      {"pyramidkv", "snapkv's score, budgets shrinking with depth (PyramidKV), at prefill", 64, true, false,
       S::pooled_mass, M::window, true},
      {"knorm", "smallest key L2 norms", 0, true, true, S::neg_key_l2, M::none, false},
      {"streaming", "attention sinks + the most recent entries (StreamingLLM)", 0, false, true, S::position, M::none,
       false},
      {"random", "random entries", 0, false, true, S::hash, M::none, false},
  };
  return all;
}

const KVPolicy& find_kv_policy(const std::string& name) {
  for (const KVPolicy& p : kv_policies())
    if (p.name == name) return p;
  throw UsageError("unknown KV policy '" + name + "' (expected " + kv_policy_names() + ")");
}

std::string kv_policy_names() {
  const auto& all = kv_policies();
  std::string s;
  for (size_t i = 0; i < all.size(); ++i) s += (i == 0 ? "" : i + 1 == all.size() ? " or " : ", ") + all[i].name;
  return s;
}

bool KVPolicyOptions::enabled() const { return policy != "none"; }

void KVPolicyOptions::validate() const {
  const KVPolicy& p = find_kv_policy(policy);
  const bool fraction = budget > 0 && budget <= 1;
  const bool entries = budget >= 16 && std::floor(budget) == budget;
  if (!fraction && !entries) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", budget);
    throw UsageError(std::string("--kv-budget ") + buf +
                     ": expected a fraction in (0, 1] or a whole number of entries >= 16");
  }
  if (sinks < kDefault) throw UsageError("--kv-sinks must be >= 0, got " + std::to_string(sinks));
  if (window < kDefault) throw UsageError("--kv-window must be >= 0, got " + std::to_string(window));
  if (interval < 0) throw UsageError("--kv-interval must be >= 0, got " + std::to_string(interval));
  if (score_window < 0) throw UsageError("--kv-score-window must be >= 0, got " + std::to_string(score_window));
  if (adaptive && !p.scored) throw UsageError("--kv-adaptive needs a policy with scores, not '" + policy + "'");
  if (score_window > 0 && kv::mass_mode(p) != kv::MassMode::accumulate)
    throw UsageError("--kv-score-window applies to vatp and h2o, not '" + policy + "'");
}

int64_t KVPolicyOptions::budget_entries(int64_t n_prompt) const {
  if (budget == 1) return INT64_MAX;  // everything, decoded tokens too: the policy runs, evicts nothing
  if (budget < 1) return std::min<int64_t>(n_prompt, static_cast<int64_t>(std::ceil(budget * n_prompt - 1e-9)));
  return static_cast<int64_t>(budget);
}

int KVPolicyOptions::sinks_or_default() const { return sinks == kDefault ? 4 : sinks; }

int64_t KVPolicyOptions::window_or_default(int64_t budget) const {
  if (window != kDefault) return window;
  const int w = find_kv_policy(policy).default_window;
  return w == KVPolicy::kHalfBudget ? (budget == INT64_MAX ? 0 : budget / 2) : w;
}

std::string KVPolicyOptions::describe() const {
  if (!enabled()) return "none";
  std::string w = window != kDefault ? std::to_string(window)
                  : find_kv_policy(policy).default_window == KVPolicy::kHalfBudget
                      ? "half the budget"
                      : std::to_string(find_kv_policy(policy).default_window);
  char buf[200];
  if (budget <= 1)
    std::snprintf(buf, sizeof buf, "%s %g%% (sinks %d, window %s%s)", policy.c_str(), budget * 100,
                  sinks_or_default(), w.c_str(), adaptive ? ", adaptive" : "");
  else
    std::snprintf(buf, sizeof buf, "%s %.0f entries (sinks %d, window %s%s)", policy.c_str(), budget,
                  sinks_or_default(), w.c_str(), adaptive ? ", adaptive" : "");
  return buf;
}

namespace kv {

MassMode mass_mode(const KVPolicy& p) { return p.mass; }
bool needs_value_norms(const KVPolicy& p) { return p.score == KVPolicy::Score::mass_x_value_l1; }
bool needs_key_norms(const KVPolicy& p) { return p.score == KVPolicy::Score::neg_key_l2; }

namespace {

// SplitMix64: a fixed hash, so "random" keeps the same entries for the same seed on any device.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<double> score_entries(const KVPolicy& p, const KVPolicyOptions& o, const LayerEntries& e, int layer) {
  const int H = e.n_head_kv;
  std::vector<double> s(static_cast<size_t>(e.rows * H), 0.0);
  for (int g = 0; g < H; ++g) {
    const int64_t n = e.n[g];
    for (int64_t j = 0; j < n; ++j) {
      const size_t at = static_cast<size_t>(j * H + g);
      switch (p.score) {
        case KVPolicy::Score::mass_x_value_l1: s[at] = static_cast<double>(e.mass[at]) * e.v_l1[at]; break;
        case KVPolicy::Score::mass: s[at] = e.mass[at]; break;
        case KVPolicy::Score::neg_key_l2: s[at] = -static_cast<double>(e.k_l2[at]); break;
        case KVPolicy::Score::position: s[at] = e.pos[at]; break;
        case KVPolicy::Score::hash:
          s[at] = static_cast<double>(
                      mix(o.seed ^ mix((uint64_t(layer) << 40) ^ (uint64_t(g) << 32) ^ uint32_t(e.pos[at]))) >> 11);
          break;
        case KVPolicy::Score::pooled_mass: {
          // SnapKV (Li et al. 2024, sec. 4.2) pools the observation window's attention along the
          // keys so that a kept entry keeps its neighbours; kvpress: average pooling, kernel 5,
          // zero padding (counted).
          double acc = 0;
          for (int64_t t = std::max<int64_t>(0, j - 2); t <= std::min<int64_t>(n - 1, j + 2); ++t) acc += e.mass[t * H + g];
          s[at] = acc / 5.0;
          break;
        }
        case KVPolicy::Score::none: break;
      }
    }
  }
  return s;
}

namespace {
// Whether entry j of head g is one the selection always keeps (while the budget lasts): a sink or
// one of the newest `window`.
bool forced_entry(const LayerEntries& e, int g, int64_t j, int sinks, int window) {
  return e.pos[j * e.n_head_kv + g] < sinks || j >= e.n[g] - window;
}
}  // namespace

std::vector<std::vector<int32_t>> select_entries(const LayerEntries& e, const std::vector<double>& scores,
                                                 int64_t budget, int sinks, int window, bool adaptive) {
  const int H = e.n_head_kv;
  std::vector<std::vector<int32_t>> keep(static_cast<size_t>(H));
  // Per head: forced entries (sinks, then the window from the newest back) while the budget
  // lasts, and the others ranked by score.
  struct Candidate {
    double score;
    int32_t pos;
    int g;
    int32_t j;
  };
  std::vector<std::vector<Candidate>> ranked(static_cast<size_t>(H));
  std::vector<std::vector<char>> taken(static_cast<size_t>(H));
  const auto better = [](const Candidate& a, const Candidate& b) {
    return a.score != b.score ? a.score > b.score : a.pos < b.pos;
  };
  for (int g = 0; g < H; ++g) {
    const int64_t n = e.n[g];
    taken[g].assign(static_cast<size_t>(n), 0);
    const int64_t want = std::min(budget, n);
    int64_t got = 0;
    for (int64_t j = 0; j < n && got < want && e.pos[j * H + g] < sinks; ++j) taken[g][j] = 1, ++got;
    for (int64_t j = n - 1, w = 0; j >= 0 && w < window && got < want; --j, ++w)
      if (!taken[g][j]) taken[g][j] = 1, ++got;
    int64_t forced = 0;
    if (!adaptive && n - want <= 4)
      for (int64_t j = 0; j < n; ++j) forced += forced_entry(e, g, j, sinks, window);
    if (!adaptive && n - want <= 4 && forced <= want) {
      // Decode's case: a few of many to drop. Drop the worst unforced entries one by one (the
      // worst: lowest score, then the later position), keep the rest: the same set, in O(n).
      std::fill(taken[g].begin(), taken[g].end(), 1);
      for (int64_t drop = n - want; drop > 0; --drop) {
        int64_t worst = -1;
        for (int64_t j = 0; j < n; ++j) {
          if (!taken[g][j] || forced_entry(e, g, j, sinks, window)) continue;
          const double sj = scores[j * H + g];
          if (worst < 0 || sj < scores[worst * H + g] || (sj == scores[worst * H + g] && j > worst)) worst = j;
        }
        taken[g][worst] = 0;
      }
      continue;
    }
    for (int64_t j = 0; j < n; ++j)
      if (!taken[g][j]) ranked[g].push_back({scores[j * H + g], e.pos[j * H + g], g, static_cast<int32_t>(j)});
    // The best k by (score, earlier position): a selection, not a sort (decode evicts a few
    // entries of thousands per head; positions are unique, so the set is well defined).
    auto& r = ranked[g];
    const auto take_best = [&](int64_t k) {
      k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(r.size()));
      if (k > 0 && k < static_cast<int64_t>(r.size())) std::nth_element(r.begin(), r.begin() + k, r.end(), better);
      for (int64_t i = 0; i < k; ++i) taken[g][r[i].j] = 1;
      r.erase(r.begin(), r.begin() + k);
      return k;
    };
    if (!adaptive) {
      take_best(want - got);
    } else {
      // AdaKV (Feng et al. 2024): a safeguard share per head, the rest of the layer's budget to
      // the best scores over all heads.
      got += take_best(std::min<int64_t>(want, budget / 5) - got);
    }
  }
  if (adaptive) {
    int64_t left = budget * H;
    for (int g = 0; g < H; ++g) left -= std::count(taken[g].begin(), taken[g].end(), 1);
    std::vector<Candidate> pool;
    for (int g = 0; g < H; ++g) pool.insert(pool.end(), ranked[g].begin(), ranked[g].end());
    const int64_t take = std::clamp<int64_t>(left, 0, static_cast<int64_t>(pool.size()));
    if (take > 0 && take < static_cast<int64_t>(pool.size()))
      std::nth_element(pool.begin(), pool.begin() + take, pool.end(), [&](const Candidate& a, const Candidate& b) {
        return a.score != b.score ? a.score > b.score : (a.pos != b.pos ? a.pos < b.pos : a.g < b.g);
      });
    for (int64_t i = 0; i < take; ++i) taken[pool[i].g][pool[i].j] = 1;
  }
  for (int g = 0; g < H; ++g)
    for (int64_t j = 0; j < e.n[g]; ++j)
      if (taken[g][j]) keep[g].push_back(static_cast<int32_t>(j));
  return keep;
}

int64_t layer_budget(const KVPolicy& p, int64_t budget, int layer, int n_layer, int64_t n) {
  if (!p.pyramid || n_layer < 2 || budget == INT64_MAX) return budget;
  const double b = static_cast<double>(budget), beta = 20;
  double lo = b / beta, hi = 2 * b - lo;
  if (hi > static_cast<double>(n)) {
    hi = static_cast<double>(n);
    lo = 2 * b - hi;
  }
  const double step = (hi - lo) / (n_layer - 1);
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(hi - layer * step)));
}

}  // namespace kv
}  // namespace sdtp
