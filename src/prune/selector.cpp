// The token selectors (sdtp, saliency, random, attn) and the top-k row choice shared by all.
#include "prune/selector.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sdtp/error.h"
#include "sdtp/predictor.h"

namespace sdtp {

namespace {

// Same keep ratios as the method under test, tokens chosen uniformly at random.
class RandomSelector : public TokenSelector {
 public:
  RandomSelector(const PruneMethod& method, uint64_t seed) : TokenSelector(method), rng_(seed) {}
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
  using TokenSelector::TokenSelector;
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

// SDTP (Tao et al. 2025, §3.2): the plan's prediction module for the pruning layer scores each
// alive token from its hidden state alone. The plan's layers may be a subset of the predictor's,
// so the module is looked up by layer, not by stage index.
class SdtpSelector : public TokenSelector {
 public:
  SdtpSelector(const PruneMethod& method, std::shared_ptr<const Predictor> predictor)
      : TokenSelector(method), predictor_(std::move(predictor)) {
    if (!predictor_) throw UsageError("pruning method '" + method.name + "' needs a predictor (--predictor FILE)");
  }
  void score(const SelectorInput& in, std::vector<float>& scores) override {
    const auto& stages = predictor_->stages;
    const auto it = std::find_if(stages.begin(), stages.end(), [&](const PredictorStage& s) { return s.layer == in.layer; });
    if (it == stages.end()) throw UsageError("the predictor has no module for pruning layer " + std::to_string(in.layer));
    if (in.d != predictor_->n_embd)
      throw UsageError("the predictor expects hidden states of " + std::to_string(predictor_->n_embd) + " values, got " +
                       std::to_string(in.d));
    scores.resize(static_cast<size_t>(in.n));
    predictor_->score(static_cast<int>(it - stages.begin()), in.hidden, in.n, scores.data());
  }

 private:
  std::shared_ptr<const Predictor> predictor_;
};

// Oracle: the dense model's gradient saliency π̂ = (∂T/∂x)·x at each pruning layer (the predictor's
// training target), computed by the plan's saliency_oracle (one extra forward+backward pass, made
// in train/) before the prefill. Rows are ranked by |π̂|: the signed sum says in which direction a
// token moves the output, and a token whose removal would move it a lot the other way matters as
// much as one that supports it. Only the new tokens are seen: on a prefill that follows cached ones
// (n_past > 0) the saliency is that of the new tokens as a prompt of their own, an approximation.
class SaliencySelector : public TokenSelector {
 public:
  SaliencySelector(const PruneMethod& method, const PrunePlan& plan)
      : TokenSelector(method), layers_(plan.layers), oracle_(plan.saliency_oracle) {
    if (!oracle_)
      throw UsageError("pruning method '" + method.name +
                       "' needs a saliency oracle (PrunePlan::saliency_oracle, made by make_saliency_oracle)");
  }
  void begin_prefill(const Model&, const std::vector<int32_t>& ids, int n_past) override {
    n_past_ = n_past;
    n_ = static_cast<int64_t>(ids.size());
    per_token_ = oracle_(ids, layers_);
    bool fits = per_token_.size() == layers_.size();
    for (const std::vector<float>& s : per_token_) fits = fits && static_cast<int64_t>(s.size()) == n_;
    if (!fits)
      throw Error("saliency selector: the oracle did not return one value per token for each of the " +
                  std::to_string(layers_.size()) + " pruning layers");
  }
  void score(const SelectorInput& in, std::vector<float>& scores) override {
    const auto it = std::find(layers_.begin(), layers_.end(), in.layer);
    if (it == layers_.end() || per_token_.empty())
      throw Error("saliency selector: no saliency computed for layer " + std::to_string(in.layer) +
                  " (begin_prefill was not called?)");
    const std::vector<float>& s = per_token_[static_cast<size_t>(it - layers_.begin())];
    scores.resize(static_cast<size_t>(in.n));
    for (int64_t i = 0; i < in.n; ++i) {
      const int64_t t = static_cast<int64_t>(in.positions[i]) - n_past_;
      if (t < 0 || t >= n_) throw Error("saliency selector: position " + std::to_string(in.positions[i]) + " is not in this prefill");
      scores[i] = std::fabs(s[static_cast<size_t>(t)]);
    }
  }

 private:
  std::vector<int> layers_;
  SaliencyOracle oracle_;
  int n_past_ = 0;
  int64_t n_ = 0;
  std::vector<std::vector<float>> per_token_;  // [stage][token] of the current prefill
};

}  // namespace

std::unique_ptr<TokenSelector> make_sdtp_selector(const PrunePlan& plan, const PruneMethod& method) {
  return std::make_unique<SdtpSelector>(method, plan.predictor);
}
std::unique_ptr<TokenSelector> make_random_selector(const PrunePlan& plan, const PruneMethod& method) {
  return std::make_unique<RandomSelector>(method, plan.seed);
}
std::unique_ptr<TokenSelector> make_attn_selector(const PrunePlan&, const PruneMethod& method) {
  return std::make_unique<AttnSelector>(method);
}
std::unique_ptr<TokenSelector> make_saliency_selector(const PrunePlan& plan, const PruneMethod& method) {
  return std::make_unique<SaliencySelector>(method, plan);
}

std::unique_ptr<TokenSelector> make_selector(const PrunePlan& plan) {
  const PruneMethod& method = find_prune_method(plan.method);
  if (!method.make_selector) throw UsageError("no token selector for pruning method '" + plan.method + "'");
  return method.make_selector(plan, method);
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
