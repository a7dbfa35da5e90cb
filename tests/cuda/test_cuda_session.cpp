// End-to-end tests of the CUDA forward pass (include/sdtp/cuda.h): last-position logits of
// CudaSession against Hugging Face's logits for the tiny fixture models (tests/fixtures/tiny) and
// against the CPU Session (on the same weights rounded to bf16) for those and for in-memory random
// models whose head sizes use the flash-attention kernel; decode after prefill; pruned prefill
// keeping the same positions as the CPU session; the SDTP predictor on the device against
// Predictor::score; errors (no device, KV cache out of memory, context overflow).
// Tolerance: bf16 weights and activations with float32 accumulation, max |gpu - ref| / max |ref|
// over the vocabulary <= 3e-2 against the CPU on the same (bf16-rounded) weights, <= 6e-2 against
// Hugging Face's float32 logits (the weights' rounding adds to it: 4.1e-2 seen on a 32-wide model);
// each comparison prints one "[cuda-e2e]" line with its error.
// Without a CUDA device the GPU tests skip, visibly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"
#include "sdtp/cuda.h"
#include "sdtp/error.h"
#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"

namespace sdtp::cuda {
namespace {

using sdtp::testing::fixture_path;
using sdtp::testing::json_ids;
using sdtp::testing::max_rel_error;
using sdtp::testing::read_f32_bin;
using sdtp::testing::read_json;

constexpr double kTol = 3e-2;
constexpr double kTolHf = 6e-2;

double report(const std::string& what, const std::vector<float>& got, const float* want, size_t n) {
  EXPECT_EQ(got.size(), n) << what;
  for (float v : got) {
    if (!std::isfinite(v)) {
      ADD_FAILURE() << what << ": non-finite logit";
      break;
    }
  }
  const double e = max_rel_error(got.data(), want, std::min(n, got.size()));
  std::printf("[cuda-e2e] %-56s max rel err %.3e\n", what.c_str(), e);
  return e;
}

void round_to_bf16(Tensor& t) {
  for (float& v : t.data) v = to_float(to_bf16(v));
}

// The weights the GPU runs with, for the CPU reference: every tensor rounded to bf16.
void round_weights(Model& m) {
  ModelWeights& w = m.weights;
  round_to_bf16(w.tok_embd);
  round_to_bf16(w.output);
  for (LayerWeights& l : w.layers)
    for (Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.w_gate, &l.w_up, &l.w_down}) round_to_bf16(*t);
}

SessionOptions cpu_options(int n_ctx = 0) {
  SessionOptions o;
  o.decode_q8 = false;
  o.n_ctx = n_ctx;
  o.n_threads = 2;
  return o;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = u(rng);
  return ids;
}

// A model of config c with random weights (bf16-exact values), built in memory.
std::unique_ptr<Model> host_random_model(const ModelConfig& c, uint32_t seed) {
  auto m = std::make_unique<Model>();
  m->config = c;
  m->path = "random";
  std::mt19937 rng(seed);
  const auto t = [&](std::vector<int64_t> shape, float bound, float center = 0.0f) {
    Tensor x;
    x.shape = std::move(shape);
    std::uniform_real_distribution<float> u(center - bound, center + bound);
    x.data.resize(static_cast<size_t>(x.numel()));
    for (float& v : x.data) v = to_float(to_bf16(u(rng)));
    return x;
  };
  const int64_t d = c.n_embd, q = int64_t(c.n_head) * c.head_dim, kv = int64_t(c.n_head_kv) * c.head_dim;
  const float wd = 1.0f / std::sqrt(float(d)), wq = 1.0f / std::sqrt(float(q)), wf = 1.0f / std::sqrt(float(c.n_ff));
  m->weights.tok_embd = t({c.n_vocab, d}, 1.0f);
  m->weights.output = t({c.n_vocab, d}, wd);
  m->weights.output_norm = t({d}, 0.2f, 1.0f);
  for (int l = 0; l < c.n_layer; ++l) {
    LayerWeights w;
    w.attn_norm = t({d}, 0.2f, 1.0f);
    w.ffn_norm = t({d}, 0.2f, 1.0f);
    // Larger Q/K weights give peaked attention, which exercises the online softmax.
    w.wq = t({q, d}, 3 * wd);
    w.wk = t({kv, d}, 3 * wd);
    w.wv = t({kv, d}, wd);
    w.wo = t({d, q}, wq);
    w.w_gate = t({c.n_ff, d}, wd);
    w.w_up = t({c.n_ff, d}, wd);
    w.w_down = t({d, c.n_ff}, wf);
    m->weights.layers.push_back(std::move(w));
  }
  return m;
}

ModelConfig small_config(int head_dim, int n_head, int n_head_kv, int n_layer) {
  ModelConfig c;
  c.arch = "llama";
  c.name = "random-hd" + std::to_string(head_dim);
  c.n_vocab = 512;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_embd = 256;
  c.n_ff = 512;
  c.n_layer = n_layer;
  c.n_ctx_train = 4096;
  c.rope_theta = 10000.0f;
  return c;
}

std::vector<std::string> tiny_variants() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fixture_path("tiny"), ec))
    if (std::filesystem::exists(e.path() / "reference.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// ---- host-only (run everywhere) ----

TEST(CudaSessionHost, PresetsHaveTheHuggingFaceShapes) {
  // Parameter counts Hugging Face reports for the three models.
  EXPECT_EQ(preset_config("llama2-7b").n_params(), 6738415616);
  EXPECT_EQ(preset_config("llama3-8b").n_params(), 8030261248);
  EXPECT_EQ(preset_config("mistral-7b").n_params(), 7248023552);
  const ModelConfig l3 = preset_config("llama3-8b");
  EXPECT_EQ(l3.n_head_kv, 8);
  EXPECT_EQ(l3.head_dim, 128);
  EXPECT_FLOAT_EQ(l3.rope_theta, 500000.0f);
  for (const std::string& name : preset_names()) EXPECT_NO_THROW(preset_config(name).validate(name));
  try {
    preset_config("llama9-1t");
    ADD_FAILURE() << "no error for an unknown preset";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("llama2-7b"), std::string::npos) << e.what();
  }
}

TEST(CudaSessionHost, RandomPredictorHasTheRightShape) {
  const ModelConfig c = preset_config("llama2-7b");
  const Predictor p = random_predictor(c, default_sdtp_plan(c), 3);
  ASSERT_EQ(p.stages.size(), 3u);
  EXPECT_EQ(p.n_hidden, 1024);
  EXPECT_EQ(p.stages[0].layer, 8);
  EXPECT_EQ(p.stages[0].w1.size(), size_t{1024} * 4096);
  EXPECT_NO_THROW(p.check_plan(default_sdtp_plan(c)));
}

TEST(CudaSessionHost, NoDeviceIsAClearError) {
  if (available()) GTEST_SKIP() << "a CUDA device is present: the no-device error cannot be shown here";
  std::printf("[cuda] no CUDA device on this machine: the CudaSession tests skip\n");
  try {
    CudaModel::random(small_config(64, 4, 2, 2));
    ADD_FAILURE() << "no error without a device";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
  EXPECT_THROW(device_name(), CudaError);
}

// ---- on the device ----

class CudaSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaSessionTest, TinyModelsMatchHuggingFaceAndCpu) {
  const std::vector<std::string> variants = tiny_variants();
  ASSERT_FALSE(variants.empty());
  for (const std::string& v : variants) {
    SCOPED_TRACE(v);
    const std::string dir = fixture_path("tiny/" + v);
    const auto ref = read_json(dir + "/reference.json");
    auto model = load_model(dir);
    const int vocab = model->config.n_vocab;
    const auto gpu_model = CudaModel::upload(*model);
    round_weights(*model);  // the CPU reference runs on the GPU's weights
    for (const auto& s : ref.at("sequences")) {
      const std::vector<int32_t> ids = json_ids(s.at("ids"));
      const std::vector<float> hf =
          read_f32_bin(dir + "/" + s.at("logits_file").get<std::string>(), int64_t(ids.size()) * vocab);
      // Prefill all but the last 2 tokens, then decode them: each step against HF and the CPU.
      const std::vector<int32_t> prompt(ids.begin(), ids.end() - 2);
      CudaSession gpu(gpu_model);
      Session cpu(*model, cpu_options());
      const std::vector<float> g = gpu.prefill(prompt);
      const std::vector<float> cl = cpu.prefill(prompt);
      const size_t last = prompt.size() - 1;
      EXPECT_LE(report(v + " prefill vs HF", g, hf.data() + last * vocab, vocab), kTolHf);
      EXPECT_LE(report(v + " prefill vs CPU (bf16 weights)", g, cl.data(), vocab), kTol);
      for (size_t i = prompt.size(); i < ids.size(); ++i) {
        const std::vector<float> gd = gpu.decode(ids[i]);
        const std::vector<float> cd = cpu.decode(ids[i]);
        EXPECT_LE(report(v + " decode pos " + std::to_string(i) + " vs HF", gd, hf.data() + i * vocab, vocab),
                  kTolHf);
        EXPECT_LE(report(v + " decode pos " + std::to_string(i) + " vs CPU", gd, cd.data(), vocab), kTol);
      }
      EXPECT_EQ(gpu.n_past(), static_cast<int>(ids.size()));
    }
  }
}

// Head sizes 64 and 128 run the flash-attention kernel: several tiles, GQA, a second prefill
// on top of the first (chunked prefill), then decode.
TEST_F(CudaSessionTest, RandomModelsMatchCpu) {
  for (const auto& [hd, heads, kv_heads] : {std::tuple{64, 4, 2}, std::tuple{128, 2, 1}, std::tuple{64, 4, 4}}) {
    const ModelConfig c = small_config(hd, heads, kv_heads, 3);
    SCOPED_TRACE(c.name);
    auto model = host_random_model(c, 11u + hd);
    const auto gpu_model = CudaModel::upload(*model);
    CudaSession gpu(gpu_model, {1024, {}});
    Session cpu(*model, cpu_options(1024));
    const std::vector<int32_t> ids = random_ids(300, c.n_vocab, 5);
    const std::string name = c.name + " GQA " + std::to_string(heads) + "/" + std::to_string(kv_heads);
    EXPECT_LE(report(name + " prefill 300", gpu.prefill(ids), cpu.prefill(ids).data(), c.n_vocab), kTol);
    const std::vector<int32_t> more = random_ids(77, c.n_vocab, 6);
    EXPECT_LE(report(name + " 2nd prefill 77 @ 300", gpu.prefill(more), cpu.prefill(more).data(), c.n_vocab), kTol);
    for (int i = 0; i < 3; ++i) {
      const int32_t id = (i * 37 + 5) % c.n_vocab;
      EXPECT_LE(report(name + " decode " + std::to_string(i), gpu.decode(id), cpu.decode(id).data(), c.n_vocab),
                kTol);
    }
    EXPECT_EQ(gpu.cached_positions(2), cpu.cached_positions(2));
    const ForwardStats& gs = gpu.last_stats();
    EXPECT_DOUBLE_EQ(gs.flops, cpu.last_stats().flops);
  }
}

// "random" draws the CPU selector's scores in the same order, so the kept positions must be
// identical, and so must the logits computed from them (to bf16 tolerance).
TEST_F(CudaSessionTest, PrunedRandomKeepsTheCpuPositions) {
  const ModelConfig c = small_config(64, 4, 2, 4);
  auto model = host_random_model(c, 21);
  const auto gpu_model = CudaModel::upload(*model);
  PrunePlan plan;
  plan.method = "random";
  plan.layers = {1, 2, 3};
  plan.keep_ratios = {0.7f, 0.6f, 0.5f};
  plan.keep_first = 4;
  plan.seed = 99;
  CudaSession gpu(gpu_model, {2048, plan});
  SessionOptions o = cpu_options(2048);
  o.prune = plan;
  Session cpu(*model, o);
  for (int n : {500, 129}) {  // the second prefill follows the first (n_past > 0)
    const std::vector<int32_t> ids = random_ids(n, c.n_vocab, 7 + n);
    const std::vector<float> g = gpu.prefill(ids);
    const std::vector<float> cl = cpu.prefill(ids);
    EXPECT_LE(report("pruned random n=" + std::to_string(n), g, cl.data(), c.n_vocab), kTol);
    EXPECT_EQ(gpu.last_stats().kept_positions, cpu.last_stats().kept_positions);
    EXPECT_EQ(gpu.last_stats().alive_per_layer, cpu.last_stats().alive_per_layer);
    EXPECT_DOUBLE_EQ(gpu.last_stats().flops, cpu.last_stats().flops);
  }
  for (int l = 0; l < c.n_layer; ++l) EXPECT_EQ(gpu.cached_positions(l), cpu.cached_positions(l)) << "layer " << l;
  EXPECT_LE(report("decode after pruned prefill", gpu.decode(3), cpu.decode(3).data(), c.n_vocab), kTol);
}

// Kept sets of the learned predictor: equal to the CPU's up to the rows whose scores sit within
// bf16 noise of the cut (counted and printed; at most 5% of the kept rows).
TEST_F(CudaSessionTest, PrunedSdtpKeepsTheCpuPositions) {
  const ModelConfig c = small_config(64, 4, 2, 4);
  auto model = host_random_model(c, 31);
  PrunePlan plan;
  plan.method = "sdtp";
  plan.layers = {1, 3};
  plan.keep_ratios = {0.5f, 0.5f};
  plan.keep_first = 2;
  Predictor pred = Predictor::random(*model, plan, 5, 64);
  // Sharpen the scores (a larger fc2) so that few pairs of rows are within rounding of each other.
  for (PredictorStage& s : pred.stages)
    for (float& w : s.w2) w *= 8.0f;
  plan.predictor = std::make_shared<const Predictor>(pred);
  const auto gpu_model = CudaModel::upload(*model);
  CudaSession gpu(gpu_model, {1024, plan});
  round_weights(*model);
  SessionOptions o = cpu_options(1024);
  o.prune = plan;
  Session cpu(*model, o);
  const std::vector<int32_t> ids = random_ids(400, c.n_vocab, 8);
  gpu.prefill(ids);
  cpu.prefill(ids);
  const auto& gk = gpu.last_stats().kept_positions;
  const auto& ck = cpu.last_stats().kept_positions;
  ASSERT_EQ(gk.size(), 2u);
  ASSERT_EQ(ck.size(), 2u);
  for (size_t s = 0; s < gk.size(); ++s) {
    ASSERT_EQ(gk[s].size(), ck[s].size());
    const std::set<int32_t> a(gk[s].begin(), gk[s].end()), b(ck[s].begin(), ck[s].end());
    size_t differ = 0;
    for (int32_t p : a) differ += b.count(p) ? 0 : 1;
    std::printf("[cuda-e2e] sdtp stage %zu: %zu kept, %zu differ from the CPU's\n", s, a.size(), differ);
    if (s == 0) {
      EXPECT_LE(differ, a.size() / 20) << "stage " << s;
    }
    for (int32_t p : {0, 1, 399}) EXPECT_TRUE(a.count(p)) << "forced position " << p << " dropped at stage " << s;
    EXPECT_TRUE(std::is_sorted(gk[s].begin(), gk[s].end()));
  }
}

// The predictor on the device (rmsnorm without weight, fc1 by cuBLASLt, GELU + fc2 kernel)
// against Predictor::score on the same bf16-exact hidden rows.
TEST_F(CudaSessionTest, PredictorScoresMatchCpu) {
  const ModelConfig c = small_config(64, 4, 2, 4);
  auto model = host_random_model(c, 41);
  PrunePlan plan;
  plan.method = "sdtp";
  plan.layers = {2};
  plan.keep_ratios = {0.5f};
  Predictor pred = Predictor::random(*model, plan, 9);
  for (PredictorStage& s : pred.stages) {
    for (float& w : s.w1) w = to_float(to_bf16(w));
    for (float& w : s.b1) w = to_float(to_bf16(w));
  }
  const int64_t n = 333, d = c.n_embd, h = pred.n_hidden;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> hidden(static_cast<size_t>(n * d));
  for (float& v : hidden) v = to_float(to_bf16(u(rng)));
  std::vector<float> want(static_cast<size_t>(n));
  pred.score(0, hidden.data(), n, want.data());

  Context ctx;
  const auto x = upload(to_bf16(hidden), "hidden");
  const auto w1 = upload(to_bf16(pred.stages[0].w1), "w1");
  const auto b1 = upload(to_bf16(pred.stages[0].b1), "b1");
  const auto w2 = upload(pred.stages[0].w2, "w2");
  const auto ones = upload(std::vector<float>(static_cast<size_t>(d), 1.0f), "ones");
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) positions[i] = static_cast<int32_t>(i);
  const auto pos = upload(positions, "positions");
  DeviceArray<bf16> xn(static_cast<size_t>(n * d), "xn"), h1(static_cast<size_t>(n * h), "h1");
  DeviceArray<float> scores(static_cast<size_t>(n), "scores");
  rmsnorm(ctx, x.data(), ones.data(), n, d, 1e-6f, xn.data());
  matmul(ctx, xn.data(), n, d, w1.data(), h, b1.data(), h1.data());
  gelu_dot(ctx, h1.data(), n, static_cast<int>(h), w2.data(), pred.stages[0].b2, scores.data());
  force_rows(ctx, scores.data(), n, pos.data(), 3);
  ctx.synchronize();
  const std::vector<float> got = download(scores, "scores");
  double max_abs = 0, max_ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i < 3 || i == n - 1) {
      EXPECT_TRUE(std::isinf(got[i]) && got[i] > 0) << "forced row " << i << " scored " << got[i];
      continue;
    }
    max_abs = std::max(max_abs, double(std::fabs(got[i] - want[i])));
    max_ref = std::max(max_ref, double(std::fabs(want[i])));
  }
  std::printf("[cuda-e2e] predictor scores (n=%lld, hidden %lld): max abs err %.3e, rel %.3e\n",
              static_cast<long long>(n), static_cast<long long>(h), max_abs, max_abs / max_ref);
  EXPECT_LE(max_abs / max_ref, kTol);
}

