// LazyLLM (arXiv 2407.14057, method "lazyllm"): prefill prunes like "attn"; every decode step the
// new token's attention at the layer before each stage chooses again, and chosen tokens whose
// hidden state the aux cache holds are revived through that stage's layers. Checked on the 6-layer
// tiny model, against the Session's own observables (cached_positions, aux_positions, ForwardStats)
// and the stepwise naive reference (testing/naive_llama.h), which is fed, per call and layer, the
// tokens the session computed there (what the layer's cache gained): keep ratio 1 is dense bit for
// bit; logits with revivals equal the reference's; the revived tokens are the ones the reference's
// attention selects; caches only grow and stay progressive; the aux budget drops the oldest
// entries, whose tokens never come back; the prefill is attn's; bad options are usage errors.
// Each case runs on the CPU and on CUDA (skipped, visibly, without a device; the reference then
// runs on the bf16-rounded weights CUDA holds, within bf16 tolerance).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "prune/selector.h"
#include "sdtp/error.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"
#include "testing/naive_llama.h"

namespace sdtp {
namespace {

using testing::NaiveLlama;
using Positions = std::vector<int32_t>;

// CPU float32 against the double reference. CUDA (bf16 activations, float32 accumulation) against
// the reference on the same bf16 weights: the bound of the tiny fixtures' prefill in
// test_session_devices.cpp (a wrong op or a wrong token set is off by O(1)).
constexpr double kTolCpu = 1e-5;
constexpr double kTolCuda = 5e-2;
// Head-averaged attention probabilities (about 1/50 here) the engine and the reference may order
// differently: float against double rounding on the CPU.
constexpr double kScoreTieCpu = 1e-5;

PrunePlan lazy_plan(std::vector<int> layers, std::vector<float> ratios, int keep_first,
                    int64_t aux_budget = 0, const std::string& method = "lazyllm") {
  PrunePlan p;
  p.method = method;
  p.layers = std::move(layers);
  p.keep_ratios = std::move(ratios);
  p.keep_first = keep_first;
  p.aux_budget = aux_budget;
  return p;
}

// decode_q8 off: float32 everywhere on the CPU, as the reference tests run.
SessionOptions options(const std::string& device, const PrunePlan& plan = {}) {
  SessionOptions o;
  o.device = device;
  o.decode_q8 = false;
  o.kv_type = testing::reference_kv_type(device);
  o.n_threads = 2;
  o.prune = plan;
  return o;
}

// The 6-layer model; for CUDA its weights rounded to bf16 first, so that the reference and the
// CPU run on the numbers the device holds (done before the first session places them).
std::unique_ptr<Model> model_for(const std::string& device) {
  auto m = testing::six_layer_model();
  if (device == "cpu") return m;
  ModelWeights& w = m->weights;
  std::vector<Tensor*> ts = {&w.tok_embd, &w.output, &w.output_norm};
  for (LayerWeights& l : w.layers)
    for (Tensor* t : {&l.attn_norm, &l.ffn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.w_gate,
                      &l.w_up, &l.w_down})
      ts.push_back(t);
  for (Tensor* t : ts)
    for (float& x : t->data) x = testing::bf16_round(x);
  return m;
}

int32_t decode_id(int step, int vocab) {
  return (step * 53 + 7) % vocab;
}

// The calls a test makes: a prompt, decode steps, a second prompt at call `second_at` (a new turn,
// pruned like the first, its pruned tokens revivable too), more decode steps.
struct Schedule {
  int first, second, second_at;
  uint32_t seed;
  bool prefill(int call) const { return call == 0 || call == second_at; }
  std::vector<int32_t> ids(int call, int vocab) const {
    if (call == 0) return testing::random_ids(first, vocab, seed);
    if (call == second_at) return testing::random_ids(second, vocab, seed + 1);
    return {decode_id(call, vocab)};
  }
};

bool contains(const Positions& v, int32_t p) {
  return std::binary_search(v.begin(), v.end(), p);
}

bool is_subset(const Positions& a, const Positions& b) {  // a within b (both ascending)
  return std::includes(b.begin(), b.end(), a.begin(), a.end());
}

Positions minus(const Positions& a, const Positions& b) {
  Positions out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

std::string str(const Positions& v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s + "}";
}

// What the session's caches hold between calls.
struct Snapshot {
  std::vector<Positions> layers;  // cached_positions(l), KV head 0
  std::vector<Positions> aux;     // aux_positions(s)
};

Snapshot snapshot(const Session& s) {
  Snapshot out;
  for (int l = 0; l < s.model().config.n_layer; ++l) out.layers.push_back(s.cached_positions(l));
  for (size_t st = 0; st < s.prune().layers.size(); ++st)
    out.aux.push_back(s.aux_positions(static_cast<int>(st)));
  return out;
}

// How many leading layers hold position p (its K/V exist in layers [0, reach)).
int reach(const Snapshot& s, int32_t p) {
  int r = 0;
  while (r < static_cast<int>(s.layers.size()) && contains(s.layers[r], p)) ++r;
  return r;
}

// One prefill or decode call and what it changed: per layer, the positions computed in it (what
// the layer's cache gained; with no KV policy nothing leaves a cache).
struct Call {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  ForwardStats stats;
  Snapshot before, after;
  std::vector<Positions> computed;
};

Call run_call(Session& s, const std::vector<int32_t>& ids, bool prefill) {
  Call c;
  c.ids = ids;
  c.before = snapshot(s);
  c.logits = prefill ? s.prefill(ids) : s.decode(ids.at(0));
  c.stats = s.last_stats();
  c.after = snapshot(s);
  for (size_t l = 0; l < c.after.layers.size(); ++l)
    c.computed.push_back(minus(c.after.layers[l], c.before.layers[l]));
  return c;
}

// max |got - ref| / max |ref|, NaN failing.
double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(got[i] - ref[i]);
    num = std::isnan(d) ? INFINITY : std::max(num, d);
    den = std::max(den, std::fabs(ref[i]));
  }
  return num / std::max(den, 1e-30);
}

// Whether `revived` is what a stage selects among `eligible` (tokens whose reach is the stage's
// layer, hidden state at hand), up to near-ties: the top k of all entries of the layer before by
// the reference's head-averaged attention, positions below keep_first first (and the new token,
// the last entry, when force_new), ties to the earlier position. A token on the wrong side of the
// cut passes only within `tie` of the cut's score.
bool selection_matches(const NaiveLlama::RowAttention& att, int64_t k, int keep_first, bool force_new,
                       const std::set<int32_t>& eligible, const std::set<int32_t>& revived, double tie,
                       std::string* why) {
  const size_t n = att.positions.size();
  const auto forced = [&](size_t i) { return att.positions[i] < keep_first || (force_new && i + 1 == n); };
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (forced(a) != forced(b)) return forced(a);
    return att.probs[a] > att.probs[b];
  });
  std::map<int32_t, double> score;
  for (size_t i = 0; i < n; ++i) score[att.positions[i]] = att.probs[i];
  double cut_in = INFINITY, cut_out = -INFINITY;  // lowest selected (not forced), highest not selected
  std::set<int32_t> selected;
  for (size_t j = 0; j < n; ++j) {
    const size_t i = order[j];
    if (static_cast<int64_t>(selected.size()) < k || forced(i)) {
      selected.insert(att.positions[i]);
      if (!forced(i)) cut_in = std::min(cut_in, att.probs[i]);
    } else {
      cut_out = std::max(cut_out, att.probs[i]);
    }
  }
  bool ok = true;
  for (int32_t p : eligible) {
    const bool want = selected.count(p) > 0, got = revived.count(p) > 0;
    if (want == got) continue;
    const bool near_tie = want ? score[p] <= cut_out + tie : score[p] >= cut_in - tie;
    if (!near_tie) {
      ok = false;
      *why += " position " + std::to_string(p) +
              (want ? " selected, not revived" : " revived, not selected") + " (score " +
              std::to_string(score[p]) + ", cut " + std::to_string(want ? cut_out : cut_in) + ");";
    }
  }
  return ok;
}

