// Every CPU kernel variant this machine supports (backend/cpu/isa.h: scalar, AVX2, AVX-512) against
// the scalar reference, on fresh random inputs: through the ops the model calls (matmul_quant on
// Q8_0 and Q4_1 weights, softmax inside attention, swiglu) with the variant selected, and the exp
// kernel itself over the whole float range. A variant the CPU lacks is skipped, visibly.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/q8.h"
#include "sdtp/error.h"

namespace sdtp {
namespace cpu {
// Printed by GoogleTest in place of the enum's raw bytes.
void PrintTo(Isa isa, std::ostream* os) {
  *os << isa_name(isa);
}
}  // namespace cpu

namespace {

using cpu::Isa;

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// max |got - want| / max |want|.
double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want[i]));
    den = std::max(den, std::fabs(static_cast<double>(want[i])));
  }
  return num / std::max(den, 1e-30);
}

uint16_t to_half(float f) {
  return _cvtss_sh(f, 0);
}

// Q4_1 blocks with random nibbles, scales d in (0, 0.01] and offsets m in [-0.05, 0.05].
std::vector<uint8_t> random_q4_1(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::vector<uint8_t> blocks(static_cast<size_t>(m * (k / 32) * 20));
  for (size_t b = 0; b < blocks.size(); b += 20) {
    const uint16_t d = to_half(std::fabs(u(rng)) / 5.0f + 1e-4f), mn = to_half(u(rng));
    std::memcpy(&blocks[b], &d, 2);
    std::memcpy(&blocks[b + 2], &mn, 2);
    for (int i = 4; i < 20; ++i) blocks[b + i] = static_cast<uint8_t>(byte(rng));
  }
  return blocks;
}

// Q8_0 file blocks (f16 d, 32 int8) with every int8 value possible, -128 included (a file may hold
// it; quantize_q8 never makes it).
std::vector<uint8_t> random_q8_0(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(1e-4f, 1e-3f);
  std::vector<uint8_t> blocks(static_cast<size_t>(m * (k / 32) * 34));
  for (size_t b = 0; b < blocks.size(); b += 34) {
    const uint16_t d = to_half(u(rng));
    std::memcpy(&blocks[b], &d, 2);
    for (int i = 2; i < 34; ++i) blocks[b + i] = static_cast<uint8_t>(byte(rng));
    blocks[b + 2] = 0x80;
  }
  return blocks;
}

class CpuKernels : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    saved_ = cpu::active_isa();
    if (!cpu::isa_supported(GetParam())) {
      GTEST_SKIP() << "this CPU lacks " << cpu::isa_name(GetParam())
                   << " (best it has: " << cpu::isa_name(cpu::best_isa()) << ")";
    }
  }
  void TearDown() override { cpu::set_isa(saved_); }

  // fn() run with the variant under test, then with the scalar reference.
  template <typename Fn>
  std::pair<std::vector<float>, std::vector<float>> variant_and_reference(Fn fn) {
    cpu::set_isa(GetParam());
    EXPECT_EQ(cpu::active_isa(), GetParam());
    std::vector<float> got = fn();
    cpu::set_isa(Isa::scalar);
    std::vector<float> want = fn();
    return {got, want};
  }

  Isa saved_ = Isa::scalar;
};

struct Shape {
  int64_t n, m, k;
};
// k = 32 (one block), odd m, odd block counts (the two-accumulator loops' tails), decode and
// few-row prefill n, and the real model's widths.
const Shape kShapes[] = {{1, 1, 32},    {1, 7, 32},   {2, 33, 64},  {3, 45, 96},
                         {1, 129, 160}, {4, 17, 576}, {1, 31, 1536}};

// The int32 block sums are exact in every variant; only the float sum over blocks runs in another
// order (and a scale product rounds differently): ~nb·2^-24 of the outputs' scale.
double quant_tol(int64_t k) {
  return 4.0 * (k / 32 + 2) * std::ldexp(1.0, -24);
}

TEST_P(CpuKernels, MatmulQuantQ8_0MatchesScalar) {
  uint32_t seed = 100;
  for (const Shape& s : kShapes) {
    const auto w = randn(s.m * s.k, seed++, 0.05f), x = randn(s.n * s.k, seed++), bias = randn(s.m, seed++);
    const auto file = random_q8_0(s.m, s.k, seed++);
    for (const cpu::QuantMatrix& q :
         {cpu::quantize_q8(w.data(), s.m, s.k),
          cpu::quant_blocks(cpu::QuantMatrix::Kind::q8_0, file.data(), s.m, s.k, true)}) {
      const auto [got, want] = variant_and_reference([&] {
        std::vector<float> y(s.n * s.m);
        cpu::matmul_quant(x.data(), s.n, q, bias.data(), y.data());
        return y;
      });
      EXPECT_LE(max_rel_diff(got, want), quant_tol(s.k)) << "n=" << s.n << " m=" << s.m << " k=" << s.k;
    }
  }
}

