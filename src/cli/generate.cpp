// `sdtp generate`: loads a model, encodes a prompt (optionally through the chat template), streams the
// generated text to stdout and prints timings to stderr.
#include "sdtp/generate.h"

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/session.h"

namespace sdtp::cli {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) {
  g_interrupted = 1;
}

// After a pruned generation: tokens alive per layer and analytical FLOPs against dense; with
// --compare-dense also the prefill time of a dense session on the same prompt, measured here.
void report_pruning(const Model& model, const SessionOptions& pruned_options, const std::vector<int32_t>& prompt,
                    const GenerateResult& result, bool compare_dense) {
  const ForwardStats& st = result.prefill_stats;
  std::string alive;
  for (size_t l = 0; l < st.alive_per_layer.size(); ++l) {
    if (l == 0 || st.alive_per_layer[l] != st.alive_per_layer[l - 1]) {
      alive += (alive.empty() ? "" : ", ") + std::string("L") + std::to_string(l) + ":" +
               std::to_string(st.alive_per_layer[l]);
    }
  }
  if (!compare_dense) {
    std::fprintf(stderr, "sdtp: prune %s | tokens alive per layer %s | prefill FLOPs %.3g vs dense %.3g (%.1f%% fewer)\n",
                 pruned_options.prune.method.c_str(), alive.c_str(), st.flops, st.dense_flops,
                 100.0 * (1.0 - st.flops / st.dense_flops));
    return;
  }
  SessionOptions dense_options = pruned_options;
  dense_options.prune = PrunePlan{};
  Session dense(model, dense_options);
  dense.prefill(prompt);  // warm-up: first-touch of buffers
  dense.reset();
  const double t0 = now_ms();
  dense.prefill(prompt);
  const double dense_ms = now_ms() - t0;
  std::fprintf(stderr,
               "sdtp: prune %s | tokens alive per layer %s | prefill FLOPs %.3g vs dense %.3g (%.1f%% fewer) | "
               "prefill %.1f ms vs dense %.1f ms (%.2fx)\n",
               pruned_options.prune.method.c_str(), alive.c_str(), st.flops, st.dense_flops,
               100.0 * (1.0 - st.flops / st.dense_flops), result.prefill_ms, dense_ms,
               result.prefill_ms > 0 ? dense_ms / result.prefill_ms : 0.0);
}

// After a generation with a method that revives (lazyllm): what the sequence computed, from the
// last forward call's counts since the prefill.
void report_revival(const PrunePlan& plan, const GenerateResult& result) {
  const ForwardStats& st = result.last_stats;
  const double pct = st.dense_pairs > 0 ? 100.0 * static_cast<double>(st.computed_pairs) / st.dense_pairs : 0.0;
  const std::string budget = plan.aux_budget > 0 ? std::to_string(plan.aux_budget) + " entries" : "no limit";
  std::fprintf(stderr,
               "sdtp: %s revival | %lld tokens revived | (token, layer) pairs computed %lld of %lld dense (%.1f%%) | "
               "aux cache %lld entries, %.2f MiB at the end | %lld dropped by the aux budget (%s)\n",
               plan.method.c_str(), static_cast<long long>(st.revived_total),
               static_cast<long long>(st.computed_pairs), static_cast<long long>(st.dense_pairs), pct,
               static_cast<long long>(st.aux_entries), st.aux_bytes / (1024.0 * 1024.0),
               static_cast<long long>(st.aux_dropped), budget.c_str());
}

}  // namespace

// KV policy report: bytes held against the dense cache of the same tokens, entries per layer, and
// with --show-kept the prompt positions one layer's heads hold.
void report_kv(const Session& session, int show_layer) {
  const ModelConfig& c = session.model().config;
  const int64_t tokens = session.n_past();
  const DeviceMemory m = device_memory(c, session.device());
  const double dense = static_cast<double>(tokens) * m.kv_bytes_per_token;
  const double mib = 1024.0 * 1024.0;
  std::fprintf(stderr, "sdtp: kv %s | %.2f MiB held for %lld tokens (dense %.2f MiB, %.1f%%), peak %.2f MiB\n",
               session.kv_policy().describe().c_str(), session.kv_bytes() / mib, static_cast<long long>(tokens),
               dense / mib, dense > 0 ? 100.0 * session.kv_bytes() / dense : 0.0, session.kv_peak_bytes() / mib);
  std::string per_layer;
  for (int l = 0; l < c.n_layer; ++l) {
    int64_t sum = 0;
    for (int64_t e : session.kv_entries(l)) sum += e;
    per_layer += (l ? " " : "") + std::to_string(sum / c.n_head_kv);
  }
  std::fprintf(stderr, "sdtp: kv entries per head, by layer: %s\n", per_layer.c_str());
  if (show_layer < 0) return;
  for (int g = 0; g < c.n_head_kv; ++g) {
    const std::vector<int32_t> p = session.cached_positions(show_layer, g);
    std::string s;
    for (int32_t v : p) s += (s.empty() ? "" : ",") + std::to_string(v);
    std::printf("layer %d head %d: %zu entries: %s\n", show_layer, g, p.size(), s.c_str());
  }
}

