// The model of the harness tests: a 2-layer random llama (test fixture) whose embedding and lm head
// are widened (with seeded random rows) to the tiny Qwen2 tokenizer's vocabulary, so that text tasks
// run in milliseconds.
#pragma once

#include <memory>
#include <random>

#include "sdtp/model.h"
#include "testing/fixtures.h"

namespace sdtp::testing {

inline std::unique_ptr<Model> tiny_eval_model() {
  auto model = load_model(fixture_path("tiny/llama_gqa"));
  model->tokenizer = Tokenizer(Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/qwen2_tiny")));
  const int64_t v = model->tokenizer.n_vocab(), d = model->config.n_embd;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  auto widen = [&](Tensor& t) {
    if (t.empty()) return;
    const int64_t old_rows = t.dim(0);
    t.data.resize(static_cast<size_t>(v * d));
    for (int64_t i = old_rows * d; i < v * d; ++i) t.data[i] = normal(rng);
    t.shape = {v, d};
  };
  widen(model->weights.tok_embd);
  widen(model->weights.output);
  model->config.n_vocab = static_cast<int>(v);
  return model;
}

}  // namespace sdtp::testing
