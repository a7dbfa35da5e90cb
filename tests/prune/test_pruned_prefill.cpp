// Pruned prefill: keep ratio 1 is dense bit for bit; pruned tokens vanish from later layers' KV
// caches; logits equal the naive double-precision reference (testing/naive_llama.h) in which layer
// l computes and attends over only the tokens alive at l (at their original positions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"
#include "testing/naive_llama.h"

namespace sdtp {
namespace {

using testing::NaiveLlama;
using testing::six_layer_model;

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

TEST(PrunedPrefill, KeepRatioOneIsBitIdenticalToDense) {
  auto m = six_layer_model();
  const auto ids = prompt(40, m->config.n_vocab);
  Session dense(*m);
  const std::vector<float> want = dense.prefill(ids);
  std::vector<std::vector<int32_t>> dense_cache;
  for (int l = 0; l < 6; ++l) dense_cache.push_back(dense.cached_positions(l));
  const std::vector<float> want_next = dense.decode(7);
  for (const std::string method : {"random", "attn"}) {
    SessionOptions o;  // the default KV cache, as `dense`
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
    o.kv_type = "f32";  // the naive reference is float32
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

    // The reference's one call: layer l computes exactly the tokens alive there.
    NaiveLlama naive(*m);
    const std::vector<double> ref = naive.forward(ids, alive);
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

// The recent tail (PrunePlan::keep_recent, the paper's "most recent 10%") survives every stage on
// top of the sinks, whatever the scores; a second prefill's tail is its own last tokens.
TEST(PrunedPrefill, RecentTailIsAlwaysKept) {
  auto m = six_layer_model();
  const auto ids = prompt(60, m->config.n_vocab);
  for (const std::string method : {"random", "attn"}) {
    for (uint64_t seed : {1u, 2u, 3u}) {
      SessionOptions o;
      o.kv_type = "f32";  // the naive reference is float32
      o.prune = plan(method, {1, 2, 3, 4, 5}, {0.6f}, /*keep_first=*/2);
      o.prune.keep_ratios.assign(5, 0.6f);
      o.prune.keep_recent = 0.1f;  // ceil(0.1 · 60) = 6 tokens: 54..59
      o.prune.seed = seed;
      Session s(*m, o);
      const std::vector<float> got = s.prefill(ids);
      const ForwardStats& st = s.last_stats();
      ASSERT_EQ(st.kept_positions.size(), 5u);
      // 60 → 36 → 22 → 14 → 9 → 8 (never below the 2 + 6 forced rows)
      EXPECT_EQ(st.alive_per_layer, (std::vector<int>{60, 36, 22, 14, 9, 8})) << method;
      for (const auto& kept : st.kept_positions) {
        std::set<int32_t> k(kept.begin(), kept.end());
        for (int32_t p : {0, 1, 54, 55, 56, 57, 58, 59}) EXPECT_TRUE(k.count(p)) << method << ": position " << p << " pruned";
      }
      // The last stage kept exactly the forced rows.
      EXPECT_EQ(st.kept_positions.back(), (std::vector<int32_t>{0, 1, 54, 55, 56, 57, 58, 59}));
      // The logits are the naive reference's over the same alive sets.
      std::vector<std::vector<int32_t>> alive(6);
      for (int i = 0; i < 60; ++i) alive[0].push_back(i);
      for (int l = 1; l < 6; ++l) alive[l] = st.kept_positions[static_cast<size_t>(l - 1)];
      const std::vector<double> ref = NaiveLlama(*m).forward(ids, alive);
      double num = 0, den = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        num = std::max(num, std::abs(got[i] - ref[i]));
        den = std::max(den, std::abs(ref[i]));
      }
      EXPECT_LT(num / den, 1e-5) << method;
      // A second prefill of 20 tokens: its own last ceil(0.1 · 20) = 2 (78, 79) are kept.
      s.prefill(prompt(20, m->config.n_vocab));
      for (const auto& kept : s.last_stats().kept_positions) {
        std::set<int32_t> k(kept.begin(), kept.end());
        EXPECT_TRUE(k.count(78) && k.count(79)) << method;
      }
    }
  }
}

// Decode steps over pruned caches: each step's token is computed at every layer and attends to the
// entries there, which is the reference's call with the new token alone at every layer (float32
// decode, as the reference runs).
TEST(PrunedPrefill, DecodeAfterPrunedPrefillMatchesNaiveReference) {
  auto m = six_layer_model();
  SessionOptions o;
  o.kv_type = "f32";  // the naive reference is float32
  o.decode_q8 = false;
  o.kv_type = "f32";
  o.prune = plan("attn", {2, 4}, {0.5f, 0.5f}, /*keep_first=*/2);
  Session s(*m, o);
  NaiveLlama naive(*m);
  const auto ids = prompt(30, m->config.n_vocab);
  s.prefill(ids);
  std::vector<std::vector<int32_t>> alive;
  for (int l = 0; l < 6; ++l) alive.push_back(s.cached_positions(l));
  naive.forward(ids, alive);
  for (int step = 0; step < 8; ++step) {
    const int32_t id = (step * 53 + 7) % m->config.n_vocab, pos = s.n_past();
    const std::vector<float> got = s.decode(id);
    const std::vector<double> ref = naive.forward({id}, std::vector<std::vector<int32_t>>(6, {pos}));
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num = std::max(num, std::abs(got[i] - ref[i]));
      den = std::max(den, std::abs(ref[i]));
    }
    EXPECT_LT(num / den, 1e-5) << "step " << step;
    for (int l = 0; l < 6; ++l) EXPECT_EQ(s.cached_positions(l), naive.positions(l)) << "step " << step;
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
    o.kv_type = "f32";  // the naive reference is float32
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
  o.kv_type = "f32";  // the naive reference is float32
  o.prune = plan("random", {2}, {0.5f});
  Session s(*m, o);
  EXPECT_THROW(s.prefill(prompt(10, m->config.n_vocab), /*all_logits=*/true), UsageError);
}

}  // namespace
}  // namespace sdtp