ArgParser generate_parser() {
  ArgParser p("generate", "sdtp generate -m MODEL (-p TEXT | -f FILE) [options]",
              "Generates text from a prompt and streams it to stdout; prompt size, speeds and time go to\n"
              "stderr at the end. Ctrl-C stops generation early.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .text("-p", "--prompt", "TEXT", "prompt text")
      .text("-f", "--file", "FILE", "read the prompt from a file ('-': standard input)")
      .one_of("--prompt", "--file")
      .integer("-n", "--max-tokens", "N", "maximum number of tokens to generate", 1, 1 << 20, "128")
      .flag("", "--chat", "render the prompt as one user message with the model's chat template")
      .text("", "--system", "TEXT", "system message for --chat")
      .requires_option("--system", "--chat");
  add_sampling_options(p);
  p.integer("-c", "--ctx", "N", "context size in tokens", 1, 1 << 20, "the model's, at most 8192")
      .flag("", "--no-stream", "print the text once at the end instead of streaming it")
      ;
  add_device_options(p, /*decodes=*/true);
  add_prune_options(p);
  add_kv_options(p);
  p.integer("", "--show-kept", "LAYER",
            "with --kv-policy: print the prompt positions each KV head of LAYER holds after generation", 0, 1 << 20);
  p.flag("", "--compare-dense",
         "with --prune: also time a dense prefill of the same prompt (after a warm-up) and print the speedup");
  p
      .epilog(
          "examples:\n"
          "  sdtp generate -m model.gguf -p \"Once upon a time\" -n 64\n"
          "  sdtp generate -m model.gguf --chat -p \"What is the capital of France?\" --temp 0\n"
          "  cat prompt.txt | sdtp generate -m model.gguf -f - --stop '\\n\\n'\n");
  return p;
}

int run_generate(const ParsedArgs& args) {
  const std::string prompt_text = args.has("--file")
                                      ? read_text_file(args.text("--file"), "generate: prompt file")
                                      : args.text("--prompt");

  GenerateOptions options;
  options.max_tokens = static_cast<int>(args.integer("--max-tokens", 128));
  options.sampling = sampling_from_args(args);
  options.stop = stops_from_args(args, "generate");
  const SamplingParams& s = options.sampling;

  PrunePlan prune = prune_plan_from_args(args);  // option errors before the model is read
  const KVPolicyOptions kv = kv_options_from_args(args);
  if (args.has("--show-kept") && !kv.enabled()) throw UsageError("generate: --show-kept needs --kv-policy");
  double t_load = now_ms();
  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  resolve_prune_plan(args, *model, prune);
  t_load = now_ms() - t_load;
  require_tokenizer(*model, "generate");
  const Tokenizer& tok = model->tokenizer;

  std::vector<int32_t> prompt;
  if (args.flag("--chat")) {
    std::vector<ChatMessage> messages;
    if (args.has("--system")) messages.push_back({"system", args.text("--system")});
    messages.push_back({"user", prompt_text});
    prompt = tok.encode(tok.apply_chat_template(messages, true), /*add_bos=*/true, /*parse_special=*/true);
  } else {
    prompt = tok.encode(prompt_text, /*add_bos=*/true, /*parse_special=*/true);
  }
  warn_invalid_utf8(prompt_text, "the prompt");
  if (prompt.empty()) throw UsageError("generate: the prompt is empty (0 tokens)");

  SessionOptions session_options = session_options_from_args(args);
  session_options.prune = prune;
  session_options.kv = kv;
  if (args.has("--show-kept") && args.integer("--show-kept") >= model->config.n_layer)
    throw UsageError("generate: --show-kept " + std::to_string(args.integer("--show-kept")) + ": the model has " +
                     std::to_string(model->config.n_layer) + " layers");
  Session session(*model, session_options);

  const bool stream = !args.flag("--no-stream");
  bool ends_with_newline = true;
  g_interrupted = 0;
  auto previous = std::signal(SIGINT, on_sigint);
  auto on_text = [&](std::string_view piece) {
    if (stream && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      ends_with_newline = piece.back() == '\n';
    }
    return g_interrupted == 0;
  };
  GenerateResult result;
  try {
    result = generate(session, prompt, options, on_text);
  } catch (...) {
    std::signal(SIGINT, previous);
    throw;
  }
  std::signal(SIGINT, previous);

  if (!stream) {
    std::fwrite(result.text.data(), 1, result.text.size(), stdout);
    ends_with_newline = result.text.empty() || result.text.back() == '\n';
  }
  if (!ends_with_newline) std::fputc('\n', stdout);
  std::fflush(stdout);

  auto rate = [](double n, double ms) { return ms > 0 ? n * 1000.0 / ms : 0.0; };
  std::fprintf(stderr,
               "sdtp: load %.0f ms | prompt %d tokens, %.1f ms, %.1f tokens/s | generated %zu tokens, "
               "decode %.1f ms, %.1f tokens/s | total %.1f ms | %s%s | seed %llu\n",
               t_load, result.n_prompt, result.prefill_ms, rate(result.n_prompt, result.prefill_ms),
               result.tokens.size(), result.decode_ms, rate(result.n_decoded, result.decode_ms),
               result.prefill_ms + result.decode_ms, result.finish_reason.c_str(),
               g_interrupted ? " (interrupted)" : "", static_cast<unsigned long long>(s.seed));
  if (session_options.prune.enabled()) report_pruning(*model, session_options, prompt, result, args.flag("--compare-dense"));
  if (session_options.prune.enabled() && find_prune_method(session_options.prune.method).revives)
    report_revival(session_options.prune, result);
  if (kv.enabled()) report_kv(session, args.has("--show-kept") ? static_cast<int>(args.integer("--show-kept")) : -1);
  return 0;
}

}  // namespace sdtp::cli
