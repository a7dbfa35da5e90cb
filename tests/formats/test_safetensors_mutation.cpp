// Robustness of the safetensors reader on corrupt files: every truncation, byte flips, patched
// header lengths and patched numbers of a small valid file must either parse (with every tensor
// inside the file) or throw sdtp::Error; never crash, hang or throw anything else. Runs under
// ASan/UBSan in CI, so it stays small (a few thousand mutants of a ~1 KB file). Whole-model loads
// of corrupt weights: tests/model/test_loader_mutation.cpp.
#include <gtest/gtest.h>

#include <random>

#include "formats/quants.h"
#include "formats/safetensors.h"
#include "formats/safetensors_writer.h"
#include "sdtp/error.h"

namespace sdtp {
namespace {

using namespace sdtp::testing;

std::string valid_file() {
  std::vector<StTensor> ts = {
      {"w", "F32", {2, 3}, f32_bytes({1, 2, 3, 4, 5, 6})},
      {"h", "F16", {4}, f16_bytes({1, -2, 0.5f, 8})},
      {"b", "BF16", {2, 1}, bf16_bytes({3, -4})},
      {"i", "I64", {1}, std::vector<uint8_t>(8, 1)},
  };
  return safetensors_bytes(ts, nlohmann::json{{"format", "pt"}});
}

// Parses one mutant; returns false (with a test failure) on anything but success or sdtp::Error.
bool survives(const std::string& path, const std::string& bytes, const std::string& what) {
  write_file(path, bytes);
  try {
    SafetensorsFile f(path);
    for (const RawTensor& t : f.tensors()) {
      auto n = dtype_nbytes(t.dtype, t.numel());
      EXPECT_TRUE(n && *n == t.nbytes) << what << ": " << t.name;
      EXPECT_LE(t.nbytes, bytes.size()) << what << ": " << t.name;
      // Touch every byte: out-of-bounds data would fault here (or be reported by ASan).
      unsigned sum = 0;
      for (uint64_t k = 0; k < t.nbytes; ++k) sum += t.data[k];
      (void)sum;
      if (dtype_is_float_convertible(t.dtype)) {
        std::vector<float> out(t.numel());
        dequantize(t.dtype, t.data, out.data(), t.numel());
      }
    }
  } catch (const Error&) {
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": non-sdtp exception: " << e.what();
    return false;
  }
  return true;
}

void set_u64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[i] = char((v >> (8 * i)) & 0xff);
}

TEST(SafetensorsMutation, TruncationsFlipsAndPatchedLengths) {
  const std::string dir = scratch_dir("st_mutation");
  const std::string p = dir + "/m.safetensors";
  const std::string good = valid_file();
  ASSERT_TRUE(survives(p, good, "valid"));
  {
    SafetensorsFile f(p);
    ASSERT_EQ(f.tensors().size(), 4u);
  }

  for (size_t n = 0; n < good.size(); ++n)
    if (!survives(p, good.substr(0, n), "truncated to " + std::to_string(n))) return;

  std::mt19937 rng(1234);
  const char specials[] = {'{', '}', '[', ']', '"', ',', ':', '-', '9', '0', 'e', '.', '\\', '\0', '\xff'};
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::string m = good;
    m[pos] = char(m[pos] ^ (1 + rng() % 255));
    if (!survives(p, m, "flip at " + std::to_string(pos))) return;
    m = good;
    m[pos] = specials[rng() % sizeof(specials)];
    if (!survives(p, m, "special at " + std::to_string(pos))) return;
  }

  const uint64_t hlen = [&] {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | uint8_t(good[i]);
    return v;
  }();
  for (uint64_t v : {uint64_t(0), uint64_t(1), hlen - 1, hlen + 1, uint64_t(good.size() - 8),
                     uint64_t(good.size() - 7), uint64_t(good.size()), uint64_t((100ull << 20) + 1),
                     uint64_t(1) << 63, ~uint64_t(0), ~uint64_t(0) - 7}) {
    std::string m = good;
    set_u64(m, v);
    if (!survives(p, m, "header length " + std::to_string(v))) return;
  }

  // Replace each number in the header by extreme values.
  const char* numbers[] = {"18446744073709551615",
                           "18446744073709551616",
                           "9223372036854775807",
                           "-1",
                           "1e30",
                           "4294967296",
                           "0",
                           "2.5",
                           "null",
                           "\"3\""};
  const std::string header = good.substr(8, hlen);
  for (size_t pos = 0; pos < header.size(); ++pos) {
    if (!isdigit(uint8_t(header[pos])) || (pos > 0 && isdigit(uint8_t(header[pos - 1])))) continue;
    size_t end = pos;
    while (end < header.size() && isdigit(uint8_t(header[end]))) ++end;
    for (const char* num : numbers) {
      std::string h = header.substr(0, pos) + num + header.substr(end);
      std::string m(8, '\0');
      set_u64(m, h.size());
      m += h + good.substr(8 + hlen);
      if (!survives(p, m, "number at " + std::to_string(pos) + " -> " + num)) return;
    }
  }
}

}  // namespace
}  // namespace sdtp
