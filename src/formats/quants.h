// Element types of GGUF and safetensors files: sizes, names, and dequantisation to float32.
// Block layouts follow ggml (ggml-common.h); each dequantiser is a plain scalar reference.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "formats/raw_tensor.h"

namespace sdtp {

const char* dtype_name(DType t);
// Parses a ggml type number (as stored in GGUF); nullopt if unknown or unsupported.
std::optional<DType> dtype_from_ggml(uint32_t v);
// The type dtype_name(t) names ("Q4_K", ...); nullopt if none.
std::optional<DType> dtype_from_name(std::string_view name);
// Elements per block (1 for plain types) and bytes per block.
int64_t dtype_block_size(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes that n elements occupy; nullopt if n is not a multiple of the block size or overflows.
std::optional<uint64_t> dtype_nbytes(DType t, int64_t n);
// True for the types load_model can turn into float32 weights.
bool dtype_is_float_convertible(DType t);

// Converts n elements (n a multiple of the block size) starting at src to float32.
// Throws UnsupportedError for integer types.
void dequantize(DType t, const uint8_t* src, float* dst, int64_t n);

// The 6-bit scale and min of sub-block j (0..7) of Q4_K/Q5_K, packed in 12 bytes:
// bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for
// mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble).
inline void k_scale_min(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// IEEE half and bfloat16 conversions (exact, handle subnormals/inf/nan).
float fp16_to_fp32(uint16_t h);
float bf16_to_fp32(uint16_t b);
uint16_t fp32_to_fp16(float f);
uint16_t fp32_to_bf16(float f);  // round to nearest even

}  // namespace sdtp
