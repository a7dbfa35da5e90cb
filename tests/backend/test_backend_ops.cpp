// Every op of backend.h, as the Session calls it (fused Q|K|V rows, cache rows at an offset, pruned
// positions, statistics, values read from the device), on every backend this machine has, held to
// the CPU backend (the reference) on fresh random inputs: bf16 tolerance (2e-2 of max|ref|) for
// arithmetic, exact for indices, positions and copies. Inputs are rounded to bf16 first, so every
// backend starts from the same numbers. The residual stream x has its own type (residual_type(): f32
// on CUDA too), so the ops that touch it (embedding, rmsnorm, accumulating matmul, gather_rows) run
// on it as well. Backends this machine lacks are skipped, visibly.
#include <gtest/gtest.h>

#include "testing/fixtures.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "sdtp/error.h"

namespace sdtp {
namespace {

constexpr double kTol = 2e-2;  // of max|ref|: bf16 storage, float32 accumulation

using sdtp::testing::bf16_round;

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_round(u(rng));
  return v;
}

// `count` ascending positions from `first` with random gaps (what pruning leaves behind).
std::vector<int32_t> gapped_positions(int64_t count, int32_t first, uint32_t seed, int max_gap = 3) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> gap(1, max_gap);
  std::vector<int32_t> p(static_cast<size_t>(count));
  int32_t at = first;
  for (auto& x : p) {
    x = at;
    at += gap(rng);
  }
  return p;
}

// Max |got - ref| within tol · max|ref| (and the same length).
void expect_close(const std::vector<float>& ref, const std::vector<float>& got, const std::string& what,
                  double tol = kTol) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  double max_ref = 0, max_err = 0;
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(e <= max_err)) {  // NaN counts as worst
      max_err = std::isnan(e) ? INFINITY : e;
      worst = i;
    }
  }
  EXPECT_LE(max_err, tol * std::max(max_ref, 1e-6))
      << what << ": worst at " << worst << " ref " << (ref.empty() ? 0 : ref[worst]) << " got "
      << (got.empty() ? 0 : got[worst]) << " (max|ref| " << max_ref << ")";
}

// One backend's copy of the test inputs.
struct On {
  std::shared_ptr<Backend> b;

  DeviceTensor act(const std::vector<float>& host, int64_t rows, int64_t cols) const {
    DeviceTensor t = b->alloc(b->activation_type(), rows, cols, "test activations");
    b->upload(t, host.data(), ElemType::f32);
    return t;
  }
  // The residual stream's type (what the Session keeps x in).
  DeviceTensor res(const std::vector<float>& host, int64_t rows, int64_t cols) const {
    DeviceTensor t = b->alloc(b->residual_type(), rows, cols, "test residual");
    b->upload(t, host.data(), ElemType::f32);
    return t;
  }
  DeviceTensor f32(const std::vector<float>& host, int64_t rows, int64_t cols) const {
    DeviceTensor t = b->alloc(ElemType::f32, rows, cols, "test f32");
    b->upload(t, host.data(), ElemType::f32);
    return t;
  }
  DeviceTensor i32(const std::vector<int32_t>& host, int64_t rows, int64_t cols = 1) const {
    DeviceTensor t = b->alloc(ElemType::i32, rows, cols, "test i32");
    b->upload(t, host.data(), ElemType::i32);
    return t;
  }
  DeviceTensor zeros(ElemType type, int64_t rows, int64_t cols) const {
    DeviceTensor t = b->alloc(type, rows, cols, "test zeros");
    std::vector<float> z(static_cast<size_t>(t.numel()), 0.0f);
    if (type == ElemType::i32) b->upload(t, std::vector<int32_t>(z.size(), 0).data(), ElemType::i32);
    else b->upload(t, z.data(), ElemType::f32);
    return t;
  }
  std::vector<float> get(const DeviceTensor& t) const {
    std::vector<float> h(static_cast<size_t>(t.numel()));
    b->download(h.data(), t, ElemType::f32);
    return h;
  }
  std::vector<int32_t> get_i32(const DeviceTensor& t) const {
    std::vector<int32_t> h(static_cast<size_t>(t.numel()));
    b->download(h.data(), t, ElemType::i32);
    return h;
  }
};

// Parameter: the backend under test ("cpu" runs against itself: the ops run and agree).
class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!backend_available(GetParam())) GTEST_SKIP() << "no CUDA device";
    BackendOptions o;
    o.decode_q8 = false;  // the float32 reference
    ref.b = make_backend("cpu", o);
    dev.b = make_backend(GetParam(), o);
  }
  On ref, dev;
};

