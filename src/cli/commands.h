// The subcommands of `sdtp` and the helpers they share. Each subcommand is one file (generate.cpp,
// info.cpp, logits.cpp, tokenize.cpp, bench.cpp) with a parser declaration and a run function;
// main.cpp dispatches. Only the public API in include/sdtp/ is used here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli/args.h"
#include "sdtp/generate.h"
#include "sdtp/model.h"
#include "sdtp/prune.h"
#include "sdtp/session.h"

namespace sdtp::cli {

inline constexpr const char* kVersion = "0.1.0";  // keep in line with project(VERSION) in CMakeLists.txt

struct Subcommand {
  const char* name;
  const char* summary;
  ArgParser (*parser)();
  int (*run)(const ParsedArgs&);
};

ArgParser generate_parser();
int run_generate(const ParsedArgs& args);
ArgParser info_parser();
int run_info(const ParsedArgs& args);
ArgParser logits_parser();
int run_logits(const ParsedArgs& args);
ArgParser tokenize_parser();
int run_tokenize(const ParsedArgs& args);
ArgParser bench_parser();
int run_bench(const ParsedArgs& args);
ArgParser eval_parser();
int run_eval(const ParsedArgs& args);
ArgParser train_predictor_parser();
int run_train_predictor(const ParsedArgs& args);
ArgParser serve_parser();
int run_serve(const ParsedArgs& args);
ArgParser chat_parser();
int run_chat(const ParsedArgs& args);

const std::vector<Subcommand>& subcommands();

// --prune, --predictor, --prune-schedule, --prune-layers, --keep-ratio, --keep-first, --keep-recent
// (prune_args.cpp), shared by the
// subcommands that run prefills, and the PrunePlan they describe: prune_plan_from_args checks the
// options, loads the predictor and takes its defaults before the model is read; resolve_prune_plan
// checks the predictor against the model, gives the plan the saliency oracle where its method needs
// one, and completes it with the model's defaults (complete_prune_plan, sdtp/prune.h).
void add_prune_options(ArgParser& p);
// `--prune sdtp` without --predictor: resolve_prune_plan takes the predictor shipped for the model
// ($SDTP_PREDICTORS, predictors/ beside the build or install folder) and says which; random
// weights get none there (bench makes a random one).
PrunePlan prune_plan_from_args(const ParsedArgs& args);
void resolve_prune_plan(const ParsedArgs& args, const Model& model, PrunePlan& plan);
// The predictor shipped for the model (as --prune sdtp without --predictor finds it), or null.
std::shared_ptr<const Predictor> shipped_predictor(const Model& model);

// --kv-policy, --kv-budget, --kv-sinks, --kv-window, --kv-interval, --kv-adaptive,
// --kv-score-window, --kv-seed (kv_args.cpp): KV-cache compression, checked by
// kv_options_from_args (UsageError) before the model is read.
void add_kv_options(ArgParser& p);
KVPolicyOptions kv_options_from_args(const ParsedArgs& args);

// --device and -t/--threads, and --f32-decode where the command decodes: the options of every
// subcommand that runs the model; session_options_from_args reads them (and -c/--ctx when the
// parser has it) into SessionOptions.
void add_device_options(ArgParser& p, bool decodes);
SessionOptions session_options_from_args(const ParsedArgs& args);

// --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --seed, --stop: sampling
// options of the commands that generate; sampling_from_args validates them (a random seed when
// none is given), stops_from_args unescapes --stop (UsageError naming `command` for an empty one).
void add_sampling_options(ArgParser& p);
SamplingParams sampling_from_args(const ParsedArgs& args);
std::vector<std::string> stops_from_args(const ParsedArgs& args, const std::string& command);
// A warning on stderr when `text` (a prompt, named by `what`) is not valid UTF-8.
void warn_invalid_utf8(std::string_view text, const std::string& what);

// Loads a model after checking that the path exists; a progress bar is drawn when stderr is a TTY.
// keep_quantized: LoadOptions::keep_quantized (false: float32 copies of every weight, bench's --f32-weights).
std::unique_ptr<Model> load_model_checked(const std::string& path, bool keep_quantized = true);
// Throws UsageError naming `command` when the model has no tokenizer (e.g. a bare HF folder).
void require_tokenizer(const Model& model, const std::string& command);
// The text of a file, or of standard input for "-" (at most 64 MiB); UsageError naming `what`.
std::string read_text_file(const std::string& path, const std::string& what);
// --stop's escapes: \n, \t, \r and \\ stand for newline, tab, carriage return and a backslash;
// any other backslash is kept as written.
std::string unescape_stop(const std::string& s);
bool stderr_is_tty();
double now_ms();  // monotonic clock
// Shortest text that reads back as the same float (%.9g); "null" for NaN/inf, which JSON lacks.
std::string json_float(float v);
std::string json_int_array(const std::vector<int32_t>& ids);

}  // namespace sdtp::cli
