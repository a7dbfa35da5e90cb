// UTF-8 decoding and the Unicode character classes the pre-tokenizers need (\p{L}, \p{N}, \s).
//
// Invalid UTF-8 never throws: each byte that does not start a well-formed sequence (stray
// continuation bytes, overlong forms, surrogates, truncated sequences, values above U+10FFFF)
// decodes as one pseudo code point kInvalidBase + byte, which is neither a letter, a number nor
// whitespace. The byte-level tokenizers then encode that raw byte exactly, so invalid input still
// round-trips byte for byte; SentencePiece-style tokenizers use byte fallback for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sdtp {

constexpr uint32_t kInvalidBase = 0x110000;  // pseudo code points kInvalidBase + byte

struct DecodedChar {
  uint32_t cp;    // code point, or kInvalidBase + byte for an invalid byte
  uint32_t size;  // bytes consumed, 1..4
};

// Decodes the character starting at s[pos] (pos < s.size()).
DecodedChar utf8_decode(std::string_view s, size_t pos);
// Length of the UTF-8 character starting at s[pos], 1 for an invalid byte.
inline size_t utf8_char_len(std::string_view s, size_t pos) {
  return utf8_decode(s, pos).size;
}
void utf8_append(std::string& out, uint32_t cp);  // cp must be a valid scalar value

bool is_letter(uint32_t cp);      // general category L*
bool is_number(uint32_t cp);      // general category N*
bool is_whitespace(uint32_t cp);  // the White_Space property (what \s matches in Unicode regexes)

namespace unicode_detail {
struct CategoryRange {
  uint32_t first, last;
  uint8_t flag;  // 1 letter, 2 number
};
extern const CategoryRange kCategoryRanges[];
extern const size_t kCategoryRangeCount;
}  // namespace unicode_detail

}  // namespace sdtp