class LazyLLM : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!backend_available(GetParam())) GTEST_SKIP() << "no " << GetParam() << " device";
  }
  bool cpu() const { return GetParam() == "cpu"; }
  double tol() const { return cpu() ? kTolCpu : kTolCuda; }
};

// Keep ratio 1 at every stage: nothing is pruned, nothing revived, and every call computes what
// the dense session computes: the same logits to the bit on the CPU (float32 and q8 decode), and
// within bf16 tolerance on CUDA (where the stage layers may run another attention kernel, with
// statistics), with the same cached positions.
TEST_P(LazyLLM, KeepRatioOneIsBitIdenticalToDense) {
  auto m = model_for(GetParam());
  const int vocab = m->config.n_vocab;
  const std::vector<int32_t> ids = testing::random_ids(40, vocab, 11);
  for (const bool q8 : cpu() ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
    SessionOptions od = options(GetParam()),
                   ol = options(GetParam(), lazy_plan({1, 3, 5}, {1.0f, 1.0f, 1.0f}, 2));
    od.decode_q8 = ol.decode_q8 = q8;
    Session dense(*m, od), lazy(*m, ol);
    const std::string what = std::string(q8 ? "q8 " : "f32 ") + GetParam();
    double worst = 0;
    for (int call = 0; call <= 32; ++call) {
      const std::vector<float> want = call == 0 ? dense.prefill(ids) : dense.decode(decode_id(call, vocab));
      const std::vector<float> got = call == 0 ? lazy.prefill(ids) : lazy.decode(decode_id(call, vocab));
      ASSERT_EQ(got.size(), want.size());
      if (cpu())
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
            << what << " call " << call;
      else
        worst = std::max(worst, testing::max_rel_error(got.data(), want.data(), want.size()));
      for (int l = 0; l < m->config.n_layer; ++l)
        ASSERT_EQ(lazy.cached_positions(l), dense.cached_positions(l))
            << what << " call " << call << " layer " << l;
      const ForwardStats& st = lazy.last_stats();
      EXPECT_EQ(st.revived, 0) << what << " call " << call;
      EXPECT_EQ(st.aux_entries, 0) << what << " call " << call;
      EXPECT_EQ(st.computed_pairs, st.dense_pairs) << what << " call " << call;
      for (int s = 0; s < 3; ++s) EXPECT_TRUE(lazy.aux_positions(s).empty()) << what << " stage " << s;
    }
    if (!cpu()) {
      std::printf("[lazyllm] keep ratio 1 vs dense on %s, 33 calls: max rel err %.3e\n", GetParam().c_str(),
                  worst);
      EXPECT_LE(worst, kTolCuda);
    }
  }
}

