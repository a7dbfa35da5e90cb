// `sdtp chat`: an interactive multi-turn conversation in the terminal. Each turn renders the whole
// history with the model's chat template and streams the reply; /reset, /stats, /help, /quit;
// Ctrl-C stops the current reply, Ctrl-D (end of input) quits.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/generate.h"

namespace sdtp::cli {
namespace {

volatile std::sig_atomic_t g_stop_reply = 0;
void on_sigint(int) { g_stop_reply = 1; }

const char* kChatHelp =
    "commands: /reset (forget the conversation), /stats (what the last reply cost), /help, /quit\n"
    "Ctrl-C stops a reply; Ctrl-D quits.\n";

}  // namespace

ArgParser chat_parser() {
  ArgParser p("chat", "sdtp chat -m MODEL [--system TEXT] [options]",
              "Talks with a model in the terminal: type a message, the reply streams back; the conversation\n"
              "goes through the model's chat template each turn. /reset, /stats, /help, /quit; Ctrl-C stops a\n"
              "reply, Ctrl-D quits. Reads standard input, so `sdtp chat -m M < questions.txt` answers each line.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .text("", "--system", "TEXT", "system message at the start of the conversation")
      .integer("-n", "--max-tokens", "N", "most tokens in one reply", 1, 1 << 20, "512");
  add_sampling_options(p);
  p.integer("-c", "--ctx", "N", "context size in tokens", 1, 1 << 20, "the model's, at most 8192");
  add_device_options(p, /*decodes=*/true);
  add_prune_options(p);
  add_kv_options(p);
  return p;
}

int run_chat(const ParsedArgs& args) {
  GenerateOptions options;
  options.max_tokens = static_cast<int>(args.integer("--max-tokens", 512));
  options.sampling = sampling_from_args(args);
  options.stop = stops_from_args(args, "chat");
  PrunePlan prune = prune_plan_from_args(args);
  const KVPolicyOptions kv = kv_options_from_args(args);
  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  require_tokenizer(*model, "chat");
  resolve_prune_plan(args, *model, prune);
  const Tokenizer& tok = model->tokenizer;
  SessionOptions so = session_options_from_args(args);
  so.prune = prune;
  so.kv = kv;
  Session session(*model, so);

  const bool tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  std::vector<ChatMessage> history;
  if (args.has("--system")) history.push_back({"system", args.text("--system")});
  const size_t n_system = history.size();
  if (tty)
    std::fprintf(stderr, "sdtp chat: %s (%s, context %d tokens). /help for commands.\n", model->path.c_str(),
                 session.device().c_str(), session.n_ctx());

  // SIGINT without SA_RESTART: it stops a reply, and at the prompt it interrupts the read.
  struct sigaction sa {}, previous {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &previous);

  GenerateResult last;
  bool have_last = false;
  std::string line;
  for (;;) {
    if (tty) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    g_stop_reply = 0;
    if (!std::getline(std::cin, line)) {
      if (g_stop_reply && !std::cin.eof()) {  // Ctrl-C at the prompt: a fresh prompt
        std::cin.clear();
        std::fputc('\n', stdout);
        continue;
      }
      break;  // Ctrl-D / end of input
    }
    if (line.empty()) continue;
    if (line[0] == '/') {
      if (line == "/quit" || line == "/exit") break;
      if (line == "/reset") {
        history.resize(n_system);
        std::fputs("(conversation cleared)\n", stdout);
      } else if (line == "/stats") {
        if (!have_last) {
          std::fputs("(no reply yet)\n", stdout);
        } else {
          const double tps = last.decode_ms > 0 ? last.n_decoded * 1000.0 / last.decode_ms : 0.0;
          const ForwardStats& st = last.prefill_stats;
          std::printf("prompt %d tokens in %.1f ms | reply %zu tokens, %.1f tokens/s | %s", last.n_prompt,
                      last.prefill_ms, last.tokens.size(), tps, last.finish_reason.c_str());
          if (prune.enabled())
            std::printf(" | prune %s: %d tokens alive at the last layer, prefill FLOPs %.1f%% fewer",
                        prune.method.c_str(), st.alive_per_layer.empty() ? 0 : st.alive_per_layer.back(),
                        st.dense_flops > 0 ? 100.0 * (1.0 - st.flops / st.dense_flops) : 0.0);
          std::printf(" | KV %.2f MiB (%s)\n", session.kv_bytes() / (1024.0 * 1024.0), session.kv_policy().describe().c_str());
        }
      } else if (line == "/help") {
        std::fputs(kChatHelp, stdout);
      } else {
        std::printf("unknown command %s\n%s", line.c_str(), kChatHelp);
      }
      continue;
    }
    warn_invalid_utf8(line, "the message");
    history.push_back({"user", line});
    const std::vector<int32_t> prompt = tok.encode(tok.apply_chat_template(history, true), true, true);
    if (static_cast<int64_t>(prompt.size()) >= session.n_ctx()) {
      history.pop_back();
      std::fprintf(stderr, "sdtp chat: the conversation (%zu tokens) no longer fits the context of %d tokens; /reset\n",
                   prompt.size(), session.n_ctx());
      continue;
    }
    bool ends_with_newline = true;
    try {
      last = generate(session, prompt, options, [&](std::string_view piece) {
        if (!piece.empty()) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
          ends_with_newline = piece.back() == '\n';
        }
        return g_stop_reply == 0;
      });
    } catch (...) {
      sigaction(SIGINT, &previous, nullptr);
      throw;
    }
    have_last = true;
    if (!ends_with_newline) std::fputc('\n', stdout);
    if (g_stop_reply) std::fputs("(stopped)\n", stdout);
    std::fflush(stdout);
    history.push_back({"assistant", last.text});
  }
  sigaction(SIGINT, &previous, nullptr);
  if (tty) std::fputc('\n', stdout);
  return 0;
}

}  // namespace sdtp::cli
