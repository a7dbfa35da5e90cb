// The evaluation harness: runs long-context tasks (passkey, RULER-style needle-in-a-haystack,
// variable tracking, common words, perplexity with next-token agreement, LongBench jsonl) through
// one run configuration and reports quality next to speed (time to first token, analytical
// prefill FLOPs, tokens alive per layer, KV-cache bytes after compression and at peak), as a table
// and as JSON.
//
// A configuration is one plain struct, RunConfig: later pruning methods and KV policies add
// their fields to it (and to run_config.cpp, which opens sessions and serialises it), so the
// harness and the tasks never change when a method is added.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sdtp/model.h"
#include "sdtp/session.h"

namespace sdtp {

// What is being evaluated. Everything that changes how a prompt is run lives here.
struct RunConfig {
  SessionOptions session;
  std::string label;  // free text shown in tables and plots, e.g. "dense" or "sdtp keep=0.5"

  // True when nothing prunes tokens (session.prune) or evicts cache entries (session.kv): the run
  // is its own dense reference.
  bool is_dense() const;
  // The same session settings with token pruning and the KV policy switched off.
  RunConfig dense_reference() const;
  // JSON object text, with "query_aware": false (a report's "config" adds the harness's value).
  std::string to_json() const;
};

// How the harness runs; filled by `sdtp eval` from flags, or by tests.
struct EvalOptions {
  std::vector<std::string> tasks;                       // task names; "niah" stands for its three variants
  std::vector<int> lengths = {1024, 2048, 4096, 8192};  // target lengths in tokens (prompt + answer)
  int samples = 10;                                     // samples per task and length (ppl: windows)
  uint64_t seed = 42;
  bool chat = true;            // render prompts with the model's chat template when it has one
  std::string haystack_path;   // filler text for niah/cwe; empty = Debian fortunes files
  std::string longbench_path;  // jsonl for the longbench task
  std::string
      longbench_metric;  // qa_f1, rouge_l, classification, retrieval, count, code_sim; empty = by dataset
  std::string ppl_text_path;          // text for the ppl task; empty = the haystack text
  int ppl_tail = 128;                 // ppl: tokens scored at the end of each window
  bool ppl_always_reference = false;  // ppl: run the dense reference even when the config is dense
  // Query-aware compression, as kvpress's benchmark runs it: a sample with a question part
  // (eval::EvalSample::question_start) is prefilled in two calls on one session, the context first
  // (which the KV policy compresses), then the question (appended uncompressed); TTFT covers both.
  // false: one prefill of the whole prompt, the question compressed along with the context.
  bool query_aware = false;
  // Called after every sample with (done, total); the CLI draws its progress bar with it.
  std::function<void(int done, int total)> on_progress;
};

// One sample as run: what went in, what came out, what it cost.
struct SampleRecord {
  std::string task;
  int length = 0;  // target length of the sample
  int index = 0;
  bool skipped = false;
  std::string skip_reason;
  double depth = -1;            // requested needle depth in [0, 1]; -1 when the task has none
  double needle_position = -1;  // first needle's token position / prompt tokens; -1 when none
  int n_prompt = 0;             // prompt tokens
  // Tokens of the second prefill of a query-aware run (the question, appended after the compressed
  // context); 0 when the prompt went in as one prefill.
  int n_question = 0;
  std::vector<int> alive_per_layer;  // tokens alive at each layer during prefill
  double prefill_flops = 0;          // analytical
  double ttft_ms = 0;                // prefill wall time (time to first token), both prefills
  double decode_ms = 0;
  int n_decoded = 0;
  // KV-cache bytes held while the answer is generated: the most the cache held after the prefill
  // (after compression) and after each decode step. Without a KV policy nothing is evicted, so it is
  // the cache's peak, as before KV compression existed.
  size_t kv_bytes = 0;
  // Session::kv_peak_bytes() at the end of the sample: the most it held at any point, including the
  // full prompt's entries during prefill before the policy evicted (>= kv_bytes).
  size_t kv_peak_bytes = 0;
  // (token, layer) pairs computed over the sample's calls (the rows alive summed over layers:
  // pruning skips some, revival computes the skipped ones later) and what dense computes for the
  // same tokens (n_layer per token), so computed_pairs <= dense_pairs; tokens revived from the aux
  // cache (lazyllm; 0 for methods that do not revive) and the most bytes that cache held.
  int64_t computed_pairs = 0, dense_pairs = 0;
  int64_t revived_total = 0;
  size_t aux_bytes = 0;
  std::string metric;  // how it was scored, e.g. "string_match_all", "qa_f1", "ppl"
  std::vector<std::string> expected;
  std::string answer;  // generated text
  double score = 0;    // in [0, 1]; ppl: the window's perplexity
  // ppl only: negative log-likelihood summed over n_scored tokens, agreement with the dense run.
  double nll_sum = 0;
  int n_scored = 0;
  double top1_agreement = -1;
  double kl_mean = -1;
};

// One row per task and length. score: mean over scored samples (ppl: exp(total nll / tokens)).
struct SummaryRow {
  std::string task;
  int length = 0;
  int samples = 0;  // scored samples
  int skipped = 0;
  double score = 0;
  // 95% interval of the mean score (not for ppl): Wilson's score interval when every sample scored
  // 0 or 1 (passkey, niah), else the normal approximation mean ± 1.96·sd/√n, clipped to [0, 1].
  double ci_low = NAN, ci_high = NAN;
  double ttft_ms = 0;          // mean
  double decode_ms = 0;        // mean
  double prefill_flops = 0;    // mean
  double kv_bytes = 0;         // mean of the samples' kv_bytes (the cache after compression)
  double kv_peak_bytes = 0;    // mean of the samples' kv_peak_bytes
  // Means of the samples' computed_pairs, dense_pairs, revived_total and aux_bytes.
  double computed_pairs = 0, dense_pairs = 0, revived_total = 0, aux_bytes = 0;
  double top1_agreement = -1;  // ppl only
  double kl_mean = -1;         // ppl only
};

// Accuracy per needle depth, for passkey and niah.
struct DepthRow {
  std::string task;
  int length = 0;
  double depth = 0;
  int samples = 0;
  double score = 0;
};

struct EvalReport {
  RunConfig config;
  std::string model_path;
  std::string model_name;
  int n_threads = 0;
  uint64_t seed = 0;
  bool chat = true;
  bool query_aware = false;  // EvalOptions::query_aware of the run
  double wall_s = 0;
  std::vector<SummaryRow> summary;
  std::vector<DepthRow> by_depth;
  std::vector<SampleRecord> samples;

