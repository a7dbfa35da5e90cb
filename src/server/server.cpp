// The HTTP side of `sdtp serve` (server.h): routes, authentication, streaming, shutdown.
#include "server/server.h"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "sdtp/error.h"
#include "server/api.h"
#include "server/scheduler.h"

namespace sdtp::server {

using nlohmann::json;

namespace {

const char* status_text(int status) {
  switch (status) {
    case 400: return "bad request";
    case 401: return "unauthorized";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 413: return "the request body is too large";
    case 414: return "the request URI is too long";
    case 503: return "the server is busy";
    default: return status >= 500 ? "server error" : "request error";
  }
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The events of one streamed response, passed from the worker to the HTTP thread.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> events;
  bool done = false;

  void push(const json& j) { push_raw("data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"); }
  void push_raw(std::string s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(std::move(s));
    }
    cv.notify_one();
  }
  void finish() {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_one();
  }
};

}  // namespace

struct Server::Impl {
  const Model& model;
  ServerOptions opt;
  Metrics metrics;
  std::unique_ptr<Scheduler> scheduler;
  httplib::Server http;
  int bound_port = -1;
  socket_t listen_socket = INVALID_SOCKET;
  std::atomic<bool> draining{false};
  std::atomic<uint64_t> next_id{1};
  std::once_flag shutdown_once;

  Impl(const Model& m, ServerOptions o) : model(m), opt(std::move(o)) {
    if (opt.model_id.empty()) opt.model_id = model_id_from_path(model.path);
    opt.session.prune = PrunePlan{};  // plans travel with each job
    scheduler = std::make_unique<Scheduler>(model, opt.session, opt.parallel, opt.max_queue, metrics);
    setup();
  }

  void reply_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    if (e.status == 503) res.set_header("Retry-After", "1");
    res.set_content(error_body(e).dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
  }

  // The prompt ids of a request, checked against the context; the job's options from it.
  std::shared_ptr<Job> make_job(const CompletionRequest& r) {
    check_model_field(r, opt.model_id);
    const Tokenizer& tok = model.tokenizer;
    const std::string text = r.chat ? tok.apply_chat_template(r.messages, true) : r.prompt;
    const std::vector<int32_t> prompt = tok.encode(text, /*add_bos=*/true, /*parse_special=*/true);
    if (prompt.empty()) throw ApiError(400, "the prompt is empty (0 tokens)", r.chat ? "messages" : "prompt");
    const int n_ctx = scheduler->n_ctx();
    if (static_cast<int64_t>(prompt.size()) >= n_ctx)
      throw ApiError(400,
                     "the prompt has " + std::to_string(prompt.size()) + " tokens; this server's context is " +
                         std::to_string(n_ctx) + " tokens",
                     r.chat ? "messages" : "prompt", "context_length_exceeded");
    auto job = std::make_shared<Job>();
    job->prompt = prompt;
    job->gen = r.gen;
    const int room = n_ctx - static_cast<int>(prompt.size());
    if (!r.max_tokens_given) {
      job->gen.max_tokens = opt.max_tokens >= 0 ? std::min(opt.max_tokens, room) : room;
    } else if (r.gen.max_tokens > n_ctx) {
      throw ApiError(400,
                     "max_tokens " + std::to_string(r.gen.max_tokens) + " exceeds this server's context of " +
                         std::to_string(n_ctx) + " tokens",
                     "max_tokens", "context_length_exceeded");
    }
    job->gen.logprobs = r.logprobs;
    try {
      job->gen.sampling.validate();
    } catch (const UsageError& e) {
      throw ApiError(400, e.what());
    }
    job->plan = request_prune_plan(r.sdtp, opt.plan, opt.predictor, model.config);
    job->kv = request_kv_options(r.sdtp, opt.session.kv);
    if (job->plan.enabled() && find_prune_method(job->plan.method).revives && job->kv.enabled())
      throw ApiError(400, "sdtp: --prune " + job->plan.method + " does not combine with a KV policy yet", "sdtp");
    return job;
  }

  json logprobs_json(const CompletionRequest& r, const std::vector<TokenLogprob>& lps, size_t offset) {
    if (r.logprobs < 0) return nullptr;
    return r.chat ? chat_logprobs_json(model.tokenizer, lps) : completion_logprobs_json(model.tokenizer, lps, offset);
  }

