// ModelConfig from a Hugging Face config.json (model_type llama, mistral, qwen2).
#pragma once

#include <string>

#include "sdtp/model.h"

namespace sdtp {

// Throws FormatError (malformed JSON, missing or mistyped field: named with the file) or
// UnsupportedError (unknown model_type, rope_scaling type, hidden_act).
ModelConfig config_from_hf_json(const std::string& config_json_path);

}  // namespace sdtp