INSTANTIATE_TEST_SUITE_P(Devices, BackendOps, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

const int64_t kRows[] = {1, 7, 130};

TEST_P(BackendOps, CopiesAndFills) {
  const std::vector<int32_t> ids = {3, -1, 7, 2147483647, 0};
  for (On* o : {&ref, &dev}) {
    const DeviceTensor t = o->i32(ids, 5);
    EXPECT_EQ(o->get_i32(t), ids);
    const DeviceTensor c = o->zeros(ElemType::i32, 5, 1);
    o->b->copy(c, t);
    EXPECT_EQ(o->get_i32(c), ids);
    const DeviceTensor f = o->zeros(ElemType::f32, 3, 4);
    o->b->fill(f, 2.5f);
    EXPECT_EQ(o->get(f), std::vector<float>(12, 2.5f));
    const std::vector<float> v = random_values(24, 1);
    const DeviceTensor a = o->act(v, 4, 6);
    EXPECT_EQ(o->get(a), v);  // bf16-representable values survive the round trip
    EXPECT_EQ(o->get(a.rows(1, 2)), std::vector<float>(v.begin() + 6, v.begin() + 18));
  }
}

TEST_P(BackendOps, Matmul) {
  uint32_t seed = 100;
  for (int64_t n : kRows) {
    for (int64_t k : {64, 200}) {
      const int64_t m = 96;
      const auto x = random_values(static_cast<size_t>(n * k), ++seed);
      const auto w = random_values(static_cast<size_t>(m * k), ++seed, 0.2f);
      const auto bias = random_values(static_cast<size_t>(m), ++seed);
      const auto y0 = random_values(static_cast<size_t>(n * m), ++seed);
      const std::string at = " n=" + std::to_string(n) + " k=" + std::to_string(k);
      std::vector<float> out[2][5];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const auto plain = o.b->upload_matrix(w.data(), m, k, nullptr);
        const auto biased = o.b->upload_matrix(w.data(), m, k, bias.data());
        const DeviceTensor xt = o.act(x, n, k);
        DeviceTensor y = o.b->alloc(o.b->activation_type(), n, m, "y");
        o.b->matmul(xt, *plain, y);
        out[i][0] = o.get(y);
        o.b->matmul(xt, *biased, y);
        out[i][1] = o.get(y);
        DeviceTensor yf = o.b->alloc(ElemType::f32, n, m, "y f32");
        o.b->matmul(xt, *biased, yf);
        out[i][2] = o.get(yf);
        const DeviceTensor acc = o.act(y0, n, m);
        o.b->matmul(xt, *plain, acc, /*accumulate=*/true);
        out[i][3] = o.get(acc);
        const DeviceTensor res = o.res(y0, n, m);
        o.b->matmul(xt, *plain, res, /*accumulate=*/true);
        o.b->matmul(xt, *plain, res, /*accumulate=*/true);  // twice: the block's two residual adds
        out[i][4] = o.get(res);
      }
      expect_close(out[0][0], out[1][0], "matmul" + at);
      expect_close(out[0][1], out[1][1], "matmul with bias" + at);
      expect_close(out[0][2], out[1][2], "matmul f32 out with bias" + at);
      expect_close(out[0][3], out[1][3], "matmul accumulate" + at);
      expect_close(out[0][4], out[1][4], "matmul accumulate into the residual stream" + at);
    }
  }
}

TEST_P(BackendOps, Rmsnorm) {
  uint32_t seed = 200;
  for (int64_t n : kRows) {
    for (int64_t d : {64, 576}) {
      const auto x = random_values(static_cast<size_t>(n * d), ++seed, 3.0f);
      const auto w = random_values(static_cast<size_t>(d), ++seed);
      std::vector<float> with[2], without[2], inplace[2], res_with[2], res_without[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const DeviceTensor xt = o.act(x, n, d), wt = o.f32(w, 1, d);
        DeviceTensor y = o.b->alloc(o.b->activation_type(), n, d, "y");
        o.b->rmsnorm(xt, wt, 1e-5f, y);
        with[i] = o.get(y);
        o.b->rmsnorm(xt, DeviceTensor(), 1e-6f, y);
        without[i] = o.get(y);
        const DeviceTensor xr = o.res(x, n, d);  // the residual stream into act rows, as the block reads it
        o.b->rmsnorm(xr, wt, 1e-5f, y);
        res_with[i] = o.get(y);
        o.b->rmsnorm(xr, DeviceTensor(), 1e-6f, y);  // the SDTP predictor's input norm
        res_without[i] = o.get(y);
        o.b->rmsnorm(xt, wt, 1e-5f, xt);  // y aliasing x
        inplace[i] = o.get(xt);
      }
      const std::string at = " n=" + std::to_string(n) + " d=" + std::to_string(d);
      expect_close(with[0], with[1], "rmsnorm" + at);
      expect_close(without[0], without[1], "rmsnorm without weight" + at);
      expect_close(inplace[0], inplace[1], "rmsnorm in place" + at);
      expect_close(res_with[0], res_with[1], "rmsnorm of the residual stream" + at);
      expect_close(res_without[0], res_without[1], "rmsnorm of the residual stream without weight" + at);
    }
  }
}

TEST_P(BackendOps, Embedding) {
  const int64_t vocab = 50, d = 72;
  const auto table = random_values(static_cast<size_t>(vocab * d), 300);
  const std::vector<int32_t> ids = {0, 49, 7, 7, -1, 50, 13};  // out of range: a zero row
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<float> out[2], res[2];
  On* on[2] = {&ref, &dev};
  for (int i = 0; i < 2; ++i) {
    On& o = *on[i];
    const auto t = o.b->upload_matrix(table.data(), vocab, d, nullptr);
    DeviceTensor y = o.b->alloc(o.b->activation_type(), n, d, "y");
    o.b->embedding(*t, o.i32(ids, n), y);
    out[i] = o.get(y);
    DeviceTensor x = o.b->alloc(o.b->residual_type(), n, d, "x");  // what the Session embeds into
    o.b->embedding(*t, o.i32(ids, n), x);
    res[i] = o.get(x);
  }
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(res[0], res[1]);  // bf16 table rows widen exactly
}

struct Heads {
  int n_head, n_head_kv, head_dim;
};
const Heads kHeads[] = {{4, 2, 64}, {8, 2, 128}, {4, 1, 32}, {2, 2, 128}};

std::string name_of(const Heads& h, int64_t n) {
  return " heads " + std::to_string(h.n_head) + "/" + std::to_string(h.n_head_kv) + " x " +
         std::to_string(h.head_dim) + " rows " + std::to_string(n);
}

