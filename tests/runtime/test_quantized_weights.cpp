// Weights kept in their GGUF blocks (LoadOptions::keep_quantized, the default) against the same
// file loaded with float32 copies: the CPU prefill (float32 rows dequantised a chunk at a time for
// sgemm) gives the float load's logits, and decode (the 8-bit kernels on the very same blocks)
// gives the same tokens. Fixture: tests/fixtures/loader/tiny_llama.gguf (Q8_0, Q4_1, F16, F32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/session.h"
#include "testing/fixtures.h"

namespace sdtp {
namespace {

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

TEST(QuantizedWeights, BlocksOnlyLoadMatchesTheFloatLoadInPrefillAndDecode) {
  const std::string path = testing::fixture_path("loader/tiny_llama.gguf");
  auto q = load_model(path);
  LoadOptions lo;
  lo.keep_quantized = false;
  auto f = load_model(path, lo);
  ASSERT_TRUE(q->weights.layers[0].wq.quantized_only() || q->weights.layers[0].w_gate.quantized_only() ||
              q->weights.tok_embd.quantized_only());
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 7 + 3) % q->config.n_vocab);
  for (bool q8 : {false, true}) {
    SessionOptions o;
    o.decode_q8 = q8;
    Session sq(*q, o), sf(*f, o);
    std::vector<float> lq = sq.prefill(ids), lf = sf.prefill(ids);
    const double err = max_rel(lq, lf);
    std::printf("[quantized] decode_q8=%d prefill of %zu tokens: max rel diff %.3e\n", q8, ids.size(), err);
    EXPECT_LE(err, 1e-5);
    EXPECT_EQ(argmax(lq), argmax(lf));
    double worst = 0.0;
    for (int step = 0; step < 8; ++step) {
      const int32_t t = argmax(lf);
      ASSERT_EQ(argmax(lq), t) << "step " << step;
      lq = sq.decode(t);
      lf = sf.decode(t);
      worst = std::max(worst, max_rel(lq, lf));
    }
    std::printf("[quantized] decode_q8=%d 8 decode steps: max rel diff %.3e\n", q8, worst);
    EXPECT_LE(worst, 1e-5);
  }
}

}  // namespace
}  // namespace sdtp
