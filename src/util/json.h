// Parsing JSON that users hand us (config.json, tokenizer.json, safetensors headers): nesting depth
// is checked before nlohmann's recursive parser sees the text, and every failure is a FormatError
// naming `what` (usually the file).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sdtp {

nlohmann::json parse_untrusted_json(std::string_view text, const std::string& what, int max_depth);

}  // namespace sdtp
