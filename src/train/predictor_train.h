// Training of the SDTP prediction modules (Tao et al. 2025, §3.3 "ranking-based optimization"):
// the base model is frozen; each training sequence is run once through token_saliency, which gives
// the hidden state entering every pruning layer and the gradient saliency there; the modules are
// then fitted so that, within a sequence, the order of their scores matches the order of the
// saliency magnitudes.
//
// Loss per stage s and sequence: a pairwise (RankNet) logistic loss over sampled token pairs
// (i, j) whose saliency magnitudes differ by more than a margin,
//     L_r^(s) = mean log(1 + exp(-(p_i - p_j) · sign(t_i - t_j))),   t = |π̂|,
// summed over stages (L_r = Σ_s L_r^(s)), plus an optional auxiliary pointwise term, the MSE between
// the standardised scores and the standardised log-saliency (weight `mse_weight`; ours, off by
// default). The paper's text beyond its method summary was not available to us; what we chose
// where it is silent is listed in docs/sdtp.md.
//
// The always-kept tokens (the last one and the first keep_first) never enter pairs: their rank does
// not matter. Deterministic for a seed: step t draws its batch and pairs from a generator seeded by
// (seed, t), so a run resumed from a checkpoint continues exactly as an uninterrupted one.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/predictor.h"

namespace sdtp::train {

// One training sequence's targets at every stage of the plan.
struct SaliencyExample {
  int64_t n = 0;                               // tokens
  std::vector<std::vector<float>> hidden;      // [stage][n x n_embd] hidden state entering the layer
  std::vector<std::vector<float>> saliency;    // [stage][n] signed gradient saliency
  std::string source;                          // where the sequence came from (messages)
};

// Runs token_saliency (objective: log-probability of the model's top next-token prediction at the
// last position) at the plan's layers.
SaliencyExample make_example(const Model& model, const std::vector<int32_t>& ids, const std::vector<int>& layers,
                             std::string source);

struct TrainOptions {
  int steps = 600;
  int batch = 4;            // sequences per step
  int pairs = 1024;         // sampled pairs per sequence and stage
  float lr = 2e-3f;         // Adam, cosine decay to lr/10 over `steps`, 5% linear warm-up
  float weight_decay = 0.0f;
  float mse_weight = 0.0f;  // auxiliary pointwise term
  float margin = 0.2f;      // pairs need |log t_i − log t_j| > margin
  uint64_t seed = 0;
};

// Ranking agreement of predicted scores with saliency magnitudes over some sequences, mean over
// sequences and stages; the always-kept tokens are left out.
struct Agreement {
  double topk_overlap = 0;  // |top-k by score ∩ top-k by |saliency||| / k at the stage's keep ratio
  double kendall_tau = 0;   // on up to 20000 sampled pairs per sequence and stage
};
Agreement ranking_agreement(const Predictor& p, const std::vector<SaliencyExample>& examples);

struct StepReport {
  int step = 0;  // steps done
  double loss = 0, rank_loss = 0, mse_loss = 0;
};

class PredictorTrainer {
 public:
  // `predictor` holds the initial weights (Predictor::random, or a checkpoint's).
  PredictorTrainer(Predictor predictor, const TrainOptions& options);

  // One Adam step on a batch drawn from `train`. Returns the batch's losses (before the update).
  StepReport step(const std::vector<SaliencyExample>& train);
  int steps_done() const { return step_; }
  const Predictor& predictor() const { return pred_; }

  // Checkpoint: the predictor file at `path` (info entries train.step etc.) and the optimiser
  // state at `path` + ".adam". Both written atomically.
  void save_checkpoint(const std::string& path) const;
  // Restores weights, optimiser state and step; throws FormatError on a corrupt or mismatched
  // checkpoint (different predictor shape or plan).
  void load_checkpoint(const std::string& path);

 private:
  Predictor pred_;
  TrainOptions opt_;
  int step_ = 0;
  std::vector<float> m_, v_;  // Adam moments over all parameters (stage-major, see flatten())
};

// Losses and the gradient of one stage on one sequence (exposed for tests: gradient checks).
// grad is laid out like the stage's parameters: w1, b1, w2, b2. Rows [keep_first, n - keep_last)
// are ranked (the always-kept sinks and recent tail, the last row at least, are not).
StepReport stage_loss_and_grad(const PredictorStage& stage, int n_embd, int n_hidden, const float* hidden,
                               const float* saliency, int64_t n, int keep_first, const TrainOptions& options,
                               uint64_t pair_seed, std::vector<float>* grad, int64_t keep_last = 1);

}  // namespace sdtp::train
