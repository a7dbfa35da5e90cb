// Parsing and validation of the OpenAI request bodies, and the JSON of responses (api.h).
#include "server/api.h"

#include <cmath>
#include <limits>
#include <memory>

#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp::server {

using nlohmann::json;

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string code_)
    : std::runtime_error(message),
      status(status_),
      type(status_ == 401 ? "authentication_error" : status_ >= 500 ? "server_error" : "invalid_request_error"),
      param(std::move(param_)),
      code(std::move(code_)) {}

json error_body(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}};
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
  return json{{"error", err}};
}

json parse_json_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ApiError(400, "the body is not valid JSON", "", "invalid_json");
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object", "", "invalid_json");
  return j;
}

namespace {

const char* type_name(const json& v) { return v.type_name(); }

[[noreturn]] void bad(const std::string& field, const std::string& why) {
  throw ApiError(400, "'" + field + "' " + why, field);
}

bool present(const json& body, const char* field) {
  auto it = body.find(field);
  return it != body.end() && !it->is_null();
}

double number(const json& body, const char* field, double lo, double hi) {
  const json& v = body.at(field);
  if (!v.is_number()) bad(field, std::string("must be a number, got ") + type_name(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(field, "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
  return x;
}

int64_t integer(const json& body, const char* field, int64_t lo, int64_t hi) {
  const json& v = body.at(field);
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && x >= static_cast<double>(lo) && x <= static_cast<double>(hi))
      return static_cast<int64_t>(x);
  }
  if (!v.is_number()) bad(field, std::string("must be an integer, got ") + type_name(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    bad(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  if (!v.is_number_integer()) bad(field, "must be an integer, got " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad(field, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return x;
}

bool boolean(const json& body, const char* field) {
  const json& v = body.at(field);
  if (!v.is_boolean()) bad(field, std::string("must be true or false, got ") + type_name(v));
  return v.get<bool>();
}

std::string text(const json& body, const char* field) {
  const json& v = body.at(field);
  if (!v.is_string()) bad(field, std::string("must be a string, got ") + type_name(v));
  return v.get<std::string>();
}

// Fields both endpoints share: model, max_tokens, sampling, stop, stream, n, the penalties, sdtp.
void parse_common(const json& body, CompletionRequest& r) {
  if (present(body, "model")) r.model = text(body, "model");
  r.gen.max_tokens = -1;
  for (const char* f : {"max_completion_tokens", "max_tokens"}) {
    if (!present(body, f)) continue;
    r.gen.max_tokens = static_cast<int>(integer(body, f, 0, 1 << 24));
    r.max_tokens_given = true;
  }
  SamplingParams& s = r.gen.sampling;
  s.temperature = present(body, "temperature") ? static_cast<float>(number(body, "temperature", 0, 2)) : 1.0f;
  s.top_p = present(body, "top_p") ? static_cast<float>(number(body, "top_p", 0, 1)) : 1.0f;
  if (present(body, "top_p") && s.top_p <= 0) bad("top_p", "must be > 0");
  s.top_k = 0;  // OpenAI samples from the whole vocabulary (top_p aside)
  if (present(body, "top_k")) s.top_k = static_cast<int>(integer(body, "top_k", 0, 1 << 30));
  s.min_p = present(body, "min_p") ? static_cast<float>(number(body, "min_p", 0, 1)) : 0.0f;
  if (present(body, "repetition_penalty"))
    s.repeat_penalty = static_cast<float>(number(body, "repetition_penalty", 0.01, 100));
  s.seed = present(body, "seed") ? static_cast<uint64_t>(integer(body, "seed", INT64_MIN, INT64_MAX)) : 0;
  if (present(body, "stop")) {
    const json& v = body.at("stop");
    std::vector<std::string> stops;
    if (v.is_string()) {
      stops.push_back(v.get<std::string>());
    } else if (v.is_array()) {
      if (v.size() > 4) bad("stop", "takes at most 4 strings, got " + std::to_string(v.size()));
      for (const json& e : v) {
        if (!e.is_string()) bad("stop", std::string("must hold strings, got ") + type_name(e));
        stops.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", std::string("must be a string or an array of strings, got ") + type_name(v));
    }
    for (const std::string& x : stops)
      if (x.empty()) bad("stop", "must not hold an empty string");
    r.gen.stop = stops;
  }
  if (present(body, "stream")) r.stream = boolean(body, "stream");
  if (present(body, "stream_options")) {
    const json& so = body.at("stream_options");
    if (!so.is_object()) bad("stream_options", std::string("must be an object, got ") + type_name(so));
    if (!r.stream) bad("stream_options", "is only allowed with stream: true");
    if (present(so, "include_usage")) {
      if (!so.at("include_usage").is_boolean()) bad("stream_options.include_usage", "must be true or false");
      r.include_usage = so.at("include_usage").get<bool>();
    }
  }
  if (present(body, "n") && integer(body, "n", 1, 128) != 1) bad("n", "must be 1 (one choice per request)");
  for (const char* f : {"presence_penalty", "frequency_penalty"})
    if (present(body, f) && number(body, f, -2, 2) != 0) bad(f, "is not supported (only 0)");
  for (const char* f : {"tools", "functions", "logit_bias"})
    if (present(body, f) && !body.at(f).empty()) bad(f, "is not supported by this server");
  if (present(body, "sdtp")) {
    const json& x = body.at("sdtp");
    if (!x.is_object()) bad("sdtp", std::string("must be an object, got ") + type_name(x));
    for (auto it = x.begin(); it != x.end(); ++it) {
      const std::string& k = it.key();
      if (k != "prune" && k != "keep_ratio" && k != "kv_policy" && k != "kv_budget")
        bad("sdtp." + k, "is not a field of sdtp (prune, keep_ratio, kv_policy, kv_budget)");
    }
    try {
      if (present(x, "prune")) r.sdtp.prune = text(x, "prune");
      if (present(x, "keep_ratio")) r.sdtp.keep_ratio = number(x, "keep_ratio", 0, 1);
      if (present(x, "kv_policy")) r.sdtp.kv_policy = text(x, "kv_policy");
      if (present(x, "kv_budget")) r.sdtp.kv_budget = number(x, "kv_budget", 0, 1e9);
    } catch (const ApiError& e) {
      throw ApiError(400, std::string("sdtp.") + e.what(), "sdtp." + e.param);
    }
  }
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& m, size_t index) {
  const std::string field = "messages[" + std::to_string(index) + "].content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) bad(field, std::string("must be a string or an array of parts, got ") + type_name(*it));
  std::string out;
  for (const json& part : *it) {
    if (!part.is_object() || !part.contains("type") || !part.at("type").is_string())
      bad(field, "parts must be objects with a 'type'");
    const std::string type = part.at("type").get<std::string>();
    if (type != "text") bad(field, "part type '" + type + "' is not supported (this model reads text only)");
    if (!part.contains("text") || !part.at("text").is_string()) bad(field, "a text part needs a string 'text'");
    out += part.at("text").get<std::string>();
  }
  return out;
}

}  // namespace

CompletionRequest parse_chat_request(const json& body) {
  CompletionRequest r;
  r.chat = true;
  if (!present(body, "messages")) bad("messages", "is required");
  const json& msgs = body.at("messages");
  if (!msgs.is_array()) bad("messages", std::string("must be an array, got ") + type_name(msgs));
  if (msgs.empty()) bad("messages", "must hold at least one message");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const json& m = msgs[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(at, std::string("must be an object, got ") + type_name(m));
    if (!m.contains("role") || !m.at("role").is_string()) bad(at + ".role", "must be a string");
    std::string role = m.at("role").get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant")
      bad(at + ".role", "must be system, developer, user or assistant, got '" + role + "'");
    r.messages.push_back({role, message_content(m, i)});
  }
  parse_common(body, r);
  if (present(body, "logprobs") && boolean(body, "logprobs")) {
    r.logprobs = present(body, "top_logprobs") ? static_cast<int>(integer(body, "top_logprobs", 0, 20)) : 0;
  } else if (present(body, "top_logprobs")) {
    bad("top_logprobs", "needs logprobs: true");
  }
  return r;
}

CompletionRequest parse_completion_request(const json& body) {
  CompletionRequest r;
  if (!present(body, "prompt")) bad("prompt", "is required");
  const json& p = body.at("prompt");
  if (p.is_string()) {
    r.prompt = p.get<std::string>();
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r.prompt = p[0].get<std::string>();
  } else if (p.is_array()) {
    bad("prompt", "must be one string (a batch of prompts or token ids is not supported)");
  } else {
    bad("prompt", std::string("must be a string, got ") + type_name(p));
  }
  parse_common(body, r);
  if (present(body, "logprobs")) r.logprobs = static_cast<int>(integer(body, "logprobs", 0, 5));
  if (present(body, "echo")) r.echo = boolean(body, "echo");
  if (present(body, "suffix") && !text(body, "suffix").empty()) bad("suffix", "is not supported");
  if (present(body, "best_of") && integer(body, "best_of", 1, 128) != 1) bad("best_of", "must be 1");
  return r;
}

std::string model_id_from_path(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.find_last_of('/');
  std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".gguf") == 0) name.resize(name.size() - 5);
  return name;
}

void check_model_field(const CompletionRequest& r, const std::string& id) {
  if (!r.model.empty() && r.model != id)
    throw ApiError(404, "the model '" + r.model + "' does not exist; this server serves '" + id + "'", "model",
                   "model_not_found");
}

PrunePlan request_prune_plan(const SdtpOverrides& o, const PrunePlan& server_plan,
                             const std::shared_ptr<const Predictor>& predictor, const ModelConfig& config) {
  if (!o.prune && !o.keep_ratio) return server_plan;
  PrunePlan plan = server_plan;
  try {
    if (o.prune && *o.prune != server_plan.method) {
      const PruneMethod& m = find_prune_method(*o.prune);
      if (m.needs_saliency_oracle)
        throw ApiError(400, "sdtp.prune '" + m.name + "' is an analysis oracle (a backward pass per prompt), not served",
                       "sdtp.prune");
      plan = PrunePlan{};
      plan.method = m.name;
      plan.keep_first = PrunePlan::kKeepFirstUnset;
      plan.keep_recent = PrunePlan::kKeepRecentUnset;
      if (m.needs_predictor) {
        if (!predictor)
          throw ApiError(400, "sdtp.prune '" + m.name + "' needs a predictor, and this server has none for its model",
                         "sdtp.prune");
        plan.predictor = predictor;
        complete_prune_plan_from_predictor(plan);
      }
      complete_prune_plan(config, plan);
    }
    if (o.keep_ratio) {
      if (!plan.enabled()) throw ApiError(400, "sdtp.keep_ratio needs a pruning method (sdtp.prune)", "sdtp.keep_ratio");
      if (*o.keep_ratio <= 0) throw ApiError(400, "sdtp.keep_ratio must be in (0, 1]", "sdtp.keep_ratio");
      plan.keep_ratios.assign(plan.layers.size(), static_cast<float>(*o.keep_ratio));
      plan.validate(config);
    }
  } catch (const UsageError& e) {
    throw ApiError(400, std::string("sdtp: ") + e.what(), o.prune ? "sdtp.prune" : "sdtp.keep_ratio");
  }
  return plan;
}

KVPolicyOptions request_kv_options(const SdtpOverrides& o, const KVPolicyOptions& server_kv) {
  KVPolicyOptions kv = server_kv;
  try {
    if (o.kv_policy) {
      kv.policy = find_kv_policy(*o.kv_policy).name;
      if (!o.kv_budget && !server_kv.enabled()) kv.budget = 1.0;
    }
    if (o.kv_budget) kv.budget = *o.kv_budget;
    kv.validate();
  } catch (const UsageError& e) {
    throw ApiError(400, std::string("sdtp: ") + e.what(), o.kv_budget ? "sdtp.kv_budget" : "sdtp.kv_policy");
  }
  return kv;
}

json usage_json(const SdtpReport& r) {
  return json{{"prompt_tokens", r.prompt_tokens},
              {"completion_tokens", r.completion_tokens},
              {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

json sdtp_json(const SdtpReport& r) {
  const double saved = r.dense_prefill_flops > 0 ? 1.0 - r.prefill_flops / r.dense_prefill_flops : 0.0;
  return json{{"prune", r.prune},
              {"kv_policy", r.kv_policy},
              {"alive_last_layer", r.alive_last_layer},
              {"prefill_flops", r.prefill_flops},
              {"dense_prefill_flops", r.dense_prefill_flops},
              {"flops_saved", saved},
              {"kv_entries", r.kv_entries},
              {"kv_bytes", r.kv_bytes}};
}

namespace {

// A token's text for JSON: its bytes with U+FFFD where they are not UTF-8 (a character split over
// tokens); the "bytes" field keeps the exact bytes.
std::string token_text(const Tokenizer& tok, int32_t id) { return valid_utf8(tok.token_bytes(id)); }

json token_bytes_json(const Tokenizer& tok, int32_t id) {
  json a = json::array();
  for (unsigned char c : tok.token_bytes(id)) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

json chat_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprob>& lps) {
  json content = json::array();
  for (const TokenLogprob& t : lps) {
    json top = json::array();
    for (const auto& [id, lp] : t.top)
      top.push_back({{"token", token_text(tok, id)}, {"logprob", lp}, {"bytes", token_bytes_json(tok, id)}});
    content.push_back({{"token", token_text(tok, t.id)},
                       {"logprob", t.logprob},
                       {"bytes", token_bytes_json(tok, t.id)},
                       {"top_logprobs", top}});
  }
  return json{{"content", content}};
}

json completion_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprob>& lps, size_t text_offset0) {
  json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
  size_t offset = text_offset0;
  for (const TokenLogprob& t : lps) {
    tokens.push_back(token_text(tok, t.id));
    token_lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) top[token_text(tok, id)] = lp;
    tops.push_back(top);
    offsets.push_back(offset);
    offset += tok.token_bytes(t.id).size();
  }
  return json{{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

}  // namespace sdtp::server
