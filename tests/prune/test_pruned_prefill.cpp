// Pruned prefill: keep ratio 1 is dense bit for bit; pruned tokens vanish from later layers' KV
// caches; logits equal a naive double-precision forward, written here from the definitions, in
// which layer l attends only over the tokens alive at l (at their original positions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

// The tiny llama fixture (GQA, 2 layers) stacked to 6 layers by repeating its blocks.
std::unique_ptr<Model> six_layer_model() {
  auto m = load_model(testing::fixture_path("tiny/llama_gqa"));
  const auto base = m->weights.layers;
  while (m->weights.layers.size() < 6) m->weights.layers.push_back(base[m->weights.layers.size() % base.size()]);
  m->config.n_layer = 6;
  return m;
}

std::vector<int32_t> prompt(int n, int vocab) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + 11) % vocab;
  return ids;
}

PrunePlan plan(const std::string& method, std::vector<int> layers, std::vector<float> ratios, int keep_first = 0) {
  PrunePlan p;
  p.method = method;
  p.layers = std::move(layers);
  p.keep_ratios = std::move(ratios);
  p.keep_first = keep_first;
  p.seed = 5;
  return p;
}

// ---- naive reference forward (double precision, one token row at a time) ----
using Vec = std::vector<double>;

Vec matvec(const Tensor& w, const Vec& x, const Tensor* b = nullptr) {
  const int64_t out = w.dim(0), in = w.dim(1);
  Vec y(out);
  for (int64_t o = 0; o < out; ++o) {
    double s = b && !b->empty() ? b->data[o] : 0.0;
    for (int64_t i = 0; i < in; ++i) s += w.data[o * in + i] * x[i];
    y[o] = s;
  }
  return y;
}

Vec rmsnorm(const Vec& x, const Tensor& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w.data[i] * x[i] * r;
  return y;
}

void rope(Vec& v, int heads, int hd, int pos, double theta) {
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i) {
      const double ang = pos * std::pow(theta, -2.0 * i / hd);
      double& a = v[h * hd + i];
      double& b = v[h * hd + i + hd / 2];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(ang) - b0 * std::sin(ang);
      b = b0 * std::cos(ang) + a0 * std::sin(ang);
    }
}

