// Tests of the CUDA kernels on per-head KV caches (ops.h's KvHeads, backend.h's KVView): every KV
// head with its own entry count, read from `len` on the device, and its own gapped positions.
// Each kernel (decode, generic, mma.sync flash, wgmma, row probabilities and their mean over the
// appended entries, key mass, entry norms, gather_entries, qkv_rope_append) against a plain
// double-precision reference written here, on fresh random bf16-exact inputs with fixed seeds.
// The cache rows past each head's count hold NaN and its positions there -1, so a kernel that reads
// past its head's count fails; outputs are poisoned first, so an unwritten element fails too.
// Tolerance as in test_cuda_ops.cpp: max |gpu - ref| <= 1e-2 · max |ref|; each comparison prints
// one "[cuda-kv]" line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/model_ops.h"
#include "backend/cuda/ops.h"

namespace sdtp::cuda {
namespace {

constexpr double kTol = 1e-2;
constexpr float kPoison = 7.0f;

std::vector<float> random_values(size_t count, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (auto& x : v) x = to_float(to_bf16(dist(rng)));  // exactly representable in bf16
  return v;
}

// max |got - want| relative to max |want| over the elements where `want` is given; prints one line.
double rel_error(const std::string& name, const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size()) << name;
  double max_abs = 0, max_ref = 0;
  bool finite = true;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    max_abs = std::max(max_abs, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  const double rel = max_abs / std::max(max_ref, 1e-30);
  std::printf("[cuda-kv] %-60s max_abs %.3e  rel %.3e\n", name.c_str(), max_abs, rel);
  EXPECT_TRUE(finite) << name << ": non-finite output";
  return finite ? rel : INFINITY;
}

// A per-head cache on the host. KV head g holds entries [0, len[g] + appended): first len[g] of
// the positions [first, first + span) (its own random ascending subset), then the `appended`
// tokens at positions first + span + i (entry len[g] + i: the same token in every head).
struct HeadCache {
  int n_head_kv = 0, head_dim = 0;
  int64_t cap = 0, appended = 0;
  std::vector<int64_t> len;
  std::vector<float> k, v;   // [cap x n_head_kv·head_dim], NaN past each head's count
  std::vector<int32_t> pos;  // [cap x n_head_kv], -1 past each head's count
  int64_t count(int g) const { return len[g] + appended; }
  int64_t max_count() const {
    int64_t m = 0;
    for (int g = 0; g < n_head_kv; ++g) m = std::max(m, count(g));
    return m;
  }
  int64_t kv_dim() const { return int64_t(n_head_kv) * head_dim; }
  float k_at(int64_t j, int g, int d) const { return k[j * kv_dim() + int64_t(g) * head_dim + d]; }
  float v_at(int64_t j, int g, int d) const { return v[j * kv_dim() + int64_t(g) * head_dim + d]; }
};

constexpr int32_t kFirst = 10;  // the cache's lowest position: rows below it see nothing

HeadCache make_cache(int head_dim, std::vector<int64_t> len, int64_t appended, int32_t span, uint32_t seed,
                     int64_t extra_rows = 3) {
  HeadCache c;
  c.n_head_kv = static_cast<int>(len.size());
  c.head_dim = head_dim;
  c.len = std::move(len);
  c.appended = appended;
  c.cap = c.max_count() + extra_rows;
  c.k = random_values(static_cast<size_t>(c.cap * c.kv_dim()), seed, -2.0f, 2.0f);
  c.v = random_values(static_cast<size_t>(c.cap * c.kv_dim()), seed + 1, -1.0f, 1.0f);
  c.pos.assign(static_cast<size_t>(c.cap * c.n_head_kv), -1);
  std::mt19937 rng(seed + 2);
  for (int g = 0; g < c.n_head_kv; ++g) {
    std::vector<int32_t> all(static_cast<size_t>(span));
    std::iota(all.begin(), all.end(), kFirst);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> kept(all.begin(), all.begin() + c.len[g]);
    std::sort(kept.begin(), kept.end());
    for (int64_t i = 0; i < c.appended; ++i) kept.push_back(kFirst + span + static_cast<int32_t>(i));
    for (int64_t j = 0; j < c.cap; ++j) {
      if (j < c.count(g)) {
        c.pos[j * c.n_head_kv + g] = kept[j];
      } else {
        for (int d = 0; d < head_dim; ++d) {
          c.k[j * c.kv_dim() + int64_t(g) * head_dim + d] = NAN;
          c.v[j * c.kv_dim() + int64_t(g) * head_dim + d] = NAN;
        }
      }
    }
  }
  return c;
}

struct DeviceCache {
  DeviceArray<bf16> k, v;
  DeviceArray<int32_t> pos, len;
  explicit DeviceCache(const HeadCache& c)
      : k(upload(to_bf16(c.k), "k")), v(upload(to_bf16(c.v), "v")), pos(upload(c.pos, "pos")),
        len(upload(std::vector<int32_t>(c.len.begin(), c.len.end()), "len")) {}
  KvHeads view(const HeadCache& c) const {
    KvHeads kv;
    kv.k = k.data();
    kv.v = v.data();
    kv.pos = pos.data();
    kv.pos_stride = c.n_head_kv;
    kv.pos_head_stride = 1;
    kv.len = len.data();
    kv.appended = c.appended;
    kv.max_n = c.max_count();
    kv.rows = c.cap;
    return kv;
  }
};

// The softmax probabilities of query row q_row (one head's head_dim values at position qp) over
// the entries of KV head g, in double: probs[j] for j < count(g), 0 where the entry is above qp.
std::vector<double> ref_probs(const float* q_row, int32_t qp, const HeadCache& c, int g) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  std::vector<double> p(static_cast<size_t>(c.count(g)), 0.0);
  double mx = -INFINITY;
  for (int64_t j = 0; j < c.count(g); ++j) {
    if (c.pos[j * c.n_head_kv + g] > qp) continue;
    double s = 0;
    for (int d = 0; d < c.head_dim; ++d) s += double(q_row[d]) * c.k_at(j, g, d);
    p[j] = s * scale;
    mx = std::max(mx, p[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < c.count(g); ++j) {
    p[j] = c.pos[j * c.n_head_kv + g] > qp ? 0.0 : std::exp(p[j] - mx);
    sum += p[j];
  }
  for (auto& x : p) x = sum > 0 ? x / sum : 0.0;
  return p;
}

// Attention of q [n x n_head·head_dim] at q_pos over the cache, in double (zero rows where a row
// sees nothing of its KV head).
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<int32_t>& q_pos, int n_head,
                                  const HeadCache& c) {
  const int64_t n = static_cast<int64_t>(q_pos.size()), q_dim = int64_t(n_head) * c.head_dim;
  const int group = n_head / c.n_head_kv;
  std::vector<double> out(static_cast<size_t>(n * q_dim), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      const std::vector<double> p = ref_probs(q.data() + i * q_dim + int64_t(h) * c.head_dim, q_pos[i], c, g);
      for (int64_t j = 0; j < c.count(g); ++j) {
        if (p[j] == 0.0) continue;
        for (int d = 0; d < c.head_dim; ++d) out[i * q_dim + int64_t(h) * c.head_dim + d] += p[j] * c.v_at(j, g, d);
      }
    }
  }
  return out;
}

// The rows whose every query head sees nothing must be exactly zero.
void expect_zero_rows(const std::string& name, const std::vector<float>& out, const std::vector<int32_t>& q_pos,
                      int n_head, const HeadCache& c) {
  const int group = n_head / c.n_head_kv;
  const int64_t q_dim = int64_t(n_head) * c.head_dim;
  for (size_t i = 0; i < q_pos.size(); ++i) {
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      if (c.count(g) > 0 && c.pos[g] <= q_pos[i]) continue;  // entry 0 is the head's lowest position
      for (int d = 0; d < c.head_dim; ++d)
        ASSERT_EQ(out[i * q_dim + int64_t(h) * c.head_dim + d], 0.0f) << name << " row " << i << " head " << h;
    }
  }
}

