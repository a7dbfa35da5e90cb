// Tests of the attention kernels the CUDA forward pass adds (backend/cuda/model_ops.h): the Hopper
// wgmma flash attention (every variant) and the split-cache decode attention, each against the
// CPU op cpu::attention on fresh random bf16-exact inputs with fixed seeds: dense, chunked,
// pruned-style gapped positions, unsorted query rows and rows that see nothing. The output is
// poisoned before each run, so an unwritten element fails. Tolerance as in test_cuda_ops.cpp:
// max |gpu - cpu| <= 1e-2 · max |cpu|; each comparison prints one "[cuda-attn]" line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {
namespace {

constexpr double kTol = 1e-2;
constexpr float kPoison = 7.0f;

std::vector<float> random_bf16(size_t count, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (auto& x : v) x = to_float(to_bf16(dist(rng)));
  return v;
}

struct Case {
  std::string name;
  int64_t n, n_kv;
  int n_head, n_head_kv, head_dim;
  std::vector<int32_t> q_pos, kv_pos;
};

Case dense(std::string name, int64_t n, int64_t n_kv, int n_head, int n_head_kv, int head_dim) {
  Case c{std::move(name), n, n_kv, n_head, n_head_kv, head_dim, {}, {}};
  for (int64_t j = 0; j < n_kv; ++j) c.kv_pos.push_back(static_cast<int32_t>(j));
  for (int64_t i = 0; i < n; ++i) c.q_pos.push_back(static_cast<int32_t>(n_kv - n + i));
  return c;
}

// The cache holds the tokens alive at a pruned layer (gapped, ascending) and the rows are those.
Case pruned(std::string name, int64_t n_total, int64_t n_alive, int n_head, int n_head_kv, int head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> all(static_cast<size_t>(n_total));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end() - 1, rng);
  std::vector<int32_t> alive(all.begin(), all.begin() + n_alive - 1);
  alive.push_back(static_cast<int32_t>(n_total - 1));
  std::sort(alive.begin(), alive.end());
  return Case{std::move(name), n_alive, n_alive, n_head, n_head_kv, head_dim, alive, alive};
}

Case unsorted(std::string name, int64_t n, int64_t n_kv, int n_head, int n_head_kv, int head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  Case c{std::move(name), n, n_kv, n_head, n_head_kv, head_dim, {}, {}};
  int32_t p = 20;
  for (int64_t j = 0; j < n_kv; ++j) c.kv_pos.push_back(p += 1 + static_cast<int32_t>(rng() % 5));
  for (int64_t i = 0; i < n; ++i) c.q_pos.push_back(static_cast<int32_t>(rng() % (p + 30)));
  c.q_pos[0] = 0;  // sees nothing
  c.q_pos[n - 1] = 5;
  return c;
}

struct Inputs {
  std::vector<float> q, k, v, ref;
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  const int64_t q_dim = int64_t(c.n_head) * c.head_dim, kv_dim = int64_t(c.n_head_kv) * c.head_dim;
  Inputs in;
  in.q = random_bf16(c.n * q_dim, seed, -2.0f, 2.0f);
  in.k = random_bf16(c.n_kv * kv_dim, seed + 1, -2.0f, 2.0f);
  in.v = random_bf16(c.n_kv * kv_dim, seed + 2, -1.0f, 1.0f);
  in.ref.resize(static_cast<size_t>(c.n * q_dim));
  cpu::attention(in.q.data(), c.q_pos.data(), c.n, in.k.data(), in.v.data(), c.kv_pos.data(), c.n_kv, c.n_head,
                 c.n_head_kv, c.head_dim, in.ref.data(), nullptr);
  return in;
}

