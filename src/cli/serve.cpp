// `sdtp serve`: the OpenAI-compatible HTTP server (src/server/) on one model, until SIGINT or SIGTERM.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/commands.h"
#include "sdtp/error.h"
#include "sdtp/predictor.h"

#if SDTP_SERVER
#include <pthread.h>

#include <atomic>
#include <ctime>

#include "server/server.h"
#endif

namespace sdtp::cli {

ArgParser serve_parser() {
  ArgParser p("serve", "sdtp serve -m MODEL [--host ADDR] [--port N] [--parallel N] [options]",
              "Serves the model over HTTP with OpenAI's API: POST /v1/chat/completions and /v1/completions\n"
              "(\"stream\": true for server-sent events), GET /v1/models, /health and /metrics (Prometheus).\n"
              "A request may override the pruning and KV options with \"sdtp\": {\"prune\": ..., \"keep_ratio\": ...,\n"
              "\"kv_policy\": ..., \"kv_budget\": ...}. SIGINT or SIGTERM stops accepting requests, lets running\n"
              "ones finish (10 s at most) and exits. docs/server.md has the details.");
  p.text("-m", "--model", "PATH", "model file (.gguf) or Hugging Face model folder")
      .required("--model")
      .text("", "--host", "ADDR", "address to listen on (0.0.0.0: every interface)", "127.0.0.1")
      .integer("", "--port", "N", "TCP port; 0 picks a free one (printed)", 0, 65535, "8080")
      .integer("", "--parallel", "N",
               "sequences served at once (one session each; CPU threads are split among them; 1 on a GPU for now)",
               1, 1024, "1")
      .integer("", "--queue", "N", "requests that may wait for a free sequence; more get 503", 0, 1 << 20, "64")
      .text("", "--api-key", "KEY", "require 'Authorization: Bearer KEY' on /v1/* (default: $SDTP_API_KEY, else none)")
      .text("", "--alias", "NAME", "the model id /v1/models lists and requests name", "the file name without .gguf")
      .integer("-n", "--max-tokens", "N", "a request's max_tokens when it gives none", 1, 1 << 20,
               "up to the context")
      .integer("", "--max-body", "BYTES", "largest request body accepted (413 beyond)", 1024, 1ll << 32, "8388608")
      .integer("-c", "--ctx", "N", "context size in tokens of each sequence", 1, 1 << 20, "the model's, at most 8192")
      .flag("", "--quiet", "no line per request on stderr");
  add_device_options(p, /*decodes=*/true);
  add_prune_options(p);
  add_kv_options(p);
  p.epilog(
      "examples:\n"
      "  sdtp serve -m model.gguf --port 8080\n"
      "  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 32}'\n"
      "  sdtp serve -m model.gguf --device cuda --parallel 8 --prune sdtp --kv-policy vatp --kv-budget 0.25\n");
  return p;
}

#if SDTP_SERVER

int run_serve(const ParsedArgs& args) {
  // SIGINT / SIGTERM go to a watcher thread, blocked in every other thread: blocked here first, so
  // that every thread made later (OpenMP's pool while the model loads, CUDA's, the server's)
  // inherits the mask; a thread that did not would take the signal and end the process at once.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // The watcher runs from the start: a signal before the server exists (a long model load) exits at
  // once; after, it shuts the server down gracefully.
  std::atomic<server::Server*> running{nullptr};
  std::atomic<bool> finished{false};
  std::thread watcher([&] {
    const timespec tick{0, 200 * 1000 * 1000};
    while (!finished) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
      if (sig != SIGINT && sig != SIGTERM) continue;
      const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
      server::Server* srv = running.load();
      if (!srv) {
        std::fprintf(stderr, "sdtp serve: %s before the server started: exiting\n", name);
        std::_Exit(130);
      }
      std::fprintf(stderr, "sdtp serve: %s: finishing running requests, then exiting\n", name);
      srv->shutdown();
      return;
    }
  });
  struct JoinAtExit {  // on every way out, errors included
    std::atomic<bool>& finished;
    std::thread& t;
    ~JoinAtExit() {
      finished = true;
      t.join();
    }
  } join_at_exit{finished, watcher};

  server::ServerOptions o;
  o.host = args.text("--host", "127.0.0.1");
  o.port = static_cast<int>(args.integer("--port", 8080));
  o.parallel = static_cast<int>(args.integer("--parallel", 1));
  o.max_queue = static_cast<int>(args.integer("--queue", 64));
  if (args.has("--api-key")) o.api_key = args.text("--api-key");
  else if (const char* k = std::getenv("SDTP_API_KEY")) o.api_key = k;
  if (args.has("--alias")) o.model_id = args.text("--alias");
  o.max_tokens = static_cast<int>(args.integer("--max-tokens", -1));
  o.max_body_bytes = static_cast<size_t>(args.integer("--max-body", 8 << 20));
  o.log_requests = !args.flag("--quiet");

  PrunePlan plan = prune_plan_from_args(args);
  o.session = session_options_from_args(args);
  o.session.kv = kv_options_from_args(args);
  // The sessions of one GPU share one CUDA backend (make_backend: one per device, its stream,
  // scratch buffers and decode graphs), which is not safe to drive from several threads: on the
  // H200, --parallel 2 and 16 aborted with heap corruption. One slot per GPU until each session has
  // its own backend state (or continuous batching runs them as one).
  if (o.session.device != "cpu" && o.parallel > 1)
    throw UsageError("serve: --parallel " + std::to_string(o.parallel) + " on " + o.session.device +
                     ": one sequence slot per GPU for now (its sessions share one backend; docs/server.md)");

  // CPU threads split among the sequences unless given.
  if (o.session.device == "cpu" && !args.has("--threads") && o.parallel > 1)
    o.session.n_threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / o.parallel);

  std::unique_ptr<Model> model = load_model_checked(args.text("--model"));
  require_tokenizer(*model, "serve");
  resolve_prune_plan(args, *model, plan);
  if (plan.enabled() && find_prune_method(plan.method).needs_saliency_oracle)
    throw UsageError("serve: --prune " + plan.method + " is an analysis oracle, not served");
  o.plan = plan;
  o.predictor = plan.predictor ? plan.predictor : shipped_predictor(*model);

  server::Server srv(*model, o);
  const int port = srv.bind();
  std::fprintf(stderr, "sdtp serve: %s on http://%s:%d (%d parallel, device %s, prune %s, kv %s)%s\n",
               model->path.c_str(), o.host.c_str(), port, o.parallel, o.session.device.c_str(), plan.method.c_str(),
               o.session.kv.describe().c_str(), o.api_key.empty() ? "" : ", API key required");
  std::fflush(stderr);
  running = &srv;
  srv.run();
  std::fprintf(stderr, "sdtp serve: stopped\n");
  return 0;
}

#else

int run_serve(const ParsedArgs&) {
  throw UsageError("serve: this build of sdtp has no HTTP server (install libcpp-httplib-dev and rebuild)");
}

#endif

}  // namespace sdtp::cli
