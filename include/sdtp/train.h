// Training the SDTP predictors for a model (what `sdtp train-predictor` runs): build training
// sequences from text files and generated long-context tasks, compute their gradient saliency with
// the frozen model, fit the prediction modules with the ranking loss, report ranking agreement on
// held-out sequences, checkpoint and resume. See docs/sdtp.md. Also the gradient-saliency oracle
// that a plan with method "saliency" calls (make_saliency_oracle).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/predictor.h"

namespace sdtp {

struct TrainPredictorOptions {
  std::vector<std::string> data;  // text files (windows of their tokens; also the tasks' haystack)
  // Generated tasks mixed in (the evaluation harness's generators, with the data text as haystack
  // and their own seeds, so nothing the evaluation uses is trained on).
  std::vector<std::string> tasks = {"passkey", "niah_single", "niah_multikey", "niah_multivalue", "vt"};
  double task_fraction = 0.5;  // share of sequences that are generated tasks
  // Share of the other sequences that are instruction-style (quote a numbered line of a passage
  // of the text: export_training_data's substitute for the paper's Dolly-15K); the rest are text
  // windows. 0 keeps the sequences of a seed what they were before this option.
  double instruct_fraction = 0.0;
  int sequences = 160;         // training sequences
  int heldout = 16;            // held-out sequences (from the last 10% of the text, other task seeds)
  int min_tokens = 512, max_tokens = 2048;
  PrunePlan plan;    // layers, keep ratios (for agreement), keep_first
  int n_hidden = 0;  // 0 = n_embd / 4

  int steps = 600;
  int batch = 4;
  int pairs = 1024;
  float lr = 2e-3f;
  float weight_decay = 0.0f;
  float mse_weight = 0.0f;
  float margin = 0.2f;
  uint64_t seed = 0;

  std::string checkpoint;    // "" = none
  int checkpoint_every = 50;
  bool resume = false;       // continue from `checkpoint` when it exists
  std::string cache;         // saliency of the sequences, reused across runs ("" = none)
  int eval_every = 50;       // held-out agreement every this many steps
  int n_threads = 0;         // 0 = $OMP_NUM_THREADS if set, else all hardware threads
};

// What export_training_data wrote.
struct ExportDataResult {
  int sequences = 0, heldout = 0;
  int64_t tokens = 0, answer_tokens = 0;
};

// The training and held-out sequences of `o` with what follows each prompt (a task's expected
// answer + end of turn, an instruction's quoted line, a text window's next tokens), written to
// `path` as safetensors for scripts/train/sdtp_train.py (the full-objective trainer): ids I32
// [tokens] (all sequences, prompt then answer), offsets I64 [n+1], prompt_len I32 [n], heldout U8
// [n]; __metadata__ format "sdtp-train-data", version "1", sources (JSON list), model.name.
ExportDataResult export_training_data(const Model& model, const TrainPredictorOptions& o, const std::string& path);

struct TrainProgress {
  enum class Phase { saliency, training } phase = Phase::saliency;
  int done = 0, total = 0;
  double elapsed_s = 0;
  double loss = -1;             // training: mean loss of the last steps
  double topk_overlap = -1;     // training: held-out agreement at the last evaluation
  double kendall_tau = -1;
};

struct TrainPredictorResult {
  Predictor predictor;
  double initial_topk_overlap = 0, initial_kendall_tau = 0;  // held out, before training
  double final_topk_overlap = 0, final_kendall_tau = 0;      // held out, after training
  double first_loss = 0, last_loss = 0;  // mean training loss over the first / last 10% of steps
  int train_tokens = 0, heldout_tokens = 0;
  double saliency_s = 0, train_s = 0;
};

// Throws UsageError on bad options (no data, lengths out of the model's context, ...), Error on IO.
TrainPredictorResult train_predictor(const Model& model, const TrainPredictorOptions& options,
                                     const std::function<void(const TrainProgress&)>& progress = {});

// PrunePlan::saliency_oracle for method "saliency": the gradient saliency of the dense `model`
// (token_saliency, default objective, one forward+backward pass per call; see train/saliency.h).
// The oracle holds a reference to `model`, which must outlive every plan that carries it.
SaliencyOracle make_saliency_oracle(const Model& model);

}  // namespace sdtp
