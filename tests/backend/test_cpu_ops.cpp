// CPU ops against straightforward double-precision references written from the definitions.
#include <gtest/gtest.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cpu/q8.h"
#include "formats/quants.h"

namespace sdtp {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(got[i] - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return num / std::max(den, 1e-30);
}

TEST(CpuOps, ExpApproxIsAccurate) {
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    EXPECT_NEAR(cpu::exp_approx(x) / want, 1.0, 4e-7) << "x=" << x;
  }
}

TEST(CpuOps, MatmulMatchesReference) {
  for (int64_t n : {1, 3, 37}) {
    const int64_t k = 67, m = 45;
    auto x = randn(n * k, 1), w = randn(m * k, 2), b = randn(m, 3);
    std::vector<float> y(n * m);
    cpu::matmul(x.data(), n, k, w.data(), m, b.data(), y.data());
    std::vector<double> ref(n * m);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double s = b[j];
        for (int64_t t = 0; t < k; ++t) s += static_cast<double>(x[i * k + t]) * w[j * k + t];
        ref[i * m + j] = s;
      }
    EXPECT_LT(max_rel_err(y, ref), 1e-6) << "n=" << n;
  }
}

TEST(CpuOps, RmsNormMatchesReference) {
  const int64_t n = 5, d = 96;
  auto x = randn(n * d, 4), w = randn(d, 5);
  std::vector<float> y(n * d);
  cpu::rmsnorm(x.data(), w.data(), n, d, 1e-5f, y.data());
  std::vector<double> ref(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t t = 0; t < d; ++t) ss += static_cast<double>(x[i * d + t]) * x[i * d + t];
    const double r = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t t = 0; t < d; ++t) ref[i * d + t] = w[t] * x[i * d + t] * r;
  }
  EXPECT_LT(max_rel_err(y, ref), 1e-6);
}

// RoPE as the paper defines it (Su et al. 2021) in the rotate-half layout: dimension i pairs with
// i + head_dim/2 and the pair is multiplied by e^{i·pos·θ_i} as a complex number.
TEST(CpuOps, RopeIsARotationByPosition) {
  const int n_heads = 3, hd = 16, n = 4;
  auto x = randn(n * n_heads * hd, 6);
  std::vector<int32_t> pos = {0, 7, 1000, 3};  // rows carry arbitrary positions
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
  auto y = x;
  cpu::rope(y.data(), n, n_heads * hd, n_heads, hd, pos.data(), inv.data());
  std::vector<double> ref(x.size());
  for (int r = 0; r < n; ++r)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const size_t a = r * n_heads * hd + h * hd + i, b = a + hd / 2;
        const double ang = static_cast<double>(static_cast<float>(pos[r]) * inv[i]);
        ref[a] = x[a] * std::cos(ang) - x[b] * std::sin(ang);
        ref[b] = x[b] * std::cos(ang) + x[a] * std::sin(ang);
      }
  EXPECT_LT(max_rel_err(y, ref), 1e-6);
}

TEST(CpuOps, SwigluMatchesReference) {
  const int64_t n = 1000;
  auto g = randn(n, 7, 4.0f), u = randn(n, 8);
  std::vector<float> y(n);
  cpu::swiglu(g.data(), u.data(), n, y.data());
  std::vector<double> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
  EXPECT_LT(max_rel_err(y, ref), 1e-6);
}

// Naive causal GQA attention by positions, in double.
std::vector<double> attention_ref(const std::vector<float>& q, const std::vector<int32_t>& qp, const std::vector<float>& k,
                                  const std::vector<float>& v, const std::vector<int32_t>& kp, int nh, int nkv, int hd) {
  const int n = static_cast<int>(qp.size()), m = static_cast<int>(kp.size());
  std::vector<double> out(static_cast<size_t>(n) * nh * hd, 0.0);
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < nh; ++h) {
      const int g = h / (nh / nkv);
      std::vector<double> s;
      std::vector<int> idx;
      for (int j = 0; j < m; ++j) {
        if (kp[j] > qp[i]) continue;
        double dot = 0;
        for (int t = 0; t < hd; ++t) dot += static_cast<double>(q[(i * nh + h) * hd + t]) * k[(j * nkv + g) * hd + t];
        s.push_back(dot / std::sqrt(static_cast<double>(hd)));
        idx.push_back(j);
      }
      double mx = -1e300, sum = 0;
      for (double x : s) mx = std::max(mx, x);
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (size_t a = 0; a < s.size(); ++a)
        for (int t = 0; t < hd; ++t) out[(i * nh + h) * hd + t] += s[a] / sum * v[(idx[a] * nkv + g) * hd + t];
    }
  return out;
}

