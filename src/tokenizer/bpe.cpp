// GPT-2's byte <-> unicode alphabet (the BPE merge loop itself is a template in bpe.h).
#include "tokenizer/bpe.h"

#include <array>

namespace sdtp {

namespace {

struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

uint32_t byte_to_unicode(uint8_t b) {
  return byte_map().to_cp[b];
}

int unicode_to_byte(uint32_t cp) {
  if (cp < 256) {
    const bool printable = (cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255);
    return printable ? static_cast<int>(cp) : -1;
  }
  if (cp < 256 + 68) {  // 68 non-printable bytes, mapped in order to U+0100..U+0143
    static const std::array<int, 68> inverse = [] {
      std::array<int, 68> inv{};
      for (int b = 0; b < 256; ++b) {
        const uint32_t c = byte_to_unicode(static_cast<uint8_t>(b));
        if (c >= 256) inv[c - 256] = b;
      }
      return inv;
    }();
    return inverse[cp - 256];
  }
  return -1;
}

}  // namespace sdtp