// alive[l] = positions alive at layer l (ascending). Returns the last token's logits.
Vec reference_logits(const Model& m, const std::vector<int32_t>& ids, const std::vector<std::vector<int32_t>>& alive) {
  const ModelConfig& c = m.config;
  const int hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  std::vector<Vec> x(ids.size());
  for (size_t t = 0; t < ids.size(); ++t)
    x[t] = Vec(m.weights.tok_embd.data.begin() + ids[t] * c.n_embd, m.weights.tok_embd.data.begin() + (ids[t] + 1) * c.n_embd);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = m.weights.layers[l];
    const auto& rows = alive[l];
    std::vector<Vec> q(rows.size()), k(rows.size()), v(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const Vec h = rmsnorm(x[rows[r]], w.attn_norm, c.rms_eps);
      q[r] = matvec(w.wq, h, &w.bq);
      k[r] = matvec(w.wk, h, &w.bk);
      v[r] = matvec(w.wv, h, &w.bv);
      rope(q[r], nh, hd, rows[r], c.rope_theta);
      rope(k[r], nkv, hd, rows[r], c.rope_theta);
    }
    std::vector<Vec> out(rows.size(), Vec(static_cast<size_t>(nh) * hd, 0.0));
    for (size_t r = 0; r < rows.size(); ++r)
      for (int h = 0; h < nh; ++h) {
        const int g = h / (nh / nkv);
        Vec s(r + 1);
        double mx = -1e300, z = 0;
        for (size_t j = 0; j <= r; ++j) {
          double dot = 0;
          for (int t = 0; t < hd; ++t) dot += q[r][h * hd + t] * k[j][g * hd + t];
          s[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t j = 0; j <= r; ++j)
          for (int t = 0; t < hd; ++t) out[r][h * hd + t] += s[j] / z * v[j][g * hd + t];
      }
    for (size_t r = 0; r < rows.size(); ++r) {
      Vec& xr = x[rows[r]];
      const Vec o = matvec(w.wo, out[r]);
      for (size_t i = 0; i < xr.size(); ++i) xr[i] += o[i];
      const Vec h = rmsnorm(xr, w.ffn_norm, c.rms_eps);
      const Vec g = matvec(w.w_gate, h), u = matvec(w.w_up, h);
      Vec a(g.size());
      for (size_t i = 0; i < g.size(); ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec dn = matvec(w.w_down, a);
      for (size_t i = 0; i < xr.size(); ++i) xr[i] += dn[i];
    }
  }
  return matvec(m.weights.lm_head(), rmsnorm(x[ids.size() - 1], m.weights.output_norm, c.rms_eps));
}

TEST(PrunedPrefill, KeepRatioOneIsBitIdenticalToDense) {
  auto m = six_layer_model();
  const auto ids = prompt(40, m->config.n_vocab);
  Session dense(*m);
  const std::vector<float> want = dense.prefill(ids);
  std::vector<std::vector<int32_t>> dense_cache;
  for (int l = 0; l < 6; ++l) dense_cache.push_back(dense.cached_positions(l));
  const std::vector<float> want_next = dense.decode(7);
  for (const std::string method : {"random", "attn"}) {
    SessionOptions o;
    o.prune = plan(method, {1, 3, 5}, {1.0f, 1.0f, 1.0f});
    Session s(*m, o);
    const std::vector<float> got = s.prefill(ids);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << method;
    for (int l = 0; l < 6; ++l) EXPECT_EQ(s.cached_positions(l), dense_cache[l]) << method << " layer " << l;
    const std::vector<float> next = s.decode(7);
    EXPECT_EQ(std::memcmp(next.data(), want_next.data(), next.size() * sizeof(float)), 0) << method;
    EXPECT_EQ(s.last_stats().alive_per_layer, std::vector<int>(6, 1));
  }
}

TEST(PrunedPrefill, PrunedTokensLeaveLaterCachesAndLogitsMatchNaiveReference) {
  auto m = six_layer_model();
  const auto ids = prompt(50, m->config.n_vocab);
  for (const std::string method : {"random", "attn"}) {
    SessionOptions o;
    o.prune = plan(method, {1, 3}, {0.5f, 0.6f}, /*keep_first=*/2);
    Session s(*m, o);
    const std::vector<float> got = s.prefill(ids);
    const ForwardStats& st = s.last_stats();
    ASSERT_EQ(st.kept_positions.size(), 2u);
    EXPECT_EQ(st.kept_positions[0].size(), 25u);  // ceil(0.5 * 50)
    EXPECT_EQ(st.kept_positions[1].size(), 15u);  // ceil(0.6 * 25)
    EXPECT_EQ(st.alive_per_layer, (std::vector<int>{50, 25, 25, 15, 15, 15}));
    for (const auto& kept : st.kept_positions) {
      EXPECT_EQ(kept.back(), 49) << "the last token is always kept";
      EXPECT_EQ(kept[0], 0);
      EXPECT_EQ(kept[1], 1);  // keep_first = 2
    }
    // Each layer's cache holds exactly the tokens alive there; a token pruned at a stage never returns.
    std::vector<std::vector<int32_t>> alive(6);
    for (int l = 0; l < 6; ++l) {
      alive[l] = l < 1 ? prompt(50, 1)  // placeholder, replaced below
                       : (l < 3 ? st.kept_positions[0] : st.kept_positions[1]);
      if (l < 1) {
        alive[l].clear();
        for (int i = 0; i < 50; ++i) alive[l].push_back(i);
      }
      EXPECT_EQ(s.cached_positions(l), alive[l]) << method << " layer " << l;
    }
    std::set<int32_t> stage0(st.kept_positions[0].begin(), st.kept_positions[0].end());
    for (int32_t p : st.kept_positions[1]) EXPECT_TRUE(stage0.count(p)) << "position " << p << " came back";

    const Vec ref = reference_logits(*m, ids, alive);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num = std::max(num, std::abs(got[i] - ref[i]));
      den = std::max(den, std::abs(ref[i]));
    }
    EXPECT_LT(num / den, 1e-5) << method;

    // FLOPs: counted per layer on the alive rows; fewer than dense.
    EXPECT_LT(st.flops, st.dense_flops);
    EXPECT_GT(st.flops, 0.0);
    // Decoding continues over the pruned caches: the new token lands in every layer's cache.
    s.decode(3);
    for (int l = 0; l < 6; ++l) EXPECT_EQ(s.cached_positions(l).back(), 50);
  }
}

TEST(PrunedPrefill, SelectRowsKeepsTopScoresAndForcedRows) {
  const std::vector<float> scores = {0.9f, 0.1f, 0.8f, 0.2f, 0.7f, 0.0f};
  const std::vector<int32_t> pos = {10, 11, 12, 13, 14, 15};
  // k = ceil(0.5 * 6) = 3: the last row (forced), then the two best of the rest: rows 0 and 2.
  EXPECT_EQ(select_rows(scores, pos.data(), 6, 0.5f, 0), (std::vector<int64_t>{0, 2, 5}));
  // keep_first 12 forces positions 10 and 11 (rows 0, 1) plus the last: already 3 rows.
  EXPECT_EQ(select_rows(scores, pos.data(), 6, 0.5f, 12), (std::vector<int64_t>{0, 1, 5}));
  EXPECT_EQ(select_rows(scores, pos.data(), 6, 1.0f, 0).size(), 6u);
  EXPECT_EQ(select_rows(scores, pos.data(), 6, 0.01f, 0), (std::vector<int64_t>{5}));
}

TEST(PrunedPrefill, BadPlansAreUsageErrors) {
  auto m = six_layer_model();
  const auto bad = [&](PrunePlan p) {
    SessionOptions o;
    o.prune = std::move(p);
    EXPECT_THROW(Session(*m, o), UsageError);
  };
  bad(plan("random", {1, 3}, {0.5f}));         // sizes differ
  bad(plan("random", {3, 1}, {0.5f, 0.5f}));   // not increasing
  bad(plan("random", {0}, {0.5f}));            // layer 0 has nothing before it to score with
  bad(plan("random", {6}, {0.5f}));            // past the last layer
  bad(plan("random", {2}, {0.0f}));            // ratio outside (0, 1]
  bad(plan("random", {2}, {1.5f}));
  bad(plan("bogus", {2}, {0.5f}));
  SessionOptions o;
  o.prune = plan("random", {2}, {0.5f});
  Session s(*m, o);
  EXPECT_THROW(s.prefill(prompt(10, m->config.n_vocab), /*all_logits=*/true), UsageError);
}

}  // namespace
}  // namespace sdtp
