// Gradient saliency (src/train/saliency.h) against references independent of its backward pass:
//  * finite differences of the model's forward pass (tiny fixture models), evaluated in float64 by
//    a plain reference forward here that is checked against the model's own float32 forward at
//    every point it is differenced: directional derivatives along random directions, and the
//    per-token saliency itself, which for the sum reduction is the derivative of T when one token's
//    hidden state is scaled by (1+α);
//  * PyTorch autograd in float64 on the same weights (tests/fixtures/saliency/*.json, written by
//    scripts/fixtures/gen_saliency_fixtures.py), for the tiny llama_gqa and qwen2_bias models and,
//    in the Slow suite, the real SmolLM2-135M-Instruct Q4_1;
//  * the real default model on a ~200-token prompt (Slow): runs, finite, timed.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "model/rope.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "testing/fixtures.h"
#include "train/saliency.h"

namespace sdtp {
namespace {

using testing::fixture_path;
using testing::read_json;

// Saliency and gradients vs float64 autograd: max |ours - ref| / max |ref| per layer.
constexpr double kAutogradTol = 1e-4;
// Finite differences: relative to max(|analytic|, kFdFloor · the derivative's scale). Bound: the FD
// (float64, Richardson) is exact to ~2e-9, so all that is left is the float32 gradient's error,
// ≤ kAutogradTol of its scale (as the autograd test holds it), i.e. ≤ kAutogradTol / kFdFloor here.
constexpr double kFdFloor = 1e-2;
constexpr double kFdTol = kAutogradTol / kFdFloor;
// The float64 reference forward vs the model's float32 forward: float32 rounding through two blocks.
constexpr double kForwardTol = 1e-5;
// Step along directions scaled like the hidden state (a relative perturbation): small enough for
// the eps^4 truncation, large enough that float64 rounding stays far below it.
constexpr double kFdEps = 1e-3;

const char* objective_name(SaliencyObjective o) {
  switch (o) {
    case SaliencyObjective::kLastTokenLogProb:
      return "last_logprob";
    case SaliencyObjective::kLastTokenLogit:
      return "last_logit";
    case SaliencyObjective::kLmLogLikelihood:
      return "lm_loglik";
  }
  return "?";
}

constexpr SaliencyObjective kObjectives[] = {SaliencyObjective::kLastTokenLogProb,
                                             SaliencyObjective::kLastTokenLogit,
                                             SaliencyObjective::kLmLogLikelihood};

double rel_error(const std::vector<float>& ours, const std::vector<double>& ref) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(ours[i] - ref[i]));
    max_ref = std::max(max_ref, std::fabs(ref[i]));
  }
  return max_diff / std::max(max_ref, 1e-300);
}

std::unique_ptr<Model> load_tiny(const std::string& variant) { return load_model(fixture_path("tiny/" + variant)); }

// Random prompt ids above the fixtures' special tokens (0-2).
std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) { return testing::random_ids(n, vocab, seed, 3); }

// ------------------------------------------------------------------------------------------------
// Finite differences

struct FdCase {
  std::string variant;
  SaliencyObjective objective;
};
// Printed by GoogleTest (and so by ctest) in place of the struct's raw bytes.
void PrintTo(const FdCase& c, std::ostream* os) { *os << c.variant; }

class SaliencyFiniteDiff : public ::testing::TestWithParam<FdCase> {};

// Float64 reference forward: the block and head of model/llama_block.cpp and train/saliency.cpp
// written from their definitions on the same (float32) weights, so that finite differences carry no
// float32 rounding.
using Vec = std::vector<double>;

// y[n x m] = x[n x k] W^T (+ b) for W a {m, k} tensor.
Vec linear64(const Vec& x, int64_t n, const Tensor& w, const Tensor& b = {}) {
  const int64_t m = w.dim(0), k = w.dim(1);
  Vec y(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double acc = b.empty() ? 0.0 : b.data[j];
      for (int64_t t = 0; t < k; ++t) acc += x[i * k + t] * w.data[j * k + t];
      y[i * m + j] = acc;
    }
  return y;
}

Vec rmsnorm64(const Vec& x, int64_t n, const Tensor& weight, double eps) {
  const int64_t d = weight.dim(0);
  Vec y(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t t = 0; t < d; ++t) ss += x[i * d + t] * x[i * d + t];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (int64_t t = 0; t < d; ++t) y[i * d + t] = weight.data[t] * x[i * d + t] * r;
  }
  return y;
}

