// RoPE frequencies (see rope.h).
#include "model/rope.h"

#include <cmath>

#include "sdtp/error.h"

namespace sdtp {

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    inv[i] = 1.0f / std::pow(c.rope_theta, exponent);
  }
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "none") return inv;
  if (s.type == "linear") {
    for (float& f : inv) f /= s.factor;
    return inv;
  }
  if (s.type == "llama3") {
    // Llama 3.1 rule (transformers _compute_llama3_parameters): keep high frequencies, divide low
    // ones by `factor`, and blend smoothly in between.
    const float old_ctx = static_cast<float>(s.original_max_position);
    const float low_wavelen = old_ctx / s.low_freq_factor;
    const float high_wavelen = old_ctx / s.high_freq_factor;
    for (float& f : inv) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      float scaled = wavelen > low_wavelen ? f / s.factor : f;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        scaled = (1.0f - smooth) * scaled / s.factor + smooth * scaled;
      }
      f = scaled;
    }
    return inv;
  }
  throw UnsupportedError("rope scaling type '" + s.type + "' is not supported");
}

}  // namespace sdtp