TEST_P(CpuKernels, MatmulQuantQ4_1MatchesScalar) {
  uint32_t seed = 200;
  for (const Shape& s : kShapes) {
    const auto x = randn(s.n * s.k, seed++), bias = randn(s.m, seed++);
    const auto blocks = random_q4_1(s.m, s.k, seed++);
    const cpu::QuantMatrix q = cpu::quant_blocks(cpu::QuantMatrix::Kind::q4_1, blocks.data(), s.m, s.k, true);
    for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
      const auto [got, want] = variant_and_reference([&] {
        std::vector<float> y(s.n * s.m);
        cpu::matmul_quant(x.data(), s.n, q, b, y.data());
        return y;
      });
      EXPECT_LE(max_rel_diff(got, want), quant_tol(s.k)) << "n=" << s.n << " m=" << s.m << " k=" << s.k;
    }
  }
}

TEST_P(CpuKernels, MatmulQuantQ4_0MatchesScalar) {
  uint32_t seed = 300;
  for (const Shape& s : kShapes) {
    const auto x = randn(s.n * s.k, seed++), bias = randn(s.m, seed++);
    // Q4_0 is Q4_1 without the min: reuse random Q4_1 bytes, dropping each block's m.
    const auto q41 = random_q4_1(s.m, s.k, seed++);
    std::vector<uint8_t> blocks;
    for (size_t b = 0; b < q41.size(); b += 20) {
      blocks.insert(blocks.end(), q41.begin() + b, q41.begin() + b + 2);
      blocks.insert(blocks.end(), q41.begin() + b + 4, q41.begin() + b + 20);
    }
    const cpu::QuantMatrix q = cpu::quant_blocks(cpu::QuantMatrix::Kind::q4_0, blocks.data(), s.m, s.k, true);
    const auto [got, want] = variant_and_reference([&] {
      std::vector<float> y(s.n * s.m);
      cpu::matmul_quant(x.data(), s.n, q, bias.data(), y.data());
      return y;
    });
    EXPECT_LE(max_rel_diff(got, want), quant_tol(s.k)) << "n=" << s.n << " m=" << s.m << " k=" << s.k;
  }
}

// K-quant super-blocks with random bytes (every scale, min and quant possible) and sane f16 d / dmin.
std::vector<uint8_t> random_k_blocks(cpu::QuantMatrix::Kind kind, int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(1e-4f, 1e-3f);
  const int64_t size = kind == cpu::QuantMatrix::Kind::q4_k ? 144 : 210;
  std::vector<uint8_t> blocks(static_cast<size_t>(m * (k / 256) * size));
  for (auto& b : blocks) b = static_cast<uint8_t>(byte(rng));
  for (size_t b = 0; b < blocks.size(); b += size) {
    const uint16_t d = to_half(u(rng)), dmin = to_half(u(rng));
    if (kind == cpu::QuantMatrix::Kind::q4_k) {
      std::memcpy(&blocks[b], &d, 2);
      std::memcpy(&blocks[b + 2], &dmin, 2);
    } else {
      std::memcpy(&blocks[b + 208], &d, 2);
    }
  }
  return blocks;
}

TEST_P(CpuKernels, MatmulQuantKQuantsMatchScalar) {
  const Shape shapes[] = {{1, 1, 256}, {1, 7, 512}, {3, 33, 768}, {4, 17, 4096}};
  uint32_t seed = 400;
  for (const auto kind : {cpu::QuantMatrix::Kind::q4_k, cpu::QuantMatrix::Kind::q6_k}) {
    for (const Shape& s : shapes) {
      const auto x = randn(s.n * s.k, seed++), bias = randn(s.m, seed++);
      const auto blocks = random_k_blocks(kind, s.m, s.k, seed++);
      const cpu::QuantMatrix q = cpu::quant_blocks(kind, blocks.data(), s.m, s.k, true);
      const auto [got, want] = variant_and_reference([&] {
        std::vector<float> y(s.n * s.m);
        cpu::matmul_quant(x.data(), s.n, q, bias.data(), y.data());
        return y;
      });
      EXPECT_LE(max_rel_diff(got, want), quant_tol(s.k))
          << (kind == cpu::QuantMatrix::Kind::q4_k ? "Q4_K" : "Q6_K") << " n=" << s.n << " m=" << s.m << " k=" << s.k;
    }
  }
}