class CudaKvHeads : public ::testing::Test {
 protected:
  void SetUp() override {
    if (device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Every kernel that serves this shape, on the same inputs.
void check_attention_kernels(Context& ctx, const std::string& name, const HeadCache& c, int n_head,
                             const std::vector<int32_t>& q_pos, uint32_t seed) {
  const int64_t n = static_cast<int64_t>(q_pos.size()), q_dim = int64_t(n_head) * c.head_dim;
  const std::vector<float> q = random_values(static_cast<size_t>(n * q_dim), seed, -2.0f, 2.0f);
  const std::vector<double> ref = ref_attention(q, q_pos, n_head, c);
  const DeviceCache dc(c);
  const KvHeads kv = dc.view(c);
  const auto dq = upload(to_bf16(q), "q");
  const auto dqp = upload(q_pos, "q_pos");
  auto dout = upload(to_bf16(std::vector<float>(ref.size(), kPoison)), "out");
  const auto run = [&](const std::string& kernel, const auto& launch) {
    copy_to_device(dout.data(), to_bf16(std::vector<float>(ref.size(), kPoison)).data(), dout.bytes(), "poison");
    launch();
    ctx.synchronize("attention test");
    const std::vector<float> out = to_float(download(dout, "out"));
    const std::string full = kernel + " " + name;
    EXPECT_LT(rel_error(full, out, ref), kTol) << full;
    expect_zero_rows(full, out, q_pos, n_head, c);
  };
  if (c.head_dim <= 256)
    run("generic", [&] { attention_generic(ctx, dq.data(), dqp.data(), n, kv, n_head, c.n_head_kv, c.head_dim, dout.data()); });
  if (c.head_dim == 64 || c.head_dim == 128)
    for (int variant = 1; variant <= kAttentionVariants; ++variant)
      run("flash v" + std::to_string(variant), [&] {
        attention(ctx, dq.data(), dqp.data(), n, kv, n_head, c.n_head_kv, c.head_dim, dout.data(), variant);
      });
  if (attention_wgmma_supported(c.head_dim))
    for (int variant = 0; variant < 4; ++variant)
      run("wgmma v" + std::to_string(variant), [&] {
        attention_wgmma(ctx, dq.data(), dqp.data(), n, kv, n_head, c.n_head_kv, c.head_dim, dout.data(), variant);
      });
  if (n == 1 && attention_decode_supported(c.head_dim)) {
    DeviceArray<float> scratch(static_cast<size_t>(attention_decode_scratch(n_head, c.head_dim)), "scratch");
    run("decode", [&] {
      attention_decode(ctx, dq.data(), 0, kv, n_head, c.n_head_kv, c.head_dim, dout.data(), scratch.data(),
                       dqp.data());
    });
  }
}

std::vector<int32_t> random_rows(int64_t n, int32_t top, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& x : p) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(top));
  p[0] = kFirst - 3;  // sees nothing
  return p;
}

// The appended tokens as query rows: a prefill chunk (or a decode step) after the cache.
std::vector<int32_t> appended_rows(const HeadCache& c, int32_t span) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < c.appended; ++i) p.push_back(kFirst + span + static_cast<int32_t>(i));
  return p;
}

