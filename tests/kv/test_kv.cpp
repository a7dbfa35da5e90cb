// KV-cache compression (sdtp/kv.h, src/kv/): the policies' scores against their definitions in
// double precision, the per-head selection against a brute-force ranking (sinks, window, ties by
// position, AdaKV's budgets), the cache's compaction (each head keeps exactly its chosen entries,
// with positions and mass; storage shrinks), attention over a compacted cache against a naive
// reference over the kept entries, attention mass accumulated across prefill, compaction and
// decode steps against naive sums, and the Session: budget 1 is bit-identical to dense, a budget
// keeps that many entries per head in every layer, the bytes drop by the evicted share, decode
// holds the budget, pruning composes. Device cases run on the CPU and on CUDA where there is one
// (skipped visibly otherwise); the GPU is held to the CPU within bf16 tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/aux_cache.h"
#include "kv/kv_cache.h"
#include "kv/policy.h"
#include "sdtp/error.h"
#include "sdtp/kv.h"
#include "sdtp/model.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

using sdtp::testing::bf16_round;

std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_round(u(rng));
  return v;
}

// A layer's entries with random statistics: head g holds n[g] entries at ascending gapped positions.
kv::LayerEntries random_entries(std::vector<int64_t> n, uint32_t seed, int distinct = 0) {
  kv::LayerEntries e;
  e.n_head_kv = static_cast<int>(n.size());
  e.n = std::move(n);
  e.rows = *std::max_element(e.n.begin(), e.n.end());
  const int H = e.n_head_kv;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> gap(1, 3), level(0, std::max(distinct, 1) - 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  e.pos.assign(static_cast<size_t>(e.rows * H), std::numeric_limits<int32_t>::max());
  e.mass.assign(e.pos.size(), 0.0f);
  e.v_l1 = e.k_l2 = e.mass;
  for (int g = 0; g < H; ++g) {
    int32_t p = g;
    for (int64_t j = 0; j < e.n[g]; ++j) {
      const size_t at = static_cast<size_t>(j * H + g);
      e.pos[at] = p;
      p += gap(rng);
      // distinct > 0: few levels, so ties are common.
      e.mass[at] = distinct ? 0.25f * static_cast<float>(level(rng)) : u(rng);
      e.v_l1[at] = 1.0f + u(rng);
      e.k_l2[at] = 1.0f + u(rng);
    }
  }
  return e;
}

KVPolicyOptions opts(const std::string& policy, double budget, int sinks = 0, int window = 0) {
  KVPolicyOptions o;
  o.policy = policy;
  o.budget = budget;
  o.sinks = sinks;
  o.window = window;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Options and the registry.

TEST(KvPolicyOptions, ValidatesEveryField) {
  EXPECT_NO_THROW(opts("vatp", 0.25).validate());
  EXPECT_NO_THROW(opts("h2o", 1.0).validate());
  EXPECT_NO_THROW(opts("snapkv", 256).validate());
  const auto bad = [](KVPolicyOptions o, const std::string& needle) {
    try {
      o.validate();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  bad(opts("lru", 0.5), "unknown KV policy 'lru'");
  bad(opts("vatp", 0), "--kv-budget 0");
  bad(opts("vatp", 1.5), "--kv-budget 1.5");
  bad(opts("vatp", 8), "--kv-budget 8");
  bad(opts("vatp", -0.1), "--kv-budget");
  KVPolicyOptions o = opts("vatp", 0.5);
  o.interval = -1;
  bad(o, "--kv-interval");
  o = opts("streaming", 0.5);
  o.adaptive = true;
  bad(o, "--kv-adaptive needs a policy with scores");
  o = opts("tova", 0.5);
  o.score_window = 8;
  bad(o, "--kv-score-window applies to vatp and h2o");
}

TEST(KvPolicyOptions, BudgetsInEntries) {
  EXPECT_EQ(opts("h2o", 0.25).budget_entries(100), 25);
  EXPECT_EQ(opts("h2o", 0.25).budget_entries(101), 26);  // rounded up
  EXPECT_EQ(opts("h2o", 0.1).budget_entries(4096), 410);
  EXPECT_EQ(opts("h2o", 64).budget_entries(4096), 64);
  EXPECT_EQ(opts("h2o", 64).budget_entries(10), 64);  // a cache below it keeps everything
  EXPECT_EQ(opts("h2o", 1.0).budget_entries(10), INT64_MAX);
  EXPECT_EQ(opts("snapkv", 0.5, 0, KVPolicyOptions::kDefault).window_or_default(1000), 64);
  EXPECT_EQ(opts("snapkv", 0.5, 0, 16).window_or_default(1000), 16);
  EXPECT_EQ(opts("h2o", 0.5, 0, KVPolicyOptions::kDefault).window_or_default(1000), 500);  // H2O's split
  EXPECT_EQ(opts("vatp", 0.5, 0, KVPolicyOptions::kDefault).window_or_default(INT64_MAX), 0);
  EXPECT_EQ(opts("vatp", 0.5, KVPolicyOptions::kDefault).sinks_or_default(), 4);
}

TEST(KvPolicies, RegistryNamesEveryPolicyOnce) {
  std::set<std::string> names;
  for (const KVPolicy& p : kv_policies()) EXPECT_TRUE(names.insert(p.name).second) << p.name;
  for (const char* n : {"none", "vatp", "h2o", "tova", "snapkv", "pyramidkv", "knorm", "streaming", "random"})
    EXPECT_EQ(names.count(n), 1u) << n;
  EXPECT_EQ(kv_policies().front().name, "none");
  EXPECT_THROW(find_kv_policy("nope"), UsageError);
  // Each row says what it needs, and the rows agree with themselves: scored policies score, the
  // attention-based ones keep mass, only vatp needs value norms, only knorm key norms, only
  // pyramidkv shrinks its budgets with depth.
  for (const KVPolicy& p : kv_policies()) {
    const bool attention = p.score == KVPolicy::Score::mass || p.score == KVPolicy::Score::mass_x_value_l1 ||
                           p.score == KVPolicy::Score::pooled_mass;
    EXPECT_EQ(attention, kv::mass_mode(p) != kv::MassMode::none) << p.name;
    EXPECT_EQ(kv::needs_value_norms(p), p.name == "vatp") << p.name;
    EXPECT_EQ(kv::needs_key_norms(p), p.name == "knorm") << p.name;
    EXPECT_EQ(p.pyramid, p.name == "pyramidkv") << p.name;
    if (p.scored) {
      EXPECT_NE(p.score, KVPolicy::Score::none) << p.name;
    }
  }
  EXPECT_EQ(kv::mass_mode(find_kv_policy("tova")), kv::MassMode::newest);
  EXPECT_EQ(kv::mass_mode(find_kv_policy("snapkv")), kv::MassMode::window);
  EXPECT_EQ(kv::mass_mode(find_kv_policy("h2o")), kv::MassMode::accumulate);
}

// ---------------------------------------------------------------------------------------------
// Scores: each policy against its definition (double precision).

TEST(KvScores, EachPolicyMatchesItsDefinition) {
  const kv::LayerEntries e = random_entries({40, 33, 7}, 11);
  const int H = e.n_head_kv;
  for (const KVPolicy& p : kv_policies()) {
    if (p.name == "none") continue;
    KVPolicyOptions o = opts(p.name, 0.5);
    o.seed = 5;
    const std::vector<double> s = kv::score_entries(p, o, e, 3);
    for (int g = 0; g < H; ++g)
      for (int64_t j = 0; j < e.n[g]; ++j) {
        const size_t at = static_cast<size_t>(j * H + g);
        double want = 0;
        if (p.name == "vatp") want = double(e.mass[at]) * double(e.v_l1[at]);
        else if (p.name == "h2o" || p.name == "tova") want = e.mass[at];
        else if (p.name == "knorm") want = -double(e.k_l2[at]);
        else if (p.name == "streaming") want = e.pos[at];
        else if (p.name == "snapkv" || p.name == "pyramidkv") {
          // kvpress: avg_pool1d(kernel 5, stride 1, padding 2, count_include_pad): / 5 always.
          for (int64_t t = j - 2; t <= j + 2; ++t)
            if (t >= 0 && t < e.n[g]) want += e.mass[t * H + g];
          want /= 5.0;
        } else if (p.name == "random") {
          continue;  // below
        }
        EXPECT_DOUBLE_EQ(s[at], want) << p.name << " head " << g << " entry " << j;
      }
  }
  // random: a hash of (seed, layer, head, position): repeatable, seed-dependent, spread out.
  const KVPolicy& r = find_kv_policy("random");
  KVPolicyOptions a = opts("random", 0.5), b = a;
  b.seed = 1;
  const auto sa = kv::score_entries(r, a, e, 0), sa2 = kv::score_entries(r, a, e, 0), sb = kv::score_entries(r, b, e, 0),
             sl = kv::score_entries(r, a, e, 1);
  EXPECT_EQ(sa, sa2);
  EXPECT_NE(sa, sb);
  EXPECT_NE(sa, sl);
  std::set<double> distinct(sa.begin(), sa.end());
  EXPECT_GT(distinct.size(), 70u);
}

// ---------------------------------------------------------------------------------------------
// Selection.

// Brute force: sinks, then the window from the newest back, then by score (ties: earlier position).
std::vector<int32_t> brute_keep(const kv::LayerEntries& e, const std::vector<double>& s, int g, int64_t budget,
                                int sinks, int window) {
  const int H = e.n_head_kv;
  const int64_t n = e.n[g], want = std::min(budget, n);
  std::vector<char> taken(static_cast<size_t>(n), 0);
  int64_t got = 0;
  for (int64_t j = 0; j < n && got < want; ++j)
    if (e.pos[j * H + g] < sinks) taken[j] = 1, ++got;
  for (int64_t j = n - 1; j >= std::max<int64_t>(0, n - window) && got < want; --j)
    if (!taken[j]) taken[j] = 1, ++got;
  std::vector<int64_t> rest;
  for (int64_t j = 0; j < n; ++j)
    if (!taken[j]) rest.push_back(j);
  std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return s[a * H + g] > s[b * H + g]; });
  for (int64_t i = 0; i < want - got; ++i) taken[rest[i]] = 1;
  std::vector<int32_t> keep;
  for (int64_t j = 0; j < n; ++j)
    if (taken[j]) keep.push_back(static_cast<int32_t>(j));
  return keep;
}

TEST(KvSelect, EachHeadKeepsItsTopEntriesTiesByPosition) {
  uint32_t seed = 20;
  for (int distinct : {0, 3}) {  // 3 levels: many ties
    for (int64_t budget : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{100}}) {
      for (auto [sinks, window] : {std::pair{0, 0}, std::pair{4, 0}, std::pair{4, 8}, std::pair{0, 30}}) {
        const kv::LayerEntries e = random_entries({50, 17, 64}, ++seed, distinct);
        const std::vector<double> s = kv::score_entries(find_kv_policy("h2o"), opts("h2o", 0.5), e, 0);
        const auto keep = kv::select_entries(e, s, budget, sinks, window, false);
        ASSERT_EQ(keep.size(), 3u);
        for (int g = 0; g < 3; ++g) {
          EXPECT_EQ(keep[g], brute_keep(e, s, g, budget, sinks, window))
              << "head " << g << " budget " << budget << " sinks " << sinks << " window " << window
              << " distinct " << distinct;
          EXPECT_EQ(static_cast<int64_t>(keep[g].size()), std::min(budget, e.n[g]));
        }
      }
    }
  }
}

TEST(KvSelect, AdaptiveSpreadsTheLayerBudgetByScore) {
  // Head 1's scores dominate: it takes most of the layer's budget, the others keep their floor.
  kv::LayerEntries e = random_entries({60, 60, 60}, 31);
  for (int64_t j = 0; j < 60; ++j) e.mass[j * 3 + 1] += 10.0f;
  const auto s = kv::score_entries(find_kv_policy("h2o"), opts("h2o", 0.5), e, 0);
  const int64_t budget = 20;
  const auto keep = kv::select_entries(e, s, budget, 0, 0, true);
  int64_t total = 0;
  for (const auto& k : keep) total += static_cast<int64_t>(k.size());
  EXPECT_EQ(total, budget * 3);
  EXPECT_EQ(keep[0].size(), static_cast<size_t>(budget / 5));
  EXPECT_EQ(keep[2].size(), static_cast<size_t>(budget / 5));
  EXPECT_EQ(keep[1].size(), static_cast<size_t>(budget * 3 - 2 * (budget / 5)));
  // What a head keeps beyond its floor are the best of the pool: no unkept entry of any head
  // scores above the worst kept one of head 1.
  double worst_kept = INFINITY;
  for (int32_t j : keep[1]) worst_kept = std::min(worst_kept, s[j * 3 + 1]);
  for (int g : {0, 2}) {
    std::set<int32_t> k(keep[g].begin(), keep[g].end());
    for (int32_t j = 0; j < 60; ++j)
      if (!k.count(j)) {
        EXPECT_LE(s[j * 3 + g], worst_kept);
      }
  }
}

TEST(KvSelect, PyramidBudgetsShrinkWithDepthAndAverageTheBudget) {
  const KVPolicy& p = find_kv_policy("pyramidkv");
  const int L = 30;
  double sum = 0;
  int64_t prev = INT64_MAX;
  for (int l = 0; l < L; ++l) {
    const int64_t b = kv::layer_budget(p, 400, l, L, 4096);
    EXPECT_LE(b, prev);
    prev = b;
    sum += static_cast<double>(b);
  }
  EXPECT_NEAR(sum / L, 400, 1.0);
  EXPECT_EQ(kv::layer_budget(p, 400, 0, L, 4096), 780);  // 2·400 − 400/20
  EXPECT_EQ(kv::layer_budget(p, 400, L - 1, L, 4096), 20);
  EXPECT_EQ(kv::layer_budget(find_kv_policy("h2o"), 400, 7, L, 4096), 400);
}

// ---------------------------------------------------------------------------------------------
// The cache on each device.

class KvOnDevice : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!backend_available(GetParam())) GTEST_SKIP() << "no CUDA device";
    BackendOptions o;
    o.decode_q8 = false;
    be = make_backend(GetParam(), o);
  }
  std::shared_ptr<Backend> be;

  std::vector<float> get(const DeviceTensor& t) {
    std::vector<float> h(static_cast<size_t>(t.numel()));
    be->download(h.data(), t, ElemType::f32);
    return h;
  }
  std::vector<int32_t> get_i32(const DeviceTensor& t) {
    std::vector<int32_t> h(static_cast<size_t>(t.numel()));
    be->download(h.data(), t, ElemType::i32);
    return h;
  }
  DeviceTensor put(const std::vector<float>& h, int64_t rows, int64_t cols, ElemType t) {
    DeviceTensor d = be->alloc(t, rows, cols, "test");
    be->upload(d, h.data(), ElemType::f32);
    return d;
  }
  DeviceTensor put_i32(const std::vector<int32_t>& h, int64_t rows, int64_t cols = 1) {
    DeviceTensor d = be->alloc(ElemType::i32, rows, cols, "test");
    be->upload(d, h.data(), ElemType::i32);
    return d;
  }
};