std::vector<float> inv_freq_of(int head_dim) {
  std::vector<float> f(static_cast<size_t>(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i) f[i] = std::pow(10000.0f, -2.0f * i / head_dim);
  return f;
}

// A cache whose KV heads hold different entries: head g holds n[g] of them at its own ascending
// positions (gapped, as pruning and eviction leave them), rows past n[g] at INT32_MAX.
struct HostCache {
  int n_head_kv = 0, head_dim = 0;
  int64_t cap = 0;
  std::vector<int64_t> n;
  std::vector<float> k, v;
  std::vector<int32_t> pos;  // [cap x n_head_kv]
  int32_t max_pos() const {
    int32_t m = 0;
    for (int g = 0; g < n_head_kv; ++g)
      if (n[g]) m = std::max(m, pos[(n[g] - 1) * n_head_kv + g]);
    return m;
  }
};

HostCache random_cache(const Heads& h, std::vector<int64_t> n, int64_t cap, uint32_t seed) {
  HostCache c;
  c.n_head_kv = h.n_head_kv;
  c.head_dim = h.head_dim;
  c.cap = cap;
  c.n = std::move(n);
  const int64_t kv_dim = int64_t(h.n_head_kv) * h.head_dim;
  c.k = random_values(static_cast<size_t>(cap * kv_dim), seed, 2.0f);
  c.v = random_values(static_cast<size_t>(cap * kv_dim), seed + 1);
  c.pos.assign(static_cast<size_t>(cap * h.n_head_kv), std::numeric_limits<int32_t>::max());
  for (int g = 0; g < h.n_head_kv; ++g) {
    const auto p = gapped_positions(c.n[g], 2 + g, seed + 2 + g);
    for (int64_t j = 0; j < c.n[g]; ++j) c.pos[j * h.n_head_kv + g] = p[j];
  }
  return c;
}

KVView upload_cache(const On& o, const HostCache& c) {
  const int64_t kv_dim = int64_t(c.n_head_kv) * c.head_dim;
  KVView kv;
  kv.k = o.act(c.k, c.cap, kv_dim);
  kv.v = o.act(c.v, c.cap, kv_dim);
  kv.pos = o.i32(c.pos, c.cap, c.n_head_kv);
  std::vector<int32_t> len(c.n.begin(), c.n.end());
  kv.len = o.i32(len, 1, c.n_head_kv);
  kv.n = c.n;
  return kv;
}

// The naive double-precision reference of attention() over a per-head cache: output rows, the last
// row's head-mean probabilities of the `appended` newest entries, and key mass over rows [from, n).
struct NaiveAttention {
  std::vector<float> out, last_mean, mass;
};
NaiveAttention naive_attention(const std::vector<float>& q, const std::vector<int32_t>& q_pos, int64_t n,
                               const HostCache& c, const std::vector<int64_t>& len, int64_t appended, int n_head,
                               int64_t mass_rows, int64_t mass_from) {
  const int H = c.n_head_kv, hd = c.head_dim, group = n_head / H;
  const int64_t q_dim = int64_t(n_head) * hd, kv_dim = int64_t(H) * hd;
  NaiveAttention r;
  r.out.assign(static_cast<size_t>(n * q_dim), 0.0f);
  r.last_mean.assign(static_cast<size_t>(appended), 0.0f);
  r.mass.assign(static_cast<size_t>(mass_rows * H), 0.0f);
  std::vector<double> mass(r.mass.size(), 0.0);
  for (int h = 0; h < n_head; ++h) {
    const int g = h / group;
    const int64_t nk = len[g] + appended;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> p(static_cast<size_t>(nk), 0.0);
      double mx = -INFINITY;
      for (int64_t j = 0; j < nk; ++j) {
        if (c.pos[j * H + g] > q_pos[i]) continue;
        double dot = 0;
        for (int t = 0; t < hd; ++t) dot += double(q[i * q_dim + h * hd + t]) * c.k[j * kv_dim + g * hd + t];
        p[j] = dot / std::sqrt(double(hd));
        mx = std::max(mx, p[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < nk; ++j) sum += c.pos[j * H + g] <= q_pos[i] ? (p[j] = std::exp(p[j] - mx)) : (p[j] = 0);
      for (int64_t j = 0; j < nk && sum > 0; ++j) {
        p[j] /= sum;
        for (int t = 0; t < hd; ++t) r.out[i * q_dim + h * hd + t] += float(p[j] * c.v[j * kv_dim + g * hd + t]);
        if (i >= mass_from) mass[j * H + g] += p[j];
      }
      if (i == n - 1)
        for (int64_t a = 0; a < appended; ++a) r.last_mean[a] += float(p[len[g] + a] / n_head);
    }
  }
  for (size_t i = 0; i < mass.size(); ++i) r.mass[i] = static_cast<float>(mass[i]);
  return r;
}

// Per-head appends: every KV head's new rows go after its own entries (n[g] differs per head).
TEST_P(BackendOps, QkvRopeAppend) {
  uint32_t seed = 400;
  for (const Heads& h : kHeads) {
    for (int64_t n : kRows) {
      const int64_t q_dim = int64_t(h.n_head) * h.head_dim, kv_dim = int64_t(h.n_head_kv) * h.head_dim;
      std::vector<int64_t> len(static_cast<size_t>(h.n_head_kv));
      for (int g = 0; g < h.n_head_kv; ++g) len[g] = 5 + 3 * g;
      const int64_t cap = 5 + 3 * h.n_head_kv + n + 3;
      const auto qkv = random_values(static_cast<size_t>(n * (q_dim + 2 * kv_dim)), ++seed);
      const auto pos = gapped_positions(n, 90, ++seed, 40);
      const auto inv = inv_freq_of(h.head_dim);
      const HostCache hc = random_cache(h, len, cap, ++seed);
      std::vector<float> q[2], k[2], v[2];
      std::vector<int32_t> p[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const KVView cache = upload_cache(o, hc);
        DeviceTensor qt = o.b->alloc(o.b->activation_type(), n, q_dim, "q");
        o.b->qkv_rope_append(o.act(qkv, n, q_dim + 2 * kv_dim), o.i32(pos, n), o.f32(inv, 1, h.head_dim / 2),
                             h.n_head, h.n_head_kv, h.head_dim, qt, cache);
        q[i] = o.get(qt);
        k[i] = o.get(cache.k);
        v[i] = o.get(cache.v);
        p[i] = o.get_i32(cache.pos);
      }
      const std::string at = name_of(h, n);
      expect_close(q[0], q[1], "q" + at);
      expect_close(k[0], k[1], "cache k" + at);
      EXPECT_EQ(v[0], v[1]) << "cache v" << at;
      EXPECT_EQ(p[0], p[1]) << "cache positions" << at;
      // Against the inputs: head g's row len[g] + r holds V of row r and position pos[r]; rows
      // before len[g] are untouched.
      for (int g = 0; g < h.n_head_kv; ++g)
        for (int64_t r = 0; r < n; ++r) {
          const int64_t row = len[g] + r;
          EXPECT_EQ(p[0][row * h.n_head_kv + g], pos[r]) << at;
          for (int t = 0; t < h.head_dim; ++t)
            ASSERT_EQ(v[0][row * kv_dim + g * h.head_dim + t],
                      qkv[r * (q_dim + 2 * kv_dim) + q_dim + kv_dim + g * h.head_dim + t])
                << "v of head " << g << " row " << r << at;
        }
      for (int g = 0; g < h.n_head_kv; ++g)
        for (int64_t j = 0; j < len[g]; ++j) EXPECT_EQ(p[0][j * h.n_head_kv + g], hc.pos[j * h.n_head_kv + g]) << at;
    }
  }
}

// Attention over a cache whose heads hold different entries (different counts and positions),
// after rows were appended to each: every backend against the naive double reference, with the
// last row's head-mean probabilities of the appended entries and key mass accumulated from a first
// row (SnapKV's window) into a tensor that already holds mass.
TEST_P(BackendOps, AttentionWithStats) {
  uint32_t seed = 500;
  struct Shape {
    int64_t n, base;  // query rows (= entries appended), entries before them in head 0
  };
  for (const Heads& h : kHeads) {
    for (const Shape s : {Shape{1, 0}, Shape{1, 300}, Shape{7, 50}, Shape{130, 200}}) {
      const int64_t q_dim = int64_t(h.n_head) * h.head_dim;
      std::vector<int64_t> len(static_cast<size_t>(h.n_head_kv));
      for (int g = 0; g < h.n_head_kv; ++g) len[g] = std::max<int64_t>(0, s.base - 17 * g);
      int64_t most = 0;
      for (int64_t l : len) most = std::max(most, l);
      const int64_t cap = most + s.n + 9;
      HostCache hc = random_cache(h, len, cap, ++seed);
      // The appended entries: the query rows' own positions, the same in every head, after the
      // cached ones.
      const int32_t after = hc.max_pos() + 1;
      std::vector<int32_t> q_pos = gapped_positions(s.n, after, ++seed);
      for (int g = 0; g < h.n_head_kv; ++g)
        for (int64_t a = 0; a < s.n; ++a) hc.pos[(len[g] + a) * h.n_head_kv + g] = q_pos[a];
      std::vector<int64_t> all = len;
      for (int64_t& x : all) x += s.n;
      const auto q = random_values(static_cast<size_t>(s.n * q_dim), ++seed, 2.0f);
      const int64_t from = s.n / 2, mass_rows = most + s.n + 2;
      const auto mass0 = random_values(static_cast<size_t>(mass_rows * h.n_head_kv), ++seed, 1.0f);
      const NaiveAttention want = naive_attention(q, q_pos, s.n, hc, len, s.n, h.n_head, mass_rows, from);
      std::vector<float> out[2], mean[2], mass[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const KVView cache = upload_cache(o, hc);  // len: the counts before the appended rows
        DeviceTensor ot = o.b->alloc(o.b->activation_type(), s.n, q_dim, "out");
        AttentionStats stats;
        stats.last_row_mean = o.zeros(ElemType::f32, s.n, 1);
        stats.key_mass = o.f32(mass0, mass_rows, h.n_head_kv);
        stats.mass_from = from;
        o.b->attention(o.act(q, s.n, q_dim), o.i32(q_pos, s.n), cache, s.n, h.n_head, h.n_head_kv, h.head_dim, ot,
                       &stats);
        out[i] = o.get(ot);
        mean[i] = o.get(stats.last_row_mean);
        mass[i] = o.get(stats.key_mass);
        for (size_t j = 0; j < mass[i].size(); ++j) mass[i][j] -= mass0[j];  // what this call added
      }
      const std::string at = name_of(h, s.n) + " cached " + std::to_string(s.base);
      expect_close(want.out, out[0], "attention (cpu vs naive)" + at, 1e-4);
      expect_close(want.last_mean, mean[0], "last_row_mean (cpu vs naive)" + at, 1e-4);
      expect_close(want.mass, mass[0], "key_mass (cpu vs naive)" + at, 1e-4);
      expect_close(out[0], out[1], "attention" + at);
      expect_close(mean[0], mean[1], "last_row_mean" + at);
      expect_close(mass[0], mass[1], "key_mass" + at);
    }
  }
}

// The CPU's 16-bit KV caches (f16, bf16): a cache uploaded from float32 values holds them rounded,
// and attention (decode and prefill shapes, with the last row's probabilities and key mass),
// entry_norms and gather_entries over it equal the naive double reference on those rounded values.
TEST(CpuKvCache16, AttentionNormsAndGatherMatchNaiveOnRoundedValues) {
  BackendOptions bo;
  bo.decode_q8 = false;
  On o{make_backend("cpu", bo)};
  uint32_t seed = 900;
  for (const ElemType type : {ElemType::f16, ElemType::bf16}) {
    ASSERT_TRUE(o.b->supports_kv_type(type));
    const double round = type == ElemType::f16 ? 1.0 / 2048 : 1.0 / 256;  // half an ulp, relative
    for (const Heads& h : kHeads) {
      for (const auto& [n, base] : {std::pair<int64_t, int64_t>{1, 300}, {130, 200}}) {
        const int64_t q_dim = int64_t(h.n_head) * h.head_dim, kv_dim = int64_t(h.n_head_kv) * h.head_dim;
        std::vector<int64_t> len(static_cast<size_t>(h.n_head_kv));
        for (int g = 0; g < h.n_head_kv; ++g) len[g] = std::max<int64_t>(0, base - 17 * g);
        const int64_t most = *std::max_element(len.begin(), len.end()), cap = most + n + 3;
        HostCache hc = random_cache(h, len, cap, ++seed);
        {  // full float32 values (random_cache's are bf16-exact)
          std::mt19937 rng(++seed);
          std::uniform_real_distribution<float> u(-2.0f, 2.0f);
          for (float& x : hc.k) x = u(rng);
          for (float& x : hc.v) x = u(rng) / 2;
        }
        const int32_t after = hc.max_pos() + 1;
        const std::vector<int32_t> q_pos = gapped_positions(n, after, ++seed);
        for (int g = 0; g < h.n_head_kv; ++g)
          for (int64_t a = 0; a < n; ++a) hc.pos[(len[g] + a) * h.n_head_kv + g] = q_pos[a];
        KVView kv;
        kv.k = o.b->alloc(type, cap, kv_dim, "k16");
        kv.v = o.b->alloc(type, cap, kv_dim, "v16");
        o.b->upload(kv.k, hc.k.data(), ElemType::f32);
        o.b->upload(kv.v, hc.v.data(), ElemType::f32);
        // What the cache holds, read back, is each value rounded to the nearest 16-bit one.
        HostCache hr = hc;
        hr.k = o.get(kv.k);
        hr.v = o.get(kv.v);
        double worst = 0;
        bool changed = false;
        for (size_t i = 0; i < hc.k.size(); ++i) {
          worst = std::max<double>(worst, std::fabs(hr.k[i] - hc.k[i]) / std::max(std::fabs(hc.k[i]), 6.2e-5f));  // f16 normals
          changed = changed || hr.k[i] != hc.k[i];
        }
        ASSERT_LE(worst, round * (1 + 1e-6)) << elem_name(type);
        ASSERT_TRUE(changed) << elem_name(type) << ": nothing was rounded";
        kv.pos = o.i32(hc.pos, cap, h.n_head_kv);
        kv.len = o.i32(std::vector<int32_t>(len.begin(), len.end()), 1, h.n_head_kv);
        kv.n = len;
        std::vector<int64_t> all = len;
        for (int64_t& x : all) x += n;
        const auto q = random_values(static_cast<size_t>(n * q_dim), ++seed, 2.0f);
        const int64_t from = n / 2, mass_rows = most + n + 2;
        const NaiveAttention want = naive_attention(q, q_pos, n, hr, len, n, h.n_head, mass_rows, from);
        DeviceTensor ot = o.b->alloc(ElemType::f32, n, q_dim, "out");
        AttentionStats stats;
        stats.last_row_mean = o.zeros(ElemType::f32, n, 1);
        stats.key_mass = o.zeros(ElemType::f32, mass_rows, h.n_head_kv);
        stats.mass_from = from;
        o.b->attention(o.act(q, n, q_dim), o.i32(q_pos, n), kv, n, h.n_head, h.n_head_kv, h.head_dim, ot, &stats);
        const std::string at = std::string(elem_name(type)) + " " + name_of(h, n) + " cached " + std::to_string(base);
        expect_close(want.out, o.get(ot), "attention" + at, 1e-4);
        expect_close(want.last_mean, o.get(stats.last_row_mean), "last_row_mean" + at, 1e-4);
        expect_close(want.mass, o.get(stats.key_mass), "key_mass" + at, 1e-4);
        // Norms of the entries on the rounded values.
        DeviceTensor v_l1 = o.zeros(ElemType::f32, cap, h.n_head_kv), k_l2 = o.zeros(ElemType::f32, cap, h.n_head_kv);
        o.b->entry_norms(kv, h.n_head_kv, h.head_dim, v_l1, k_l2);
        const std::vector<float> l1 = o.get(v_l1), l2 = o.get(k_l2);
        for (int g = 0; g < h.n_head_kv; ++g)
          for (int64_t j = 0; j < len[g]; ++j) {
            double a = 0, b = 0;
            for (int t = 0; t < h.head_dim; ++t) {
              const size_t i = static_cast<size_t>(j * kv_dim + g * h.head_dim + t);
              a += std::fabs(double(hr.v[i]));
              b += double(hr.k[i]) * hr.k[i];
            }
            ASSERT_NEAR(l1[j * h.n_head_kv + g], a, 1e-5 * a) << at;
            ASSERT_NEAR(l2[j * h.n_head_kv + g], std::sqrt(b), 1e-5 * std::sqrt(b)) << at;
          }
        // Gather every other entry of each head into a second 16-bit cache: the bits move unchanged.
        KVView dst;
        dst.k = o.b->alloc(type, cap, kv_dim, "k16 dst");
        dst.v = o.b->alloc(type, cap, kv_dim, "v16 dst");
        dst.pos = o.i32(std::vector<int32_t>(static_cast<size_t>(cap * h.n_head_kv), 0), cap, h.n_head_kv);
        std::vector<int32_t> keep(static_cast<size_t>(cap * h.n_head_kv), 0), kept(h.n_head_kv);
        for (int g = 0; g < h.n_head_kv; ++g) {
          for (int64_t j = 0; 2 * j < len[g]; ++j) keep[j * h.n_head_kv + g] = static_cast<int32_t>(2 * j);
          kept[g] = static_cast<int32_t>((len[g] + 1) / 2);
        }
        dst.len = o.i32(kept, 1, h.n_head_kv);
        o.b->gather_entries(kv, o.i32(keep, cap, h.n_head_kv), h.n_head_kv, h.head_dim, dst);
        const std::vector<float> gk = o.get(dst.k), gv = o.get(dst.v);
        for (int g = 0; g < h.n_head_kv; ++g)
          for (int64_t i = 0; i < kept[g]; ++i)
            for (int t = 0; t < h.head_dim; ++t) {
              const size_t to = static_cast<size_t>(i * kv_dim + g * h.head_dim + t);
              const size_t from_i = static_cast<size_t>(2 * i * kv_dim + g * h.head_dim + t);
              ASSERT_EQ(gk[to], hr.k[from_i]) << at;
              ASSERT_EQ(gv[to], hr.v[from_i]) << at;
            }
      }
    }
  }
  // IEEE half and bfloat16 of a few values (round to nearest even), through upload and download.
  const std::vector<float> x = {1.0f, -2.5f, 65504.0f, 1.0f + 1.0f / 4096, 1.0f + 3.0f / 4096, 3.14159265f, 0.0f};
  const std::vector<float> f16 = {1.0f, -2.5f, 65504.0f, 1.0f, 1.0f + 2.0f / 2048, 3.140625f, 0.0f};
  const std::vector<float> bf16 = {1.0f, -2.5f, 65536.0f, 1.0f, 1.0f, 3.140625f, 0.0f};
  for (const auto& [type, want] : {std::pair{ElemType::f16, f16}, std::pair{ElemType::bf16, bf16}}) {
    DeviceTensor t = o.b->alloc(type, 1, static_cast<int64_t>(x.size()), "values");
    o.b->upload(t, x.data(), ElemType::f32);
    EXPECT_EQ(o.get(t), want) << elem_name(type);
  }
}

// A follow-up prefill after compaction: rows appended to heads of different lengths see every
// cached entry of their head and the appended rows causally; the first query row is placed before
// the others (rows need not be sorted), and a query row positioned before all of a head's entries
// sees nothing there (a zero row).
TEST_P(BackendOps, AttentionRowThatSeesNothing) {
  const Heads h{4, 2, 64};
  const int64_t q_dim = int64_t(h.n_head) * h.head_dim;
  HostCache hc = random_cache(h, {40, 25}, 60, 555);
  // No appended rows: query positions 0 and 1 precede every entry (first entries are at 2 and 3).
  const std::vector<int32_t> q_pos = {0, 1};
  const auto q = random_values(static_cast<size_t>(2 * q_dim), 556);
  const NaiveAttention want = naive_attention(q, q_pos, 2, hc, hc.n, 0, h.n_head, 1, 0);
  for (On* o : {&ref, &dev}) {
    const KVView cache = upload_cache(*o, hc);
    DeviceTensor ot = o->b->alloc(o->b->activation_type(), 2, q_dim, "out");
    o->b->fill(ot, 0.0f);
    o->b->attention(o->act(q, 2, q_dim), o->i32(q_pos, 2), cache, 0, h.n_head, h.n_head_kv, h.head_dim, ot);
    const std::vector<float> got = o->get(ot);
    // Head 0's rows see nothing; head 1's KV head starts at position 3 too: zero rows everywhere.
    EXPECT_EQ(got, std::vector<float>(got.size(), 0.0f)) << o->b->name();
    EXPECT_EQ(want.out, got) << o->b->name();
  }
}

TEST_P(BackendOps, Swiglu) {
  uint32_t seed = 600;
  for (int64_t n : kRows) {
    for (int64_t ff : {64, 100}) {
      const auto gu = random_values(static_cast<size_t>(n * 2 * ff), ++seed, 4.0f);
      std::vector<float> out[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        DeviceTensor y = on[i]->b->alloc(on[i]->b->activation_type(), n, ff, "y");
        on[i]->b->swiglu(on[i]->act(gu, n, 2 * ff), y);
        out[i] = on[i]->get(y);
      }
      expect_close(out[0], out[1], "swiglu n=" + std::to_string(n) + " ff=" + std::to_string(ff));
    }
  }
}

TEST_P(BackendOps, GatherRows) {
  const int64_t n_in = 130, d = 40;
  const auto x = random_values(static_cast<size_t>(n_in * d), 700);
  std::vector<int32_t> pos(static_cast<size_t>(n_in));
  std::iota(pos.begin(), pos.end(), 100);
  const std::vector<int32_t> index = {0, 129, 5, 5, 64, 200, -3};  // outside [0, n_in): a zero row
  const int64_t n_out = static_cast<int64_t>(index.size());
  std::vector<float> rows[2], res_rows[2];
  std::vector<int32_t> prow[2];
  On* on[2] = {&ref, &dev};
  for (int i = 0; i < 2; ++i) {
    On& o = *on[i];
    const DeviceTensor idx = o.i32(index, n_out);
    DeviceTensor y = o.b->alloc(o.b->activation_type(), n_out, d, "y");
    o.b->gather_rows(o.act(x, n_in, d), idx, y);
    rows[i] = o.get(y);
    DeviceTensor xr = o.b->alloc(o.b->residual_type(), n_out, d, "x");  // pruning gathers the residual stream
    o.b->gather_rows(o.res(x, n_in, d), idx, xr);
    res_rows[i] = o.get(xr);
    DeviceTensor p = o.b->alloc(ElemType::i32, n_out, 1, "p");
    o.b->gather_rows(o.i32(pos, n_in), idx, p);
    prow[i] = o.get_i32(p);
  }
  EXPECT_EQ(rows[0], rows[1]);
  EXPECT_EQ(res_rows[0], res_rows[1]);
  EXPECT_EQ(prow[0], prow[1]);
}

TEST_P(BackendOps, TopKAndForceRows) {
  uint32_t seed = 800;
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{130}, int64_t{5000}}) {
    // Few distinct values, so ties are common (the earlier index ranks higher).
    std::mt19937 rng(++seed);
    std::uniform_int_distribution<int> u(-20, 20);
    std::vector<float> scores(static_cast<size_t>(n));
    for (float& s : scores) s = static_cast<float>(u(rng)) * 0.25f;
    const auto pos = gapped_positions(n, 0, ++seed);
    for (int64_t k : {int64_t{1}, (n + 1) / 2, n}) {
      std::vector<int32_t> idx[2];
      std::vector<float> forced[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const DeviceTensor s = o.f32(scores, n, 1);
        // The recent tail from the position of row 3n/4 on.
        const int32_t recent_from = pos[static_cast<size_t>(n * 3 / 4)];
        o.b->force_rows(s, o.i32(pos, n), 4, recent_from);
        forced[i] = o.get(s);
        for (int64_t r = 0; r < n; ++r) {
          const bool want = pos[r] < 4 || pos[r] >= recent_from || r == n - 1;
          if (want) EXPECT_TRUE(std::isinf(forced[i][r])) << "row " << r << " of " << n << " not forced";
          else EXPECT_EQ(forced[i][r], scores[r]) << "row " << r << " of " << n << " changed";
        }
        DeviceTensor out = o.zeros(ElemType::i32, k, 1);
        o.b->top_k(s, k, out);
        idx[i] = o.get_i32(out);
      }
      const std::string at = " n=" + std::to_string(n) + " k=" + std::to_string(k);
      EXPECT_EQ(forced[0], forced[1]) << "force_rows" << at;
      EXPECT_EQ(idx[0], idx[1]) << "top_k" << at;
      EXPECT_TRUE(std::is_sorted(idx[1].begin(), idx[1].end())) << at;
    }
  }
}