TEST(CpuOps, AttentionMatchesNaiveCausalGqa) {
  const int nh = 6, nkv = 2, hd = 32;
  for (int n : {1, 20, 300}) {
    // A cache of 40 earlier rows plus the n new ones; positions skip values as after pruning.
    const int m = 40 + n;
    std::vector<int32_t> kp(m), qp(n);
    for (int j = 0; j < m; ++j) kp[j] = 3 * j + (j % 2);
    for (int i = 0; i < n; ++i) qp[i] = kp[40 + i];
    auto q = randn(static_cast<size_t>(n) * nh * hd, 9), k = randn(static_cast<size_t>(m) * nkv * hd, 10),
         v = randn(static_cast<size_t>(m) * nkv * hd, 11);
    std::vector<float> out(q.size());
    cpu::attention(q.data(), qp.data(), n, k.data(), v.data(), kp.data(), m, nh, nkv, hd, out.data());
    EXPECT_LT(max_rel_err(out, attention_ref(q, qp, k, v, kp, nh, nkv, hd)), 1e-5) << "n=" << n;
  }
}

// 8-bit matvec: each weight and activation is rounded to 1/254 of its block's range, so a dot
// product of k terms lands within a few 1e-3 of the float result (relative to the output's scale).
TEST(CpuOps, Q8MatmulApproximatesFloat) {
  const int64_t k = 576, m = 200;
  for (int64_t n : {1, 3}) {
    auto x = randn(n * k, 12), w = randn(m * k, 13, 0.05f), b = randn(m, 14);
    const cpu::QuantMatrix q = cpu::quantize_q8(w.data(), m, k);
    std::vector<float> y(n * m);
    cpu::matmul_quant(x.data(), n, q, b.data(), y.data());
    std::vector<double> ref(n * m);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double s = b[j];
        for (int64_t t = 0; t < k; ++t) s += static_cast<double>(x[i * k + t]) * w[j * k + t];
        ref[i * m + j] = s;
      }
    const double err = max_rel_err(y, ref);
    EXPECT_LT(err, 1e-2) << "n=" << n;
    EXPECT_GT(err, 0.0);  // it is an approximation: exact agreement would mean the float path ran
  }
}

// x as the 8-bit kernels see it: int8 per block of 32 with scale max|x| / 127 (q8.cpp).
std::vector<double> as_int8_blocks(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float dx = amax / 127.0f, id = dx > 0 ? 1.0f / dx : 0.0f;
    for (int i = 0; i < 32; ++i) out[b + i] = static_cast<double>(dx) * std::lrint(x[b + i] * id);
  }
  return out;
}

// Q4_K and Q6_K super-blocks multiplied as they are (random bytes: every scale, min and quant) equal
// the float matvec over the weights the GGUF dequantiser gives (bit-exact with gguf-py,
// tests/formats), up to the int8 rounding of the activations.
TEST(CpuOps, KQuantMatvecsMatchDequantisedWeights) {
  const int64_t k = 512, m = 24;
  std::mt19937 rng(31);
  std::uniform_int_distribution<int> byte(0, 255);
  for (const auto& [kind, type, size] : {std::tuple{cpu::QuantMatrix::Kind::q4_k, DType::Q4_K, 144},
                                         std::tuple{cpu::QuantMatrix::Kind::q6_k, DType::Q6_K, 210}}) {
    std::vector<uint8_t> blocks(static_cast<size_t>(m * (k / 256) * size));
    for (auto& b : blocks) b = static_cast<uint8_t>(byte(rng));
    for (size_t b = 0; b < blocks.size(); b += size) {
      const uint16_t d = _cvtss_sh(1e-3f, 0), dmin = _cvtss_sh(5e-4f, 0);
      std::memcpy(&blocks[b + (type == DType::Q4_K ? 0 : 208)], &d, 2);
      if (type == DType::Q4_K) std::memcpy(&blocks[b + 2], &dmin, 2);
    }
    std::vector<float> w(static_cast<size_t>(m * k));
    dequantize(type, blocks.data(), w.data(), m * k);
    const auto x = randn(2 * k, 32);
    std::vector<float> y(2 * m);
    cpu::matmul_quant(x.data(), 2, cpu::quant_blocks(kind, blocks.data(), m, k, false), nullptr, y.data());
    // The reference runs on the activations as the kernels see them, so only float rounding
    // separates the two.
    const std::vector<double> xr = as_int8_blocks(x);
    std::vector<double> ref(2 * m), ref_float(2 * m);
    for (int r = 0; r < 2; ++r)
      for (int64_t j = 0; j < m; ++j) {
        double acc = 0, acc_f = 0;
        for (int64_t t = 0; t < k; ++t) {
          acc += xr[r * k + t] * w[j * k + t];
          acc_f += static_cast<double>(x[r * k + t]) * w[j * k + t];
        }
        ref[r * m + j] = acc;
        ref_float[r * m + j] = acc_f;
      }
    const double err = max_rel_err(y, ref), err_f = max_rel_err(y, ref_float);
    std::printf("[cpu ops] %s matvec vs dequantised weights: max rel err %.2e (on int8 activations), %.2e (float)\n",
                dtype_name(type), err, err_f);
    EXPECT_LT(err, 1e-5) << dtype_name(type);
    EXPECT_LT(err_f, 3e-2) << dtype_name(type);
  }
}