INSTANTIATE_TEST_SUITE_P(Devices, KvOnDevice, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

// Fills a one-layer cache with n entries through the ops (qkv_rope_append of rows qkv at positions
// 0..n-1, identity RoPE frequencies so the cached K/V are the inputs).
struct Filled {
  std::vector<float> k, v;  // [n x kv_dim] as appended (rounded like the device)
};

// Prefill n rows with key mass, compact to chosen entries per head, then decode two rows with key
// mass: the cache's K/V/positions are exactly the kept entries, the mass of each kept entry is its
// prefill mass plus what the decode queries gave it (naive double sums over the same queries), and
// decode attention equals a naive attention over the kept entries.
TEST_P(KvOnDevice, CompactionKeepsEntriesMassAndAttention) {
  const int n_head = 4, H = 2, hd = 64;
  const int64_t q_dim = n_head * hd, kv_dim = H * hd, n = 40;
  KVCache cache(*be, 1, H, hd, 256, /*track_mass=*/true);
  cache.reserve(n);
  const auto qkv = random_values(static_cast<size_t>(n * (q_dim + 2 * kv_dim)), 41, -2, 2);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), 0);
  const std::vector<float> zero_freq(hd / 2, 0.0f);  // RoPE by angle 0: K as given
  const DeviceTensor inv = put(zero_freq, 1, hd / 2, ElemType::f32);
  DeviceTensor q = be->alloc(be->activation_type(), n, q_dim, "q"), out = be->alloc(be->activation_type(), n, q_dim, "o");
  const DeviceTensor pos_t = put_i32(pos, n);
  be->qkv_rope_append(put(qkv, n, q_dim + 2 * kv_dim, be->activation_type()), pos_t, inv, n_head, H, hd, q,
                      cache.layer(0));
  AttentionStats st;
  st.key_mass = cache.layer(0).mass;
  be->attention(q, pos_t, cache.layer(0), n, n_head, H, hd, out, &st);
  cache.grow(0, n);
  EXPECT_EQ(cache.entries(), 2 * n);

  // Host copies of what was appended, and the naive prefill mass.
  const auto Q = get(q);
  std::vector<float> K(static_cast<size_t>(n * kv_dim)), V = K;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < kv_dim; ++c) {
      K[r * kv_dim + c] = bf16_round(qkv[r * (q_dim + 2 * kv_dim) + q_dim + c]);
      V[r * kv_dim + c] = bf16_round(qkv[r * (q_dim + 2 * kv_dim) + q_dim + kv_dim + c]);
    }
  // mass[j][g] over queries (rows, heads of the group) that see entry j of head g's entries `ent`.
  const auto naive = [&](const std::vector<float>& qs, const std::vector<int32_t>& qp,
                         const std::vector<std::vector<int64_t>>& ent, std::vector<std::vector<double>>& mass,
                         std::vector<float>* att) {
    const int64_t rows = static_cast<int64_t>(qp.size());
    for (int h = 0; h < n_head; ++h) {
      const int g = h / (n_head / H);
      for (int64_t i = 0; i < rows; ++i) {
        std::vector<double> p(ent[g].size(), 0.0);
        double mx = -INFINITY, sum = 0;
        for (size_t e = 0; e < ent[g].size(); ++e) {
          if (ent[g][e] > qp[i]) continue;  // entry index = its position here
          double dot = 0;
          for (int t = 0; t < hd; ++t) dot += double(qs[i * q_dim + h * hd + t]) * K[ent[g][e] * kv_dim + g * hd + t];
          p[e] = dot / std::sqrt(double(hd));
          mx = std::max(mx, p[e]);
        }
        for (size_t e = 0; e < ent[g].size(); ++e) sum += ent[g][e] <= qp[i] ? (p[e] = std::exp(p[e] - mx)) : (p[e] = 0);
        for (size_t e = 0; e < ent[g].size(); ++e) {
          mass[g][e] += p[e] / sum;
          if (att)
            for (int t = 0; t < hd; ++t) (*att)[i * q_dim + h * hd + t] += float(p[e] / sum * V[ent[g][e] * kv_dim + g * hd + t]);
        }
      }
    }
  };
  std::vector<std::vector<int64_t>> all(H);
  for (int g = 0; g < H; ++g)
    for (int64_t j = 0; j < n; ++j) all[g].push_back(j);
  std::vector<std::vector<double>> mass(H, std::vector<double>(n, 0.0));
  naive(Q, pos, all, mass, nullptr);
  const double tol = be->activation_type() == ElemType::f32 ? 1e-4 : 3e-2;
  {
    const auto m = get(cache.layer(0).mass);
    for (int g = 0; g < H; ++g)
      for (int64_t j = 0; j < n; ++j) EXPECT_NEAR(m[j * H + g], mass[g][j], tol * 4) << "prefill mass " << g << "," << j;
  }

  // Compact: different entries and counts per head.
  const std::vector<std::vector<int32_t>> keep = {{0, 1, 5, 9, 22, 38, 39}, {0, 3, 17, 39}};
  cache.compact(0, keep, 16);
  EXPECT_EQ(cache.layer(0).n, (std::vector<int64_t>{7, 4}));
  EXPECT_EQ(cache.entries(), 11);
  EXPECT_LT(cache.layer(0).k.rows(), 40) << "a large share was evicted: smaller storage";
  const auto kk = get(cache.layer(0).k), vv = get(cache.layer(0).v);
  const auto pp = get_i32(cache.layer(0).pos);
  const auto mm = get(cache.layer(0).mass);
  std::vector<std::vector<int64_t>> kept(H);
  std::vector<std::vector<double>> kept_mass(H);
  for (int g = 0; g < H; ++g)
    for (size_t i = 0; i < keep[g].size(); ++i) {
      const int64_t j = keep[g][i];
      kept[g].push_back(j);
      kept_mass[g].push_back(mass[g][j]);
      EXPECT_EQ(pp[i * H + g], j);
      EXPECT_NEAR(mm[i * H + g], mass[g][j], tol * 4);
      for (int t = 0; t < hd; ++t) {
        ASSERT_EQ(kk[i * kv_dim + g * hd + t], K[j * kv_dim + g * hd + t]) << "k head " << g << " entry " << i;
        ASSERT_EQ(vv[i * kv_dim + g * hd + t], V[j * kv_dim + g * hd + t]) << "v head " << g << " entry " << i;
      }
    }

  // Two decode steps with mass: attention over the kept entries + the new one; mass carried.
  for (int step = 0; step < 2; ++step) {
    const int32_t p = 40 + step;
    cache.reserve(1);
    cache.sync();
    const auto x = random_values(static_cast<size_t>(q_dim + 2 * kv_dim), 60 + step, -2, 2);
    DeviceTensor q1 = be->alloc(be->activation_type(), 1, q_dim, "q1"), o1 = be->alloc(be->activation_type(), 1, q_dim, "o1");
    const DeviceTensor p1 = put_i32({p}, 1);
    be->qkv_rope_append(put(x, 1, q_dim + 2 * kv_dim, be->activation_type()), p1, inv, n_head, H, hd, q1, cache.layer(0));
    AttentionStats s1;
    s1.key_mass = cache.layer(0).mass;
    be->attention(q1, p1, cache.layer(0), 1, n_head, H, hd, o1, &s1);
    cache.grow(0, 1);
    // The reference's K/V of the new entry.
    K.resize(static_cast<size_t>((p + 1) * kv_dim));
    V.resize(K.size());
    for (int64_t c = 0; c < kv_dim; ++c) {
      K[p * kv_dim + c] = bf16_round(x[q_dim + c]);
      V[p * kv_dim + c] = bf16_round(x[q_dim + kv_dim + c]);
    }
    for (int g = 0; g < H; ++g) {
      kept[g].push_back(p);
      kept_mass[g].push_back(0.0);
    }
    std::vector<float> want(static_cast<size_t>(q_dim), 0.0f);
    naive(get(q1), {p}, kept, kept_mass, &want);
    const auto got = get(o1);
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(double(want[i])));
      max_err = std::max(max_err, std::fabs(double(got[i]) - want[i]));
    }
    EXPECT_LE(max_err, tol * std::max(max_ref, 1e-6)) << "decode attention over the kept entries, step " << step;
    const auto m = get(cache.layer(0).mass);
    for (int g = 0; g < H; ++g)
      for (size_t i = 0; i < kept[g].size(); ++i)
        EXPECT_NEAR(m[i * H + g], kept_mass[g][i], tol * 4) << "mass after step " << step << " head " << g << " entry " << i;
  }
}