TEST_P(BackendOps, GeluDot) {
  uint32_t seed = 900;
  for (int64_t n : kRows) {
    for (int64_t nh : {32, 250}) {
      const auto h = random_values(static_cast<size_t>(n * nh), ++seed, 3.0f);
      const auto w2 = random_values(static_cast<size_t>(nh), ++seed);
      std::vector<float> out[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        DeviceTensor s = on[i]->b->alloc(ElemType::f32, n, 1, "scores");
        on[i]->b->gelu_dot(on[i]->act(h, n, nh), on[i]->f32(w2, 1, nh), 0.375f, s);
        out[i] = on[i]->get(s);
      }
      expect_close(out[0], out[1], "gelu_dot n=" + std::to_string(n) + " hidden=" + std::to_string(nh));
    }
  }
}

// entry_norms against naive sums, per head of a cache whose heads hold different counts.
TEST_P(BackendOps, EntryNorms) {
  uint32_t seed = 1000;
  for (const Heads& h : kHeads) {
    for (int64_t n : kRows) {
      const int64_t kv_dim = int64_t(h.n_head_kv) * h.head_dim, cap = n + 4 + 2 * h.n_head_kv;
      std::vector<int64_t> len(static_cast<size_t>(h.n_head_kv));
      for (int g = 0; g < h.n_head_kv; ++g) len[g] = n + 2 * g;
      const HostCache hc = random_cache(h, len, cap, ++seed);
      std::vector<float> want_v(static_cast<size_t>(cap * h.n_head_kv), 0.0f), want_k = want_v;
      for (int g = 0; g < h.n_head_kv; ++g)
        for (int64_t j = 0; j < len[g]; ++j) {
          double sv = 0, sk = 0;
          for (int t = 0; t < h.head_dim; ++t) {
            sv += std::fabs(double(hc.v[j * kv_dim + g * h.head_dim + t]));
            sk += double(hc.k[j * kv_dim + g * h.head_dim + t]) * hc.k[j * kv_dim + g * h.head_dim + t];
          }
          want_v[j * h.n_head_kv + g] = float(sv);
          want_k[j * h.n_head_kv + g] = float(std::sqrt(sk));
        }
      std::vector<float> l1[2], l2[2];
      On* on[2] = {&ref, &dev};
      for (int i = 0; i < 2; ++i) {
        On& o = *on[i];
        const KVView cache = upload_cache(o, hc);
        const DeviceTensor a = o.zeros(ElemType::f32, cap, h.n_head_kv), b = o.zeros(ElemType::f32, cap, h.n_head_kv);
        o.b->entry_norms(cache, h.n_head_kv, h.head_dim, a, b);
        l1[i] = o.get(a);
        l2[i] = o.get(b);
        const DeviceTensor only = o.zeros(ElemType::f32, cap, h.n_head_kv);
        o.b->entry_norms(cache, h.n_head_kv, h.head_dim, DeviceTensor(), only);  // one of the two
        EXPECT_EQ(o.get(only), l2[i]) << name_of(h, n);
      }
      expect_close(want_v, l1[0], "v_l1 (cpu vs naive)" + name_of(h, n), 1e-5);
      expect_close(want_k, l2[0], "k_l2 (cpu vs naive)" + name_of(h, n), 1e-5);
      expect_close(l1[0], l1[1], "v_l1" + name_of(h, n));
      expect_close(l2[0], l2[1], "k_l2" + name_of(h, n));
    }
  }
}