TEST_F(CudaKvHeads, AttentionPerHeadLengthsAndPositions) {
  Context ctx;
  uint32_t seed = 5000;
  for (const int hd : {128, 64, 32}) {
    // 3 KV heads of 17, 64 and 129 entries at their own gapped positions; query rows anywhere.
    const HeadCache c = make_cache(hd, {17, 64, 129}, 0, 300, seed);
    check_attention_kernels(ctx, "3 kv heads 17/64/129 gqa6:3 hd" + std::to_string(hd) + ", 40 rows", c, 6,
                            random_rows(40, kFirst + 320, seed + 1), seed + 2);
    seed += 10;
  }
  // A head with no entries: its query heads' rows are zeros.
  const HeadCache empty = make_cache(128, {0, 50}, 0, 80, seed);
  check_attention_kernels(ctx, "kv head 0 empty, 4:2 hd128", empty, 4, random_rows(20, kFirst + 90, seed + 1),
                          seed + 2);
}

TEST_F(CudaKvHeads, PrefillAfterACompactedCache) {
  Context ctx;
  uint32_t seed = 5100;
  struct Shape {
    std::string name;
    std::vector<int64_t> len;
    int64_t appended;
    int32_t span;
    int n_head, head_dim;
  };
  const Shape shapes[] = {
      {"compacted 8 kv heads + 200 rows, 32:8 hd128", {300, 1, 129, 128, 0, 513, 77, 1000}, 200, 1200, 32, 128},
      {"compacted 4 kv heads + 257 rows, 16:4 hd128 (many tiles)", {4096, 2000, 3001, 130}, 257, 5000, 16, 128},
      {"compacted 3 kv heads + 70 rows, 6:3 hd64", {17, 64, 129}, 70, 200, 6, 64},
      {"compacted 2 kv heads + 33 rows, 4:2 hd48 (generic)", {5, 90}, 33, 100, 4, 48},
  };
  for (const Shape& s : shapes) {
    const HeadCache c = make_cache(s.head_dim, s.len, s.appended, s.span, seed);
    check_attention_kernels(ctx, s.name, c, s.n_head, appended_rows(c, s.span), seed + 1);
    seed += 10;
  }
}