// Compaction that keeps most entries reuses the storage (scratch gather + copy back): same result.
TEST_P(KvOnDevice, CompactionInPlaceKeepsTheChosenEntries) {
  const int H = 3, hd = 32;
  const int64_t kv_dim = H * hd, n = 64;
  KVCache cache(*be, 2, H, hd, 128, /*track_mass=*/true);
  cache.reserve(n);
  const auto k = random_values(static_cast<size_t>(cache.layer(1).k.numel()), 70);
  be->upload(cache.layer(1).k, k.data(), ElemType::f32);
  std::vector<int32_t> pos(static_cast<size_t>(cache.layer(1).pos.numel()));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i / H);
  be->upload(cache.layer(1).pos, pos.data(), ElemType::i32);
  cache.grow(1, n);
  const int64_t rows_before = cache.layer(1).k.rows();
  const size_t cap_before = cache.capacity_bytes();
  std::vector<std::vector<int32_t>> keep(H);
  for (int g = 0; g < H; ++g)
    for (int32_t j = 0; j < n; ++j)
      if (j % (g + 5) != 1) keep[g].push_back(j);
  cache.compact(1, keep, 8);
  EXPECT_EQ(cache.layer(1).k.rows(), rows_before) << "most entries kept: the storage stays";
  EXPECT_EQ(cache.capacity_bytes(), cap_before);
  const auto kk = get(cache.layer(1).k);
  const auto pp = get_i32(cache.layer(1).pos);
  const auto mm = get(cache.layer(1).mass);
  for (int g = 0; g < H; ++g) {
    ASSERT_EQ(cache.layer(1).n[g], static_cast<int64_t>(keep[g].size()));
    for (size_t i = 0; i < keep[g].size(); ++i) {
      EXPECT_EQ(pp[i * H + g], keep[g][i]);
      for (int t = 0; t < hd; ++t)
        ASSERT_EQ(kk[i * kv_dim + g * hd + t], bf16_round(k[keep[g][i] * kv_dim + g * hd + t]));
    }
    for (int64_t i = static_cast<int64_t>(keep[g].size()); i < n; ++i)
      EXPECT_EQ(mm[i * H + g], 0.0f) << "rows past the kept ones are new entries: no mass";
  }
  EXPECT_EQ(cache.layer(0).n, (std::vector<int64_t>{0, 0, 0})) << "other layers untouched";
  EXPECT_THROW(cache.compact(1, {{3, 2}, {}, {}}, 0), Error) << "indices must ascend";
  EXPECT_THROW(cache.compact(1, {{1000}, {}, {}}, 0), Error) << "indices must be entries";
}