double rel_error(const std::string& name, const std::vector<float>& got, const std::vector<float>& want) {
  double max_abs = 0, max_ref = 0;
  bool finite = true;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    max_abs = std::max(max_abs, double(std::fabs(got[i] - want[i])));
    max_ref = std::max(max_ref, double(std::fabs(want[i])));
  }
  const double rel = max_abs / std::max(max_ref, 1e-30);
  std::printf("[cuda-attn] %-52s max_abs %.3e  rel %.3e\n", name.c_str(), max_abs, rel);
  EXPECT_TRUE(finite) << name;
  return finite ? rel : INFINITY;
}

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaAttention, WgmmaMatchesCpu) {
  if (!attention_wgmma_supported(128)) GTEST_SKIP() << "not a compute capability 9.0 device: no wgmma kernel";
  Context ctx;
  uint32_t seed = 3000;
  for (const Case& c : {dense("dense n300 gqa8:2", 300, 300, 8, 2, 128), dense("dense n1 over 517", 1, 517, 4, 4, 128),
                        dense("chunk n77 of 333", 77, 333, 4, 4, 128),
                        dense("chunk n200 of 1500", 200, 1500, 4, 2, 128), dense("dense n2048 gqa32:8", 2048, 2048, 32, 8, 128),
                        dense("dense n64 mha", 64, 64, 2, 2, 128), pruned("pruned 2000->700 gqa8:2", 2000, 700, 8, 2, 128, 1),
                        pruned("pruned 4096->1434 gqa32:8", 4096, 1434, 32, 8, 128, 3),
                        unsorted("unsorted rows, invisible rows", 150, 400, 4, 2, 128, 9)}) {
    const Inputs in = make_inputs(c, seed);
    seed += 10;
    const int64_t q_dim = int64_t(c.n_head) * c.head_dim;
    const auto dq = upload(to_bf16(in.q), "q"), dk = upload(to_bf16(in.k), "k"), dv = upload(to_bf16(in.v), "v");
    const auto dqp = upload(c.q_pos, "q_pos"), dkp = upload(c.kv_pos, "kv_pos");
    for (int variant = 0; variant < 4; ++variant) {
      auto dout = upload(to_bf16(std::vector<float>(in.ref.size(), kPoison)), "out");
      attention_wgmma(ctx, dq.data(), dqp.data(), c.n, dk.data(), dv.data(), dkp.data(), c.n_kv, c.n_head,
                      c.n_head_kv, c.head_dim, dout.data(), variant);
      ctx.synchronize("attention_wgmma test");
      const std::vector<float> out = to_float(download(dout, "out"));
      const std::string name = "wgmma v" + std::to_string(variant) + " " + c.name;
      EXPECT_LT(rel_error(name, out, in.ref), kTol) << name;
      for (int64_t i = 0; i < c.n; ++i) {
        if (c.q_pos[i] < c.kv_pos[0]) {
          for (int64_t d = 0; d < q_dim; ++d) ASSERT_EQ(out[i * q_dim + d], 0.0f) << name << " row " << i;
        }
      }
    }
  }
}

TEST_F(CudaAttention, DecodeMatchesCpu) {
  Context ctx;
  uint32_t seed = 4000;
  std::vector<Case> cases;
  for (int hd : {32, 64, 128, 256}) cases.push_back(dense("decode 1 over 517 hd" + std::to_string(hd), 1, 517, 4, 2, hd));
  cases.push_back(dense("decode 1 over 1 hd128", 1, 1, 8, 8, 128));
  cases.push_back(dense("decode 1 over 20000 gqa32:8", 1, 20000, 32, 8, 128));
  Case gapped = pruned("decode over a pruned cache 9000->3001", 9000, 3001, 32, 32, 128, 5);
  gapped.n = 1;
  gapped.q_pos = {gapped.kv_pos.back()};
  cases.push_back(gapped);
  Case middle = dense("decode at a position inside the cache", 1, 3000, 8, 2, 128);
  middle.q_pos = {1234};  // sees entries 0..1234 only
  cases.push_back(middle);
  Case none = dense("decode before the cache (sees nothing)", 1, 100, 4, 4, 64);
  for (auto& p : none.kv_pos) p += 50;
  none.q_pos = {10};
  cases.push_back(none);
  for (const Case& c : cases) {
    const Inputs in = make_inputs(c, seed);
    seed += 10;
    const auto dq = upload(to_bf16(in.q), "q"), dk = upload(to_bf16(in.k), "k"), dv = upload(to_bf16(in.v), "v");
    const auto dkp = upload(c.kv_pos, "kv_pos");
    auto dout = upload(to_bf16(std::vector<float>(in.ref.size(), kPoison)), "out");
    DeviceArray<float> scratch(static_cast<size_t>(attention_decode_scratch(c.n_head, c.head_dim)), "scratch");
    attention_decode(ctx, dq.data(), c.q_pos[0], shared_kv(dk.data(), dv.data(), dkp.data(), c.n_kv), c.n_head,
                     c.n_head_kv, c.head_dim, dout.data(), scratch.data());
    ctx.synchronize("attention_decode test");
    const std::vector<float> out = to_float(download(dout, "out"));
    if (c.q_pos[0] < c.kv_pos[0]) {
      for (float x : out) ASSERT_EQ(x, 0.0f) << c.name;
      std::printf("[cuda-attn] %-52s all zero\n", c.name.c_str());
    } else {
      EXPECT_LT(rel_error("decode " + c.name, out, in.ref), kTol) << c.name;
    }
  }
  EXPECT_FALSE(attention_decode_supported(96));
}

}  // namespace
}  // namespace sdtp::cuda
