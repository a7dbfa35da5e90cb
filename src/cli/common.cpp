// Helpers shared by the `sdtp` subcommands: checked model loading, prompt files, clocks, JSON numbers.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli/commands.h"
#include "sdtp/error.h"

namespace sdtp::cli {

const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> all = {
      {"generate", "generate text from a prompt, streamed to stdout", generate_parser, run_generate},
      {"chat", "talk with a model in the terminal (multi-turn, streamed)", chat_parser, run_chat},
      {"serve", "serve a model over HTTP with OpenAI's API (chat, completions, streaming)", serve_parser, run_serve},
      {"info", "print a model's configuration, tokenizer and weight types", info_parser, run_info},
      {"logits", "print the logits of a token sequence as JSON", logits_parser, run_logits},
      {"tokenize", "print the token ids of a text as a JSON array", tokenize_parser, run_tokenize},
      {"bench", "measure prefill and decode speed (like llama-bench)", bench_parser, run_bench},
      {"eval", "score long-context tasks: quality next to speed, as JSON", eval_parser, run_eval},
      {"train-predictor", "train the SDTP token-importance predictors of a model", train_predictor_parser,
       run_train_predictor},
  };
  return all;
}

void add_device_options(ArgParser& p, bool decodes) {
  p.text("", "--device", "DEV", "where the model runs: cpu, cuda (GPU 0) or cuda:N", "cpu")
      .integer("-t", "--threads", "N", "CPU threads (with --device cpu)", 1, 1024, "all hardware threads")
      .text("", "--kv-type", "T", "KV cache element type: auto (f16 on the CPU, bf16 on CUDA), f32, f16 or bf16",
            "auto");
  if (decodes)
    p.flag("", "--f32-decode",
           "CPU: decode in float32 (weights dequantised on the fly) instead of the 8-bit kernels (slower, exact)");
}

void add_sampling_options(ArgParser& p) {
  p.number("", "--temp", "T", "sampling temperature; 0 = greedy", 0, 100, "0.8")
      .integer("", "--top-k", "K", "keep the K most likely tokens; 0 = off", 0, 1 << 30, "40")
      .number("", "--top-p", "P", "nucleus sampling threshold; 1 = off", 0, 1, "0.95")
      .number("", "--min-p", "P", "drop tokens below P times the top probability; 0 = off", 0, 1, "0")
      .number("", "--repeat-penalty", "R", "penalty for recently seen tokens; 1 = off", 0.01, 100, "1.0")
      .integer("", "--repeat-last-n", "N", "how many recent tokens the penalty looks at", 0, 1 << 20, "64")
      .integer("", "--seed", "S", "random seed", 0, INT64_MAX, "random, printed at the end")
      .list("", "--stop", "STR", "stop before this string (\\n, \\t, \\r and \\\\ are newline, tab, return, backslash)");
}

SamplingParams sampling_from_args(const ParsedArgs& args) {
  SamplingParams s;
  s.temperature = static_cast<float>(args.number("--temp", 0.8));
  s.top_k = static_cast<int>(args.integer("--top-k", 40));
  s.top_p = static_cast<float>(args.number("--top-p", 0.95));
  s.min_p = static_cast<float>(args.number("--min-p", 0.0));
  s.repeat_penalty = static_cast<float>(args.number("--repeat-penalty", 1.0));
  s.repeat_last_n = static_cast<int>(args.integer("--repeat-last-n", 64));
  s.seed = args.has("--seed")
               ? static_cast<uint64_t>(args.integer("--seed"))
               : (static_cast<uint64_t>(std::random_device{}()) << 20) ^ std::random_device{}();
  s.validate();
  return s;
}

std::vector<std::string> stops_from_args(const ParsedArgs& args, const std::string& command) {
  std::vector<std::string> stops;
  for (const std::string& stop : args.list("--stop")) {
    if (stop.empty()) throw UsageError(command + ": --stop needs a non-empty string");
    stops.push_back(unescape_stop(stop));
  }
  return stops;
}

void warn_invalid_utf8(std::string_view text, const std::string& what) {
  const size_t at = first_invalid_utf8(text);
  if (at == std::string_view::npos) return;
  std::fprintf(stderr, "sdtp: warning: %s is not valid UTF-8 (byte 0x%02x at offset %zu); its bytes are encoded as they are\n",
               what.c_str(), static_cast<unsigned char>(text[at]), at);
}

SessionOptions session_options_from_args(const ParsedArgs& args) {
  SessionOptions o;
  o.device = args.text("--device", "cpu");
  if (o.device != "cpu" && (args.has("--threads") || args.has("--f32-decode")))
    throw UsageError("--threads and --f32-decode are CPU options (not with --device " + o.device + ")");
  o.n_threads = static_cast<int>(args.integer("--threads", 0));
  o.decode_q8 = !args.flag("--f32-decode");
  o.kv_type = args.text("--kv-type", "auto");
  o.n_ctx = static_cast<int>(args.integer("--ctx", 0));
  return o;
}

std::unique_ptr<Model> load_model_checked(const std::string& path, bool keep_quantized) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  // A symlink loop or a folder we may not enter is not "no such file": say what the system says.
  if (ec && ec != std::errc::no_such_file_or_directory) throw Error("model '" + path + "': " + ec.message());
  if (ec || !std::filesystem::exists(status)) throw Error("model '" + path + "': no such file or directory");
  if (!std::filesystem::is_regular_file(status) && !std::filesystem::is_directory(status))
    throw Error("model '" + path + "': not a regular file or a folder");
  LoadOptions options;
  options.progress = stderr_is_tty();
  options.keep_quantized = keep_quantized;
  return load_model(path, options);
}

void require_tokenizer(const Model& model, const std::string& command) {
  if (model.tokenizer.n_vocab() <= 0)
    throw UsageError(command + ": model '" + model.path + "' has no tokenizer" +
                     (command == "logits" ? "; pass token ids with --ids" : ""));
}

std::string read_text_file(const std::string& path, const std::string& what) {
  constexpr uintmax_t kMaxBytes = 64u << 20;
  const auto too_big = [&](uintmax_t size) {
    return UsageError(what + " '" + path + "' is " + std::to_string(size) + " bytes, more than the limit of " +
                      std::to_string(kMaxBytes));
  };
  if (path == "-") {  // standard input, as many tools read it
    std::string text;
    char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, stdin)) > 0) {
      text.append(buf, got);
      if (text.size() > kMaxBytes) throw too_big(text.size());
    }
    if (std::ferror(stdin)) throw UsageError(what + ": cannot read standard input: " + std::strerror(errno));
    return text;
  }
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) throw UsageError(what + " '" + path + "': " + ec.message());
  if (ec || !std::filesystem::exists(status)) throw UsageError(what + " '" + path + "': no such file");
  if (!std::filesystem::is_regular_file(status)) throw UsageError(what + " '" + path + "': not a regular file");
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw UsageError(what + " '" + path + "': " + ec.message());
  if (size > kMaxBytes) throw too_big(size);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(what + " '" + path + "': cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string unescape_stop(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    switch (s[++i]) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      default: out += '\\', out += s[i]; break;  // not an escape: kept as written
    }
  }
  return out;
}

bool stderr_is_tty() {
  return isatty(STDERR_FILENO) == 1;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string json_float(float v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

std::string json_int_array(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

}  // namespace sdtp::cli
