// `sdtp eval`: parses flags into RunConfig and EvalOptions, runs the evaluation harness
// (include/sdtp/eval.h), prints the summary table and writes the JSON report; `--compare` prints
// the quality and speed deltas of result files against the first.
#include "sdtp/eval.h"

#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "sdtp/error.h"

namespace sdtp::cli {
namespace {

// "sdtp", "vatp 25%", "sdtp + snapkv 512 entries", or "dense".
std::string default_label(const SessionOptions& o) {
  std::string label;
  if (find_prune_method(o.prune.method).prunes()) label = o.prune.method;
  if (o.kv.enabled()) {
    char kv[96];
    if (o.kv.budget <= 1)
      std::snprintf(kv, sizeof kv, "%s %g%%", o.kv.policy.c_str(), o.kv.budget * 100);
    else
      std::snprintf(kv, sizeof kv, "%s %.0f entries", o.kv.policy.c_str(), o.kv.budget);
    label += (label.empty() ? "" : " + ") + std::string(kv);
  }
  return label.empty() ? "dense" : label;
}

}  // namespace

ArgParser eval_parser() {
  ArgParser p(
      "eval",
      "sdtp eval -m MODEL --task TASK [--task ...] [--lengths LIST] [--samples N] [--out FILE] [options]\n"
      "       sdtp eval --compare A.json B.json [...]",
      "Scores one configuration on long-context tasks and reports quality next to speed (time to\n"
      "first token, analytical prefill FLOPs, KV-cache bytes). Tasks: passkey, niah_single,\n"
      "niah_multikey, niah_multivalue, vt, cwe, mdqa, ppl, longbench; 'niah' runs the three niah\n"
      "variants, 'ruler' the niah variants, vt and cwe. Prompts are grown to each target length in\n"
      "tokens "
      "(prompt + answer); a length over the context is an error. See docs/evaluation.md.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .list("", "--task", "NAME", "task to run (comma-separated lists allowed)")
      .text("", "--lengths", "LIST", "comma-separated target lengths in tokens", "1024,2048,4096,8192")
      .integer("", "--samples", "N", "samples per task and length (ppl: windows; longbench: first N records)",
               1, 100000, "10")
      .integer("", "--seed", "S", "seed of the task generators", 0, INT64_MAX, "42")
      .text("-o", "--out", "FILE", "write the JSON report here")
      .text("", "--haystack", "FILE", "filler text for niah/cwe/mdqa (and ppl)", "Debian fortunes-min files")
      .text("", "--longbench", "FILE", "LongBench-format jsonl for the longbench task")
      .text("", "--longbench-metric", "NAME", "qa_f1, rouge_l, classification, retrieval, count or code_sim",
            "LongBench's metric for each dataset")
      .text("", "--ppl-text", "FILE", "text for the ppl task", "the haystack text")
      .integer("", "--ppl-tail", "N", "ppl: tokens scored at the end of each window", 1, 1 << 20, "128")
      .flag("", "--ppl-reference", "ppl: run the dense reference even when the configuration is dense")
      .flag("", "--no-chat", "do not use the model's chat template")
      .flag("", "--query-aware",
            "prefill each prompt's context first (compressed by --kv-policy), then its question (kept)")
      .text("", "--label", "TEXT", "name of this configuration in reports",
            "the pruning method and KV policy, else dense")
      .integer("-c", "--ctx", "N", "context size in tokens", 1, 1 << 20, "the model's, at most 8192")
      .list("", "--compare", "FILE", "result files to compare (two or more; the first is the baseline)", true)
      .conflicts("--compare", "--model")
      .epilog(
          "examples:\n"
          "  sdtp eval -m model.gguf --task passkey --task niah --lengths 1024,2048 --samples 5 --out "
          "dense.json\n"
          "  sdtp eval -m model.gguf --task ppl --ppl-text book.txt --lengths 2048 --samples 4\n"
          "  sdtp eval -m model.gguf --task niah --lengths 4096 --kv-policy snapkv --kv-budget 0.25 "
          "--query-aware\n"
          "  sdtp eval --compare dense.json pruned.json\n");
  add_device_options(p, /*decodes=*/true);
  add_prune_options(p);
  add_kv_options(p);
  return p;
}

int run_eval(const ParsedArgs& args) {
  if (args.has("--compare")) {
    // --compare A --compare B, or --compare A,B
    std::vector<std::string> files;
    for (const auto& v : args.list("--compare")) {
      size_t start = 0;
      for (size_t i = 0; i <= v.size(); ++i)
        if (i == v.size() || v[i] == ',') {
          if (i > start) files.push_back(v.substr(start, i - start));
          start = i + 1;
        }
    }
    std::fputs(compare_report_files(files).c_str(), stdout);
    return 0;
  }
  if (!args.has("--model")) throw UsageError("eval: missing required option -m/--model PATH");
  if (!args.has("--task")) throw UsageError("eval: missing required option --task NAME");

  EvalOptions options;
  options.tasks = expand_eval_tasks(args.list("--task"));  // unknown task: fail before loading anything
  options.lengths.clear();
  for (int64_t L :
       parse_int_list("eval: --lengths", args.text("--lengths", "1024,2048,4096,8192"), 16, 1 << 20))
    options.lengths.push_back(static_cast<int>(L));
  options.samples = static_cast<int>(args.integer("--samples", 10));
  options.seed = static_cast<uint64_t>(args.integer("--seed", 42));
  options.chat = !args.flag("--no-chat");
  options.haystack_path = args.text("--haystack");
  options.longbench_path = args.text("--longbench");
  options.longbench_metric = args.text("--longbench-metric");
  options.ppl_text_path = args.text("--ppl-text");
  options.ppl_tail = static_cast<int>(args.integer("--ppl-tail", 128));
  options.ppl_always_reference = args.flag("--ppl-reference");
  const std::string out_path = args.text("--out");
  if (args.has("--out")) check_output_writable(out_path);

  RunConfig config;
  config.session = session_options_from_args(args);
  config.session.prune = prune_plan_from_args(args);
  config.session.kv = kv_options_from_args(args);
  options.query_aware = args.flag("--query-aware");
  if (options.query_aware && !config.session.kv.enabled())
    throw UsageError("eval: --query-aware needs --kv-policy (other than none)");
  config.label = args.text("--label", default_label(config.session));

  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  resolve_prune_plan(args, *model, config.session.prune);
  require_tokenizer(*model, "eval");
  // A length over the context would skip every one of its samples: say so instead.
  const int n_ctx = session_context(model->config, config.session);
  for (int L : options.lengths)
    if (L > n_ctx)
      throw UsageError("eval: --lengths " + std::to_string(L) + " is over the context of " + std::to_string(n_ctx) +
                       " tokens (raise it with --ctx N)");

  // Progress on stderr: a bar redrawn in place on a terminal, else one line every 30 s (logs).
  const bool tty = stderr_is_tty();
  const double t0 = now_ms();
  double last_line = t0;
  options.on_progress = [&](int done, int total) {
    const double now = now_ms();
    if (tty) {
      std::fprintf(stderr, "\r\033[K%s", format_eval_progress(done, total, (now - t0) / 1000.0).c_str());
    } else if (now - last_line >= 30000.0 && done < total) {
      last_line = now;
      std::fprintf(stderr, "%s\n", format_eval_progress(done, total, (now - t0) / 1000.0).c_str());
    }
    std::fflush(stderr);
  };
  EvalReport report = sdtp::run_eval(*model, config, options);
  if (tty) std::fprintf(stderr, "\r\033[K");

  std::fputs(format_summary_table(report).c_str(), stdout);
  if (args.has("--out")) {
    write_report(report, out_path);
    std::fprintf(stderr, "eval: wrote %s (%zu samples, %.1f s)\n", out_path.c_str(), report.samples.size(),
                 report.wall_s);
  }
  return 0;
}

}  // namespace sdtp::cli