// Entries appended out of position order (LazyLLM's revival) move into place: every head's K, V
// and positions become the permuted entries exactly, only from the first moved entry on; a bad
// permutation is refused.
TEST_P(KvOnDevice, PlaceAppendedPutsEntriesInPositionOrder) {
  const int H = 2, hd = 32;
  const int64_t kv_dim = H * hd, n = 10, m = 3;
  KVCache cache(*be, 1, H, hd, 64);
  cache.reserve(n + m);
  const auto k = random_values(static_cast<size_t>(cache.layer(0).k.numel()), 90);
  const auto v = random_values(static_cast<size_t>(cache.layer(0).v.numel()), 91);
  be->upload(cache.layer(0).k, k.data(), ElemType::f32);
  be->upload(cache.layer(0).v, v.data(), ElemType::f32);
  // Cached entries at even positions 0..18; appended ones at 5, 11 and 30 (the newest token).
  std::vector<int32_t> at(static_cast<size_t>(n + m));
  for (int64_t j = 0; j < n; ++j) at[j] = static_cast<int32_t>(2 * j);
  at[n] = 5, at[n + 1] = 11, at[n + 2] = 30;
  std::vector<int32_t> pos(static_cast<size_t>(cache.layer(0).pos.numel()), 0);
  for (size_t j = 0; j < at.size(); ++j)
    for (int g = 0; g < H; ++g) pos[j * H + g] = at[j];
  be->upload(cache.layer(0).pos, pos.data(), ElemType::i32);
  cache.grow(0, n);
  std::vector<int32_t> order(static_cast<size_t>(n + m));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return at[a] < at[b]; });
  cache.place_appended(0, m, order);
  cache.grow(0, m);
  const auto kk = get(cache.layer(0).k), vv = get(cache.layer(0).v);
  const auto pp = get_i32(cache.layer(0).pos);
  for (int64_t i = 0; i < n + m; ++i)
    for (int g = 0; g < H; ++g) {
      EXPECT_EQ(pp[i * H + g], at[order[i]]) << "entry " << i;
      if (i > 0) {
        EXPECT_LT(pp[(i - 1) * H + g], pp[i * H + g]) << "positions ascend";
      }
      for (int t = 0; t < hd; ++t) {
        ASSERT_EQ(kk[i * kv_dim + g * hd + t], bf16_round(k[order[i] * kv_dim + g * hd + t]));
        ASSERT_EQ(vv[i * kv_dim + g * hd + t], bf16_round(v[order[i] * kv_dim + g * hd + t]));
      }
    }
  std::vector<int32_t> twice(static_cast<size_t>(n + m + 1), 0);
  EXPECT_THROW(cache.place_appended(0, 1, twice), Error) << "not a permutation";
  std::vector<int32_t> shortened(order.begin(), order.end() - 1);
  EXPECT_THROW(cache.place_appended(0, 1, shortened), Error) << "wrong size";
}

