// Shared helpers of the tokenizer tests: loading the tiny reference tokenizers and the test strings
// written by scripts/fixtures/gen_tokenizer_fixtures.py.
#pragma once

#include <string>
#include <vector>

#include "sdtp/tokenizer.h"
#include "testing/fixtures.h"

namespace sdtp::testing {

inline std::vector<std::string> tokenizer_strings() {
  std::vector<std::string> out;
  for (const auto& s : read_json(fixture_path("tokenizer/strings.json"))) out.push_back(s.get<std::string>());
  return out;
}

inline Tokenizer hf_fixture_tokenizer(const std::string& name) {
  return Tokenizer(Tokenizer::spec_from_hf_folder(fixture_path("tokenizer/" + name)));
}

// Printable form of a string for failure messages.
inline std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\r')
      out += "\\r";
    else if (c < 0x20 || c == 0x7F)
      out += "\\x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
    else
      out += static_cast<char>(c);
  }
  return out;
}

}  // namespace sdtp::testing
