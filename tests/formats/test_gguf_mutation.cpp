// Robustness of the GGUF reader against corrupt files: starting from a valid small GGUF (several
// value types, 3 tensors), every mutant -- truncated at each byte, randomly corrupted, or with a
// huge value in a length/count/offset field -- must either parse into a self-consistent file or
// throw sdtp::Error; anything else (another exception, a crash, an ASan report) fails. Runs in
// about a second under AddressSanitizer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/gguf_test_writer.h"
#include "formats/quants.h"
#include "sdtp/error.h"

namespace sdtp {
namespace {

using W = testing::GGUFTestWriter;

W base_writer() {
  W w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 2);
  w.add_f32("llama.rope.freq_base", 10000.0f);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_i64("t.i64", -5);
  w.add_f64("t.f64", 0.25);
  w.add_u16("t.u16", 7);
  w.add_string_array("tokenizer.ggml.tokens", {"<s>", "a", "bc", ""});
  w.add_array<int32_t>("tokenizer.ggml.token_type", W::I32, {3, 1, 1, 1});
  w.add_array<float>("tokenizer.ggml.scores", W::F32, {0.f, -1.f, -2.f, -3.f});
  w.add_nested_array("t.nested", 2, 2);
  std::vector<uint8_t> f32(4 * 8);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = static_cast<uint8_t>(i * 13);
  w.add_tensor("token_embd.weight", 0, {4, 2}, f32);
  std::vector<uint8_t> q(2 * 20, 0x5A);
  w.add_tensor("blk.0.attn_q.weight", 3, {32, 2}, q);  // Q4_1
  w.add_tensor("output_norm.weight", 1, {4}, std::vector<uint8_t>(8, 0x3C));
  return w;
}

class GgufMutation : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "sdtp_gguf_mutant_" + std::to_string(getpid()) + ".gguf";
    page_ = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  }
  void TearDown() override { std::remove(path_.c_str()); }

  // Parses one mutant. Returns true if it parsed. Any exception other than sdtp::Error fails.
  bool check(const std::vector<uint8_t>& bytes, const std::string& what) {
    // A file below one page maps to one page-aligned page, so the mapping base is known and
    // every tensor's range can be checked against the file's bytes.
    EXPECT_LT(bytes.size(), page_);
    testing::write_file(path_, bytes);
    try {
      GGUFFile f(path_);
      touch(f, bytes, what);
      ++parsed_;
      parsed_whats_.push_back(what);
      return true;
    } catch (const Error&) {
      ++rejected_;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": threw a non-sdtp exception: " << e.what();
    } catch (...) {
      ADD_FAILURE() << what << ": threw a non-std exception";
    }
    return false;
  }

  // Uses everything a parsed file claims: getters on every key, every tensor's bytes.
  void touch(const GGUFFile& f, const std::vector<uint8_t>& bytes, const std::string& what) {
    for (const auto& [key, v] : f.metadata()) {
      try {
        (void)f.get_string(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_int(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_float(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_bool(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_string_array(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_int_array(key);
      } catch (const Error&) {
      }
      try {
        (void)f.get_float_array(key);
      } catch (const Error&) {
      }
      (void)v.array_size();
    }
    EXPECT_TRUE(f.alignment() > 0 && (f.alignment() & (f.alignment() - 1)) == 0) << what;
    for (const RawTensor& t : f.tensors()) {
      ASSERT_FALSE(t.shape.empty()) << what;
      ASSERT_LE(t.shape.size(), 4u) << what;
      for (int64_t d : t.shape) ASSERT_GT(d, 0) << what;
      ASSERT_EQ(dtype_nbytes(t.dtype, t.numel()), t.nbytes) << what << " tensor " << t.name;
      const uintptr_t base = reinterpret_cast<uintptr_t>(t.data) & ~(page_ - 1);
      const uintptr_t off = reinterpret_cast<uintptr_t>(t.data) - base;
      ASSERT_LE(off + t.nbytes, bytes.size()) << what << " tensor " << t.name;
      ASSERT_EQ(std::memcmp(t.data, bytes.data() + off, t.nbytes), 0) << what << " tensor " << t.name;
      ASSERT_EQ(f.find_tensor(t.name), &t) << what;
      if (dtype_is_float_convertible(t.dtype)) {
        std::vector<float> out(static_cast<size_t>(t.numel()));
        dequantize(t.dtype, t.data, out.data(), t.numel());
      }
    }
  }

  std::string path_;
  uintptr_t page_ = 4096;
  int parsed_ = 0, rejected_ = 0;
  std::vector<std::string> parsed_whats_;
};

TEST_F(GgufMutation, BaseFileParses) {
  W w = base_writer();
  const auto bytes = w.build();
  ASSERT_TRUE(check(bytes, "base"));
  GGUFFile f(path_);
  EXPECT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().size(), 11u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 4u);
}

TEST_F(GgufMutation, TruncatedAtEveryByte) {
  const auto bytes = base_writer().build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    // Past the last tensor's data only padding is cut; before it every cut must be rejected.
    check(std::vector<uint8_t>(bytes.begin(), bytes.begin() + n), "truncated to " + std::to_string(n));
  }
  // The last tensor (8 bytes) sits at the start of the 32-byte padded tail.
  EXPECT_EQ(parsed_, 32 - 8);
  std::cout << "[ info ] truncations: " << parsed_ << " parsed, " << rejected_ << " rejected\n";
}

TEST_F(GgufMutation, RandomByteCorruption) {
  const auto bytes = base_writer().build();
  std::mt19937_64 rng(12345);
  const int kMutants = 3000;
  for (int m = 0; m < kMutants; ++m) {
    auto mut = bytes;
    const int edits = 1 + static_cast<int>(rng() % 4);
    std::string what = "mutant " + std::to_string(m) + ":";
    for (int e = 0; e < edits; ++e) {
      const size_t pos = static_cast<size_t>(rng() % mut.size());
      switch (rng() % 4) {
        case 0:
          mut[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:
          mut[pos] = static_cast<uint8_t>(rng());
          break;
        case 2:
          mut[pos] = 0xFF;
          break;
        default:
          mut[pos] = 0x00;
          break;
      }
      what += " @" + std::to_string(pos);
    }
    check(mut, what);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_EQ(parsed_ + rejected_, kMutants);
  EXPECT_GT(parsed_, 0);  // some bytes (tensor data, string contents) are free to change
  EXPECT_GT(rejected_, 0);
  std::cout << "[ info ] random mutants: " << parsed_ << " parsed, " << rejected_ << " rejected\n";
}

TEST_F(GgufMutation, HugeValuesInEveryLengthCountAndOffsetField) {
  W w = base_writer();
  const auto bytes = w.build();
  ASSERT_GT(w.fields.size(), 40u);
  const uint64_t size = bytes.size();
  const std::vector<uint64_t> v64 = {~0ull, 1ull << 63, (1ull << 63) - 1, 1ull << 60, 1ull << 32,
                                     size,  size + 1,   size - 1,         0};
  const std::vector<uint64_t> v32 = {0xFFFFFFFFull, 0x80000000ull, 0x7FFFFFFFull, 65536, 13, 5, 0};
  int fields_seen = 0;
  for (const auto& field : w.fields) {
    ++fields_seen;
    for (uint64_t v : field.size == 8 ? v64 : v32) {
      auto mut = bytes;
      std::memcpy(mut.data() + field.offset, &v, field.size);  // little-endian host
      check(mut, field.what + " = " + std::to_string(v));
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  EXPECT_GT(rejected_, fields_seen);
  std::cout << "[ info ] " << fields_seen << " fields, huge-value mutants: " << parsed_ << " parsed, "
            << rejected_ << " rejected\n";
  for (const auto& w : parsed_whats_) std::cout << "[ info ]   parsed: " << w << "\n";
}

}  // namespace
}  // namespace sdtp
