// Sampling and the generation loop: prefill the prompt, then sample, decode and stream text until
// max tokens, an end-of-generation token or a stop string.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "sdtp/session.h"

namespace sdtp {

struct SamplingParams {
  float temperature = 0.8f;  // <= 0: greedy (argmax)
  int top_k = 40;            // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.0f;        // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off (CTRL-style: divide positive logits, multiply negative)
  int repeat_last_n = 64;       // how many recent tokens the penalty looks at
  uint64_t seed = 0;

  void validate() const;  // throws UsageError naming the bad field
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks a token from logits [n_vocab]; `history` holds the tokens so far (prompt + generated).
  int32_t sample(const float* logits, int n_vocab, const std::vector<int32_t>& history);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// One generated token's log-probability under the model (log-softmax of its logits, before the
// sampler's temperature and filters, as OpenAI's `logprobs` report it) and the most likely ones.
struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // (id, logprob), most likely first
};

struct GenerateOptions {
  int max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings: generation ends before them, they are not emitted
  bool stop_at_eos = true;
  // >= 0: GenerateResult::logprobs gets every generated token's log-probability and the `logprobs`
  // most likely tokens at its step (at most 20); < 0: none.
  int logprobs = -1;
  // Called with each generated token (and its log-probabilities when asked for) before its text
  // reaches on_text; a server attaches them to the text piece that follows.
  std::function<void(const TokenLogprob&)> on_token;
};

struct GenerateResult {
  std::string text;               // generated text (stop string excluded), valid UTF-8: bytes that
                                  // do not form UTF-8 (e.g. a character cut at max tokens) become U+FFFD
  std::vector<int32_t> tokens;    // generated ids
  std::vector<TokenLogprob> logprobs;  // one per generated token when GenerateOptions::logprobs >= 0
  int n_prompt = 0;
  double prefill_ms = 0;          // time to first token's logits
  ForwardStats prefill_stats;     // what the prefill did: rows alive per layer, FLOPs
  // What the last forward call did (the last decode step; the prefill when none ran): with a method
  // that revives, its counts since the prefill (revived_total, computed_pairs, aux cache).
  ForwardStats last_stats;
  double decode_ms = 0;           // all decode steps
  int n_decoded = 0;              // decode steps run
  std::string finish_reason;      // "stop" (EOS or stop string), "length", or "cancelled" (on_text said so)
};

// Streams complete UTF-8 text pieces to on_text as they are known not to start a stop string;
// on_text returning false cancels generation. The session is reset first.
GenerateResult generate(Session& session, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                        const std::function<bool(std::string_view)>& on_text = {});

}  // namespace sdtp