// Rotate-half RoPE at positions 0..n-1, angles as the model forms them (float32 pos·inv_freq).
void rope64(Vec& x, int64_t n, int n_heads, int hd, const std::vector<float>& inv_freq) {
  for (int64_t r = 0; r < n; ++r)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double a = static_cast<double>(static_cast<float>(r) * inv_freq[i]);
        double* v = x.data() + (r * n_heads + h) * hd;
        const double x0 = v[i], x1 = v[i + hd / 2];
        v[i] = x0 * std::cos(a) - x1 * std::sin(a);
        v[i + hd / 2] = x1 * std::cos(a) + x0 * std::sin(a);
      }
}

// Causal grouped-query attention over positions 0..n-1, scale 1/sqrt(hd).
Vec attention64(const Vec& q, const Vec& k, const Vec& v, int64_t n, int nh, int nkv, int hd) {
  Vec out(static_cast<size_t>(n * nh * hd), 0.0), p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < nh; ++h) {
      const int g = h / (nh / nkv);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (int t = 0; t < hd; ++t) dot += q[(i * nh + h) * hd + t] * k[(j * nkv + g) * hd + t];
        p[j] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, p[j]);
      }
      for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int64_t j = 0; j <= i; ++j)
        for (int t = 0; t < hd; ++t) out[(i * nh + h) * hd + t] += p[j] / sum * v[(j * nkv + g) * hd + t];
    }
  return out;
}

double log_sum_exp64(const double* z, int64_t count) {
  const double mx = *std::max_element(z, z + count);
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += std::exp(z[i] - mx);
  return mx + std::log(sum);
}

