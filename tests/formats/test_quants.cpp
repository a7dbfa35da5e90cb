// Tests of src/formats/quants.cpp: dequantisation of every ggml block type against llama.cpp's
// gguf-py (fixtures from scripts/fixtures/gen_quant_fixtures.py), half/bfloat16 conversions
// against numpy and gguf-py, and the size tables.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/quants.h"
#include "sdtp/error.h"

namespace sdtp {
namespace {

const std::string kFixtures = std::string(SDTP_SOURCE_DIR) + "/tests/fixtures/quants/";

std::vector<uint8_t> read_bytes(const std::string& name) {
  std::ifstream f(kFixtures + name, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open fixture " + kFixtures + name);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

template <typename T>
std::vector<T> read_array(const std::string& name) {
  const auto bytes = read_bytes(name);
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

nlohmann::json read_index() {
  std::ifstream f(kFixtures + "index.json");
  if (!f) throw std::runtime_error("cannot open " + kFixtures + "index.json");
  return nlohmann::json::parse(f);
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Bit-for-bit equality; two nans count as equal (payloads are not part of any contract).
bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits(a) == bits(b);
}

// Every fixture of every type must match gguf-py exactly, bit for bit.
TEST(Quants, DequantizeMatchesGgufPyBitExact) {
  const auto index = read_index();
  ASSERT_GE(index["dequantize"].size(), 18u);
  for (const auto& e : index["dequantize"]) {
    const std::string name = e["name"];
    SCOPED_TRACE(name + " (reference: " + std::string(e["reference"]) + ")");
    const auto dtype = dtype_from_ggml(e["ggml_type"].get<uint32_t>());
    ASSERT_TRUE(dtype.has_value());
    EXPECT_EQ(std::string(dtype_name(*dtype)), e["type"].get<std::string>());
    const int64_t n = e["n"];
    const auto raw = read_bytes(e["raw"]);
    const auto expected = read_array<float>(e["expected"]);
    ASSERT_EQ(static_cast<int64_t>(expected.size()), n);
    ASSERT_EQ(raw.size(), *dtype_nbytes(*dtype, n));
    std::vector<float> got(static_cast<size_t>(n), -12345.0f);
    dequantize(*dtype, raw.data(), got.data(), n);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (!same_float(got[i], expected[i])) {
        if (++mismatches <= 5) {
          ADD_FAILURE() << "element " << i << ": got " << got[i] << " (0x" << std::hex << bits(got[i])
                        << "), gguf-py " << expected[i] << " (0x" << bits(expected[i]) << std::dec << ")";
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// Dequantising a range of blocks must equal the same blocks inside a longer run (no state).
TEST(Quants, DequantizeIsBlockwise) {
  const auto raw = read_bytes("Q4_K_random.bin");
  std::vector<float> all(6 * 256), part(2 * 256);
  dequantize(DType::Q4_K, raw.data(), all.data(), 6 * 256);
  dequantize(DType::Q4_K, raw.data() + 3 * 144, part.data(), 2 * 256);
  for (int i = 0; i < 512; ++i) ASSERT_EQ(bits(part[i]), bits(all[3 * 256 + i])) << i;
}

TEST(Quants, Fp16ToFp32AllHalvesMatchNumpy) {
  const auto halves = read_array<uint16_t>("F16_all.bin");
  const auto expected = read_array<float>("F16_all.f32");
  ASSERT_EQ(halves.size(), 65536u);
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(halves[h], h);
    ASSERT_TRUE(same_float(fp16_to_fp32(static_cast<uint16_t>(h)), expected[h]))
        << "half 0x" << std::hex << h;
  }
}

TEST(Quants, Fp16KnownValues) {
  EXPECT_EQ(fp16_to_fp32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(fp16_to_fp32(0x8000)));
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x03FF), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(fp16_to_fp32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_fp32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7E00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7C01)));

  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);  // tie between 65504 (odd) and 2^16: to inf
  EXPECT_EQ(fp32_to_fp16(-1e30f), 0xFC00);
  EXPECT_EQ(fp32_to_fp16(2049.0f), fp32_to_fp16(2048.0f));  // tie rounds to even
  EXPECT_EQ(fp32_to_fp16(2051.0f), fp32_to_fp16(2052.0f));
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);     // tie to even (0)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);     // tie to even (2)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  const uint16_t qnan = fp32_to_fp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(qnan & 0x7C00, 0x7C00);
  EXPECT_NE(qnan & 0x03FF, 0);
  // A signalling nan whose payload lives only in the low bits must stay a nan, not become inf.
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(from_bits(0x7F800001u)))));

  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3F808000u)), 0x3F80);  // tie to even (down)
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3F818000u)), 0x3F82);  // tie to even (up)
  EXPECT_EQ(fp32_to_bf16(from_bits(0x7F7FFFFFu)), 0x7F80);  // max float rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(from_bits(0x7F800001u)))));
}

TEST(Quants, Fp16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), h) << "half 0x" << std::hex << h;
  }
}