// "attn": the attention the last row paid at the layer before; near-ties may flip, so the sets
// are compared like the predictor's.
TEST_F(CudaSessionTest, PrunedAttnMatchesCpu) {
  const ModelConfig c = small_config(64, 4, 2, 3);
  auto model = host_random_model(c, 51);
  PrunePlan plan;
  plan.method = "attn";
  plan.layers = {2};
  plan.keep_ratios = {0.4f};
  plan.keep_first = 1;
  const auto gpu_model = CudaModel::upload(*model);
  CudaSession gpu(gpu_model, {1024, plan});
  round_weights(*model);
  SessionOptions o = cpu_options(1024);
  o.prune = plan;
  Session cpu(*model, o);
  const std::vector<int32_t> ids = random_ids(300, c.n_vocab, 12);
  gpu.prefill(ids);
  cpu.prefill(ids);
  const auto& gk = gpu.last_stats().kept_positions.at(0);
  const auto& ck = cpu.last_stats().kept_positions.at(0);
  ASSERT_EQ(gk.size(), ck.size());
  const std::set<int32_t> b(ck.begin(), ck.end());
  size_t differ = 0;
  for (int32_t p : gk) differ += b.count(p) ? 0 : 1;
  std::printf("[cuda-e2e] attn: %zu kept, %zu differ from the CPU's\n", gk.size(), differ);
  EXPECT_LE(differ, gk.size() / 10);
}