// gather_entries keeps each head's chosen entries, in order, with their positions and mass, and
// leaves the rest of dst alone; exact on every backend (copies).
TEST_P(BackendOps, GatherEntries) {
  const Heads h{8, 2, 128};
  const int64_t kv_dim = int64_t(h.n_head_kv) * h.head_dim;
  const HostCache hc = random_cache(h, {50, 33}, 64, 1050);
  const std::vector<std::vector<int32_t>> keep = {{0, 3, 4, 10, 49}, {1, 2, 32}};
  const int64_t kmax = 5, dcap = 8;
  std::vector<int32_t> keep_rows(static_cast<size_t>(kmax * h.n_head_kv), 0);
  for (int g = 0; g < h.n_head_kv; ++g)
    for (size_t i = 0; i < keep[g].size(); ++i) keep_rows[i * h.n_head_kv + g] = keep[g][i];
  const auto mass = random_values(static_cast<size_t>(64 * h.n_head_kv), 1051);
  for (On* o : {&ref, &dev}) {
    KVView src = upload_cache(*o, hc);
    src.mass = o->f32(mass, 64, h.n_head_kv);
    KVView dst;
    dst.k = o->zeros(o->b->activation_type(), dcap, kv_dim);
    dst.v = o->zeros(o->b->activation_type(), dcap, kv_dim);
    dst.pos = o->zeros(ElemType::i32, dcap, h.n_head_kv);
    dst.mass = o->zeros(ElemType::f32, dcap, h.n_head_kv);
    dst.len = o->i32({5, 3}, 1, h.n_head_kv);
    dst.n = {5, 3};
    o->b->gather_entries(src, o->i32(keep_rows, kmax, h.n_head_kv), h.n_head_kv, h.head_dim, dst);
    const auto k = o->get(dst.k), v = o->get(dst.v), m = o->get(dst.mass);
    const auto p = o->get_i32(dst.pos);
    for (int g = 0; g < h.n_head_kv; ++g)
      for (int64_t i = 0; i < dcap; ++i) {
        const bool kept = i < static_cast<int64_t>(keep[g].size());
        const int64_t j = kept ? keep[g][i] : -1;
        EXPECT_EQ(p[i * h.n_head_kv + g], kept ? hc.pos[j * h.n_head_kv + g] : 0) << o->b->name();
        EXPECT_EQ(m[i * h.n_head_kv + g], kept ? mass[j * h.n_head_kv + g] : 0.0f) << o->b->name();
        for (int t = 0; t < h.head_dim; ++t) {
          ASSERT_EQ(k[i * kv_dim + g * h.head_dim + t], kept ? hc.k[j * kv_dim + g * h.head_dim + t] : 0.0f)
              << o->b->name() << " head " << g << " entry " << i;
          ASSERT_EQ(v[i * kv_dim + g * h.head_dim + t], kept ? hc.v[j * kv_dim + g * h.head_dim + t] : 0.0f)
              << o->b->name() << " head " << g << " entry " << i;
        }
      }
  }
}

