// Element types of GGUF/safetensors files: names, ggml type numbers, block sizes, IEEE half and
// bfloat16 conversions, and dequantisation of ggml's block-quantised formats to float32.
//
// Block layouts (ggml-common.h; all little-endian, f16 = IEEE half):
//   Q4_0  18 B / 32: f16 d, u8 qs[16]                      x = d * (q - 8)
//   Q4_1  20 B / 32: f16 d, f16 m, u8 qs[16]               x = d * q + m
//   Q5_0  22 B / 32: f16 d, u32 qh, u8 qs[16]              x = d * (q - 16), q = nibble | bit << 4
//   Q5_1  24 B / 32: f16 d, f16 m, u32 qh, u8 qs[16]       x = d * q + m
//   Q8_0  34 B / 32: f16 d, i8 qs[32]                      x = d * q
//   Q8_1  36 B / 32: f16 d, f16 s (sum, unused), i8 qs[32] x = d * q
//   Q2_K  84 B / 256: u8 scales[16], u8 qs[64], f16 d, f16 dmin
//   Q3_K 110 B / 256: u8 hmask[32], u8 qs[64], u8 scales[12], f16 d
//   Q4_K 144 B / 256: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
//   Q5_K 176 B / 256: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
//   Q6_K 210 B / 256: u8 ql[128], u8 qh[64], i8 scales[16], f16 d
//   Q8_K 292 B / 256: f32 d, i8 qs[256], i16 bsums[16]      x = d * q
// In the 32-element types, element j < 16 is the low nibble of qs[j], element j + 16 the high one.
// Every product is evaluated in the same order as ggml's reference (and gguf-py), e.g.
// (d * sc) * q - (dmin * m), so results are bit-identical; FP contraction is disabled below so that
// the compiler cannot fuse a multiply-add into one differently rounded FMA.
#include "formats/quants.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "sdtp/error.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdtp {

namespace {

struct TypeInfo {
  const char* name;
  int64_t block_size;
  int64_t block_bytes;
  bool float_convertible;
};

std::optional<TypeInfo> type_info(DType t) {
  switch (t) {
    case DType::F32:
      return TypeInfo{"F32", 1, 4, true};
    case DType::F16:
      return TypeInfo{"F16", 1, 2, true};
    case DType::Q4_0:
      return TypeInfo{"Q4_0", 32, 18, true};
    case DType::Q4_1:
      return TypeInfo{"Q4_1", 32, 20, true};
    case DType::Q5_0:
      return TypeInfo{"Q5_0", 32, 22, true};
    case DType::Q5_1:
      return TypeInfo{"Q5_1", 32, 24, true};
    case DType::Q8_0:
      return TypeInfo{"Q8_0", 32, 34, true};
    case DType::Q8_1:
      return TypeInfo{"Q8_1", 32, 36, true};
    case DType::Q2_K:
      return TypeInfo{"Q2_K", 256, 84, true};
    case DType::Q3_K:
      return TypeInfo{"Q3_K", 256, 110, true};
    case DType::Q4_K:
      return TypeInfo{"Q4_K", 256, 144, true};
    case DType::Q5_K:
      return TypeInfo{"Q5_K", 256, 176, true};
    case DType::Q6_K:
      return TypeInfo{"Q6_K", 256, 210, true};
    case DType::Q8_K:
      return TypeInfo{"Q8_K", 256, 292, true};
    case DType::I8:
      return TypeInfo{"I8", 1, 1, false};
    case DType::I16:
      return TypeInfo{"I16", 1, 2, false};
    case DType::I32:
      return TypeInfo{"I32", 1, 4, false};
    case DType::I64:
      return TypeInfo{"I64", 1, 8, false};
    case DType::F64:
      return TypeInfo{"F64", 1, 8, true};
    case DType::BF16:
      return TypeInfo{"BF16", 1, 2, true};
  }
  return std::nullopt;
}

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
float load_f16(const uint8_t* p) {
  return fp16_to_fp32(load_u16(p));
}

constexpr int kQK = 32;    // elements per block of the 32-element types
constexpr int kQKK = 256;  // elements per super-block of the K types

void dq_q4_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0xF) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void dq_q4_1(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0xF) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void dq_q5_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + kQK / 2] = static_cast<float>(hi - 16) * d;
  }
}

void dq_q5_1(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b), m = load_f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + kQK / 2] = static_cast<float>(hi) * d + m;
  }
}

