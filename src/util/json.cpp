// Guarded JSON parsing (see json.h).
#include "util/json.h"

#include "sdtp/error.h"

namespace sdtp {

nlohmann::json parse_untrusted_json(std::string_view text, const std::string& what, int max_depth) {
  // Count brackets outside strings; malformed strings are left for the parser to report.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) {
        throw FormatError(what + ": JSON nested deeper than " + std::to_string(max_depth) + " levels");
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(what + ": malformed JSON: " + e.what());
  }
}

}  // namespace sdtp