// saliency_objective_from_layer in float64 (pred >= 0 for the last-token objectives).
double objective_from_layer64(const Model& m, const std::vector<int32_t>& ids, int layer, Vec x,
                              SaliencyObjective obj, int32_t pred) {
  const ModelConfig& c = m.config;
  const int64_t n = static_cast<int64_t>(ids.size()), vocab = c.n_vocab;
  const std::vector<float> inv_freq = rope_inv_freq(c);
  for (int l = layer; l < c.n_layer; ++l) {
    const LayerWeights& w = m.weights.layers[l];
    const Vec h = rmsnorm64(x, n, w.attn_norm, c.rms_eps);
    Vec q = linear64(h, n, w.wq, w.bq), k = linear64(h, n, w.wk, w.bk);
    const Vec v = linear64(h, n, w.wv, w.bv);
    rope64(q, n, c.n_head, c.head_dim, inv_freq);
    rope64(k, n, c.n_head_kv, c.head_dim, inv_freq);
    const Vec o = linear64(attention64(q, k, v, n, c.n_head, c.n_head_kv, c.head_dim), n, w.wo);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const Vec h2 = rmsnorm64(x, n, w.ffn_norm, c.rms_eps);
    Vec gate = linear64(h2, n, w.w_gate);
    const Vec up = linear64(h2, n, w.w_up);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
    const Vec down = linear64(gate, n, w.w_down);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  const Vec z = linear64(rmsnorm64(x, n, m.weights.output_norm, c.rms_eps), n, m.weights.lm_head());
  const double* zl = z.data() + (n - 1) * vocab;
  switch (obj) {
    case SaliencyObjective::kLastTokenLogProb:
      return zl[pred] - log_sum_exp64(zl, vocab);
    case SaliencyObjective::kLastTokenLogit:
      return zl[pred];
    case SaliencyObjective::kLmLogLikelihood: {
      double total = 0;
      for (int64_t i = 0; i + 1 < n; ++i) {
        total += z[i * vocab + ids[i + 1]] - log_sum_exp64(&z[i * vocab], vocab);
      }
      return total / static_cast<double>(n - 1);
    }
  }
  return 0;
}

// Derivative of T along `dir` at the hidden state `x` entering `layer`, from the float64 forward:
// central differences at eps and eps/2 combined by Richardson extrapolation (truncation error
// O(eps^4)). Each point differenced is also run through the model's own float32 forward, which the
// float64 one must reproduce.
double central_difference(const Model& m, const std::vector<int32_t>& ids, int layer, const std::vector<float>& x,
                          const std::vector<float>& dir, double eps, SaliencyObjective obj, int32_t pred) {
  const auto objective = [&](double h) {
    Vec y(x.size());
    std::vector<float> y32(x.size());
    for (size_t i = 0; i < x.size(); ++i) y32[i] = static_cast<float>(y[i] = x[i] + h * dir[i]);
    const double t64 = objective_from_layer64(m, ids, layer, y, obj, pred);
    const double t32 = saliency_objective_from_layer(m, ids, layer, y32, obj, pred);
    EXPECT_NEAR(t64, t32, kForwardTol * std::max(1.0, std::fabs(t64))) << "layer " << layer << " step " << h;
    return t64;
  };
  const auto at = [&](double h) { return (objective(h) - objective(-h)) / (2 * h); };
  return (4 * at(eps / 2) - at(eps)) / 3;
}

TEST_P(SaliencyFiniteDiff, DirectionalDerivativesAtTwoLayers) {
  const FdCase& p = GetParam();
  auto m = load_tiny(p.variant);
  const int d = m->config.n_embd;
  const std::vector<int32_t> ids = random_ids(12, m->config.n_vocab, 7);
  SaliencyOptions o;
  o.objective = p.objective;
  o.keep_gradients = true;
  const SaliencyResult r = token_saliency(*m, ids, {0, 1}, o);
  ASSERT_EQ(r.layers, (std::vector<int>{0, 1}));
  const int32_t pred = r.predicted_token;

  // The objective from layer 0 with the unperturbed state reproduces T.
  EXPECT_NEAR(saliency_objective_from_layer(*m, ids, 0, r.hidden[0], p.objective, pred), r.objective,
              1e-5 * std::max(1.0, std::fabs(r.objective)));

  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  double worst = 0;
  for (size_t li = 0; li < r.layers.size(); ++li) {
    const std::vector<float>& x = r.hidden[li];
    const std::vector<float>& g = r.gradient[li];
    // Directions scaled like the hidden state, so eps is a relative perturbation.
    double x_rms = 0;
    for (float v : x) x_rms += static_cast<double>(v) * v;
    x_rms = std::sqrt(x_rms / x.size());
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<float> dir(x.size());
      for (auto& v : dir) v = static_cast<float>(normal(rng) * x_rms);
      double analytic = 0, g_norm = 0, dir_norm = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        analytic += static_cast<double>(g[i]) * dir[i];
        g_norm += static_cast<double>(g[i]) * g[i];
        dir_norm += static_cast<double>(dir[i]) * dir[i];
      }
      const double fd = central_difference(*m, ids, r.layers[li], x, dir, kFdEps, p.objective, pred);
      // Floor: a fraction of the largest directional derivative a direction of this size could have.
      const double scale = std::max(std::fabs(analytic), kFdFloor * std::sqrt(g_norm * dir_norm));
      const double err = std::fabs(fd - analytic) / scale;
      worst = std::max(worst, err);
      EXPECT_LE(err, kFdTol) << p.variant << " " << objective_name(p.objective) << " layer " << r.layers[li]
                             << " trial " << trial << ": fd " << fd << " analytic " << analytic;
    }
    // The per-token saliency (sum reduction) is dT/dα for x_i → (1+α)·x_i.
    for (int tok : {0, 5, 11}) {
      std::vector<float> dir(x.size(), 0.0f);
      std::copy(x.begin() + tok * d, x.begin() + (tok + 1) * d, dir.begin() + tok * d);
      const double fd = central_difference(*m, ids, r.layers[li], x, dir, kFdEps, p.objective, pred);
      const double analytic = r.per_token[li][tok];
      double tok_scale = 0;
      for (float v : r.per_token[li]) tok_scale = std::max(tok_scale, std::fabs(static_cast<double>(v)));
      const double err = std::fabs(fd - analytic) / std::max(std::fabs(analytic), kFdFloor * tok_scale);
      worst = std::max(worst, err);
      EXPECT_LE(err, kFdTol) << p.variant << " " << objective_name(p.objective) << " layer " << r.layers[li]
                             << " token " << tok << ": fd " << fd << " saliency " << analytic;
    }
  }
  std::printf("[ saliency ] %s %s: worst finite-difference relative error %.2e\n", p.variant.c_str(),
              objective_name(p.objective), worst);
}