TEST_F(CudaKvHeads, DecodeReadsLengthsFromTheDevice) {
  Context ctx;
  uint32_t seed = 5200;
  for (const int hd : {32, 64, 128, 256}) {
    const HeadCache c = make_cache(hd, {17, 64, 129}, 1, 300, seed);
    check_attention_kernels(ctx, "decode 3 kv heads 17/64/129 +1, 6:3 hd" + std::to_string(hd), c, 6,
                            appended_rows(c, 300), seed + 1);
    seed += 10;
  }
  // A captured decode step replays with the launch it was recorded with: new lengths uploaded to
  // the same len, the same KvHeads (its host max_n now above every count), must still be right.
  const int n_head = 8, hd = 128;
  HeadCache c = make_cache(hd, {900, 40, 2000, 3}, 1, 2500, seed);
  const DeviceCache dc(c);
  const KvHeads kv = dc.view(c);
  const std::vector<int32_t> q_pos = appended_rows(c, 2500);
  const auto q = random_values(static_cast<size_t>(n_head * hd), seed + 1, -2.0f, 2.0f);
  const auto dq = upload(to_bf16(q), "q");
  const auto dqp = upload(q_pos, "q_pos");
  DeviceArray<bf16> dout(static_cast<size_t>(n_head * hd), "out");
  DeviceArray<float> scratch(static_cast<size_t>(attention_decode_scratch(n_head, hd)), "scratch");
  for (const std::vector<int64_t>& shorter : {std::vector<int64_t>{900, 40, 2000, 3}, {850, 0, 1999, 3}, {1, 2, 3, 4}}) {
    // Dropping entries from the end of a head keeps the rest valid; the appended token moves down.
    HeadCache now = c;
    for (int g = 0; g < c.n_head_kv; ++g) {
      const int64_t e = c.len[g];
      for (int d = 0; d < hd; ++d) {
        now.k[shorter[g] * c.kv_dim() + int64_t(g) * hd + d] = c.k_at(e, g, d);
        now.v[shorter[g] * c.kv_dim() + int64_t(g) * hd + d] = c.v_at(e, g, d);
      }
      now.pos[shorter[g] * c.n_head_kv + g] = c.pos[e * c.n_head_kv + g];
    }
    now.len = shorter;
    copy_to_device(dc.k.data(), to_bf16(now.k).data(), dc.k.bytes(), "k");
    copy_to_device(dc.v.data(), to_bf16(now.v).data(), dc.v.bytes(), "v");
    copy_to_device(dc.pos.data(), now.pos.data(), dc.pos.bytes(), "pos");
    const std::vector<int32_t> len32(shorter.begin(), shorter.end());
    copy_to_device(dc.len.data(), len32.data(), dc.len.bytes(), "len");
    attention_decode(ctx, dq.data(), 0, kv, n_head, c.n_head_kv, hd, dout.data(), scratch.data(), dqp.data());
    ctx.synchronize("decode replay test");
    const std::string name = "decode, len from the device: " + std::to_string(shorter[0]) + "/" +
                             std::to_string(shorter[1]) + "/" + std::to_string(shorter[2]) + "/" +
                             std::to_string(shorter[3]);
    EXPECT_LT(rel_error(name, to_float(download(dout, "out")), ref_attention(q, q_pos, n_head, now)), kTol) << name;
  }
}

