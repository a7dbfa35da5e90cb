// ModelConfig::n_params and ModelConfig::validate: the checks every loader runs once at the boundary,
// so that the rest of the engine can trust the sizes (positive, consistent, no int overflow).
#include <cmath>
#include <string>

#include "sdtp/error.h"
#include "sdtp/model.h"

namespace sdtp {

int64_t ModelConfig::n_params() const {
  const int64_t d = n_embd, q = int64_t(n_head) * head_dim, kv = int64_t(n_head_kv) * head_dim;
  int64_t layer = 2 * d                     // attn_norm, ffn_norm
                  + q * d + 2 * kv * d      // wq, wk, wv
                  + d * q                   // wo
                  + 3 * int64_t(n_ff) * d;  // gate, up, down
  if (qkv_bias) layer += q + 2 * kv;
  int64_t total = int64_t(n_layer) * layer + int64_t(n_vocab) * d + d;  // blocks, tok_embd, output_norm
  if (!tied_embeddings) total += int64_t(n_vocab) * d;
  return total;
}

void ModelConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& field, const std::string& why) {
    throw FormatError(source + ": " + field + " " + why);
  };
  if (arch != "llama" && arch != "mistral" && arch != "qwen2")
    throw UnsupportedError(source + ": architecture '" + arch + "' is not supported (llama, mistral, qwen2)");
  // Upper bounds keep every product below in int64 and every row count in int32.
  auto check = [&](const char* field, int64_t v, int64_t max) {
    if (v <= 0 || v > max)
      fail(field, "= " + std::to_string(v) + " is out of range [1, " + std::to_string(max) + "]");
  };
  check("n_vocab", n_vocab, 1 << 24);
  check("n_embd", n_embd, 1 << 20);
  check("n_layer", n_layer, 4096);
  check("n_head", n_head, 1 << 14);
  check("n_head_kv", n_head_kv, 1 << 14);
  check("head_dim", head_dim, 1 << 14);
  check("n_ff", n_ff, 1 << 22);
  check("n_ctx_train", n_ctx_train, 1 << 30);
  if (n_head % n_head_kv != 0)
    fail("n_head",
         "= " + std::to_string(n_head) + " is not a multiple of n_head_kv = " + std::to_string(n_head_kv));
  if (head_dim % 2 != 0) fail("head_dim", "= " + std::to_string(head_dim) + " must be even for RoPE");
  if (int64_t(n_head) * head_dim > (1 << 22)) fail("n_head * head_dim", "is too large");
  if (!(rms_eps > 0.0f) || !std::isfinite(rms_eps))
    fail("rms_eps", "= " + std::to_string(rms_eps) + " must be positive");
  if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta))
    fail("rope_theta", "= " + std::to_string(rope_theta) + " must be positive");
  const RopeScaling& s = rope_scaling;
  if (s.type != "none" && s.type != "linear" && s.type != "llama3")
    throw UnsupportedError(source + ": rope scaling type '" + s.type + "' is not supported");
  if (s.type != "none" && (!(s.factor > 0.0f) || !std::isfinite(s.factor)))
    fail("rope scaling factor", "= " + std::to_string(s.factor) + " must be positive");
  if (s.type == "llama3") {
    if (!(s.low_freq_factor > 0.0f) || !(s.high_freq_factor > s.low_freq_factor) ||
        !std::isfinite(s.high_freq_factor))
      fail("rope scaling low/high_freq_factor", "= " + std::to_string(s.low_freq_factor) + "/" +
                                                    std::to_string(s.high_freq_factor) +
                                                    " must satisfy 0 < low < high");
    if (s.original_max_position <= 0)
      fail("rope scaling original_max_position",
           "= " + std::to_string(s.original_max_position) + " must be positive");
  }
}

}  // namespace sdtp
