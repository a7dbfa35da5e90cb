// Tests of the CUDA backend: every op in backend/cuda/ops.h against the CPU op of backend/cpu/ops.h
// (or a plain reference written here) on fresh random inputs with fixed seeds. Inputs are rounded
// to bf16 first, so both sides see the same numbers and the difference is the GPU's bf16 outputs
// and accumulation order; tolerance: max |gpu - cpu| <= 1e-2 · max |cpu|. Each comparison prints
// one "[cuda-err]" line with its errors. Without a CUDA device the GPU tests skip, visibly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {
namespace {

std::vector<float> random_bf16_values(size_t count, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (auto& x : v) x = to_float(to_bf16(dist(rng)));  // exactly representable in bf16
  return v;
}

DeviceArray<bf16> upload_bf16(const std::vector<float>& v, const char* what) { return upload(to_bf16(v), what); }
std::vector<float> download_bf16(const DeviceArray<bf16>& d) { return to_float(download(d, "download")); }

struct Errors {
  double max_abs = 0.0, max_ref = 0.0, rel = 0.0;
  bool finite = true;
};

// max |got - want| and that relative to max |want|; prints one line for the log.
Errors compare(const std::string& name, const std::vector<float>& got, const std::vector<float>& want) {
  Errors e;
  EXPECT_EQ(got.size(), want.size()) << name;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (!std::isfinite(got[i])) e.finite = false;
    e.max_abs = std::max(e.max_abs, static_cast<double>(std::fabs(got[i] - want[i])));
    e.max_ref = std::max(e.max_ref, static_cast<double>(std::fabs(want[i])));
  }
  e.rel = e.max_abs / std::max(e.max_ref, 1e-30);
  std::printf("[cuda-err] %-48s max_abs %.3e  max_ref %.3e  rel %.3e\n", name.c_str(), e.max_abs, e.max_ref, e.rel);
  EXPECT_TRUE(e.finite) << name << ": non-finite output";
  return e;
}

constexpr double kTol = 1e-2;

// ---- host-only pieces (run everywhere) ----

TEST(CudaHost, Bf16RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(to_bf16(-2.0f).bits, 0xc000);
  EXPECT_EQ(to_bf16(1.0f + 1.0f / 256).bits, 0x3f80);      // halfway, to even (down)
  EXPECT_EQ(to_bf16(1.0f + 3.0f / 256).bits, 0x3f82);      // halfway, to even (up)
  EXPECT_EQ(to_bf16(1.0f + 1.0f / 256 + 1e-6f).bits, 0x3f81);  // above halfway
  EXPECT_EQ(to_bf16(INFINITY).bits, 0x7f80);
  EXPECT_TRUE(std::isnan(to_float(to_bf16(NAN))));
  EXPECT_EQ(to_float(to_bf16(3.140625f)), 3.140625f);
}

TEST(CudaHost, DeviceCountNeverThrows) {
  const int n = device_count();
  EXPECT_GE(n, 0);
  if (n == 0) std::printf("[cuda] no CUDA device on this machine: the CudaOps tests skip\n");
}

// ---- ops against the CPU ----

class CudaOps : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (device_count() > 0) {
      ctx_ = new Context(0);
      std::printf("[cuda] device: %s\n", device_description().c_str());
    }
  }
  static void TearDownTestSuite() {
    delete ctx_;
    ctx_ = nullptr;
  }
  void SetUp() override {
    if (!ctx_) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none): CUDA op test skipped";
  }
  Context& ctx() { return *ctx_; }
  static Context* ctx_;
};
Context* CudaOps::ctx_ = nullptr;