// Decode steps through a CUDA graph (the default; SDTP_CUDA_GRAPHS=0 queues kernel by kernel) give
// the eager path's logits: 20 steps on a tiny fixture model (head_dim 16 has no split decode
// kernel, so it stays eager both ways: this checks the switch only), a random head_dim-128 model
// (one split-count change at 320 entries: a re-capture and graph update), and the same after a
// pruned prefill (per-layer cache lengths differ). Same kernels on the same inputs: the logits
// should agree to the bit; the bound allows bf16 noise.
std::unique_ptr<CudaSession> session_with_graphs(std::shared_ptr<const CudaModel> m, const CudaSessionOptions& o,
                                                 bool graphs) {
  const char* old = std::getenv("SDTP_CUDA_GRAPHS");
  const std::string saved = old ? old : "";
  setenv("SDTP_CUDA_GRAPHS", graphs ? "1" : "0", 1);
  auto s = std::make_unique<CudaSession>(std::move(m), o);
  if (old) setenv("SDTP_CUDA_GRAPHS", saved.c_str(), 1);
  else unsetenv("SDTP_CUDA_GRAPHS");
  return s;
}

void compare_graph_decode(const std::string& name, std::shared_ptr<const CudaModel> m, const CudaSessionOptions& o,
                          const std::vector<int32_t>& prompt, int vocab) {
  auto eager = session_with_graphs(m, o, false);
  auto graph = session_with_graphs(m, o, true);
  EXPECT_LE(report(name + " prefill, graphs vs eager", graph->prefill(prompt), eager->prefill(prompt).data(), vocab),
            1e-3);
  double worst = 0;
  for (int i = 0; i < 20; ++i) {
    const int32_t id = (i * 53 + 7) % vocab;
    const std::vector<float> e = eager->decode(id);
    const std::vector<float> g = graph->decode(id);
    ASSERT_EQ(g.size(), e.size());
    worst = std::max(worst, max_rel_error(g.data(), e.data(), e.size()));
    EXPECT_EQ(graph->last_stats().alive_per_layer, eager->last_stats().alive_per_layer);
  }
  std::printf("[cuda-e2e] %-56s max rel err %.3e\n", (name + " 20 decode steps, graphs vs eager").c_str(), worst);
  EXPECT_LE(worst, 1e-3) << name;
  EXPECT_EQ(graph->n_past(), eager->n_past());
  for (int l = 0; l < eager->config().n_layer; ++l)
    EXPECT_EQ(graph->cached_positions(l), eager->cached_positions(l)) << name << " layer " << l;
}

