// The server's request parsing and response JSON (src/server/api.h) and its Prometheus text
// (metrics.h), without HTTP or a model: every bad field a 400 naming it, the fields the OpenAI API
// defines read as it defines them, logprobs against a log-softmax computed here in double.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "sdtp/generate.h"
#include "sdtp/model.h"
#include "server/api.h"
#include "server/metrics.h"

namespace sdtp::server {
namespace {

using nlohmann::json;

// The status and the param of the ApiError that parsing `body` throws (0 when none).
std::pair<int, std::string> error_of(const std::string& body, bool chat = true) {
  try {
    const json j = parse_json_body(body);
    if (chat) parse_chat_request(j);
    else parse_completion_request(j);
  } catch (const ApiError& e) {
    EXPECT_FALSE(std::string(e.what()).empty());
    return {e.status, e.param};
  }
  return {0, ""};
}

TEST(ServerApi, ChatRequestReadsTheOpenAiFields) {
  const json body = json::parse(R"({
    "model": "m", "messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                               {"role": "developer", "content": "x"}],
    "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n", "END"],
    "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3,
    "n": 1, "presence_penalty": 0, "user": "ignored", "sdtp": {"prune": "attn", "keep_ratio": 0.5,
    "kv_policy": "vatp", "kv_budget": 0.25}})");
  const CompletionRequest r = parse_chat_request(body);
  EXPECT_TRUE(r.chat);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.messages[2].role, "system");  // developer is the system role
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.gen.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.gen.sampling.top_p, 0.9f);
  EXPECT_EQ(r.gen.sampling.top_k, 0);  // the whole vocabulary, as OpenAI
  EXPECT_EQ(r.gen.sampling.seed, 3u);
  EXPECT_EQ(r.gen.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_EQ(*r.sdtp.prune, "attn");
  EXPECT_DOUBLE_EQ(*r.sdtp.keep_ratio, 0.5);
  EXPECT_EQ(*r.sdtp.kv_policy, "vatp");
  EXPECT_DOUBLE_EQ(*r.sdtp.kv_budget, 0.25);
}

TEST(ServerApi, DefaultsAreOpenAis) {
  const CompletionRequest r = parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "a"}]})"));
  EXPECT_EQ(r.gen.max_tokens, -1);  // up to the context
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.gen.sampling.top_p, 1.0f);
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.logprobs, -1);
  const CompletionRequest c = parse_completion_request(json::parse(R"({"prompt": ["one"], "logprobs": 2, "echo": true})"));
  EXPECT_EQ(c.prompt, "one");
  EXPECT_EQ(c.logprobs, 2);
  EXPECT_TRUE(c.echo);
  // Nulls are "not given".
  const CompletionRequest n = parse_completion_request(json::parse(R"({"prompt": "x", "max_tokens": null, "stop": null})"));
  EXPECT_EQ(n.gen.max_tokens, -1);
  EXPECT_TRUE(n.gen.stop.empty());
}

