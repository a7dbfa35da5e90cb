// The token selectors (sdtp, saliency, random, attn) and the top-k row choice shared by all.
#include "prune/selector.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sdtp/error.h"
#include "sdtp/predictor.h"

namespace sdtp {

namespace {

// Same keep ratios as the method under test, tokens chosen uniformly at random (drawn on the host,
// so every backend prunes the same tokens for the same seed).
class RandomSelector : public TokenSelector {
 public:
  RandomSelector(const PruneMethod& method, uint64_t seed) : TokenSelector(method), rng_(seed) {}
  void score(const SelectorInput& in, const DeviceTensor& scores) override {
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    draws_.resize(static_cast<size_t>(scores.rows()));
    for (float& s : draws_) s = u(rng_);
    in.backend->upload(scores, draws_.data(), ElemType::f32);
  }

 private:
  std::mt19937_64 rng_;
  std::vector<float> draws_;
};

// Score = the attention the last token paid to each token at the layer before the pruning layer,
// averaged over heads (the signal LazyLLM and H2O-style methods use), which the Session records
// for the rows alive now.
class AttnSelector : public TokenSelector {
 public:
  using TokenSelector::TokenSelector;
  void score(const SelectorInput& in, const DeviceTensor& scores) override {
    if (in.last_attn.empty())
      throw Error("attn selector: no attention recorded before layer " + std::to_string(in.layer));
    in.backend->copy(scores, in.last_attn);
  }
};

// SDTP (Tao et al. 2025, §3.2): the plan's prediction module for the pruning layer scores each
// alive token from its hidden state alone, fc2(GELU(fc1(h / rms(h)))), as backend ops. The plan's
// layers may be a subset of the predictor's, so modules are looked up by layer, not stage index.
class SdtpSelector : public TokenSelector {
 public:
  SdtpSelector(const PruneMethod& method, std::shared_ptr<const Predictor> predictor, Backend& be)
      : TokenSelector(method), predictor_(std::move(predictor)) {
    if (!predictor_) throw UsageError("pruning method '" + method.name + "' needs a predictor (--predictor FILE)");
    const Predictor& p = *predictor_;
    for (const PredictorStage& s : p.stages) {
      const size_t h = static_cast<size_t>(p.n_hidden), d = static_cast<size_t>(p.n_embd);
      if (s.w1.size() != h * d || s.b1.size() != h || s.w2.size() != h)
        throw UsageError("the predictor's module for layer " + std::to_string(s.layer) + " has the wrong shape");
      Module m;
      m.layer = s.layer;
      m.fc1 = be.upload_matrix(s.w1.data(), p.n_hidden, p.n_embd, s.b1.data());
      m.w2 = be.alloc(ElemType::f32, 1, p.n_hidden, "predictor fc2");
      be.upload(m.w2, s.w2.data(), ElemType::f32);
      m.b2 = s.b2;
      modules_.push_back(std::move(m));
    }
  }
  void score(const SelectorInput& in, const DeviceTensor& scores) override {
    const auto it = std::find_if(modules_.begin(), modules_.end(), [&](const Module& m) { return m.layer == in.layer; });
    if (it == modules_.end()) throw UsageError("the predictor has no module for pruning layer " + std::to_string(in.layer));
    if (in.hidden.cols() != predictor_->n_embd)
      throw UsageError("the predictor expects hidden states of " + std::to_string(predictor_->n_embd) + " values, got " +
                       std::to_string(in.hidden.cols()));
    Backend& be = *in.backend;
    const int64_t n = in.hidden.rows();
    if (normed_.rows() < n) {
      normed_ = DeviceTensor();
      h1_ = DeviceTensor();
      normed_ = be.alloc(be.activation_type(), n, predictor_->n_embd, "predictor input");
      h1_ = be.alloc(be.activation_type(), n, predictor_->n_hidden, "predictor hidden");
    }
    const DeviceTensor normed = normed_.rows(0, n), h1 = h1_.rows(0, n);
    be.rmsnorm(in.hidden, DeviceTensor(), kPredictorNormEps, normed);
    be.matmul(normed, *it->fc1, h1);
    be.gelu_dot(h1, it->w2, it->b2, scores);
  }

 private:
  static constexpr float kPredictorNormEps = 1e-6f;  // Predictor::score's parameter-free norm
  struct Module {
    int layer = 0;
    std::shared_ptr<const Matrix> fc1;
    DeviceTensor w2;
    float b2 = 0.0f;
  };
  std::shared_ptr<const Predictor> predictor_;
  std::vector<Module> modules_;
  DeviceTensor normed_, h1_;
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
  void score(const SelectorInput& in, const DeviceTensor& scores) override {
    const auto it = std::find(layers_.begin(), layers_.end(), in.layer);
    if (it == layers_.end() || per_token_.empty())
      throw Error("saliency selector: no saliency computed for layer " + std::to_string(in.layer) +
                  " (begin_prefill was not called?)");
    const std::vector<float>& s = per_token_[static_cast<size_t>(it - layers_.begin())];
    const int64_t n = in.positions.rows();
    std::vector<int32_t> pos(static_cast<size_t>(n));
    in.backend->download(pos.data(), in.positions, ElemType::i32);
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = static_cast<int64_t>(pos[i]) - n_past_;
      if (t < 0 || t >= n_) throw Error("saliency selector: position " + std::to_string(pos[i]) + " is not in this prefill");
      host[i] = std::fabs(s[static_cast<size_t>(t)]);
    }
    in.backend->upload(scores, host.data(), ElemType::f32);
  }

 private:
  std::vector<int> layers_;
  SaliencyOracle oracle_;
  int n_past_ = 0;
  int64_t n_ = 0;
  std::vector<std::vector<float>> per_token_;  // [stage][token] of the current prefill
};

}  // namespace

std::unique_ptr<TokenSelector> make_sdtp_selector(const PrunePlan& plan, const PruneMethod& method, Backend& backend) {
  return std::make_unique<SdtpSelector>(method, plan.predictor, backend);
}
std::unique_ptr<TokenSelector> make_random_selector(const PrunePlan& plan, const PruneMethod& method, Backend&) {
  return std::make_unique<RandomSelector>(method, plan.seed);
}
std::unique_ptr<TokenSelector> make_attn_selector(const PrunePlan&, const PruneMethod& method, Backend&) {
  return std::make_unique<AttnSelector>(method);
}
std::unique_ptr<TokenSelector> make_saliency_selector(const PrunePlan& plan, const PruneMethod& method, Backend&) {
  return std::make_unique<SaliencySelector>(method, plan);
}

std::unique_ptr<TokenSelector> make_selector(const PrunePlan& plan, Backend& backend) {
  const PruneMethod& method = find_prune_method(plan.method);
  if (!method.make_selector) throw UsageError("no token selector for pruning method '" + plan.method + "'");
  return method.make_selector(plan, method, backend);
}

int64_t keep_count(float keep_ratio, int64_t n) {
  const double want = std::ceil(static_cast<double>(keep_ratio) * static_cast<double>(n) - 1e-4);
  return std::min<int64_t>(n, std::max<int64_t>(1, static_cast<int64_t>(want)));
}

std::vector<int64_t> select_rows(const std::vector<float>& scores, const int32_t* positions, int64_t n,
                                 float keep_ratio, int keep_first) {
  const int64_t k = keep_count(keep_ratio, n);
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