TEST_F(CudaOps, MatmulMatchesCpu) {
  struct Case {
    int64_t n, k, m;
    bool bias;
  };
  const Case cases[] = {{1, 576, 1536, false}, {37, 96, 80, true}, {128, 1024, 512, false},
                        {64, 50, 30, true},    {300, 4096, 256, true}, {5, 13, 7, false}};
  uint32_t seed = 100;
  for (const Case& c : cases) {
    const auto x = random_bf16_values(c.n * c.k, seed++);
    const auto w = random_bf16_values(c.m * c.k, seed++, -0.1f, 0.1f);
    const auto b = random_bf16_values(c.m, seed++);
    std::vector<float> ref(c.n * c.m);
    cpu::matmul(x.data(), c.n, c.k, w.data(), c.m, c.bias ? b.data() : nullptr, ref.data());
    auto dx = upload_bf16(x, "x"), dw = upload_bf16(w, "w"), db = upload_bf16(b, "b");
    auto dbf = upload(b, "bias f32");
    DeviceArray<bf16> dy(c.n * c.m, "y");
    DeviceArray<float> dyf(c.n * c.m, "y f32");
    matmul(ctx(), dx.data(), c.n, c.k, dw.data(), c.m, c.bias ? db.data() : nullptr, dy.data());
    matmul_f32(ctx(), dx.data(), c.n, c.k, dw.data(), c.m, c.bias ? dbf.data() : nullptr, dyf.data());
    ctx().synchronize();
    const std::string shape = std::to_string(c.n) + "x" + std::to_string(c.k) + "x" + std::to_string(c.m) +
                              (c.bias ? "+bias" : "");
    EXPECT_LT(compare("matmul bf16 " + shape, download_bf16(dy), ref).rel, kTol);
    EXPECT_LT(compare("matmul f32 " + shape, download(dyf, "y"), ref).rel, 1e-3);
  }
}

TEST_F(CudaOps, RmsnormMatchesCpu) {
  uint32_t seed = 200;
  for (const auto& [n, d] : std::vector<std::pair<int64_t, int64_t>>{{7, 576}, {33, 4096}, {5, 100}, {1, 8}}) {
    const auto x = random_bf16_values(n * d, seed++, -3.0f, 3.0f);
    const auto w = random_bf16_values(d, seed++, 0.5f, 1.5f);
    std::vector<float> ref(n * d);
    cpu::rmsnorm(x.data(), w.data(), n, d, 1e-5f, ref.data());
    auto dx = upload_bf16(x, "x");
    auto dw = upload(w, "w");
    DeviceArray<bf16> dy(n * d, "y");
    rmsnorm(ctx(), dx.data(), dw.data(), n, d, 1e-5f, dy.data());
    rmsnorm(ctx(), dx.data(), dw.data(), n, d, 1e-5f, dx.data());  // in place
    const std::string shape = std::to_string(n) + "x" + std::to_string(d);
    EXPECT_LT(compare("rmsnorm " + shape, download_bf16(dy), ref).rel, kTol);
    EXPECT_LT(compare("rmsnorm in place " + shape, download_bf16(dx), ref).rel, kTol);
  }
}

