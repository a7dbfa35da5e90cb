// The SDTP prediction module (Tao et al. 2025, §3.2): at each pruning stage a small MLP maps a
// token's hidden state to one importance score, score = fc2(GELU(fc1(rmsnorm(h)))). The
// parameter-free RMS normalisation of the input is our addition (residual streams carry a few
// huge "massive activation" channels that make an unnormalised MLP hard to train); GELU is the
// exact erf form. A predictor file is safetensors: the stage weights as float32 tensors and, in
// the header's __metadata__, the identity of the model it was trained for and the pruning plan.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sdtp/prune.h"

namespace sdtp {

struct Model;
struct ModelConfig;

// Enough of a model to refuse a predictor trained for another one. The fingerprint is a slice
// of the dequantised token embedding (fixed rows and columns), compared with a tolerance so
// that the same model in another precision (Q4_1 GGUF, f16 safetensors) still matches.
struct ModelIdentity {
  std::string arch;
  std::string name;
  int n_layer = 0, n_embd = 0, n_vocab = 0;
  std::vector<float> fingerprint;

  static ModelIdentity of(const Model& model);
  // Throws UsageError naming `what` (e.g. the predictor file) and the first field that differs.
  void check_matches(const ModelIdentity& model, const std::string& what) const;
};

struct PredictorStage {
  int layer = 0;            // the pruning layer whose input hidden state it scores
  std::vector<float> w1;    // [n_hidden x n_embd], row-major
  std::vector<float> b1;    // [n_hidden]
  std::vector<float> w2;    // [n_hidden]: fc2 to one score (a file's two-output fc2 is folded: keep − drop)
  float b2 = 0.0f;
};

struct Predictor {
  ModelIdentity model;
  PrunePlan plan;  // method "sdtp"; layers/keep_ratios/keep_first it was trained with
  int n_embd = 0;
  int n_hidden = 0;
  std::vector<PredictorStage> stages;  // one per plan layer, same order
  std::map<std::string, std::string> info;  // free-form provenance (training command, data, steps)

  // Fresh weights of the right shape (Kaiming-uniform like torch.nn.Linear), for speed runs and
  // as the start of training. n_hidden 0 = n_embd / 4.
  static Predictor random(const Model& model, const PrunePlan& plan, uint64_t seed, int n_hidden = 0);
  // The same weights (same seed, same draws) for a bare configuration: the identity has no
  // fingerprint, so no real model matches it (speed runs on random-weight presets).
  static Predictor random(const ModelConfig& config, const PrunePlan& plan, uint64_t seed, int n_hidden = 0);

  // scores[i] for the n rows of hidden [n x n_embd] at `stage`. Thread-safe (no state).
  void score(int stage, const float* hidden, int64_t n, float* scores) const;

  // Throws UsageError when the plan has a stage layer the predictor has no module for.
  void check_plan(const PrunePlan& plan) const;
};

// Throws FormatError naming the file on anything malformed (not safetensors, missing tensor, wrong
// shape or dtype, non-finite weight, metadata that does not parse).
Predictor load_predictor(const std::string& path);
// Writes atomically (temporary file, then rename).
void save_predictor(const Predictor& predictor, const std::string& path);

// The predictor files in `dirs` (in that order; missing folders are passed over) made for `model`
// (ModelIdentity::check_matches: architecture, shape and embedding fingerprint), those whose name
// ends in ".sdtp.safetensors" first within a folder, then by name. Files that are not predictors
// or are damaged are passed over.
std::vector<std::string> find_predictors_for(const Model& model, const std::vector<std::string>& dirs);

}  // namespace sdtp
