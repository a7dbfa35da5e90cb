// Robustness of the loader on corrupt weights: a small Hugging Face folder whose safetensors file
// is truncated or has flipped bytes must load or throw sdtp::Error (shape checks, dequantisation);
// never crash or throw anything else. The reader's own mutation tests are in
// tests/formats/test_safetensors_mutation.cpp.
#include <gtest/gtest.h>

#include <random>

#include "formats/safetensors_writer.h"
#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp {
namespace {

using namespace sdtp::testing;

TEST(LoaderMutation, LoadModelOnCorruptWeights) {
  const std::string dir = scratch_dir("ld_mutation");
  nlohmann::json c = tiny_llama_config();
  c["num_hidden_layers"] = 1;
  c["vocab_size"] = 4;
  c["intermediate_size"] = 2;
  const std::string good = safetensors_bytes(tiny_llama_tensors(c));
  write_file(dir + "/config.json", c.dump());
  auto attempt = [&](const std::string& bytes, const std::string& what) {
    write_file(dir + "/model.safetensors", bytes);
    try {
      load_model(dir);
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": non-sdtp exception: " << e.what();
    }
  };
  attempt(good, "valid");
  EXPECT_NO_THROW(load_model(dir));
  std::mt19937 rng(99);
  for (int k = 0; k < 300; ++k) {
    std::string m = good;
    const size_t pos = rng() % std::min<size_t>(m.size(), 8 + 2000);  // mostly the header
    m[pos] = char(m[pos] ^ (1 + rng() % 255));
    attempt(m, "flip at " + std::to_string(pos));
  }
  for (size_t n = 0; n < good.size(); n += 7) attempt(good.substr(0, n), "truncated to " + std::to_string(n));
}

}  // namespace
}  // namespace sdtp
