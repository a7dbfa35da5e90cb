// `sdtp serve`: an OpenAI-compatible HTTP server over the public API (cpp-httplib, nlohmann-json).
//   POST /v1/chat/completions, POST /v1/completions (stream: server-sent events ending with
//   "data: [DONE]"), GET /v1/models, GET /health, GET /metrics (Prometheus text).
// Requests are validated at the door (api.h) and answered with OpenAI's error JSON: 400 bad field,
// 401 wrong or missing key, 404 unknown route or model, 413 body too large, 503 queue full or
// shutting down. Generation runs on the scheduler's sequence slots (scheduler.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>

#include "sdtp/model.h"
#include "sdtp/predictor.h"
#include "sdtp/prune.h"
#include "sdtp/session.h"
#include "server/metrics.h"

namespace sdtp::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (Server::port() says which)
  int parallel = 1;                // sequence slots (sessions)
  int max_queue = 64;              // requests that may wait for a slot; more get 503
  std::string api_key;             // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string model_id;            // what /v1/models lists and "model" must name
  size_t max_body_bytes = 8u << 20;
  int max_tokens = -1;             // a request's default max_tokens; -1: up to the context
  double shutdown_grace_s = 10;    // running requests get this long to finish at shutdown
  bool log_requests = true;        // one line per request on stderr
  SessionOptions session;          // device, threads, context, KV policy (session.kv) of every slot
  PrunePlan plan;                  // the default plan (session.prune is ignored)
  std::shared_ptr<const Predictor> predictor;  // what requests asking for "sdtp" use; may be null
};

class Server {
 public:
  // Loads nothing: `model` must outlive the server. Makes the sessions (throws as Session does).
  Server(const Model& model, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; UsageError naming them when it cannot. Returns the port bound.
  int bind();
  // Serves until shutdown() (from another thread or a signal watcher). Call after bind().
  void run();
  // Stops accepting (new requests get 503), lets running ones finish within the grace period,
  // cancels the rest, then ends run(). Thread-safe, idempotent.
  void shutdown();
  int port() const;
  Metrics& metrics();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdtp::server
