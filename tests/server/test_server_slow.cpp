// `sdtp serve` end to end, in process, on the default model: a Server on 127.0.0.1 and a free port,
// spoken to with cpp-httplib's client. 32 concurrent streams each get exactly the tokens a lone
// greedy generate() gets; thousands of mutated bodies never crash it and are each answered 2xx or
// 4xx with JSON; a client that disconnects mid-stream frees its sequence; keys, limits, queue and
// shutdown answer as documented; logprobs equal a log-softmax of the session's logits in double.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sdtp/generate.h"
#include "sdtp/model.h"
#include "sdtp/session.h"
#include "server/server.h"
#include "testing/fixtures.h"

namespace sdtp::server {
namespace {

using nlohmann::json;

class ServerSlow : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = sdtp::testing::default_model_path();
    if (sdtp::testing::path_exists(path)) model_ = load_model(path).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) SDTP_NO_DEFAULT_MODEL("default model not found at " << sdtp::testing::default_model_path());
  }
  void TearDown() override { stop(); }

  ServerOptions options(int parallel = 2) const {
    ServerOptions o;
    o.port = 0;
    o.parallel = parallel;
    o.log_requests = false;
    o.session.n_ctx = 1024;
    o.session.n_threads = 1;
    o.shutdown_grace_s = 5;
    return o;
  }
  void start(const ServerOptions& o) {
    server_ = std::make_unique<Server>(*model_, o);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->run(); });
  }
  void stop() {
    if (!server_) return;
    server_->shutdown();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120);
    return c;
  }
  // The text a lone greedy generation of `user` gives (chat template, max_tokens), as the engine
  // itself computes it, without the server.
  std::string lone_greedy(const std::string& user, int max_tokens) const {
    SessionOptions so;
    so.n_ctx = 1024;
    so.n_threads = 1;
    Session s(*model_, so);
    GenerateOptions g;
    g.max_tokens = max_tokens;
    g.sampling.temperature = 0;
    const Tokenizer& t = model_->tokenizer;
    return generate(s, t.encode(t.apply_chat_template({{"user", user}}), true, true), g).text;
  }
  // The content of an SSE chat stream, and whether it ended with [DONE].
  static std::string stream_content(const std::string& body, bool* done, std::string* finish = nullptr) {
    std::string content;
    *done = false;
    size_t pos = 0;
    while ((pos = body.find("data: ", pos)) != std::string::npos) {
      const size_t end = body.find("\n\n", pos);
      const std::string data = body.substr(pos + 6, end - pos - 6);
      pos = end;
      if (data == "[DONE]") {
        *done = true;
        continue;
      }
      const json j = json::parse(data);
      if (j.contains("error")) ADD_FAILURE() << data;
      if (j["choices"].empty()) continue;
      const json& ch = j["choices"][0];
      if (ch.contains("delta") && ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
      if (finish && !ch["finish_reason"].is_null()) *finish = ch["finish_reason"];
    }
    return content;
  }
  static int64_t metric(const std::string& text, const std::string& name) {
    const size_t at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stoll(text.substr(at + name.size() + 2));
  }

  static Model* model_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};
Model* ServerSlow::model_ = nullptr;

TEST_F(ServerSlow, ConcurrentStreamsGetExactlyTheLoneGreedyTokens) {
  start(options(4));
  constexpr int kStreams = 32, kTokens = 12;
  std::vector<std::string> users(kStreams), got(kStreams), finish(kStreams);
  std::vector<int> done(kStreams, 0);
  for (int i = 0; i < kStreams; ++i) users[i] = "Write one sentence about the number " + std::to_string(i * 7 + 3) + ".";
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      httplib::Client c = client();
      const json body = {{"messages", {{{"role", "user"}, {"content", users[i]}}}},
                         {"max_tokens", kTokens}, {"temperature", 0}, {"stream", true}};
      auto res = c.Post("/v1/chat/completions", body.dump(), "application/json");
      if (!res || res->status != 200) {
        got[i] = res ? "status " + std::to_string(res->status) + ": " + res->body : "no reply: " + httplib::to_string(res.error());
        return;
      }
      bool d = false;
      got[i] = stream_content(res->body, &d, &finish[i]);
      done[i] = d;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(done[i]) << "stream " << i << " did not end with [DONE]";
    EXPECT_EQ(got[i], lone_greedy(users[i], kTokens)) << "stream " << i;
    EXPECT_TRUE(finish[i] == "length" || finish[i] == "stop") << finish[i];
  }
  const std::string m = client().Get("/metrics")->body;
  EXPECT_EQ(metric(m, "sdtp_running_sequences"), 0) << m;
  EXPECT_EQ(metric(m, "sdtp_kv_bytes"), 0) << m;
  std::printf("[server] %d concurrent streams on 4 slots: every one equal to its lone greedy run\n", kStreams);
}