// Q8_0 and Q8_1 differ only in the header size before the 32 int8 values.
void dq_q8(const uint8_t* __restrict b, float* __restrict y, int header) {
  const float d = load_f16(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + header);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K: 16 sub-blocks of 16; scales[i] low nibble scales, high nibble mins (times d, dmin).
// The 2-bit values of elements h*128 + s*32 + l (h half, s shift 0..3) are bits 2s of qs[h*32 + l].
void dq_q2_k(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = load_f16(b + 80), dmin = load_f16(b + 82);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int half = 0; half < 2; ++half) {
        const int e0 = h * 128 + s * 32 + half * 16;
        const uint8_t sc = scales[e0 / 16];
        const float dl = d * static_cast<float>(sc & 0xF);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = half * 16; l < half * 16 + 16; ++l) {
          const int q = (qs[h * 32 + l] >> (2 * s)) & 3;
          y[h * 128 + s * 32 + l] = dl * static_cast<float>(q) - ml;
        }
      }
    }
  }
}

// Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (minus 32). The low 2 bits of element
// h*128 + s*32 + l are bits 2s of qs[h*32 + l]; its high bit is bit (e / 32) of hmask[e % 32], and a
// clear high bit means "subtract 4".
void dq_q3_k(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_f16(b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    const int lo = k < 8 ? (sc[k] & 0xF) : (sc[k - 8] >> 4);
    const int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
    dl[k] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      const int e0 = h * 128 + s * 32;
      const int hbit = e0 / 32;
      for (int l = 0; l < 32; ++l) {
        const int e = e0 + l;
        const int q = ((qs[h * 32 + l] >> (2 * s)) & 3) - (((hmask[l] >> hbit) & 1) ? 0 : 4);
        y[e] = dl[e / 16] * static_cast<float>(q);
      }
    }
  }
}

// Q4_K: 8 sub-blocks of 32; element c*64 + s*32 + l is nibble s of qs[c*32 + l].
void dq_q4_k(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int sb = 0; sb < 8; ++sb) {
    uint8_t sc, m;
    k_scale_min(scales, sb, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    const uint8_t* q = qs + (sb / 2) * 32;
    const int shift = (sb % 2) * 4;
    for (int l = 0; l < 32; ++l) y[sb * 32 + l] = d1 * static_cast<float>((q[l] >> shift) & 0xF) - m1;
  }
}

// Q5_K: as Q4_K plus a fifth bit: bit sb of qh[l] for element sb*32 + l.
void dq_q5_k(const uint8_t* __restrict b, float* __restrict y) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int sb = 0; sb < 8; ++sb) {
    uint8_t sc, m;
    k_scale_min(scales, sb, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    const uint8_t* q = qs + (sb / 2) * 32;
    const int shift = (sb % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0xF) | (((qh[l] >> sb) & 1) << 4);
      y[sb * 32 + l] = d1 * static_cast<float>(v) - m1;
    }
  }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales. Element h*128 + s*32 + l (s 0..3, l 0..31) takes
// nibble (s / 2) of ql[h*64 + (s % 2)*32 + l] and bits 2s of qh[h*32 + l] as its top two bits.
void dq_q6_k(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      const int e0 = h * 128 + s * 32;
      const uint8_t* lo = ql + h * 64 + (s % 2) * 32;
      const int lshift = (s / 2) * 4;
      const float d0 = d * static_cast<float>(scales[e0 / 16]);
      const float d1 = d * static_cast<float>(scales[e0 / 16 + 1]);
      for (int l = 0; l < 32; ++l) {
        const int q = (((lo[l] >> lshift) & 0xF) | (((qh[h * 32 + l] >> (2 * s)) & 3) << 4)) - 32;
        y[e0 + l] = (l < 16 ? d0 : d1) * static_cast<float>(q);
      }
    }
  }
}

void dq_q8_k(const uint8_t* __restrict b, float* __restrict y) {
  float d;
  std::memcpy(&d, b, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < kQKK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void convert_f16(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  // Hardware conversion is exact too (it only quiets signalling nans).
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(src + 2 * i));
}

void convert_bf16(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t b;
    std::memcpy(&b, src + 2 * i, 2);
    dst[i] = bf16_to_fp32(b);
  }
}

template <typename BlockFn>
void for_each_block(const uint8_t* src, float* dst, int64_t nblocks, int64_t block_bytes, int64_t block_size,
                    BlockFn fn) {
  for (int64_t i = 0; i < nblocks; ++i) fn(src + i * block_bytes, dst + i * block_size);
}

}  // namespace

const char* dtype_name(DType t) {
  auto info = type_info(t);
  return info ? info->name : "unknown";
}

std::optional<DType> dtype_from_ggml(uint32_t v) {
  const auto t = static_cast<DType>(v);
  // Q8_1 is an intermediate type of ggml's dot products that no file stores, and the references
  // disagree on its block size (ggml: 36 bytes, gguf-py: 40), so files may not use it.
  if (!type_info(t) || t == DType::Q8_1) return std::nullopt;
  return t;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (uint32_t v = 0; v < 64; ++v)
    if (const auto t = dtype_from_ggml(v); t && name == dtype_name(*t)) return t;
  return std::nullopt;
}