// The aux cache: what goes in at a stage comes out bit for bit (also after the storage is
// compacted and regrown), positions are listed ascending, the budget drops the oldest entries
// first and counts them, bytes follow the entries.
TEST_P(KvOnDevice, AuxCacheRoundTripAndBudget) {
  const int d = 24;
  const ElemType r = be->residual_type();
  AuxCache aux(*be, d, 2, 512, /*budget=*/0);
  const auto xs = random_values(static_cast<size_t>(200 * d), 92);
  const DeviceTensor x = put(xs, 200, d, r);
  std::vector<int32_t> rows, positions;
  for (int32_t i = 0; i < 100; ++i) rows.push_back(2 * i), positions.push_back(300 + i);
  aux.put(1, x, rows, positions);
  EXPECT_EQ(aux.entries(), 100);
  EXPECT_EQ(aux.bytes(), 100u * d * elem_bytes(r));
  EXPECT_EQ(aux.positions(1), positions);
  EXPECT_TRUE(aux.positions(0).empty());
  EXPECT_THROW(aux.put(1, x, {0}, {300}), Error) << "already held";
  // Take every third, then store more so the storage is compacted, then take some of both.
  std::vector<int32_t> first;
  for (int32_t i = 0; i < 100; i += 3) first.push_back(300 + i);
  DeviceTensor out = be->alloc(r, 200, d, "out");
  aux.take(1, first, out);
  const auto got = get(out);
  for (size_t i = 0; i < first.size(); ++i)
    for (int t = 0; t < d; ++t) ASSERT_EQ(got[i * d + t], xs[(2 * (first[i] - 300)) * d + t]) << i;
  EXPECT_FALSE(aux.holds(1, 300));
  EXPECT_TRUE(aux.holds(1, 301));
  std::vector<int32_t> more_rows, more_pos;
  for (int32_t i = 0; i < 180; ++i) more_rows.push_back(i), more_pos.push_back(i);  // past the first storage: compacted
  aux.put(1, x, more_rows, more_pos);
  const std::vector<int32_t> mixed = {5, 301, 149, 398};
  aux.take(1, mixed, out);
  const auto got2 = get(out);
  const int32_t src[] = {5, 2 * 1, 149, 2 * 98};
  for (size_t i = 0; i < mixed.size(); ++i)
    for (int t = 0; t < d; ++t) ASSERT_EQ(got2[i * d + t], xs[src[i] * d + t]) << mixed[i];
  EXPECT_EQ(aux.entries(), 100 - static_cast<int64_t>(first.size()) + 180 - 4);
  EXPECT_THROW(aux.take(1, {300}, out), Error) << "not held any more";

  AuxCache small(*be, d, 2, 512, /*budget=*/5);
  small.put(0, x, {0, 1, 2}, {10, 11, 12});
  small.put(1, x, {3, 4}, {20, 21});
  EXPECT_EQ(small.dropped(), 0);
  small.take(0, {11}, out);
  small.put(1, x, {5, 6, 7}, {22, 23, 24});  // 7 held: the two oldest (10, 12) go
  EXPECT_EQ(small.entries(), 5);
  EXPECT_EQ(small.dropped(), 2);
  EXPECT_TRUE(small.positions(0).empty());
  EXPECT_EQ(small.positions(1), (std::vector<int32_t>{20, 21, 22, 23, 24}));
  small.clear();
  EXPECT_EQ(small.entries(), 0);
  EXPECT_EQ(small.dropped(), 0);
  EXPECT_EQ(small.bytes(), 0u);
}

