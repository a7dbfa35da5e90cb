// Baseline selectors (random, attn) and the top-k row choice shared by all selectors.
#include "prune/selector.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sdtp/error.h"

namespace sdtp {

namespace {

// Same keep ratios as the method under test, tokens chosen uniformly at random.
class RandomSelector : public TokenSelector {
 public:
  explicit RandomSelector(uint64_t seed) : rng_(seed) {}
  void score(const SelectorInput& in, std::vector<float>& scores) override {
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    scores.resize(static_cast<size_t>(in.n));
    for (float& s : scores) s = u(rng_);
  }

 private:
  std::mt19937_64 rng_;
};

// Score = the attention the last token paid to each token at the layer before the pruning layer,
// averaged over heads (the signal LazyLLM and H2O-style methods use).
class AttnSelector : public TokenSelector {
 public:
  bool needs_last_attention() const override { return true; }
  void score(const SelectorInput& in, std::vector<float>& scores) override {
    if (!in.last_attn) throw Error("attn selector: no attention recorded before layer " + std::to_string(in.layer));
    scores.resize(static_cast<size_t>(in.n));
    for (int64_t i = 0; i < in.n; ++i) {
      const int32_t* at = std::lower_bound(in.kv_pos, in.kv_pos + in.n_kv, in.positions[i]);
      const bool found = at != in.kv_pos + in.n_kv && *at == in.positions[i];
      scores[i] = found ? in.last_attn[at - in.kv_pos] : 0.0f;
    }
  }
};

}  // namespace

std::unique_ptr<TokenSelector> make_selector(const PrunePlan& plan) {
  if (plan.method == "random") return std::make_unique<RandomSelector>(plan.seed);
  if (plan.method == "attn") return std::make_unique<AttnSelector>();
  throw UsageError("no token selector for pruning method '" + plan.method + "'");
}

std::vector<int64_t> select_rows(const std::vector<float>& scores, const int32_t* positions, int64_t n,
                                 float keep_ratio, int keep_first) {
  // ceil, tolerant of float ratios such as 0.6f that sit a hair above their decimal value.
  const double want = std::ceil(static_cast<double>(keep_ratio) * static_cast<double>(n) - 1e-4);
  const int64_t k = std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(want)));
  std::vector<char> keep(static_cast<size_t>(n), 0);
  int64_t kept = 0;
  const auto force = [&](int64_t i) {
    if (!keep[i]) {
      keep[i] = 1;
      ++kept;
    }
  };
  force(n - 1);  // the last token produces the next-token logits
  for (int64_t i = 0; i < n && positions[i] < keep_first; ++i) force(i);
  if (kept < k) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
    for (int64_t i : order) {
      if (kept >= k) break;
      force(i);
    }
  }
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(kept));
  for (int64_t i = 0; i < n; ++i)
    if (keep[i]) rows.push_back(i);
  return rows;
}

}  // namespace sdtp