// Two stages that halve the tokens: 48 prompt tokens, 12 decode steps, a second prompt of 24, 23
// more steps (decode revives from both prompts' pruned tokens). After each call the
// reference computes, at each layer, exactly what the session's cache of that layer gained (it
// throws if that is not progressive: a token computed at a layer it has no hidden state for), and
// the logits must agree. The decode steps must revive tokens (else nothing here is tested), the
// counters must count what the caches gained at the stage layers, and (CPU) the revived tokens
// must be the ones the reference's attention selects at the layer before each stage.
TEST_P(LazyLLM, MatchesNaiveReferenceWithRevivals) {
  auto m = model_for(GetParam());
  const int vocab = m->config.n_vocab, n_layer = m->config.n_layer;
  const PrunePlan plan = lazy_plan({2, 4}, {0.5f, 0.5f}, 2);
  const int n_stages = 2;
  Session s(*m, options(GetParam(), plan));
  NaiveLlama naive(*m);
  int64_t revived_total = 0;
  double worst = 0;
  std::string revivals;
  const Schedule sched{48, 24, 13, 5};
  // CUDA: bf16 rounding grows with the 6 stacked layers and the 37 calls; the bound is what a
  // dense CUDA session shows against the same reference on the same calls, with headroom (a wrong
  // op or token set is off by O(1)), and never below the tiny fixtures' prefill bound.
  double bound = tol();
  if (!cpu()) {
    Session d(*m, options(GetParam()));
    NaiveLlama dense_ref(*m);
    double dense_worst = 0;
    for (int call = 0; call <= 36; ++call) {
      const Call c = run_call(d, sched.ids(call, vocab), sched.prefill(call));
      dense_worst = std::max(dense_worst, rel_error(c.logits, dense_ref.forward(c.ids, c.computed)));
    }
    bound = std::max(kTolCuda, 1.5 * dense_worst);
    std::printf("[lazyllm] %s dense vs reference over the same calls: max rel err %.3e (bound %.3e)\n",
                GetParam().c_str(), dense_worst, bound);
  }
  for (int call = 0; call <= 36; ++call) {
    const bool prefill = sched.prefill(call);
    const Call c = run_call(s, sched.ids(call, vocab), prefill);
    std::vector<double> ref;
    try {
      ref = naive.forward(c.ids, c.computed);
    } catch (const std::logic_error& e) {
      FAIL() << "call " << call << ": " << e.what();
    }
    const double err = rel_error(c.logits, ref);
    worst = std::max(worst, err);
    EXPECT_LE(err, bound) << "call " << call;
    const ForwardStats& st = c.stats;
    const int32_t newest = s.n_past() - 1;
    if (prefill) {
      EXPECT_EQ(st.revived, 0);
      EXPECT_EQ(std::accumulate(st.revived_per_stage.begin(), st.revived_per_stage.end(), int64_t{0}), 0);
      continue;
    }
    // Revived at stage s: what layer l_s's cache gained besides the new token.
    ASSERT_EQ(st.revived_per_stage.size(), static_cast<size_t>(n_stages)) << "call " << call;
    int64_t revived = 0;
    std::set<int32_t> previous_stage;  // revived at the stage before, in this step
    for (int stg = 0; stg < n_stages; ++stg) {
      const int layer = plan.layers[stg];
      ASSERT_TRUE(contains(c.computed[layer], newest)) << "call " << call << " layer " << layer;
      const Positions got = minus(c.computed[layer], {newest});
      EXPECT_EQ(st.revived_per_stage[stg], static_cast<int>(got.size()))
          << "call " << call << " stage " << stg;
      revived += static_cast<int64_t>(got.size());
      revivals += " " + std::to_string(got.size());
      // Candidates: held by the aux cache at this stage before the step, or revived through the stage
      // before in this step (their hidden state entering this layer was just computed).
      std::set<int32_t> eligible(c.before.aux[stg].begin(), c.before.aux[stg].end());
      eligible.insert(previous_stage.begin(), previous_stage.end());
      const std::set<int32_t> got_set(got.begin(), got.end());
      for (int32_t p : got)
        EXPECT_TRUE(eligible.count(p)) << "call " << call << " stage " << stg << ": position " << p
                                       << " revived without a hidden state in the aux cache";
      if (cpu()) {
        // The new token's attention at the layer before the stage, over every entry there (those
        // revived at the stage before in this step included).
        const NaiveLlama::RowAttention& att = naive.last_attention(layer - 1);
        ASSERT_EQ(att.positions, c.after.layers[layer - 1]) << "call " << call;
        const int64_t k = keep_count(plan.keep_ratios[stg], static_cast<int64_t>(att.positions.size()));
        std::string why_forced, why_free;
        const bool forced_new =
            selection_matches(att, k, plan.keep_first, true, eligible, got_set, kScoreTieCpu, &why_forced);
        const bool free_new =
            selection_matches(att, k, plan.keep_first, false, eligible, got_set, kScoreTieCpu, &why_free);
        EXPECT_TRUE(forced_new || free_new)
            << "call " << call << " stage " << stg << ": revived " << str(got) << ", k " << k
            << "; new token kept first:" << why_forced << " new token ranked by score:" << why_free;
      }
      previous_stage = got_set;
    }
    EXPECT_EQ(st.revived, revived) << "call " << call;
    revived_total += revived;
    EXPECT_EQ(st.revived_total, revived_total) << "call " << call;
    for (int l = 0; l < n_layer; ++l)
      EXPECT_EQ(st.alive_per_layer.at(l), static_cast<int>(c.computed[l].size()))
          << "call " << call << " layer " << l;
  }
  std::printf("[lazyllm] %s: revived per (step, stage):%s; total %lld; max rel err vs reference %.3e\n",
              GetParam().c_str(), revivals.c_str(), static_cast<long long>(revived_total), worst);
  ASSERT_GT(revived_total, 0) << "no token was revived in 35 steps: the test proves nothing";
}