// ---------------------------------------------------------------------------------------------
// The Session.

ModelConfig small_config(int n_layer = 3) {
  ModelConfig c;
  c.arch = "llama";
  c.name = "kv-random";
  c.n_vocab = 256;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 64;
  c.n_embd = 128;
  c.n_ff = 256;
  c.n_layer = n_layer;
  c.n_ctx_train = 4096;
  c.rope_theta = 10000.0f;
  return c;
}

using testing::random_ids;

SessionOptions session_options(const std::string& device, const KVPolicyOptions& kv, const PrunePlan& plan = {}) {
  SessionOptions o;
  o.device = device;
  o.decode_q8 = false;
  o.kv_type = testing::reference_kv_type(device);
  o.n_ctx = 1024;
  o.n_threads = 2;
  o.kv = kv;
  o.prune = plan;
  return o;
}

// Budget 1: every policy runs (scores tracked) and evicts nothing: logits bit-identical to dense
// through prefill and decode.
TEST_P(KvOnDevice, BudgetOneIsBitIdenticalToDense) {
  const auto model = random_model(small_config(), 3);
  const auto ids = random_ids(150, 256, 4);
  Session dense(*model, session_options(GetParam(), KVPolicyOptions{}));
  std::vector<std::vector<float>> want = {dense.prefill(ids)};
  for (int i = 0; i < 6; ++i) want.push_back(dense.decode(i * 7 + 1));
  for (const KVPolicy& p : kv_policies()) {
    if (p.name == "none") continue;
    Session s(*model, session_options(GetParam(), opts(p.name, 1.0, 4, 8)));
    EXPECT_EQ(s.prefill(ids), want[0]) << p.name;
    for (int i = 0; i < 6; ++i) EXPECT_EQ(s.decode(i * 7 + 1), want[i + 1]) << p.name << " decode " << i;
    // Mass, where the policy tracks it, costs 4 bytes per entry beside K, V (2·64 floats) and the position.
    const size_t per = 2 * 64 * (GetParam() == "cpu" ? 4 : 2) + 4, extra = kv::mass_mode(p) == kv::MassMode::none ? 0 : 4;
    EXPECT_EQ(s.kv_bytes(), dense.kv_bytes() / per * (per + extra)) << p.name;
  }
}