TEST_F(CudaOps, RopeMatchesCpuAtGappedPositions) {
  uint32_t seed = 300;
  for (const int head_dim : {64, 128}) {
    const int64_t n = 33;
    const int n_heads = 5;
    const int64_t stride = n_heads * head_dim + 64;  // rows wider than the heads (e.g. fused q|k)
    const auto x = random_bf16_values(n * stride, seed++);
    std::mt19937 rng(seed++);
    std::vector<int32_t> pos(n);
    int32_t p = 0;
    for (auto& v : pos) v = (p += 1 + static_cast<int32_t>(rng() % 1000));  // up to ~33K: big angles
    std::vector<float> inv_freq(head_dim / 2);
    for (int i = 0; i < head_dim / 2; ++i)
      inv_freq[i] = 1.0f / std::pow(10000.0f, 2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
    std::vector<float> ref = x;
    cpu::rope(ref.data(), n, stride, n_heads, head_dim, pos.data(), inv_freq.data());
    auto dx = upload_bf16(x, "x");
    auto dpos = upload(pos, "pos");
    auto dfreq = upload(inv_freq, "inv_freq");
    rope(ctx(), dx.data(), n, stride, n_heads, head_dim, dpos.data(), dfreq.data());
    EXPECT_LT(compare("rope hd" + std::to_string(head_dim), download_bf16(dx), ref).rel, kTol);
  }
}

TEST_F(CudaOps, SwigluAndAddMatchCpu) {
  uint32_t seed = 400;
  for (const int64_t count : {int64_t{1003}, int64_t{3 * 4096}, int64_t{8}}) {
    const auto g = random_bf16_values(count, seed++, -6.0f, 6.0f);
    const auto u = random_bf16_values(count, seed++, -2.0f, 2.0f);
    std::vector<float> ref(count);
    cpu::swiglu(g.data(), u.data(), count, ref.data());
    auto dg = upload_bf16(g, "gate"), du = upload_bf16(u, "up");
    DeviceArray<bf16> dout(count, "out");
    swiglu(ctx(), dg.data(), du.data(), count, dout.data());
    EXPECT_LT(compare("swiglu " + std::to_string(count), download_bf16(dout), ref).rel, kTol);
    swiglu(ctx(), dg.data(), du.data(), count, dg.data());  // out aliases gate
    EXPECT_LT(compare("swiglu in place " + std::to_string(count), download_bf16(dg), ref).rel, kTol);

    std::vector<float> sum = g;
    cpu::add(sum.data(), u.data(), count);
    auto dx = upload_bf16(g, "x");
    add(ctx(), dx.data(), du.data(), count);
    EXPECT_LT(compare("add " + std::to_string(count), download_bf16(dx), sum).rel, kTol);
  }
}

TEST_F(CudaOps, GatherRowsAndEmbeddingPickRows) {
  std::mt19937 rng(500);
  const int64_t n_in = 300, n_out = 97;
  std::vector<int32_t> idx(n_out);
  for (auto& i : idx) i = static_cast<int32_t>(rng() % n_in);
  idx[3] = -1;            // out of range: zero row
  idx[4] = int32_t(n_in);  // out of range: zero row
  auto didx = upload(idx, "index");
  // Row widths that take the 16-byte, 4-byte and 1-byte paths.
  for (const int64_t row_bytes : {int64_t{576 * 2}, int64_t{4}, int64_t{6}}) {
    std::vector<unsigned char> in(n_in * row_bytes);
    for (auto& b : in) b = static_cast<unsigned char>(rng() % 255 + 1);
    auto din = upload(in, "in");
    DeviceArray<unsigned char> dout(n_out * row_bytes, "out");
    gather_rows(ctx(), din.data(), n_in, row_bytes, didx.data(), n_out, dout.data());
    const auto out = download(dout, "out");
    for (int64_t r = 0; r < n_out; ++r) {
      for (int64_t c = 0; c < row_bytes; ++c) {
        const int32_t s = idx[r];
        const unsigned char want = (s >= 0 && s < n_in) ? in[s * row_bytes + c] : 0;
        ASSERT_EQ(out[r * row_bytes + c], want) << "row_bytes " << row_bytes << " row " << r << " byte " << c;
      }
    }
  }
  const int64_t vocab = 1000, d = 64;
  const auto table = random_bf16_values(vocab * d, 501);
  auto dtable = upload_bf16(table, "table");
  std::vector<int32_t> ids = {0, 999, 5, -3, 1000, 42};
  auto dids = upload(ids, "ids");
  DeviceArray<bf16> demb(ids.size() * d, "emb");
  embedding(ctx(), dtable.data(), vocab, d, dids.data(), static_cast<int64_t>(ids.size()), demb.data());
  const auto emb = download_bf16(demb);
  for (size_t r = 0; r < ids.size(); ++r)
    for (int64_t c = 0; c < d; ++c) {
      const float want = (ids[r] >= 0 && ids[r] < vocab) ? table[ids[r] * d + c] : 0.0f;
      ASSERT_EQ(emb[r * d + c], want) << "embedding row " << r;
    }
}

TEST_F(CudaOps, TopKMatchesStableSortReference) {
  std::mt19937 rng(600);
  struct Case {
    int64_t n, k;
    int distinct;  // 0: continuous scores; else scores from this many values (ties)
  };
  const Case cases[] = {{1, 1, 0},        {100, 37, 0},   {100, 100, 0},  {5000, 1750, 0},
                        {5000, 10, 3},    {32768, 11469, 0}, {32768, 20000, 17}, {4097, 1, 0}};
  for (const Case& c : cases) {
    std::vector<float> s(c.n);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (auto& v : s) v = c.distinct ? static_cast<float>(static_cast<int>(rng() % c.distinct)) - 5.0f : nd(rng);
    std::vector<int32_t> order(c.n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
    std::vector<int32_t> want(order.begin(), order.begin() + c.k);
    std::sort(want.begin(), want.end());
    auto ds = upload(s, "scores");
    DeviceArray<int32_t> dout(c.k, "out");
    top_k(ctx(), ds.data(), c.n, c.k, dout.data());
    EXPECT_EQ(download(dout, "out"), want) << "n " << c.n << " k " << c.k << " distinct " << c.distinct;
  }
  EXPECT_THROW(top_k(ctx(), nullptr, 10, 11, nullptr), Error);
}

struct AttnCase {
  std::string name;
  int64_t n, n_kv;
  int n_head, n_head_kv, head_dim;
  std::vector<int32_t> q_pos, kv_pos;
};

// Dense causal: the rows are the cache's last n entries (n == n_kv is a plain prefill).
AttnCase dense_case(std::string name, int64_t n, int64_t n_kv, int n_head, int n_head_kv, int head_dim) {
  AttnCase c{std::move(name), n, n_kv, n_head, n_head_kv, head_dim, {}, {}};
  for (int64_t j = 0; j < n_kv; ++j) c.kv_pos.push_back(static_cast<int32_t>(j));
  for (int64_t i = 0; i < n; ++i) c.q_pos.push_back(static_cast<int32_t>(n_kv - n + i));
  return c;
}

// Pruned-style: the cache holds only the tokens alive at this layer (gapped, ascending positions)
// and the rows are those same tokens, at their original positions.
AttnCase pruned_case(std::string name, int64_t n_total, int64_t n_alive, int n_head, int n_head_kv, int head_dim,
                     uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> all(n_total);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end() - 1, rng);  // the last token is always kept
  std::vector<int32_t> alive(all.begin(), all.begin() + n_alive - 1);
  alive.push_back(static_cast<int32_t>(n_total - 1));
  std::sort(alive.begin(), alive.end());
  return AttnCase{std::move(name), n_alive, n_alive, n_head, n_head_kv, head_dim, alive, alive};
}

void run_attention_case(Context& ctx, const AttnCase& c, uint32_t seed) {
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  const auto q = random_bf16_values(c.n * q_dim, seed, -2.0f, 2.0f);
  const auto k = random_bf16_values(c.n_kv * kv_dim, seed + 1, -2.0f, 2.0f);
  const auto v = random_bf16_values(c.n_kv * kv_dim, seed + 2);
  std::vector<float> ref(c.n * q_dim), probs(static_cast<size_t>(c.n_head) * c.n_kv);
  cpu::attention(q.data(), c.q_pos.data(), c.n, k.data(), v.data(), c.kv_pos.data(), c.n_kv, c.n_head, c.n_head_kv,
                 c.head_dim, ref.data(), probs.data());
  auto dq = upload_bf16(q, "q"), dk = upload_bf16(k, "k"), dv = upload_bf16(v, "v");
  auto dqp = upload(c.q_pos, "q_pos"), dkp = upload(c.kv_pos, "kv_pos");
  DeviceArray<bf16> dout(c.n * q_dim, "out");
  for (int variant = 1; variant <= kAttentionVariants; ++variant) {
    attention(ctx, dq.data(), dqp.data(), c.n, dk.data(), dv.data(), dkp.data(), c.n_kv, c.n_head, c.n_head_kv,
              c.head_dim, dout.data(), variant);
    ctx.synchronize("attention test");
    const auto out = download_bf16(dout);
    EXPECT_LT(compare("attention " + c.name + " v" + std::to_string(variant), out, ref).rel, kTol) << c.name;
    // Rows that see no entry are exactly zero, like the CPU's.
    for (int64_t i = 0; i < c.n; ++i) {
      if (c.n_kv == 0 || c.q_pos[i] < c.kv_pos[0]) {
        for (int64_t d = 0; d < q_dim; ++d) ASSERT_EQ(out[i * q_dim + d], 0.0f) << c.name << " row " << i;
      }
    }
  }
  // Probabilities of the last row, as the attention-based selectors read them.
  if (c.n > 0 && c.n_kv > 0) {
    DeviceArray<float> dprobs(probs.size(), "probs");
    attention_row_probs(ctx, dq.data() + (c.n - 1) * q_dim, c.q_pos[c.n - 1],
                        shared_kv(dk.data(), dv.data(), dkp.data(), c.n_kv), c.n_head, c.n_head_kv, c.head_dim,
                        dprobs.data(), c.n_kv);
    EXPECT_LT(compare("attention_row_probs " + c.name, download(dprobs, "probs"), probs).rel, kTol) << c.name;
  }
}

TEST_F(CudaOps, AttentionDenseMatchesCpu) {
  uint32_t seed = 700;
  for (const AttnCase& c : {dense_case("dense n100 hd64 mha", 100, 100, 4, 4, 64),
                            dense_case("dense n300 hd128 gqa8:2", 300, 300, 8, 2, 128),
                            dense_case("dense n1 decode hd128", 1, 517, 4, 4, 128),
                            dense_case("chunk n77 of 333 hd64 gqa6:3", 77, 333, 6, 3, 64),
                            dense_case("dense n1024 hd128 gqa32:8", 1024, 1024, 32, 8, 128),
                            dense_case("dense n17 hd64", 17, 17, 2, 1, 64)}) {
    run_attention_case(ctx(), c, seed);
    seed += 10;
  }
}

TEST_F(CudaOps, AttentionPrunedGappedPositionsMatchesCpu) {
  uint32_t seed = 800;
  for (const AttnCase& c : {pruned_case("pruned 2000->700 hd128 gqa8:2", 2000, 700, 8, 2, 128, 1),
                            pruned_case("pruned 600->131 hd64", 600, 131, 4, 4, 64, 2),
                            pruned_case("pruned 4096->1434 hd128 gqa32:8", 4096, 1434, 32, 8, 128, 3)}) {
    run_attention_case(ctx(), c, seed);
    seed += 10;
  }
}

TEST_F(CudaOps, AttentionUnsortedRowsAndInvisibleRows) {
  // Query rows in no particular order, some before the first cache entry (they see nothing), and a
  // cache whose positions have gaps.
  std::mt19937 rng(900);
  AttnCase c{"unsorted rows, invisible rows", 150, 400, 4, 2, 128, {}, {}};
  int32_t p = 20;
  for (int64_t j = 0; j < c.n_kv; ++j) c.kv_pos.push_back(p += 1 + static_cast<int32_t>(rng() % 5));
  for (int64_t i = 0; i < c.n; ++i) c.q_pos.push_back(static_cast<int32_t>(rng() % (p + 30)));
  c.q_pos[0] = 0;
  c.q_pos[149] = 5;
  run_attention_case(ctx(), c, 901);
}

TEST_F(CudaOps, AttentionRejectsUnsupportedHeadDim) {
  DeviceArray<bf16> buf(64 * 96, "buf");
  DeviceArray<int32_t> pos(64, "pos");
  EXPECT_THROW(attention(ctx(), buf.data(), pos.data(), 1, buf.data(), buf.data(), pos.data(), 1, 1, 1, 96,
                         buf.data()),
               UnsupportedError);
}

TEST_F(CudaOps, ConversionsRoundLikeTheHost) {
  const auto x = random_bf16_values(1001, 1000, -100.0f, 100.0f);
  std::vector<float> raw(x.size());
  std::mt19937 rng(1001);
  std::normal_distribution<float> nd(0.0f, 50.0f);
  for (auto& v : raw) v = nd(rng);
  auto draw = upload(raw, "raw");
  DeviceArray<bf16> db(raw.size(), "bf16");
  DeviceArray<float> df(raw.size(), "f32");
  f32_to_bf16(ctx(), draw.data(), static_cast<int64_t>(raw.size()), db.data());
  bf16_to_f32(ctx(), db.data(), static_cast<int64_t>(raw.size()), df.data());
  const auto back = download(df, "f32");
  for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(back[i], to_float(to_bf16(raw[i]))) << i;
}

TEST_F(CudaOps, OutOfMemoryNamesTheBytes) {
  const size_t huge = size_t{1} << 50;  // 1 PiB
  try {
    DeviceBuffer b(huge, "test buffer");
    FAIL() << "1 PiB allocation succeeded";
  } catch (const DeviceOutOfMemoryError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(huge)), std::string::npos) << msg;
    EXPECT_NE(msg.find("test buffer"), std::string::npos) << msg;
    EXPECT_EQ(e.bytes_requested, huge);
    std::printf("[cuda] OOM message: %s\n", msg.c_str());
  }
  // The device still works afterwards.
  auto d = upload(std::vector<int32_t>{1, 2, 3}, "after oom");
  EXPECT_EQ(download(d, "after oom"), (std::vector<int32_t>{1, 2, 3}));
}

}  // namespace
}  // namespace sdtp::cuda