  // {"summary": [...], "by_depth": [...], "samples": [...], "config": {...}, "model": ..., ...}
  std::string to_json() const;
};

// Task names the harness knows, after expanding "niah" (for help texts and errors).
std::vector<std::string> eval_task_names();
// Expands aliases and checks every name; throws UsageError naming an unknown task.
std::vector<std::string> expand_eval_tasks(const std::vector<std::string>& names);

// Runs every task at every length. Samples whose prompt does not fit the context are recorded as
// skipped. Throws UsageError for bad options (unknown task, missing files), FormatError for a
// malformed jsonl line (naming file:line).
EvalReport run_eval(const Model& model, const RunConfig& config, const EvalOptions& options);

// The summary as a markdown table, for stdout.
std::string format_summary_table(const EvalReport& report);

// Throws UsageError if `path` cannot be created or written (checked before any work is done);
// leaves no file behind when there was none.
void check_output_writable(const std::string& path);
void write_report(const EvalReport& report, const std::string& path);

// Reads result files and prints, for every (task, length) of the first file, each later file's
// score, TTFT and prefill FLOPs with their deltas against the first. Throws FormatError naming
// the file when it is not an eval report.
std::string compare_report_files(const std::vector<std::string>& paths);

// One line of progress: "eval [=====>    ] 12/80  elapsed 1m05s  ETA 6m08s" (ETA "?" at 0 done).
std::string format_eval_progress(int done, int total, double elapsed_s, int width = 30);
// "42s", "1m05s", "2h03m"; "?" for a negative or non-finite value.
std::string format_duration(double seconds);
// The bar of those lines, `width` characters: "=====>    ".
std::string format_progress_bar(int done, int total, int width);
// Time left if the remaining items cost what the done ones did on average; "?" at 0 done.
std::string format_eta(double elapsed_s, int done, int total);

}  // namespace sdtp