// A decode step through run_step, three times with new values in the same device tensors (token
// position, every head's cache length, which differ per head): a backend that replays a captured
// step must read them anew. The step also norms and adds into a residual row x (residual_type()),
// and accumulates key mass, as the block does with an eviction policy.
TEST_P(BackendOps, DecodeStepReplaysWithNewValues) {
  const Heads h{8, 2, 128};
  const int64_t q_dim = int64_t(h.n_head) * h.head_dim, kv_dim = int64_t(h.n_head_kv) * h.head_dim;
  const int64_t cap = 80;
  HostCache hc = random_cache(h, {60, 41}, cap, 1100);
  const auto inv = inv_freq_of(h.head_dim);
  const int64_t d = 96;
  const auto x0 = random_values(static_cast<size_t>(d), 1103, 3.0f);
  const auto norm_w = random_values(static_cast<size_t>(d), 1104);
  const auto wo = random_values(static_cast<size_t>(d * q_dim), 1105, 0.05f);
  std::vector<float> out[2][3], xs[2][3], xns[2][3], ms[2][3];
  On* on[2] = {&ref, &dev};
  for (int i = 0; i < 2; ++i) {
    On& o = *on[i];
    KVView cache = upload_cache(o, hc);
    cache.mass = o.zeros(ElemType::f32, cap, h.n_head_kv);
    const DeviceTensor qkv = o.b->alloc(o.b->activation_type(), 1, q_dim + 2 * kv_dim, "qkv");
    const DeviceTensor q = o.b->alloc(o.b->activation_type(), 1, q_dim, "q");
    const DeviceTensor att = o.b->alloc(o.b->activation_type(), 1, q_dim, "att");
    const DeviceTensor pos = o.zeros(ElemType::i32, 1, 1);
    const DeviceTensor invt = o.f32(inv, 1, h.head_dim / 2);
    const DeviceTensor xres = o.res(x0, 1, d), xn = o.b->alloc(o.b->activation_type(), 1, d, "xn"),
                       normt = o.f32(norm_w, 1, d);
    const auto wot = o.b->upload_matrix(wo.data(), d, q_dim, nullptr);
    for (int step = 0; step < 3; ++step) {
      const int32_t p = hc.max_pos() + 1 + 2 * step;
      // Head 0 grows by one per step; head 1 as if an eviction took entries between steps.
      const std::vector<int32_t> len = {static_cast<int32_t>(60 + step), static_cast<int32_t>(41 - 3 * step)};
      const auto x = random_values(static_cast<size_t>(q_dim + 2 * kv_dim), 1200 + step);
      o.b->upload(qkv, x.data(), ElemType::f32);
      o.b->upload(pos, &p, ElemType::i32);
      o.b->upload(cache.len, len.data(), ElemType::i32);
      cache.n = {len[0], len[1]};
      AttentionStats st;
      st.key_mass = cache.mass;
      o.b->run_step([&] {
        o.b->qkv_rope_append(qkv, pos, invt, h.n_head, h.n_head_kv, h.head_dim, q, cache);
        o.b->rmsnorm(xres, normt, 1e-5f, xn);
        o.b->attention(q, pos, cache, 1, h.n_head, h.n_head_kv, h.head_dim, att, &st);
        o.b->matmul(att, *wot, xres, /*accumulate=*/true);
      });
      out[i][step] = o.get(att);
      xs[i][step] = o.get(xres);
      xns[i][step] = o.get(xn);
      ms[i][step] = o.get(cache.mass);
    }
  }
  for (int step = 0; step < 3; ++step) {
    expect_close(out[0][step], out[1][step], "step " + std::to_string(step));
    expect_close(xs[0][step], xs[1][step], "step " + std::to_string(step) + " residual x");
    expect_close(xns[0][step], xns[1][step], "step " + std::to_string(step) + " rmsnorm(x)");
    expect_close(ms[0][step], ms[1][step], "step " + std::to_string(step) + " accumulated key mass");
  }
  // Each step adds one query's probabilities: mass sums to n_head / n_head_kv per head per step.
  double total = 0;
  for (float m : ms[0][2]) total += m;
  EXPECT_NEAR(total, 3.0 * h.n_head, 1e-3);
}

}  // namespace
}  // namespace sdtp
