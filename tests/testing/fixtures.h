// Test helpers that read the reference fixtures under tests/fixtures/: paths, float32 .bin
// files and JSON. Fixtures are written by scripts/gen_fixtures.sh (Hugging Face transformers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sdtp::testing {

// Absolute path of a file under tests/fixtures/ (e.g. fixture_path("tiny/llama_gqa")).
std::string fixture_path(const std::string& relative);

// True if the path exists (file or folder).
bool path_exists(const std::string& path);

// Reads a little-endian float32 file; throws std::runtime_error naming the file if it cannot be
// read or its size is not a multiple of 4 (or not expected_count*4 when expected_count >= 0).
std::vector<float> read_f32_bin(const std::string& path, int64_t expected_count = -1);

// Parses a JSON file; throws std::runtime_error naming the file on failure.
nlohmann::json read_json(const std::string& path);

// Converts a JSON array of integers to token ids.
std::vector<int32_t> json_ids(const nlohmann::json& array);

// $SDTP_MODEL if set, else ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf.
std::string default_model_path();

// Whether a test that needs the default model may skip when it is missing ($SDTP_ALLOW_NO_MODEL=1,
// for a quick local run); otherwise a missing model fails the test, so scripts/test.sh and CI never
// go green without the real-model tests.
bool missing_model_allowed();

// In a test body: the default model is missing (`what` is streamed into the message).
#define SDTP_NO_DEFAULT_MODEL(what)                                                                   \
  do {                                                                                               \
    if (::sdtp::testing::missing_model_allowed())                                                    \
      GTEST_SKIP() << what << " (skipped: $SDTP_ALLOW_NO_MODEL=1)";                                   \
    else                                                                                             \
      FAIL() << what << " (run scripts/fetch_model.sh, or set SDTP_ALLOW_NO_MODEL=1 to skip)";        \
  } while (0)

// n token ids drawn uniformly from [lowest, vocab) with std::mt19937(seed) (random-weight model tests).
std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed, int32_t lowest = 0);

// x rounded to bf16 (round to nearest even) and back: the values a CUDA backend holds.
float bf16_round(float x);

// The KV cache type a test compares against its float32 reference on `device`: "f32" on the CPU,
// the backend's own ("auto": bf16) elsewhere, since CUDA keeps only bf16 entries.
inline const char* reference_kv_type(const std::string& device) { return device == "cpu" ? "f32" : "auto"; }

// max |a-b| / max |b| over n floats (max |b| floored at 1e-30). Used for logits comparisons.
double max_rel_error(const float* ours, const float* ref, size_t n);

}  // namespace sdtp::testing