TEST(ServerApi, EveryBadFieldIsA400NamingIt) {
  const std::string m = R"("messages": [{"role": "user", "content": "a"}])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", ""},
      {"[1, 2]", ""},
      {"\"text\"", ""},
      {"{}", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": [3]})", "messages[0]"},
      {R"({"messages": [{"content": "a"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "robot", "content": "a"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content"},
      {"{" + m + R"(, "max_tokens": -1})", "max_tokens"},
      {"{" + m + R"(, "max_tokens": 1.5})", "max_tokens"},
      {"{" + m + R"(, "max_tokens": "5"})", "max_tokens"},
      {"{" + m + R"(, "max_tokens": 1e300})", "max_tokens"},
      {"{" + m + R"(, "max_tokens": 18446744073709551615})", "max_tokens"},
      {"{" + m + R"(, "temperature": 3})", "temperature"},
      {"{" + m + R"(, "temperature": "hot"})", "temperature"},
      {"{" + m + R"(, "top_p": 0})", "top_p"},
      {"{" + m + R"(, "top_p": 1.5})", "top_p"},
      {"{" + m + R"(, "seed": 1.5})", "seed"},
      {"{" + m + R"(, "stop": 3})", "stop"},
      {"{" + m + R"(, "stop": ["a", "b", "c", "d", "e"]})", "stop"},
      {"{" + m + R"(, "stop": [""]})", "stop"},
      {"{" + m + R"(, "stop": [1]})", "stop"},
      {"{" + m + R"(, "stream": "yes"})", "stream"},
      {"{" + m + R"(, "stream_options": {"include_usage": true}})", "stream_options"},
      {"{" + m + R"(, "n": 2})", "n"},
      {"{" + m + R"(, "presence_penalty": 0.5})", "presence_penalty"},
      {"{" + m + R"(, "frequency_penalty": 9})", "frequency_penalty"},
      {"{" + m + R"(, "tools": [{"type": "function"}]})", "tools"},
      {"{" + m + R"(, "logprobs": 1})", "logprobs"},
      {"{" + m + R"(, "logprobs": true, "top_logprobs": 21})", "top_logprobs"},
      {"{" + m + R"(, "top_logprobs": 2})", "top_logprobs"},
      {"{" + m + R"(, "sdtp": 1})", "sdtp"},
      {"{" + m + R"(, "sdtp": {"prun": "sdtp"}})", "sdtp.prun"},
      {"{" + m + R"(, "sdtp": {"keep_ratio": 2}})", "sdtp.keep_ratio"},
      {"{" + m + R"(, "sdtp": {"prune": 7}})", "sdtp.prune"},
  };
  for (const auto& [body, param] : cases) {
    const auto [status, got] = error_of(body);
    EXPECT_EQ(status, 400) << body;
    EXPECT_EQ(got, param) << body;
  }
  for (const std::string body : {R"({})", R"({"prompt": 5})", R"({"prompt": ["a", "b"]})", R"({"prompt": [1, 2]})",
                                 R"({"prompt": "a", "logprobs": 6})", R"({"prompt": "a", "best_of": 2})",
                                 R"({"prompt": "a", "suffix": "z"})", R"({"prompt": "a", "echo": 1})"}) {
    EXPECT_EQ(error_of(body, false).first, 400) << body;
  }
}

TEST(ServerApi, ErrorBodyIsOpenAisShape) {
  const json e = error_body(ApiError(404, "no such model", "model", "model_not_found"));
  EXPECT_EQ(e["error"]["message"], "no such model");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "model");
  EXPECT_EQ(e["error"]["code"], "model_not_found");
  EXPECT_TRUE(error_body(ApiError(400, "x"))["error"]["param"].is_null());
  EXPECT_EQ(error_body(ApiError(401, "x"))["error"]["type"], "authentication_error");
  EXPECT_EQ(error_body(ApiError(503, "x"))["error"]["type"], "server_error");
}

TEST(ServerApi, ModelIdAndModelField) {
  EXPECT_EQ(model_id_from_path("/a/b/SmolLM2.Q4_1.gguf"), "SmolLM2.Q4_1");
  EXPECT_EQ(model_id_from_path("models/llama/"), "llama");
  CompletionRequest r;
  r.model = "gpt-4";
  try {
    check_model_field(r, "SmolLM2");
    ADD_FAILURE() << "no error for another model";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 404);
    EXPECT_EQ(e.code, "model_not_found");
  }
  r.model = "SmolLM2";
  EXPECT_NO_THROW(check_model_field(r, "SmolLM2"));
  r.model = "";
  EXPECT_NO_THROW(check_model_field(r, "SmolLM2"));
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.arch = "llama";
  c.n_vocab = 64;
  c.n_embd = 32;
  c.n_layer = 8;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 8;
  c.n_ff = 64;
  c.n_ctx_train = 512;
  return c;
}