TEST_F(ServerSlow, MutatedBodiesNeverCrashIt) {
  ServerOptions o = options(2);
  o.max_body_bytes = 1 << 20;
  o.max_tokens = 1;  // a mutation that drops max_tokens must not generate up to the context
  start(o);
  const std::vector<std::string> seeds = {
      R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0})",
      R"({"prompt": "Once upon", "max_tokens": 1, "logprobs": 2, "stop": ["x"]})",
      R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": true, "logprobs": true, "top_logprobs": 2})",
      R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "sdtp": {"prune": "attn", "keep_ratio": 0.5}})",
  };
  const std::vector<std::string> splices = {"null", "-1", "1e999", "18446744073709551616", "\"\\ud800\"", "[]", "{}",
                                            "\"\xc3\x28\"", "true", "\"\"", "0.5", "[[[[[[[[", "\"\xe2\x82\xac\"", "9"};
  std::mt19937 rng(1234);
  httplib::Client c = client();
  int ok = 0, client_errors = 0;
  constexpr int kBodies = 5000;
  for (int i = 0; i < kBodies; ++i) {
    std::string b = seeds[rng() % seeds.size()];
    const int kind = static_cast<int>(rng() % 6);
    if (kind == 0) {
      b.resize(rng() % b.size());  // truncated
    } else if (kind == 1) {
      for (int k = 0; k < 3; ++k) b[rng() % b.size()] = static_cast<char>(rng() % 256);  // random bytes
    } else if (kind == 2) {  // a value replaced by another type / a huge number / bad unicode
      const size_t at = b.find(':', rng() % b.size());
      if (at != std::string::npos) {
        const size_t end = b.find_first_of(",}", at + 1);
        b = b.substr(0, at + 1) + splices[rng() % splices.size()] + (end == std::string::npos ? "" : b.substr(end));
      }
    } else if (kind == 3) {
      b.insert(rng() % b.size(), splices[rng() % splices.size()]);
    } else if (kind == 4) {
      b = std::string(1 + rng() % 64, static_cast<char>('[' + (rng() % 2) * 2));  // deep nesting
    }
    if (i % 1000 == 5) b = std::string(10 << 20, 'a');  // 10 MB, over the body limit
    const char* path = (rng() % 2) ? "/v1/chat/completions" : "/v1/completions";
    auto res = c.Post(path, b, "application/json");
    ASSERT_TRUE(res) << "no reply to body " << i << ": " << b.substr(0, 200);
    if (res->status >= 200 && res->status < 300) {
      ++ok;
      continue;
    }
    ASSERT_GE(res->status, 400) << b;
    ASSERT_LT(res->status, 500) << res->status << " for " << b.substr(0, 200) << ": " << res->body;
    const json e = json::parse(res->body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << res->body;
    ASSERT_TRUE(e.contains("error") && e["error"]["message"].is_string()) << res->body;
    ++client_errors;
  }
  EXPECT_EQ(ok + client_errors, kBodies);
  EXPECT_GT(ok, 0);
  EXPECT_GT(client_errors, 0);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  std::printf("[server] %d mutated bodies: %d answered 2xx, %d 4xx with an error JSON; healthy after\n", kBodies, ok,
              client_errors);
}