int64_t dtype_block_size(DType t) {
  auto info = type_info(t);
  return info ? info->block_size : 1;
}

int64_t dtype_block_bytes(DType t) {
  auto info = type_info(t);
  return info ? info->block_bytes : 0;
}

std::optional<uint64_t> dtype_nbytes(DType t, int64_t n) {
  auto info = type_info(t);
  if (!info || n < 0 || n % info->block_size != 0) return std::nullopt;
  const uint64_t blocks = static_cast<uint64_t>(n / info->block_size);
  const uint64_t bb = static_cast<uint64_t>(info->block_bytes);
  // Kept within int64 so that callers may do signed arithmetic on byte counts.
  if (blocks > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / bb) return std::nullopt;
  return blocks * bb;
}

bool dtype_is_float_convertible(DType t) {
  auto info = type_info(t);
  return info && info->float_convertible;
}

void dequantize(DType t, const uint8_t* src, float* dst, int64_t n) {
  auto info = type_info(t);
  if (!info) {
    throw UnsupportedError("dequantize: unknown element type " + std::to_string(static_cast<uint32_t>(t)));
  }
  if (!info->float_convertible) {
    throw UnsupportedError(std::string("dequantize: element type ") + info->name +
                           " is an integer type, not convertible to float weights");
  }
  if (n < 0 || n % info->block_size != 0) {
    throw FormatError(std::string("dequantize: ") + std::to_string(n) + " elements of type " + info->name +
                      " is not a multiple of its block size " + std::to_string(info->block_size));
  }
  const int64_t nb = n / info->block_size;
  const int64_t bb = info->block_bytes, bs = info->block_size;
  switch (t) {
    case DType::F32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
      return convert_f16(src, dst, n);
    case DType::BF16:
      return convert_bf16(src, dst, n);
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::Q4_0:
      return for_each_block(src, dst, nb, bb, bs, dq_q4_0);
    case DType::Q4_1:
      return for_each_block(src, dst, nb, bb, bs, dq_q4_1);
    case DType::Q5_0:
      return for_each_block(src, dst, nb, bb, bs, dq_q5_0);
    case DType::Q5_1:
      return for_each_block(src, dst, nb, bb, bs, dq_q5_1);
    case DType::Q8_0:
      return for_each_block(src, dst, nb, bb, bs, [](const uint8_t* b, float* y) { dq_q8(b, y, 2); });
    case DType::Q8_1:
      return for_each_block(src, dst, nb, bb, bs, [](const uint8_t* b, float* y) { dq_q8(b, y, 4); });
    case DType::Q2_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q2_k);
    case DType::Q3_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q3_k);
    case DType::Q4_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q4_k);
    case DType::Q5_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q5_k);
    case DType::Q6_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q6_k);
    case DType::Q8_K:
      return for_each_block(src, dst, nb, bb, bs, dq_q8_k);
    default:
      break;
  }
  throw UnsupportedError(std::string("dequantize: element type ") + info->name + " is not supported");
}

// Half -> float is exact: normal halves re-bias the exponent (15 -> 127), subnormal halves are
// mant * 2^-24 (exact in float), inf/nan keep their payload with an all-ones exponent.
float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  uint32_t bits = (em << 13) + ((127u - 15u) << 23);
  if (em >= 0x7C00u) bits += (127u - 15u) << 23;  // exponent 31 -> 255
  if (em < 0x0400u) bits = f32_bits(static_cast<float>(em) * 0x1p-24f);
  return bits_f32(sign | bits);
}

float bf16_to_fp32(uint16_t b) {
  return bits_f32(static_cast<uint32_t>(b) << 16);
}

// Float -> half with round-to-nearest-even, overflow to inf, gradual underflow, quiet nan.
uint16_t fp32_to_fp16(float f) {
  uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((x >> 13) & 0x3FFu));
  // 65520 (0x477FF000) is halfway between the largest half 65504 and 2^16; ties go to even = inf.
  if (x >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);
  if (x < 0x38800000u) {
    // Below 2^-14 the half is subnormal: round |f| / 2^-24 to an integer (nearest even) by adding
    // 2^23, which leaves no fraction bits in a float. 1024 encodes the smallest normal, correctly.
    const float scaled = bits_f32(x) * 0x1p24f;
    const float r = (scaled + 0x1p23f) - 0x1p23f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  x -= (127u - 15u) << 23;
  x += 0xFFFu + ((x >> 13) & 1u);
  return static_cast<uint16_t>(sign | (x >> 13));
}

uint16_t fp32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace sdtp