// A budget keeps that many entries in every head of every layer after prefill (sinks and the
// window among them), the bytes drop by the evicted share and the storage shrinks; decode holds
// the budget at every --kv-interval; a later prefill is appended in full.
TEST_P(KvOnDevice, BudgetHoldsThroughPrefillAndDecode) {
  const ModelConfig c = small_config();
  const auto model = random_model(c, 5);
  const auto ids = random_ids(200, 256, 6);
  Session dense(*model, session_options(GetParam(), KVPolicyOptions{}));
  dense.prefill(ids);
  for (const KVPolicy& p : kv_policies()) {
    if (p.name == "none") continue;
    KVPolicyOptions o = opts(p.name, 0.25, 4, 8);
    o.interval = 3;
    Session s(*model, session_options(GetParam(), o));
    s.prefill(ids);
    const int64_t budget = 50;
    for (int l = 0; l < c.n_layer; ++l) {
      const int64_t b = kv::layer_budget(p, budget, l, c.n_layer, 200);
      for (int g = 0; g < c.n_head_kv; ++g) {
        EXPECT_EQ(s.kv_entries(l)[g], b) << p.name << " layer " << l << " head " << g;
        const auto kept = s.cached_positions(l, g);
        ASSERT_EQ(static_cast<int64_t>(kept.size()), b);
        EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
        for (int32_t sink = 0; sink < std::min<int64_t>(4, b); ++sink)
          EXPECT_EQ(kept[sink], sink) << p.name << ": sinks kept";
        const int64_t window = o.window_or_default(b);
        for (int w = 0; w < std::min<int64_t>(window, b - 4); ++w)
          EXPECT_EQ(kept[b - 1 - w], 199 - w) << p.name << ": the window kept";
      }
    }
    if (p.name != "pyramidkv") {
      // Dense bytes per entry + mass: the share kept is exactly budget/prompt.
      const double per = kv::mass_mode(p) == kv::MassMode::none ? 1.0 : 1.0 + 4.0 / (2 * 64 * (GetParam() == "cpu" ? 4 : 2) + 4);
      EXPECT_NEAR(double(s.kv_bytes()) / (double(dense.kv_bytes()) * per), 0.25, 1e-9) << p.name;
    }
    EXPECT_LT(s.kv_capacity_bytes(), dense.kv_capacity_bytes() / 2) << p.name << ": storage returned";
    EXPECT_GE(s.kv_peak_bytes(), s.kv_bytes());
    EXPECT_EQ(s.last_stats().kv_bytes, s.kv_bytes());
    EXPECT_GT(s.last_stats().kv_bytes_before, s.kv_bytes());
    // Decode: every 3 steps back to the budget (policies that evict in decode); else it grows.
    for (int i = 1; i <= 7; ++i) {
      s.decode(i);
      const int64_t e = s.kv_entries(1)[0], b1 = kv::layer_budget(p, budget, 1, c.n_layer, 200);
      if (p.evicts_in_decode) {
        EXPECT_EQ(e, b1 + i % 3) << p.name << " step " << i;
      }
      else EXPECT_EQ(e, b1 + i) << p.name << " step " << i;
    }
    // A later prefill (a question after the compressed context) is appended in full and raises the
    // budget: nothing of it is evicted.
    const int64_t before = s.kv_entries(2)[1];
    s.prefill(random_ids(30, 256, 9));
    EXPECT_EQ(s.kv_entries(2)[1], before + 30) << p.name;
    const auto kept = s.cached_positions(2, 1);
    EXPECT_EQ(kept.back(), 200 + 7 + 29) << p.name;
  }
}