// GGUF Q4_1 / Q8_0 / Q4_0 blocks multiplied as they are: the result equals the float matvec over
// the dequantised weights (d·q + m, d·q, d·(q − 8)) up to the int8 rounding of the activations.
TEST(CpuOps, FileBlockMatvecsMatchDequantisedWeights) {
  const int64_t k = 128, m = 40, nb = k / 32;
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> nib(0, 15), i8(-127, 127);
  std::uniform_real_distribution<float> uf(-0.05f, 0.05f);
  const auto f16 = [](float f, uint8_t* p) {
    const uint16_t h = _cvtss_sh(f, 0);
    std::memcpy(p, &h, 2);
    return _cvtsh_ss(h);
  };
  std::vector<uint8_t> q4(m * nb * 20), q8(m * nb * 34);
  std::vector<float> w4(m * k), w8(m * k);
  for (int64_t b = 0; b < m * nb; ++b) {
    uint8_t* blk = q4.data() + b * 20;
    const float d = f16(std::abs(uf(rng)) / 15.0f, blk), mn = f16(uf(rng), blk + 2);
    for (int i = 0; i < 16; ++i) {
      const int lo = nib(rng), hi = nib(rng);
      blk[4 + i] = static_cast<uint8_t>(lo | (hi << 4));
      w4[b * 32 + i] = d * lo + mn;
      w4[b * 32 + 16 + i] = d * hi + mn;
    }
    uint8_t* b8 = q8.data() + b * 34;
    const float d8 = f16(std::abs(uf(rng)) / 127.0f, b8);
    for (int i = 0; i < 32; ++i) {
      const int8_t v = static_cast<int8_t>(i8(rng));
      b8[2 + i] = static_cast<uint8_t>(v);
      w8[b * 32 + i] = d8 * v;
    }
  }
  // Q4_0 blocks (f16 d, nibbles; weight d·(q − 8)), their floats from the GGUF dequantiser that is
  // checked bit-exact against gguf-py (tests/formats/test_quants.cpp).
  std::vector<uint8_t> q40(m * nb * 18);
  for (int64_t b = 0; b < m * nb; ++b) {
    uint8_t* blk = q40.data() + b * 18;
    f16(std::abs(uf(rng)) / 8.0f, blk);
    for (int i = 0; i < 16; ++i) blk[2 + i] = static_cast<uint8_t>(nib(rng) | (nib(rng) << 4));
  }
  std::vector<float> w40(m * k);
  dequantize(DType::Q4_0, q40.data(), w40.data(), m * k);
  const auto x = randn(2 * k, 22);
  using Kind = cpu::QuantMatrix::Kind;
  for (const auto& [mat, w] : {std::pair{cpu::quant_blocks(Kind::q4_1, q4.data(), m, k, true), &w4},
                               std::pair{cpu::quant_blocks(Kind::q8_0, q8.data(), m, k, true), &w8},
                               std::pair{cpu::quant_blocks(Kind::q4_0, q40.data(), m, k, true), &w40}}) {
    std::vector<float> y(2 * m);
    cpu::matmul_quant(x.data(), 2, mat, nullptr, y.data());
    const std::vector<double> xr = as_int8_blocks(x);
    std::vector<double> ref(2 * m), ref8(2 * m);
    for (int r = 0; r < 2; ++r)
      for (int64_t j = 0; j < m; ++j) {
        double acc = 0, acc8 = 0;
        for (int64_t t = 0; t < k; ++t) {
          acc += static_cast<double>(x[r * k + t]) * (*w)[j * k + t];
          acc8 += xr[r * k + t] * (*w)[j * k + t];
        }
        ref[r * m + j] = acc;
        ref8[r * m + j] = acc8;
      }
    EXPECT_LT(max_rel_err(y, ref), 1e-2);
    EXPECT_LT(max_rel_err(y, ref8), 1e-5);  // exact but for float rounding on the int8 activations
  }
}

}  // namespace
}  // namespace sdtp