TEST_F(CudaKvHeads, LastRowMeanOverTheAppendedEntries) {
  Context ctx;
  uint32_t seed = 5300;
  for (const int appended : {1, 5}) {
    const int n_head = 6, hd = 64;
    const HeadCache c = make_cache(hd, {17, 64, 129}, appended, 300, seed);
    const int group = n_head / c.n_head_kv;
    const std::vector<int32_t> q_pos = appended_rows(c, 300);
    const int64_t n = static_cast<int64_t>(q_pos.size()), q_dim = int64_t(n_head) * hd, ld = c.cap;
    const auto q = random_values(static_cast<size_t>(n * q_dim), seed + 1, -2.0f, 2.0f);
    // Reference: the last row's probabilities per head, then their mean over heads per appended token.
    std::vector<double> want_probs(static_cast<size_t>(n_head * ld), 0.0), want_mean(static_cast<size_t>(appended), 0.0);
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      const auto p = ref_probs(q.data() + (n - 1) * q_dim + int64_t(h) * hd, q_pos[n - 1], c, g);
      for (int64_t j = 0; j < c.count(g); ++j) want_probs[h * ld + j] = p[j];
      for (int i = 0; i < appended; ++i) want_mean[i] += p[c.len[g] + i] / n_head;
    }
    const DeviceCache dc(c);
    const auto dq = upload(to_bf16(q), "q");
    const auto dqp = upload(q_pos, "q_pos");
    auto dprobs = upload(std::vector<float>(want_probs.size(), 0.0f), "probs");
    auto dmean = upload(std::vector<float>(static_cast<size_t>(appended), kPoison), "mean");
    KvHeads kv = dc.view(c);
    kv.max_n = c.cap;  // as the backend calls it: a bound, not the count
    attention_row_probs(ctx, dq.data() + (n - 1) * q_dim, 0, kv, n_head, c.n_head_kv, hd, dprobs.data(), ld,
                        dqp.data() + (n - 1));
    mean_over_heads(ctx, dprobs.data(), n_head, group, ld, dc.len.data(), appended, dmean.data());
    ctx.synchronize("last row mean test");
    const std::string name = std::to_string(appended) + " appended, 3 kv heads 17/64/129 6:3";
    EXPECT_LT(rel_error("row probs " + name, download(dprobs, "probs"), want_probs), kTol);
    EXPECT_LT(rel_error("last_row_mean " + name, download(dmean, "mean"), want_mean), kTol);
    seed += 10;
  }
}

TEST_F(CudaKvHeads, KeyMassAccumulatesFromAFirstRow) {
  Context ctx;
  uint32_t seed = 5400;
  const int n_head = 8, hd = 64;
  const HeadCache c = make_cache(hd, {17, 64, 129, 0}, 24, 300, seed);
  const int group = n_head / c.n_head_kv;
  const std::vector<int32_t> q_pos = appended_rows(c, 300);
  const int64_t n = static_cast<int64_t>(q_pos.size()), q_dim = int64_t(n_head) * hd;
  const int64_t ld = c.n_head_kv + 2;  // key_mass.cols() wider than the heads
  const auto q = random_values(static_cast<size_t>(n * q_dim), seed + 1, -2.0f, 2.0f);
  const DeviceCache dc(c);
  const auto dq = upload(to_bf16(q), "q");
  const auto dqp = upload(q_pos, "q_pos");
  KvHeads kv = dc.view(c);
  kv.max_n = c.cap;  // the backend passes a bound (the rows of key_mass)
  for (const int64_t from : {int64_t{0}, n - 3, n - 1, n}) {
    const std::vector<float> before = random_values(static_cast<size_t>(c.cap * ld), seed + 2, 0.0f, 1.0f);
    std::vector<double> want(before.begin(), before.end());
    for (int64_t i = from; i < n; ++i)
      for (int h = 0; h < n_head; ++h) {
        const int g = h / group;
        const auto p = ref_probs(q.data() + i * q_dim + int64_t(h) * hd, q_pos[i], c, g);
        for (int64_t j = 0; j < c.count(g); ++j) want[j * ld + g] += p[j];
      }
    auto dmass = upload(before, "mass");
    DeviceArray<float> row_stats(static_cast<size_t>(std::max<int64_t>(2, 2 * (n - from) * n_head)), "row stats");
    attention_key_mass(ctx, dq.data(), dqp.data(), n, from, kv, n_head, c.n_head_kv, hd, row_stats.data(),
                       dmass.data(), ld);
    ctx.synchronize("key mass test");
    const std::vector<float> got = download(dmass, "mass");
    // The added mass itself, so the prefilled values do not hide its error.
    std::vector<float> added(got.size());
    std::vector<double> want_added(got.size());
    for (size_t i = 0; i < got.size(); ++i) {
      added[i] = got[i] - before[i];
      want_added[i] = want[i] - before[i];
    }
    const std::string name = "key mass from row " + std::to_string(from) + " of " + std::to_string(n);
    if (from == n) {
      EXPECT_EQ(got, before) << name << ": no row, nothing added";
    } else {
      EXPECT_LT(rel_error(name, added, want_added), kTol) << name;
    }
    for (int64_t j = 0; j < c.cap; ++j) {
      for (int64_t col = 0; col < ld; ++col) {
        if (col < c.n_head_kv && j < c.count(static_cast<int>(col))) continue;
        ASSERT_EQ(got[j * ld + col], before[j * ld + col]) << name << ": entry " << j << " column " << col;
      }
    }
  }
}