std::vector<FdCase> fd_cases() {
  std::vector<FdCase> v;
  for (const char* variant : {"llama_gqa", "qwen2_bias"}) {
    for (SaliencyObjective o : kObjectives) v.push_back({variant, o});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Tiny, SaliencyFiniteDiff, ::testing::ValuesIn(fd_cases()),
                         [](const ::testing::TestParamInfo<FdCase>& info) {
                           return info.param.variant + "_" + objective_name(info.param.objective);
                         });

// ------------------------------------------------------------------------------------------------
// PyTorch autograd

// Compares every prompt / objective / layer of a fixture written by gen_saliency_fixtures.py.
// Returns the worst relative error seen.
double check_against_autograd(const Model& m, const nlohmann::json& ref, const std::string& label) {
  std::vector<int> layers;
  for (const auto& l : ref.at("layers")) layers.push_back(l.get<int>());
  double worst = 0;
  for (const auto& prompt : ref.at("prompts")) {
    const std::vector<int32_t> ids = testing::json_ids(prompt.at("ids"));
    for (SaliencyObjective obj : kObjectives) {
      const auto& want = prompt.at("objectives").at(objective_name(obj));
      const std::string where = label + " n=" + std::to_string(ids.size()) + " " + objective_name(obj);
      for (SaliencyReduction red : {SaliencyReduction::kSum, SaliencyReduction::kAbsSum}) {
        SaliencyOptions o;
        o.objective = obj;
        o.reduction = red;
        o.keep_gradients = true;
        const SaliencyResult r = token_saliency(m, ids, layers, o);
        const double t_ref = want.at("objective").get<double>();
        EXPECT_NEAR(r.objective, t_ref, kAutogradTol * std::max(1.0, std::fabs(t_ref))) << where;
        EXPECT_EQ(r.predicted_token, want.at("predicted_token").get<int32_t>()) << where;
        for (size_t li = 0; li < layers.size(); ++li) {
          const auto& lw = want.at("layers").at(std::to_string(layers[li]));
          const char* key = red == SaliencyReduction::kSum ? "sum" : "abs_sum";
          const double e = rel_error(r.per_token[li], lw.at(key).get<std::vector<double>>());
          worst = std::max(worst, e);
          EXPECT_LE(e, kAutogradTol) << where << " layer " << layers[li] << " " << key;
          if (lw.contains("gradient")) {
            const double eg = rel_error(r.gradient[li], lw.at("gradient").get<std::vector<double>>());
            worst = std::max(worst, eg);
            EXPECT_LE(eg, kAutogradTol) << where << " layer " << layers[li] << " gradient";
          }
        }
      }
    }
  }
  std::printf("[ saliency ] %s: worst relative error vs float64 autograd %.2e\n", label.c_str(), worst);
  return worst;
}

TEST(SaliencyAutograd, TinyModels) {
  for (const char* variant : {"llama_gqa", "qwen2_bias"}) {
    auto m = load_tiny(variant);
    const nlohmann::json ref = read_json(fixture_path(std::string("saliency/") + variant + ".json"));
    check_against_autograd(*m, ref, variant);
  }
}

// ------------------------------------------------------------------------------------------------
// API behaviour and bad input

TEST(Saliency, LayersSortedAndDeduplicated) {
  auto m = load_tiny("llama_gqa");
  const std::vector<int32_t> ids = random_ids(10, m->config.n_vocab, 3);
  const SaliencyResult a = token_saliency(*m, ids, {1, 0, 1}, SaliencyObjective::kLastTokenLogProb);
  ASSERT_EQ(a.layers, (std::vector<int>{0, 1}));
  ASSERT_EQ(a.per_token.size(), 2u);
  // Asking for one layer alone gives the same numbers (only the backward's depth changes).
  const SaliencyResult b = token_saliency(*m, ids, {1}, SaliencyObjective::kLastTokenLogProb);
  ASSERT_EQ(b.per_token.size(), 1u);
  EXPECT_EQ(a.per_token[1], b.per_token[0]);
  EXPECT_TRUE(a.hidden.empty());
  EXPECT_TRUE(a.gradient.empty());
}

TEST(Saliency, OneTokenPrompt) {
  auto m = load_tiny("qwen2_bias");
  const SaliencyResult r = token_saliency(*m, {5}, {0, 1}, SaliencyObjective::kLastTokenLogProb);
  ASSERT_EQ(r.per_token[0].size(), 1u);
  EXPECT_TRUE(std::isfinite(r.per_token[0][0]));
  EXPECT_THROW(token_saliency(*m, {5}, {0}, SaliencyObjective::kLmLogLikelihood), UsageError);
}

TEST(Saliency, RejectsBadInput) {
  auto m = load_tiny("llama_gqa");
  const int n_layer = m->config.n_layer;
  EXPECT_THROW(token_saliency(*m, {}, {0}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(token_saliency(*m, {1, 2}, {}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(token_saliency(*m, {1, 2}, {-1}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(token_saliency(*m, {1, 2}, {n_layer}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(token_saliency(*m, {1, -3}, {0}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(token_saliency(*m, {1, m->config.n_vocab}, {0}, SaliencyObjective::kLastTokenLogProb), UsageError);
  const std::vector<int32_t> too_long(static_cast<size_t>(m->config.n_ctx_train) + 1, 4);
  EXPECT_THROW(token_saliency(*m, too_long, {0}, SaliencyObjective::kLastTokenLogProb), UsageError);
  EXPECT_THROW(saliency_objective_from_layer(*m, {1, 2}, 0, std::vector<float>(3), SaliencyObjective::kLastTokenLogit),
               UsageError);
  // A random_model() has its weights on the device only; the backward reads host weights.
  const auto random = random_model(m->config, 1);
  EXPECT_THROW(token_saliency(*random, {1, 2}, {0}, SaliencyObjective::kLastTokenLogProb), UsageError);
}

// ------------------------------------------------------------------------------------------------
// The real default model

class SaliencySlow : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (testing::path_exists(testing::default_model_path())) model_ = load_model(testing::default_model_path()).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) SDTP_NO_DEFAULT_MODEL("real model not found at " << testing::default_model_path());
  }
  // Token ids of ordinary English text, repeated to `n` tokens.
  static std::vector<int32_t> prompt(int n) {
    const std::string text =
        "The history of the city begins with a small fishing village on the river. Over the centuries "
        "merchants built warehouses along the banks, and the village grew into a market town. ";
    std::vector<int32_t> ids;
    const std::vector<int32_t> piece = model_->tokenizer.encode(text);
    while (static_cast<int>(ids.size()) < n) ids.insert(ids.end(), piece.begin(), piece.end());
    ids.resize(static_cast<size_t>(n));
    return ids;
  }
  static Model* model_;
};
Model* SaliencySlow::model_ = nullptr;

TEST_F(SaliencySlow, MatchesAutogradOnSmolLM2) {
  const nlohmann::json ref = read_json(fixture_path("saliency/smollm2.json"));
  check_against_autograd(*model_, ref, "smollm2");
}

TEST_F(SaliencySlow, RunsOn200TokensFiniteAndTimed) {
  const std::vector<int32_t> ids = prompt(200);
  const int n_layer = model_->config.n_layer;
  const std::vector<int> layers = {n_layer / 10, n_layer / 4, n_layer / 2, 3 * n_layer / 4};
  const SaliencyResult r = token_saliency(*model_, ids, layers, SaliencyObjective::kLastTokenLogProb);
  ASSERT_EQ(r.per_token.size(), layers.size());
  EXPECT_TRUE(std::isfinite(r.objective));
  EXPECT_LE(r.objective, 0.0);
  for (const auto& row : r.per_token) {
    ASSERT_EQ(row.size(), ids.size());
    double sum_abs = 0;
    for (float v : row) {
      ASSERT_TRUE(std::isfinite(v));
      sum_abs += std::fabs(v);
    }
    EXPECT_GT(sum_abs, 0.0);
  }
  std::printf("[ saliency ] SmolLM2 200 tokens, %zu layers: %.0f ms (%.2f ms/token), T = %.4f\n", layers.size(),
              r.elapsed_ms, r.elapsed_ms / ids.size(), r.objective);
}

TEST_F(SaliencySlow, TimePerTokenAt512) {
  const std::vector<int32_t> ids = prompt(512);
  const int n_layer = model_->config.n_layer;
  // Backward down to the embeddings (layer 0): the most expensive request.
  const SaliencyResult r = token_saliency(*model_, ids, {0, n_layer / 4, n_layer / 2}, SaliencyObjective::kLastTokenLogProb);
  for (const auto& row : r.per_token) {
    for (float v : row) ASSERT_TRUE(std::isfinite(v));
  }
  std::printf("[ saliency ] SmolLM2 512 tokens, backward to layer 0: %.0f ms (%.2f ms/token)\n", r.elapsed_ms,
              r.elapsed_ms / ids.size());
}

}  // namespace
}  // namespace sdtp