TEST(ServerApi, RequestPlanOverridesTheServersAndIsValidated) {
  const ModelConfig c = tiny_config();
  PrunePlan server;  // dense
  SdtpOverrides o;
  EXPECT_EQ(request_prune_plan(o, server, nullptr, c).method, "none");
  o.prune = "attn";
  PrunePlan p = request_prune_plan(o, server, nullptr, c);
  EXPECT_EQ(p.method, "attn");
  EXPECT_FALSE(p.layers.empty());
  o.keep_ratio = 0.5;
  p = request_prune_plan(o, server, nullptr, c);
  ASSERT_FALSE(p.keep_ratios.empty());
  for (float r : p.keep_ratios) EXPECT_FLOAT_EQ(r, 0.5f);
  const auto status = [&](SdtpOverrides x) {
    try {
      request_prune_plan(x, server, nullptr, c);
    } catch (const ApiError& e) {
      return e.status;
    }
    return 0;
  };
  SdtpOverrides bad;
  bad.prune = "sdtp";  // no predictor on this server
  EXPECT_EQ(status(bad), 400);
  bad.prune = "saliency";
  EXPECT_EQ(status(bad), 400);
  bad.prune = "magic";
  EXPECT_EQ(status(bad), 400);
  bad = {};
  bad.keep_ratio = 0.5;  // no method to apply it to
  EXPECT_EQ(status(bad), 400);

  KVPolicyOptions kv;
  SdtpOverrides k;
  k.kv_policy = "vatp";
  k.kv_budget = 0.25;
  const KVPolicyOptions got = request_kv_options(k, kv);
  EXPECT_EQ(got.policy, "vatp");
  EXPECT_DOUBLE_EQ(got.budget, 0.25);
  k.kv_budget = 3;  // neither a fraction nor >= 16 entries
  EXPECT_THROW(request_kv_options(k, kv), ApiError);
  k.kv_policy = "nope";
  k.kv_budget.reset();
  EXPECT_THROW(request_kv_options(k, kv), ApiError);
}

TEST(ServerApi, UsageAndSdtpReport) {
  SdtpReport r;
  r.prompt_tokens = 10;
  r.completion_tokens = 5;
  r.prefill_flops = 30;
  r.dense_prefill_flops = 120;
  const json u = usage_json(r);
  EXPECT_EQ(u["total_tokens"], 15);
  EXPECT_DOUBLE_EQ(sdtp_json(r)["flops_saved"].get<double>(), 0.75);
}

TEST(ServerApi, MetricsAreValidPrometheusText) {
  Metrics m;
  m.request("/v1/completions", 200);
  m.request("/v1/completions", 200);
  m.request("/v1/completions", 400);
  m.ttft.observe(0.003);
  m.ttft.observe(100);
  m.completion_tokens = 7;
  const std::string t = m.text();
  EXPECT_NE(t.find("sdtp_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("sdtp_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("sdtp_completion_tokens_total 7\n"), std::string::npos);
  // Cumulative buckets: 0.003 falls in le=0.005 and above, 100 only in +Inf.
  EXPECT_NE(t.find("sdtp_time_to_first_token_seconds_bucket{le=\"0.0025\"} 0\n"), std::string::npos) << t;
  EXPECT_NE(t.find("sdtp_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("sdtp_time_to_first_token_seconds_bucket{le=\"30\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("sdtp_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("sdtp_time_to_first_token_seconds_count 2\n"), std::string::npos);
  // Every line is a comment or "name{labels} value".
  size_t start = 0;
  while (start < t.size()) {
    const size_t end = t.find('\n', start);
    ASSERT_NE(end, std::string::npos);
    const std::string line = t.substr(start, end - start);
    start = end + 1;
    if (line.rfind("# ", 0) == 0) continue;
    const size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_EQ(line.rfind("sdtp_", 0), 0u) << line;
    char* rest = nullptr;
    std::strtod(line.c_str() + sp + 1, &rest);
    EXPECT_EQ(*rest, '\0') << line;
  }
}

}  // namespace
}  // namespace sdtp::server