// The exp kernel on its own, over [-100, 100] (both clamps and the subnormal end included) and at
// every length from 1 to 40 (the vector loops' tails). Elementwise: the same polynomial, up to
// fused multiply-adds (a few ulp, and one subnormal ulp at the bottom); the sum: plus the order of
// n positive terms, (n-1)·2^-24 each way.
TEST_P(CpuKernels, ExpShiftedSumMatchesScalar) {
  const cpu::Kernels& kern = cpu::kernels_for(GetParam());
  const cpu::Kernels& ref = cpu::kernels_for(Isa::scalar);
  std::vector<float> grid;
  for (float v = -100.0f; v <= 100.0f; v += 0.0173f) grid.push_back(v);
  for (float v : {-88.3762626647949f, 88.3762626647949f, -87.33f, 0.0f, -0.0f, 1e-30f}) grid.push_back(v);
  std::vector<int64_t> lengths = {static_cast<int64_t>(grid.size())};
  for (int64_t n = 1; n <= 40; ++n) lengths.push_back(n);
  for (int64_t n : lengths) {
    for (float shift : {0.0f, 3.5f}) {
      std::vector<float> got(grid.begin(), grid.begin() + n), want = got;
      const float sum_got = kern.exp_shifted_sum(got.data(), n, shift);
      const float sum_want = ref.exp_shifted_sum(want.data(), n, shift);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-6f * want[i] + 1e-44f)
            << "x=" << grid[i] << " shift=" << shift << " n=" << n;
      }
      if (std::isinf(sum_want)) {  // thousands of terms near e^88 overflow either way
        EXPECT_TRUE(std::isinf(sum_got)) << "n=" << n << " shift=" << shift;
        continue;
      }
      const double sum_tol = (1e-6 + 2.0 * n * std::ldexp(1.0, -24)) * sum_want;
      EXPECT_NEAR(sum_got, sum_want, sum_tol) << "n=" << n << " shift=" << shift;
    }
  }
  // And as exact as the scalar one (tests/backend/test_cpu_ops.cpp holds exp_approx to 4e-7).
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  std::vector<float> e = x;
  kern.exp_shifted_sum(e.data(), static_cast<int64_t>(e.size()), 0.0f);
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_NEAR(e[i] / std::exp(static_cast<double>(x[i])), 1.0, 4e-7) << x[i];
}

TEST_P(CpuKernels, SwigluMatchesScalar) {
  uint32_t seed = 300;
  // 70000 > 65536 takes the parallel, chunked path.
  for (int64_t count : {1, 7, 8, 15, 16, 17, 33, 1000, 70000}) {
    const auto g = randn(count, seed++, 6.0f), u = randn(count, seed++);
    const auto [got, want] = variant_and_reference([&] {
      std::vector<float> y(count);
      cpu::swiglu(g.data(), u.data(), count, y.data());
      return y;
    });
    for (int64_t i = 0; i < count; ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6f * std::fabs(want[i]) + 1e-30f)
          << "gate=" << g[i] << " count=" << count;
    }
  }
}

// Softmax runs inside attention: the decode path (one row) and the blocked prefill path, with the
// last row's probabilities, against the same op on the scalar kernels.
TEST_P(CpuKernels, AttentionSoftmaxMatchesScalar) {
  const int nh = 6, nkv = 2, hd = 32;
  uint32_t seed = 400;
  for (int n : {1, 20, 300}) {
    const int m = 40 + n;
    std::vector<int32_t> kp(m), qp(n);
    for (int j = 0; j < m; ++j) kp[j] = 3 * j + (j % 2);
    for (int i = 0; i < n; ++i) qp[i] = kp[40 + i];
    const auto q = randn(static_cast<size_t>(n) * nh * hd, seed++, 2.0f);
    const auto k = randn(static_cast<size_t>(m) * nkv * hd, seed++, 2.0f),
               v = randn(static_cast<size_t>(m) * nkv * hd, seed++);
    std::vector<float> probs_got, probs_want;
    const auto [got, want] = variant_and_reference([&] {
      std::vector<float> out(q.size()), probs(static_cast<size_t>(nh) * m);
      cpu::attention(q.data(), qp.data(), n, k.data(), v.data(), kp.data(), m, nh, nkv, hd, out.data(),
                     probs.data());
      (probs_got.empty() ? probs_got : probs_want) = probs;
      return out;
    });
    EXPECT_LE(max_rel_diff(got, want), 1e-5) << "n=" << n;
    EXPECT_LE(max_rel_diff(probs_got, probs_want), 1e-5) << "n=" << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuKernels, ::testing::Values(Isa::scalar, Isa::avx2, Isa::avx512),
                         [](const ::testing::TestParamInfo<Isa>& info) {
                           return std::string(cpu::isa_name(info.param));
                         });

TEST(CpuIsa, SelectionIsConsistent) {
  EXPECT_TRUE(cpu::isa_supported(Isa::scalar));
  EXPECT_TRUE(cpu::isa_supported(cpu::best_isa()));
  EXPECT_TRUE(cpu::isa_supported(cpu::active_isa()));
  // The build's baseline is AVX2 (CMakeLists.txt): a CPU running these tests has it.
  EXPECT_TRUE(cpu::isa_supported(Isa::avx2));
  if (!cpu::isa_supported(Isa::avx512)) {
    EXPECT_THROW(cpu::set_isa(Isa::avx512), UsageError);
  }
  std::printf("[ cpu ] kernels: %s (best on this CPU: %s)\n", cpu::isa_name(cpu::active_isa()),
              cpu::isa_name(cpu::best_isa()));
}

}  // namespace
}  // namespace sdtp