// The entries kept are the policy's top entries: for h2o with a budget, the positions a head keeps
// after prefill are those of the highest accumulated attention that a budget-1 session recorded.
TEST_P(KvOnDevice, KeptEntriesAreTheTopScoresOfTheDenseStatistics) {
  const ModelConfig c = small_config(2);
  const auto model = random_model(c, 8);
  const auto ids = random_ids(120, 256, 10);
  // streaming's score is the position: the kept set is known in closed form.
  Session s(*model, session_options(GetParam(), opts("streaming", 0.25, 4, 0)));
  s.prefill(ids);
  for (int l = 0; l < c.n_layer; ++l)
    for (int g = 0; g < c.n_head_kv; ++g) {
      std::vector<int32_t> want = {0, 1, 2, 3};
      for (int32_t p = 120 - 26; p < 120; ++p) want.push_back(p);
      EXPECT_EQ(s.cached_positions(l, g), want) << "layer " << l << " head " << g;
    }
  // knorm keeps the smallest key norms: different heads keep different tokens.
  Session k(*model, session_options(GetParam(), opts("knorm", 0.25, 0, 0)));
  k.prefill(ids);
  EXPECT_NE(k.cached_positions(1, 0), k.cached_positions(1, 1)) << "per-head selection";
}

// Pruning composes: a layer holds at most the tokens pruning let reach it and at most the budget.
TEST_P(KvOnDevice, ComposesWithPruning) {
  const ModelConfig c = small_config(4);
  const auto model = random_model(c, 11);
  const auto ids = random_ids(200, 256, 12);
  PrunePlan plan;
  plan.method = "random";
  plan.layers = {2};
  plan.keep_ratios = {0.3f};
  plan.keep_first = 4;
  Session s(*model, session_options(GetParam(), opts("h2o", 0.4, 4, 4), plan));
  s.prefill(ids);
  const auto& alive = s.last_stats().alive_per_layer;
  ASSERT_EQ(alive.size(), 4u);
  for (int l = 0; l < 4; ++l)
    for (int g = 0; g < c.n_head_kv; ++g)
      EXPECT_EQ(s.kv_entries(l)[g], std::min<int64_t>(alive[l], 80)) << "layer " << l;
  const auto kept = s.cached_positions(3, 0);
  const auto& pruned = s.last_stats().kept_positions[0];
  for (int32_t p : kept) EXPECT_TRUE(std::binary_search(pruned.begin(), pruned.end(), p)) << p;
}

// A new policy starts a new sequence; bad options are usage errors before anything runs.
TEST(KvSession, SetPolicyResetsAndValidates) {
  const auto model = random_model(small_config(), 13);
  Session s(*model, session_options("cpu", KVPolicyOptions{}));
  s.prefill(random_ids(50, 256, 14));
  EXPECT_EQ(s.n_past(), 50);
  s.set_kv_policy(opts("vatp", 0.5));
  EXPECT_EQ(s.n_past(), 0);
  EXPECT_EQ(s.kv_bytes(), 0u);
  EXPECT_THROW(s.set_kv_policy(opts("vatp", 2.5)), UsageError);
  EXPECT_THROW(Session(*model, session_options("cpu", opts("nope", 0.5))), UsageError);
  EXPECT_THROW(s.cached_positions(0, 2), UsageError);
}

}  // namespace
}  // namespace sdtp