  void handle_completion(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (draining) throw ApiError(503, "the server is shutting down");
    const json body = parse_json_body(req.body);
    const CompletionRequest r = chat ? parse_chat_request(body) : parse_completion_request(body);
    std::shared_ptr<Job> job = make_job(r);
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = unix_time();
    const std::string object = chat ? "chat.completion" : "text_completion";
    const std::string echo = r.echo ? r.prompt : "";
    if (!r.stream) {
      auto done = std::make_shared<std::promise<JobResult>>();
      std::future<JobResult> fut = done->get_future();
      job->on_done = [done](const JobResult& jr) { done->set_value(jr); };
      if (!scheduler->submit(job)) throw ApiError(503, "the request queue is full; retry later", "", "queue_full");
      const JobResult jr = fut.get();
      if (jr.error_status) throw ApiError(jr.error_status, jr.error);
      json choice = {{"index", 0}, {"finish_reason", jr.gen.finish_reason}};
      choice["logprobs"] = logprobs_json(r, jr.gen.logprobs, echo.size());
      if (chat) choice["message"] = {{"role", "assistant"}, {"content", jr.gen.text}};
      else choice["text"] = echo + jr.gen.text;
      json out = {{"id", id},          {"object", object},   {"created", created}, {"model", opt.model_id},
                  {"choices", {choice}}, {"usage", usage_json(jr.report)}, {"sdtp", sdtp_json(jr.report)}};
      res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
      return;
    }

    // Streaming: the worker turns pieces into events; this thread's content provider writes them.
    auto stream = std::make_shared<Stream>();
    const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
    const auto chunk = [=, this](json delta_or_text, json finish, json lps) {
      json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", lps}};
      if (chat) choice["delta"] = delta_or_text;
      else choice["text"] = delta_or_text;
      return json{{"id", id}, {"object", chunk_object}, {"created", created}, {"model", opt.model_id},
                  {"choices", {choice}}};
    };
    auto offset = std::make_shared<size_t>(echo.size());
    if (chat) stream->push(chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
    else if (!echo.empty()) stream->push(chunk(echo, nullptr, nullptr));
    job->on_piece = [=, this](std::string_view text, std::vector<TokenLogprob>&& lps) {
      if (text.empty() && lps.empty()) return true;
      json l = logprobs_json(r, lps, *offset);
      *offset += text.size();
      stream->push(chat ? chunk(json{{"content", std::string(text)}}, nullptr, l) : chunk(std::string(text), nullptr, l));
      return true;
    };
    job->on_done = [=, this](const JobResult& jr) {
      if (jr.error_status) {
        stream->push(error_body(ApiError(jr.error_status, jr.error)));
      } else {
        json last = chunk(chat ? json::object() : json(""), jr.gen.finish_reason, nullptr);
        last["sdtp"] = sdtp_json(jr.report);
        stream->push(last);
        if (r.include_usage) {
          json u = {{"id", id},          {"object", chunk_object}, {"created", created}, {"model", opt.model_id},
                    {"choices", json::array()}, {"usage", usage_json(jr.report)}};
          stream->push(u);
        }
      }
      stream->push_raw("data: [DONE]\n\n");
      stream->finish();
    };
    if (!scheduler->submit(job)) throw ApiError(503, "the request queue is full; retry later", "", "queue_full");
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream, job](size_t, httplib::DataSink& sink) {
          std::unique_lock<std::mutex> lock(stream->mu);
          while (stream->events.empty() && !stream->done) {
            stream->cv.wait_for(lock, std::chrono::milliseconds(200));
            if (stream->events.empty() && !stream->done && !sink.is_writable()) {
              job->cancel = true;  // the client went away while waiting
              return false;
            }
          }
          while (!stream->events.empty()) {
            std::string e = std::move(stream->events.front());
            stream->events.pop_front();
            lock.unlock();
            if (!sink.write(e.data(), e.size())) {
              job->cancel = true;
              return false;
            }
            lock.lock();
          }
          if (stream->done) sink.done();
          return true;
        },
        [job](bool success) {
          if (!success) job->cancel = true;
        });
  }

  // Runs a handler, turning ApiError (and anything else) into OpenAI's error JSON.
  template <class F>
  httplib::Server::Handler guarded(const std::string& endpoint, F f) {
    return [this, endpoint, f](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        f(req, res);
      } catch (const ApiError& e) {
        reply_error(res, e);
      } catch (const UsageError& e) {
        reply_error(res, ApiError(400, e.what()));
      } catch (const std::exception& e) {
        reply_error(res, ApiError(500, std::string("internal error: ") + e.what()));
      }
      if (res.status == -1) res.status = 200;  // httplib's default, set after the handler
      metrics.request(endpoint, res.status);
      if (opt.log_requests) {
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "sdtp serve: %s %s %d %.1f ms%s\n", req.method.c_str(), req.path.c_str(), res.status, ms,
                     res.is_chunked_content_provider_ ? " (stream started)" : "");
      }
    };
  }

  void setup() {
    const size_t threads = static_cast<size_t>(opt.parallel + opt.max_queue + 8);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(opt.max_body_bytes);
    // cpp-httplib listens with a backlog of 5: a burst of clients (32 streams opened at once) then
    // has connections dropped. The listening socket is kept here and listened on again in bind().
    http.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_socket = sock;
    });
    http.set_keep_alive_timeout(2);
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (opt.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
      const std::string want = "Bearer " + opt.api_key;
      if (req.get_header_value("Authorization") == want) return httplib::Server::HandlerResponse::Unhandled;
      reply_error(res, ApiError(401,
                                req.has_header("Authorization") ? "the API key is not valid"
                                                                : "an API key is required (Authorization: Bearer KEY)",
                                "", "invalid_api_key"));
      metrics.request(req.path, 401);
      return httplib::Server::HandlerResponse::Handled;
    });
    // Statuses httplib sets itself (404 no route, 413 body too large, 400 bad HTTP) get a JSON body too.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string msg = status_text(res.status);
      if (res.status == 404) msg = "no route " + req.method + " " + req.path;
      if (res.status == 413) msg += " (at most " + std::to_string(opt.max_body_bytes) + " bytes)";
      reply_error(res, ApiError(res.status, msg));
      if (res.status == 404 || res.status == 413) metrics.request("other", res.status);
    });
    http.Post("/v1/chat/completions", guarded("/v1/chat/completions", [this](const auto& req, auto& res) {
                handle_completion(req, res, true);
              }));
    http.Post("/v1/completions", guarded("/v1/completions", [this](const auto& req, auto& res) {
                handle_completion(req, res, false);
              }));
    http.Get("/v1/models", guarded("/v1/models", [this](const auto&, auto& res) {
               json m = {{"id", opt.model_id}, {"object", "model"}, {"created", unix_time()}, {"owned_by", "sdtp"}};
               m["sdtp"] = {{"n_ctx", scheduler->n_ctx()}, {"parallel", scheduler->parallel()},
                            {"device", opt.session.device}, {"prune", opt.plan.method},
                            {"kv_policy", opt.session.kv.describe()}};
               res.set_content(json{{"object", "list"}, {"data", {m}}}.dump(), "application/json");
             }));
    http.Get("/health", guarded("/health", [this](const auto&, auto& res) {
               if (draining) throw ApiError(503, "the server is shutting down");
               res.set_content(json{{"status", "ok"}}.dump(), "application/json");
             }));
    http.Get("/metrics", guarded("/metrics", [this](const auto&, auto& res) {
               res.set_content(metrics.text(), "text/plain; version=0.0.4");
             }));
  }
};