// A three-stage plan: 40 prompt tokens, 32 decode steps, a second prompt of 20, 32 more steps;
// after every call: each layer's
// positions ascend, include the layer after's (progressive) and everything the layer held before
// (caches only grow); the new token is in every layer; each token's reach is a stage layer or the
// model's depth (a revived token runs its whole stage); a step computes only the new token before
// the first stage and the same tokens at every layer of a stage; the counters agree with the
// caches; with no aux budget the aux cache holds exactly the tokens whose reach is its stage's layer.
TEST_P(LazyLLM, CountersAndPositionOrderOver64Steps) {
  auto m = model_for(GetParam());
  const int vocab = m->config.n_vocab, n_layer = m->config.n_layer;
  const PrunePlan plan = lazy_plan({1, 3, 5}, {0.6f, 0.5f, 0.5f}, 2);
  const int n_stages = 3;
  Session s(*m, options(GetParam(), plan));
  int64_t revived_total = 0;
  const Schedule sched{40, 20, 33, 9};
  int n_past = 0;
  for (int call = 0; call <= 65; ++call) {
    const bool prefill = sched.prefill(call);
    const Call c = run_call(s, sched.ids(call, vocab), prefill);
    const ForwardStats& st = c.stats;
    const std::string at = "call " + std::to_string(call);
    const int32_t newest = s.n_past() - 1;
    n_past += static_cast<int>(c.ids.size());
    EXPECT_EQ(s.n_past(), n_past) << at;
    EXPECT_EQ(st.n_tokens, static_cast<int>(c.ids.size())) << at;
    int64_t pairs = 0;
    for (int l = 0; l < n_layer; ++l) {
      const Positions& p = c.after.layers[l];
      const std::string al = at + " layer " + std::to_string(l);
      EXPECT_TRUE(std::adjacent_find(p.begin(), p.end(), std::greater_equal<int32_t>()) == p.end())
          << al << ": positions not strictly ascending " << str(p);
      EXPECT_TRUE(is_subset(c.before.layers[l], p)) << al << ": the cache lost entries";
      if (l + 1 < n_layer) {
        EXPECT_TRUE(is_subset(c.after.layers[l + 1], p)) << al << ": not progressive";
      }
      EXPECT_TRUE(contains(p, newest)) << al << ": the new token is missing";
      EXPECT_EQ(st.alive_per_layer.at(l), static_cast<int>(c.computed[l].size())) << al;
      const std::vector<int64_t> heads = s.kv_entries(l);
      for (size_t h = 0; h < heads.size(); ++h) {
        EXPECT_EQ(heads[h], static_cast<int64_t>(p.size())) << al << " head " << h;
        EXPECT_EQ(s.cached_positions(l, static_cast<int>(h)), p) << al << " head " << h;
      }
      pairs += static_cast<int64_t>(p.size());
    }
    EXPECT_EQ(st.computed_pairs, pairs) << at;
    EXPECT_EQ(st.dense_pairs, static_cast<int64_t>(n_layer) * s.n_past()) << at;
    EXPECT_LE(st.computed_pairs, st.dense_pairs) << at;
    // Reach: 1..n_layer, a stage layer or the end; the aux cache of stage s holds the tokens that
    // stopped at l_s (no budget: nothing dropped).
    std::vector<Positions> stopped(n_stages);
    for (int32_t p = 0; p <= newest; ++p) {
      const int r = reach(c.after, p);
      const auto stage = std::find(plan.layers.begin(), plan.layers.end(), r);
      if (r == n_layer) continue;
      ASSERT_NE(stage, plan.layers.end())
          << at << ": position " << p << " reaches layer " << r << ", not a stage";
      stopped[stage - plan.layers.begin()].push_back(p);
    }
    int64_t aux = 0;
    for (int stg = 0; stg < n_stages; ++stg) {
      EXPECT_EQ(c.after.aux[stg], stopped[stg]) << at << " stage " << stg;
      aux += static_cast<int64_t>(c.after.aux[stg].size());
    }
    EXPECT_EQ(st.aux_entries, aux) << at;
    EXPECT_EQ(st.aux_dropped, 0) << at;
    EXPECT_EQ(st.aux_bytes, s.aux_bytes()) << at;
    EXPECT_EQ(st.revived,
              std::accumulate(st.revived_per_stage.begin(), st.revived_per_stage.end(), int64_t{0}))
        << at;
    revived_total += st.revived;
    EXPECT_EQ(st.revived_total, revived_total) << at;
    if (prefill) continue;
    // A decode step: only the new token before the first stage, one token set per stage.
    for (int l = 0; l < plan.layers[0]; ++l)
      EXPECT_EQ(c.computed[l], Positions{newest}) << at << " layer " << l;
    for (int stg = 0; stg < n_stages; ++stg) {
      const int end = stg + 1 < n_stages ? plan.layers[stg + 1] : n_layer;
      for (int l = plan.layers[stg] + 1; l < end; ++l)
        EXPECT_EQ(c.computed[l], c.computed[plan.layers[stg]]) << at << " layer " << l;
    }
  }
  std::printf("[lazyllm] %s: %lld revivals in 64 steps\n", GetParam().c_str(),
              static_cast<long long>(revived_total));
}