TEST_F(ServerSlow, ClientThatDisconnectsFreesItsSequence) {
  start(options(1));
  {
    httplib::Client c = client();
    const json body = {{"messages", {{{"role", "user"}, {"content", "Tell me a very long story."}}}},
                       {"max_tokens", 900}, {"temperature", 0}, {"stream", true}, {"stop", {"zzzzqqq"}}};
    int chunks = 0;
    // Read a few chunks, then return false: the client closes the connection mid-stream.
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 4; };
    httplib::Response res;
    httplib::Error err;
    c.send(req, res, err);
    EXPECT_GE(chunks, 4);
  }
  // The slot is free again well before 900 tokens could have been generated.
  std::string m;
  for (int i = 0; i < 200; ++i) {
    m = client().Get("/metrics")->body;
    if (metric(m, "sdtp_running_sequences") == 0 && metric(m, "sdtp_requests_cancelled_total") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(metric(m, "sdtp_running_sequences"), 0) << m;
  EXPECT_EQ(metric(m, "sdtp_requests_cancelled_total"), 1) << m;
  EXPECT_EQ(metric(m, "sdtp_kv_bytes"), 0) << m;
  EXPECT_LT(metric(m, "sdtp_completion_tokens_total"), 900) << m;
  // And the server goes on serving.
  const json body = {{"prompt", "Hello"}, {"max_tokens", 2}};
  auto res = client().Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(ServerSlow, KeysLimitsRoutesAndTheQueue) {
  ServerOptions o = options(1);
  o.api_key = "secret";
  o.max_queue = 0;
  o.max_body_bytes = 4096;
  start(o);
  httplib::Client c = client();
  const std::string body = json{{"prompt", "Hi"}, {"max_tokens", 1}}.dump();
  auto r = c.Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "authentication_error");
  httplib::Headers wrong = {{"Authorization", "Bearer nope"}}, right = {{"Authorization", "Bearer secret"}};
  EXPECT_EQ(c.Post("/v1/completions", wrong, body, "application/json")->status, 401);
  EXPECT_EQ(c.Post("/v1/completions", right, body, "application/json")->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);  // health needs no key
  // 404: no route, and a model this server does not serve.
  r = c.Get("/v1/nothing", right);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
  r = c.Post("/v1/completions", right, json{{"prompt", "Hi"}, {"model", "gpt-4"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "model_not_found");
  // 413: over --max-body.
  r = c.Post("/v1/completions", right, std::string(8192, ' '), "application/json");
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
  // 400: a prompt over the context, max_tokens over the context.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "many words here ";
  o.max_body_bytes = 1 << 20;
  r = c.Post("/v1/completions", right, json{{"prompt", "Hi"}, {"max_tokens", 5000}}.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  // 503: one slot, no queue; a long request holds the slot.
  std::atomic<bool> started{false};
  std::thread busy([&] {
    httplib::Client b = client();
    started = true;
    b.Post("/v1/completions", right, json{{"prompt", "Once"}, {"max_tokens", 120}, {"stop", {"zzqq"}}}.dump(),
           "application/json");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  r = c.Post("/v1/completions", right, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  busy.join();
  const std::string m = c.Get("/metrics")->body;
  EXPECT_NE(m.find("status=\"401\"} "), std::string::npos) << m;
  EXPECT_NE(m.find("status=\"503\"} 1"), std::string::npos) << m;
}

TEST_F(ServerSlow, ShutdownFinishesARunningStream) {
  start(options(1));
  std::string got;
  bool done = false;
  std::thread t([&] {
    httplib::Client c = client();
    const json body = {{"messages", {{{"role", "user"}, {"content", "Count to ten."}}}},
                       {"max_tokens", 24}, {"temperature", 0}, {"stream", true}};
    auto res = c.Post("/v1/chat/completions", body.dump(), "application/json");
    if (res) got = stream_content(res->body, &done);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  stop();  // within the grace period the stream ends normally
  t.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(got, lone_greedy("Count to ten.", 24));
}

TEST_F(ServerSlow, LogprobsAreTheLogSoftmaxOfTheLogits) {
  start(options(1));
  const json body = {{"prompt", "The capital of France is"}, {"max_tokens", 3}, {"temperature", 0}, {"logprobs", 5}};
  auto res = client().Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json lp = json::parse(res->body)["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), 3u);
  // Replay: the session's logits, log-softmax in double.
  const Tokenizer& tok = model_->tokenizer;
  SessionOptions so;
  so.n_ctx = 1024;
  so.n_threads = 1;
  Session s(*model_, so);
  const std::vector<float>* logits = &s.prefill(tok.encode("The capital of France is", true, true));
  for (int step = 0; step < 3; ++step) {
    const std::vector<float>& l = *logits;
    double mx = l[0];
    for (float v : l) mx = std::max(mx, static_cast<double>(v));
    double z = 0;
    for (float v : l) z += std::exp(v - mx);
    const int32_t best = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    const double want = l[best] - mx - std::log(z);
    EXPECT_NEAR(lp["token_logprobs"][step].get<double>(), want, 1e-4) << step;
    EXPECT_EQ(lp["tokens"][step], valid_utf8(tok.token_bytes(best)));
    EXPECT_EQ(lp["top_logprobs"][step].size(), 5u);
    for (auto it = lp["top_logprobs"][step].begin(); it != lp["top_logprobs"][step].end(); ++it)
      EXPECT_LE(it.value().get<double>(), want + 1e-6);
    logits = &s.decode(best);
  }
}

}  // namespace
}  // namespace sdtp::server
