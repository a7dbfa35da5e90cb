// Fixture file helpers for the tests (see fixtures.h).
#include "testing/fixtures.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

namespace sdtp::testing {

std::string fixture_path(const std::string& relative) {
  return std::string(SDTP_SOURCE_DIR) + "/tests/fixtures/" + relative;
}

bool path_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

std::vector<float> read_f32_bin(const std::string& path, int64_t expected_count) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const std::streamoff size = in.tellg();
  if (size < 0 || size % 4 != 0)
    throw std::runtime_error(path + ": size " + std::to_string(size) + " is not a multiple of 4");
  if (expected_count >= 0 && size != expected_count * 4)
    throw std::runtime_error(path + ": expected " + std::to_string(expected_count) + " floats, file has " +
                             std::to_string(size / 4));
  std::vector<float> out(static_cast<size_t>(size / 4));
  in.seekg(0);
  // The fixtures are little-endian; so is every machine we build on (x86-64, aarch64).
  if (!out.empty() && !in.read(reinterpret_cast<char*>(out.data()), size))
    throw std::runtime_error(path + ": short read");
  return out;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

std::vector<int32_t> json_ids(const nlohmann::json& array) {
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (const auto& v : array) ids.push_back(v.get<int32_t>());
  return ids;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed, int32_t lowest) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(lowest, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = u(rng);
  return ids;
}

float bf16_round(float x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  u &= 0xffff0000u;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

bool missing_model_allowed() {
  const char* v = std::getenv("SDTP_ALLOW_NO_MODEL");
  return v && std::string(v) == "1";
}

std::string default_model_path() {
  if (const char* env = std::getenv("SDTP_MODEL"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

double max_rel_error(const float* ours, const float* ref, size_t n) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(ours[i]) - ref[i]);
    // NaN in ours must fail the comparison, not vanish in std::max.
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

}  // namespace sdtp::testing