TEST_F(CudaKvHeads, EntryNorms) {
  Context ctx;
  uint32_t seed = 5500;
  for (const int hd : {128, 48}) {
    const HeadCache c = make_cache(hd, {17, 64, 129}, 0, 300, seed);
    const int64_t ld = c.n_head_kv + 1, rows = c.max_count();
    std::vector<double> l1(static_cast<size_t>(rows * ld), kPoison), l2(l1.size(), kPoison);
    for (int g = 0; g < c.n_head_kv; ++g)
      for (int64_t j = 0; j < c.len[g]; ++j) {
        double a = 0, b = 0;
        for (int d = 0; d < hd; ++d) {
          a += std::fabs(c.v_at(j, g, d));
          b += double(c.k_at(j, g, d)) * c.k_at(j, g, d);
        }
        l1[j * ld + g] = a;
        l2[j * ld + g] = std::sqrt(b);
      }
    const DeviceCache dc(c);
    auto dl1 = upload(std::vector<float>(l1.size(), kPoison), "v_l1");
    auto dl2 = upload(std::vector<float>(l2.size(), kPoison), "k_l2");
    entry_norms(ctx, dc.k.data(), dc.v.data(), dc.len.data(), rows, c.n_head_kv, hd, dl1.data(), ld, dl2.data(), ld);
    ctx.synchronize("entry norms test");
    const std::string name = "3 kv heads 17/64/129 hd" + std::to_string(hd);
    EXPECT_LT(rel_error("entry_norms v_l1 " + name, download(dl1, "v_l1"), l1), kTol);
    EXPECT_LT(rel_error("entry_norms k_l2 " + name, download(dl2, "k_l2"), l2), kTol);
    // Either output alone.
    auto only = upload(std::vector<float>(l2.size(), kPoison), "k_l2 only");
    entry_norms(ctx, dc.k.data(), dc.v.data(), dc.len.data(), rows, c.n_head_kv, hd, nullptr, 0, only.data(), ld);
    ctx.synchronize("entry norms test");
    EXPECT_LT(rel_error("entry_norms k_l2 alone " + name, download(only, "k_l2"), l2), kTol);
    seed += 10;
  }
}

