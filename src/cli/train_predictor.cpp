// `sdtp train-predictor`: trains the SDTP prediction modules of a model (include/sdtp/train.h) and
// writes them as a predictor file, with a progress bar (loss, held-out ranking agreement) on a TTY
// and a summary line per phase otherwise.
#include <cmath>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/eval.h"
#include "sdtp/predictor.h"
#include "sdtp/train.h"

namespace sdtp::cli {

ArgParser train_predictor_parser() {
  ArgParser p("train-predictor",
              "sdtp train-predictor -m MODEL --data FILE [--data ...] --out PREDICTOR.safetensors [options]",
              "Trains the SDTP token-importance predictors of a model with the ranking loss against gradient\n"
              "saliency (the model itself stays frozen). Training sequences are windows of the --data text and\n"
              "generated long-context tasks that use the text as haystack; held-out sequences (the last 10% of\n"
              "the text, other task seeds) measure ranking agreement. See docs/sdtp.md.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .list("", "--data", "FILE", "training text file")
      .text("-o", "--out", "FILE", "where to write the trained predictor (safetensors)")
      .text("", "--tasks", "LIST", "generated tasks mixed in ('' for none)",
            "passkey,niah_single,niah_multikey,niah_multivalue,vt")
      .number("", "--task-fraction", "F", "share of training sequences that are generated tasks", 0, 1, "0.5")
      .number("", "--instruct-fraction", "F",
              "share of the other sequences that are instruction-style (quote a numbered line of a passage of the "
              "text); the rest are text windows",
              0, 1, "0")
      .text("", "--export-data", "FILE",
            "write the sequences with their answers (safetensors, for scripts/train/sdtp_train.py, the "
            "full-objective trainer) to FILE instead of training; --out is then not needed")
      .integer("", "--sequences", "N", "training sequences", 1, 1 << 20, "160")
      .integer("", "--heldout", "N", "held-out sequences for the agreement metrics", 1, 1 << 20, "16")
      .integer("", "--min-tokens", "N", "shortest training sequence", 64, 1 << 20, "512")
      .integer("", "--max-tokens", "N", "longest training sequence", 64, 1 << 20, "2048")
      .text("", "--prune-layers", "LIST", "pruning layers (one module each)",
            "the paper's schedule: ceil(L/8), then every ceil(3L/32) layers")
      .text("", "--keep-ratio", "LIST", "keep ratio per stage (one value: every stage)", "0.9")
      .integer("", "--keep-first", "N", "first tokens always kept (never ranked)", 0, 1 << 30, "4")
      .number("", "--keep-recent", "F", "share of the prompt's last tokens always kept (stored in the file)", 0,
              0.999999, "0.1")
      .integer("", "--hidden", "N", "hidden units of each module", 1, 1 << 20, "n_embd / 4")
      .integer("", "--steps", "N", "optimiser steps", 1, 1 << 30, "600")
      .integer("", "--batch", "N", "sequences per step", 1, 1 << 20, "4")
      .integer("", "--pairs", "N", "token pairs per sequence and stage", 1, 1 << 24, "1024")
      .number("", "--lr", "X", "Adam learning rate (warm-up, cosine decay to lr/10)", 1e-8, 10, "0.002")
      .number("", "--weight-decay", "X", "AdamW weight decay", 0, 10, "0")
      .number("", "--mse-weight", "X", "weight of the auxiliary pointwise loss", 0, 1000, "0")
      .number("", "--margin", "X", "pairs need saliency magnitudes more than this apart in log space", 0, 100, "0.2")
      .integer("", "--seed", "S", "seed of data sampling, initialisation and pairs", 0, INT64_MAX, "0")
      .text("", "--checkpoint", "FILE", "checkpoint file (the optimiser state goes to FILE.adam)", "OUT.ckpt")
      .integer("", "--checkpoint-every", "N", "steps between checkpoints", 1, 1 << 30, "50")
      .flag("", "--resume", "continue from the checkpoint when it exists")
      .text("", "--cache", "FILE", "saliency of the sequences, reused when the data options match", "OUT.examples")
      .integer("", "--eval-every", "N", "steps between held-out agreement measurements", 1, 1 << 30, "50")
      .integer("-t", "--threads", "N", "CPU threads", 1, 1024, "all hardware threads")
      .epilog(
          "example (the shipped predictor of the default model, see docs/sdtp.md):\n"
          "  scripts/training_text.sh > kjv.txt\n"
          "  sdtp train-predictor -m SmolLM2-135M-Instruct.Q4_1.gguf --data kjv.txt --out smollm2.sdtp.safetensors\n");
  return p;
}

int run_train_predictor(const ParsedArgs& args) {
  if (!args.has("--model")) throw UsageError("train-predictor: missing required option -m/--model PATH");
  if (!args.has("--data")) throw UsageError("train-predictor: missing required option --data FILE");
  const bool export_only = args.has("--export-data");
  if (!args.has("--out") && !export_only) throw UsageError("train-predictor: missing required option -o/--out FILE");
  TrainPredictorOptions o;
  o.n_threads = static_cast<int>(args.integer("--threads", 0));
  for (const std::string& v : args.list("--data")) o.data.push_back(v);
  if (args.has("--tasks")) o.tasks = split_items(args.text("--tasks"), ',');
  o.task_fraction = args.number("--task-fraction", 0.5);
  o.instruct_fraction = args.number("--instruct-fraction", 0);
  if (o.tasks.empty()) o.task_fraction = 0;
  o.sequences = static_cast<int>(args.integer("--sequences", 160));
  o.heldout = static_cast<int>(args.integer("--heldout", 16));
  o.min_tokens = static_cast<int>(args.integer("--min-tokens", 512));
  o.max_tokens = static_cast<int>(args.integer("--max-tokens", 2048));
  o.steps = static_cast<int>(args.integer("--steps", 600));
  o.batch = static_cast<int>(args.integer("--batch", 4));
  o.pairs = static_cast<int>(args.integer("--pairs", 1024));
  o.lr = static_cast<float>(args.number("--lr", 0.002));
  o.weight_decay = static_cast<float>(args.number("--weight-decay", 0));
  o.mse_weight = static_cast<float>(args.number("--mse-weight", 0));
  o.margin = static_cast<float>(args.number("--margin", 0.2));
  o.seed = static_cast<uint64_t>(args.integer("--seed", 0));
  o.n_hidden = static_cast<int>(args.integer("--hidden", 0));
  const std::string out = args.text("--out", args.text("--export-data", ""));
  o.checkpoint = args.text("--checkpoint", out + ".ckpt");
  o.checkpoint_every = static_cast<int>(args.integer("--checkpoint-every", 50));
  o.resume = args.flag("--resume");
  o.cache = args.text("--cache", out + ".examples");
  o.eval_every = static_cast<int>(args.integer("--eval-every", 50));

  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  require_tokenizer(*model, "train-predictor");
  o.plan.method = "sdtp";
  o.plan.keep_first = static_cast<int>(args.integer("--keep-first", PrunePlan::kKeepFirstUnset));
  o.plan.keep_recent = static_cast<float>(args.number("--keep-recent", PrunePlan::kKeepRecentUnset));
  if (args.has("--prune-layers"))
    for (int64_t l : parse_int_list("--prune-layers", args.text("--prune-layers"), INT32_MIN, INT32_MAX))
      o.plan.layers.push_back(static_cast<int>(l));
  if (args.has("--keep-ratio"))
    for (double r : parse_number_list("--keep-ratio", args.text("--keep-ratio"), -HUGE_VAL, HUGE_VAL))
      o.plan.keep_ratios.push_back(static_cast<float>(r));
  complete_prune_plan(model->config, o.plan);  // default layers and ratios, one ratio broadcast, checks
  if (export_only) {
    const std::string path = args.text("--export-data");
    const ExportDataResult e = export_training_data(*model, o, path);
    std::printf("wrote %d training + %d held-out sequences (%lld tokens, %lld of them answers) to %s\n", e.sequences,
                e.heldout, static_cast<long long>(e.tokens), static_cast<long long>(e.answer_tokens), path.c_str());
    return 0;
  }

  const bool tty = stderr_is_tty();
  int last_phase = -1;
  double last_print = -1;
  auto progress = [&](const TrainProgress& p) {
    const int phase = static_cast<int>(p.phase);
    const bool final = p.done == p.total;
    if (!tty && !final && phase == last_phase && p.elapsed_s - last_print < 30) return;
    last_phase = phase;
    last_print = p.elapsed_s;
    char line[256];
    if (p.phase == TrainProgress::Phase::saliency) {
      std::snprintf(line, sizeof line, "saliency [%s] %d/%d sequences  elapsed %s  ETA %s",
                    format_progress_bar(p.done, p.total, 24).c_str(), p.done, p.total,
                    format_duration(p.elapsed_s).c_str(), format_eta(p.elapsed_s, p.done, p.total).c_str());
    } else {
      std::snprintf(line, sizeof line, "train [%s] %d/%d  loss %.4f  held-out top-k %.3f tau %.3f  ETA %s",
                    format_progress_bar(p.done, p.total, 24).c_str(), p.done, p.total, p.loss, p.topk_overlap, p.kendall_tau,
                    format_eta(p.elapsed_s, p.done, p.total).c_str());
    }
    if (tty)
      std::fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
    else
      std::fprintf(stderr, "%s\n", line);
  };

  TrainPredictorResult r = train_predictor(*model, o, progress);
  // Provenance: the options this run was given (model by file name only).
  std::string command = "sdtp train-predictor";
  for (const char* name : {"--model", "--data", "--out", "--tasks", "--task-fraction", "--sequences", "--heldout",
                           "--min-tokens", "--max-tokens", "--prune-layers", "--keep-ratio", "--keep-first",
                           "--keep-recent", "--hidden",
                           "--steps", "--batch", "--pairs", "--lr", "--weight-decay", "--mse-weight", "--margin",
                           "--seed"}) {
    for (std::string v : args.list(name)) {
      if (std::string(name) != "--tasks") {
        const size_t slash = v.find_last_of('/');
        if (slash != std::string::npos) v = v.substr(slash + 1);
      }
      command += std::string(" ") + name + " " + v;
    }
  }
  r.predictor.info["train.command"] = command;
  save_predictor(r.predictor, out);
  std::printf(
      "trained %zu predictor stages (layers", r.predictor.stages.size());
  for (int l : r.predictor.plan.layers) std::printf(" %d", l);
  std::printf(") on %d sequences / %d tokens in %.0f s (+ %.0f s of saliency)\n", o.sequences, r.train_tokens,
              r.train_s, r.saliency_s);
  std::printf("loss %.4f -> %.4f; held-out (%d sequences, %d tokens): top-k overlap %.3f -> %.3f, Kendall tau %.3f -> %.3f\n",
              r.first_loss, r.last_loss, o.heldout, r.heldout_tokens, r.initial_topk_overlap, r.final_topk_overlap,
              r.initial_kendall_tau, r.final_kendall_tau);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace sdtp::cli