// aux_budget 12 over two stages (48 prompt tokens: 24 pruned at the first, 6 at the second): the
// prefill already overflows it; a second prompt of 24 tokens at call 17 overflows it again, after
// decode steps have moved entries from the first stage to the second. After every call: at most 12 entries;
// the aux cache holds tokens whose reach is its stage's layer, and those that stopped there but are not held
// were dropped (aux_dropped counts them); a dropped token stays dropped (never computed at its stage's layer
// again); dropped entries are never newer than held ones (oldest first, stored in call order and,
// within a call, stage order); bytes are n_embd floats an entry on the CPU. The steps must drop
// and revive.
TEST_P(LazyLLM, AuxBudgetDropsOldestAndNeverRevivesThem) {
  auto m = model_for(GetParam());
  const int vocab = m->config.n_vocab, n_layer = m->config.n_layer;
  constexpr int64_t kBudget = 12;
  const PrunePlan plan = lazy_plan({2, 4}, {0.5f, 0.75f}, 2, kBudget);
  const int n_stages = 2;
  Session s(*m, options(GetParam(), plan));
  std::vector<std::set<int32_t>> dropped(n_stages);
  std::map<std::pair<int, int32_t>, std::pair<int, int>> stored;  // (stage, position) -> (call, stage)
  const Schedule sched{48, 24, 17, 3};
  for (int call = 0; call <= 48; ++call) {
    const bool prefill = sched.prefill(call);
    const Call c = run_call(s, sched.ids(call, vocab), prefill);
    const ForwardStats& st = c.stats;
    const std::string at = "call " + std::to_string(call);
    const int32_t newest = s.n_past() - 1;
    EXPECT_LE(st.aux_entries, kBudget) << at;
    EXPECT_EQ(st.aux_bytes, s.aux_bytes()) << at;
    if (cpu()) {
      EXPECT_EQ(st.aux_bytes, static_cast<size_t>(st.aux_entries) * m->config.n_embd * sizeof(float)) << at;
    }
    int64_t held = 0, n_dropped = 0;
    std::pair<int, int> newest_dropped{-1, -1}, oldest_held{1 << 30, 0};
    for (int stg = 0; stg < n_stages; ++stg) {
      const int layer = plan.layers[stg];
      const Positions& aux = c.after.aux[stg];
      held += static_cast<int64_t>(aux.size());
      for (int32_t p : aux)
        EXPECT_EQ(reach(c.after, p), layer) << at << " stage " << stg << ": aux holds position " << p;
      for (int32_t p = 0; p <= newest; ++p) {
        if (reach(c.after, p) != layer) {
          EXPECT_FALSE(dropped[stg].count(p))
              << at << " stage " << stg << ": dropped position " << p << " revived";
          continue;
        }
        // Stopped at this stage's layer: stored when it first did.
        const auto key = std::make_pair(stg, p);
        if (!stored.count(key)) stored[key] = {call, stg};
        if (contains(aux, p)) {
          EXPECT_FALSE(dropped[stg].count(p))
              << at << " stage " << stg << ": dropped position " << p << " is back";
          oldest_held = std::min(oldest_held, stored[key]);
        } else {
          dropped[stg].insert(p);
          newest_dropped = std::max(newest_dropped, stored[key]);
        }
      }
      n_dropped += static_cast<int64_t>(dropped[stg].size());
    }
    EXPECT_EQ(st.aux_entries, held) << at;
    EXPECT_EQ(st.aux_dropped, n_dropped) << at;
    if (newest_dropped.first >= 0 && held > 0) {
      EXPECT_LE(newest_dropped, oldest_held)
          << at << ": an entry stored in call " << newest_dropped.first << " (stage " << newest_dropped.second
          << ") was dropped while one from call " << oldest_held.first << " (stage " << oldest_held.second
          << ") is held";
    }
    for (int l = 0; l < n_layer; ++l)
      EXPECT_TRUE(contains(c.after.layers[l], newest)) << at << " layer " << l;
  }
  const ForwardStats& st = s.last_stats();
  std::printf("[lazyllm] %s aux budget %lld: %lld dropped, %lld revived, %lld held\n", GetParam().c_str(),
              static_cast<long long>(kBudget), static_cast<long long>(st.aux_dropped),
              static_cast<long long>(st.revived_total), static_cast<long long>(st.aux_entries));
  EXPECT_GT(st.aux_dropped, 0);
  EXPECT_GT(st.revived_total, 0) << "no revival in 47 steps: the budget's effect on revival is untested";
}