TEST_F(CudaKvHeads, GatherEntriesCompactsEachHead) {
  Context ctx;
  uint32_t seed = 5600;
  for (const int hd : {128, 6}) {  // 16-byte copies, and the element-wise path
    for (const bool with_mass : {true, false}) {
      const HeadCache src = make_cache(hd, {17, 64, 129}, 0, 300, seed);
      const std::vector<int64_t> kept = {5, 64, 40};  // entries kept per head (all of head 1)
      const int nkv = src.n_head_kv;
      const int64_t kv_dim = src.kv_dim(), dst_cap = 70, keep_rows = 64;
      std::mt19937 rng(seed + 3);
      std::vector<int32_t> keep(static_cast<size_t>(keep_rows * nkv), -7);  // past a head's count: never read
      for (int g = 0; g < nkv; ++g) {
        std::vector<int32_t> all(static_cast<size_t>(src.len[g]));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        std::vector<int32_t> pick(all.begin(), all.begin() + kept[g]);
        std::sort(pick.begin(), pick.end());
        for (int64_t i = 0; i < kept[g]; ++i) keep[i * nkv + g] = pick[i];
      }
      const std::vector<float> src_mass = random_values(static_cast<size_t>(src.cap * nkv), seed + 4, 0.0f, 5.0f);
      const std::vector<float> dst_k0 = random_values(static_cast<size_t>(dst_cap * kv_dim), seed + 5, -1.0f, 1.0f);
      const std::vector<float> dst_v0 = random_values(static_cast<size_t>(dst_cap * kv_dim), seed + 6, -1.0f, 1.0f);
      const std::vector<int32_t> dst_pos0(static_cast<size_t>(dst_cap * nkv), -5);
      const std::vector<float> dst_mass0(static_cast<size_t>(dst_cap * nkv), -1.0f);
      // Reference: head g's entry i = its entry keep[i, g] of src; everything else as it was.
      std::vector<float> want_k = dst_k0, want_v = dst_v0, want_mass = dst_mass0;
      std::vector<int32_t> want_pos = dst_pos0;
      for (int g = 0; g < nkv; ++g)
        for (int64_t i = 0; i < kept[g]; ++i) {
          const int64_t j = keep[i * nkv + g];
          for (int d = 0; d < hd; ++d) {
            want_k[i * kv_dim + int64_t(g) * hd + d] = src.k_at(j, g, d);
            want_v[i * kv_dim + int64_t(g) * hd + d] = src.v_at(j, g, d);
          }
          want_pos[i * nkv + g] = src.pos[j * nkv + g];
          if (with_mass) want_mass[i * nkv + g] = src_mass[j * nkv + g];
        }
      const DeviceCache ds(src);
      const auto dsm = upload(src_mass, "src mass");
      const auto dkeep = upload(keep, "keep");
      const auto dlen = upload(std::vector<int32_t>(kept.begin(), kept.end()), "dst len");
      auto dk = upload(to_bf16(dst_k0), "dst k"), dv = upload(to_bf16(dst_v0), "dst v");
      auto dpos = upload(dst_pos0, "dst pos");
      auto dmass = upload(dst_mass0, "dst mass");
      gather_entries(ctx, ds.k.data(), ds.v.data(), ds.pos.data(), with_mass ? dsm.data() : nullptr, src.cap,
                     dkeep.data(), dlen.data(), keep_rows, nkv, hd, dk.data(), dv.data(), dpos.data(),
                     with_mass ? dmass.data() : nullptr);
      ctx.synchronize("gather_entries test");
      const std::string name = "gather_entries hd" + std::to_string(hd) + (with_mass ? " with mass" : " no mass");
      // Exact copies: bf16 in, bf16 out.
      const std::vector<float> got_k = to_float(download(dk, "k")), got_v = to_float(download(dv, "v"));
      for (size_t i = 0; i < want_k.size(); ++i) {
        ASSERT_EQ(got_k[i], want_k[i]) << name << " k element " << i;
        ASSERT_EQ(got_v[i], want_v[i]) << name << " v element " << i;
      }
      EXPECT_EQ(download(dpos, "pos"), want_pos) << name;
      EXPECT_EQ(download(dmass, "mass"), want_mass) << name;
      std::printf("[cuda-kv] %-60s exact\n", name.c_str());
      seed += 10;
    }
  }
}