TEST_F(CudaSessionTest, DecodeGraphsMatchEagerDecode) {
  const std::vector<std::string> variants = tiny_variants();
  ASSERT_FALSE(variants.empty());
  {
    auto model = load_model(fixture_path("tiny/" + variants.front()));
    const int vocab = model->config.n_vocab;
    compare_graph_decode("tiny " + variants.front(), CudaModel::upload(*model), {256, {}},
                         random_ids(37, vocab, 3), vocab);
  }
  const ModelConfig c = small_config(128, 2, 1, 3);
  auto model = host_random_model(c, 41);
  const auto gpu_model = CudaModel::upload(*model);
  compare_graph_decode("random-hd128", gpu_model, {1024, {}}, random_ids(300, c.n_vocab, 8), c.n_vocab);
  PrunePlan plan;
  plan.method = "random";
  plan.layers = {1, 2};
  plan.keep_ratios = {0.6f, 0.5f};
  plan.keep_first = 4;
  plan.seed = 5;
  compare_graph_decode("random-hd128 pruned", gpu_model, {1024, plan}, random_ids(300, c.n_vocab, 9), c.n_vocab);
}

TEST_F(CudaSessionTest, KvCacheOutOfMemoryNamesTheBytes) {
  const auto gpu_model = CudaModel::random(small_config(64, 4, 4, 2), 1);
  try {
    CudaSession s(gpu_model, {1 << 30, {}});
    ADD_FAILURE() << "a 2^30-token KV cache was allocated";
  } catch (const DeviceOutOfMemoryError& e) {
    const std::string msg = e.what();
    std::printf("[cuda-e2e] %s\n", msg.c_str());
    EXPECT_NE(msg.find("KV cache for 1073741824 tokens needs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("GiB free"), std::string::npos) << msg;
    EXPECT_GT(e.bytes_requested, size_t{1} << 40);
  }
}

TEST_F(CudaSessionTest, ContextOverflowAndBadIdsAreUsageErrors) {
  const auto gpu_model = CudaModel::random(small_config(64, 4, 4, 2), 1);
  CudaSession s(gpu_model, {64, {}});
  EXPECT_THROW(s.prefill(random_ids(65, 512, 1)), UsageError);
  EXPECT_THROW(s.prefill({1, 2, 512}), UsageError);
  EXPECT_THROW(s.prefill({}), UsageError);
  const std::vector<float> logits = s.prefill(random_ids(64, 512, 1));
  EXPECT_EQ(logits.size(), 512u);
  EXPECT_THROW(s.decode(1), UsageError);
  s.reset();
  EXPECT_EQ(s.n_past(), 0);
  EXPECT_NO_THROW(s.decode(1));
}

}  // namespace
}  // namespace sdtp::cuda
