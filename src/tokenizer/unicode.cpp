// UTF-8 decoding and Unicode character classes; the category ranges live in unicode_tables.cpp.
#include "tokenizer/unicode.h"

#include "sdtp/tokenizer.h"

#include <algorithm>

namespace sdtp {

DecodedChar utf8_decode(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t left = s.size() - pos;
  const unsigned char b0 = p[0];
  const DecodedChar invalid{kInvalidBase + b0, 1};
  if (b0 < 0x80) return {b0, 1};
  size_t n;
  uint32_t cp;
  uint32_t min_cp;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min_cp = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min_cp = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min_cp = 0x10000;
  } else {
    return invalid;  // continuation byte or 0xF8..0xFF
  }
  if (left < n) return invalid;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return invalid;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return invalid;
  return {cp, static_cast<uint32_t>(n)};
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

uint8_t category_flag(uint32_t cp) {
  using unicode_detail::kCategoryRangeCount;
  using unicode_detail::kCategoryRanges;
  if (cp >= kInvalidBase) return 0;
  if (cp < 0x80) {  // fast path for ASCII
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return 1;
    return (cp >= '0' && cp <= '9') ? 2 : 0;
  }
  const auto* end = kCategoryRanges + kCategoryRangeCount;
  const auto* it =
      std::upper_bound(kCategoryRanges, end, cp,
                       [](uint32_t v, const unicode_detail::CategoryRange& r) { return v < r.first; });
  if (it == kCategoryRanges) return 0;
  --it;
  return cp <= it->last ? it->flag : 0;
}

}  // namespace

bool is_letter(uint32_t cp) {
  return category_flag(cp) == 1;
}
bool is_number(uint32_t cp) {
  return category_flag(cp) == 2;
}

bool is_whitespace(uint32_t cp) {
  // PropList.txt White_Space; unchanged since Unicode 6.3.
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const DecodedChar d = utf8_decode(s, i);
    if (d.cp >= kInvalidBase) out += "\xEF\xBF\xBD";
    else out.append(s.substr(i, d.size));
    i += d.size;
  }
  return out;
}

size_t first_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const DecodedChar d = utf8_decode(s, i);
    if (d.cp >= kInvalidBase) return i;
    i += d.size;
  }
  return std::string_view::npos;
}

}  // namespace sdtp