// float32 -> half against numpy and float32 -> bfloat16 against gguf-py, on ties, near-ties,
// random bit patterns and edge cases.
TEST(Quants, Fp32ToFp16AndBf16RoundLikeReferences) {
  const auto index = read_index();
  const auto& c = index["convert"];
  const auto x = read_array<float>(c["input"]);
  const auto f16 = read_array<uint16_t>(c["fp16"]);
  const auto b16 = read_array<uint16_t>(c["bf16"]);
  ASSERT_EQ(x.size(), c["n"].get<size_t>());
  ASSERT_EQ(f16.size(), x.size());
  ASSERT_EQ(b16.size(), x.size());
  int bad16 = 0, badb = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t h = fp32_to_fp16(x[i]), b = fp32_to_bf16(x[i]);
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(fp16_to_fp32(h)));
      EXPECT_TRUE(std::isnan(bf16_to_fp32(b)));
      continue;
    }
    if (h != f16[i] && ++bad16 <= 5) {
      ADD_FAILURE() << "fp16 of " << x[i] << " (0x" << std::hex << bits(x[i]) << "): got 0x" << h
                    << ", numpy 0x" << f16[i];
    }
    if (b != b16[i] && ++badb <= 5) {
      ADD_FAILURE() << "bf16 of " << x[i] << " (0x" << std::hex << bits(x[i]) << "): got 0x" << b
                    << ", gguf-py 0x" << b16[i];
    }
  }
  EXPECT_EQ(bad16, 0);
  EXPECT_EQ(badb, 0);
}

// Block sizes and bytes as in gguf-py's GGML_QUANT_SIZES (Q8_1 as in ggml-common.h, see quants.cpp).
TEST(Quants, SizeTables) {
  struct Row {
    DType t;
    int64_t block, bytes;
  };
  const Row rows[] = {
      {DType::F32, 1, 4},      {DType::F16, 1, 2},      {DType::Q4_0, 32, 18},   {DType::Q4_1, 32, 20},
      {DType::Q5_0, 32, 22},   {DType::Q5_1, 32, 24},   {DType::Q8_0, 32, 34},   {DType::Q8_1, 32, 36},
      {DType::Q2_K, 256, 84},  {DType::Q3_K, 256, 110}, {DType::Q4_K, 256, 144}, {DType::Q5_K, 256, 176},
      {DType::Q6_K, 256, 210}, {DType::Q8_K, 256, 292}, {DType::I8, 1, 1},       {DType::I16, 1, 2},
      {DType::I32, 1, 4},      {DType::I64, 1, 8},      {DType::F64, 1, 8},      {DType::BF16, 1, 2},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(dtype_name(r.t));
    EXPECT_EQ(dtype_block_size(r.t), r.block);
    EXPECT_EQ(dtype_block_bytes(r.t), r.bytes);
    EXPECT_EQ(dtype_nbytes(r.t, 3 * r.block), static_cast<uint64_t>(3 * r.bytes));
    EXPECT_EQ(dtype_nbytes(r.t, 0), 0u);
    if (r.block > 1) {
      EXPECT_FALSE(dtype_nbytes(r.t, r.block + 1).has_value());
    }
    EXPECT_FALSE(dtype_nbytes(r.t, -r.block).has_value());
  }
  EXPECT_FALSE(dtype_nbytes(DType::F64, std::numeric_limits<int64_t>::max() / 4).has_value());
  EXPECT_FALSE(dtype_nbytes(DType::Q8_K, (std::numeric_limits<int64_t>::max() / 256) * 256).has_value());
  EXPECT_EQ(dtype_from_ggml(2), DType::Q4_0);
  EXPECT_EQ(dtype_from_ggml(30), DType::BF16);
  EXPECT_FALSE(dtype_from_ggml(9).has_value());   // Q8_1: never in files
  EXPECT_FALSE(dtype_from_ggml(4).has_value());   // removed Q4_2
  EXPECT_FALSE(dtype_from_ggml(16).has_value());  // IQ2_XXS
  EXPECT_FALSE(dtype_from_ggml(0xFFFFFFFFu).has_value());
  EXPECT_STREQ(dtype_name(DType::Q6_K), "Q6_K");
  EXPECT_TRUE(dtype_is_float_convertible(DType::Q4_1));
  EXPECT_FALSE(dtype_is_float_convertible(DType::I32));
}

TEST(Quants, DequantizeRejectsIntegerTypesAndPartialBlocks) {
  std::vector<uint8_t> src(4096, 0);
  std::vector<float> dst(1024);
  for (DType t : {DType::I8, DType::I16, DType::I32, DType::I64}) {
    EXPECT_THROW(dequantize(t, src.data(), dst.data(), 4), UnsupportedError) << dtype_name(t);
  }
  EXPECT_THROW(dequantize(DType::Q4_0, src.data(), dst.data(), 33), FormatError);
  EXPECT_THROW(dequantize(DType::Q6_K, src.data(), dst.data(), 32), FormatError);
  EXPECT_THROW(dequantize(static_cast<DType>(77), src.data(), dst.data(), 4), UnsupportedError);
}

TEST(Quants, PlainFloatTypes) {
  const float f32[3] = {1.5f, -0.0f, 3e38f};
  const double f64[3] = {1.5, -2.25, 1e300};
  float out[3];
  dequantize(DType::F32, reinterpret_cast<const uint8_t*>(f32), out, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(bits(out[i]), bits(f32[i]));
  dequantize(DType::F64, reinterpret_cast<const uint8_t*>(f64), out, 3);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.25f);
  EXPECT_TRUE(std::isinf(out[2]));
}

}  // namespace
}  // namespace sdtp