// A lazyllm prefill is an attn prefill: the same kept positions, caches and logits (to the bit on
// the CPU); the aux cache of stage s then holds what stage s pruned. On the CPU the kept sets are
// also the reference's selection (which checks selection_matches, used for the decode steps).
TEST_P(LazyLLM, PrefillMatchesAttn) {
  auto m = model_for(GetParam());
  const int n_layer = m->config.n_layer;
  const std::vector<int32_t> ids = testing::random_ids(50, m->config.n_vocab, 17);
  Session lazy(*m, options(GetParam(), lazy_plan({1, 3}, {0.5f, 0.6f}, 2)));
  Session attn(*m, options(GetParam(), lazy_plan({1, 3}, {0.5f, 0.6f}, 2, 0, "attn")));
  const std::vector<float> got = lazy.prefill(ids), want = attn.prefill(ids);
  ASSERT_EQ(got.size(), want.size());
  if (cpu())
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  else
    EXPECT_LE(testing::max_rel_error(got.data(), want.data(), want.size()), 1e-3);
  const ForwardStats& ls = lazy.last_stats();
  const ForwardStats& as = attn.last_stats();
  ASSERT_EQ(ls.kept_positions, as.kept_positions);
  EXPECT_EQ(ls.alive_per_layer, as.alive_per_layer);
  for (int l = 0; l < n_layer; ++l)
    EXPECT_EQ(lazy.cached_positions(l), attn.cached_positions(l)) << "layer " << l;
  ASSERT_EQ(ls.kept_positions.size(), 2u);
  Positions all(ids.size());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(lazy.aux_positions(0), minus(all, ls.kept_positions[0]));
  EXPECT_EQ(lazy.aux_positions(1), minus(ls.kept_positions[0], ls.kept_positions[1]));
  EXPECT_EQ(ls.aux_entries, static_cast<int64_t>(50 - ls.kept_positions[1].size()));
  EXPECT_EQ(ls.revived, 0);
  EXPECT_EQ(attn.aux_bytes(), 0u) << "attn keeps no aux cache";
  if (!cpu()) return;
  // The kept sets are the reference's selection from the last row's attention at the layer before
  // each stage (the last row forced), fed the session's caches.
  NaiveLlama naive(*m);
  std::vector<Positions> alive;
  for (int l = 0; l < n_layer; ++l) alive.push_back(lazy.cached_positions(l));
  EXPECT_LE(rel_error(got, naive.forward(ids, alive)), kTolCpu);
  const std::vector<int> layers = {1, 3};
  for (int stg = 0; stg < 2; ++stg) {
    const NaiveLlama::RowAttention& att = naive.last_attention(layers[stg] - 1);
    const std::set<int32_t> entering(att.positions.begin(), att.positions.end());
    const std::set<int32_t> kept(ls.kept_positions[stg].begin(), ls.kept_positions[stg].end());
    const int64_t k = keep_count(stg == 0 ? 0.5f : 0.6f, static_cast<int64_t>(att.positions.size()));
    std::string why;
    EXPECT_TRUE(selection_matches(att, k, 2, true, entering, kept, kScoreTieCpu, &why))
        << "stage " << stg << ":" << why;
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, LazyLLM, ::testing::Values("cpu", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// Not supported yet, so refused up front: lazyllm with a KV policy (revived tokens would need
// entries the policy may have evicted), by whichever door; a negative aux budget.
TEST(LazyLLMOptions, BadOptionsAreUsageErrors) {
  auto m = testing::six_layer_model();
  const PrunePlan lazy = lazy_plan({2, 4}, {0.5f, 0.5f}, 2);
  KVPolicyOptions vatp;
  vatp.policy = "vatp";
  vatp.budget = 0.5;
  {
    SessionOptions o = options("cpu", lazy);
    o.kv = vatp;
    EXPECT_THROW(Session(*m, o), UsageError) << "lazyllm with kv policy vatp at construction";
  }
  {
    Session s(*m, options("cpu", lazy));
    EXPECT_THROW(s.set_kv_policy(vatp), UsageError) << "set_kv_policy(vatp) on a lazyllm session";
  }
  {
    SessionOptions o = options("cpu");
    o.kv = vatp;
    Session s(*m, o);
    EXPECT_THROW(s.set_prune(lazy), UsageError) << "set_prune(lazyllm) on a vatp session";
  }
  PrunePlan bad = lazy;
  bad.aux_budget = -1;
  EXPECT_THROW(bad.validate(m->config), UsageError);
  EXPECT_THROW(Session(*m, options("cpu", bad)), UsageError);
  EXPECT_NO_THROW(lazy.validate(m->config));
}

}  // namespace
}  // namespace sdtp
