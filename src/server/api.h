// The OpenAI-compatible request and response bodies of `sdtp serve`, without the HTTP: requests are
// parsed and validated here into plain structs (every bad field an ApiError naming it, with the
// status the server answers), responses and stream chunks built as JSON. Only the public API
// (include/sdtp/) is used.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdtp/generate.h"
#include "sdtp/kv.h"
#include "sdtp/prune.h"
#include "sdtp/tokenizer.h"

namespace sdtp::server {

// An error answered as OpenAI's {"error": {"message", "type", "param", "code"}} with `status`.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "");
  int status;
  std::string type;  // "invalid_request_error" (4xx), "authentication_error" (401), "server_error" (5xx)
  std::string param, code;
};
nlohmann::json error_body(const ApiError& e);

// The per-request extension "sdtp": {...} over the server's defaults.
struct SdtpOverrides {
  std::optional<std::string> prune;       // a pruning method name (saliency is not served)
  std::optional<double> keep_ratio;       // at every pruning layer, in (0, 1]
  std::optional<std::string> kv_policy;   // a KV policy name
  std::optional<double> kv_budget;        // as --kv-budget
};

struct CompletionRequest {
  bool chat = false;                  // /v1/chat/completions (messages) or /v1/completions (prompt)
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // completions
  std::string model;                  // as sent ("" when absent)
  GenerateOptions gen;                // max_tokens (-1: up to the context), sampling, stop
  bool max_tokens_given = false;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage: a last chunk with usage
  // chat: logprobs true → top_logprobs alternatives (0..20); completions: logprobs N (0..5);
  // -1: no logprobs.
  int logprobs = -1;
  bool echo = false;                  // completions: the prompt before the text (only with max_tokens 0)
  SdtpOverrides sdtp;
};

// Parse a body already read as JSON. Unknown fields are ignored, as OpenAI-compatible servers do;
// fields of the OpenAI API this server does not implement with a value other than their neutral
// one (n > 1, best_of, a non-zero presence/frequency penalty, tools) are a 400 naming them.
CompletionRequest parse_chat_request(const nlohmann::json& body);
CompletionRequest parse_completion_request(const nlohmann::json& body);
// The body text as JSON (400 "the body is not valid JSON: ..." otherwise; an object is required).
nlohmann::json parse_json_body(const std::string& body);

// The served model's id (its file name without the folder and .gguf) and the checks of "model".
std::string model_id_from_path(const std::string& path);
void check_model_field(const CompletionRequest& r, const std::string& id);  // 404 model_not_found

// Per-request plan and KV options: the server's defaults with the request's overrides, validated
// against the model (400 naming the field). `predictor` is what the server has for "sdtp".
PrunePlan request_prune_plan(const SdtpOverrides& o, const PrunePlan& server_plan,
                             const std::shared_ptr<const Predictor>& predictor, const ModelConfig& config);
KVPolicyOptions request_kv_options(const SdtpOverrides& o, const KVPolicyOptions& server_kv);

// What a finished request reports beside `usage`: tokens alive at the last layer, FLOPs saved,
// KV entries kept.
struct SdtpReport {
  int prompt_tokens = 0, completion_tokens = 0;
  int alive_last_layer = 0;
  double prefill_flops = 0, dense_prefill_flops = 0;
  int64_t kv_entries = 0;   // summed over layers and KV heads, at the end
  size_t kv_bytes = 0;
  std::string prune, kv_policy;
};
nlohmann::json usage_json(const SdtpReport& r);
nlohmann::json sdtp_json(const SdtpReport& r);

// Logprobs of tokens in the formats of the two endpoints; `text_offset0` is where the first
// token's text starts in the completion (completions' text_offset).
nlohmann::json chat_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprob>& lps);
nlohmann::json completion_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprob>& lps,
                                        size_t text_offset0);

}  // namespace sdtp::server
