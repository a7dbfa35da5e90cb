// RoPE inverse frequencies for a model, including Llama 3 and linear scaling, computed as
// Hugging Face transformers computes them (float32), so logits agree to float precision.
#pragma once

#include <vector>

#include "sdtp/model.h"

namespace sdtp {

// head_dim/2 inverse frequencies theta^(-2i/head_dim), scaled per config.rope_scaling.
std::vector<float> rope_inv_freq(const ModelConfig& c);

}  // namespace sdtp