Server::Server(const Model& model, ServerOptions options) : impl_(std::make_unique<Impl>(model, std::move(options))) {}

Server::~Server() { shutdown(); }

int Server::bind() {
  Impl& s = *impl_;
  const int port = s.opt.port == 0 ? s.http.bind_to_any_port(s.opt.host) : s.opt.port;
  if (s.opt.port != 0 && !s.http.bind_to_port(s.opt.host, s.opt.port)) s.bound_port = -1;
  else s.bound_port = port;
  if (s.bound_port > 0 && s.listen_socket != INVALID_SOCKET) ::listen(s.listen_socket, 1024);
  if (s.bound_port <= 0)
    throw UsageError("cannot listen on " + s.opt.host + ":" + std::to_string(s.opt.port) +
                     " (address in use, not an address of this machine, or a port that needs root)");
  return s.bound_port;
}

void Server::run() {
  if (impl_->bound_port <= 0) bind();
  impl_->http.listen_after_bind();
}

void Server::shutdown() {
  Impl& s = *impl_;
  std::call_once(s.shutdown_once, [&s] {
    s.draining = true;
    // Let running requests finish within the grace period, then cancel them.
    s.scheduler->close();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(s.opt.shutdown_grace_s);
    while (s.scheduler->running() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s.scheduler->stop(true);
    // Give streams a moment to write their last events, then close the listener and connections.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    s.http.stop();
  });
}

int Server::port() const { return impl_->bound_port; }
Metrics& Server::metrics() { return impl_->metrics; }

}  // namespace sdtp::server