TEST_F(CudaKvHeads, QkvRopeAppendWritesEachHeadAtItsLength) {
  Context ctx;
  uint32_t seed = 5700;
  for (const int hd : {128, 64, 6}) {  // bf16x2 pairs, and single elements (half odd)
    for (const int64_t n : {int64_t{1}, int64_t{5}}) {
      const int n_head = 6, nkv = 3;
      const std::vector<int32_t> len = {3, 0, 7};
      const int64_t cap = 7 + n + 2, q_dim = int64_t(n_head) * hd, kv_dim = int64_t(nkv) * hd;
      const int64_t width = q_dim + 2 * kv_dim;
      const auto qkv = random_values(static_cast<size_t>(n * width), seed, -2.0f, 2.0f);
      std::vector<int32_t> positions;
      for (int64_t i = 0; i < n; ++i) positions.push_back(static_cast<int32_t>(400 + 37 * i));
      std::vector<float> inv_freq(static_cast<size_t>(hd / 2));
      for (int i = 0; i < hd / 2; ++i) inv_freq[i] = 1.0f / std::pow(10000.0f, 2.0f * float(i) / float(hd));
      const auto k0 = random_values(static_cast<size_t>(cap * kv_dim), seed + 1, -1.0f, 1.0f);
      const auto v0 = random_values(static_cast<size_t>(cap * kv_dim), seed + 2, -1.0f, 1.0f);
      const std::vector<int32_t> pos0(static_cast<size_t>(cap * nkv), -1);
      // Reference: rotate-half RoPE in double; K and V of KV head g to its entry len[g] + i.
      const auto rotate = [&](const float* x, int32_t p, double* out) {
        for (int i = 0; i < hd / 2; ++i) {
          const double a = double(p) * inv_freq[i], x0 = x[i], x1 = x[i + hd / 2];
          out[i] = x0 * std::cos(a) - x1 * std::sin(a);
          out[i + hd / 2] = x1 * std::cos(a) + x0 * std::sin(a);
        }
      };
      std::vector<double> want_q(static_cast<size_t>(n * q_dim)), want_k(k0.begin(), k0.end()),
          want_v(v0.begin(), v0.end());
      std::vector<int32_t> want_pos = pos0;
      for (int64_t i = 0; i < n; ++i) {
        const float* row = qkv.data() + i * width;
        for (int h = 0; h < n_head; ++h) rotate(row + int64_t(h) * hd, positions[i], &want_q[i * q_dim + int64_t(h) * hd]);
        for (int g = 0; g < nkv; ++g) {
          const int64_t e = len[g] + i;
          rotate(row + q_dim + int64_t(g) * hd, positions[i], &want_k[e * kv_dim + int64_t(g) * hd]);
          for (int d = 0; d < hd; ++d) want_v[e * kv_dim + int64_t(g) * hd + d] = row[q_dim + kv_dim + int64_t(g) * hd + d];
          want_pos[e * nkv + g] = positions[i];
        }
      }
      const auto dqkv = upload(to_bf16(qkv), "qkv");
      const auto dpositions = upload(positions, "positions");
      const auto dfreq = upload(inv_freq, "inv_freq");
      const auto dlen = upload(len, "len");
      auto dq = upload(to_bf16(std::vector<float>(static_cast<size_t>(n * q_dim), kPoison)), "q");
      auto dk = upload(to_bf16(k0), "k"), dv = upload(to_bf16(v0), "v");
      auto dpos = upload(pos0, "pos");
      qkv_rope_append(ctx, dqkv.data(), n, n_head, nkv, hd, dpositions.data(), dfreq.data(), dq.data(), dk.data(),
                      dv.data(), dpos.data(), dlen.data());
      ctx.synchronize("qkv_rope_append test");
      const std::string name = "qkv_rope_append n" + std::to_string(n) + " hd" + std::to_string(hd) + " len 3/0/7";
      EXPECT_LT(rel_error(name + " q", to_float(download(dq, "q")), want_q), kTol);
      EXPECT_LT(rel_error(name + " k", to_float(download(dk, "k")), want_k), kTol);
      const std::vector<float> got_v = to_float(download(dv, "v"));
      for (size_t i = 0; i < got_v.size(); ++i) ASSERT_EQ(double(got_v[i]), want_v[i]) << name << " v element " << i;
      EXPECT_EQ(download(dpos, "pos"), want_pos) << name;
      seed += 10;
    }
  }
}

}  // namespace
}  // namespace sdtp::cuda
